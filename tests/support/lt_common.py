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


# Message stream encryption, forced both ways: "rc4" encrypts the whole
# stream, "plaintext" only the handshake (allowed_enc_level 2 and 1);
# "default" leaves libtorrent's own setting (enabled both ways, both levels).
ENCRYPTION = {
    "default": {},
    "rc4": {"out_enc_policy": 0, "in_enc_policy": 0, "allowed_enc_level": 2},
    "plaintext": {"out_enc_policy": 0, "in_enc_policy": 0, "allowed_enc_level": 1},
}


def peer_encryption(peer):
    """How a connected peer's stream travels: "rc4", "plaintext" (after an
    encrypted handshake) or "none"; None while it is still connecting or in
    its handshake (its flags are not set yet)."""
    if peer.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
        return None
    if peer.flags & lt.peer_info.rc4_encrypted:
        return "rc4"
    if peer.flags & lt.peer_info.plaintext_encrypted:
        return "plaintext"
    return "none"
