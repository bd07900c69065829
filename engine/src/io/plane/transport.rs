//! How a connection's bytes travel: plain BitTorrent over TCP, or message
//! stream encryption (MSE) before it. The transport sits between the socket
//! and the transport-free [`PeerConnection`](super::peer::PeerConnection):
//! it tells an incoming plaintext handshake from an MSE one on the same
//! port, runs the sans-IO MSE handshake ([`crate::proto::mse`]), and then
//! either steps aside (plaintext after an obfuscated handshake keeps the
//! zero-copy send path) or decrypts what arrives and encrypts what leaves
//! with RC4. Every block of an RC4 stream is read into a buffer by the
//! kernel (`Op::ReadAt`, never by touching the mapping from user space, so a
//! truncated file still cannot raise SIGBUS) and encrypted in place there.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::conn::{RecvBuf, SendBuf};
use super::peer::CloseReason;
use crate::proto::info_hash::InfoHash;
use crate::proto::mse::{
    self, Cipher, Established, Method, MseError, MseHandshake, CRYPTO_PLAINTEXT, CRYPTO_RC4,
};
use crate::proto::wire::PROTOCOL_PREFIX;
use crate::stats::StatsDelta;

/// Whether and how connections use message stream encryption (`--encryption`,
/// `encryption = ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Plain BitTorrent only: an incoming MSE handshake is refused (counted
    /// as `not_bittorrent`), and we never dial one.
    Off,
    /// Both answered; we dial in plain text and, if the peer ends the
    /// connection before its handshake (a peer that requires encryption),
    /// once more with MSE.
    #[default]
    Allow,
    /// Both answered; we dial with MSE and, if that fails, once more in
    /// plain text.
    Prefer,
    /// MSE only, both ways: an incoming plaintext handshake is refused.
    Require,
}

impl Encryption {
    /// The name an operator writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Off => "off",
            Encryption::Allow => "allow",
            Encryption::Prefer => "prefer",
            Encryption::Require => "require",
        }
    }

    /// Whether a first dial uses MSE.
    pub fn dial_encrypted(self) -> bool {
        matches!(self, Encryption::Prefer | Encryption::Require)
    }

    /// Whether a dial that failed before the peer's handshake is tried once
    /// more the other way.
    pub fn falls_back(self) -> bool {
        matches!(self, Encryption::Allow | Encryption::Prefer)
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `--encryption` value that names no policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown encryption policy {0:?}: expected off, allow, prefer or require")]
pub struct UnknownEncryption(pub String);

impl FromStr for Encryption {
    type Err = UnknownEncryption;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "disabled" => Ok(Encryption::Off),
            "allow" | "enabled" => Ok(Encryption::Allow),
            "prefer" => Ok(Encryption::Prefer),
            "require" | "required" | "forced" => Ok(Encryption::Require),
            other => Err(UnknownEncryption(other.to_owned())),
        }
    }
}

/// The crypto_provide bits we offer, and accept, in an MSE handshake: RC4
/// only if the operator wants the payload encrypted, else both (and as
/// the side that chooses, we then pick plaintext, which keeps zero-copy
/// sends).
pub fn mse_methods(encrypt_payload: bool) -> u32 {
    if encrypt_payload {
        CRYPTO_RC4
    } else {
        CRYPTO_RC4 | CRYPTO_PLAINTEXT
    }
}

/// What a connection settled on, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain BitTorrent.
    Plain,
    /// An MSE handshake, then plain BitTorrent (crypto_plaintext).
    MsePlaintext,
    /// An MSE handshake, then RC4 both ways.
    MseRc4,
}

/// RC4 both ways.
pub struct Rc4Stream {
    encrypt: Cipher,
    decrypt: Cipher,
}

enum State {
    /// An incoming connection whose first 20 bytes are not all in: a
    /// plaintext handshake starts with the protocol string, anything else
    /// is the start of an MSE public key.
    Detecting,
    /// An MSE handshake in progress.
    Negotiating(Box<MseHandshake>),
    /// Plain BitTorrent, after an MSE handshake if `obfuscated`.
    Plain { obfuscated: bool },
    /// RC4 both ways after an MSE handshake.
    Rc4(Box<Rc4Stream>),
}

/// What a connection's worker lends its transport for one receive.
pub struct Inbound<'a> {
    /// The policy.
    pub encryption: Encryption,
    /// The MSE methods accepted (see [`mse_methods`]).
    pub methods: u32,
    /// HASH('req2', info-hash) of each torrent served: how an MSE peer
    /// names its torrent.
    pub skeys: &'a HashMap<[u8; 20], InfoHash>,
    /// Randomness for our key and pads.
    pub random: &'a mut dyn FnMut(&mut [u8]),
    /// Failures are counted here.
    pub tally: &'a mut StatsDelta,
}

/// What became of received bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrived {
    /// `recv` holds bytes for the peer connection, in clear.
    Ready,
    /// The transport's handshake goes on: nothing for the peer connection
    /// yet (there may be handshake bytes to send).
    Pending,
    /// The connection must close.
    Close(CloseReason),
}

/// A connection's transport: its state, and handshake bytes to send as
/// they are, before anything the peer connection plans.
pub struct Transport {
    state: State,
    handshake_out: Vec<u8>,
    /// The torrent an MSE handshake named.
    proven: Option<InfoHash>,
}

impl Transport {
    /// An incoming connection: plaintext or MSE, as its first bytes say.
    pub fn incoming() -> Self {
        Transport {
            state: State::Detecting,
            handshake_out: Vec::new(),
            proven: None,
        }
    }

    /// A connection in plain BitTorrent.
    pub fn plain() -> Self {
        Transport {
            state: State::Plain { obfuscated: false },
            handshake_out: Vec::new(),
            proven: None,
        }
    }

    /// A connection we dialed with MSE for `info_hash`, offering `methods`;
    /// `greeting` (our BitTorrent handshake) travels inside it.
    pub fn dial_encrypted(
        info_hash: InfoHash,
        methods: u32,
        greeting: Vec<u8>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Self {
        let mut handshake = MseHandshake::initiator(info_hash.0, methods, greeting, random);
        let mut handshake_out = Vec::new();
        handshake.take_output(&mut handshake_out);
        Transport {
            state: State::Negotiating(Box::new(handshake)),
            handshake_out,
            proven: None,
        }
    }

    /// What the connection settled on, once it has.
    pub fn kind(&self) -> Option<TransportKind> {
        match &self.state {
            State::Detecting | State::Negotiating(_) => None,
            State::Plain { obfuscated: false } => Some(TransportKind::Plain),
            State::Plain { obfuscated: true } => Some(TransportKind::MsePlaintext),
            State::Rc4(_) => Some(TransportKind::MseRc4),
        }
    }

    /// The torrent an MSE handshake named (both sides proved they know its
    /// info-hash).
    pub fn proven_torrent(&self) -> Option<InfoHash> {
        self.proven
    }

    /// Whether an MSE handshake is under way.
    pub fn negotiating(&self) -> bool {
        matches!(self.state, State::Negotiating(_))
    }

    /// Whether the peer connection may send: not before the transport's
    /// own handshake is done and sent.
    pub fn ready_to_send(&self) -> bool {
        self.handshake_out.is_empty() && matches!(self.state, State::Plain { .. } | State::Rc4(_))
    }

    /// Whether every block must leave from a buffer (to be encrypted).
    pub fn copies_blocks(&self) -> bool {
        matches!(self.state, State::Rc4(_))
    }

    /// Moves the transport's handshake bytes into `control` (empty), to be
    /// sent as they are; `false` if there are none.
    pub fn take_handshake_output(&mut self, control: &mut Vec<u8>) -> bool {
        debug_assert!(control.is_empty());
        if self.handshake_out.is_empty() {
            return false;
        }
        std::mem::swap(control, &mut self.handshake_out);
        true
    }

    /// Takes the last `fresh` bytes received into `recv`. Plain: nothing to
    /// do. RC4: they are decrypted in place. Detecting or negotiating: they
    /// are the transport's; once its handshake is done, `recv` holds what
    /// the peer sent after it, in clear.
    pub fn receive(&mut self, recv: &mut RecvBuf, fresh: usize, ctx: Inbound<'_>) -> Arrived {
        match &mut self.state {
            State::Plain { .. } => Arrived::Ready,
            State::Rc4(stream) => {
                let len = recv.len;
                stream.decrypt.apply(&mut recv.buf[len - fresh..len]);
                Arrived::Ready
            }
            State::Detecting => self.detect(recv, ctx),
            State::Negotiating(handshake) => {
                let input = &recv.buf[..recv.len];
                let lookup = |req2: &[u8; 20]| ctx.skeys.get(req2).map(|h| h.0);
                let result = handshake.receive(input, &lookup);
                handshake.take_output(&mut self.handshake_out);
                recv.len = 0;
                match result {
                    Ok(None) => Arrived::Pending,
                    Ok(Some(done)) => {
                        self.established(done, recv);
                        Arrived::Ready
                    }
                    Err(e) => {
                        count_failure(ctx.tally, &e);
                        tracing::debug!("MSE handshake failed ({}): {e}", e.cause());
                        Arrived::Close(CloseReason::Encryption)
                    }
                }
            }
        }
    }

    /// The first bytes of an incoming connection: the protocol string, or
    /// an MSE public key (which is uniform below the prime, so all 20 bytes
    /// are compared, not just the first).
    fn detect(&mut self, recv: &mut RecvBuf, ctx: Inbound<'_>) -> Arrived {
        let got = &recv.buf[..recv.len.min(PROTOCOL_PREFIX.len())];
        if got == &PROTOCOL_PREFIX[..got.len()] {
            if got.len() < PROTOCOL_PREFIX.len() {
                return Arrived::Pending;
            }
            if ctx.encryption == Encryption::Require {
                ctx.tally.plaintext_refused += 1;
                return Arrived::Close(CloseReason::Encryption);
            }
            self.state = State::Plain { obfuscated: false };
            return Arrived::Ready;
        }
        if ctx.encryption == Encryption::Off {
            return Arrived::Close(CloseReason::NotBitTorrent);
        }
        self.state = State::Negotiating(Box::new(MseHandshake::responder(ctx.methods, ctx.random)));
        // The bytes so far are the start of the peer's key.
        self.receive(recv, 0, ctx)
    }

    /// The handshake is done: what follows it travels as agreed.
    fn established(&mut self, done: Established, recv: &mut RecvBuf) {
        self.proven = Some(InfoHash(done.info_hash));
        self.state = match (done.method, done.encrypt, done.decrypt) {
            (Method::Rc4, Some(encrypt), Some(decrypt)) => {
                State::Rc4(Box::new(Rc4Stream { encrypt, decrypt }))
            }
            _ => State::Plain { obfuscated: true },
        };
        if done.payload.len() > recv.buf.len() {
            recv.buf.resize(done.payload.len(), 0);
        }
        recv.buf[..done.payload.len()].copy_from_slice(&done.payload);
        recv.len = done.payload.len();
    }

    /// Lays `send.plan` out as one vectored send. Plain: control bytes, then
    /// for each block its header and iovecs into the mapping (or its
    /// buffer). RC4: the same buffers (every block was copied), encrypted in
    /// place in the order they leave, exactly once: a short send resumes
    /// from bytes already encrypted.
    pub fn render(&mut self, send: &mut SendBuf) {
        send.render_iovecs();
        if let State::Rc4(stream) = &mut self.state {
            send.encrypt_in_place(&mut stream.encrypt);
        }
    }
}

/// Counts why an MSE handshake failed.
fn count_failure(tally: &mut StatsDelta, e: &MseError) {
    let counter = match e {
        MseError::BadKey => &mut tally.mse_failed_bad_key,
        MseError::NoSync => &mut tally.mse_failed_no_sync,
        MseError::UnknownTorrent => &mut tally.mse_failed_unknown_torrent,
        MseError::BadVc => &mut tally.mse_failed_bad_vc,
        MseError::PadTooLong(_) => &mut tally.mse_failed_bad_pad,
        MseError::NoCommonMethod { .. } | MseError::BadSelect(_) => {
            &mut tally.mse_failed_no_common_method
        }
        MseError::PayloadTooLong(_) => &mut tally.mse_failed_bad_payload,
    };
    *counter += 1;
}

/// Counts a connection that reached its torrent, by transport.
pub fn count_joined(tally: &mut StatsDelta, kind: Option<TransportKind>) {
    match kind {
        Some(TransportKind::Plain) | None => tally.connections_plain += 1,
        Some(TransportKind::MsePlaintext) => tally.connections_mse_plaintext += 1,
        Some(TransportKind::MseRc4) => tally.connections_mse_rc4 += 1,
    }
}

/// The per-torrent key an MSE peer names its torrent by.
pub fn skey_of(info_hash: &InfoHash) -> [u8; 20] {
    mse::req2_hash(&info_hash.0)
}

#[cfg(test)]
mod tests;
