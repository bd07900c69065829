//! Message stream encryption on a real `Plane` on loopback, against a test
//! peer whose MSE handshake is written here from the specification (its own
//! Diffie-Hellman, hashes and RC4, not the engine's), so each knob can be
//! bent: the methods offered, the padding, the verification constant, the
//! torrent named. Blocks must arrive byte-exact over RC4 and over plaintext
//! after the handshake; every malformed handshake is dropped and counted by
//! cause while a plain peer goes on being served; and a dial that a peer
//! refuses in plain text is tried once more encrypted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::write_data;
use num_bigint::BigUint;
use rc4::{KeyInit, Rc4, StreamCipher};
use ringseed_engine::create::{create, CreateOptions};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::plane::control::{Plane, PlaneConfig};
use ringseed_engine::io::plane::transport::Encryption;
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::proto::mse::{MseHandshake, CRYPTO_PLAINTEXT, CRYPTO_RC4};
use ringseed_engine::proto::wire::{self, BlockRequest, Handshake, Message, Reserved};
use ringseed_engine::stats::StatsSnapshot;
use ringseed_engine::Metainfo;
use sha1::{Digest, Sha1};

/// The 768-bit MODP prime of MSE (RFC 2409 group 1).
const PRIME: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

const PIECE: u64 = 32768;

struct Fixture {
    _dir: tempfile::TempDir,
    data: Vec<u8>,
    metainfo: Metainfo,
    seeder: Plane,
}

fn start(encryption: Encryption, encrypt_payload: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payload.bin");
    write_data(&path, 300_000, 7);
    let data = std::fs::read(&path).unwrap();
    let opts = CreateOptions {
        piece_length: Some(PIECE),
        ..Default::default()
    };
    let metainfo = create(&path, &opts, &()).unwrap().metainfo;
    let torrent = Torrent::open(
        metainfo.clone(),
        &DataPaths::in_save_dir(&metainfo.info, dir.path()),
    )
    .unwrap();
    let config = PlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        io: common::data_plane_under_test(),
        encryption,
        encrypt_payload,
        handshake_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let seeder = Plane::start(config, vec![torrent]).unwrap();
    Fixture {
        _dir: dir,
        data,
        metainfo,
        seeder,
    }
}

impl Fixture {
    /// Waits (up to 10 s) until the counters satisfy `check` (workers flush
    /// them once a second).
    fn wait_stats(&self, what: &str, check: impl Fn(&StatsSnapshot) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let total = self.seeder.stats().total;
            if check(&total) {
                return;
            }
            assert!(Instant::now() < deadline, "never {what}: {total:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn block(&self, piece: u32, offset: u32, len: u32) -> &[u8] {
        let at = piece as usize * PIECE as usize + offset as usize;
        &self.data[at..at + len as usize]
    }
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A big-endian number left-padded to the 96 bytes of the wire.
fn pad96(n: &BigUint) -> [u8; 96] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; 96];
    out[96 - bytes.len()..].copy_from_slice(&bytes);
    out
}

/// RC4 with its first 1024 bytes of keystream thrown away, as MSE uses it.
fn mse_rc4(key: &[u8; 20]) -> Rc4 {
    let mut c = Rc4::new_from_slice(key).unwrap();
    c.apply_keystream(&mut [0u8; 1024]);
    c
}

/// How the test initiator bends its handshake.
#[derive(Clone)]
struct Knobs {
    info_hash: [u8; 20],
    provide: u32,
    pad_a: usize,
    pad_c: usize,
    vc: [u8; 8],
    /// Our BitTorrent handshake goes in the initial payload (else after).
    handshake_in_ia: bool,
}

impl Knobs {
    fn new(info_hash: [u8; 20], provide: u32) -> Self {
        Knobs {
            info_hash,
            provide,
            pad_a: 17,
            pad_c: 0,
            vc: [0; 8],
            handshake_in_ia: true,
        }
    }
}

/// One direction's RC4 stream: ours, or the engine's.
trait Keystream {
    fn apply(&mut self, buf: &mut [u8]);
}

impl Keystream for Rc4 {
    fn apply(&mut self, buf: &mut [u8]) {
        self.apply_keystream(buf);
    }
}

impl Keystream for ringseed_engine::proto::mse::Cipher {
    fn apply(&mut self, buf: &mut [u8]) {
        ringseed_engine::proto::mse::Cipher::apply(self, buf);
    }
}

type Stream = Box<dyn Keystream>;

/// A peer that speaks MSE with the seeder; past the handshake, the stream
/// is RC4 if it has ciphers, plain text if not.
struct MsePeer {
    stream: TcpStream,
    /// Decrypted bytes received, not yet parsed.
    buf: Vec<u8>,
    encrypt: Option<Box<dyn Keystream>>,
    decrypt: Option<Box<dyn Keystream>>,
}

impl MsePeer {
    /// A peer speaking plain BitTorrent on `stream`.
    fn plain(stream: TcpStream) -> MsePeer {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        MsePeer {
            stream,
            buf: Vec::new(),
            encrypt: None,
            decrypt: None,
        }
    }

    /// Connects and sends the first step: our public key and PadA.
    fn dial(addr: SocketAddr) -> (TcpStream, BigUint, BigUint) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let p = BigUint::parse_bytes(PRIME.as_bytes(), 16).unwrap();
        let mut secret = [0u8; 20];
        ringseed_engine::rng::fill_random(&mut secret);
        let x = BigUint::from_bytes_be(&secret);
        (stream, p, x)
    }

    /// Runs the whole handshake as `knobs` say; returns the peer once the
    /// seeder's step 4 is read (or `None` if it hung up before).
    fn handshake(addr: SocketAddr, knobs: &Knobs) -> Option<MsePeer> {
        let (mut stream, p, x) = Self::dial(addr);
        let ya = pad96(&BigUint::from(2u8).modpow(&x, &p));
        let mut first = ya.to_vec();
        first.extend(std::iter::repeat_n(0xa5, knobs.pad_a));
        stream.write_all(&first).unwrap();
        let mut yb = [0u8; 96];
        stream.read_exact(&mut yb).ok()?;
        let s = pad96(&BigUint::from_bytes_be(&yb).modpow(&x, &p));
        let skey = knobs.info_hash;
        let mut encrypt = mse_rc4(&sha1(&[b"keyA", &s, &skey]));
        let mut decrypt = mse_rc4(&sha1(&[b"keyB", &s, &skey]));
        let req2 = sha1(&[b"req2", &skey]);
        let req3 = sha1(&[b"req3", &s]);
        let mut step3 = sha1(&[b"req1", &s]).to_vec();
        step3.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
        let mut bt = Vec::new();
        Handshake {
            reserved: Reserved::OURS,
            info_hash: ringseed_engine::InfoHash(knobs.info_hash),
            peer_id: [9; 20],
        }
        .encode(&mut bt);
        let ia: &[u8] = if knobs.handshake_in_ia { &bt } else { &[] };
        let mut secret = knobs.vc.to_vec();
        secret.extend(knobs.provide.to_be_bytes());
        secret.extend((knobs.pad_c as u16).to_be_bytes());
        secret.extend(std::iter::repeat_n(0, knobs.pad_c));
        secret.extend((ia.len() as u16).to_be_bytes());
        secret.extend(ia);
        encrypt.apply_keystream(&mut secret);
        step3.extend(secret);
        stream.write_all(&step3).ok()?;
        // The seeder's PadB, then E_B(VC): found by its encryption.
        let mut vc = [0u8; 8];
        decrypt.apply_keystream(&mut vc);
        let mut seen = Vec::new();
        let at = loop {
            if let Some(i) = seen.windows(8).position(|w| w == vc) {
                break i + 8;
            }
            assert!(seen.len() < 520, "no VC within 512 bytes of padding");
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).ok()?;
            seen.push(byte[0]);
        };
        assert_eq!(at, seen.len());
        let mut fields = [0u8; 6];
        stream.read_exact(&mut fields).ok()?;
        decrypt.apply_keystream(&mut fields);
        let select = u32::from_be_bytes(fields[..4].try_into().unwrap());
        let pad_d = u16::from_be_bytes(fields[4..].try_into().unwrap()) as usize;
        assert!(pad_d <= 512, "PadD of {pad_d} bytes");
        let mut pad = vec![0u8; pad_d];
        stream.read_exact(&mut pad).ok()?;
        decrypt.apply_keystream(&mut pad);
        assert!(
            select == CRYPTO_RC4 || select == CRYPTO_PLAINTEXT,
            "select {select:#x}"
        );
        assert_ne!(select & knobs.provide, 0, "chose {select:#x}, not offered");
        let (encrypt, decrypt): (Option<Stream>, Option<Stream>) = if select == CRYPTO_RC4 {
            (Some(Box::new(encrypt)), Some(Box::new(decrypt)))
        } else {
            (None, None)
        };
        let mut peer = MsePeer {
            stream,
            buf: Vec::new(),
            encrypt,
            decrypt,
        };
        if !knobs.handshake_in_ia {
            peer.write(&bt);
        }
        Some(peer)
    }

    fn method(&self) -> u32 {
        if self.encrypt.is_some() {
            CRYPTO_RC4
        } else {
            CRYPTO_PLAINTEXT
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut out = bytes.to_vec();
        if let Some(c) = &mut self.encrypt {
            c.apply(&mut out);
        }
        self.stream.write_all(&out).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).unwrap_or(0);
        let got = &mut chunk[..n];
        if let Some(c) = &mut self.decrypt {
            c.apply(got);
        }
        self.buf.extend_from_slice(got);
        n
    }

    /// The seeder's BitTorrent handshake.
    fn their_handshake(&mut self) -> Handshake {
        loop {
            if let Some(h) = Handshake::decode(&self.buf).unwrap() {
                self.buf.drain(..wire::HANDSHAKE_LEN);
                return h;
            }
            assert!(self.fill() > 0, "the seeder hung up before its handshake");
        }
    }

    /// The next block: other messages are skipped.
    fn next_block(&mut self) -> (u32, u32, Vec<u8>) {
        loop {
            if let Some((msg, used)) = wire::decode(&self.buf, 1 << 20).unwrap() {
                let block = match msg {
                    Message::Piece {
                        piece,
                        offset,
                        data,
                    } => Some((piece, offset, data.to_vec())),
                    _ => None,
                };
                self.buf.drain(..used);
                if let Some(b) = block {
                    return b;
                }
                continue;
            }
            assert!(self.fill() > 0, "the seeder closed the connection");
        }
    }

    fn send(&mut self, msg: Message<'_>) {
        let mut out = Vec::new();
        wire::encode(&msg, &mut out);
        self.write(&out);
    }

    /// Whether the seeder closes the connection (reads until EOF).
    fn closed_by_seeder(stream: &mut TcpStream) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Asks for blocks across the torrent (the last one short) and checks each.
fn fetch_and_check(f: &Fixture, peer: &mut MsePeer) {
    assert_eq!(peer.their_handshake().info_hash, f.metainfo.info_hash);
    peer.send(Message::Interested);
    let len = f.data.len() as u64;
    let last = (len / PIECE) as u32;
    let reqs = [
        (0, 0, 16384),
        (1, 16384, 16384),
        (4, 0, 16384),
        (last, 0, (len % PIECE).min(16384) as u32),
    ];
    for &(piece, offset, length) in &reqs {
        peer.send(Message::Request(BlockRequest {
            piece,
            offset,
            length,
        }));
    }
    for &(piece, offset, length) in &reqs {
        let (p, o, data) = peer.next_block();
        assert_eq!((p, o), (piece, offset));
        assert!(
            data == f.block(piece, offset, length),
            "block {piece}/{offset}"
        );
    }
}

#[test]
fn a_peer_that_offers_only_rc4_gets_every_block_byte_exact_over_rc4() {
    let f = start(Encryption::Allow, false);
    let knobs = Knobs::new(f.metainfo.info_hash.0, CRYPTO_RC4);
    let mut peer = MsePeer::handshake(f.seeder.local_addr(), &knobs).expect("handshake");
    assert_eq!(peer.method(), CRYPTO_RC4);
    fetch_and_check(&f, &mut peer);
    f.wait_stats("counted an RC4 connection", |t| t.connections_mse_rc4 == 1);
}

#[test]
fn a_peer_that_offers_both_gets_plaintext_after_the_handshake() {
    let f = start(Encryption::Allow, false);
    let mut knobs = Knobs::new(f.metainfo.info_hash.0, CRYPTO_RC4 | CRYPTO_PLAINTEXT);
    // Its BitTorrent handshake after MSE rather than inside it: allowed.
    knobs.handshake_in_ia = false;
    let mut peer = MsePeer::handshake(f.seeder.local_addr(), &knobs).expect("handshake");
    assert_eq!(peer.method(), CRYPTO_PLAINTEXT, "zero-copy is kept");
    fetch_and_check(&f, &mut peer);
    f.wait_stats("counted an obfuscated connection", |t| {
        t.connections_mse_plaintext == 1
    });
}

#[test]
fn an_operator_that_wants_the_payload_encrypted_gets_rc4_even_when_both_are_offered() {
    let f = start(Encryption::Require, true);
    let knobs = Knobs::new(f.metainfo.info_hash.0, CRYPTO_RC4 | CRYPTO_PLAINTEXT);
    let mut peer = MsePeer::handshake(f.seeder.local_addr(), &knobs).expect("handshake");
    assert_eq!(peer.method(), CRYPTO_RC4);
    fetch_and_check(&f, &mut peer);
    // Plaintext only is then no common method.
    let plain_only = Knobs::new(f.metainfo.info_hash.0, CRYPTO_PLAINTEXT);
    assert!(MsePeer::handshake(f.seeder.local_addr(), &plain_only).is_none());
    f.wait_stats("counted both", |t| {
        t.connections_mse_rc4 == 1 && t.mse_failed_no_common_method == 1
    });
}

/// A plain peer is served, whatever the MSE peers did before it.
fn plain_peer_is_served(f: &Fixture) {
    let mut peer = MsePeer::plain(TcpStream::connect(f.seeder.local_addr()).unwrap());
    peer.write(&our_handshake(f));
    fetch_and_check(f, &mut peer);
}

#[test]
fn malformed_handshakes_are_dropped_and_counted_by_cause() {
    let f = start(Encryption::Allow, false);
    let addr = f.seeder.local_addr();
    let hash = f.metainfo.info_hash.0;

    // Garbage instead of a key: no synchronisation hash within 512 bytes
    // of padding.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut junk = vec![0u8; 96 + 600];
    ringseed_engine::rng::fill_random(&mut junk);
    junk[0] = 0xee; // not the protocol string's length byte
    garbage.write_all(&junk).unwrap();
    assert!(MsePeer::closed_by_seeder(&mut garbage));

    // PadA longer than 512 bytes: the same, with a real key.
    let mut long_pad = Knobs::new(hash, CRYPTO_RC4);
    long_pad.pad_a = 600;
    assert!(MsePeer::handshake(addr, &long_pad).is_none());

    // A torrent we do not serve.
    let unknown = Knobs::new([0x42; 20], CRYPTO_RC4);
    assert!(MsePeer::handshake(addr, &unknown).is_none());

    // A wrong verification constant.
    let mut bad_vc = Knobs::new(hash, CRYPTO_RC4);
    bad_vc.vc = [0, 0, 0, 0, 0, 0, 0, 1];
    assert!(MsePeer::handshake(addr, &bad_vc).is_none());

    // PadC of 513 bytes.
    let mut pad_c = Knobs::new(hash, CRYPTO_RC4);
    pad_c.pad_c = 513;
    assert!(MsePeer::handshake(addr, &pad_c).is_none());

    // No method at all.
    let none = Knobs::new(hash, 0x08);
    assert!(MsePeer::handshake(addr, &none).is_none());

    // A key, then silence: closed at the handshake deadline (3 s here).
    let (mut silent, p, x) = MsePeer::dial(addr);
    let ya = pad96(&BigUint::from(2u8).modpow(&x, &p));
    silent.write_all(&ya[..50]).unwrap();
    assert!(MsePeer::closed_by_seeder(&mut silent));

    f.wait_stats("counted every cause", |t| {
        t.mse_failed_no_sync == 2
            && t.mse_failed_unknown_torrent == 1
            && t.mse_failed_bad_vc == 1
            && t.mse_failed_bad_pad == 1
            && t.mse_failed_no_common_method == 1
            && t.mse_failed_incomplete == 1
    });
    plain_peer_is_served(&f);
    f.wait_stats("served the plain peer", |t| t.connections_plain == 1);
}

#[test]
fn the_policy_decides_which_first_bytes_are_answered() {
    // `require`: a plain handshake is refused; MSE is served.
    let f = start(Encryption::Require, false);
    let mut plain = MsePeer::plain(TcpStream::connect(f.seeder.local_addr()).unwrap());
    plain.write(&our_handshake(&f));
    assert!(MsePeer::closed_by_seeder(&mut plain.stream));
    let knobs = Knobs::new(f.metainfo.info_hash.0, CRYPTO_RC4 | CRYPTO_PLAINTEXT);
    let mut peer = MsePeer::handshake(f.seeder.local_addr(), &knobs).expect("handshake");
    fetch_and_check(&f, &mut peer);
    f.wait_stats("refused the plain peer", |t| {
        t.plaintext_refused == 1 && t.connections_mse_plaintext == 1
    });

    // `off`: MSE is refused as not BitTorrent; plain is served.
    let f = start(Encryption::Off, false);
    assert!(MsePeer::handshake(f.seeder.local_addr(), &knobs).is_none());
    plain_peer_is_served(&f);
    f.wait_stats("refused the MSE peer", |t| {
        t.not_bittorrent == 1 && t.connections_plain == 1
    });
}

/// Accepts one connection the seeder dialed; answers its MSE handshake
/// with the engine's responder (`allowed` methods) and returns the stream
/// with its ciphers (the seeder's BitTorrent handshake, sent inside MSE,
/// is in its buffer).
fn answer_mse_dial(listener: &TcpListener, info_hash: [u8; 20], allowed: u32) -> MsePeer {
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut responder = MseHandshake::responder(allowed, &mut ringseed_engine::rng::fill_random);
    let skey = move |req2: &[u8; 20]| (*req2 == sha1(&[b"req2", &info_hash])).then_some(info_hash);
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the seeder hung up in its MSE handshake");
        let done = responder
            .receive(&chunk[..n], &skey)
            .expect("a valid MSE dial");
        let mut out = Vec::new();
        responder.take_output(&mut out);
        stream.write_all(&out).unwrap();
        if let Some(done) = done {
            return MsePeer {
                stream,
                buf: done.payload,
                encrypt: done.encrypt.map(|c| Box::new(c) as Box<dyn Keystream>),
                decrypt: done.decrypt.map(|c| Box::new(c) as Box<dyn Keystream>),
            };
        }
    }
}

/// A listener the seeder of `f` is told to dial.
fn dialed_by(f: &Fixture) -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    f.seeder
        .dialer()
        .dial(f.metainfo.info_hash, &[listener.local_addr().unwrap()]);
    listener
}

/// Our BitTorrent handshake for the torrent of `f`.
fn our_handshake(f: &Fixture) -> Vec<u8> {
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: f.metainfo.info_hash,
        peer_id: [5; 20],
    }
    .encode(&mut hs);
    hs
}

#[test]
fn a_dial_refused_in_plain_text_is_tried_once_more_encrypted() {
    let f = start(Encryption::Allow, false);
    let listener = dialed_by(&f);
    // `allow` dials in plain text first; a peer that requires encryption
    // hangs up on it.
    let (mut first, _) = listener.accept().unwrap();
    let mut hs = [0u8; 20];
    first.read_exact(&mut hs).unwrap();
    assert_eq!(&hs, wire::PROTOCOL_PREFIX);
    drop(first);
    let mut peer = answer_mse_dial(&listener, f.metainfo.info_hash.0, CRYPTO_RC4);
    peer.write(&our_handshake(&f));
    fetch_and_check(&f, &mut peer);
    f.wait_stats("counted the encrypted dial", |t| t.connections_mse_rc4 == 1);
}

#[test]
fn a_dial_refused_encrypted_is_tried_once_more_in_plain_text() {
    let f = start(Encryption::Prefer, false);
    let listener = dialed_by(&f);
    // `prefer` dials with MSE first (a public key, not the protocol
    // string); a plain-only peer hangs up on it.
    let (mut first, _) = listener.accept().unwrap();
    let mut key = [0u8; 20];
    first.read_exact(&mut key).unwrap();
    assert_ne!(&key, wire::PROTOCOL_PREFIX);
    drop(first);
    let mut peer = MsePeer::plain(listener.accept().unwrap().0);
    peer.write(&our_handshake(&f));
    fetch_and_check(&f, &mut peer);
    f.wait_stats("counted the plain dial", |t| t.connections_plain == 1);
}

#[test]
fn a_required_encrypted_dial_offers_what_the_operator_allows() {
    let f = start(Encryption::Require, false);
    let listener = dialed_by(&f);
    // Both offered: a responder that allows plaintext picks it.
    let mut peer = answer_mse_dial(
        &listener,
        f.metainfo.info_hash.0,
        CRYPTO_PLAINTEXT | CRYPTO_RC4,
    );
    assert!(peer.encrypt.is_none(), "plaintext after the handshake");
    peer.write(&our_handshake(&f));
    fetch_and_check(&f, &mut peer);
    f.wait_stats("counted the obfuscated dial", |t| {
        t.connections_mse_plaintext == 1
    });
}
