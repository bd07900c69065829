#!/usr/bin/python3
"""libtorrent-rasterbar as a reference seeder for ringseed's benchmarks.

    lt_seed.py FILE.torrent SAVE_DIR --listen IP:PORT
               [--encryption default|rc4|plaintext] [--upload-limit BYTES_PER_S]

Seeds with libtorrent's high_performance_seed settings (DHT, LSD, UPnP,
NAT-PMP and uTP off), prints "ready" once it is seeding, and runs until
SIGTERM or SIGINT. With --encryption it requires message stream encryption
(see lt_common.ENCRYPTION) and, on exit, prints `encryption rc4=N
plaintext=N none=N`: the peers it served over each transport.
"""
import argparse
import signal
import sys
import time

import libtorrent as lt

from lt_common import ENCRYPTION, loopback_session, peer_encryption


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("save_dir")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--encryption", choices=ENCRYPTION, default="default")
    ap.add_argument("--upload-limit", type=int, default=0)
    args = ap.parse_args()

    ses = loopback_session(
        args.listen, base=lt.high_performance_seed(), **ENCRYPTION[args.encryption]
    )
    if args.upload_limit:
        # Loopback peers are in libtorrent's local peer class, which the
        # session's upload_rate_limit does not cover.
        local = lt.session.local_peer_class_id
        pc = ses.get_peer_class(local)
        pc["upload_limit"] = args.upload_limit
        ses.set_peer_class(local, pc)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save_dir
    params.flags |= lt.torrent_flags.seed_mode
    handle = ses.add_torrent(params)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not handle.status().is_seeding:
        ses.wait_for_alert(100)
        ses.pop_alerts()
    print("ready", flush=True)
    transports = {"rc4": set(), "plaintext": set(), "none": set()}
    while not stop:
        for peer in handle.get_peer_info():
            kind = peer_encryption(peer)
            if kind:
                transports[kind].add(peer.ip)
        ses.wait_for_alert(200)
        ses.pop_alerts()
    seen = " ".join(f"{k}={len(v)}" for k, v in transports.items())
    print(f"encryption {seen}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
