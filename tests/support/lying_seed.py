#!/usr/bin/python3
"""A BitTorrent seeder that lies: it answers requests with corrupt blocks.

    lying_seed.py FILE.torrent DATA_PATH --listen IP:PORT [--corrupt-fraction 1.0]

Used by ringseed's integration tests to check that a downloader detects bad
pieces (SHA-1 mismatch) and bans the peer that sent them. Pure Python 3
standard library: no libtorrent, so nothing in it is "smart".

What it does:
  - Parses FILE.torrent with its own small bencode decoder; the info-hash is
    the SHA-1 of the raw bencoded bytes of the `info` value, exactly as they
    appear in the file. Single-file and multi-file torrents (BEP 47 pad files
    read as zeros). DATA_PATH is the data itself (the file, or the torrent's
    top directory) or the directory that holds it.
  - Listens on --listen (a loopback address; port 0 picks a free one) and
    prints one line `ready IP:PORT` (the bound address), flushed, once
    listening.
  - Serves each incoming connection in a thread: BEP 3 handshake with all
    reserved bytes zero (no fast extension, no extension protocol, no DHT);
    a peer with another info-hash is dropped, and so is an encrypted (MSE)
    handshake (libtorrent then retries in plaintext). Then it sends a full
    bitfield and `unchoke` right away, without waiting for `interested`.
    It only accepts connections, never dials out, and knows nothing of
    BitTorrent v2 (a hybrid torrent is served by its v1 info-hash).
  - Answers every `request` with a `piece` message of the requested length.
    A fraction of the blocks, --corrupt-fraction (default 1.0: all of them),
    is corrupted: every byte XOR 0xFF. Which blocks is deterministic: a block
    is corrupt when the SHA-1 of its (piece, offset) pair, read as a number in
    [0, 1), is below the fraction, so runs are reproducible and 0 means none.
    Other blocks carry the right bytes.
  - Ignores choke/unchoke/interested/not interested/have/bitfield/cancel/port,
    keep-alives and unknown messages. A request outside the torrent, or a
    malformed or oversized message, closes that connection. A peer closing
    or resetting the connection ends its thread quietly.
  - On SIGTERM, SIGINT or exit prints one line `served N corrupt M` (blocks
    sent in `piece` messages, and how many of those were corrupt) on stdout,
    flushed, then exits 0. Per-connection events (connect, close with the
    reason and the counts for that connection) go to stderr, and a closing
    line `connections K` too.

Example (a liar that corrupts half of the blocks):
    lying_seed.py x.torrent data/ --listen 127.0.0.1:0 --corrupt-fraction 0.5
"""
import argparse
import hashlib
import os
import signal
import socket
import struct
import sys
import threading

PROTOCOL = b"BitTorrent protocol"
HANDSHAKE_LEN = 1 + len(PROTOCOL) + 8 + 20 + 20
PEER_ID = b"-LY0001-" + hashlib.sha1(str(os.getpid()).encode()).digest()[:12]
MAX_BLOCK = 128 * 1024  # larger requests close the connection
MAX_MESSAGE = 1 << 20  # larger incoming messages close the connection
XOR_FF = bytes(b ^ 0xFF for b in range(256))  # translate table: corrupt a block

# Message ids (BEP 3).
CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL = range(9)


# ---------------------------------------------------------------- bencode

class BencodeError(ValueError):
    pass


def bdecode(data, i=0):
    """Decodes one value at data[i:]; returns (value, end). Byte strings stay
    bytes; dict keys are bytes."""
    value, end, _ = _decode(data, i, want_spans=False)
    return value, end


def _decode(data, i, want_spans):
    """Returns (value, end, spans) where spans maps a top-level dict key to
    the (start, end) of its raw value (only for the outermost dict)."""
    if i >= len(data):
        raise BencodeError("unexpected end of data")
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        text = data[i + 1:end]
        if not text or text == b"-" or text.startswith(b"-0") or (text.startswith(b"0") and text != b"0"):
            raise BencodeError(f"bad integer {text!r}")
        return int(text), end + 1, None
    if c.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise BencodeError("string runs past the end")
        return data[start:start + length], start + length, None
    if c == b"l":
        items, i = [], i + 1
        while data[i:i + 1] != b"e":
            value, i, _ = _decode(data, i, False)
            items.append(value)
        return items, i + 1, None
    if c == b"d":
        out, spans, i = {}, {}, i + 1
        while data[i:i + 1] != b"e":
            key, i, _ = _decode(data, i, False)
            if not isinstance(key, bytes):
                raise BencodeError("dict key is not a string")
            start = i
            value, i, _ = _decode(data, i, False)
            out[key] = value
            if want_spans:
                spans[key] = (start, i)
        return out, i + 1, spans
    raise BencodeError(f"unexpected byte {c!r} at {i}")


# ---------------------------------------------------------------- torrent

class Torrent:
    """What the liar needs of a .torrent: info-hash, piece geometry, files."""

    def __init__(self, path, data_path):
        raw = open(path, "rb").read()
        meta, end, spans = _decode(raw, 0, want_spans=True)
        if not isinstance(meta, dict) or b"info" not in meta:
            raise BencodeError("not a torrent: no info dictionary")
        start, stop = spans[b"info"]
        self.info_hash = hashlib.sha1(raw[start:stop]).digest()
        info = meta[b"info"]
        self.piece_length = info[b"piece length"]
        self.num_pieces = len(info[b"pieces"]) // 20
        name = info[b"name"].decode("utf-8", "surrogateescape")
        # files: list of (path or None for a pad file, length, offset in torrent)
        self.files = []
        offset = 0
        if b"files" in info:
            root = data_path
            if os.path.basename(os.path.normpath(data_path)) != name and \
                    os.path.isdir(os.path.join(data_path, name)):
                root = os.path.join(data_path, name)
            for f in info[b"files"]:
                parts = [p.decode("utf-8", "surrogateescape") for p in f[b"path"]]
                pad = b"p" in f.get(b"attr", b"")
                self.files.append((None if pad else os.path.join(root, *parts), f[b"length"], offset))
                offset += f[b"length"]
        else:
            file_path = data_path
            if os.path.isdir(data_path):
                file_path = os.path.join(data_path, name)
            self.files.append((file_path, info[b"length"], 0))
            offset = info[b"length"]
        self.total_size = offset
        for p, length, _ in self.files:
            if p is None:
                continue
            try:
                size = os.path.getsize(p)
            except OSError as e:
                raise SystemExit(f"lying_seed: cannot read the data: {e}")
            if size < length:
                raise SystemExit(f"lying_seed: {p} is shorter than the torrent says ({length} bytes)")

    def piece_size(self, index):
        if index == self.num_pieces - 1:
            return self.total_size - index * self.piece_length
        return self.piece_length

    def bitfield(self):
        """All pieces; the spare bits of the last byte stay zero."""
        field = bytearray((self.num_pieces + 7) // 8)
        for i in range(self.num_pieces):
            field[i // 8] |= 0x80 >> (i % 8)
        return bytes(field)


class Reader:
    """Reads spans of the torrent's concatenated data (one per connection)."""

    def __init__(self, torrent):
        self.files = [(open(p, "rb") if p else None, length, offset)
                      for p, length, offset in torrent.files]

    def read(self, offset, length):
        out = bytearray()
        for f, flen, foff in self.files:
            if length == 0:
                break
            if offset >= foff + flen or offset + length <= foff:
                continue
            start = offset - foff
            n = min(length, flen - start)
            out += os.pread(f.fileno(), n, start) if f else bytes(n)
            offset += n
            length -= n
        return bytes(out)

    def close(self):
        for f, _, _ in self.files:
            if f:
                f.close()


# ---------------------------------------------------------------- serving

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.served = self.corrupt = self.connections = 0

    def add(self, served=0, corrupt=0, connections=0):
        with self.lock:
            self.served += served
            self.corrupt += corrupt
            self.connections += connections


def is_corrupt(index, begin, fraction):
    """Deterministic: corrupt iff hash(piece, offset) in [0, 1) < fraction."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = int.from_bytes(hashlib.sha1(struct.pack(">II", index, begin)).digest()[:8], "big")
    return h < int(fraction * (1 << 64))


def recv_exact(sock, n):
    """n bytes, or None if the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(sock, addr, torrent, fraction, stats):
    peer = f"{addr[0]}:{addr[1]}"
    served = corrupt = 0
    reason = "closed by peer"
    reader = Reader(torrent)
    try:
        # The handshake up to the info-hash; ours goes out before we read the
        # peer's peer id, so a dialer that waits for ours before sending its
        # peer id is served too.
        hs = recv_exact(sock, HANDSHAKE_LEN - 20)
        if hs is None:
            return
        if hs[0] != len(PROTOCOL) or hs[1:20] != PROTOCOL:
            reason = "not a BitTorrent handshake (encrypted?)"
            return
        if hs[28:48] != torrent.info_hash:
            reason = f"unknown info-hash {hs[28:48].hex()}"
            return
        sock.sendall(bytes([len(PROTOCOL)]) + PROTOCOL + bytes(8) + torrent.info_hash + PEER_ID)
        if recv_exact(sock, 20) is None:
            return
        field = torrent.bitfield()
        sock.sendall(struct.pack(">IB", 1 + len(field), BITFIELD) + field
                     + struct.pack(">IB", 1, UNCHOKE))
        while True:
            head = recv_exact(sock, 4)
            if head is None:
                return
            (length,) = struct.unpack(">I", head)
            if length == 0:
                continue  # keep-alive
            if length > MAX_MESSAGE:
                reason = f"message of {length} bytes"
                return
            body = recv_exact(sock, length)
            if body is None:
                return
            if body[0] != REQUEST:
                continue  # everything else is ignored
            if length != 13:
                reason = "malformed request"
                return
            index, begin, size = struct.unpack(">III", body[1:])
            if (index >= torrent.num_pieces or size == 0 or size > MAX_BLOCK
                    or begin + size > torrent.piece_size(index)):
                reason = f"bad request piece {index} offset {begin} length {size}"
                return
            block = reader.read(index * torrent.piece_length + begin, size)
            bad = is_corrupt(index, begin, fraction)
            if bad:
                block = block.translate(XOR_FF)
            sock.sendall(struct.pack(">IBII", 9 + size, PIECE, index, begin) + block)
            served += 1
            corrupt += bad
            stats.add(served=1, corrupt=int(bad))
    except (ConnectionError, TimeoutError) as e:
        reason = f"connection error: {e}"
    except OSError as e:
        reason = f"socket error: {e}"
    finally:
        reader.close()
        try:
            sock.close()
        except OSError:
            pass
        print(f"peer {peer} closed ({reason}): served {served} corrupt {corrupt}",
              file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("torrent")
    ap.add_argument("data_path")
    ap.add_argument("--listen", required=True, help="IP:PORT (port 0: any free port)")
    ap.add_argument("--corrupt-fraction", type=float, default=1.0,
                    help="fraction of blocks sent corrupt, 0.0-1.0 (default 1.0)")
    args = ap.parse_args()
    if not 0.0 <= args.corrupt_fraction <= 1.0:
        ap.error("--corrupt-fraction must be between 0 and 1")

    torrent = Torrent(args.torrent, args.data_path)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    listener.settimeout(0.2)  # so that the accept loop sees the stop flag
    bound = listener.getsockname()
    shown = f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"

    stats = Stats()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready {shown}", flush=True)
    print(f"lying_seed: {torrent.num_pieces} pieces of {torrent.piece_length}, "
          f"info-hash {torrent.info_hash.hex()}, corrupt fraction {args.corrupt_fraction}",
          file=sys.stderr, flush=True)
    try:
        while not stop.is_set():
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(None)
            stats.add(connections=1)
            print(f"peer {addr[0]}:{addr[1]} connected", file=sys.stderr, flush=True)
            threading.Thread(target=serve, args=(sock, addr, torrent, args.corrupt_fraction, stats),
                             daemon=True).start()
    finally:
        listener.close()
        with stats.lock:
            print(f"connections {stats.connections}", file=sys.stderr, flush=True)
            print(f"served {stats.served} corrupt {stats.corrupt}", flush=True)
    # Handler threads are daemons: a connection still open does not hold us.


if __name__ == "__main__":
    main()
