//! Message stream encryption (MSE, also called protocol encryption or PE):
//! the handshake that hides a BitTorrent connection from traffic shapers,
//! and the RC4 streams that follow it.
//!
//! Why: many clients (Transmission by default, libtorrent when told to)
//! dial with MSE, and some only with MSE. A seeder that cannot answer it
//! loses those peers or makes them fall back and redial in plaintext.
//! MSE obfuscates; it does not authenticate. Anyone who knows the
//! info-hash can complete it, and an active man in the middle can read it.
//!
//! The exchange (`A` dials, `B` answers; all of it in docs/design/mse.md):
//!
//! ```text
//! 1 A->B  Ya[96] | PadA                      Diffie-Hellman, 768-bit MODP group
//! 2 B->A  Yb[96] | PadB                      S = shared secret
//! 3 A->B  HASH('req1',S) | HASH('req2',SKEY) ^ HASH('req3',S)
//!         | E_A(VC | crypto_provide | len(PadC) | PadC | len(IA) | IA)
//! 4 B->A  E_B(VC | crypto_select | len(PadD) | PadD)
//! then    the BitTorrent stream, RC4 (select 0x02) or plaintext (select 0x01)
//! ```
//!
//! SKEY is the info-hash. `E_A` and `E_B` are RC4 keyed with
//! `HASH('keyA'|'keyB', S, SKEY)` with the first 1024 bytes of keystream
//! thrown away; each continues, unbroken, from the handshake into the
//! payload. IA, the initial payload, is always RC4 even when plaintext is
//! selected: the switch happens at a byte offset.
//!
//! This module is sans-IO: [`MseHandshake`] takes the bytes a socket
//! received and hands back the bytes to send, with no sockets, clocks or
//! global random source (the caller passes one in). A connection uses it
//! like this:
//!
//! ```text
//! let mut hs = MseHandshake::initiator(info_hash, CRYPTO_PLAINTEXT | CRYPTO_RC4, bt_handshake, &mut rng);
//! loop {
//!     hs.take_output(&mut send_buf);              // send all of it, in order
//!     let n = socket.recv(&mut recv_buf)?;        // (the I/O is the caller's)
//!     if let Some(done) = hs.receive(&recv_buf[..n], &lookup)? {
//!         hs.take_output(&mut send_buf);          // a responder may still have some
//!         // `done.payload` is the start of the peer's BitTorrent stream, in clear;
//!         // later bytes go through `done.decrypt`, ours through `done.encrypt`
//!         // (both `None` when the payload travels in plaintext).
//!         break;
//!     }
//! }
//! ```
//!
//! A responder is made with [`MseHandshake::responder`] once the first 20
//! bytes of an incoming connection turned out not to be
//! `"\x13BitTorrent protocol"`; those 20 bytes are its first input. Its
//! `lookup` maps [`req2_hash`] of each served torrent to the info-hash.
//!
//! Bounds: garbage costs at most 96 + 532 bytes (initiator: 96 + 520)
//! before [`MseError::NoSync`]. Between calls the handshake keeps only the
//! part of the field it waits for: under 532 bytes of sync window, or an IA
//! of up to [`MAX_INITIAL_PAYLOAD`] bytes. Each side computes two 768-bit
//! modular exponentiations (about 160 µs in a release build).

use self::rc4::Rc4;
use num_bigint::BigUint;
use sha1::{Digest, Sha1};

/// The most padding MSE allows in each of PadA, PadB, PadC and PadD.
pub const MAX_PAD: usize = 512;
/// The longest IA (initial payload) a responder accepts: more than the
/// 68-byte BitTorrent handshake every client sends there.
pub const MAX_INITIAL_PAYLOAD: usize = 4096;
/// crypto_provide / crypto_select bits.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// crypto_provide / crypto_select bits.
pub const CRYPTO_RC4: u32 = 0x02;

/// The methods this module knows; other provide bits are ignored.
const KNOWN_METHODS: u32 = CRYPTO_PLAINTEXT | CRYPTO_RC4;
/// Bytes in a public key (Ya, Yb) and in the shared secret S.
const KEY_LEN: usize = 96;
/// Bytes of the private key X: 160 bits, like libtorrent, Transmission and anacrolix.
const PRIVATE_KEY_LEN: usize = 20;
/// The verification constant.
const VC: [u8; 8] = [0; 8];
/// The prime of the 768-bit MODP group (RFC 2409 group 1); the generator is 2.
const P: [u8; KEY_LEN] = hex_bytes(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
);
/// How often an initiator draws a private key whose Ya starts with 0x13
/// before it keeps one anyway (1 in 256 per draw): a random source that
/// repeats itself must not hang us.
const MAX_KEY_DRAWS: usize = 32;

/// How the payload travels once the handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Plaintext after IA and PadD: the handshake only hid the header.
    Plaintext,
    /// RC4 for the whole stream, continuing the handshake's ciphers.
    Rc4,
}

/// One direction's RC4 stream: keyed with HASH('keyA'|'keyB', S, SKEY), first 1024 bytes discarded.
pub struct Cipher(Rc4);

impl Cipher {
    /// RC4 with `key` (1..=256 bytes), its first 1024 keystream bytes discarded.
    pub fn new(key: &[u8]) -> Self {
        let mut rc4 = Rc4::new(key);
        rc4.apply_keystream(&mut [0; 1024]);
        Cipher(rc4)
    }

    /// Encrypts or decrypts `buf` in place, continuing the stream.
    pub fn apply(&mut self, buf: &mut [u8]) {
        self.0.apply_keystream(buf);
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// Why a handshake failed. Each is fatal for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MseError {
    /// The peer's public key is 0, 1, P-1 or more: outside [2, P-2].
    #[error("degenerate Diffie-Hellman public key from the peer (outside [2, P-2])")]
    BadKey,
    /// Responder: HASH('req1', S) did not start within 512 bytes after Ya.
    /// Initiator: E_B(VC) did not start within 512 bytes after Yb.
    #[error("no MSE synchronisation point within {MAX_PAD} bytes of padding")]
    NoSync,
    /// Responder: no torrent we serve matches HASH('req2', SKEY).
    #[error("the peer asked for a torrent we do not serve")]
    UnknownTorrent,
    /// Responder: the verification constant did not decrypt to zeros.
    #[error("the MSE verification constant did not decrypt to zeros")]
    BadVc,
    /// len(PadC) or len(PadD) is more than [`MAX_PAD`].
    #[error("MSE padding of {0} bytes, more than {MAX_PAD}")]
    PadTooLong(usize),
    /// Responder: crypto_provide and our allowed methods have no bit in common.
    #[error("no common MSE method: the peer provides {offered:#x}, we allow {allowed:#x}")]
    NoCommonMethod {
        /// The peer's crypto_provide, as sent.
        offered: u32,
        /// What we accept.
        allowed: u32,
    },
    /// Initiator: crypto_select is not exactly one method that we offered.
    #[error("the peer selected MSE method {0:#x}, not exactly one method we offered")]
    BadSelect(u32),
    /// Responder: len(IA) is more than [`MAX_INITIAL_PAYLOAD`].
    #[error("MSE initial payload of {0} bytes, more than {MAX_INITIAL_PAYLOAD}")]
    PayloadTooLong(usize),
}

impl MseError {
    /// A short stable label, as the counters name it (`mse_failed_<cause>`):
    /// "bad_key", "no_sync", "unknown_torrent", "bad_vc", "bad_pad",
    /// "no_common_method" (also a select we did not offer), "bad_payload".
    pub fn cause(&self) -> &'static str {
        match self {
            MseError::BadKey => "bad_key",
            MseError::NoSync => "no_sync",
            MseError::UnknownTorrent => "unknown_torrent",
            MseError::BadVc => "bad_vc",
            MseError::PadTooLong(_) => "bad_pad",
            MseError::NoCommonMethod { .. } => "no_common_method",
            MseError::BadSelect(_) => "no_common_method",
            MseError::PayloadTooLong(_) => "bad_payload",
        }
    }
}

/// The handshake's outcome.
#[derive(Debug)]
pub struct Established {
    /// How the payload travels from here on, in both directions.
    pub method: Method,
    /// The SKEY (info-hash) both sides proved they know.
    pub info_hash: [u8; 20],
    /// Encrypts what we send after the handshake: Some only for Rc4.
    pub encrypt: Option<Cipher>,
    /// Decrypts what we receive after the handshake: Some only for Rc4.
    pub decrypt: Option<Cipher>,
    /// The peer's payload received so far, in clear: for a responder, IA
    /// (decrypted) and whatever came after it (decrypted if RC4, as it is
    /// if plaintext); for an initiator, whatever followed PadD (decrypted if
    /// RC4).
    pub payload: Vec<u8>,
}

/// Which side we are, and what that side still has to use.
enum Role {
    Initiator {
        offer: u32,
        /// IA, moved into step 3 once Yb is in.
        initial_payload: Vec<u8>,
    },
    Responder {
        allowed: u32,
        /// PadB, drawn up front because `receive` has no random source.
        pad: Vec<u8>,
    },
}

/// What the handshake waits for next. Each step names the bytes it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The peer's public key: 96 bytes.
    PeerKey,
    /// `needle[..len]` (responder: HASH('req1', S); initiator: E_B(VC)),
    /// starting at most MAX_PAD bytes in; start positions before `scanned`
    /// are already ruled out.
    Sync {
        needle: [u8; 20],
        len: usize,
        scanned: usize,
    },
    /// Responder: HASH('req2', SKEY) ^ HASH('req3', S), 20 bytes.
    Obfuscated,
    /// Responder: E_A(VC | crypto_provide | len(PadC)), 14 bytes.
    Provide,
    /// Responder: E_A(PadC).
    PadC(usize),
    /// Responder: E_A(len(IA)), 2 bytes.
    IaLen,
    /// Responder: E_A(IA).
    Ia(usize),
    /// Initiator: E_B(crypto_select | len(PadD)), 6 bytes (VC was the sync).
    Select,
    /// Initiator: E_B(PadD).
    PadD(usize),
    /// Established was returned.
    Done,
    /// This error was returned; it is returned again.
    Failed(MseError),
}

/// One side of a handshake in progress. Feed it received bytes, send what it outputs.
pub struct MseHandshake {
    role: Role,
    step: Step,
    /// Our private key X, big-endian.
    x: [u8; PRIVATE_KEY_LEN],
    /// The shared secret S, once the peer's key is in.
    secret: [u8; KEY_LEN],
    /// The SKEY: given to an initiator, learnt by a responder.
    info_hash: [u8; 20],
    /// Our direction's RC4 (keyA for an initiator, keyB for a responder).
    encrypt: Option<Cipher>,
    /// The peer's direction's RC4.
    decrypt: Option<Cipher>,
    /// The selected method, once known.
    method: Method,
    /// Received bytes not yet consumed: what a receive brought, until the
    /// fields waited for are parsed out of it (bounded by the sync windows,
    /// the pads' 512 bytes and IA's 4 KiB).
    input: Vec<u8>,
    /// Bytes to send.
    output: Vec<u8>,
}

impl MseHandshake {
    /// We dial: `offer` is the crypto_provide bits, `initial_payload` (IA)
    /// our 68-byte BitTorrent handshake, sent encrypted in step 3. The
    /// output holds Ya and PadA at once. Xa is drawn again while `Ya[0]` is
    /// 0x13, which Transmission 3.00 would take for a plaintext handshake.
    ///
    /// # Panics
    /// If `initial_payload` is longer than 65535 bytes (its length is a u16).
    /// Keep it to the 68-byte handshake: libtorrent rejects a longer IA.
    pub fn initiator(
        info_hash: [u8; 20],
        offer: u32,
        initial_payload: Vec<u8>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Self {
        // Transmission 3.00 takes a connection whose first byte is 0x13 for
        // a plaintext handshake.
        let mut x = [0; PRIVATE_KEY_LEN];
        let mut ya = [0; KEY_LEN];
        for _ in 0..MAX_KEY_DRAWS {
            random(&mut x);
            ya = public_key(&x);
            if ya[0] != 0x13 {
                break;
            }
        }
        Self::new_initiator(info_hash, offer, initial_payload, x, ya, random)
    }

    /// [`MseHandshake::initiator`] with a given private key Xa (for test vectors).
    #[doc(hidden)]
    pub fn initiator_with_key(
        info_hash: [u8; 20],
        offer: u32,
        initial_payload: Vec<u8>,
        x: [u8; 20],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Self {
        Self::new_initiator(info_hash, offer, initial_payload, x, public_key(&x), random)
    }

    fn new_initiator(
        info_hash: [u8; 20],
        offer: u32,
        initial_payload: Vec<u8>,
        x: [u8; PRIVATE_KEY_LEN],
        ya: [u8; KEY_LEN],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Self {
        assert!(
            initial_payload.len() <= usize::from(u16::MAX),
            "an MSE initial payload of {} bytes does not fit its u16 length",
            initial_payload.len()
        );
        let mut output = Vec::with_capacity(KEY_LEN + MAX_PAD);
        output.extend_from_slice(&ya);
        output.extend_from_slice(&random_pad(random));
        let role = Role::Initiator {
            offer,
            initial_payload,
        };
        MseHandshake {
            info_hash,
            output,
            ..Self::new(role, x)
        }
    }

    /// We were dialed and the first bytes were not a plaintext handshake:
    /// `allowed` is the crypto bits we accept. Nothing is output until all
    /// of Ya has arrived.
    pub fn responder(allowed: u32, random: &mut dyn FnMut(&mut [u8])) -> Self {
        let mut x = [0; PRIVATE_KEY_LEN];
        random(&mut x);
        Self::responder_with_key(allowed, x, random)
    }

    /// [`MseHandshake::responder`] with a given private key Xb (for test vectors).
    #[doc(hidden)]
    pub fn responder_with_key(
        allowed: u32,
        x: [u8; 20],
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Self {
        let pad = random_pad(random);
        Self::new(Role::Responder { allowed, pad }, x)
    }

    fn new(role: Role, x: [u8; PRIVATE_KEY_LEN]) -> Self {
        MseHandshake {
            role,
            step: Step::PeerKey,
            x,
            secret: [0; KEY_LEN],
            info_hash: [0; 20],
            encrypt: None,
            decrypt: None,
            method: Method::Rc4,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Bytes to send now, appended to `out` (and cleared here); they go
    /// before anything encrypted with [`Established::encrypt`].
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Takes received bytes, all of `input` (the handshake keeps its own
    /// bounded buffer: garbage costs at most 96 + 532 bytes before
    /// `NoSync`). `skey` maps HASH('req2', info-hash) to a torrent we serve
    /// (a responder's lookup; an initiator ignores it). `Ok(Some)` once
    /// done; a call after that is a bug and panics.
    ///
    /// A responder picks plaintext whenever the peer offers it and
    /// `allowed` has it, else RC4; it sends step 4
    /// (E_B(VC, select, len(PadD), PadD)) once crypto_provide is parsed,
    /// and is done once all of IA is in. An initiator sends step 3
    /// (req1, req2 ^ req3, E_A(VC, provide, len(PadC), PadC, len(IA), IA))
    /// once Yb is in, and is done after PadD.
    ///
    /// After an error, every later call returns the same error.
    ///
    /// # Panics
    /// If called again after it returned `Ok(Some(_))`.
    pub fn receive(
        &mut self,
        input: &[u8],
        skey: &dyn Fn(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Option<Established>, MseError> {
        match self.step {
            Step::Done => panic!("MseHandshake::receive called after the handshake completed"),
            Step::Failed(error) => return Err(error),
            _ => {}
        }
        self.input.extend_from_slice(input);
        let result = self.advance(skey);
        if let Err(error) = result {
            self.step = Step::Failed(error);
            self.input = Vec::new();
        }
        result
    }

    /// Consumes as many whole fields from `self.input` as are there.
    fn advance(
        &mut self,
        skey: &dyn Fn(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Option<Established>, MseError> {
        loop {
            match self.step {
                Step::PeerKey => {
                    let Some(y) = self.field::<KEY_LEN>() else {
                        return Ok(None);
                    };
                    self.secret = shared_secret(&y, &self.x)?;
                    match &mut self.role {
                        Role::Initiator { .. } => self.send_step3(),
                        Role::Responder { pad, .. } => {
                            let pad = std::mem::take(pad);
                            self.output.extend_from_slice(&public_key(&self.x));
                            self.output.extend_from_slice(&pad);
                            self.step = sync_on(&hash(&[b"req1", &self.secret]));
                        }
                    }
                }
                Step::Sync {
                    needle,
                    len,
                    scanned,
                } => match find_sync(&self.input, &needle[..len], scanned) {
                    Sync::Found(at) => {
                        self.input.drain(..at + len);
                        self.step = match self.role {
                            Role::Initiator { .. } => Step::Select,
                            Role::Responder { .. } => Step::Obfuscated,
                        };
                    }
                    Sync::Pending(scanned) => {
                        self.step = Step::Sync {
                            needle,
                            len,
                            scanned,
                        };
                        return Ok(None);
                    }
                    Sync::Never => return Err(MseError::NoSync),
                },
                Step::Obfuscated => {
                    let Some(mut obfuscated) = self.field::<20>() else {
                        return Ok(None);
                    };
                    xor_into(&mut obfuscated, &hash(&[b"req3", &self.secret]));
                    self.info_hash = skey(&obfuscated).ok_or(MseError::UnknownTorrent)?;
                    let (key_a, key_b) = self.keys();
                    self.decrypt = Some(Cipher::new(&key_a));
                    self.encrypt = Some(Cipher::new(&key_b));
                    self.step = Step::Provide;
                }
                Step::Provide => {
                    let Some(head) = self.decrypted_field::<14>() else {
                        return Ok(None);
                    };
                    if head[..8] != VC {
                        return Err(MseError::BadVc);
                    }
                    let provide = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                    let pad_len = usize::from(u16::from_be_bytes([head[12], head[13]]));
                    if pad_len > MAX_PAD {
                        return Err(MseError::PadTooLong(pad_len));
                    }
                    let Role::Responder { allowed, .. } = self.role else {
                        unreachable!("only a responder reads crypto_provide")
                    };
                    let common = provide & allowed & KNOWN_METHODS;
                    let select = if common & CRYPTO_PLAINTEXT != 0 {
                        CRYPTO_PLAINTEXT
                    } else if common & CRYPTO_RC4 != 0 {
                        CRYPTO_RC4
                    } else {
                        return Err(MseError::NoCommonMethod {
                            offered: provide,
                            allowed,
                        });
                    };
                    self.method = method_of(select);
                    // Step 4, with an empty PadD.
                    let mut step4 = [0; 14];
                    step4[8..12].copy_from_slice(&select.to_be_bytes());
                    self.cipher(true).apply(&mut step4);
                    self.output.extend_from_slice(&step4);
                    self.step = Step::PadC(pad_len);
                }
                Step::PadC(len) | Step::PadD(len) => {
                    if self.input.len() < len {
                        return Ok(None);
                    }
                    // Padding is skipped, but it still advances the stream.
                    let mut pad: Vec<u8> = self.input.drain(..len).collect();
                    self.cipher(false).apply(&mut pad);
                    if self.step == Step::PadD(len) {
                        return Ok(Some(self.finish(0)));
                    }
                    self.step = Step::IaLen;
                }
                Step::IaLen => {
                    let Some(len) = self.decrypted_field::<2>() else {
                        return Ok(None);
                    };
                    let len = usize::from(u16::from_be_bytes(len));
                    if len > MAX_INITIAL_PAYLOAD {
                        return Err(MseError::PayloadTooLong(len));
                    }
                    self.step = Step::Ia(len);
                }
                Step::Ia(len) => {
                    if self.input.len() < len {
                        return Ok(None);
                    }
                    // IA is RC4 whatever the method.
                    let decrypt = self.decrypt.as_mut().expect("keys are set before IA");
                    decrypt.apply(&mut self.input[..len]);
                    return Ok(Some(self.finish(len)));
                }
                Step::Select => {
                    let Some(field) = self.decrypted_field::<6>() else {
                        return Ok(None);
                    };
                    let select = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                    let pad_len = usize::from(u16::from_be_bytes([field[4], field[5]]));
                    let Role::Initiator { offer, .. } = self.role else {
                        unreachable!("only an initiator reads crypto_select")
                    };
                    if select.count_ones() != 1 || select & offer & KNOWN_METHODS == 0 {
                        return Err(MseError::BadSelect(select));
                    }
                    if pad_len > MAX_PAD {
                        return Err(MseError::PadTooLong(pad_len));
                    }
                    self.method = method_of(select);
                    self.step = Step::PadD(pad_len);
                }
                Step::Done | Step::Failed(_) => unreachable!("receive returns before these"),
            }
        }
    }

    /// Initiator, once S is known: sends step 3 and waits for E_B(VC).
    fn send_step3(&mut self) {
        let Role::Initiator {
            offer,
            initial_payload,
        } = &mut self.role
        else {
            unreachable!("only an initiator sends step 3")
        };
        let offer = *offer;
        let initial_payload = std::mem::take(initial_payload);
        let (key_a, key_b) = self.keys();
        let mut encrypt = Cipher::new(&key_a);
        let mut decrypt = Cipher::new(&key_b);

        self.output
            .extend_from_slice(&hash(&[b"req1", &self.secret]));
        let mut obfuscated = req2_hash(&self.info_hash);
        xor_into(&mut obfuscated, &hash(&[b"req3", &self.secret]));
        self.output.extend_from_slice(&obfuscated);
        let start = self.output.len();
        self.output.extend_from_slice(&VC);
        self.output.extend_from_slice(&offer.to_be_bytes());
        self.output.extend_from_slice(&0u16.to_be_bytes()); // len(PadC)
        let ia_len = u16::try_from(initial_payload.len()).expect("checked in new_initiator");
        self.output.extend_from_slice(&ia_len.to_be_bytes());
        self.output.extend_from_slice(&initial_payload);
        encrypt.apply(&mut self.output[start..]);

        // E_B(VC) is the first 8 bytes of keyB's stream, taken from the
        // cipher that decrypts the rest: it is then 8 bytes in, as the peer's.
        let mut vc = VC;
        decrypt.apply(&mut vc);
        self.encrypt = Some(encrypt);
        self.decrypt = Some(decrypt);
        self.step = sync_on(&vc);
    }

    /// keyA and keyB, from S and the SKEY.
    fn keys(&self) -> ([u8; 20], [u8; 20]) {
        (
            hash(&[b"keyA", &self.secret, &self.info_hash]),
            hash(&[b"keyB", &self.secret, &self.info_hash]),
        )
    }

    /// The handshake's cipher for sending (`true`) or receiving.
    fn cipher(&mut self, sending: bool) -> &mut Cipher {
        let cipher = if sending {
            &mut self.encrypt
        } else {
            &mut self.decrypt
        };
        cipher.as_mut().expect("keys are set before any RC4 field")
    }

    /// Takes the next `N` received bytes, if they are all there.
    fn field<const N: usize>(&mut self) -> Option<[u8; N]> {
        let field: [u8; N] = self.input.get(..N)?.try_into().ok()?;
        self.input.drain(..N);
        Some(field)
    }

    /// [`Self::field`], decrypted with the peer's stream.
    fn decrypted_field<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut field = self.field::<N>()?;
        self.cipher(false).apply(&mut field);
        Some(field)
    }

    /// The outcome; `self.input` holds `clear` bytes already decrypted, then the payload.
    fn finish(&mut self, clear: usize) -> Established {
        let mut payload = std::mem::take(&mut self.input);
        let (encrypt, decrypt) = match self.method {
            Method::Rc4 => {
                let mut decrypt = self.decrypt.take();
                if let Some(decrypt) = &mut decrypt {
                    decrypt.apply(&mut payload[clear..]);
                }
                (self.encrypt.take(), decrypt)
            }
            Method::Plaintext => (None, None),
        };
        self.encrypt = None;
        self.decrypt = None;
        self.step = Step::Done;
        Established {
            method: self.method,
            info_hash: self.info_hash,
            encrypt,
            decrypt,
            payload,
        }
    }
}

/// HASH('req2', info-hash): what a responder's `skey` lookup is keyed by
/// (computed once per torrent).
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    hash(&[b"req2", info_hash])
}

/// SHA-1 of the concatenation of `parts`.
fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut sha1 = Sha1::new();
    for part in parts {
        sha1.update(part);
    }
    sha1.finalize().into()
}

fn xor_into(target: &mut [u8; 20], other: &[u8; 20]) {
    target.iter_mut().zip(other).for_each(|(t, o)| *t ^= o);
}

fn method_of(select: u32) -> Method {
    if select == CRYPTO_PLAINTEXT {
        Method::Plaintext
    } else {
        Method::Rc4
    }
}

/// Random padding of a random length in 0..=MAX_PAD.
fn random_pad(random: &mut dyn FnMut(&mut [u8])) -> Vec<u8> {
    let mut len = [0; 2];
    random(&mut len);
    let mut pad = vec![0; usize::from(u16::from_be_bytes(len)) % (MAX_PAD + 1)];
    random(&mut pad);
    pad
}

/// Y = 2^X mod P, 96 bytes big-endian.
fn public_key(x: &[u8; PRIVATE_KEY_LEN]) -> [u8; KEY_LEN] {
    let y = BigUint::from(2u32).modpow(&BigUint::from_bytes_be(x), &BigUint::from_bytes_be(&P));
    left_pad(&y)
}

/// S = Y^X mod P, 96 bytes big-endian; the peer's Y must be in [2, P-2].
fn shared_secret(
    peer: &[u8; KEY_LEN],
    x: &[u8; PRIVATE_KEY_LEN],
) -> Result<[u8; KEY_LEN], MseError> {
    let p = BigUint::from_bytes_be(&P);
    let y = BigUint::from_bytes_be(peer);
    if y < BigUint::from(2u32) || y > &p - 2u32 {
        return Err(MseError::BadKey);
    }
    Ok(left_pad(&y.modpow(&BigUint::from_bytes_be(x), &p)))
}

/// `n` (< P) as 96 bytes, big-endian, with its leading zeros: about one
/// value in 256 is shorter, and hashing it short breaks the handshake.
fn left_pad(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn sync_on(needle: &[u8]) -> Step {
    let mut padded = [0; 20];
    padded[..needle.len()].copy_from_slice(needle);
    Step::Sync {
        needle: padded,
        len: needle.len(),
        scanned: 0,
    }
}

enum Sync {
    /// The needle starts at this offset.
    Found(usize),
    /// Not yet; start positions before this one are ruled out.
    Pending(usize),
    /// Not within MAX_PAD bytes.
    Never,
}

/// Looks for `needle` starting at most MAX_PAD bytes into `hay`, from start position `scanned` on.
fn find_sync(hay: &[u8], needle: &[u8], scanned: usize) -> Sync {
    let window = &hay[..hay.len().min(MAX_PAD + needle.len())];
    let from = scanned.min(window.len());
    if let Some(at) = window[from..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        return Sync::Found(from + at);
    }
    if window.len() == MAX_PAD + needle.len() {
        Sync::Never
    } else {
        Sync::Pending((window.len() + 1).saturating_sub(needle.len()))
    }
}

/// `N` bytes from a hex string, at compile time.
const fn hex_bytes<const N: usize>(hex: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let hex = hex.as_bytes();
    assert!(hex.len() == 2 * N, "wrong number of hex digits");
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]);
        i += 1;
    }
    out
}

mod rc4;

#[cfg(test)]
mod tests;
