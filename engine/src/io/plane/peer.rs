//! One peer connection that does not know its transport: the handshake,
//! framing, the protocol session, and the glue to the picker and the
//! download bookkeeping. Bytes in ([`PeerConnection::receive`]), a
//! [`SendPlan`] out ([`PeerConnection::plan_send`]: control bytes and the
//! blocks to serve, in order). The transport (`conn::Transport`: plain TCP
//! today) turns a plan into what goes on the wire, and the worker only moves
//! bytes and routes completions, on either backend. No sockets here: the
//! unit tests drive a connection with a scripted peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::io::plane::shared::{CheckJob, Limits, MetadataFetch, PlaneConfig};
use crate::io::storage::Torrent;
use crate::policy::bitfield::Bitfield;
use crate::policy::choker::Candidate;
use crate::policy::download::CompletePiece;
use crate::policy::metadata::{MetadataFetcher, MAX_METADATA_SIZE};
use crate::policy::peer_session::{Event, PeerSession, SessionEnd, TorrentView};
use crate::policy::pex::{OurAddress, PexEntry, PexPeer, Received as PexReceived};
use crate::policy::picker::PeerKey;
use crate::policy::rate_limit::TokenBucket;
use crate::proto::info_hash::InfoHash;
use crate::proto::pex::{FLAG_REACHABLE, FLAG_SEED};
use crate::proto::wire::{self, BlockRequest, Handshake, Reserved};
use crate::rng::next_below;
use crate::stats::StatsDelta;

/// A keep-alive after this long without sending.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(90);
/// A peer silent this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a peer has to deliver the metadata once the handshake is done
/// (a few KiB to a few MiB: seconds for any peer that means to).
const METADATA_DEADLINE: Duration = Duration::from_secs(30);

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It broke the protocol.
    Violation,
    /// The first bytes were not a BitTorrent handshake (an encrypted MSE
    /// handshake, which clients retry in plain text, or not BitTorrent).
    NotBitTorrent,
    /// It asked for a torrent we do not serve (or is ourselves).
    UnknownTorrent,
    /// A seed, while we seed too.
    PeerIsSeed,
    /// A connection limit.
    Limit,
    /// Its torrent stopped (a file could not be read).
    TorrentErrored,
    /// Silent too long, or never completed its handshake or connect.
    Idle,
    /// The peer's address sent us bad data too often.
    Banned,
    /// Both sides are seeds.
    BothSeeds,
    /// A magnet link's metadata: this peer delivered it, another did, or
    /// the fetch was given up.
    MetadataDone,
    /// A magnet link's metadata: this peer cannot or will not deliver it.
    MetadataFailed,
    /// Still in its handshake when a new connection needed its place.
    Evicted,
    /// Its MSE handshake failed (the cause is counted where it failed), or
    /// it spoke in plain text where encryption is required.
    Encryption,
}

/// A worker's counters since its last flush: its own, and per torrent.
#[derive(Default)]
pub struct Tally {
    /// The worker's.
    pub worker: StatsDelta,
    /// Per torrent, keyed by info-hash; a torrent replaced by a newer copy
    /// with the same info-hash gets its own tally (the old one is flushed).
    pub torrents: HashMap<InfoHash, (Arc<Torrent>, StatsDelta)>,
}

impl Tally {
    /// The tally of `torrent`.
    pub fn torrent(&mut self, torrent: &Arc<Torrent>) -> &mut StatsDelta {
        let entry = self
            .torrents
            .entry(torrent.metainfo.info_hash)
            .or_insert_with(|| (Arc::clone(torrent), StatsDelta::default()));
        if !Arc::ptr_eq(&entry.0, torrent) {
            entry.0.stats.add(&entry.1);
            *entry = (Arc::clone(torrent), StatsDelta::default());
        }
        &mut entry.1
    }
}

/// What a connection borrows from its worker for one call.
pub struct Env<'a> {
    /// The worker's index.
    pub worker: usize,
    /// Time since the worker started.
    pub now: Duration,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// The worker's settings.
    pub config: &'a PlaneConfig,
    /// Connection limits shared by the workers.
    pub limits: &'a Limits,
    /// The torrents served, by info-hash.
    pub torrents: &'a HashMap<InfoHash, Arc<Torrent>>,
    /// Magnet links whose metadata is being fetched, by info-hash.
    pub fetching: &'a HashMap<InfoHash, Arc<MetadataFetch>>,
    /// Counters.
    pub tally: &'a mut Tally,
    /// The worker's random generator.
    pub rng: &'a mut u64,
}

/// What became of received bytes.
#[derive(Default)]
pub struct Received {
    /// Bytes of the input used up (the handshake and whole frames); the rest
    /// is the start of a frame.
    pub consumed: usize,
    /// The buffer must hold at least this much for the next frame.
    pub need: usize,
    /// The handshake completed with this input.
    pub joined: Option<Joined>,
    /// The connection must close (after the pieces below are checked).
    pub close: Option<CloseReason>,
    /// Where the peer's DHT node listens (BEP 5 `port`), for the DHT to
    /// ping.
    pub dht_node: Option<std::net::SocketAddr>,
    /// Peers it told us of (ut_pex), filtered, to dial for its torrent.
    pub exchanged: Option<(InfoHash, Vec<SocketAddr>)>,
}

/// A handshake that completed.
pub struct Joined {
    /// The torrent.
    pub info_hash: InfoHash,
    /// We download it from this peer: the connection wants a large receive
    /// buffer, and the worker follows the torrent's progress.
    pub leeching: bool,
    /// Pieces verified before this connection (in our greeting already).
    pub verified: usize,
}

/// What a handshake led to.
enum Handshaken {
    /// Not all of it is in yet.
    Incomplete,
    /// A torrent we run.
    Joined(Joined),
    /// A magnet link whose metadata we fetch.
    Fetching,
}

/// What to send next, in order: control bytes, then each block with its
/// piece header. The transport decides how blocks travel (iovecs into the
/// mapping for TCP; copied into a buffer where bytes must be transformed).
#[derive(Default)]
pub struct SendPlan {
    /// Handshakes and messages other than blocks.
    pub control: Vec<u8>,
    /// Blocks to serve.
    pub blocks: Vec<BlockRequest>,
    /// For each block: whether it leaves as bytes copied into a buffer (read
    /// from its files with the kernel) rather than straight from the
    /// mapping: a block spanning more files than one send can name.
    pub copied: Vec<bool>,
    /// The torrent the blocks come from; keeps its mapping alive.
    pub torrent: Option<Arc<Torrent>>,
    /// Some block's pages are not in the page cache (a read-ahead was
    /// started): the send must not wait for the disk on the worker.
    pub cold: bool,
}

impl SendPlan {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.blocks.is_empty()
    }

    /// Bytes of blocks.
    pub fn block_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.length)).sum()
    }

    /// Clears it for the next send.
    pub fn clear(&mut self) {
        self.control.clear();
        self.blocks.clear();
        self.copied.clear();
        self.torrent = None;
        self.cold = false;
    }
}

/// How much one plan may carry, as its transport can send it at once.
#[derive(Debug, Clone, Copy)]
pub struct SendRoom {
    /// Bytes of blocks.
    pub bytes: u64,
    /// Pieces of memory (a header, and a block's segment in each file it
    /// spans) once at least one block is planned.
    pub segments: usize,
    /// A block spanning more segments than this is copied into a buffer
    /// (two segments: its header and the buffer) instead.
    pub segments_per_block: usize,
    /// Every block is copied into a buffer (the transport transforms it).
    pub copy_all: bool,
}

/// The peer's pieces, and more, as the worker learns them for a torrent
/// being downloaded (once per tick).
pub struct LeechNews<'a> {
    /// Pieces verified since the last tick: `have` for each.
    pub new_pieces: &'a [u32],
    /// Addresses banned since the last tick.
    pub banned: &'a [IpAddr],
    /// The download completed at this tick.
    pub became_complete: bool,
    /// The picker is in endgame: drop requests others served.
    pub endgame: bool,
}

/// Views a torrent as what a session needs.
struct View<'a>(&'a Torrent);

impl TorrentView for View<'_> {
    fn num_pieces(&self) -> u32 {
        self.0.layout.num_pieces()
    }
    fn piece_len(&self, piece: u32) -> u32 {
        self.0.layout.piece_len(piece) as u32
    }
    fn info_bytes(&self) -> &[u8] {
        &self.0.metainfo.info_bytes
    }
    fn private(&self) -> bool {
        self.0.metainfo.info.private
    }
    fn have_piece(&self, piece: u32) -> bool {
        self.0.have_piece(piece)
    }
    fn have_pieces(&self) -> Option<Bitfield> {
        self.0.have_pieces()
    }
}

/// Before the handshake, and after: serving or downloading a torrent, or
/// fetching a magnet link's metadata.
enum Phase {
    Handshake,
    Active {
        torrent: Arc<Torrent>,
        session: Box<PeerSession>,
    },
    Metadata {
        fetch: Arc<MetadataFetch>,
        fetcher: Box<MetadataFetcher>,
    },
}

/// One peer connection, whatever carries its bytes.
pub struct PeerConnection {
    addr: SocketAddr,
    /// Its key in the torrent's picker.
    key: PeerKey,
    phase: Phase,
    /// For a connection we opened: the torrent we dialed the peer for.
    outgoing: Option<InfoHash>,
    /// For an incoming MSE connection: the torrent its handshake proved it
    /// knows, which its BitTorrent handshake must name.
    proven: Option<InfoHash>,
    /// Bytes to send before the session exists (our handshake).
    greeting: Vec<u8>,
    /// When the connection started (accepted, or its connect completed):
    /// the handshake deadline counts from here.
    opened: Duration,
    last_heard: Duration,
    last_sent: Duration,
    /// Bytes of blocks served since the last unchoke (for the choker).
    served_since_unchoke: u64,
    /// Last choke or unchoke.
    choke_changed: Duration,
    /// (piece, start, end) of the last read-ahead started for this peer, so
    /// the following blocks of that range do not start it again.
    prefetched: Option<(u32, u32, u32)>,
    /// This connection's part in a metadata fetch is accounted for (a
    /// failure reported, or it was turned away as one too many), so its
    /// close is not reported as a failure.
    fetch_failure_reported: bool,
    /// Peer exchange with it (BEP 11).
    pex: PexPeer,
    /// ut_pex messages sent and not yet counted by the worker.
    pex_sent: u64,
}

impl PeerConnection {
    /// A connection with `addr`, known in pickers as `key`; `outgoing` names
    /// the torrent we dial it for.
    pub fn new(addr: SocketAddr, key: PeerKey, outgoing: Option<InfoHash>, now: Duration) -> Self {
        PeerConnection {
            addr,
            key,
            phase: Phase::Handshake,
            outgoing,
            proven: None,
            greeting: Vec::new(),
            opened: now,
            last_heard: now,
            last_sent: now,
            served_since_unchoke: 0,
            choke_changed: now,
            prefetched: None,
            fetch_failure_reported: false,
            pex: PexPeer::default(),
            pex_sent: 0,
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What peer exchange tells others of this peer, once its handshake is
    /// done: its torrent, and its listen address (the one we dialed, or its
    /// IP with the port of its extension handshake: without one an incoming
    /// peer is not passed on) with the seed and reachable flags.
    pub fn pex_entry(&self) -> Option<(InfoHash, PexEntry)> {
        let Phase::Active { torrent, session } = &self.phase else {
            return None;
        };
        let (listen, mut flags) = match self.outgoing {
            Some(_) => (self.addr, FLAG_REACHABLE),
            None => (
                SocketAddr::new(self.addr.ip(), session.peer_listen_port()?),
                0,
            ),
        };
        if session.peer_is_seed() {
            flags |= FLAG_SEED;
        }
        Some((torrent.metainfo.info_hash, (listen, flags)))
    }

    /// ut_pex messages sent since the last call.
    pub fn take_pex_sent(&mut self) -> u64 {
        std::mem::take(&mut self.pex_sent)
    }

    /// The torrent we dialed the peer for, if we did.
    pub fn outgoing(&self) -> Option<InfoHash> {
        self.outgoing
    }

    /// The torrent, once past the handshake.
    pub fn torrent(&self) -> Option<&Arc<Torrent>> {
        match &self.phase {
            Phase::Active { torrent, .. } => Some(torrent),
            Phase::Handshake | Phase::Metadata { .. } => None,
        }
    }

    /// Whether we download from this peer.
    pub fn is_leeching(&self) -> bool {
        matches!(&self.phase, Phase::Active { session, .. } if session.is_leeching())
    }

    /// Whether it is past its handshake and we unchoke it; with its torrent.
    pub fn unchoked_torrent(&self) -> Option<&Arc<Torrent>> {
        match &self.phase {
            Phase::Active { torrent, session } if !session.is_choking() => Some(torrent),
            _ => None,
        }
    }

    /// Control bytes waiting to be sent.
    pub fn pending_output(&self) -> usize {
        self.greeting.len()
            + match &self.phase {
                Phase::Active { session, .. } => session.pending_output().len(),
                Phase::Metadata { fetcher, .. } => fetcher.pending_output(),
                Phase::Handshake => 0,
            }
    }

    /// An MSE handshake named `info_hash`: the BitTorrent handshake that
    /// follows must name it too.
    pub fn proven_torrent(&mut self, info_hash: InfoHash) {
        self.proven = Some(info_hash);
    }

    /// This connection, closing before its handshake, is dialed again the
    /// other way: its end is not a failed metadata attempt yet.
    pub fn retried(&mut self) {
        self.fetch_failure_reported = true;
    }

    /// Takes our handshake, not yet sent: an MSE dial carries it inside its
    /// own handshake.
    pub fn take_greeting(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.greeting)
    }

    /// Whether the handshake is still to come.
    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Handshake)
    }

    /// When the connection started (the handshake deadline counts from
    /// here).
    pub fn opened(&self) -> Duration {
        self.opened
    }

    /// Our outgoing connection is established: we speak first, naming the
    /// torrent we dialed for. The handshake timeout counts from here.
    pub fn connected(&mut self, peer_id: [u8; 20], reserved: Reserved, now: Duration) {
        self.last_heard = now;
        self.opened = now;
        if let Some(info_hash) = self.outgoing {
            Handshake {
                reserved,
                info_hash,
                peer_id,
            }
            .encode(&mut self.greeting);
        }
    }

    /// Takes what the peer sent (`input`, from the start of a frame or of the
    /// handshake). `unchoked_leeching` is how many peers of downloaded
    /// torrents this worker unchokes now (read only by a handshake; 0 will
    /// do otherwise).
    /// Complete pieces go to `check`.
    pub fn receive(
        &mut self,
        input: &[u8],
        env: &mut Env<'_>,
        unchoked_leeching: usize,
        check: &crossbeam_channel::Sender<CheckJob>,
    ) -> Received {
        self.last_heard = env.now;
        let mut out = Received::default();
        if matches!(self.phase, Phase::Handshake) {
            match self.handshake(input, env, unchoked_leeching) {
                Ok(Handshaken::Incomplete) => {
                    out.need = wire::HANDSHAKE_LEN;
                    return out;
                }
                Ok(Handshaken::Joined(joined)) => {
                    out.consumed = wire::HANDSHAKE_LEN;
                    out.joined = Some(joined);
                }
                Ok(Handshaken::Fetching) => out.consumed = wire::HANDSHAKE_LEN,
                Err(reason) => {
                    out.close = Some(reason);
                    return out;
                }
            }
        }
        if let Phase::Metadata { fetch, fetcher } = &mut self.phase {
            if let Err(why) = fetch_metadata(input, &mut out, fetch, fetcher) {
                fetch.failed(self.addr, &why);
                self.fetch_failure_reported = true;
            }
            return out;
        }
        let now = env.now;
        let ip = self.addr.ip();
        let peer = self.key;
        let Phase::Active { torrent, session } = &mut self.phase else {
            unreachable!("the handshake completed above")
        };
        let max_frame = max_frame_len(torrent);
        let mut complete = Vec::new();
        loop {
            match wire::decode(&input[out.consumed..], max_frame) {
                Ok(Some((msg, used))) => {
                    match session.on_message(msg, &View(torrent)) {
                        Ok(Event::None | Event::MayRequest) => {}
                        Ok(Event::PeerExchange(message)) => {
                            env.tally.worker.pex_received += 1;
                            let ours = OurAddress {
                                port: env.config.session.listen_port.unwrap_or(0),
                                seen_as: session.seen_as().into_iter().collect(),
                            };
                            match self.pex.incoming(now, &message, self.addr, &ours) {
                                PexReceived::Dial(peers) => {
                                    let h = torrent.metainfo.info_hash;
                                    let list = &mut out.exchanged.get_or_insert((h, Vec::new())).1;
                                    list.extend(peers);
                                }
                                PexReceived::Ignored => env.tally.worker.pex_ignored += 1,
                                PexReceived::Flood => {
                                    out.close = Some(CloseReason::Violation);
                                    break;
                                }
                            }
                        }
                        Ok(event) => {
                            let received =
                                glue(torrent, session, event, peer, ip, now, &mut complete);
                            if received > 0 {
                                env.tally.worker.blocks_received += 1;
                                env.tally.worker.bytes_received += received;
                            }
                        }
                        Err(end) => {
                            out.close = Some(match end {
                                SessionEnd::Violation(_) => CloseReason::Violation,
                                SessionEnd::PeerIsSeed => CloseReason::PeerIsSeed,
                            });
                            break;
                        }
                    }
                    out.consumed += used;
                }
                Ok(None) => break,
                Err(_) => {
                    out.close = Some(CloseReason::Violation);
                    break;
                }
            }
        }
        for piece in complete {
            let job = CheckJob {
                torrent: Arc::clone(torrent),
                piece,
            };
            // The pool lives as long as any worker.
            let _ = check.send(job);
        }
        if out.close.is_none() && session.is_leeching() {
            request_more(torrent, session, peer, ip, now, env.rng);
        }
        out.dht_node = session
            .take_dht_port()
            .map(|port| std::net::SocketAddr::new(ip, port));
        // The next frame's length, once its prefix is in: `decode` accepted
        // that prefix, so it is within `max_frame`.
        let rest = &input[out.consumed..];
        out.need = if out.close.is_none() && rest.len() >= 4 {
            4 + u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize
        } else {
            0
        };
        out
    }

    /// Completes the handshake if `input` holds it: the torrent must be
    /// served, the peer not banned, the limits not reached.
    fn handshake(
        &mut self,
        input: &[u8],
        env: &mut Env<'_>,
        unchoked_leeching: usize,
    ) -> Result<Handshaken, CloseReason> {
        let hs = match Handshake::decode(input) {
            Ok(None) => return Ok(Handshaken::Incomplete),
            Ok(Some(hs)) => hs,
            Err(_) => return Err(CloseReason::NotBitTorrent),
        };
        if self
            .outgoing
            .or(self.proven)
            .is_some_and(|h| h != hs.info_hash)
        {
            return Err(CloseReason::UnknownTorrent);
        }
        if hs.peer_id == env.peer_id {
            // We dialed ourselves (our own address from a tracker).
            return Err(CloseReason::UnknownTorrent);
        }
        let Some(torrent) = env.torrents.get(&hs.info_hash).filter(|t| !t.is_errored()) else {
            return self.fetch_from(&hs, env);
        };
        if torrent
            .download()
            .is_some_and(|d| d.is_banned(&self.addr.ip()))
        {
            return Err(CloseReason::Banned);
        }
        if !env.limits.try_join_torrent(torrent, env.config) {
            return Err(CloseReason::Limit);
        }
        self.answer(hs.info_hash, env.peer_id, our_reserved(env.config));
        let mut session = PeerSession::new(
            &hs,
            Some(self.addr.ip()),
            &View(torrent),
            env.config.session.clone(),
        );
        let leeching = session.is_leeching();
        // Pieces verified before this connection are in the greeting's
        // bitfield, not owed as `have`s.
        let verified = torrent.download().map_or(0, |d| d.verified_count());
        env.tally.torrent(torrent).peers += 1;
        env.tally.worker.peers += 1;
        let free_slot = if torrent.is_downloading() {
            // Tit-for-tat needs a round to measure; until the choker's next
            // round, a free slot goes to whoever comes.
            let share = env.config.leech_slots_share(env.worker);
            share == 0 || unchoked_leeching < share
        } else {
            env.config.upload_slots == 0
        };
        if free_slot {
            // Without slot limits there is nothing to wait for: unchoke now
            // instead of at the next choker round.
            session.set_choking(false);
            self.choke_changed = env.now;
        }
        self.phase = Phase::Active {
            torrent: Arc::clone(torrent),
            session: Box::new(session),
        };
        Ok(Handshaken::Joined(Joined {
            info_hash: hs.info_hash,
            leeching,
            verified,
        }))
    }

    /// An incoming connection's handshake is answered with ours (an
    /// outgoing one sent it first, in `connected`).
    fn answer(&mut self, info_hash: InfoHash, peer_id: [u8; 20], reserved: Reserved) {
        if self.outgoing.is_none() {
            Handshake {
                reserved,
                info_hash,
                peer_id,
            }
            .encode(&mut self.greeting);
        }
    }

    /// A handshake for a torrent we do not run: if its metadata is being
    /// fetched, this connection asks the peer for it.
    fn fetch_from(&mut self, hs: &Handshake, env: &mut Env<'_>) -> Result<Handshaken, CloseReason> {
        let fetch = env
            .fetching
            .get(&hs.info_hash)
            .filter(|f| !f.is_finished())
            .ok_or(CloseReason::UnknownTorrent)?;
        if !fetch.try_start() {
            // Enough peers are at it; this one is not a failure.
            self.fetch_failure_reported = true;
            return Err(CloseReason::Limit);
        }
        let fetcher = MetadataFetcher::new(
            hs.info_hash,
            hs.reserved.extension_protocol(),
            &env.config.session.client_name,
        )
        .map_err(|e| {
            fetch.ended();
            fetch.failed(self.addr, &e);
            self.fetch_failure_reported = true;
            CloseReason::MetadataFailed
        })?;
        // The deadline counts from here.
        self.opened = env.now;
        self.answer(hs.info_hash, env.peer_id, our_reserved(env.config));
        self.phase = Phase::Metadata {
            fetch: Arc::clone(fetch),
            fetcher: Box::new(fetcher),
        };
        Ok(Handshaken::Fetching)
    }

    /// Fills `plan` (empty) with what to send now: pending control bytes,
    /// then queued requests within `room` and the `bucket`'s tokens. Returns
    /// whether the bucket held requests back.
    pub fn plan_send(
        &mut self,
        plan: &mut SendPlan,
        room: SendRoom,
        bucket: &mut TokenBucket,
        env: &mut Env<'_>,
    ) -> bool {
        plan.control.append(&mut self.greeting);
        if let Phase::Metadata { fetcher, .. } = &mut self.phase {
            fetcher.drain_output_into(&mut plan.control);
        }
        let Phase::Active { torrent, session } = &mut self.phase else {
            if !plan.is_empty() {
                self.last_sent = env.now;
            }
            return false;
        };
        if torrent.is_errored() {
            return false;
        }
        let mut throttled = false;
        let mut payload = 0u64;
        let mut segments = 0;
        while payload < room.bytes {
            let Some(req) = session.pop_request() else {
                break;
            };
            // A header and the block's segments in the files, or a header
            // and a buffer for a block copied there (spanning many files,
            // or in a file that is not mapped).
            let mut needed = 1 + torrent.block_segments(&req);
            let copied =
                room.copy_all || needed > room.segments_per_block || torrent.block_needs_copy(&req);
            if copied {
                needed = 2;
            }
            if !plan.blocks.is_empty() && segments + needed > room.segments {
                session.unpop_request(req);
                break;
            }
            if !bucket.try_take(u64::from(req.length), env.now) {
                session.unpop_request(req);
                throttled = true;
                break;
            }
            // A copied block is read by the kernel, off this thread when it
            // waits for the disk and with the file's own readahead: no
            // residency check (a `mincore` per block) and no prefetch. Only
            // a send from the mapping may fault.
            if !copied && !torrent.is_resident(&req) {
                env.tally.worker.cache_misses += 1;
                let covered = self.prefetched.is_some_and(|(piece, start, end)| {
                    piece == req.piece && req.offset >= start && req.offset + req.length <= end
                });
                if !covered {
                    env.tally.worker.prefetches += 1;
                    let end = torrent.prefetch(&req);
                    self.prefetched = Some((req.piece, req.offset, end));
                }
                plan.cold = true;
            }
            segments += needed;
            payload += u64::from(req.length);
            plan.blocks.push(req);
            plan.copied.push(copied);
        }
        // After the blocks were taken, so rejects of requests we cannot
        // carry go out with this send.
        session.drain_output_into(&mut plan.control);
        if !plan.blocks.is_empty() {
            plan.torrent = Some(Arc::clone(torrent));
        }
        if !plan.is_empty() {
            self.last_sent = env.now;
        }
        throttled
    }

    /// A plan was sent in full.
    pub fn sent(&mut self, plan: &SendPlan) {
        self.served_since_unchoke += plan.block_bytes();
    }

    /// Once a second: whether to close it (handshake or connect too slow,
    /// silent, torrent errored), and whether it has something new to send
    /// (a keep-alive, requests moved away from a snubbing peer, a ut_pex
    /// message about the torrent's peers in `pex_views`).
    pub fn housekeeping(
        &mut self,
        now: Duration,
        elapsed: Duration,
        connecting: bool,
        config: &PlaneConfig,
        pex_views: &HashMap<InfoHash, Vec<PexEntry>>,
    ) -> (Option<CloseReason>, bool) {
        let silent = now.saturating_sub(self.last_heard);
        let peer = self.key;
        match &mut self.phase {
            Phase::Handshake if connecting && silent >= config.connect_timeout => {
                (Some(CloseReason::Idle), false)
            }
            Phase::Handshake if now.saturating_sub(self.opened) >= config.handshake_timeout => {
                (Some(CloseReason::Idle), false)
            }
            Phase::Handshake => (None, false),
            Phase::Metadata { fetch, .. } if fetch.is_finished() => {
                (Some(CloseReason::MetadataDone), false)
            }
            Phase::Metadata { fetch, fetcher }
                if now.saturating_sub(self.opened) >= METADATA_DEADLINE =>
            {
                let why = match fetcher.progress() {
                    Some((got, pieces, size)) => format!(
                        "offered {size} bytes of metadata but sent {got} of its {pieces} \
                         piece(s) in 30 s"
                    ),
                    None => "sent no extension handshake in 30 s".to_owned(),
                };
                fetch.failed(self.addr, &why);
                self.fetch_failure_reported = true;
                (Some(CloseReason::Idle), false)
            }
            Phase::Metadata { .. } => (None, false),
            Phase::Active { torrent, .. } if torrent.is_errored() => {
                (Some(CloseReason::TorrentErrored), false)
            }
            Phase::Active { .. } if silent >= IDLE_TIMEOUT => (Some(CloseReason::Idle), false),
            Phase::Active { session, torrent } => {
                let mut send = false;
                if session.peer_takes_pex() {
                    self.pex.enable(now);
                    let view = pex_views
                        .get(&torrent.metainfo.info_hash)
                        .map_or(&[][..], Vec::as_slice);
                    if let Some(message) = self.pex.outgoing(now, self.addr, view) {
                        session.send_pex(&message);
                        self.pex_sent += 1;
                        send = true;
                    }
                }
                if session.is_leeching() {
                    session.tick(elapsed);
                    let lost = session.check_snub(now, config.request_timeout);
                    if !lost.is_empty() {
                        if let Some(mut download) = torrent.download() {
                            for req in &lost {
                                download.picker.release(peer, req);
                            }
                        }
                        send = true;
                    }
                }
                if now.saturating_sub(self.last_sent) >= KEEPALIVE_AFTER
                    && session.pending_output().is_empty()
                {
                    session.keep_alive();
                    send = true;
                }
                (None, send)
            }
        }
    }

    /// Applies a tick's news of its torrent (being downloaded): `have`s,
    /// bans, completion, interest, endgame cancels, more requests.
    pub fn leech_tick(
        &mut self,
        news: &LeechNews<'_>,
        now: Duration,
        rng: &mut u64,
    ) -> Option<CloseReason> {
        if news.banned.contains(&self.addr.ip()) {
            return Some(CloseReason::Banned);
        }
        let (peer, ip) = (self.key, self.addr.ip());
        let Phase::Active { session, torrent } = &mut self.phase else {
            return None;
        };
        for &piece in news.new_pieces {
            session.announce_have(piece);
        }
        if !session.is_leeching() {
            return None;
        }
        if news.became_complete {
            if session.peer_is_seed() {
                return Some(CloseReason::BothSeeds);
            }
            session.finish_download();
            return None;
        }
        if !news.new_pieces.is_empty() || news.endgame {
            let download = torrent.download()?;
            let leech = session.leech().expect("leeching");
            let interesting = download.picker.is_interesting(&leech.peer_has);
            let done: Vec<_> = if news.endgame {
                leech
                    .outstanding
                    .iter()
                    .filter(|o| download.picker.is_received(&o.req))
                    .map(|o| o.req)
                    .collect()
            } else {
                Vec::new()
            };
            drop(download);
            session.set_interested(interesting);
            for req in &done {
                session.cancel(req);
            }
        }
        request_more(torrent, session, peer, ip, now, rng);
        None
    }

    /// Where it stands for the choker, and whether its torrent is being
    /// downloaded (tit-for-tat) rather than seeded (round robin).
    pub fn candidate(&mut self, key: u64) -> Option<(Candidate, bool)> {
        let Phase::Active { session, torrent } = &mut self.phase else {
            return None;
        };
        let candidate = Candidate {
            key,
            interested: session.is_interested(),
            unchoked: !session.is_choking(),
            served_since_unchoke: self.served_since_unchoke,
            since: self.choke_changed,
            received: session.take_received_since_rechoke(),
        };
        Some((candidate, torrent.is_downloading()))
    }

    /// Like [`candidate`](Self::candidate) without taking the bytes
    /// received since the round (those are the next round's): for filling
    /// free slots between rounds. Only for a seeded torrent.
    pub fn seeding_candidate(&self, key: u64) -> Option<Candidate> {
        let Phase::Active { session, torrent } = &self.phase else {
            return None;
        };
        (!torrent.is_downloading()).then(|| Candidate {
            key,
            interested: session.is_interested(),
            unchoked: !session.is_choking(),
            served_since_unchoke: self.served_since_unchoke,
            since: self.choke_changed,
            received: 0,
        })
    }

    /// The choker's decision.
    pub fn set_unchoked(&mut self, unchoke: bool, now: Duration) {
        if let Phase::Active { session, .. } = &mut self.phase {
            session.set_choking(!unchoke);
            self.choke_changed = now;
            self.served_since_unchoke = 0;
        }
    }

    /// The connection is gone: its requests go back to the picker, and its
    /// counters to the tallies. A connection meant to fetch metadata that
    /// ends before delivering it counts as a failed attempt.
    pub fn close(
        self,
        tally: &mut Tally,
        limits: &Limits,
        fetching: &HashMap<InfoHash, Arc<MetadataFetch>>,
    ) {
        if let Phase::Metadata { fetch, .. } = &self.phase {
            fetch.ended();
        }
        let fetch = match &self.phase {
            Phase::Metadata { fetch, .. } => Some(fetch),
            Phase::Handshake => self.outgoing.and_then(|h| fetching.get(&h)),
            Phase::Active { .. } => None,
        };
        if let Some(fetch) = fetch.filter(|f| !f.is_finished() && !self.fetch_failure_reported) {
            fetch.failed(self.addr, &"the connection ended");
        }
        let Phase::Active {
            torrent,
            mut session,
        } = self.phase
        else {
            return;
        };
        if session.is_leeching() {
            let lost = session.withdraw_all(false);
            if let (Some(mut download), Some(leech)) = (torrent.download(), session.leech()) {
                for req in &lost {
                    download.picker.release(self.key, req);
                }
                download.picker.remove_peer(&leech.peer_has);
            }
        }
        let counters = session.counters();
        let d = tally.torrent(&torrent);
        d.peers -= 1;
        d.rejected_requests += counters.rejected_requests;
        d.metadata_pieces_served += counters.metadata_pieces_served;
        tally.worker.peers -= 1;
        tally.worker.rejected_requests += counters.rejected_requests;
        tally.worker.metadata_pieces_served += counters.metadata_pieces_served;
        limits.leave_torrent(&torrent);
    }
}

/// Feeds a metadata connection's input to its fetcher; a delivered
/// dictionary goes to `fetch`, and either way the connection then ends.
/// Returns why the attempt failed, if it did.
fn fetch_metadata(
    input: &[u8],
    out: &mut Received,
    fetch: &MetadataFetch,
    fetcher: &mut MetadataFetcher,
) -> Result<(), String> {
    // A bitfield of any torrent whose metadata we accept (16 MiB of it is
    // at most ~800 000 pieces: 100 KiB), or a metadata piece.
    let max_frame = (MAX_METADATA_SIZE / 20 / 8) as u32 + 1024;
    loop {
        match wire::decode(&input[out.consumed..], max_frame) {
            Ok(Some((msg, used))) => {
                out.consumed += used;
                match fetcher.on_message(msg) {
                    Ok(None) => {}
                    Ok(Some(info)) => {
                        fetch.deliver(info);
                        out.close = Some(CloseReason::MetadataDone);
                        return Ok(());
                    }
                    Err(e) => {
                        out.close = Some(CloseReason::MetadataFailed);
                        return Err(e.to_string());
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                out.close = Some(CloseReason::MetadataFailed);
                return Err(e.to_string());
            }
        }
    }
    if fetch.is_finished() {
        out.close = Some(CloseReason::MetadataDone);
    }
    let rest = &input[out.consumed..];
    if rest.len() >= 4 {
        out.need = 4 + u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    }
    Ok(())
}

/// Applies a session event to the torrent's shared download state; returns
/// the bytes of a block received.
fn glue(
    torrent: &Torrent,
    session: &mut PeerSession,
    event: Event<'_>,
    peer: PeerKey,
    ip: IpAddr,
    now: Duration,
    complete: &mut Vec<CompletePiece>,
) -> u64 {
    let Some(mut download) = torrent.download() else {
        return 0;
    };
    match event {
        Event::HasPiece(piece) => {
            download.picker.add_peer_piece(piece);
            if download.picker.wants(piece) {
                session.set_interested(true);
            }
            0
        }
        Event::HasPieces(has) => {
            download.picker.add_peer(&has);
            let interesting = download.picker.is_interesting(&has);
            session.set_interested(interesting);
            0
        }
        Event::Block { req, data } => {
            session.block_arrived(now);
            complete.extend(download.on_block(peer, ip, &req, data));
            u64::from(req.length)
        }
        Event::Lost(reqs) => {
            for req in &reqs {
                download.picker.release(peer, req);
            }
            0
        }
        Event::None | Event::MayRequest | Event::PeerExchange(_) => 0,
    }
}

/// The feature bits of our handshake: the DHT's only when we run one.
pub fn our_reserved(config: &PlaneConfig) -> Reserved {
    Reserved::OURS.with_dht(config.session.dht_port.is_some())
}

/// The largest frame a peer may send us: a bitfield of the torrent, or an
/// extension message (metadata requests are tiny; handshakes a few KiB).
fn max_frame_len(torrent: &Torrent) -> u32 {
    (torrent.layout.num_pieces().div_ceil(8) + 1).max(64 << 10)
}

/// Tops up a downloading session's requests from the shared picker.
fn request_more(
    torrent: &Torrent,
    session: &mut PeerSession,
    peer: PeerKey,
    ip: IpAddr,
    now: Duration,
    rng: &mut u64,
) {
    let Some((room, pieces)) = session.request_room() else {
        return;
    };
    let Some(mut download) = torrent.download() else {
        return;
    };
    let reqs = download.pick(peer, ip, &pieces, room, &mut |n| next_below(rng, n));
    drop(download);
    if !reqs.is_empty() {
        session.request(&reqs, now);
    }
}

#[cfg(test)]
mod tests;
