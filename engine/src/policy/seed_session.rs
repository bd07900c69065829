//! The state of one connection to a peer that we seed to: which messages it
//! may send, which requests we accept, what we answer. Sans-IO: decoded
//! messages go in; bytes to send and blocks to serve come out.

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::proto::extension::{
    metadata_piece, ExtensionError, ExtensionHandshake, MetadataMessage, OUR_UT_METADATA_ID,
    UT_METADATA,
};
use crate::proto::wire::{self, BlockRequest, Handshake, Message, MAX_REQUEST_LEN};

/// What a session needs to know of its torrent: the small trait between the
/// connection loop and torrent state, so either can be tested alone.
pub trait TorrentView {
    /// Number of pieces.
    fn num_pieces(&self) -> u32;
    /// Length of piece `piece` (< `num_pieces`).
    fn piece_len(&self, piece: u32) -> u32;
    /// The bencoded info dictionary, served with ut_metadata.
    fn info_bytes(&self) -> &[u8];
}

/// Settings of a seeding session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most requests a peer may have queued with us; advertised as `reqq`.
    pub max_queued_requests: u32,
    /// Client name sent as `v`.
    pub client_name: String,
    /// Our listen port, sent as `p`.
    pub listen_port: Option<u16>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_queued_requests: 500,
            client_name: concat!("ringseed ", env!("CARGO_PKG_VERSION")).to_owned(),
            listen_port: None,
        }
    }
}

/// Why a session ends. Violations are counted per torrent and worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Violation(#[from] Violation),
    /// The peer is a seed too: there is nothing to exchange.
    #[error("peer is a seed")]
    PeerIsSeed,
}

/// A breach of the protocol by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A request outside the torrent, of length 0, or above 128 KiB.
    #[error("invalid request {0:?}")]
    InvalidRequest(BlockRequest),
    /// A piece index beyond the torrent in `have`.
    #[error("`have` of piece {piece} beyond the {num_pieces} pieces")]
    HaveOutOfRange {
        /// The index sent.
        piece: u32,
        /// Pieces in the torrent.
        num_pieces: u32,
    },
    /// A bitfield of the wrong size or with spare bits set.
    #[error("bitfield of {len} bytes for {num_pieces} pieces")]
    BadBitfield {
        /// Bytes received.
        len: usize,
        /// Pieces in the torrent.
        num_pieces: u32,
    },
    /// A fast-extension message from a peer that did not announce BEP 6.
    #[error("fast-extension message without BEP 6 in the handshake")]
    FastWithoutSupport,
    /// An extended message from a peer that did not announce BEP 10.
    #[error("extended message without BEP 10 in the handshake")]
    ExtendedWithoutSupport,
    /// A malformed extension payload.
    #[error("{0}")]
    Extension(#[from] ExtensionError),
    /// A block we never asked for: we are the seed.
    #[error("unrequested block of piece {0}")]
    UnrequestedBlock(u32),
}

/// Counters of one session, added into torrent and worker stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Requests refused (choked, queue full, cancelled) with or without a
    /// `reject_request`.
    pub rejected_requests: u64,
    /// Metadata pieces served.
    pub metadata_pieces_served: u64,
}

/// One connection we seed to, after the handshake.
#[derive(Debug)]
pub struct SeedSession {
    config: SessionConfig,
    peer_fast: bool,
    peer_extensions: bool,
    peer_ut_metadata: Option<u8>,
    am_choking: bool,
    peer_interested: bool,
    queue: VecDeque<BlockRequest>,
    out: Vec<u8>,
    counters: SessionCounters,
}

impl SeedSession {
    /// A session for a peer that sent `peer`; queues our greeting (extension
    /// handshake and `have_all` or a full bitfield). Our own handshake is
    /// the caller's, as it is sent before the info-hash is known to match.
    pub fn new(
        peer: &Handshake,
        peer_ip: Option<IpAddr>,
        torrent: &dyn TorrentView,
        config: SessionConfig,
    ) -> Self {
        let mut s = SeedSession {
            config,
            peer_fast: peer.reserved.fast(),
            peer_extensions: peer.reserved.extension_protocol(),
            peer_ut_metadata: None,
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::new(),
            out: Vec::with_capacity(256),
            counters: SessionCounters::default(),
        };
        if s.peer_extensions {
            let hs = ExtensionHandshake {
                extensions: vec![(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)],
                client: Some(s.config.client_name.clone()),
                reqq: Some(s.config.max_queued_requests),
                your_ip: peer_ip,
                metadata_size: Some(torrent.info_bytes().len() as u64),
                listen_port: s.config.listen_port,
            };
            let mut payload = Vec::new();
            hs.encode(&mut payload);
            s.send(&Message::Extended {
                id: 0,
                payload: &payload,
            });
        }
        if s.peer_fast {
            s.send(&Message::HaveAll);
        } else {
            s.send(&Message::Bitfield(&wire::full_bitfield(
                torrent.num_pieces(),
            )));
        }
        s
    }

    fn send(&mut self, msg: &Message<'_>) {
        wire::encode(msg, &mut self.out);
    }

    /// Handles one message from the peer.
    pub fn on_message(
        &mut self,
        msg: Message<'_>,
        torrent: &dyn TorrentView,
    ) -> Result<(), SessionEnd> {
        let num_pieces = torrent.num_pieces();
        match msg {
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => {}
            Message::Choke | Message::Unchoke => {}
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => self.peer_interested = false,
            Message::Have(piece) if piece >= num_pieces => {
                return Err(Violation::HaveOutOfRange { piece, num_pieces }.into())
            }
            Message::Have(_) => {}
            Message::Bitfield(bits) => {
                let full = wire::full_bitfield(num_pieces);
                let spare_ok = bits
                    .last()
                    .zip(full.last())
                    .is_none_or(|(got, mask)| got & !mask == 0);
                if bits.len() != full.len() || !spare_ok {
                    return Err(Violation::BadBitfield {
                        len: bits.len(),
                        num_pieces,
                    }
                    .into());
                }
                if bits == full {
                    return Err(SessionEnd::PeerIsSeed);
                }
            }
            Message::HaveAll
            | Message::HaveNone
            | Message::SuggestPiece(_)
            | Message::RejectRequest(_)
            | Message::AllowedFast(_)
                if !self.peer_fast =>
            {
                return Err(Violation::FastWithoutSupport.into())
            }
            Message::HaveAll => return Err(SessionEnd::PeerIsSeed),
            Message::HaveNone
            | Message::SuggestPiece(_)
            | Message::RejectRequest(_)
            | Message::AllowedFast(_) => {}
            Message::Request(req) => self.on_request(req, torrent)?,
            Message::Cancel(req) => {
                if let Some(i) = self.queue.iter().position(|q| *q == req) {
                    self.queue.remove(i);
                    self.refuse(req);
                }
            }
            Message::Piece { piece, .. } => return Err(Violation::UnrequestedBlock(piece).into()),
            Message::Extended { .. } if !self.peer_extensions => {
                return Err(Violation::ExtendedWithoutSupport.into())
            }
            Message::Extended { id: 0, payload } => {
                let hs = ExtensionHandshake::decode(payload).map_err(Violation::from)?;
                self.peer_ut_metadata = hs.id_of(UT_METADATA);
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.on_metadata(payload, torrent)?,
            Message::Extended { .. } => {}
        }
        Ok(())
    }

    fn on_request(
        &mut self,
        req: BlockRequest,
        torrent: &dyn TorrentView,
    ) -> Result<(), Violation> {
        let valid = req.piece < torrent.num_pieces()
            && req.length > 0
            && req.length <= MAX_REQUEST_LEN
            && u64::from(req.offset) + u64::from(req.length)
                <= u64::from(torrent.piece_len(req.piece));
        if !valid {
            return Err(Violation::InvalidRequest(req));
        }
        if self.am_choking || self.queue.len() >= self.config.max_queued_requests as usize {
            self.refuse(req);
        } else {
            self.queue.push_back(req);
        }
        Ok(())
    }

    /// Refuses a request the data plane cannot serve (it was popped).
    pub fn reject(&mut self, req: BlockRequest) {
        self.refuse(req);
    }

    /// Answers a request we will not serve: BEP 6 peers get a
    /// `reject_request`, others learn it from the silence.
    fn refuse(&mut self, req: BlockRequest) {
        self.counters.rejected_requests += 1;
        if self.peer_fast {
            self.send(&Message::RejectRequest(req));
        }
    }

    fn on_metadata(&mut self, payload: &[u8], torrent: &dyn TorrentView) -> Result<(), Violation> {
        let MetadataMessage::Request { piece } = MetadataMessage::decode(payload)? else {
            // Data and rejects are for peers that fetch metadata; we have it.
            return Ok(());
        };
        // The peer told us its id for ut_metadata; without one it cannot
        // receive an answer.
        let Some(reply_id) = self.peer_ut_metadata else {
            return Ok(());
        };
        let info = torrent.info_bytes();
        let reply = match metadata_piece(info, piece) {
            Some(data) => {
                self.counters.metadata_pieces_served += 1;
                MetadataMessage::Data {
                    piece,
                    total_size: info.len() as u64,
                    data,
                }
            }
            None => MetadataMessage::Reject { piece },
        };
        let mut body = Vec::new();
        reply.encode(&mut body);
        self.send(&Message::Extended {
            id: reply_id,
            payload: &body,
        });
        Ok(())
    }

    /// Chokes or unchokes the peer (the choker's decision). Choking drops
    /// its queued requests, with a `reject_request` each for BEP 6 peers.
    pub fn set_choking(&mut self, choke: bool) {
        if choke == self.am_choking {
            return;
        }
        self.am_choking = choke;
        if choke {
            self.send(&Message::Choke);
            for req in std::mem::take(&mut self.queue) {
                self.refuse(req);
            }
        } else {
            self.send(&Message::Unchoke);
        }
    }

    /// Whether we are choking the peer.
    pub fn is_choking(&self) -> bool {
        self.am_choking
    }

    /// Whether the peer wants data.
    pub fn is_interested(&self) -> bool {
        self.peer_interested
    }

    /// Requests waiting to be served, oldest first.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Takes the next request to serve.
    pub fn pop_request(&mut self) -> Option<BlockRequest> {
        self.queue.pop_front()
    }

    /// Puts a request back at the front (e.g. the rate limit has no tokens).
    pub fn unpop_request(&mut self, req: BlockRequest) {
        self.queue.push_front(req);
    }

    /// Appends a keep-alive.
    pub fn keep_alive(&mut self) {
        self.send(&Message::KeepAlive);
    }

    /// Control bytes waiting to be sent (messages other than blocks).
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Moves the pending control bytes into `dst` (appending).
    pub fn drain_output_into(&mut self, dst: &mut Vec<u8>) {
        dst.append(&mut self.out);
    }

    /// The session's counters.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests;
