//! The seeding data plane in-process: a real `Plane` on loopback and a
//! minimal peer written with the engine's own wire codec, checking every
//! byte served and the handling of bad peers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::write_data;
use ringseed_engine::create::{create, CreateOptions};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::plane::control::{Plane, PlaneConfig};
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::proto::extension::{ExtensionHandshake, MetadataMessage, UT_METADATA};
use ringseed_engine::proto::wire::{self, BlockRequest, Handshake, Message, Reserved};
use ringseed_engine::Metainfo;

struct Fixture {
    _dir: tempfile::TempDir,
    data: Vec<u8>,
    metainfo: Metainfo,
    seeder: Plane,
}

fn start(len: usize, piece: u64, config: PlaneConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payload.bin");
    write_data(&path, len, 42);
    let data = std::fs::read(&path).unwrap();
    let opts = CreateOptions {
        piece_length: Some(piece),
        ..Default::default()
    };
    let metainfo = create(&path, &opts, &()).unwrap().metainfo;
    let torrent = Torrent::open(
        metainfo.clone(),
        &DataPaths::in_save_dir(&metainfo.info, dir.path()),
    )
    .unwrap();
    let seeder = Plane::start(config, vec![torrent]).unwrap();
    Fixture {
        _dir: dir,
        data,
        metainfo,
        seeder,
    }
}

fn loopback_config() -> PlaneConfig {
    PlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        io: common::data_plane_under_test(),
        ..Default::default()
    }
}

/// A blocking test peer.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr, info_hash: [u8; 20], reserved: Reserved) -> (Peer, Handshake) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut peer = Peer {
            stream,
            buf: Vec::new(),
        };
        let mut hs = Vec::new();
        Handshake {
            reserved,
            info_hash: ringseed_engine::InfoHash(info_hash),
            peer_id: [7; 20],
        }
        .encode(&mut hs);
        peer.stream.write_all(&hs).unwrap();
        let theirs = loop {
            if let Some(h) = Handshake::decode(&peer.buf).unwrap() {
                peer.buf.drain(..wire::HANDSHAKE_LEN);
                break h;
            }
            peer.fill();
        };
        (peer, theirs)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read from seeder");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    fn send(&mut self, msg: Message<'_>) {
        assert!(self.try_send(msg), "write to seeder failed");
    }

    /// Connects, says it is interested and waits for the unchoke.
    fn unchoked(addr: SocketAddr, info_hash: [u8; 20]) -> Peer {
        let (mut peer, _) = Peer::connect(addr, info_hash, Reserved::OURS);
        peer.send(Message::Interested);
        while peer.next() != Owned::Unchoke {}
        peer
    }

    /// Requests one block and returns it.
    fn fetch(&mut self, piece: u32, offset: u32, length: u32) -> Vec<u8> {
        self.send(Message::Request(BlockRequest {
            piece,
            offset,
            length,
        }));
        match self.next_but_unchoke() {
            Owned::Piece { data, .. } => data,
            other => panic!("expected a block, got {other:?}"),
        }
    }

    /// The next message other than `unchoke` (the seeder says it again when
    /// we say we are interested).
    fn next_but_unchoke(&mut self) -> Owned {
        loop {
            match self.next() {
                Owned::Unchoke => {}
                other => return other,
            }
        }
    }

    /// Sends, reporting whether the write succeeded (the seeder may have
    /// closed the connection).
    fn try_send(&mut self, msg: Message<'_>) -> bool {
        let mut out = Vec::new();
        wire::encode(&msg, &mut out);
        self.stream.write_all(&out).is_ok()
    }

    /// The next message, as (id-ish owned form).
    fn next(&mut self) -> Owned {
        loop {
            if let Some((msg, used)) = wire::decode(&self.buf, 1 << 20).unwrap() {
                let owned = Owned::from(msg);
                self.buf.drain(..used);
                return owned;
            }
            assert!(self.fill() > 0, "seeder closed the connection");
        }
    }

    /// Sends our extension handshake, asking for ut_metadata replies on `id`.
    fn announce_ut_metadata(&mut self, id: u8) {
        let mut hs = Vec::new();
        ExtensionHandshake {
            extensions: vec![(UT_METADATA.into(), id)],
            ..Default::default()
        }
        .encode(&mut hs);
        self.send(Message::Extended {
            id: 0,
            payload: &hs,
        });
    }

    /// Whether the seeder closes the connection (reads until EOF).
    fn closed_by_seeder(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Owned {
    Unchoke,
    HaveAll,
    Bitfield(Vec<u8>),
    Piece {
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Reject(BlockRequest),
    Extended {
        id: u8,
        payload: Vec<u8>,
    },
    Other(String),
}

impl From<Message<'_>> for Owned {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Unchoke => Owned::Unchoke,
            Message::HaveAll => Owned::HaveAll,
            Message::Bitfield(b) => Owned::Bitfield(b.to_vec()),
            Message::Piece {
                piece,
                offset,
                data,
            } => Owned::Piece {
                piece,
                offset,
                data: data.to_vec(),
            },
            Message::RejectRequest(r) => Owned::Reject(r),
            Message::Extended { id, payload } => Owned::Extended {
                id,
                payload: payload.to_vec(),
            },
            other => Owned::Other(format!("{other:?}")),
        }
    }
}

#[test]
fn serves_every_block_of_every_piece_byte_exact() {
    let f = start(1_000_003, 65536, loopback_config());
    let (mut peer, theirs) = Peer::connect(
        f.seeder.local_addr(),
        f.metainfo.info_hash.0,
        Reserved::OURS,
    );
    assert_eq!(theirs.info_hash, f.metainfo.info_hash);
    assert!(theirs.reserved.fast() && theirs.reserved.extension_protocol());
    let Owned::Extended { id: 0, payload } = peer.next() else {
        panic!("extension handshake first")
    };
    let ext = ExtensionHandshake::decode(&payload).unwrap();
    assert!(ext.reqq.unwrap() >= 64);
    assert_eq!(ext.metadata_size, Some(f.metainfo.info_bytes.len() as u64));
    assert_eq!(ext.your_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(peer.next(), Owned::HaveAll);
    peer.send(Message::Interested);
    assert_eq!(peer.next(), Owned::Unchoke);

    // Request everything in 16 KiB blocks (the last one short), a piece at
    // a time, pipelined, and compare with the file.
    let mut received = vec![0u8; f.data.len()];
    let layout = ringseed_engine::proto::layout::Layout::new(&f.metainfo.info);
    for piece in 0..layout.num_pieces() {
        let len = layout.piece_len(piece) as u32;
        let mut offset = 0;
        let mut expected = 0;
        while offset < len {
            let length = (len - offset).min(16384);
            peer.send(Message::Request(BlockRequest {
                piece,
                offset,
                length,
            }));
            offset += length;
            expected += 1;
        }
        for _ in 0..expected {
            let Owned::Piece {
                piece: p,
                offset,
                data,
            } = peer.next_but_unchoke()
            else {
                panic!("a block")
            };
            let start = layout.piece_range(p).start as usize + offset as usize;
            received[start..start + data.len()].copy_from_slice(&data);
        }
    }
    assert!(received == f.data, "every byte served matches the file");
}

#[test]
fn serves_the_info_dictionary_with_ut_metadata() {
    let f = start(300_000, 16384, loopback_config());
    let (mut peer, _) = Peer::connect(
        f.seeder.local_addr(),
        f.metainfo.info_hash.0,
        Reserved::OURS,
    );
    let Owned::Extended { id: 0, payload } = peer.next() else {
        panic!()
    };
    let size = ExtensionHandshake::decode(&payload)
        .unwrap()
        .metadata_size
        .unwrap() as usize;
    let their_id = ExtensionHandshake::decode(&payload)
        .unwrap()
        .id_of(UT_METADATA)
        .unwrap();
    peer.announce_ut_metadata(5);
    let mut info = Vec::new();
    for piece in 0..size.div_ceil(16384) as u32 {
        let mut req = Vec::new();
        MetadataMessage::Request { piece }.encode(&mut req);
        peer.send(Message::Extended {
            id: their_id,
            payload: &req,
        });
        let reply = loop {
            if let Owned::Extended { id: 5, payload } = peer.next() {
                break payload;
            }
        };
        let MetadataMessage::Data {
            data, total_size, ..
        } = MetadataMessage::decode(&reply).unwrap()
        else {
            panic!("metadata data")
        };
        assert_eq!(total_size as usize, size);
        info.extend_from_slice(data);
    }
    assert_eq!(ringseed_engine::hash::sha1(&info), f.metainfo.info_hash.0);
}

#[test]
fn bad_peers_are_dropped_and_counted_and_the_worker_keeps_serving() {
    let f = start(200_000, 32768, loopback_config());
    let addr = f.seeder.local_addr();
    // Unknown info-hash: dropped after the handshake.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: ringseed_engine::InfoHash([9; 20]),
        peer_id: [1; 20],
    }
    .encode(&mut hs);
    s.write_all(&hs).unwrap();
    let mut peer = Peer {
        stream: s,
        buf: Vec::new(),
    };
    assert!(peer.closed_by_seeder());

    // Not BitTorrent at all: taken for the start of an encrypted (MSE)
    // handshake, whose synchronisation it never sends.
    let mut s = TcpStream::connect(addr).unwrap();
    let cookie = "x".repeat(700);
    s.write_all(format!("GET / HTTP/1.1\r\nCookie: {cookie}\r\n\r\n").as_bytes())
        .unwrap();
    assert!(Peer {
        stream: s,
        buf: Vec::new()
    }
    .closed_by_seeder());

    // A request beyond the torrent.
    let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
    peer.send(Message::Interested);
    peer.send(Message::Request(BlockRequest {
        piece: 1000,
        offset: 0,
        length: 16384,
    }));
    assert!(peer.closed_by_seeder());

    // An oversized frame.
    let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
    peer.stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 5]).unwrap();
    assert!(peer.closed_by_seeder());

    // A good peer is still served.
    let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::default());
    assert!(
        matches!(peer.next(), Owned::Bitfield(_)),
        "no fast extension: a bitfield"
    );
    peer.send(Message::Interested);
    assert_eq!(peer.next(), Owned::Unchoke);
    let data = peer.fetch(0, 0, 16384);
    assert_eq!(data, f.data[..16384]);

    // The counters reach the stats within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = f.seeder.stats();
        // The HTTP request counts as a failed MSE handshake, not as a
        // violation.
        if stats.total.protocol_errors >= 2
            && stats.total.mse_failed_no_sync >= 1
            && stats.total.blocks_sent >= 1
        {
            assert!(stats.torrents[0].stats.protocol_errors >= 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats never showed the errors: {stats:?}"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn a_file_truncated_during_a_transfer_errors_its_torrent_and_the_other_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut torrents = Vec::new();
    let mut metas = Vec::new();
    for name in ["victim.bin", "survivor.bin"] {
        let path = dir.path().join(name);
        write_data(&path, 4 << 20, name.len() as u64);
        let opts = CreateOptions {
            piece_length: Some(262144),
            ..Default::default()
        };
        let m = create(&path, &opts, &()).unwrap().metainfo;
        let paths = DataPaths::in_save_dir(&m.info, dir.path());
        torrents.push(Torrent::open(m.clone(), &paths).unwrap());
        metas.push(m);
    }
    let seeder = Plane::start(loopback_config(), torrents).unwrap();
    let addr = seeder.local_addr();
    let survivor_data = std::fs::read(dir.path().join("survivor.bin")).unwrap();

    let mut victim = Peer::unchoked(addr, metas[0].info_hash.0);
    // A transfer in progress: one block arrives.
    victim.fetch(0, 0, 16384);

    // Cut the file to 100 KB under the running seeder, then ask for blocks
    // beyond the cut.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("victim.bin"))
        .unwrap()
        .set_len(100_000)
        .unwrap();
    for piece in 8..12 {
        // The seeder may drop us after the first of these: a failed write
        // is the expected outcome, checked just below.
        let req = BlockRequest {
            piece,
            offset: 0,
            length: 16384,
        };
        if !victim.try_send(Message::Request(req)) {
            break;
        }
    }
    assert!(
        victim.closed_by_seeder(),
        "the peer of an errored torrent is dropped"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let error = loop {
        let stats = seeder.stats();
        if let Some(e) = stats
            .torrents
            .iter()
            .find(|t| t.name == "victim.bin")
            .and_then(|t| t.error.clone())
        {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "torrent never marked errored"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    };
    assert!(error.contains("truncated"), "{error}");

    // New peers of the errored torrent are refused...
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: metas[0].info_hash,
        peer_id: [1; 20],
    }
    .encode(&mut hs);
    s.write_all(&hs).unwrap();
    assert!(Peer {
        stream: s,
        buf: Vec::new()
    }
    .closed_by_seeder());

    // ...and the other torrent is served, byte-exact, by the same process.
    let mut peer = Peer::unchoked(addr, metas[1].info_hash.0);
    for piece in [0u32, 15] {
        peer.send(Message::Request(BlockRequest {
            piece,
            offset: 16384,
            length: 16384,
        }));
        let Owned::Piece { data, .. } = peer.next_but_unchoke() else {
            panic!("a block")
        };
        let start = piece as usize * 262144 + 16384;
        assert_eq!(data, survivor_data[start..start + 16384]);
    }
    assert!(seeder
        .shutdown()
        .unwrap()
        .torrents
        .iter()
        .any(|t| t.error.is_none()));
}

#[test]
fn connection_limits_per_ip_and_per_torrent_are_enforced() {
    let config = PlaneConfig {
        max_connections_per_ip: 2,
        max_connections_per_torrent: 3,
        workers: 1,
        ..loopback_config()
    };
    let f = start(100_000, 16384, config);
    let addr = f.seeder.local_addr();
    let hash = f.metainfo.info_hash.0;
    let connect_from = |ip: &str| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())
            .unwrap();
        socket.connect(&addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut hs = Vec::new();
        Handshake {
            reserved: Reserved::OURS,
            info_hash: ringseed_engine::InfoHash(hash),
            peer_id: [3; 20],
        }
        .encode(&mut hs);
        let mut peer = Peer {
            stream,
            buf: Vec::new(),
        };
        peer.stream.write_all(&hs).unwrap();
        peer
    };
    let handshaken = |peer: &mut Peer| loop {
        match Handshake::decode(&peer.buf) {
            Ok(Some(_)) => return true,
            Ok(None) if peer.fill() > 0 => continue,
            _ => return false,
        }
    };
    // Two from 127.0.0.2 are served; a third from the same address is not.
    let mut a = connect_from("127.0.0.2");
    let mut b = connect_from("127.0.0.2");
    assert!(handshaken(&mut a) && handshaken(&mut b));
    let mut c = connect_from("127.0.0.2");
    assert!(c.closed_by_seeder(), "third connection from one IP refused");
    // A third peer of the torrent from elsewhere is served; a fourth is not.
    let mut d = connect_from("127.0.0.3");
    assert!(handshaken(&mut d));
    let mut e = connect_from("127.0.0.4");
    assert!(
        e.closed_by_seeder(),
        "fourth connection to the torrent refused"
    );
}

#[test]
fn one_dual_stack_listener_serves_ipv4_and_ipv6_peers() {
    let config = PlaneConfig {
        listen: "[::]:0".parse().unwrap(),
        ..loopback_config()
    };
    let f = start(50_000, 16384, config);
    let port = f.seeder.local_addr().port();
    for ip in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let (mut peer, theirs) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
        assert_eq!(theirs.info_hash, f.metainfo.info_hash, "{ip}");
        let Owned::Extended { payload, .. } = peer.next() else {
            panic!("extension handshake")
        };
        let yourip = ExtensionHandshake::decode(&payload)
            .unwrap()
            .your_ip
            .unwrap();
        assert_eq!(yourip, addr.ip(), "v4-mapped addresses are shown as IPv4");
    }
}

/// Regression: a 4 GiB length prefix used to make the worker grow its
/// receive buffer to that size before closing the connection.
#[test]
fn an_oversized_length_prefix_is_refused_without_allocating_it() {
    let f = start(
        50_000,
        16384,
        PlaneConfig {
            workers: 1,
            ..loopback_config()
        },
    );
    let addr = f.seeder.local_addr();
    let rss_kib = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
            })
            .unwrap()
    };
    for _ in 0..8 {
        let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
        peer.stream.write_all(&[0xff, 0xff, 0xff, 0xff, 7]).unwrap();
        assert!(peer.closed_by_seeder());
    }
    assert!(
        rss_kib() < 1 << 20,
        "peak RSS stayed under 1 GiB: {} KiB",
        rss_kib()
    );
    // Still serving.
    Peer::unchoked(addr, f.metainfo.info_hash.0);
}

/// A peer that floods metadata requests without reading the replies stops
/// being read, then is dropped: its replies cannot pile up without bound.
#[test]
fn a_peer_that_never_reads_cannot_make_us_queue_without_bound() {
    let f = start(
        3 << 20,
        262144,
        PlaneConfig {
            workers: 1,
            ..loopback_config()
        },
    );
    let addr = f.seeder.local_addr();
    let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
    peer.announce_ut_metadata(5);
    // Each 33-byte request asks for up to 16 KiB back; never read anything.
    let mut req = Vec::new();
    MetadataMessage::Request { piece: 0 }.encode(&mut req);
    let mut frame = Vec::new();
    wire::encode(
        &Message::Extended {
            id: 1,
            payload: &req,
        },
        &mut frame,
    );
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 1000)
        .collect();
    peer.stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut written = 0usize;
    // Writes stall (we stopped reading) or fail (we closed) long before
    // 64 MiB of requests, i.e. ~32 GiB of replies, could be queued.
    while written < 64 << 20 {
        match peer.stream.write(&burst) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        written < 64 << 20,
        "the seeder kept reading a peer that never reads"
    );
    // The seeder is fine and serves others.
    let mut other = Peer::unchoked(addr, f.metainfo.info_hash.0);
    other.fetch(0, 0, 16384);
}

/// Reads the handshake a peer that dialed us sends first.
fn accept_dialer(listener: &std::net::TcpListener) -> (Peer, Handshake) {
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut peer = Peer {
        stream,
        buf: Vec::new(),
    };
    let theirs = loop {
        if let Some(h) = Handshake::decode(&peer.buf).unwrap() {
            peer.buf.drain(..wire::HANDSHAKE_LEN);
            break h;
        }
        assert!(peer.fill() > 0, "the seeder hung up before its handshake");
    };
    (peer, theirs)
}

#[test]
fn dials_the_peers_it_is_given_and_serves_them() {
    let f = start(200_000, 32768, loopback_config());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    f.seeder
        .dialer()
        .dial(f.metainfo.info_hash, &[listener.local_addr().unwrap()]);
    let (mut peer, theirs) = accept_dialer(&listener);
    assert_eq!(
        theirs.info_hash, f.metainfo.info_hash,
        "the seeder speaks first"
    );
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: f.metainfo.info_hash,
        peer_id: [8; 20],
    }
    .encode(&mut hs);
    peer.stream.write_all(&hs).unwrap();
    assert!(matches!(peer.next(), Owned::Extended { id: 0, .. }));
    assert_eq!(peer.next(), Owned::HaveAll);
    peer.send(Message::Interested);
    assert_eq!(peer.next(), Owned::Unchoke);
    let data = peer.fetch(3, 0, 16384);
    assert_eq!(data, f.data[3 * 32768..3 * 32768 + 16384]);

    // Dialing it again while connected does nothing (no duplicate); a peer
    // that answers with another torrent's handshake is dropped.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    f.seeder.dialer().dial(
        f.metainfo.info_hash,
        &[listener.local_addr().unwrap(), other.local_addr().unwrap()],
    );
    let (mut wrong, _) = accept_dialer(&other);
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: ringseed_engine::InfoHash([0; 20]),
        peer_id: [8; 20],
    }
    .encode(&mut hs);
    wrong.stream.write_all(&hs).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "no second connection to a connected peer"
    );
    assert!(wrong.closed_by_seeder());
}

/// Waits (up to 10 s) until the plane's counters satisfy `check` (workers
/// flush them once a second).
fn wait_stats(
    f: &Fixture,
    what: &str,
    check: impl Fn(&ringseed_engine::stats::StatsSnapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total = f.seeder.stats().total;
        if check(&total) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {total:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Regression (issue 13): clients that connect and then send nothing, or a
/// byte at a time, held every connection slot and locked real peers out.
/// At the cap, the oldest connection still in its handshake makes room.
#[test]
fn slow_clients_at_the_connection_cap_do_not_lock_out_a_real_peer() {
    let config = PlaneConfig {
        max_connections: 6,
        max_connections_per_ip: 0,
        workers: 1,
        ..loopback_config()
    };
    let f = start(100_000, 16384, config);
    let addr = f.seeder.local_addr();
    let slow: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[19]).unwrap();
            s
        })
        .collect();
    wait_stats(&f, "accepted the slow clients", |t| {
        t.connections_accepted == 6
    });
    // A connection in its handshake is evicted for a new one only once it
    // is a second old (a burst does not evict itself): let them age.
    std::thread::sleep(Duration::from_millis(1100));
    let mut peer = Peer::unchoked(addr, f.metainfo.info_hash.0);
    assert_eq!(peer.fetch(0, 0, 16384), f.data[..16384]);
    wait_stats(&f, "counted the eviction", |t| t.evicted_handshakes >= 1);
    drop(slow);
}

/// Regression (issue 13): the handshake timeout restarted on every byte, so
/// a client sending one byte every 10 s held a connection for ~11 minutes.
/// The deadline now counts from the accept.
#[test]
fn a_trickling_handshake_is_closed_at_its_deadline() {
    let config = PlaneConfig {
        handshake_timeout: Duration::from_secs(2),
        ..loopback_config()
    };
    let f = start(50_000, 16384, config);
    let mut s = TcpStream::connect(f.seeder.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let started = Instant::now();
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: f.metainfo.info_hash,
        peer_id: [7; 20],
    }
    .encode(&mut hs);
    // The attack: a byte of a valid handshake every 400 ms.
    let closed = hs.iter().any(|b| {
        if s.write_all(&[*b]).is_err() {
            return true;
        }
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    });
    let held = started.elapsed();
    assert!(closed, "the seeder kept the trickling client");
    assert!(held < Duration::from_secs(5), "held for {held:?}");
}

/// Regression (found by black-box testing of the epoll plane): a peer whose
/// last message and FIN arrive in one segment was not seen to close (the
/// FIN makes no edge of its own), so its socket sat in CLOSE-WAIT, holding
/// its slot and its per-address share, until the idle timeout.
#[test]
fn a_peer_closing_right_after_its_last_message_is_closed_at_once() {
    let f = start(50_000, 16384, loopback_config());
    let addr = f.seeder.local_addr();
    let (mut peer, _) = Peer::connect(addr, f.metainfo.info_hash.0, Reserved::OURS);
    // Data and FIN in one segment.
    socket2::SockRef::from(&peer.stream)
        .set_tcp_cork(true)
        .unwrap();
    peer.send(Message::NotInterested);
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    peer.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(peer.closed_by_seeder(), "the seeder kept a closed peer");
}

/// A block spanning more files than one `sendmsg` can name (IOV_MAX, 1024)
/// was refused; it is now read into a buffer (by the kernel, with a
/// positioned read: a truncated file is a short read, never SIGBUS) and
/// sent from there, on either backend.
#[test]
fn a_block_of_a_thousand_tiny_files_is_served_from_a_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny");
    std::fs::create_dir(&root).unwrap();
    let mut expected = Vec::new();
    for i in 0..2000u32 {
        let bytes: Vec<u8> = (0..10).map(|j| (i * 7 + j) as u8).collect();
        std::fs::write(root.join(format!("f{i:04}")), &bytes).unwrap();
        expected.extend_from_slice(&bytes);
    }
    let opts = CreateOptions {
        piece_length: Some(16384),
        ..Default::default()
    };
    let metainfo = create(&root, &opts, &()).unwrap().metainfo;
    let torrent = Torrent::open(
        metainfo.clone(),
        &DataPaths::in_save_dir(&metainfo.info, dir.path()),
    )
    .unwrap();
    let seeder = Plane::start(loopback_config(), vec![torrent]).unwrap();
    let mut peer = Peer::unchoked(seeder.local_addr(), metainfo.info_hash.0);
    // 1639 files in the first block, then the rest of the torrent.
    assert_eq!(peer.fetch(0, 0, 16384), expected[..16384]);
    assert_eq!(peer.fetch(1, 0, 20000 - 16384), expected[16384..]);
}

/// Regression (found with webtorrent): seeding with `upload_slots`, a peer
/// that came while slots were free waited for the next choker round (10 s)
/// for its first unchoke. Slots are now filled between rounds: with rounds
/// an hour apart, two peers get the two slots of this worker's share
/// anyway (regular and optimistic).
#[test]
fn a_peer_that_comes_while_slots_are_free_is_unchoked_before_the_next_round() {
    let f = start(
        1 << 20,
        1 << 16,
        PlaneConfig {
            workers: 1,
            upload_slots: 1,
            rechoke_every: Duration::from_secs(3600),
            ..loopback_config()
        },
    );
    // Each returns once it got an unchoke, which no choker round gave.
    let addr = f.seeder.local_addr();
    let mut first = Peer::unchoked(addr, f.metainfo.info_hash.0);
    let mut second = Peer::unchoked(addr, f.metainfo.info_hash.0);
    assert_eq!(first.fetch(0, 0, 16384).len(), 16384);
    assert_eq!(second.fetch(1, 0, 16384).len(), 16384);
}
