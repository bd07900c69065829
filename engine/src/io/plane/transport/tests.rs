//! The transport driven byte by byte: detection of the first bytes, the
//! policy's refusals, an MSE handshake from a scripted initiator arriving in
//! pieces, what follows it (larger than the receive buffer), RC4 both ways
//! split anywhere.

use super::*;
use crate::io::plane::conn::INITIAL_RECV_BUF;
use crate::proto::wire::{Handshake, Reserved};

const HASH: [u8; 20] = [0x42; 20];

struct Fixture {
    skeys: HashMap<[u8; 20], InfoHash>,
    tally: StatsDelta,
    seed: u64,
}

impl Fixture {
    fn new() -> Self {
        let h = InfoHash(HASH);
        Fixture {
            skeys: [(skey_of(&h), h)].into_iter().collect(),
            tally: StatsDelta::default(),
            seed: 0x1234_5678,
        }
    }

    /// Feeds `bytes` to `transport` as one receive into `recv`.
    fn feed(
        &mut self,
        transport: &mut Transport,
        recv: &mut RecvBuf,
        bytes: &[u8],
        encryption: Encryption,
    ) -> Arrived {
        let at = recv.len;
        if recv.buf.len() < at + bytes.len() {
            recv.buf.resize(at + bytes.len(), 0);
        }
        recv.buf[at..at + bytes.len()].copy_from_slice(bytes);
        recv.len += bytes.len();
        let mut seed = self.seed;
        let mut random = move |buf: &mut [u8]| {
            for b in buf {
                *b = crate::rng::next(&mut seed) as u8;
            }
        };
        transport.receive(
            recv,
            bytes.len(),
            Inbound {
                encryption,
                methods: mse_methods(false),
                skeys: &self.skeys,
                random: &mut random,
                tally: &mut self.tally,
            },
        )
    }
}

fn recv_buf() -> RecvBuf {
    RecvBuf {
        buf: vec![0; INITIAL_RECV_BUF],
        len: 0,
        in_flight: false,
    }
}

fn bt_handshake() -> Vec<u8> {
    let mut out = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: InfoHash(HASH),
        peer_id: [1; 20],
    }
    .encode(&mut out);
    out
}

#[test]
fn a_plaintext_handshake_split_anywhere_in_its_first_20_bytes_is_plain() {
    let mut f = Fixture::new();
    let hs = bt_handshake();
    let mut t = Transport::incoming();
    let mut recv = recv_buf();
    assert_eq!(
        f.feed(&mut t, &mut recv, &hs[..7], Encryption::Allow),
        Arrived::Pending
    );
    assert_eq!(
        f.feed(&mut t, &mut recv, &hs[7..30], Encryption::Allow),
        Arrived::Ready
    );
    assert_eq!(t.kind(), Some(TransportKind::Plain));
    assert_eq!(
        &recv.buf[..recv.len],
        &hs[..30],
        "untouched, for the peer connection"
    );
    assert!(t.ready_to_send() && !t.copies_blocks());
}

#[test]
fn the_policy_refuses_plain_text_or_mse() {
    let mut f = Fixture::new();
    let mut t = Transport::incoming();
    let mut recv = recv_buf();
    let got = f.feed(&mut t, &mut recv, &bt_handshake(), Encryption::Require);
    assert_eq!(got, Arrived::Close(CloseReason::Encryption));
    assert_eq!(f.tally.plaintext_refused, 1);

    let mut t = Transport::incoming();
    let mut recv = recv_buf();
    let got = f.feed(&mut t, &mut recv, &[0xee; 96], Encryption::Off);
    assert_eq!(got, Arrived::Close(CloseReason::NotBitTorrent));
}

/// Runs an initiator offering `offer` against an incoming transport, its
/// bytes cut into `chunk`-byte receives, then sends `extra` after its
/// handshake the same way; returns the transport, everything it handed on
/// in clear, and the initiator's outcome.
fn handshake(
    f: &mut Fixture,
    offer: u32,
    chunk: usize,
    extra: &[u8],
) -> (Transport, Vec<u8>, Established) {
    let mut seed = 99u64;
    let mut random = move |buf: &mut [u8]| {
        for b in buf {
            *b = crate::rng::next(&mut seed) as u8;
        }
    };
    let mut initiator = MseHandshake::initiator(HASH, offer, bt_handshake(), &mut random);
    let mut t = Transport::incoming();
    let mut recv = recv_buf();
    let mut handed_on = Vec::new();
    let mut to_us = Vec::new();
    initiator.take_output(&mut to_us);
    let mut ready = false;
    let mut done = None;
    while done.is_none() {
        for piece in to_us.chunks(chunk) {
            assert!(
                !ready,
                "bytes after the transport was done, before the initiator was"
            );
            match f.feed(&mut t, &mut recv, piece, Encryption::Allow) {
                Arrived::Pending => {}
                Arrived::Ready => {
                    ready = true;
                    handed_on.extend_from_slice(&recv.buf[..recv.len]);
                    recv.len = 0;
                }
                Arrived::Close(why) => panic!("closed: {why:?}"),
            }
        }
        to_us.clear();
        let mut to_them = Vec::new();
        t.take_handshake_output(&mut to_them);
        done = initiator.receive(&to_them, &|_| None).unwrap();
        initiator.take_output(&mut to_us);
        assert!(done.is_some() || !to_us.is_empty(), "the handshake stalled");
    }
    assert!(
        ready && to_us.is_empty(),
        "our side was done once IA was in"
    );
    let mut established = done.unwrap();
    // What the initiator sends once done, split anywhere: decrypted once,
    // in order.
    let mut more = extra.to_vec();
    if let Some(c) = established.encrypt.as_mut() {
        c.apply(&mut more);
    }
    for piece in more.chunks(chunk) {
        assert_eq!(
            f.feed(&mut t, &mut recv, piece, Encryption::Allow),
            Arrived::Ready
        );
        handed_on.extend_from_slice(&recv.buf[..recv.len]);
        recv.len = 0;
    }
    (t, handed_on, established)
}

#[test]
fn an_rc4_handshake_in_small_pieces_hands_on_its_payload_in_clear() {
    let mut f = Fixture::new();
    let extra: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
    let (mut t, handed_on, mut theirs) = handshake(&mut f, CRYPTO_RC4, 13, &extra);
    assert_eq!(t.kind(), Some(TransportKind::MseRc4));
    assert_eq!(t.proven_torrent(), Some(InfoHash(HASH)));
    assert!(t.copies_blocks() && t.ready_to_send());
    // The peer's BitTorrent handshake came inside MSE, then the rest, in
    // clear: decrypted once, in order, however it was cut.
    let mut want = bt_handshake();
    want.extend(&extra);
    assert_eq!(handed_on, want);

    // What we send is encrypted once, in order, whatever carries it.
    let mut send = SendBuf::new();
    send.plan.control = b"interested and more".to_vec();
    t.render(&mut send);
    let mut wire = send.plan.control.clone();
    theirs.decrypt.as_mut().unwrap().apply(&mut wire);
    assert_eq!(wire, b"interested and more");
}

#[test]
fn a_peer_offering_both_gets_plain_text_after_the_handshake() {
    let mut f = Fixture::new();
    let extra = vec![5u8; 100];
    let (mut t, handed_on, theirs) = handshake(&mut f, CRYPTO_RC4 | CRYPTO_PLAINTEXT, 50, &extra);
    assert_eq!(t.kind(), Some(TransportKind::MsePlaintext));
    assert!(theirs.encrypt.is_none());
    assert!(!t.copies_blocks(), "zero-copy sends are kept");
    assert_eq!(&handed_on[..68], &bt_handshake()[..]);
    assert_eq!(&handed_on[68..], &extra[..], "in clear, as it came");
    let mut send = SendBuf::new();
    send.plan.control = b"as it is".to_vec();
    t.render(&mut send);
    assert_eq!(send.plan.control, b"as it is");
}

#[test]
fn a_failed_handshake_is_closed_and_counted_by_cause() {
    let mut f = Fixture::new();
    let mut t = Transport::incoming();
    let mut recv = recv_buf();
    let mut got = Arrived::Pending;
    for _ in 0..10 {
        got = f.feed(&mut t, &mut recv, &[0xab; 100], Encryption::Allow);
        if got != Arrived::Pending {
            break;
        }
    }
    assert_eq!(got, Arrived::Close(CloseReason::Encryption));
    assert_eq!(f.tally.mse_failed_no_sync, 1);
}

#[test]
fn an_encrypted_dial_hands_on_a_reply_larger_than_the_receive_buffer() {
    let mut f = Fixture::new();
    let mut seed = 7u64;
    let mut random = move |buf: &mut [u8]| {
        for b in buf {
            *b = crate::rng::next(&mut seed) as u8;
        }
    };
    let mut t = Transport::dial_encrypted(InfoHash(HASH), CRYPTO_RC4, bt_handshake(), &mut random);
    assert!(!t.ready_to_send(), "nothing of ours before MSE is done");
    let mut responder = MseHandshake::responder(CRYPTO_RC4, &mut random);
    let lookup = |req2: &[u8; 20]| (*req2 == mse::req2_hash(&HASH)).then_some(HASH);
    let mut recv = recv_buf();
    let reply: Vec<u8> = (0..3 * INITIAL_RECV_BUF as u32).map(|i| i as u8).collect();
    let mut theirs = None;
    for _ in 0..4 {
        let mut to_them = Vec::new();
        t.take_handshake_output(&mut to_them);
        if let Some(done) = responder.receive(&to_them, &lookup).unwrap() {
            assert_eq!(done.payload, bt_handshake(), "our handshake rode in IA");
            theirs = Some(done);
        }
        let mut to_us = Vec::new();
        responder.take_output(&mut to_us);
        if let Some(done) = theirs.as_mut() {
            // Step 4 and, in the same receive, the peer's first 12 KiB.
            let mut more = reply.clone();
            done.encrypt.as_mut().unwrap().apply(&mut more);
            to_us.extend(more);
        }
        match f.feed(&mut t, &mut recv, &to_us, Encryption::Allow) {
            Arrived::Pending => continue,
            Arrived::Ready => {
                assert_eq!(&recv.buf[..recv.len], &reply[..]);
                assert_eq!(t.kind(), Some(TransportKind::MseRc4));
                assert!(t.ready_to_send());
                return;
            }
            Arrived::Close(why) => panic!("closed: {why:?}"),
        }
    }
    panic!("the handshake never finished");
}
