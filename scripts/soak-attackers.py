#!/usr/bin/python3
"""Hostile and careless peers for scripts/soak: pools of connections that
misbehave against a seeder on loopback, each pool kept full (a connection
that ends is replaced after a short pause) until --duration is over.

    scripts/soak-attackers.py --target 127.0.0.1:PORT --info-hashes FILE
                              --duration SECS --stats FILE
                              [--slowloris 60] [--silent 40] [--flooders 8]
                              [--invalid 4] [--aborters 8]

  slowloris  connects and trickles its handshake, one byte every 3 s
  silent     connects and sends nothing
  flooder    a valid handshake for a torrent the target seeds, interested,
             then thousands of requests (valid blocks and cancels) as fast as
             the socket takes them, and never reads a byte; gives up after
             30 s
  invalid    breaks the protocol at once, a different way each time: an
             oversized request (1 MiB), a piece past the end, a message
             length of ~4 GiB, HTTP instead of a handshake, an info-hash the
             target does not seed
  aborter    a valid peer that asks for blocks, reads a little and resets
             the connection (SO_LINGER 0) mid-transfer

Every connection comes from its own address in 127.77.0.0/16 (one per pool
slot), never from the 127.1.x.y addresses `ringseed loadtest` uses, so the
target's per-address limits and bans cannot hit the legitimate peers.
Slowloris and silent connections are given up after 90 s: "held" counts
those the target never closed. FILE (--info-hashes) has one hex info-hash a
line. --stats is rewritten (atomically) every 5 s and at the end, as JSON:
per pool, connections opened, refused, closed by the target, held to the
cap, and how long the target kept them (median, max seconds).
"""
import argparse
import asyncio
import json
import os
import random
import select
import socket
import statistics
import struct
import sys
import time

PSTR = b"\x13BitTorrent protocol"
HOLD_CAP = 90.0  # slowloris / silent: give up (and count as held) after this


def handshake(info_hash):
    peer_id = b"-SK0001-" + os.urandom(12)
    return PSTR + bytes(8) + info_hash + peer_id


def msg(msg_id, payload=b""):
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def request(index, begin, length):
    return msg(6, struct.pack(">III", index, begin, length))


def cancel(index, begin, length):
    return msg(8, struct.pack(">III", index, begin, length))


class Pool:
    def __init__(self, name):
        self.name = name
        self.opened = 0
        self.refused = 0
        self.closed_by_target = 0
        self.held = 0
        self.open_now = 0
        self.bytes_sent = 0
        self.holds = []  # seconds the target kept a connection it closed

    def report(self):
        h = self.holds
        return {
            "opened": self.opened,
            "refused": self.refused,
            "closed_by_target": self.closed_by_target,
            "held_to_cap": self.held,
            "open_now": self.open_now,
            "bytes_sent": self.bytes_sent,
            "hold_median_s": round(statistics.median(h), 1) if h else None,
            "hold_max_s": round(max(h), 1) if h else None,
        }


def target_gone(sock):
    """Whether the target closed or reset the connection (without reading)."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(p.poll(0))


def try_send(sock, data):
    """Sends what the socket takes now: (bytes sent, connection broken)."""
    try:
        return sock.send(data), False
    except BlockingIOError:
        return 0, False
    except OSError:
        return 0, True


async def connect(loop, target, source):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, target), 5)
    except (OSError, asyncio.TimeoutError):
        sock.close()
        return None
    return sock


def reset_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def wait_gone(sock, seconds, trickle=None):
    """Waits up to `seconds` for the target to close; with `trickle` (bytes,
    period), sends the next byte every period. Returns whether it closed."""
    deadline = time.monotonic() + seconds
    data, period = trickle if trickle else (b"", None)
    next_byte = time.monotonic()
    sent = 0
    while time.monotonic() < deadline:
        if target_gone(sock):
            return True, sent
        if period is not None and data and time.monotonic() >= next_byte:
            n, broken = try_send(sock, data[:1])
            if broken:
                return True, sent
            data, sent = data[n:], sent + n
            next_byte += period
        await asyncio.sleep(0.25)
    return False, sent


async def slowloris(sock, ctx, pool):
    closed, sent = await wait_gone(sock, HOLD_CAP, (handshake(ctx.pick()), 3.0))
    pool.bytes_sent += sent
    return closed


async def silent(sock, ctx, pool):
    closed, _ = await wait_gone(sock, HOLD_CAP)
    return closed


async def flooder(sock, ctx, pool):
    """A valid peer that requests without end and never reads."""
    rng = ctx.rng
    out = handshake(ctx.pick()) + msg(2)  # interested
    # Valid requests within the first piece (every torrent here is >= 1 MiB,
    # so piece 0 holds at least 256 KiB), with cancels mixed in.
    batch = bytearray()
    for _ in range(4000):
        begin = rng.randrange(16) * 16384
        batch += request(0, begin, 16384)
        if rng.random() < 0.1:
            batch += cancel(0, begin, 16384)
    batch = bytes(batch)
    pending = out + batch
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if target_gone(sock):
            return True
        if not pending:
            pending = batch
        n, broken = try_send(sock, pending)
        if broken:
            return True
        pool.bytes_sent += n
        pending = pending[n:]
        await asyncio.sleep(0.05 if n else 0.5)
    reset_close(sock)
    return None  # we ended it


async def invalid(sock, ctx, pool):
    kind = ctx.rng.randrange(5)
    ih = ctx.pick()
    if kind == 0:
        data = handshake(ih) + msg(2) + request(0, 0, 1 << 20)
    elif kind == 1:
        data = handshake(ih) + msg(2) + request(0x7FFFFFF, 0, 16384)
    elif kind == 2:
        data = handshake(ih) + struct.pack(">I", 0xFFFFFFF0) + b"\x07" + os.urandom(4096)
    elif kind == 3:
        data = b"GET /announce HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64)
    else:
        data = handshake(os.urandom(20))
    n, broken = try_send(sock, data)
    pool.bytes_sent += n
    if broken:
        return True
    closed, _ = await wait_gone(sock, 30)
    return closed


async def aborter(sock, ctx, pool):
    """Asks for blocks, reads some, then resets the connection."""
    out = handshake(ctx.pick()) + msg(2)
    out += b"".join(request(0, i * 16384, 16384) for i in range(16))
    n, broken = try_send(sock, out)
    pool.bytes_sent += n
    if broken:
        return True
    want = ctx.rng.randrange(1, 200_000)
    got = 0
    end = time.monotonic() + 10
    while got < want and time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            got += len(chunk)
        except BlockingIOError:
            await asyncio.sleep(0.05)
        except OSError:
            return True
    reset_close(sock)
    return None


BEHAVIOURS = {
    "slowloris": slowloris,
    "silent": silent,
    "flooder": flooder,
    "invalid": invalid,
    "aborter": aborter,
}


class Ctx:
    def __init__(self, info_hashes, seed):
        self.info_hashes = info_hashes
        self.rng = random.Random(seed)

    def pick(self):
        return self.rng.choice(self.info_hashes)


async def slot(loop, name, index, octet, target, ctx, pool, deadline):
    source = f"127.77.{octet}.{index + 1}"
    # Start the slots of a pool spread over the first few seconds.
    await asyncio.sleep(ctx.rng.random() * 3)
    while time.monotonic() < deadline - 1:
        sock = await connect(loop, target, source)
        if sock is None:
            pool.refused += 1
            await asyncio.sleep(1)
            continue
        pool.opened += 1
        pool.open_now += 1
        started = time.monotonic()
        try:
            remaining = deadline - started
            closed = await asyncio.wait_for(BEHAVIOURS[name](sock, ctx, pool), max(remaining, 0.1))
        except asyncio.TimeoutError:
            closed = None  # the run ended
        finally:
            pool.open_now -= 1
            if sock.fileno() != -1:
                sock.close()
        held = time.monotonic() - started
        if closed:
            pool.closed_by_target += 1
            pool.holds.append(held)
        elif closed is False:
            pool.held += 1
        await asyncio.sleep(0.5 + ctx.rng.random())


def write_stats(path, pools, started):
    body = {"elapsed_s": round(time.monotonic() - started, 1)}
    body.update({name: p.report() for name, p in pools.items()})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f, indent=1)
    os.replace(tmp, path)


async def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--info-hashes", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--slowloris", type=int, default=60)
    ap.add_argument("--silent", type=int, default=40)
    ap.add_argument("--flooders", type=int, default=8)
    ap.add_argument("--invalid", type=int, default=4)
    ap.add_argument("--aborters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("soak-attackers: the target must be on loopback (127.0.0.0/8)")
    target = (host, int(port))
    with open(args.info_hashes) as f:
        info_hashes = [bytes.fromhex(line.strip()) for line in f if line.strip()]
    if not info_hashes:
        sys.exit("soak-attackers: no info-hashes")
    ctx = Ctx(info_hashes, args.seed)
    counts = {"slowloris": args.slowloris, "silent": args.silent, "flooder": args.flooders,
              "invalid": args.invalid, "aborter": args.aborters}
    pools = {name: Pool(name) for name in counts}
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + args.duration
    tasks = []
    for octet, (name, n) in enumerate(counts.items(), start=1):
        for i in range(min(n, 250)):
            tasks.append(asyncio.create_task(
                slot(loop, name, i, octet, target, ctx, pools[name], deadline)))

    async def reporter():
        while time.monotonic() < deadline:
            write_stats(args.stats, pools, started)
            await asyncio.sleep(5)

    rep = asyncio.create_task(reporter())
    await asyncio.gather(*tasks)
    rep.cancel()
    write_stats(args.stats, pools, started)


if __name__ == "__main__":
    asyncio.run(main())
