#!/usr/bin/python3
"""libtorrent-rasterbar (python3-libtorrent) as a reference for ringseed's
interop tests.

    lt_tool.py info-hash FILE.torrent        print the v1 info-hash (hex)
    lt_tool.py check FILE.torrent SAVE_DIR   check the data, print
                                             "<have> <total>" pieces
    lt_tool.py create-padded DIR OUT.torrent [WEB_SEED]
                                             a v1 torrent of DIR with BEP 47
                                             pad files (16 KiB pieces), as
                                             libtorrent aligns files, and a
                                             url-list entry if given

DHT, LSD, UPnP and NAT-PMP are off and the session listens on loopback
only, so nothing leaves the machine.
"""
import sys
import time

import libtorrent as lt

from lt_common import loopback_session


def session():
    return loopback_session("127.0.0.1:0")


def info_hash(path):
    print(lt.torrent_info(path).info_hashes().v1)


def check(path, save_dir, timeout=120.0):
    ses = session()
    ti = lt.torrent_info(path)
    params = lt.add_torrent_params()
    params.ti = ti
    params.save_path = save_dir
    handle = ses.add_torrent(params)
    deadline = time.monotonic() + timeout
    while True:
        status = handle.status()
        if status.errc.value() != 0:
            sys.exit(f"libtorrent error: {status.errc.message()}")
        if status.state not in (lt.torrent_status.checking_files,
                                lt.torrent_status.checking_resume_data) \
                and not status.paused and status.has_metadata \
                and status.state != lt.torrent_status.allocating:
            break
        if time.monotonic() > deadline:
            sys.exit("libtorrent did not finish checking in time")
        # Wait for libtorrent's next state change rather than polling blindly.
        ses.wait_for_alert(200)
        ses.pop_alerts()
    print(status.num_pieces, ti.num_pieces())


def create_padded(directory, out, web_seed=None):
    import os
    fs = lt.file_storage()
    lt.add_files(fs, directory)
    # v1 only, with every file aligned to a piece by a pad file.
    flags = lt.create_torrent.v1_only | lt.create_torrent.canonical_files
    ct = lt.create_torrent(fs, 16384, flags=flags)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(directory)))
    if web_seed:
        ct.add_url_seed(web_seed)
    with open(out, "wb") as f:
        f.write(lt.bencode(ct.generate()))


if __name__ == "__main__":
    commands = {"info-hash": (info_hash, 1, 1), "check": (check, 2, 2),
                "create-padded": (create_padded, 2, 3)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands \
            or not commands[sys.argv[1]][1] <= len(sys.argv) - 2 <= commands[sys.argv[1]][2]:
        sys.exit(__doc__)
    func = commands[sys.argv[1]][0]
    func(*sys.argv[2:])
