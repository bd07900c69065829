//! MSE handshake bytes from the network never panic, on either side, and
//! a handshake nobody tampered with always completes.
//!
//! Raw input alone stops at the sync search (no fuzzer forges
//! HASH('req1', S)), so the input is also read as corruptions applied in
//! transit to a genuine initiator-responder exchange: that reaches VC,
//! crypto_provide/select, the pad and IA lengths, and the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::mse::*;

const INFO_HASH: [u8; 20] = *b"ringseed fuzz target";

/// A responder's lookup that knows one torrent.
fn lookup(req2: &[u8; 20]) -> Option<[u8; 20]> {
    (*req2 == req2_hash(&INFO_HASH)).then_some(INFO_HASH)
}

/// A deterministic random source (splitmix64): an input replays exactly.
fn random(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed;
    move |buf: &mut [u8]| {
        for byte in buf {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *byte = (z ^ (z >> 31)) as u8;
        }
    }
}

/// Uses what a finished handshake hands over, as a connection would.
fn use_established(mut done: Established) {
    assert_eq!(done.info_hash, INFO_HASH);
    assert_eq!(done.method == Method::Rc4, done.encrypt.is_some());
    assert_eq!(done.method == Method::Rc4, done.decrypt.is_some());
    let mut bytes = done.payload.clone();
    if let Some(cipher) = &mut done.encrypt {
        cipher.apply(&mut bytes);
    }
    if let Some(cipher) = &mut done.decrypt {
        cipher.apply(&mut bytes);
    }
}

/// Feeds `data` to `hs` in two reads, split at `split`.
fn feed_raw(hs: &mut MseHandshake, data: &[u8], split: usize) {
    let (first, second) = data.split_at(split.min(data.len()));
    for part in [first, second] {
        match hs.receive(part, &lookup) {
            Ok(None) => hs.take_output(&mut Vec::new()),
            Ok(Some(done)) => return use_established(done),
            Err(error) => {
                assert!(!error.cause().is_empty());
                return;
            }
        }
    }
}

/// Applies the corruptions in `records` that fall in `bytes`, which start
/// `offset` bytes into one side's stream. A record is 3 bytes: a u16 offset
/// into a stream (top bit set: the responder's, else the initiator's) and
/// a byte to XOR there. True if a byte changed.
fn corrupt(bytes: &mut [u8], offset: usize, responder: bool, records: &[u8]) -> bool {
    let mut changed = false;
    for record in records.chunks_exact(3) {
        let at = u16::from_be_bytes([record[0], record[1]]);
        if (at & 0x8000 != 0) != responder {
            continue;
        }
        let at = usize::from(at & 0x7fff);
        if let Some(byte) = at.checked_sub(offset).and_then(|i| bytes.get_mut(i)) {
            *byte ^= record[2];
            changed |= record[2] != 0;
        }
    }
    changed
}

/// A real handshake whose bytes `records` (see [`corrupt`]) corrupt on the
/// way; `split` cuts every delivery in two.
fn in_transit(seed: u64, offer: u32, allowed: u32, records: &[u8], split: usize) {
    let mut rng = random(seed);
    let mut a = MseHandshake::initiator(INFO_HASH, offer, vec![0x13; 68], &mut rng);
    let mut b = MseHandshake::responder(allowed, &mut rng);
    let (mut a_done, mut b_done, mut failed, mut changed) = (false, false, false, false);
    let (mut a_sent, mut b_sent) = (0, 0);
    for _ in 0..3 {
        let mut wire = Vec::new();
        a.take_output(&mut wire);
        changed |= corrupt(&mut wire, a_sent, false, records);
        a_sent += wire.len();
        let (first, second) = wire.split_at(split.min(wire.len()));
        for part in [first, second] {
            if !(b_done || failed) {
                match b.receive(part, &lookup) {
                    Ok(Some(done)) => {
                        b_done = true;
                        use_established(done);
                    }
                    Ok(None) => {}
                    Err(_) => failed = true,
                }
            }
        }
        let mut wire = Vec::new();
        b.take_output(&mut wire);
        changed |= corrupt(&mut wire, b_sent, true, records);
        b_sent += wire.len();
        let (first, second) = wire.split_at(split.min(wire.len()));
        for part in [first, second] {
            if !(a_done || failed) {
                match a.receive(part, &lookup) {
                    Ok(Some(done)) => {
                        a_done = true;
                        use_established(done);
                    }
                    Ok(None) => {}
                    Err(_) => failed = true,
                }
            }
        }
    }
    if !changed && offer & allowed & (CRYPTO_PLAINTEXT | CRYPTO_RC4) != 0 {
        assert!(a_done && b_done, "an untouched handshake did not complete");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let seed = u64::from(head);
    let offer = u32::from(head & 3);
    let allowed = u32::from((head >> 2) & 3);
    let split = rest.first().map_or(0, |&b| usize::from(b) * 4);

    // Raw bytes into each side, split at a point the input chose.
    let mut responder = MseHandshake::responder(CRYPTO_PLAINTEXT | CRYPTO_RC4, &mut random(seed));
    feed_raw(&mut responder, rest, split);
    let mut initiator =
        MseHandshake::initiator(INFO_HASH, offer, vec![0x13; 68], &mut random(seed));
    feed_raw(&mut initiator, rest, split);

    // The same input as corruptions of a genuine exchange.
    in_transit(
        seed,
        offer,
        allowed,
        rest.get(1..).unwrap_or_default(),
        split,
    );
});
