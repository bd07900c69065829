"""What every libtorrent session of ringseed's tests and benchmarks shares:
loopback only, and nothing that could leave the machine (DHT, LSD, UPnP,
NAT-PMP and uTP off)."""
import libtorrent as lt


def loopback_session(listen, base=None, **extra):
    """A session listening on `listen` ("IP:PORT"); `base` is a settings
    pack to start from (e.g. lt.high_performance_seed()), `extra` overrides."""
    settings = dict(base or {})
    settings.update({
        "listen_interfaces": listen,
        "outgoing_interfaces": listen.rpartition(":")[0],
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    })
    settings.update(extra)
    return lt.session(settings)
