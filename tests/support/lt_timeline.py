#!/usr/bin/python3
"""How a libtorrent client with its default settings (uTP and encryption on,
as qBittorrent and Deluge ship) reaches a seeder: prints each connection
attempt and its end, with the time since connect_peer, until the torrent is
complete (docs/PROTOCOL-NOTES.md, "Who connects how").

    lt_timeline.py TORRENT SEEDER_PORT     (the seeder on 127.0.0.1)

DHT, LSD, UPnP and NAT-PMP are off; it binds 127.0.0.2 and saves into out/.
"""
import sys
import time

import libtorrent as lt

torrent, port = sys.argv[1], int(sys.argv[2])
s = lt.session({"listen_interfaces": "127.0.0.2:0", "outgoing_interfaces": "127.0.0.2",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "alert_mask": lt.alert.category_t.all_categories & ~lt.alert.category_t.peer_log_notification & ~lt.alert.category_t.block_progress_notification & ~lt.alert.category_t.piece_progress_notification & ~lt.alert.category_t.upload_notification & ~lt.alert.category_t.file_progress_notification})
print("defaults: utp out", s.get_settings()["enable_outgoing_utp"], "out_enc_policy", s.get_settings()["out_enc_policy"], "(0=forced,1=enabled,2=disabled)", "prefer_rc4", s.get_settings()["prefer_rc4"])
p = lt.add_torrent_params(); p.ti = lt.torrent_info(torrent); p.save_path = "out"
h = s.add_torrent(p)
t0 = time.monotonic()
h.connect_peer(("127.0.0.1", port))
while time.monotonic() - t0 < 30:
    s.wait_for_alert(100)
    for a in s.pop_alerts():
        if isinstance(a, (lt.peer_connect_alert, lt.peer_disconnected_alert, lt.peer_error_alert, lt.incoming_connection_alert)) or "peer" in a.what():
            print(f"{time.monotonic()-t0:7.3f} {a.what()}: {a.message()}")
    st = h.status()
    if st.is_seeding:
        print(f"{time.monotonic()-t0:7.3f} done"); break
