use super::*;
use proptest::prelude::*;
use std::sync::OnceLock;

// ---- helpers -------------------------------------------------------------

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit");
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A deterministic random source (splitmix64), for keys and pads.
fn rng(seed: u64) -> impl FnMut(&mut [u8]) {
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

const INFO_HASH: [u8; 20] = *b"ringseed test torren";
const OTHER_HASH: [u8; 20] = *b"some other torrent!!";
const XA: [u8; 20] = *b"initiator secret key";
const XB: [u8; 20] = *b"responder secret key";

/// A responder's lookup that knows `INFO_HASH` only.
fn serves(req2: &[u8; 20]) -> Option<[u8; 20]> {
    (*req2 == req2_hash(&INFO_HASH)).then_some(INFO_HASH)
}

fn serves_nothing(_: &[u8; 20]) -> Option<[u8; 20]> {
    None
}

/// A 68-byte BitTorrent handshake.
fn bt_handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut h = b"\x13BitTorrent protocol".to_vec();
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
    h.extend_from_slice(info_hash);
    h.extend_from_slice(peer_id);
    h
}

fn output(hs: &mut MseHandshake) -> Vec<u8> {
    let mut out = Vec::new();
    hs.take_output(&mut out);
    assert!(!hs.has_output());
    out
}

/// P + `delta` (delta may be negative), as 96 bytes; P + 1 and above wrap nowhere: 96 bytes hold them.
fn p_plus(delta: i64) -> [u8; 96] {
    let p = BigUint::from_bytes_be(&P);
    let n = if delta >= 0 {
        p + delta as u64
    } else {
        p - delta.unsigned_abs()
    };
    left_pad(&n)
}

fn small_key(n: u32) -> [u8; 96] {
    left_pad(&BigUint::from(n))
}

/// Step 3 as an initiator with secret `s` would send it, with any fields.
fn craft_step3(
    s: &[u8; 96],
    skey: &[u8; 20],
    vc: [u8; 8],
    provide: u32,
    pad_c: &[u8],
    ia: &[u8],
) -> Vec<u8> {
    let mut out = hash(&[b"req1", s]).to_vec();
    let mut obfuscated = req2_hash(skey);
    xor_into(&mut obfuscated, &hash(&[b"req3", s]));
    out.extend_from_slice(&obfuscated);
    let mut plain = vc.to_vec();
    plain.extend_from_slice(&provide.to_be_bytes());
    plain.extend_from_slice(&(pad_c.len() as u16).to_be_bytes());
    plain.extend_from_slice(pad_c);
    plain.extend_from_slice(&(ia.len() as u16).to_be_bytes());
    plain.extend_from_slice(ia);
    Cipher::new(&hash(&[b"keyA", s, skey])).apply(&mut plain);
    out.extend_from_slice(&plain);
    out
}

/// Step 4 as a responder with secret `s` would send it, with any fields.
fn craft_step4(s: &[u8; 96], skey: &[u8; 20], select: u32, pad_d: &[u8]) -> Vec<u8> {
    let mut plain = VC.to_vec();
    plain.extend_from_slice(&select.to_be_bytes());
    plain.extend_from_slice(&(pad_d.len() as u16).to_be_bytes());
    plain.extend_from_slice(pad_d);
    Cipher::new(&hash(&[b"keyB", s, skey])).apply(&mut plain);
    plain
}

/// A responder with key XB that has read Ya = 2^XA and sent Yb; and S.
fn responder_after_ya(allowed: u32) -> (MseHandshake, [u8; 96]) {
    let mut b = MseHandshake::responder_with_key(allowed, XB, &mut rng(2));
    assert!(b.receive(&public_key(&XA), &serves).unwrap().is_none());
    let out = output(&mut b);
    assert_eq!(out[..96], public_key(&XB));
    (b, shared_secret(&public_key(&XB), &XA).unwrap())
}

/// An initiator with key XA that has read Yb = 2^XB and sent step 3; and S.
fn initiator_after_yb(offer: u32, ia: &[u8]) -> (MseHandshake, [u8; 96]) {
    let mut a = MseHandshake::initiator_with_key(INFO_HASH, offer, ia.to_vec(), XA, &mut rng(1));
    output(&mut a);
    assert!(a
        .receive(&public_key(&XB), &serves_nothing)
        .unwrap()
        .is_none());
    let s = shared_secret(&public_key(&XB), &XA).unwrap();
    assert_eq!(
        output(&mut a),
        craft_step3(&s, &INFO_HASH, VC, offer, &[], ia)
    );
    (a, s)
}

/// What a two-sided run produced.
struct Run {
    a_method: Method,
    b_method: Method,
    b_info_hash: [u8; 20],
    /// What A's application read after the handshake.
    a_got: Vec<u8>,
    /// What B's application read: IA first.
    b_got: Vec<u8>,
}

/// One side of a simulated connection.
struct Side {
    hs: MseHandshake,
    est: Option<Established>,
    got: Vec<u8>,
    /// Written once the handshake is done.
    app_data: Vec<u8>,
}

impl Side {
    /// Delivers `chunk`; whatever this side sends goes to `wire`.
    fn deliver(&mut self, chunk: &[u8], wire: &mut Vec<u8>) -> Result<(), MseError> {
        if let Some(est) = &mut self.est {
            let mut chunk = chunk.to_vec();
            if let Some(decrypt) = &mut est.decrypt {
                decrypt.apply(&mut chunk);
            }
            self.got.extend_from_slice(&chunk);
            return Ok(());
        }
        let done = self.hs.receive(chunk, &serves)?;
        self.hs.take_output(wire);
        if let Some(mut est) = done {
            self.got.extend_from_slice(&est.payload);
            let mut data = std::mem::take(&mut self.app_data);
            if let Some(encrypt) = &mut est.encrypt {
                encrypt.apply(&mut data);
            }
            wire.extend_from_slice(&data);
            self.est = Some(est);
        }
        Ok(())
    }
}

/// Runs an initiator against a responder, delivering bytes in chunks of
/// the sizes in `chunks` (cycled), then application data both ways.
fn run(
    seed: u64,
    offer: u32,
    allowed: u32,
    ia: &[u8],
    a_data: &[u8],
    b_data: &[u8],
    chunks: &[usize],
) -> Result<Run, MseError> {
    let mut a = Side {
        hs: MseHandshake::initiator(INFO_HASH, offer, ia.to_vec(), &mut rng(seed)),
        est: None,
        got: Vec::new(),
        app_data: a_data.to_vec(),
    };
    let mut b = Side {
        hs: MseHandshake::responder(allowed, &mut rng(!seed)),
        est: None,
        got: Vec::new(),
        app_data: b_data.to_vec(),
    };
    let (mut a_to_b, mut b_to_a) = (Vec::new(), Vec::new());
    a.hs.take_output(&mut a_to_b);
    let mut sizes = chunks.iter().cycle();
    while !(a_to_b.is_empty() && b_to_a.is_empty()) {
        let n = (*sizes.next().unwrap()).min(a_to_b.len());
        let chunk: Vec<u8> = a_to_b.drain(..n).collect();
        if !chunk.is_empty() {
            b.deliver(&chunk, &mut b_to_a)?;
        }
        let n = (*sizes.next().unwrap()).min(b_to_a.len());
        let chunk: Vec<u8> = b_to_a.drain(..n).collect();
        if !chunk.is_empty() {
            a.deliver(&chunk, &mut a_to_b)?;
        }
    }
    let (a_est, b_est) = (a.est.expect("A finished"), b.est.expect("B finished"));
    Ok(Run {
        a_method: a_est.method,
        b_method: b_est.method,
        b_info_hash: b_est.info_hash,
        a_got: a.got,
        b_got: b.got,
    })
}

/// The bytes each way of one successful handshake (A: key XA, seed 1,
/// offer 3; B: key XB, seed 2, allowed 2), with no data after it.
fn transcript() -> &'static (Vec<u8>, Vec<u8>) {
    static TRANSCRIPT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    TRANSCRIPT.get_or_init(|| {
        let ia = bt_handshake(&INFO_HASH, b"-RS0001-abcdefghijkl");
        let mut a = transcript_initiator(ia);
        let mut b = transcript_responder();
        let a_to_b = output(&mut a);
        assert!(b.receive(&a_to_b[..96], &serves).unwrap().is_none());
        let yb = output(&mut b);
        assert!(a.receive(&yb, &serves).unwrap().is_none());
        let step3 = output(&mut a);
        let b_done = b.receive(&[&a_to_b[96..], &step3[..]].concat(), &serves);
        assert_eq!(b_done.unwrap().unwrap().method, Method::Rc4);
        let step4 = output(&mut b);
        assert_eq!(
            a.receive(&step4, &serves).unwrap().unwrap().method,
            Method::Rc4
        );
        ([a_to_b, step3].concat(), [yb, step4].concat())
    })
}

fn transcript_initiator(ia: Vec<u8>) -> MseHandshake {
    MseHandshake::initiator_with_key(INFO_HASH, 3, ia, XA, &mut rng(1))
}

fn transcript_responder() -> MseHandshake {
    MseHandshake::responder_with_key(CRYPTO_RC4, XB, &mut rng(2))
}

// ---- 1. RC4 ----------------------------------------------------------------

/// RFC 6229 keystreams at offsets 0, 1024 and 4096. `Cipher` discards
/// 1024 bytes, so its first bytes are those at offset 1024.
#[test]
fn rc4_keystream_matches_rfc6229_at_0_1024_and_4096() {
    let vectors = [
        (
            "0102030405",
            "b2396305f03dc027ccc3524a0a1118a8",
            "30abbcc7c20b01609f23ee2d5f6bb7df",
            "ff25b58995996707e51fbdf08b34d875",
        ),
        (
            "0102030405060708090a0b0c0d0e0f10",
            "9ac7cc9a609d1ef7b2932899cde41b97",
            "bdf0324e6083dcc6d3cedd3ca8c53c16",
            "a36a4c301ae8ac13610ccbc12256cacc",
        ),
        (
            "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
            "eaa6bd25880bf93d3f5d1e4ca2611d91",
            "7fec5bfd9f9b89ce6548309092d7e958",
            "f3e4c0a2e02d1d01f7f0a74618af2b48",
        ),
    ];
    for (key, at_0, at_1024, at_4096) in vectors {
        let key = unhex(key);
        let mut raw = Rc4::new(&key);
        let mut block = [0u8; 16];
        raw.apply_keystream(&mut block);
        assert_eq!(block.to_vec(), unhex(at_0));

        let mut cipher = Cipher::new(&key);
        let mut block = [0u8; 16];
        cipher.apply(&mut block);
        assert_eq!(block.to_vec(), unhex(at_1024), "first bytes of Cipher");
        cipher.apply(&mut vec![0; 4096 - 1024 - 16]);
        let mut block = [0u8; 16];
        cipher.apply(&mut block);
        assert_eq!(block.to_vec(), unhex(at_4096));
    }
}

proptest! {
    /// Our RC4 and the `rc4` crate's give the same bytes, whatever the key
    /// and however the stream is cut.
    #[test]
    fn rc4_matches_the_rc4_crate(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        cuts in proptest::collection::vec(0usize..40, 1..20),
    ) {
        use ::rc4::{KeyInit, StreamCipher};
        let mut ours = Rc4::new(&key);
        let mut reference = ::rc4::Rc4::new_from_slice(&key).unwrap();
        for len in cuts {
            let mut a: Vec<u8> = (0..len as u8).collect();
            let mut b = a.clone();
            ours.apply_keystream(&mut a);
            reference.apply_keystream(&mut b);
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn rc4_without_discard_matches_the_rc4_crate_readme() {
    let mut raw = Rc4::new(b"Key");
    let mut text = *b"Plaintext";
    raw.apply_keystream(&mut text);
    assert_eq!(text.to_vec(), unhex("bbf316e8d940af0ad3"));
}

#[test]
fn cipher_decrypts_what_it_encrypts_in_any_split() {
    let key = [7u8; 20];
    let mut data: Vec<u8> = (0..=255).collect();
    let mut encrypt = Cipher::new(&key);
    encrypt.apply(&mut data[..100]);
    encrypt.apply(&mut data[100..]);
    let mut decrypt = Cipher::new(&key);
    decrypt.apply(&mut data[..3]);
    decrypt.apply(&mut data[3..]);
    assert_eq!(data, (0..=255).collect::<Vec<u8>>());
}

// ---- 2. Transmission's recordings (handshake-test.cc) ---------------------

/// The private key Transmission's test injects, `0EYKCwBWQ4Dg9kX3c5xxjVtBDKw=`.
const TR_X: [u8; 20] = hex_bytes("d0460a0b00564380e0f645f7739c718d5b410cac");
/// The test's "UbuntuTorrent".
const TR_SKEY: [u8; 20] = hex_bytes("2c6b6858d61da9543d4231a71db4b1c9264b0685");

/// incomingEncrypted, 1: the peer (Transmission 3.00) sends Ya.
const TR_IN_YA: &str = concat!(
    "svkySIFcCsrDTeHjPt516UFbsoR+5vfbe5/m6stE7u5JLZ10kJ19NmP64E10qI",
    "nn78sCrJgjw1yEHHwrzOcKiRlYvcMotzJMe+SjrFUnaw3KBfn2bcKBhxb/sfM9",
    "J7nJ",
);
/// incomingEncrypted, 3: PadA, req1, req2^req3, E_A(VC .. IA).
const TR_IN_REST: &str = concat!(
    "ICAgICAgICAgIKdr4jIBZ4xFfO4xNiRV7Gl2azTSuTFuu06NU1WyRPif018JYe",
    "VGwrTPstEPu3V5lmzjtMGVLaL5EErlpJ93Xrz+ea6EIQEUZA+D4jKaV/to9NVi",
    "04/1W1A2PHgg+I9puac/i9BsFPcjdQeoVtU73lNCbTDQgTieyjDWmwo=",
);
/// outgoingEncrypted, 2: the peer (qBittorrent 4.2.5) sends Yb.
const TR_OUT_YB: &str = concat!(
    "Sfgoq/nrQfD4Iwirfk+uhOmQMOC/QwK/vYiOact1NF9TpWXms3cvlKEKxs0VU",
    "mnmytRh9bh4Lcs1bswlC6R05XrJGzLhZqAqcLUUAR1VTLA5oKSjR1038zFbhn",
    "c71jql",
);
/// outgoingEncrypted, 4: PadB, E_B(VC | select | len(PadD) | PadD), then
/// its BT handshake in RC4.
const TR_OUT_REST: &str = concat!(
    "paZ3steQoTE58dNkLfvPJdGfTli1FCa1FcvjqCGkzEigwxVTo7o9MviInBNGZ",
    "zetXtP0f4PgD0SubXoMNEi2dza/PsuA5e+7GcnNeNT0fcbw49HWtXgL3wb18s",
    "g3puL1I6oi1DQhFfCg1xDDwj2AEKA2cy7zMjhLSTP4n9KNFDfPElrbdZI0Q/F",
    "Db1JVyHzNGLJyYSgOnye/+IHiu/lqNmonH2ixTshuSBCW04PTkGGwxxWqFcw9",
    "MWNA8fidJaKjPgs6z4/FKXlyHGw+6Sa091zxAmxUNdnAmOS1uUcplSMfEz9Go",
    "xok8aLtS+w2xg+eEmIFf+KhW2n0bFqfQDvmAyXKLhXf44lTfq95aMb309APR/",
    "Q0QDEdK2SqUKV2dWQIQLgDlxhxSL7cPMHenT8m3rufi6EdkvdPyKcB1iI2zW8",
    "qUGbgPYZ+CXxTFjz/UxvxNdZaAePjJKz9tlO9ns4y+YqXe+ABBD9P7vMBo9bd",
    "pF4TQ/TjX2rAPqWNucvBjNODNAe/tMSprBz+7Z7cECwBmQEx/N6zsWkjt/qP0",
    "XYikCQLBsTCFNPLHAXOVTpqwJo3mKyzaRZ6V1bmrx+Yn++PdMzArtwxJxvYaW",
    "2G4l/eU/hFHEWzOqUgr6908KtU",
);

fn tr_serves(req2: &[u8; 20]) -> Option<[u8; 20]> {
    (*req2 == req2_hash(&TR_SKEY)).then_some(TR_SKEY)
}

#[test]
fn transmission_private_key_is_the_base64_one() {
    assert_eq!(base64("0EYKCwBWQ4Dg9kX3c5xxjVtBDKw=").as_slice(), TR_X);
}

#[test]
fn transmission_incoming_encrypted_derived_values() {
    let ya = base64(TR_IN_YA);
    let rest = base64(TR_IN_REST);
    assert_eq!((ya.len(), rest.len()), (96, 134));
    // The peer used the same private key, so its Ya is our own public key.
    assert_eq!(ya, public_key(&TR_X));
    let s = shared_secret(ya.as_slice().try_into().unwrap(), &TR_X).unwrap();
    assert_eq!(
        s.to_vec(),
        unhex(concat!(
            "218f45c4e425dc91b8a74df5fe4f778417892363bb2dfdb3979165247839293d",
            "75ee32ada87153f15855fb4512c629191bb40be2935c3759cb601d1b4cb555db",
            "457c3c391b053846466ddf8715042d3ae620f33900803a7126a2a031596b6da5",
        ))
    );
    let req1 = hash(&[b"req1", &s]);
    assert_eq!(
        req1.to_vec(),
        unhex("a76be23201678c457cee31362455ec69766b34d2")
    );
    assert_eq!(rest[..10], [b' '; 10], "PadA");
    assert_eq!(rest[10..30], req1);
    let req2 = req2_hash(&TR_SKEY);
    let req3 = hash(&[b"req3", &s]);
    assert_eq!(
        req2.to_vec(),
        unhex("ce74fc83166b130e18caae49dcf03eddf2c164a0")
    );
    assert_eq!(
        req3.to_vec(),
        unhex("7745923858e6405baa8e56d60faf37bc1787a614")
    );
    let mut obfuscated = req2;
    xor_into(&mut obfuscated, &req3);
    assert_eq!(
        obfuscated.to_vec(),
        unhex("b9316ebb4e8d5355b244f89fd35f0961e546c2b4")
    );
    assert_eq!(rest[30..50], obfuscated);
    let key_a = hash(&[b"keyA", &s, &TR_SKEY]);
    let key_b = hash(&[b"keyB", &s, &TR_SKEY]);
    assert_eq!(
        key_a.to_vec(),
        unhex("88f435144042cf35c9623716319f7b64e9436362")
    );
    assert_eq!(
        key_b.to_vec(),
        unhex("50b379cf149293f6bb517b7d9c6d88f90bf5855a")
    );
    let (mut e_a_vc, mut e_b_vc) = (VC, VC);
    Cipher::new(&key_a).apply(&mut e_a_vc);
    Cipher::new(&key_b).apply(&mut e_b_vc);
    assert_eq!(e_a_vc.to_vec(), unhex("cfb2d10fbb757996"));
    assert_eq!(rest[50..58], e_a_vc);
    assert_eq!(e_b_vc.to_vec(), unhex("bed11ca92d44f877"));
    // VC | provide | len(PadC) | len(IA) | IA.
    let mut plain = rest[50..].to_vec();
    Cipher::new(&key_a).apply(&mut plain);
    assert_eq!(plain[..16], unhex("00000000000000000000000200000044")[..]);
}

#[test]
fn transmission_incoming_encrypted_replays_as_responder() {
    for chunk in [usize::MAX, 1, 7] {
        let mut b =
            MseHandshake::responder_with_key(CRYPTO_PLAINTEXT | CRYPTO_RC4, TR_X, &mut rng(9));
        let ya = base64(TR_IN_YA);
        for part in ya.chunks(chunk.min(ya.len())) {
            assert!(b.receive(part, &tr_serves).unwrap().is_none());
        }
        assert_eq!(output(&mut b)[..96], ya, "Yb = 2^X = the peer's Ya");
        let rest = base64(TR_IN_REST);
        let mut done = None;
        for part in rest.chunks(chunk.min(rest.len())) {
            assert!(done.is_none());
            done = b.receive(part, &tr_serves).unwrap();
        }
        let done = done.expect("established after all of IA");
        assert_eq!(done.method, Method::Rc4, "the peer provides RC4 only");
        assert_eq!(done.info_hash, TR_SKEY);
        assert!(done.encrypt.is_some() && done.decrypt.is_some());
        let ia = &done.payload;
        assert_eq!(ia.len(), 68);
        assert_eq!(ia[..20], *b"\x13BitTorrent protocol");
        assert_eq!(ia[20..28], unhex("0000000000100005")[..]);
        assert_eq!(ia[28..48], TR_SKEY);
        assert_eq!(ia[48..], *b"-TR300Z-w4bd4mkebkbi");
        // Step 4: E_B(VC | select 0x02 | len(PadD) 0).
        let step4 = output(&mut b);
        assert_eq!(step4[..8], unhex("bed11ca92d44f877")[..]);
        let s = shared_secret(ya.as_slice().try_into().unwrap(), &TR_X).unwrap();
        assert_eq!(step4, craft_step4(&s, &TR_SKEY, CRYPTO_RC4, &[]));
    }
}

/// incomingEncryptedUnknownInfoHash: the same bytes, no torrent.
#[test]
fn transmission_incoming_encrypted_for_an_unknown_torrent_fails() {
    let mut b = MseHandshake::responder_with_key(3, TR_X, &mut rng(9));
    assert!(b.receive(&base64(TR_IN_YA), &serves).unwrap().is_none());
    let err = b.receive(&base64(TR_IN_REST), &serves).unwrap_err();
    assert_eq!(err, MseError::UnknownTorrent);
    assert_eq!(
        b.receive(&[], &serves).unwrap_err(),
        MseError::UnknownTorrent,
        "sticky"
    );
}

#[test]
fn transmission_outgoing_encrypted_replays_as_initiator() {
    let ia = bt_handshake(&TR_SKEY, b"-TR4000-abcdefghijkl");
    for chunk in [usize::MAX, 1, 13] {
        // Transmission "preferred" offers RC4 only; the peer selected it.
        let mut a =
            MseHandshake::initiator_with_key(TR_SKEY, CRYPTO_RC4, ia.clone(), TR_X, &mut rng(5));
        let ya = output(&mut a);
        assert_eq!(ya[..96], base64(TR_IN_YA)[..], "same X, same Ya");
        assert!(ya.len() <= 96 + MAX_PAD);

        let yb = base64(TR_OUT_YB);
        assert_eq!(yb.len(), 96);
        assert_eq!(yb[..4], unhex("49f828ab")[..]);
        assert_eq!(yb[92..], unhex("3bd63aa5")[..]);
        for part in yb.chunks(chunk.min(yb.len())) {
            assert!(a.receive(part, &serves_nothing).unwrap().is_none());
        }
        let s = shared_secret(yb.as_slice().try_into().unwrap(), &TR_X).unwrap();
        assert_eq!(s[..4], unhex("43599f3c")[..]);
        // The brief prints the end as "cef03f33bd", a typo: the recorded
        // needle below is HASH('req1', S) of this S.
        assert_eq!(s[91..], unhex("caf03f33bd")[..]);
        let step3 = output(&mut a);
        assert_eq!(
            step3[..20],
            base64("mbpZFBwdi4U1snVvboN3sMEpNmU=")[..],
            "the test's needle"
        );
        assert_eq!(
            step3[..20],
            unhex("99ba59141c1d8b8535b2756f6e8377b0c1293665")[..]
        );
        assert_eq!(
            step3[20..40],
            unhex("ac747f4582a325a2cd7455751cb8c44656540d1f")[..]
        );
        let key_a = hash(&[b"keyA", &s, &TR_SKEY]);
        let key_b = hash(&[b"keyB", &s, &TR_SKEY]);
        assert_eq!(
            key_a.to_vec(),
            unhex("03abfe3b02b20eb01e32f88cb2b69db3c9758a0f")
        );
        assert_eq!(
            key_b.to_vec(),
            unhex("da4070ad9b2ae3cc131794b77e218346ccb05933")
        );
        assert_eq!(step3, craft_step3(&s, &TR_SKEY, VC, CRYPTO_RC4, &[], &ia));

        let rest = base64(TR_OUT_REST);
        assert_eq!(rest.len(), 477);
        let mut e_b_vc = VC;
        Cipher::new(&key_b).apply(&mut e_b_vc);
        assert_eq!(e_b_vc.to_vec(), unhex("5adb75923443f143"));
        assert_eq!(rest[130..138], e_b_vc, "after 130 bytes of PadB");
        let mut plain = rest[130..].to_vec();
        Cipher::new(&key_b).apply(&mut plain);
        assert_eq!(
            plain[8..14],
            [0, 0, 0, 2, 1, 9],
            "select 0x02, len(PadD) 265"
        );

        // Established right after PadD (byte 409); later reads go through
        // its decrypt cipher.
        let mut done: Option<Established> = None;
        let mut got = Vec::new();
        for part in rest.chunks(chunk.min(rest.len())) {
            if let Some(done) = &mut done {
                let mut part = part.to_vec();
                done.decrypt.as_mut().unwrap().apply(&mut part);
                got.extend_from_slice(&part);
            } else if let Some(est) = a.receive(part, &serves_nothing).unwrap() {
                got.extend_from_slice(&est.payload);
                done = Some(est);
            }
        }
        let done = done.expect("established after PadD");
        assert!(!a.has_output());
        assert_eq!(done.method, Method::Rc4);
        assert_eq!(done.info_hash, TR_SKEY);
        if chunk == usize::MAX {
            assert_eq!(done.payload.len(), 68, "all that followed PadD");
        }
        assert_eq!(got.len(), 68, "the peer's handshake followed PadD");
        assert_eq!(got[..20], *b"\x13BitTorrent protocol");
        assert_eq!(got[28..48], TR_SKEY);
        assert_eq!(got[48..], *b"-qB4250-scysDI_JuVN3");
    }
}

// ---- 3. Round trips ----------------------------------------------------------

#[test]
fn every_offer_against_every_allowed_set() {
    let ia = bt_handshake(&INFO_HASH, b"-RS0001-abcdefghijkl");
    for offer in 1..=3 {
        for allowed in 1..=3 {
            let result = run(
                offer as u64 * 10 + allowed as u64,
                offer,
                allowed,
                &ia,
                b"A",
                b"B",
                &[700],
            );
            let common = offer & allowed;
            match result {
                Ok(run) => {
                    let want = if common & CRYPTO_PLAINTEXT != 0 {
                        Method::Plaintext
                    } else {
                        Method::Rc4
                    };
                    assert_eq!(
                        (run.a_method, run.b_method),
                        (want, want),
                        "{offer} vs {allowed}"
                    );
                    assert_eq!(run.b_info_hash, INFO_HASH);
                    assert_eq!(run.b_got, [&ia[..], b"A"].concat());
                    assert_eq!(run.a_got, b"B");
                }
                Err(err) => {
                    assert_eq!(common, 0, "{offer} vs {allowed}: {err}");
                    assert_eq!(
                        err,
                        MseError::NoCommonMethod {
                            offered: offer,
                            allowed
                        }
                    );
                }
            }
        }
    }
}

#[test]
fn plaintext_method_sends_the_payload_in_clear_after_ia() {
    let ia = bt_handshake(&INFO_HASH, b"-RS0001-abcdefghijkl");
    let mut a = MseHandshake::initiator(INFO_HASH, 3, ia.clone(), &mut rng(3));
    let mut b = MseHandshake::responder(3, &mut rng(4));
    let ya = output(&mut a);
    assert!(b.receive(&ya, &serves).unwrap().is_none());
    assert!(a.receive(&output(&mut b), &serves).unwrap().is_none());
    // Step 3 and clear bytes after IA in one read: only IA is decrypted.
    let done = b
        .receive(&[&output(&mut a)[..], b"clear"].concat(), &serves)
        .unwrap()
        .unwrap();
    assert_eq!(done.method, Method::Plaintext);
    assert!(done.encrypt.is_none() && done.decrypt.is_none());
    assert_eq!(done.payload, [&ia[..], b"clear"].concat());
    let done = a
        .receive(&[&output(&mut b)[..], b"back"].concat(), &serves)
        .unwrap()
        .unwrap();
    assert_eq!(done.method, Method::Plaintext);
    assert_eq!(done.payload, b"back");
}

#[test]
fn empty_initial_payload_is_carried() {
    let run = run(11, 2, 3, &[], b"after", b"reply", &[1, 2, 3]).unwrap();
    assert_eq!(run.b_method, Method::Rc4);
    assert_eq!(run.b_got, b"after");
    assert_eq!(run.a_got, b"reply");
}

#[test]
fn initiator_never_starts_with_the_plaintext_handshake_byte() {
    // A random source that keeps drawing keys until one gives Ya[0] == 0x13.
    let mut seed = 0;
    while public_key(&seed_key(seed))[0] != 0x13 {
        seed += 1;
    }
    let mut draws = 0;
    let mut random = |buf: &mut [u8]| {
        if buf.len() == 20 {
            buf.copy_from_slice(&seed_key(seed + draws));
            draws += 1;
        } else {
            buf.fill(0);
        }
    };
    let mut a = MseHandshake::initiator(INFO_HASH, 3, Vec::new(), &mut random);
    assert!(draws >= 2, "the first key was redrawn");
    assert_ne!(output(&mut a)[0], 0x13);
}

fn seed_key(n: u64) -> [u8; 20] {
    let mut key = [0; 20];
    rng(n)(&mut key);
    key
}

#[test]
fn short_public_keys_are_left_padded() {
    // About one key in 256 has a leading zero byte: Ya and Yb keep it.
    let x = (0..).map(seed_key).find(|x| public_key(x)[0] == 0).unwrap();
    let short = BigUint::from(2u32)
        .modpow(&BigUint::from_bytes_be(&x), &BigUint::from_bytes_be(&P))
        .to_bytes_be();
    assert_eq!(public_key(&x)[96 - short.len()..], short[..]);
    let mut a = MseHandshake::initiator_with_key(INFO_HASH, 2, b"ia".to_vec(), x, &mut rng(1));
    let mut b = MseHandshake::responder_with_key(3, x, &mut rng(2));
    let ya = output(&mut a);
    assert_eq!(ya[0], 0);
    assert!(b.receive(&ya, &serves).unwrap().is_none());
    assert!(a.receive(&output(&mut b), &serves).unwrap().is_none());
    let done = b.receive(&output(&mut a), &serves).unwrap().unwrap();
    assert_eq!(done.payload, b"ia");
    assert!(a.receive(&output(&mut b), &serves).unwrap().is_some());
}

#[test]
fn short_shared_secrets_are_left_padded() {
    // Pitfall 6: with S one byte short, req1 and both keys come out wrong
    // (yet two copies of the same bug would still agree with each other).
    let yb = public_key(&XB);
    let xa = (0..)
        .map(seed_key)
        .find(|x| shared_secret(&yb, x).unwrap()[0] == 0)
        .unwrap();
    let short = BigUint::from_bytes_be(&yb)
        .modpow(&BigUint::from_bytes_be(&xa), &BigUint::from_bytes_be(&P))
        .to_bytes_be();
    assert!(short.len() < 96);
    let s = [vec![0; 96 - short.len()], short].concat();
    let mut a = MseHandshake::initiator_with_key(INFO_HASH, 2, b"ia".to_vec(), xa, &mut rng(1));
    output(&mut a);
    assert!(a.receive(&yb, &serves).unwrap().is_none());
    let step3 = output(&mut a);
    assert_eq!(step3[..20], hash(&[b"req1", &s]));
    let s: [u8; 96] = s.try_into().unwrap();
    assert_eq!(step3, craft_step3(&s, &INFO_HASH, VC, 2, &[], b"ia"));
    let mut b = MseHandshake::responder_with_key(3, XB, &mut rng(2));
    assert!(b.receive(&public_key(&xa), &serves).unwrap().is_none());
    assert_eq!(b.receive(&step3, &serves).unwrap().unwrap().payload, b"ia");
    assert!(a.receive(&output(&mut b)[96..], &serves).unwrap().is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any chunking, random pads (from the seed), both methods, data both ways.
    #[test]
    fn round_trip_in_random_chunks(
        seed in any::<u64>(),
        offer in 1u32..=3,
        allowed in 1u32..=3,
        ia in prop::collection::vec(any::<u8>(), 0..100),
        a_data in prop::collection::vec(any::<u8>(), 0..300),
        b_data in prop::collection::vec(any::<u8>(), 0..300),
        chunks in prop::collection::vec(1usize..700, 1..20),
    ) {
        let result = run(seed, offer, allowed, &ia, &a_data, &b_data, &chunks);
        if offer & allowed == 0 {
            prop_assert_eq!(result.err(), Some(MseError::NoCommonMethod { offered: offer, allowed }));
        } else {
            let run = result.unwrap();
            let want = if offer & allowed & CRYPTO_PLAINTEXT != 0 { Method::Plaintext } else { Method::Rc4 };
            prop_assert_eq!(run.a_method, want);
            prop_assert_eq!(run.b_method, want);
            prop_assert_eq!(run.b_info_hash, INFO_HASH);
            prop_assert_eq!(run.b_got, [&ia[..], &a_data[..]].concat());
            prop_assert_eq!(run.a_got, b_data);
        }
    }

    /// Crafted PadC and PadD of any allowed length are skipped correctly.
    #[test]
    fn any_pad_c_and_pad_d_up_to_512_is_skipped(
        pad_c in prop::collection::vec(any::<u8>(), 0..=MAX_PAD),
        pad_d in prop::collection::vec(any::<u8>(), 0..=MAX_PAD),
    ) {
        let (mut b, s) = responder_after_ya(3);
        let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &pad_c, b"ia");
        let done = b.receive(&step3, &serves).unwrap().unwrap();
        prop_assert_eq!(done.payload, b"ia");
        let (mut a, s) = initiator_after_yb(2, b"ia");
        let step4 = craft_step4(&s, &INFO_HASH, 2, &pad_d);
        prop_assert_eq!(a.receive(&step4, &serves).unwrap().unwrap().payload, b"");
    }
}

// ---- 4. Rejections -----------------------------------------------------------

/// Garbage whose first byte keeps it below P: a valid key, then no req1.
fn garbage(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn responder_gives_up_on_garbage_after_exactly_96_plus_532_bytes() {
    let mut b = MseHandshake::responder(3, &mut rng(1));
    let garbage = garbage(96 + 532);
    for (i, byte) in garbage.iter().enumerate() {
        let result = b.receive(std::slice::from_ref(byte), &serves);
        if i + 1 < garbage.len() {
            assert!(result.unwrap().is_none(), "byte {i}");
            assert!(b.input.len() < 532, "bounded buffer");
        } else {
            assert_eq!(result.unwrap_err(), MseError::NoSync);
        }
    }
    assert!(b.input.is_empty());
    // In one read: 627 bytes wait, 628 fail.
    let mut b = MseHandshake::responder(3, &mut rng(1));
    assert!(b.receive(&garbage[..627], &serves).unwrap().is_none());
    assert_eq!(
        b.receive(&garbage[627..], &serves).unwrap_err(),
        MseError::NoSync
    );
    let mut b = MseHandshake::responder(3, &mut rng(1));
    assert_eq!(
        b.receive(&self::garbage(100_000), &serves).unwrap_err(),
        MseError::NoSync
    );
}

#[test]
fn responder_finds_req1_after_512_bytes_of_pad_a_but_not_513() {
    for (pad, ok) in [(512, true), (513, false)] {
        let (mut b, s) = responder_after_ya(3);
        let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[], b"ia");
        let result = b.receive(&[&garbage(pad)[..], &step3].concat(), &serves);
        if ok {
            assert_eq!(result.unwrap().unwrap().payload, b"ia");
        } else {
            assert_eq!(result.unwrap_err(), MseError::NoSync);
        }
    }
}

#[test]
fn initiator_gives_up_on_garbage_after_exactly_96_plus_520_bytes() {
    let (mut a, _) = initiator_after_yb(3, b"");
    let garbage = garbage(520);
    for (i, byte) in garbage.iter().enumerate() {
        let result = a.receive(std::slice::from_ref(byte), &serves);
        if i + 1 < garbage.len() {
            assert!(result.unwrap().is_none(), "byte {i}");
        } else {
            assert_eq!(result.unwrap_err(), MseError::NoSync);
        }
    }
    for (pad, ok) in [(512, true), (513, false)] {
        let (mut a, s) = initiator_after_yb(3, b"");
        let step4 = craft_step4(&s, &INFO_HASH, 1, &[]);
        let result = a.receive(&[&self::garbage(pad)[..], &step4].concat(), &serves);
        assert_eq!(result.is_ok(), ok, "PadB of {pad}");
    }
}

#[test]
fn degenerate_keys_are_rejected_by_both_sides() {
    for (y, ok) in [
        (small_key(0), false),
        (small_key(1), false),
        (small_key(2), true),
        (p_plus(-2), true),
        (p_plus(-1), false),
        (p_plus(0), false),
        (p_plus(1), false),
        ([0xff; 96], false),
    ] {
        let mut b = MseHandshake::responder(3, &mut rng(1));
        let result = b.receive(&y, &serves);
        if ok {
            assert!(result.unwrap().is_none());
            assert!(b.has_output(), "Yb sent");
        } else {
            assert_eq!(result.unwrap_err(), MseError::BadKey);
            assert!(!b.has_output(), "nothing sent");
        }
        let mut a = MseHandshake::initiator(INFO_HASH, 3, Vec::new(), &mut rng(1));
        output(&mut a);
        let result = a.receive(&y, &serves);
        if ok {
            assert!(result.unwrap().is_none());
            assert!(a.has_output(), "step 3 sent");
        } else {
            assert_eq!(result.unwrap_err(), MseError::BadKey);
            assert!(!a.has_output());
        }
    }
}

#[test]
fn responder_sends_nothing_before_all_of_ya() {
    let mut b = MseHandshake::responder(3, &mut rng(1));
    assert!(!b.has_output());
    assert!(b
        .receive(&public_key(&XA)[..95], &serves)
        .unwrap()
        .is_none());
    assert!(!b.has_output());
    assert!(b
        .receive(&public_key(&XA)[95..], &serves)
        .unwrap()
        .is_none());
    assert!(b.has_output());
}

#[test]
fn responder_rejects_a_torrent_it_does_not_serve() {
    let mut a = MseHandshake::initiator(OTHER_HASH, 3, Vec::new(), &mut rng(1));
    let mut b = MseHandshake::responder(3, &mut rng(2));
    assert!(b.receive(&output(&mut a), &serves).unwrap().is_none());
    assert!(a.receive(&output(&mut b), &serves).unwrap().is_none());
    let err = b.receive(&output(&mut a), &serves).unwrap_err();
    assert_eq!(err, MseError::UnknownTorrent);
    assert!(!b.has_output(), "no step 4");
}

#[test]
fn responder_rejects_a_wrong_vc() {
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, [0, 0, 0, 0, 0, 0, 0, 1], 2, &[], b"");
    assert_eq!(b.receive(&step3, &serves).unwrap_err(), MseError::BadVc);
    // A bit flipped in transit does the same: RC4 is a plain XOR stream.
    let (mut b, s) = responder_after_ya(3);
    let mut step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[], b"");
    step3[40] ^= 0x80;
    assert_eq!(b.receive(&step3, &serves).unwrap_err(), MseError::BadVc);
}

#[test]
fn responder_rejects_pad_c_of_513() {
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[0; 513], b"");
    assert_eq!(
        b.receive(&step3, &serves).unwrap_err(),
        MseError::PadTooLong(513)
    );
}

#[test]
fn initiator_rejects_pad_d_of_513() {
    let (mut a, s) = initiator_after_yb(3, b"");
    let step4 = craft_step4(&s, &INFO_HASH, 2, &[0; 513]);
    assert_eq!(
        a.receive(&step4, &serves).unwrap_err(),
        MseError::PadTooLong(513)
    );
}

#[test]
fn responder_rejects_an_initial_payload_over_4096_bytes() {
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[], &[7; MAX_INITIAL_PAYLOAD]);
    assert_eq!(
        b.receive(&step3, &serves).unwrap().unwrap().payload.len(),
        4096
    );
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[], &[7; MAX_INITIAL_PAYLOAD + 1]);
    assert_eq!(
        b.receive(&step3, &serves).unwrap_err(),
        MseError::PayloadTooLong(4097)
    );
}

#[test]
fn responder_masks_unknown_provide_bits_and_reports_them() {
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, VC, 0xfff0 | CRYPTO_RC4, &[], b"");
    assert_eq!(
        b.receive(&step3, &serves).unwrap().unwrap().method,
        Method::Rc4
    );
    let (mut b, s) = responder_after_ya(3);
    let step3 = craft_step3(&s, &INFO_HASH, VC, 0xfff0, &[], b"");
    assert_eq!(
        b.receive(&step3, &serves).unwrap_err(),
        MseError::NoCommonMethod {
            offered: 0xfff0,
            allowed: 3
        }
    );
}

#[test]
fn initiator_rejects_a_select_it_did_not_offer() {
    for (offer, select) in [(2, 1), (1, 2), (3, 3), (3, 0), (3, 4), (2, 6)] {
        let (mut a, s) = initiator_after_yb(offer, b"");
        let step4 = craft_step4(&s, &INFO_HASH, select, &[]);
        assert_eq!(
            a.receive(&step4, &serves).unwrap_err(),
            MseError::BadSelect(select)
        );
    }
    // A real responder's step 4 with select flipped in transit from 2 to 1.
    let (mut b, _) = responder_after_ya(3);
    let (mut a, s) = initiator_after_yb(2, b"");
    let step3 = craft_step3(&s, &INFO_HASH, VC, 2, &[], b"");
    b.receive(&step3, &serves).unwrap().unwrap();
    let mut step4 = output(&mut b);
    step4[11] ^= 0x03;
    assert_eq!(
        a.receive(&step4, &serves).unwrap_err(),
        MseError::BadSelect(1)
    );
}

#[test]
fn truncated_handshakes_stay_pending() {
    let (a_to_b, b_to_a) = transcript();
    for len in 0..a_to_b.len() {
        let mut b = transcript_responder();
        assert!(
            b.receive(&a_to_b[..len], &serves).unwrap().is_none(),
            "{len}"
        );
        assert!(b.receive(&[], &serves).unwrap().is_none());
    }
    let ia = bt_handshake(&INFO_HASH, b"-RS0001-abcdefghijkl");
    for len in 0..b_to_a.len() {
        let mut a = transcript_initiator(ia.clone());
        assert!(
            a.receive(&b_to_a[..len], &serves).unwrap().is_none(),
            "{len}"
        );
        assert!(a.receive(&[], &serves).unwrap().is_none());
    }
}

#[test]
fn errors_repeat_and_clear_the_buffer() {
    let mut b = MseHandshake::responder(3, &mut rng(1));
    assert_eq!(
        b.receive(&small_key(1), &serves).unwrap_err(),
        MseError::BadKey
    );
    assert_eq!(
        b.receive(&public_key(&XA), &serves).unwrap_err(),
        MseError::BadKey
    );
    assert!(b.input.is_empty());
}

#[test]
fn error_causes_and_messages() {
    let cases = [
        (MseError::BadKey, "bad_key", ""),
        (MseError::NoSync, "no_sync", "512"),
        (MseError::UnknownTorrent, "unknown_torrent", ""),
        (MseError::BadVc, "bad_vc", ""),
        (MseError::PadTooLong(513), "bad_pad", "513"),
        (
            MseError::NoCommonMethod {
                offered: 1,
                allowed: 2,
            },
            "no_common_method",
            "0x1",
        ),
        (MseError::BadSelect(3), "no_common_method", "0x3"),
        (MseError::PayloadTooLong(5000), "bad_payload", "5000"),
    ];
    for (err, cause, shown) in cases {
        assert_eq!(err.cause(), cause);
        assert!(err.to_string().contains(shown), "{err}");
    }
}

#[test]
#[should_panic(expected = "after the handshake completed")]
fn receive_after_established_is_a_bug() {
    let (mut b, s) = responder_after_ya(3);
    b.receive(&craft_step3(&s, &INFO_HASH, VC, 2, &[], b""), &serves)
        .unwrap()
        .unwrap();
    let _ = b.receive(b"more", &serves);
}

// ---- 5. Never panics -----------------------------------------------------------

/// Feeds `bytes` in chunks until done or failed; true if it finished.
fn feed(hs: &mut MseHandshake, bytes: &[u8], chunks: &[usize]) -> Result<bool, MseError> {
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
        rest = tail;
        if let Some(mut done) = hs.receive(chunk, &serves)? {
            if let Some(cipher) = &mut done.decrypt {
                cipher.apply(&mut rest.to_vec());
            }
            return Ok(true);
        }
        hs.take_output(&mut Vec::new());
    }
    Ok(false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1500),
        chunks in prop::collection::vec(1usize..400, 1..10),
        seed in any::<u64>(),
    ) {
        let mut b = MseHandshake::responder(3, &mut rng(seed));
        let _ = feed(&mut b, &bytes, &chunks);
        prop_assert!(b.input.len() < 96 + 532);
        let mut a = MseHandshake::initiator(INFO_HASH, 3, vec![1; 68], &mut rng(seed));
        let _ = feed(&mut a, &bytes, &chunks);
        prop_assert!(a.input.len() < 96 + 520);
    }

    /// A real transcript with bytes flipped, cut or inserted.
    #[test]
    fn mutated_transcripts_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in any::<prop::sample::Index>(),
        insert in prop::collection::vec(any::<u8>(), 0..40),
        at in any::<prop::sample::Index>(),
        chunks in prop::collection::vec(1usize..300, 1..8),
    ) {
        let (a_to_b, b_to_a) = transcript();
        for (original, to_responder) in [(a_to_b, true), (b_to_a, false)] {
            let mut bytes = original.clone();
            for (index, xor) in &flips {
                let i = index.index(bytes.len());
                bytes[i] ^= xor;
            }
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, insert.iter().copied());
            let len = bytes.len();
            bytes.truncate(len - cut.index(len / 4 + 1));
            let mut hs = if to_responder {
                transcript_responder()
            } else {
                transcript_initiator(bt_handshake(&INFO_HASH, b"-RS0001-abcdefghijkl"))
            };
            let result = feed(&mut hs, &bytes, &chunks);
            if flips.is_empty() && insert.is_empty() && bytes.len() == original.len() {
                prop_assert_eq!(result, Ok(true));
            }
        }
    }
}
