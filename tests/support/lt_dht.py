#!/usr/bin/python3
"""A libtorrent-rasterbar peer that finds peers through the DHT alone, for
ringseed's DHT interop tests.

    lt_dht.py seed TORRENT DATA_DIR --bootstrap HOST:PORT [--bind IP]
    lt_dht.py leech SOURCE SAVE_DIR --bootstrap HOST:PORT [--bind IP] [--timeout S]

The DHT is made of local nodes only: the one bootstrap node given (never
the public routers), with libtorrent's filters of local and private
addresses turned off (`dht_restrict_routing_ips`, `dht_restrict_search_ips`,
`dht_ignore_dark_internet`). Trackers are not used (none is given), LSD,
UPnP, NAT-PMP and uTP are off, and no peer is ever added by hand: every
peer comes from the DHT.

`seed` prints `ready PORT` (its TCP and DHT port) once seeding, then seeds
until killed. `leech` (which looks its torrent up again every 3 s while
it has no peer) prints `done SECONDS`, then `dht_queries_out N` (the
DHT queries it sent: ping, find_node, get_peers, announce_peer) and exits 0
when the download is complete, or exits 1 on timeout. SOURCE is a .torrent file or a magnet
link.
"""
import argparse
import sys
import time

import libtorrent as lt

from lt_common import loopback_session


# A leech with no peer looks its torrent up again this often (seconds).
LOOKUP_AGAIN = 3.0


def session(bind, bootstrap):
    """A loopback session (lt_common) with its DHT on: the one bootstrap
    node given, and libtorrent's filters of local addresses off."""
    return loopback_session(
        f"{bind}:0",
        enable_dht=True,
        dht_bootstrap_nodes=bootstrap,
        dht_restrict_routing_ips=False,
        dht_restrict_search_ips=False,
        dht_ignore_dark_internet=False,
        dht_prefer_verified_node_ids=False,
        alert_mask=lt.alert.category_t.error_notification
        | lt.alert.category_t.stats_notification,
    )


def dht_queries_out(ses):
    """The DHT queries the session sent, from its stats counters."""
    names = ["dht.dht_ping_out", "dht.dht_find_node_out", "dht.dht_get_peers_out",
             "dht.dht_announce_peer_out"]
    ses.post_session_stats()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ses.wait_for_alert(500)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.session_stats_alert):
                # The bindings give the counters by name.
                return sum(alert.values[n] for n in names)
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["seed", "leech"])
    ap.add_argument("source")
    ap.add_argument("dir")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    ses = session(args.bind, args.bootstrap)
    if args.source.startswith("magnet:"):
        params = lt.parse_magnet_uri(args.source)
    else:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(args.source)
    params.save_path = args.dir
    handle = ses.add_torrent(params)
    started = time.monotonic()
    next_lookup = started + LOOKUP_AGAIN
    while True:
        status = handle.status()
        if status.errc.value() != 0:
            sys.exit(f"libtorrent error: {status.errc.message()}")
        if status.has_metadata and status.is_seeding:
            break
        if time.monotonic() - started > args.timeout:
            sys.exit(
                f"timeout: state {status.state}, {status.progress * 100:.1f}% done, "
                f"{status.num_peers} peers"
            )
        # libtorrent looks a torrent up again only every 15 minutes: a
        # leech without peers asks sooner (its first lookup may have come
        # before the seed's announce), as a test cannot wait that long.
        if args.mode == "leech" and status.num_peers == 0 and time.monotonic() >= next_lookup:
            handle.force_dht_announce()
            next_lookup = time.monotonic() + LOOKUP_AGAIN
        ses.wait_for_alert(200)
        ses.pop_alerts()
    if args.mode == "leech":
        print(f"done {time.monotonic() - started:.2f}", flush=True)
        print(f"dht_queries_out {dht_queries_out(ses)}", flush=True)
        return
    print(f"ready {ses.listen_port()}", flush=True)
    while True:
        ses.wait_for_alert(1000)
        ses.pop_alerts()


if __name__ == "__main__":
    main()
