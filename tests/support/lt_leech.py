#!/usr/bin/python3
"""A libtorrent-rasterbar leecher for ringseed's interop tests and benchmarks.

    lt_leech.py SOURCE SAVE_DIR [--peer HOST:PORT]... [--bind IP]
                [--timeout SECONDS] [--encryption default|rc4|plaintext]

SOURCE is a .torrent file or a magnet link. Peers are added with
connect_peer; the tracker in the torrent, if any, is used too. On success it
prints one line: `done <total_bytes> <seconds> <download_bytes_per_second>`
then `waste <failed_bytes> <redundant_bytes> <banned_peers>` (bytes of
pieces that failed their hash check, bytes received twice or unasked, and
peers it banned for bad data), then `encryption rc4=N plaintext=N none=N`
(peers seen over each transport: see lt_common.ENCRYPTION) and exits 0; it exits 1 with a reason on timeout or error. DHT, LSD, UPnP,
NAT-PMP and uTP are off; it listens on --bind (a loopback address) only.
"""
import argparse
import sys
import time

import libtorrent as lt

from lt_common import ENCRYPTION, loopback_session, peer_encryption


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("save_dir")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--encryption", choices=ENCRYPTION, default="default")
    args = ap.parse_args()

    ses = loopback_session(
        f"{args.bind}:0",
        announce_to_all_trackers=True,
        # Bans are peer notifications.
        alert_mask=lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.peer_notification,
        **ENCRYPTION[args.encryption],
    )
    if args.source.startswith("magnet:"):
        params = lt.parse_magnet_uri(args.source)
    else:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(args.source)
    params.save_path = args.save_dir
    handle = ses.add_torrent(params)

    peers = []
    for p in args.peer:
        host, _, port = p.rpartition(":")
        peers.append((host.strip("[]"), int(port)))
    started = time.monotonic()
    deadline = started + args.timeout
    next_connect = 0.0
    banned = 0
    transports = {"rc4": set(), "plaintext": set(), "none": set()}
    while True:
        now = time.monotonic()
        status = handle.status()
        if status.errc.value() != 0:
            sys.exit(f"libtorrent error: {status.errc.message()}")
        if status.has_metadata and status.is_seeding:
            break
        if now > deadline:
            sys.exit(
                f"timeout: state {status.state}, {status.progress * 100:.1f}% done, "
                f"{status.num_peers} peers, {banned} banned, "
                f"{status.total_failed_bytes} bytes failed their hash check"
            )
        # (Re)connect to the given peers while not connected to them.
        if now >= next_connect and status.num_peers < len(peers):
            for host, port in peers:
                handle.connect_peer((host, port))
            next_connect = now + 2.0
        for peer in handle.get_peer_info():
            kind = peer_encryption(peer)
            if kind:
                transports[kind].add(peer.ip)
        # Poll fast until a peer's transport is seen: a fast download may
        # be over within a few hundred milliseconds.
        ses.wait_for_alert(250 if any(transports.values()) else 10)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.torrent_error_alert):
                sys.exit(f"libtorrent error: {alert.message()}")
            if isinstance(alert, lt.peer_ban_alert):
                banned += 1
    elapsed = time.monotonic() - started
    total = handle.torrent_file().total_size()
    print(f"done {total} {elapsed:.3f} {total / elapsed:.0f}", flush=True)
    final = handle.status()
    print(f"waste {final.total_failed_bytes} {final.total_redundant_bytes} {banned}", flush=True)
    seen = " ".join(f"{k}={len(v)}" for k, v in transports.items())
    print(f"encryption {seen}", flush=True)


if __name__ == "__main__":
    main()
