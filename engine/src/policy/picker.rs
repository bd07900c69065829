//! The piece picker: which blocks to ask which peer for.
//!
//! - A few random pieces first, so that a new peer soon has something to
//!   trade; then rarest first (fewest peers have it), ties broken at random.
//! - Whole-piece affinity: a peer first finishes the pieces it started, then
//!   starts a new one, and only joins pieces other peers are working on
//!   when there are too many partial pieces (each is a buffer in memory) or
//!   nothing new is left. Fewer partial pieces mean fewer buffers and
//!   pieces verified (and shared) sooner.
//! - Endgame: once every missing block is requested, a block may be asked
//!   of a second peer; whichever answer comes first wins and the others are
//!   cancelled by their connections.
//!
//! Deterministic: randomness comes in as a function, and iteration orders
//! are fixed.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::policy::bitfield::Bitfield;
use crate::proto::wire::BlockRequest;

/// The block size we request (BEP 3 practice; every client serves it).
pub const BLOCK_LEN: u32 = 16 << 10;

/// Identifies a connection across workers (worker, slab key, generation).
pub type PeerKey = u64;

/// Picker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// Pieces picked at random before switching to rarest first.
    pub random_first: u32,
    /// Partial pieces above which peers join started pieces rather than
    /// start new ones (each partial piece holds a buffer).
    pub max_partial: usize,
    /// Most peers asked for one block in endgame.
    pub endgame_requesters: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            random_first: 4,
            max_partial: 64,
            endgame_requesters: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Free,
    Requested(Vec<PeerKey>),
    Received,
}

#[derive(Debug, Clone)]
struct Partial {
    blocks: Vec<Block>,
    received: u32,
    /// The peer that started the piece (affinity).
    owner: PeerKey,
    /// Only the owner may fetch its blocks, so that a bad copy has one
    /// sender and names it: a piece that failed before, or one fetched from
    /// a peer still on probation. Lifted when the owner lets a block go.
    exclusive: bool,
    /// Part of a web seed's run: every block is asked of the web seed at
    /// once, so it does not count toward `max_partial` (peers join it only
    /// in endgame).
    run: bool,
}

impl Partial {
    /// Nobody is fetching any of its blocks: a released run, or a piece
    /// whose peers left.
    fn abandoned(&self) -> bool {
        !self.blocks.iter().any(|b| matches!(b, Block::Requested(_)))
    }
}

/// What became of an arriving block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// First copy of a block we asked for. `piece_done`: all of its piece
    /// has arrived and is ready to be hashed. `also_requested_from`: other
    /// peers asked for it in endgame, whose requests should be cancelled.
    Fresh {
        /// The piece is complete.
        piece_done: bool,
        /// Other peers that have the same request outstanding.
        also_requested_from: Vec<PeerKey>,
    },
    /// A block we already have (endgame race or a late answer).
    Duplicate,
}

/// The picker's state for one torrent.
#[derive(Debug, Clone)]
pub struct Picker {
    config: PickerConfig,
    piece_length: u64,
    total_length: u64,
    num_pieces: u32,
    have: Bitfield,
    wanted: Bitfield,
    /// Pieces partial or fully received and waiting for their hash: not
    /// to be started again.
    busy: Bitfield,
    availability: Vec<u32>,
    partial: BTreeMap<u32, Partial>,
    /// Pieces verified since the start (for random-first).
    verified_here: u32,
    /// Pieces that failed their hash check: fetched again from one peer.
    failed: Bitfield,
    /// Partial pieces that are part of a web seed's run.
    runs: usize,
}

impl Picker {
    /// A picker for a torrent of `total_length` bytes in pieces of
    /// `piece_length`, of which `have` are verified and `wanted` selected.
    pub fn new(
        piece_length: u64,
        total_length: u64,
        have: Bitfield,
        wanted: Bitfield,
        config: PickerConfig,
    ) -> Self {
        let num_pieces = have.len();
        debug_assert_eq!(wanted.len(), num_pieces);
        Picker {
            config,
            piece_length,
            total_length,
            num_pieces,
            busy: Bitfield::new(num_pieces),
            availability: vec![0; num_pieces as usize],
            partial: BTreeMap::new(),
            verified_here: have.count(),
            failed: Bitfield::new(num_pieces),
            runs: 0,
            have,
            wanted,
        }
    }

    /// Pieces in the torrent.
    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Length of piece `piece`.
    pub fn piece_len(&self, piece: u32) -> u32 {
        let start = u64::from(piece) * self.piece_length;
        (self.total_length - start).min(self.piece_length) as u32
    }

    fn blocks_in(&self, piece: u32) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_LEN)
    }

    fn block(&self, piece: u32, index: u32) -> BlockRequest {
        let offset = index * BLOCK_LEN;
        BlockRequest {
            piece,
            offset,
            length: (self.piece_len(piece) - offset).min(BLOCK_LEN),
        }
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every selected piece is verified.
    pub fn is_done(&self) -> bool {
        self.wanted
            .words()
            .iter()
            .zip(self.have.words())
            .all(|(w, h)| w & !h == 0)
    }

    /// Selected pieces not yet verified.
    pub fn missing(&self) -> u32 {
        self.wanted
            .words()
            .iter()
            .zip(self.have.words())
            .map(|(w, h)| (w & !h).count_ones())
            .sum()
    }

    /// Bytes of selected pieces not yet verified.
    pub fn bytes_missing(&self) -> u64 {
        (0..self.num_pieces)
            .filter(|&p| self.wanted.get(p) && !self.have.get(p))
            .map(|p| u64::from(self.piece_len(p)))
            .sum()
    }

    /// Whether we want piece `piece` and do not have it.
    pub fn wants(&self, piece: u32) -> bool {
        self.wanted.get(piece) && !self.have.get(piece)
    }

    /// Whether a peer that has `has` has anything we want.
    pub fn is_interesting(&self, has: &Bitfield) -> bool {
        has.words()
            .iter()
            .zip(self.wanted.words())
            .zip(self.have.words())
            .any(|((p, w), h)| p & w & !h != 0)
    }

    /// Partial pieces now.
    pub fn partial_count(&self) -> usize {
        self.partial.len()
    }

    /// Whether every missing block is requested or received.
    pub fn in_endgame(&self) -> bool {
        let unstarted = self
            .wanted
            .words()
            .iter()
            .zip(self.have.words())
            .zip(self.busy.words())
            .any(|((w, h), b)| w & !h & !b != 0);
        !unstarted
            && self
                .partial
                .values()
                .all(|p| !p.blocks.contains(&Block::Free))
    }

    /// A peer announced the pieces in `has` (bitfield or have_all).
    pub fn add_peer(&mut self, has: &Bitfield) {
        for piece in has.ones() {
            self.availability[piece as usize] += 1;
        }
    }

    /// A peer announced piece `piece` (`have`).
    pub fn add_peer_piece(&mut self, piece: u32) {
        self.availability[piece as usize] += 1;
    }

    /// A peer that had `has` left.
    pub fn remove_peer(&mut self, has: &Bitfield) {
        for piece in has.ones() {
            let a = &mut self.availability[piece as usize];
            *a = a.saturating_sub(1);
        }
    }

    /// Peers known to have piece `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability[piece as usize]
    }

    /// Picks up to `max` blocks for `peer`, which has `has`; marks them
    /// requested by it. `random(n)` returns a random index below `n`.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        has: &Bitfield,
        max: usize,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        // 1. The pieces this peer started.
        self.take_free(peer, has, max, &mut out, |p| p.owner == peer);
        // 2. New pieces, while partial pieces are few (the peer fills the
        // piece it just started, which it owns).
        while out.len() < max && self.partial.len() - self.runs < self.config.max_partial {
            let Some(piece) = self.choose_new(has, random) else {
                break;
            };
            self.start(piece, peer, false);
            self.take_free(peer, has, max, &mut out, |p| p.owner == peer);
        }
        // 3. Pieces others started (and share).
        self.take_free(peer, has, max, &mut out, |p| !p.exclusive);
        // 4. Still room and nothing new: too many partials, or endgame.
        if out.len() < max {
            if let Some(piece) = self.choose_new(has, random) {
                self.start(piece, peer, false);
                self.take_free(peer, has, max, &mut out, |p| p.owner == peer);
            } else if self.in_endgame() {
                self.take_endgame(peer, has, max, &mut out);
            }
        }
        out
    }

    /// Like `pick`, but only blocks of pieces already started: for when
    /// no more pieces may be held in memory, so that started pieces still
    /// complete (and free their buffers).
    pub fn pick_started(&mut self, peer: PeerKey, has: &Bitfield, max: usize) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        self.take_free(peer, has, max, &mut out, |p| p.owner == peer);
        self.take_free(peer, has, max, &mut out, |p| !p.exclusive);
        if out.len() < max && self.in_endgame() {
            self.take_endgame(peer, has, max, &mut out);
        }
        out
    }

    /// Picks for a peer on probation (none of its data verified yet): the
    /// rest of the one piece it owns, or else one new piece for it alone,
    /// unless `may_start` is false (a piece of its is being checked). A
    /// liar then costs one piece, and its first bad piece names it.
    pub fn pick_on_probation(
        &mut self,
        peer: PeerKey,
        has: &Bitfield,
        max: usize,
        may_start: bool,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<BlockRequest> {
        let mut out = Vec::new();
        let owns_one = self.partial.values().any(|p| p.owner == peer);
        // Not bound by `max_partial`: proven peers may hold every partial
        // slot, and a newcomer must still get its one piece to prove itself
        // (memory is bounded by the caller's budget, `may_start`).
        if !owns_one && may_start {
            if let Some(piece) = self.choose_new(has, random) {
                self.start(piece, peer, true);
            }
        }
        self.take_free(peer, has, max, &mut out, |p| p.owner == peer);
        out
    }

    fn take_free(
        &mut self,
        peer: PeerKey,
        has: &Bitfield,
        max: usize,
        out: &mut Vec<BlockRequest>,
        which: impl Fn(&Partial) -> bool,
    ) {
        let mut taken = Vec::new();
        for (&piece, partial) in self.partial.iter_mut() {
            if out.len() + taken.len() >= max {
                break;
            }
            if !has.get(piece) || !which(partial) {
                continue;
            }
            for (index, block) in partial.blocks.iter_mut().enumerate() {
                if out.len() + taken.len() >= max {
                    break;
                }
                if *block == Block::Free {
                    *block = Block::Requested(vec![peer]);
                    taken.push((piece, index as u32));
                }
            }
        }
        out.extend(taken.into_iter().map(|(p, i)| self.block(p, i)));
    }

    fn take_endgame(
        &mut self,
        peer: PeerKey,
        has: &Bitfield,
        max: usize,
        out: &mut Vec<BlockRequest>,
    ) {
        let limit = self.config.endgame_requesters;
        let mut taken = Vec::new();
        // From the far end: a web seed's run arrives in order, so its last
        // pieces are the ones a second source helps most with.
        for (&piece, partial) in self.partial.iter_mut().rev() {
            if !has.get(piece) {
                continue;
            }
            for (index, block) in partial.blocks.iter_mut().enumerate() {
                if out.len() + taken.len() >= max {
                    break;
                }
                if let Block::Requested(peers) = block {
                    if peers.len() < limit && !peers.contains(&peer) && !partial.exclusive {
                        peers.push(peer);
                        taken.push((piece, index as u32));
                    }
                }
            }
        }
        out.extend(taken.into_iter().map(|(p, i)| self.block(p, i)));
    }

    /// A piece to start: wanted, missing, not started, and `has` it. Random
    /// among all such for the first few pieces, then the rarest (random
    /// among equally rare).
    fn choose_new(&self, has: &Bitfield, random: &mut dyn FnMut(usize) -> usize) -> Option<u32> {
        let random_pick = self.verified_here < self.config.random_first;
        let mut best: Option<u32> = None;
        let mut best_availability = u32::MAX;
        let mut ties = 0usize;
        let words = has
            .words()
            .iter()
            .zip(self.wanted.words())
            .zip(self.have.words())
            .zip(self.busy.words());
        for (i, (((p, w), h), b)) in words.enumerate() {
            let mut candidates = p & w & !h & !b;
            while candidates != 0 {
                let piece = i as u32 * 64 + candidates.trailing_zeros();
                candidates &= candidates - 1;
                let availability = if random_pick {
                    0
                } else {
                    self.availability[piece as usize]
                };
                if availability < best_availability {
                    best_availability = availability;
                    best = Some(piece);
                    ties = 1;
                } else if availability == best_availability {
                    // Reservoir sampling: each tie wins with chance 1/ties.
                    ties += 1;
                    if random(ties) == 0 {
                        best = Some(piece);
                    }
                }
            }
        }
        best
    }

    fn start(&mut self, piece: u32, owner: PeerKey, exclusive: bool) {
        let blocks = vec![Block::Free; self.blocks_in(piece) as usize];
        self.partial.insert(
            piece,
            Partial {
                blocks,
                received: 0,
                owner,
                exclusive: exclusive || self.failed.get(piece),
                run: false,
            },
        );
        self.busy.set(piece);
    }

    /// Reserves a run of consecutive whole pieces for the web seed `owner`,
    /// which has `has`, of at most `max_pieces`: right after `after` (its
    /// last run, so one keep-alive connection reads on), else at the start
    /// of the largest stretch of pieces nobody is fetching. (A piece that
    /// failed may be in it: a run has one source, and the web seed that sent
    /// it bad leaves it out of `has`.) Every block of the run is requested
    /// by `owner`.
    pub fn pick_run(
        &mut self,
        owner: PeerKey,
        has: &Bitfield,
        max_pieces: usize,
        after: Option<u32>,
    ) -> Range<u32> {
        let free = |p: &Self, piece: u32| {
            piece < p.num_pieces
                && has.get(piece)
                && p.wanted.get(piece)
                && !p.have.get(piece)
                && (!p.busy.get(piece) || p.partial.get(&piece).is_some_and(Partial::abandoned))
        };
        let start = match after.map(|a| a + 1).filter(|&n| free(self, n)) {
            Some(next) => Some(next),
            None => {
                let mut best: Option<(u32, u32)> = None;
                let mut piece = 0;
                while piece < self.num_pieces {
                    if !free(self, piece) {
                        piece += 1;
                        continue;
                    }
                    let gap_start = piece;
                    while piece < self.num_pieces && free(self, piece) {
                        piece += 1;
                    }
                    if best.is_none_or(|(_, len)| piece - gap_start > len) {
                        best = Some((gap_start, piece - gap_start));
                    }
                }
                best.map(|(gap_start, _)| gap_start)
            }
        };
        let Some(start) = start else {
            return 0..0;
        };
        let mut end = start;
        while end < self.num_pieces && ((end - start) as usize) < max_pieces && free(self, end) {
            let blocks = vec![Block::Requested(vec![owner]); self.blocks_in(end) as usize];
            // An abandoned partial piece is taken over whole (what arrived
            // of it is dropped when the web seed delivers it).
            self.remove_partial(end);
            self.partial.insert(
                end,
                Partial {
                    blocks,
                    received: 0,
                    owner,
                    exclusive: false,
                    run: true,
                },
            );
            self.runs += 1;
            self.busy.set(end);
            end += 1;
        }
        start..end
    }

    /// The web seed `owner` delivered the whole of `piece`: every block is
    /// received. `None` if the piece is not in its run any more (peers
    /// finished it in endgame, or it was reset and taken by another
    /// source): the copy is not needed.
    pub fn on_whole_piece(&mut self, owner: PeerKey, piece: u32) -> Option<Arrival> {
        // Only into its own run: a piece reset and taken by another source
        // meanwhile is theirs.
        if !self
            .partial
            .get(&piece)
            .is_some_and(|p| p.run && p.owner == owner)
        {
            return None;
        }
        let partial = self.partial.remove(&piece)?;
        self.runs -= 1;
        let mut others = Vec::new();
        for block in partial.blocks {
            if let Block::Requested(peers) = block {
                others.extend(peers.into_iter().filter(|&p| p != owner));
            }
        }
        others.sort_unstable();
        others.dedup();
        // Stays busy until it is verified or fails.
        Some(Arrival::Fresh {
            piece_done: true,
            also_requested_from: others,
        })
    }

    /// The web seed `owner` will not deliver the rest of `pieces`: their
    /// blocks become free for anyone.
    pub fn release_run(&mut self, owner: PeerKey, pieces: Range<u32>) {
        for piece in pieces {
            let Some(partial) = self.partial.get_mut(&piece) else {
                continue;
            };
            if partial.run && partial.owner == owner {
                partial.run = false;
                self.runs -= 1;
            }
            for block in &mut partial.blocks {
                if let Block::Requested(peers) = block {
                    peers.retain(|&p| p != owner);
                    if peers.is_empty() {
                        *block = Block::Free;
                    }
                }
            }
        }
    }

    /// A block arrived from `peer`. `None` if it is no block of a piece we
    /// are fetching (never requested, or its piece was finished or reset).
    pub fn on_block(&mut self, peer: PeerKey, req: &BlockRequest) -> Option<Arrival> {
        let index = req.offset / BLOCK_LEN;
        if req.offset % BLOCK_LEN != 0 || req.piece >= self.num_pieces {
            return None;
        }
        if self.block(req.piece, index) != *req {
            return None;
        }
        let partial = self.partial.get_mut(&req.piece)?;
        let block = partial.blocks.get_mut(index as usize)?;
        match std::mem::replace(block, Block::Received) {
            Block::Received => Some(Arrival::Duplicate),
            previous => {
                let others = match previous {
                    Block::Requested(peers) => peers.into_iter().filter(|&p| p != peer).collect(),
                    _ => Vec::new(),
                };
                partial.received += 1;
                let piece_done = partial.received as usize == partial.blocks.len();
                if piece_done {
                    // Stays busy until it is verified or fails.
                    if self.partial.remove(&req.piece).is_some_and(|p| p.run) {
                        self.runs -= 1;
                    }
                }
                Some(Arrival::Fresh {
                    piece_done,
                    also_requested_from: others,
                })
            }
        }
    }

    /// Whether the block of `req` has already arrived (or its piece is
    /// done): an outstanding request for it can be cancelled.
    pub fn is_received(&self, req: &BlockRequest) -> bool {
        match self.partial.get(&req.piece) {
            Some(p) => p.blocks.get((req.offset / BLOCK_LEN) as usize) == Some(&Block::Received),
            None => true,
        }
    }

    /// `peer` will not answer `req` (choked, rejected, timed out, gone): the
    /// block can be asked of someone else.
    pub fn release(&mut self, peer: PeerKey, req: &BlockRequest) {
        let Some(partial) = self.partial.get_mut(&req.piece) else {
            return;
        };
        if partial.owner == peer {
            // Its owner will not finish it: anyone may.
            partial.exclusive = false;
        }
        if let Some(block) = partial.blocks.get_mut((req.offset / BLOCK_LEN) as usize) {
            if let Block::Requested(peers) = block {
                peers.retain(|&p| p != peer);
                if peers.is_empty() {
                    *block = Block::Free;
                }
            }
        }
    }

    /// The piece passed its hash check and is on disk.
    pub fn piece_verified(&mut self, piece: u32) {
        self.remove_partial(piece);
        self.busy.clear(piece);
        if !self.have.get(piece) {
            self.have.set(piece);
            self.verified_here += 1;
        }
    }

    /// The piece failed its hash check (or could not be written): fetch it
    /// again from scratch.
    pub fn piece_failed(&mut self, piece: u32) {
        self.failed.set(piece);
        self.reset(piece);
    }

    /// Forgets what arrived of `piece` (its data is being thrown away) and
    /// fetches it again from scratch.
    pub fn reset(&mut self, piece: u32) {
        self.remove_partial(piece);
        self.busy.clear(piece);
    }

    fn remove_partial(&mut self, piece: u32) {
        if self.partial.remove(&piece).is_some_and(|p| p.run) {
            self.runs -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 4 * BLOCK_LEN as u64;

    fn picker(pieces: u32) -> Picker {
        Picker::new(
            PIECE,
            PIECE * u64::from(pieces),
            Bitfield::new(pieces),
            Bitfield::full(pieces),
            PickerConfig {
                random_first: 0,
                ..Default::default()
            },
        )
    }

    fn first(_: usize) -> usize {
        0
    }

    fn fetch_piece(p: &mut Picker, peer: PeerKey, has: &Bitfield) -> u32 {
        let reqs = p.pick(peer, has, 4, &mut first);
        assert_eq!(reqs.len(), 4);
        let piece = reqs[0].piece;
        assert!(reqs.iter().all(|r| r.piece == piece), "one whole piece");
        for (i, r) in reqs.iter().enumerate() {
            let arrival = p.on_block(peer, r).unwrap();
            assert_eq!(
                arrival,
                Arrival::Fresh {
                    piece_done: i == 3,
                    also_requested_from: vec![]
                }
            );
        }
        piece
    }

    #[test]
    fn rarest_first_with_random_ties() {
        let mut p = picker(8);
        let all = Bitfield::full(8);
        p.add_peer(&all);
        let mut partial = Bitfield::new(8);
        for i in [0, 1, 2, 3, 5, 6, 7] {
            partial.set(i);
        }
        p.add_peer(&partial);
        // Piece 4 is held by one peer only: rarest.
        assert_eq!(p.pick(1, &all, 1, &mut first)[0].piece, 4);
        // Among equally rare pieces, the random function decides.
        let mut last = |n: usize| n - 1;
        let mut q = picker(8);
        q.add_peer(&all);
        let chosen = q.pick(1, &all, 1, &mut last)[0].piece;
        let mut r = picker(8);
        r.add_peer(&all);
        assert_ne!(r.pick(1, &all, 1, &mut first)[0].piece, chosen);
    }

    #[test]
    fn random_first_ignores_rarity_until_enough_pieces() {
        let mut p = Picker::new(
            PIECE,
            PIECE * 8,
            Bitfield::new(8),
            Bitfield::full(8),
            PickerConfig {
                random_first: 1,
                ..Default::default()
            },
        );
        let all = Bitfield::full(8);
        p.add_peer(&all);
        p.add_peer_piece(0);
        p.add_peer_piece(1);
        // All equally eligible at random: this choice keeps the first seen.
        let mut keep_first = |n: usize| n - 1;
        let reqs = p.pick(1, &all, 4, &mut keep_first);
        let piece = reqs[0].piece;
        for r in &reqs {
            p.on_block(1, r);
        }
        assert_eq!(piece, 0, "random first does not avoid common piece 0");
        p.piece_verified(piece);
        // Now rarest first: pieces 2..8 are rarer than 1.
        assert_ne!(p.pick(1, &all, 1, &mut first)[0].piece, 1);
    }

    #[test]
    fn a_peer_finishes_its_piece_before_starting_another() {
        let mut p = picker(4);
        let all = Bitfield::full(4);
        let a = p.pick(1, &all, 2, &mut first);
        let b = p.pick(2, &all, 2, &mut first);
        assert_ne!(a[0].piece, b[0].piece, "each peer starts its own piece");
        let a2 = p.pick(1, &all, 2, &mut first);
        assert!(a2.iter().all(|r| r.piece == a[0].piece));
        assert_eq!(p.partial_count(), 2);
    }

    #[test]
    fn started_only_picking_never_starts_a_piece() {
        let mut p = picker(4);
        let all = Bitfield::full(4);
        let first = p.pick(1, &all, 2, &mut first);
        assert_eq!(p.partial_count(), 1);
        let more = p.pick_started(2, &all, 100);
        assert_eq!(more.len(), 2, "the rest of the started piece");
        assert!(more.iter().all(|r| r.piece == first[0].piece));
        assert_eq!(p.partial_count(), 1);
    }

    #[test]
    fn partial_cap_makes_peers_share_pieces() {
        let mut p = Picker::new(
            PIECE,
            PIECE * 4,
            Bitfield::new(4),
            Bitfield::full(4),
            PickerConfig {
                random_first: 0,
                max_partial: 1,
                ..Default::default()
            },
        );
        let all = Bitfield::full(4);
        let a = p.pick(1, &all, 2, &mut first);
        let b = p.pick(2, &all, 2, &mut first);
        assert_eq!(a[0].piece, b[0].piece);
        assert_eq!(p.partial_count(), 1);
    }

    #[test]
    fn only_pieces_the_peer_has_and_we_want() {
        let mut wanted = Bitfield::new(4);
        wanted.set(1);
        wanted.set(2);
        let mut p = Picker::new(
            PIECE,
            PIECE * 4,
            Bitfield::new(4),
            wanted,
            PickerConfig::default(),
        );
        let mut has = Bitfield::new(4);
        has.set(0);
        has.set(2);
        assert!(p.is_interesting(&has));
        let reqs = p.pick(1, &has, 100, &mut first);
        assert_eq!(reqs.len(), 4);
        assert!(reqs.iter().all(|r| r.piece == 2));
        let mut only0 = Bitfield::new(4);
        only0.set(0);
        assert!(!p.is_interesting(&only0));
    }

    #[test]
    fn released_blocks_go_to_another_peer() {
        let mut p = picker(1);
        let all = Bitfield::full(1);
        let reqs = p.pick(1, &all, 4, &mut first);
        assert!(p.pick(2, &all, 4, &mut first).len() <= 4);
        p.release(1, &reqs[0]);
        let again = p.pick(3, &all, 4, &mut first);
        assert!(again.contains(&reqs[0]));
    }

    #[test]
    fn endgame_asks_a_second_peer_and_reports_whom_to_cancel() {
        let mut p = picker(1);
        let all = Bitfield::full(1);
        let reqs = p.pick(1, &all, 4, &mut first);
        assert!(p.in_endgame());
        let dup = p.pick(2, &all, 4, &mut first);
        assert_eq!(dup, reqs, "every block asked of a second peer");
        assert!(p.pick(3, &all, 4, &mut first).is_empty(), "two at most");
        assert_eq!(
            p.on_block(2, &reqs[0]),
            Some(Arrival::Fresh {
                piece_done: false,
                also_requested_from: vec![1]
            })
        );
        assert!(p.is_received(&reqs[0]));
        assert_eq!(p.on_block(1, &reqs[0]), Some(Arrival::Duplicate));
    }

    #[test]
    fn failed_piece_is_fetched_again_and_verified_piece_never() {
        let mut p = picker(2);
        let all = Bitfield::full(2);
        let piece = fetch_piece(&mut p, 1, &all);
        p.piece_failed(piece);
        let again = p.pick(1, &all, 8, &mut first);
        assert!(again.iter().any(|r| r.piece == piece));
        for r in &again {
            p.on_block(1, r);
        }
        p.piece_verified(0);
        p.piece_verified(1);
        assert!(p.is_done());
        assert_eq!(p.missing(), 0);
        assert!(p.pick(1, &all, 8, &mut first).is_empty());
    }

    #[test]
    fn unrequested_or_malformed_blocks_are_not_accepted() {
        let mut p = picker(2);
        let req = BlockRequest {
            piece: 0,
            offset: 0,
            length: BLOCK_LEN,
        };
        assert_eq!(p.on_block(1, &req), None, "never requested");
        let all = Bitfield::full(2);
        let reqs = p.pick(1, &all, 1, &mut first);
        let odd = BlockRequest {
            length: 100,
            ..reqs[0]
        };
        assert_eq!(p.on_block(1, &odd), None);
    }

    #[test]
    fn the_last_piece_and_block_are_short() {
        let total = PIECE + BLOCK_LEN as u64 + 100;
        let mut p = Picker::new(
            PIECE,
            total,
            Bitfield::new(2),
            Bitfield::full(2),
            PickerConfig::default(),
        );
        let mut has = Bitfield::new(2);
        has.set(1);
        let reqs = p.pick(1, &has, 10, &mut first);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].length, 100);
        assert_eq!(p.bytes_missing(), total);
    }

    const SEED: PeerKey = 1 << 63;

    #[test]
    fn web_seed_runs_take_the_largest_gap_then_continue_where_they_ended() {
        let mut p = picker(16);
        let all = Bitfield::full(16);
        // A peer works on piece 5: the largest free gap is 6..16.
        let mut only_5 = Bitfield::new(16);
        only_5.set(5);
        assert_eq!(p.pick(1, &only_5, 1, &mut first)[0].piece, 5);
        assert_eq!(p.pick_run(SEED, &all, 4, None), 6..10);
        // The same seed reads on after its run.
        assert_eq!(p.pick_run(SEED, &all, 4, Some(9)), 10..14);
        // Another seed gets the largest gap left: 0..5.
        assert_eq!(p.pick_run(SEED + 1, &all, 100, None), 0..5);
        // A piece of one seed's run is not another's to deliver.
        assert_eq!(p.on_whole_piece(SEED + 1, 6), None);
        assert_eq!(p.on_whole_piece(2, 0), None, "nor a peer's");
        // Runs hold no peer's partial slots, and peers do not get their blocks.
        assert_eq!(p.partial_count() - p.runs, 1);
        let reqs = p.pick(2, &all, 11, &mut first);
        assert!(
            reqs.iter().all(|r| r.piece == 5 || r.piece >= 14),
            "{reqs:?}"
        );
        assert_eq!(reqs.len(), 11);
        // Pieces the seed lacks end a run.
        let mut some = Bitfield::new(16);
        some.set(14);
        let mut q = picker(16);
        assert_eq!(q.pick_run(SEED, &some, 4, None), 14..15);
    }

    #[test]
    fn a_whole_piece_from_a_web_seed_completes_it_and_a_released_run_goes_to_peers() {
        let mut p = picker(4);
        let all = Bitfield::full(4);
        assert_eq!(p.pick_run(SEED, &all, 4, None), 0..4);
        assert!(p.in_endgame(), "every block is asked of the seed");
        // Endgame: a peer duplicates blocks from the far end of the run.
        let dup = p.pick(1, &all, 4, &mut first);
        assert!(dup.iter().all(|r| r.piece == 3), "{dup:?}");
        assert_eq!(
            p.on_whole_piece(SEED, 3),
            Some(Arrival::Fresh {
                piece_done: true,
                also_requested_from: vec![1],
            })
        );
        assert_eq!(p.on_whole_piece(SEED, 3), None, "already delivered");
        assert_eq!(p.on_block(1, &dup[0]), None, "its piece is done");
        assert!(p.on_whole_piece(SEED, 0).is_some());
        // The seed gives up on the rest: another seed, or peers, fetch it.
        p.release_run(SEED, 1..3);
        assert_eq!(p.runs, 0);
        assert_eq!(p.pick_run(SEED + 2, &all, 1, None), 1..2);
        p.release_run(SEED + 2, 1..2);
        let reqs = p.pick(1, &all, 100, &mut first);
        assert_eq!(reqs.len(), 8);
        // A piece that failed is fetched again, by a seed that has it.
        p.piece_failed(3);
        let mut without_3 = Bitfield::full(4);
        without_3.clear(3);
        assert_eq!(p.pick_run(SEED, &without_3, 4, None), 0..0);
        assert_eq!(p.pick_run(SEED + 1, &all, 4, None), 3..4);
    }
}
