//! The state of one connection to a peer: which messages it may send,
//! which of its requests we serve, and, while we download the torrent, what
//! it has, whether it lets us ask, and what we have asked of it. Sans-IO:
//! decoded messages go in; bytes to send, blocks to serve and [`Event`]s
//! for the shared download state come out.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use crate::policy::bitfield::Bitfield;
use crate::policy::picker::BLOCK_LEN;
use crate::proto::extension::{
    metadata_piece, ExtensionError, ExtensionHandshake, MetadataMessage, OUR_UT_METADATA_ID,
    UT_METADATA,
};
use crate::proto::pex::{PexMessage, MAX_ENTRIES, OUR_UT_PEX_ID, UT_PEX};
use crate::proto::wire::{self, BlockRequest, Handshake, Message, MAX_REQUEST_LEN};

/// Seconds of the peer's measured rate we keep requested: enough to cover
/// the round trip and the peer's send queue on a long fat link.
const QUEUE_SECONDS: f64 = 2.0;
/// Fewest requests kept outstanding with an unchoking peer (slow start).
pub const MIN_QUEUE_DEPTH: usize = 32;
/// Most requests kept outstanding with one peer (16 MiB).
pub const MAX_QUEUE_DEPTH: usize = 1024;
/// The `reqq` assumed of peers that do not send one (BEP 10 suggests 250).
const DEFAULT_PEER_REQQ: u32 = 250;

/// How many requests to keep outstanding with a peer that sends us
/// `rate` bytes per second and accepts `peer_reqq` queued requests: the
/// bandwidth-delay product of [`QUEUE_SECONDS`], within the peer's limit.
pub fn queue_depth(rate: f64, peer_reqq: u32) -> usize {
    let by_rate = (rate * QUEUE_SECONDS / f64::from(BLOCK_LEN)) as usize;
    by_rate
        .clamp(MIN_QUEUE_DEPTH, MAX_QUEUE_DEPTH)
        .min(peer_reqq.max(1) as usize)
}

/// What a session needs to know of its torrent: the small trait between the
/// connection loop and torrent state, so either can be tested alone.
pub trait TorrentView {
    /// Number of pieces.
    fn num_pieces(&self) -> u32;
    /// Length of piece `piece` (< `num_pieces`).
    fn piece_len(&self, piece: u32) -> u32;
    /// The bencoded info dictionary, served with ut_metadata.
    fn info_bytes(&self) -> &[u8];
    /// BEP 27: peers only from the trackers, so no peer exchange.
    fn private(&self) -> bool {
        false
    }
    /// Whether we have piece `piece` (verified), so may serve it.
    fn have_piece(&self, _piece: u32) -> bool {
        true
    }
    /// The pieces we have, or `None` when we have them all (a seed).
    fn have_pieces(&self) -> Option<Bitfield> {
        None
    }
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
    /// Our DHT node's UDP port, sent in a BEP 5 `port` message to peers
    /// that run a DHT; `None` when we run none.
    pub dht_port: Option<u16>,
    /// Peer exchange (BEP 11) for public torrents.
    pub pex: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_queued_requests: 500,
            client_name: concat!("ringseed ", env!("CARGO_PKG_VERSION")).to_owned(),
            listen_port: None,
            dht_port: None,
            pex: true,
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
    /// A second bitfield or `have_all`/`have_none`.
    #[error("a second bitfield")]
    LateBitfield,
    /// Requests we had to refuse, one after another, far beyond the queue
    /// we advertise (`reqq`): a peer that floods instead of waiting.
    #[error("{0} requests refused in a row: a request flood")]
    RequestFlood(u32),
}

/// Requests refused (choked, piece missing, queue full) with none served in
/// between, as a multiple of the advertised queue, that end the session: an
/// honest peer stops at `reqq` and after a choke has at most `reqq` in
/// flight.
pub const FLOOD_AFTER_QUEUES: u32 = 4;

/// What a message means for the shared download state (only while we
/// download the torrent; a seeding session returns `None` always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Nothing to do beyond the session.
    None,
    /// The peer announced one more piece.
    HasPiece(u32),
    /// The peer announced its pieces (bitfield, `have_all`).
    HasPieces(Bitfield),
    /// A block we asked for arrived.
    Block {
        /// Which block.
        req: BlockRequest,
        /// Its bytes.
        data: &'a [u8],
    },
    /// Requests the peer will not answer (choke, reject): ask elsewhere.
    Lost(Vec<BlockRequest>),
    /// We may send requests now (unchoked, or pieces allowed fast).
    MayRequest,
    /// The peer told us of other peers (ut_pex).
    PeerExchange(PexMessage),
}

/// A request we sent and its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    /// The request.
    pub req: BlockRequest,
    /// When we sent it.
    pub sent: Duration,
}

/// The downloading side of a session.
#[derive(Debug)]
pub struct Leech {
    /// The pieces the peer has.
    pub peer_has: Bitfield,
    got_bitfield: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_reqq: u32,
    /// Pieces we may request while choked (BEP 6 allowed fast).
    pub allowed_fast: Vec<u32>,
    /// Requests sent and not answered, oldest first.
    pub outstanding: VecDeque<Outstanding>,
    /// Bytes of blocks received from the peer since the last `tick`.
    received_since_tick: u64,
    /// Bytes of blocks received since the last rechoke (tit-for-tat).
    pub received_since_rechoke: u64,
    /// Smoothed receive rate, bytes per second.
    rate: f64,
    /// When a block last arrived (or when we started waiting for one).
    pub last_block: Duration,
    /// The peer stopped sending while we waited: ask it for one block at a
    /// time until it sends again.
    pub snubbed: bool,
}

/// Counters of one session, added into torrent and worker stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Requests refused (choked, queue full, cancelled) with or without a
    /// `reject_request`.
    pub rejected_requests: u64,
    /// Metadata pieces served.
    pub metadata_pieces_served: u64,
    /// Bytes of blocks received that we had not asked for (cancelled or
    /// timed out before they came).
    pub unrequested_bytes: u64,
}

/// The protocol state of one peer connection after the handshake, whether
/// we serve the peer, download from it, or both.
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    peer_fast: bool,
    peer_extensions: bool,
    peer_ut_metadata: Option<u8>,
    /// The peer's id for ut_pex, when we exchange peers with it.
    peer_ut_pex: Option<u8>,
    /// The listen port the peer sent (`p`).
    peer_listen_port: Option<u16>,
    /// The address the peer sees us at (`yourip`).
    seen_as: Option<IpAddr>,
    /// The torrent is public and peer exchange is on.
    pex: bool,
    am_choking: bool,
    peer_interested: bool,
    queue: VecDeque<BlockRequest>,
    /// The UDP port of the peer's DHT node, from its `port` message, until
    /// taken.
    peer_dht_port: Option<u16>,
    /// Requests refused since one was last taken to be served (see
    /// [`FLOOD_AFTER_QUEUES`]); cancels do not reset it, so a flood mixed
    /// with cancels is one too.
    refused_since_served: u32,
    out: Vec<u8>,
    counters: SessionCounters,
    leech: Option<Box<Leech>>,
    /// We downloaded over this session once (late blocks are then no
    /// breach of the protocol).
    was_leeching: bool,
    num_pieces: u32,
}

impl PeerSession {
    /// A session for a peer that sent `peer`; queues our greeting (extension
    /// handshake and `have_all`, `have_none` or a bitfield). Our own
    /// handshake is the caller's, as it is sent before the info-hash is
    /// known to match. A torrent we do not have in full gets a download
    /// side.
    pub fn new(
        peer: &Handshake,
        peer_ip: Option<IpAddr>,
        torrent: &dyn TorrentView,
        config: SessionConfig,
    ) -> Self {
        let pex = config.pex && !torrent.private();
        let mut s = PeerSession {
            config,
            peer_fast: peer.reserved.fast(),
            peer_extensions: peer.reserved.extension_protocol(),
            peer_ut_metadata: None,
            peer_ut_pex: None,
            peer_listen_port: None,
            seen_as: None,
            pex,
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::new(),
            refused_since_served: 0,
            peer_dht_port: None,
            out: Vec::with_capacity(256),
            counters: SessionCounters::default(),
            leech: None,
            was_leeching: false,
            num_pieces: torrent.num_pieces(),
        };
        if s.peer_extensions {
            let mut extensions = vec![(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)];
            if s.pex {
                extensions.push((UT_PEX.to_owned(), OUR_UT_PEX_ID));
            }
            let hs = ExtensionHandshake {
                extensions,
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
        match torrent.have_pieces() {
            None if s.peer_fast => s.send(&Message::HaveAll),
            None => s.send(&Message::Bitfield(&wire::full_bitfield(
                torrent.num_pieces(),
            ))),
            Some(have) => {
                if have.is_full() && s.peer_fast {
                    s.send(&Message::HaveAll);
                } else if have.none() && s.peer_fast {
                    s.send(&Message::HaveNone);
                } else if !have.none() {
                    // BEP 3: a peer with no pieces may omit the bitfield.
                    s.send(&Message::Bitfield(&have.to_wire()));
                }
                s.leech = Some(Box::new(Leech {
                    peer_has: Bitfield::new(torrent.num_pieces()),
                    got_bitfield: false,
                    am_interested: false,
                    peer_choking: true,
                    peer_reqq: DEFAULT_PEER_REQQ,
                    allowed_fast: Vec::new(),
                    outstanding: VecDeque::new(),
                    received_since_tick: 0,
                    received_since_rechoke: 0,
                    rate: 0.0,
                    last_block: Duration::ZERO,
                    snubbed: false,
                }));
            }
        }
        // BEP 5: after the bitfield, where our DHT node listens.
        if let (Some(port), true) = (s.config.dht_port, peer.reserved.dht()) {
            s.send(&Message::Port(port));
        }
        s
    }

    fn send(&mut self, msg: &Message<'_>) {
        wire::encode(msg, &mut self.out);
    }

    /// Handles one message from the peer.
    pub fn on_message<'a>(
        &mut self,
        msg: Message<'a>,
        torrent: &dyn TorrentView,
    ) -> Result<Event<'a>, SessionEnd> {
        let num_pieces = torrent.num_pieces();
        match msg {
            Message::KeepAlive | Message::Unknown { .. } => {}
            Message::Port(port) => self.peer_dht_port = (port != 0).then_some(port),
            Message::Choke => {
                if let Some(leech) = &mut self.leech {
                    leech.peer_choking = true;
                    // BEP 6 peers reject each request they drop; others
                    // drop them all silently.
                    if !self.peer_fast {
                        let lost = leech.outstanding.drain(..).map(|o| o.req).collect();
                        return Ok(Event::Lost(lost));
                    }
                }
            }
            Message::Unchoke => {
                if let Some(leech) = &mut self.leech {
                    leech.peer_choking = false;
                    return Ok(Event::MayRequest);
                }
            }
            Message::Interested => {
                // Some clients (webtorrent) request only after an unchoke
                // that follows their `interested`: say it again, once per
                // change of interest, as libtorrent does.
                if !self.peer_interested && !self.am_choking {
                    self.send(&Message::Unchoke);
                }
                self.peer_interested = true;
            }
            Message::NotInterested => self.peer_interested = false,
            Message::Have(piece) if piece >= num_pieces => {
                return Err(Violation::HaveOutOfRange { piece, num_pieces }.into())
            }
            Message::Have(piece) => {
                if let Some(leech) = &mut self.leech {
                    if !leech.peer_has.get(piece) {
                        leech.peer_has.set(piece);
                        leech.got_bitfield = true;
                        return Ok(Event::HasPiece(piece));
                    }
                }
            }
            Message::Bitfield(bits) => {
                let Some(has) = Bitfield::from_wire(bits, num_pieces) else {
                    return Err(Violation::BadBitfield {
                        len: bits.len(),
                        num_pieces,
                    }
                    .into());
                };
                return self.on_peer_pieces(has);
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
            Message::HaveAll => return self.on_peer_pieces(Bitfield::full(num_pieces)),
            Message::HaveNone => return self.on_peer_pieces(Bitfield::new(num_pieces)),
            Message::SuggestPiece(_) => {}
            Message::RejectRequest(req) => {
                if let Some(leech) = &mut self.leech {
                    if let Some(i) = leech.outstanding.iter().position(|o| o.req == req) {
                        leech.outstanding.remove(i);
                        return Ok(Event::Lost(vec![req]));
                    }
                }
            }
            Message::AllowedFast(piece) => {
                if let Some(leech) = &mut self.leech {
                    if piece < num_pieces && !leech.allowed_fast.contains(&piece) {
                        // A peer may not make us keep an unbounded list.
                        if leech.allowed_fast.len() < 64 {
                            leech.allowed_fast.push(piece);
                        }
                        return Ok(Event::MayRequest);
                    }
                }
            }
            Message::Request(req) => self.on_request(req, torrent)?,
            Message::Cancel(req) => {
                if let Some(i) = self.queue.iter().position(|q| *q == req) {
                    self.queue.remove(i);
                    self.refuse(req);
                }
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                let Some(leech) = &mut self.leech else {
                    if self.was_leeching {
                        // Asked for before the download completed.
                        self.counters.unrequested_bytes += data.len() as u64;
                        return Ok(Event::None);
                    }
                    return Err(Violation::UnrequestedBlock(piece).into());
                };
                let req = BlockRequest {
                    piece,
                    offset,
                    length: data.len() as u32,
                };
                let Some(i) = leech.outstanding.iter().position(|o| o.req == req) else {
                    // Cancelled or timed out before it came: not a breach.
                    self.counters.unrequested_bytes += data.len() as u64;
                    return Ok(Event::None);
                };
                leech.outstanding.remove(i);
                leech.received_since_tick += data.len() as u64;
                leech.received_since_rechoke += data.len() as u64;
                leech.snubbed = false;
                return Ok(Event::Block { req, data });
            }
            Message::Extended { .. } if !self.peer_extensions => {
                return Err(Violation::ExtendedWithoutSupport.into())
            }
            Message::Extended { id: 0, payload } => {
                let hs = ExtensionHandshake::decode(payload).map_err(Violation::from)?;
                self.peer_ut_metadata = hs.id_of(UT_METADATA);
                self.peer_ut_pex = hs.id_of(UT_PEX).filter(|_| self.pex);
                self.peer_listen_port = hs.listen_port.filter(|&p| p != 0);
                self.seen_as = hs.your_ip;
                if let (Some(leech), Some(reqq)) = (&mut self.leech, hs.reqq) {
                    leech.peer_reqq = reqq.max(1);
                }
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.on_metadata(payload, torrent)?,
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } if self.pex => {
                // A malformed list is dropped, not the peer (BEP 11 asks
                // nothing more, and clients differ in what they send).
                if let Ok(message) = PexMessage::decode(payload, MAX_ENTRIES) {
                    return Ok(Event::PeerExchange(message));
                }
            }
            Message::Extended { .. } => {}
        }
        Ok(Event::None)
    }

    /// A bitfield, `have_all` or `have_none`: allowed once, first.
    fn on_peer_pieces(&mut self, has: Bitfield) -> Result<Event<'static>, SessionEnd> {
        let Some(leech) = &mut self.leech else {
            // We are a seed: a seed peer has nothing for us, nor we for it.
            if has.is_full() {
                return Err(SessionEnd::PeerIsSeed);
            }
            return Ok(Event::None);
        };
        if leech.got_bitfield {
            return Err(Violation::LateBitfield.into());
        }
        leech.got_bitfield = true;
        leech.peer_has = has.clone();
        Ok(Event::HasPieces(has))
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
        if self.am_choking
            || !torrent.have_piece(req.piece)
            || self.queue.len() >= self.config.max_queued_requests as usize
        {
            self.refuse(req);
            self.refused_since_served += 1;
            let limit = self.config.max_queued_requests.max(1) * FLOOD_AFTER_QUEUES;
            if self.refused_since_served > limit {
                return Err(Violation::RequestFlood(self.refused_since_served));
            }
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

    /// Where the peer's DHT node listens, once after its `port` message.
    pub fn take_dht_port(&mut self) -> Option<u16> {
        self.peer_dht_port.take()
    }

    /// Takes the next request to serve.
    pub fn pop_request(&mut self) -> Option<BlockRequest> {
        let req = self.queue.pop_front();
        if req.is_some() {
            self.refused_since_served = 0;
        }
        req
    }

    /// Puts a request back at the front (e.g. the rate limit has no tokens).
    pub fn unpop_request(&mut self, req: BlockRequest) {
        self.queue.push_front(req);
    }

    /// Whether the peer takes ut_pex messages from us.
    pub fn peer_takes_pex(&self) -> bool {
        self.peer_ut_pex.is_some()
    }

    /// The listen port the peer announced in its extension handshake.
    pub fn peer_listen_port(&self) -> Option<u16> {
        self.peer_listen_port
    }

    /// The address the peer says it sees us at.
    pub fn seen_as(&self) -> Option<IpAddr> {
        self.seen_as
    }

    /// Queues a ut_pex message, if the peer takes them.
    pub fn send_pex(&mut self, message: &PexMessage) {
        let Some(id) = self.peer_ut_pex else {
            return;
        };
        let mut payload = Vec::with_capacity(64);
        message.encode(&mut payload);
        self.send(&Message::Extended {
            id,
            payload: &payload,
        });
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

    /// The download side, while we download the torrent.
    pub fn leech(&self) -> Option<&Leech> {
        self.leech.as_deref()
    }

    /// Whether we are downloading over this session.
    pub fn is_leeching(&self) -> bool {
        self.leech.is_some()
    }

    /// Sets our interest in the peer's pieces, telling it if that changed.
    pub fn set_interested(&mut self, interested: bool) {
        let Some(leech) = &mut self.leech else { return };
        if leech.am_interested != interested {
            leech.am_interested = interested;
            self.send(if interested {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// Whether we told the peer we are interested.
    pub fn am_interested(&self) -> bool {
        self.leech.as_ref().is_some_and(|l| l.am_interested)
    }

    /// How many more requests to send now, and which pieces they may be
    /// for: all the peer has when it unchokes us, only the allowed-fast
    /// ones while it chokes us. `None` when nothing may be requested.
    pub fn request_room(&self) -> Option<(usize, Bitfield)> {
        let leech = self.leech.as_ref()?;
        if !leech.am_interested {
            return None;
        }
        let depth = if leech.snubbed {
            1
        } else {
            queue_depth(leech.rate, leech.peer_reqq)
        };
        let room = depth.saturating_sub(leech.outstanding.len());
        if room == 0 {
            return None;
        }
        if !leech.peer_choking {
            return Some((room, leech.peer_has.clone()));
        }
        if !self.peer_fast || leech.allowed_fast.is_empty() {
            return None;
        }
        let mut allowed = Bitfield::new(self.num_pieces);
        for &piece in &leech.allowed_fast {
            if leech.peer_has.get(piece) {
                allowed.set(piece);
            }
        }
        Some((room, allowed))
    }

    /// Sends requests picked for this peer at time `now`.
    pub fn request(&mut self, reqs: &[BlockRequest], now: Duration) {
        let Some(leech) = &mut self.leech else { return };
        if leech.outstanding.is_empty() {
            // The wait for a block starts now, not at the last block.
            leech.last_block = now;
        }
        for &req in reqs {
            leech.outstanding.push_back(Outstanding { req, sent: now });
            wire::encode(&Message::Request(req), &mut self.out);
        }
    }

    /// Withdraws an outstanding request (another peer sent the block).
    pub fn cancel(&mut self, req: &BlockRequest) {
        let Some(leech) = &mut self.leech else { return };
        if let Some(i) = leech.outstanding.iter().position(|o| o.req == *req) {
            leech.outstanding.remove(i);
            wire::encode(&Message::Cancel(*req), &mut self.out);
        }
    }

    /// Takes every outstanding request, cancelling them with the peer:
    /// for a peer that stopped answering, or one whose connection ends.
    pub fn withdraw_all(&mut self, tell_peer: bool) -> Vec<BlockRequest> {
        let Some(leech) = &mut self.leech else {
            return Vec::new();
        };
        let reqs: Vec<BlockRequest> = leech.outstanding.drain(..).map(|o| o.req).collect();
        if tell_peer {
            for req in &reqs {
                wire::encode(&Message::Cancel(*req), &mut self.out);
            }
        }
        reqs
    }

    /// Marks the peer snubbed if it has had requests outstanding and sent
    /// no block for `timeout`; returns the requests to ask elsewhere.
    pub fn check_snub(&mut self, now: Duration, timeout: Duration) -> Vec<BlockRequest> {
        let Some(leech) = &mut self.leech else {
            return Vec::new();
        };
        if leech.outstanding.is_empty() || now.saturating_sub(leech.last_block) < timeout {
            return Vec::new();
        }
        leech.snubbed = true;
        leech.last_block = now;
        self.withdraw_all(true)
    }

    /// A block arrived at `now`: the peer is not snubbing us.
    pub fn block_arrived(&mut self, now: Duration) {
        if let Some(leech) = &mut self.leech {
            leech.last_block = now;
        }
    }

    /// Updates the measured rate; call once per `elapsed` (about a second).
    pub fn tick(&mut self, elapsed: Duration) {
        let Some(leech) = &mut self.leech else { return };
        let secs = elapsed.as_secs_f64().max(1e-3);
        let sample = leech.received_since_tick as f64 / secs;
        leech.received_since_tick = 0;
        // A fast rise (so the pipeline opens up within a second or two), a
        // slower fall (a short stall does not collapse it).
        let weight = if sample > leech.rate { 0.6 } else { 0.3 };
        leech.rate += weight * (sample - leech.rate);
    }

    /// The measured receive rate, bytes per second.
    pub fn download_rate(&self) -> f64 {
        self.leech.as_ref().map_or(0.0, |l| l.rate)
    }

    /// Bytes received since the last call (for the tit-for-tat choker).
    pub fn take_received_since_rechoke(&mut self) -> u64 {
        self.leech
            .as_mut()
            .map_or(0, |l| std::mem::take(&mut l.received_since_rechoke))
    }

    /// Tells the peer we now have `piece` (unless it has it too).
    pub fn announce_have(&mut self, piece: u32) {
        if self.leech.as_ref().is_some_and(|l| l.peer_has.get(piece)) {
            return;
        }
        self.send(&Message::Have(piece));
    }

    /// The download is complete: from now on this is a seeding session.
    /// Returns the requests that were still outstanding.
    pub fn finish_download(&mut self) -> Vec<BlockRequest> {
        self.set_interested(false);
        let reqs = self.withdraw_all(true);
        self.leech = None;
        self.was_leeching = true;
        reqs
    }

    /// Whether the peer has every piece.
    pub fn peer_is_seed(&self) -> bool {
        self.leech.as_ref().is_some_and(|l| l.peer_has.is_full())
    }
}

#[cfg(test)]
mod tests;
