//! The built-in tracker in-process, and ringseed's tracker client against
//! it and against opentracker: peers meet, scrape counts are right, and bad
//! input gets the protocol's error or is dropped, counted, without harm.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ringseed_engine::io::announce::{AnnounceError, ClientConfig, TrackerClient};
use ringseed_engine::io::tracker_server::{TrackerConfig, TrackerServer};
use ringseed_engine::proto::tracker::{Announce, Event, TrackerError, UdpReply, UdpRequest};
use ringseed_engine::InfoHash;

const TRACKED: InfoHash = InfoHash([0x11; 20]);

fn server() -> TrackerServer {
    TrackerServer::start(TrackerConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        workers: 2,
        whitelist: Some(HashSet::from([TRACKED])),
        interval: Duration::from_secs(60),
        ..TrackerConfig::default()
    })
    .unwrap()
}

fn announce(port: u16, left: u64, event: Event, info_hash: InfoHash) -> Announce {
    Announce {
        info_hash,
        peer_id: [port as u8; 20],
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: None,
        key: u32::from(port),
        tracker_id: None,
    }
}

fn client() -> TrackerClient {
    TrackerClient::new(ClientConfig {
        udp_timeout_scale: 0.1,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// A seed and a leecher announce; the leecher gets the seed; scrape counts
/// one of each; the seed's `stopped` removes it.
fn peers_meet(url: &str) {
    let mut c = client();
    c.announce(url, &announce(1000, 0, Event::Started, TRACKED))
        .unwrap();
    let leech = c
        .announce(url, &announce(2000, 5, Event::Started, TRACKED))
        .unwrap();
    assert!(
        leech.peers.contains(&"127.0.0.1:1000".parse().unwrap()),
        "{url}: the leecher gets the seed: {:?}",
        leech.peers
    );
    let stats = c.scrape(url, &[TRACKED]).unwrap()[&TRACKED];
    assert_eq!((stats.complete, stats.incomplete), (1, 1), "{url}");
    c.announce(url, &announce(1000, 0, Event::Stopped, TRACKED))
        .unwrap();
    c.announce(url, &announce(2000, 5, Event::Stopped, TRACKED))
        .unwrap();
    let stats = c.scrape(url, &[TRACKED]).unwrap()[&TRACKED];
    assert_eq!((stats.complete, stats.incomplete), (0, 0), "{url}");
}

#[test]
fn peers_meet_at_the_builtin_tracker_over_udp_and_http() {
    let s = server();
    // ringseed's tracker never lists the announcer itself (opentracker may).
    let url = format!("udp://{}/announce", s.udp_addr().unwrap());
    let alone = client()
        .announce(&url, &announce(3000, 0, Event::Started, TRACKED))
        .unwrap();
    assert!(alone.peers.is_empty(), "{:?}", alone.peers);
    client()
        .announce(&url, &announce(3000, 0, Event::Stopped, TRACKED))
        .unwrap();
    peers_meet(&url);
    peers_meet(&format!("http://{}/announce", s.http_addr().unwrap()));
    assert!(s.counters().announces.load(Relaxed) >= 8);
}

#[test]
#[ignore = "needs opentracker: run by scripts/test"]
fn the_client_meets_peers_at_opentracker_over_udp_and_http() {
    common::require_program("opentracker", "opentracker");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("whitelist"),
        format!("{}\n", TRACKED.to_hex()),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("opentracker")
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
            "-d",
        ])
        .arg(dir.path())
        .args(["-w", "whitelist"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "opentracker did not start"
        );
        std::thread::yield_now();
    }
    let result = std::panic::catch_unwind(|| {
        peers_meet(&format!("udp://127.0.0.1:{port}/announce"));
        peers_meet(&format!("http://127.0.0.1:{port}/announce"));
    });
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result.unwrap();
}

#[test]
fn untracked_torrents_get_a_failure_reason() {
    let s = server();
    let mut c = client();
    for url in [
        format!("udp://{}/announce", s.udp_addr().unwrap()),
        format!("http://{}/announce", s.http_addr().unwrap()),
    ] {
        match c.announce(&url, &announce(1, 0, Event::Started, InfoHash([9; 20]))) {
            Err(AnnounceError::Tracker(TrackerError::Failure(reason))) => {
                assert_eq!(reason, "torrent not tracked here", "{url}")
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert_eq!(s.counters().refused.load(Relaxed), 2);
}

fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Option<UdpReply> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket.send_to(packet, server).unwrap();
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).ok()?;
    Some(UdpReply::decode(&buf[..n], false).unwrap())
}

#[test]
fn bad_udp_packets_are_dropped_and_counted() {
    let s = server();
    let addr = s.udp_addr().unwrap();
    // Garbage, a connect with a wrong protocol id, an unknown action, a
    // short announce: all dropped without a reply (an error reply to an
    // unverified source would let a spoofed packet start an endless
    // error exchange between two servers), and counted.
    let mut wrong_magic = vec![0u8; 16];
    wrong_magic[12..].copy_from_slice(&7u32.to_be_bytes());
    let mut unknown_action = vec![0u8; 16];
    unknown_action[8..12].copy_from_slice(&9u32.to_be_bytes());
    let mut short_announce = vec![0u8; 40];
    short_announce[8..12].copy_from_slice(&1u32.to_be_bytes());
    for packet in [
        b"garbage".to_vec(),
        wrong_magic,
        unknown_action,
        short_announce,
    ] {
        assert_eq!(udp_exchange(addr, &packet), None);
    }
    // An announce with a connection id we never gave out: dropped too.
    let mut forged = Vec::new();
    UdpRequest::Announce {
        connection_id: 0xdead_beef,
        transaction_id: 10,
        announce: announce(1, 0, Event::Started, TRACKED),
    }
    .encode(&mut forged);
    assert_eq!(udp_exchange(addr, &forged), None);
    assert_eq!(s.counters().malformed.load(Relaxed), 4);
    assert_eq!(s.counters().refused.load(Relaxed), 1);
    // Still serving.
    let mut connect = Vec::new();
    UdpRequest::Connect { transaction_id: 11 }.encode(&mut connect);
    assert!(matches!(
        udp_exchange(addr, &connect),
        Some(UdpReply::Connect {
            transaction_id: 11,
            ..
        })
    ));
}

fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn bad_http_requests_get_an_error_status_or_failure_reason() {
    let s = server();
    let addr = s.http_addr().unwrap();
    let get = |path: &str| {
        http_raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    };
    let missing = get("/announce?port=1&left=0");
    assert!(
        missing.starts_with("HTTP/1.1 200") && missing.contains("failure reason"),
        "{missing}"
    );
    let short_hash = get("/announce?info_hash=abc&port=1&left=0");
    assert!(
        short_hash.contains("missing or malformed info_hash"),
        "{short_hash}"
    );
    let bad_port = get(&format!(
        "/announce?info_hash={}&port=70000&left=0",
        "%11".repeat(20)
    ));
    assert!(bad_port.contains("port out of range"), "{bad_port}");
    assert!(get("/nothing").starts_with("HTTP/1.1 404"));
    assert!(http_raw(addr, b"\x00\x01 garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET /announce?{} HTTP/1.1\r\n\r\n", "x".repeat(10_000));
    assert!(http_raw(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(s.counters().malformed.load(Relaxed) >= 5);
    // Still serving, and the stats endpoint reports.
    let stats = get("/stats");
    assert!(stats.contains("\"malformed\":"), "{stats}");
    let ok = get(&format!(
        "/announce?info_hash={}&port=6881&left=0&compact=1",
        "%11".repeat(20)
    ));
    assert!(ok.contains("8:intervali60e"), "{ok}");
}

/// An announce for the tracked torrent, as a raw HTTP request.
fn announce_request() -> Vec<u8> {
    format!(
        "GET /announce?info_hash={}&port=6881&left=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        "%11".repeat(20)
    )
    .into_bytes()
}

/// Regression (issue 13): each HTTP worker served one connection at a time,
/// so 20 silent clients delayed an announce by a minute. Now every slot
/// holds one client, silent ones are closed at the request deadline, and
/// when every slot is taken the oldest goes: with 8 slots and 40 silent
/// clients, an announce is answered at once, and the silent ones are gone
/// by their deadline.
#[test]
fn silent_http_clients_take_slots_not_the_tracker() {
    let s = TrackerServer::start(TrackerConfig {
        http: Some("127.0.0.1:0".parse().unwrap()),
        workers: 1,
        whitelist: Some(HashSet::from([TRACKED])),
        max_http_connections: 8,
        ..TrackerConfig::default()
    })
    .unwrap();
    let addr = s.http_addr().unwrap();
    let mut silent: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /announce?").unwrap();
            c
        })
        .collect();
    let asked = std::time::Instant::now();
    let reply = http_raw(addr, &announce_request());
    let waited = asked.elapsed();
    assert!(reply.contains("8:interval"), "{reply}");
    // Answered before any silent client reached its deadline: it did not
    // wait for them.
    assert!(
        waited < ringseed_engine::io::tracker_server::REQUEST_DEADLINE,
        "the announce waited {waited:?}"
    );
    // At least the 32 beyond the 8 slots were closed to make room; by the
    // deadline, all of them are.
    assert!(s.counters().timed_out.load(Relaxed) >= 32);
    for c in &mut silent {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        // Closed by the server, unanswered: end of stream or a reset.
        match c.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest)),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(s.counters().timed_out.load(Relaxed), 40);
    assert_eq!(s.counters().announces.load(Relaxed), 1);
}

/// A leecher that only the tracker knows about (it never connects to the
/// seeder itself) gets a connection from the seeder, which dials the peers
/// its announce returns.
#[test]
fn seed_dials_the_peers_its_tracker_returns() {
    let s = TrackerServer::start(TrackerConfig {
        http: Some("127.0.0.1:0".parse().unwrap()),
        workers: 1,
        ..TrackerConfig::default()
    })
    .unwrap();
    let url = format!("http://{}/announce", s.http_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("f.iso");
    common::write_data(&data, 1 << 20, 5);
    let torrent = dir.path().join("f.torrent");
    common::create_torrent(&data, &torrent, &["-t", &url]);
    let m = ringseed_engine::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();

    let leecher = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = leecher.local_addr().unwrap().port();
    client()
        .announce(&url, &announce(port, 100, Event::Started, m.info_hash))
        .unwrap();

    let _seeder = common::SeedProcess::start(&[&torrent, &"--data", &dir.path()]);
    leecher.set_nonblocking(false).unwrap();
    let (mut stream, _) = leecher.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).unwrap();
    assert_eq!(
        &hs[28..48],
        &m.info_hash.0,
        "the seeder dialed us for its torrent"
    );
}
