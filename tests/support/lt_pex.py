#!/usr/bin/python3
"""libtorrent peers for ringseed's peer exchange (BEP 11, ut_pex) tests.

    lt_pex.py teach FILE.torrent DATA_DIR IP_A IP_B IP_C
        Three seeds: A (ut_pex on, upload limited so a download from it
        lasts) is connected to B and C, which have peer exchange off (they
        dial nobody). Prints "ready PORT_A PORT_B PORT_C" once A has both,
        then, on SIGTERM, "learned B=0|1 C=0|1": whether a peer from
        127.0.0.1 connected to B and to C (ringseed, told of them by A).

    lt_pex.py learn FILE.torrent DATA_DIR IP_X IP_Y IP_Z
        X and Y seed with peer exchange off and a low upload limit; Z
        leeches into a fresh directory with ut_pex on. Prints "ready PORT_X
        PORT_Y PORT_Z"; reads "connect IP:PORT" (ringseed) on stdin, makes
        Z connect to it and only to it, then prints "learned X=0|1 Y=0|1"
        once Z dialed X and Y after hearing of them by peer exchange, or
        after 60 s.

Every session is loopback only (lt_common); DHT, LSD, UPnP and NAT-PMP
are off, so peers come from nowhere but the test.
"""
import os
import signal
import sys
import tempfile
import time

import libtorrent as lt

from lt_common import loopback_session

SEED_RATE = 400_000  # bytes per second: the download outlasts a PEX round


def session(ip, upload_limit=0):
    # Seeds stay connected to seeds, so A keeps B and C.
    ses = loopback_session(f"{ip}:0", close_redundant_connections=False)
    if upload_limit:
        # Peers on the local network are in their own peer class, which
        # the session's upload_rate_limit does not cover.
        local = lt.session.local_peer_class_id
        settings = ses.get_peer_class(local)
        settings["upload_limit"] = upload_limit
        ses.set_peer_class(local, settings)
    return ses


def add(ses, torrent, save, seed, pex):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save
    if seed:
        params.flags |= lt.torrent_flags.seed_mode
    if not pex:
        params.flags |= lt.torrent_flags.disable_pex
    return ses.add_torrent(params)


def wait_seeding(ses, handle):
    while not handle.status().is_seeding:
        ses.wait_for_alert(100)
        ses.pop_alerts()
    # Seed mode reports seeding at once, but for about a second libtorrent
    # still closes incoming connections to the torrent (seen here).
    time.sleep(1.5)


def teach(torrent, data, ip_a, ip_b, ip_c):
    a = session(ip_a, SEED_RATE)
    b, c = session(ip_b), session(ip_c)
    ha = add(a, torrent, data, True, True)
    hb = add(b, torrent, data, True, False)
    hc = add(c, torrent, data, True, False)
    for ses, h in ((a, ha), (b, hb), (c, hc)):
        wait_seeding(ses, h)
    ha.connect_peer((ip_b, b.listen_port()))
    ha.connect_peer((ip_c, c.listen_port()))
    deadline = time.time() + 30
    while time.time() < deadline:
        connected = [p for p in ha.get_peer_info()
                     if not p.flags & (lt.peer_info.connecting | lt.peer_info.handshake)]
        if len(connected) >= 2:
            break
        time.sleep(0.1)
    else:
        sys.exit("A never connected to B and C")
    print(f"ready {a.listen_port()} {b.listen_port()} {c.listen_port()}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    learned = {"B": False, "C": False}
    while not stop:
        for name, h in (("B", hb), ("C", hc)):
            for p in h.get_peer_info():
                if p.ip[0] == "127.0.0.1" and not p.flags & lt.peer_info.outgoing_connection:
                    learned[name] = True
        time.sleep(0.1)
    print("learned " + " ".join(f"{k}={int(v)}" for k, v in learned.items()), flush=True)


def learn(torrent, data, ip_x, ip_y, ip_z):
    x = session(ip_x, SEED_RATE)
    y = session(ip_y, SEED_RATE)
    z = session(ip_z)
    hx = add(x, torrent, data, True, False)
    hy = add(y, torrent, data, True, False)
    for ses, h in ((x, hx), (y, hy)):
        wait_seeding(ses, h)
    empty = tempfile.mkdtemp(prefix="lt_pex_z")
    hz = add(z, torrent, empty, False, True)
    print(f"ready {x.listen_port()} {y.listen_port()} {z.listen_port()}", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "connect":
        sys.exit(f"expected 'connect IP:PORT', got {line}")
    host, port = line[1].rsplit(":", 1)
    hz.connect_peer((host, int(port)))
    targets = {"X": (ip_x, x.listen_port()), "Y": (ip_y, y.listen_port())}
    learned = {"X": False, "Y": False}
    deadline = time.time() + 60
    while time.time() < deadline and not all(learned.values()):
        for p in hz.get_peer_info():
            for name, endpoint in targets.items():
                if (tuple(p.ip) == endpoint and p.source & lt.peer_info.pex
                        and p.flags & lt.peer_info.outgoing_connection):
                    learned[name] = True
        z.pop_alerts()
        time.sleep(0.1)
    print("learned " + " ".join(f"{k}={int(v)}" for k, v in learned.items()), flush=True)
    # Keep the sessions up until the test is done with them.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    modes = {"teach": teach, "learn": learn}
    if len(sys.argv) != 7 or sys.argv[1] not in modes:
        sys.exit(__doc__)
    modes[sys.argv[1]](*sys.argv[2:])
