//! A torrent being downloaded, as seen by every worker: the picker, the
//! pieces being assembled in memory, and who sent what, so that peers that
//! send bad data are found and banned.
//!
//! Pieces are assembled in memory and hashed before anything is written:
//! bad data never reaches the files, and a verified piece is written once.
//!
//! Finding liars ("smart ban", as libtorrent calls it): when a piece built
//! from several peers' blocks fails its hash, we cannot tell who lied. We
//! keep the hash of each block and its sender; when the piece later passes,
//! each old block is compared with the good one, and the senders of blocks
//! that differ get a strike. A piece that came from one peer alone strikes
//! it at once. `ban_after` strikes ban the address.
//!
//! Making liars cheap: a peer none of whose data has been verified yet is
//! on probation, fetching one piece at a time for itself alone, so a liar
//! costs one piece and its first bad piece bans it (it has shown nothing
//! good). A piece that failed is fetched again from one peer, whose copy,
//! if bad too, names it. When an address is banned, pieces being assembled
//! with its blocks are thrown away at once rather than finished and failed.
//! (With 8 lying seeds and one honest one, this took waste from 61% of the
//! torrent to the figure in docs/BENCHMARKS.md.)

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::hash::{sha1, Sha1Digest};
use crate::policy::bitfield::Bitfield;
use crate::policy::picker::{Arrival, PeerKey, Picker, PickerConfig, BLOCK_LEN};
use crate::policy::piece_buf::PieceBuf;
use crate::proto::wire::BlockRequest;

/// Settings of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Picker settings.
    pub picker: PickerConfig,
    /// Strikes (bad blocks proven, or failed pieces sent alone) that ban
    /// a peer's address.
    pub ban_after: u32,
    /// Bytes of pieces held in memory (assembling, being checked, being
    /// written) above which no more blocks are requested: when the disk is
    /// slower than the network, memory stays bounded.
    pub max_memory: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            picker: PickerConfig::default(),
            ban_after: 2,
            max_memory: 128 << 20,
        }
    }
}

/// Counters of a download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadCounters {
    /// Bytes of blocks received that we could use.
    pub bytes_received: u64,
    /// Bytes of blocks received twice or not asked for.
    pub bytes_duplicate: u64,
    /// Bytes of pieces that failed their hash check.
    pub bytes_hash_failed: u64,
    /// Bytes of partial pieces thrown away because a banned peer had sent
    /// some of their blocks.
    pub bytes_discarded: u64,
    /// Pieces that failed their hash check.
    pub hash_failures: u64,
    /// Pieces verified and written in this run.
    pub pieces_verified: u64,
    /// Peer addresses banned.
    pub peers_banned: u64,
}

impl DownloadCounters {
    /// Bytes received that did not end up verified, whatever the cause.
    pub fn wasted(&self) -> u64 {
        self.bytes_duplicate + self.bytes_hash_failed + self.bytes_discarded
    }
}

/// A complete piece, to be hashed.
#[derive(Debug)]
pub struct CompletePiece {
    /// Its index.
    pub piece: u32,
    /// Its bytes.
    pub data: PieceBuf,
}

struct Assembly {
    data: PieceBuf,
    senders: Vec<Option<IpAddr>>,
}

/// A block of a failed piece: who sent it and what it hashed to.
struct Suspect {
    block: u32,
    sender: IpAddr,
    digest: Sha1Digest,
}

/// The shared state of one download.
pub struct Download {
    /// Which blocks to ask whom for.
    pub picker: Picker,
    config: DownloadConfig,
    assembling: HashMap<u32, Assembly>,
    /// Senders of each block of pieces being hashed.
    hashing: HashMap<u32, Vec<Option<IpAddr>>>,
    suspects: HashMap<u32, Vec<Suspect>>,
    strikes: HashMap<IpAddr, u32>,
    banned: HashSet<IpAddr>,
    /// Addresses that sent blocks of a piece that passed: off probation.
    proven: HashSet<IpAddr>,
    /// Pieces verified, in order: workers send `have` for each new entry.
    verified_log: Vec<u32>,
    /// Bytes of pieces in memory (see `DownloadConfig::max_memory`).
    memory: u64,
    /// Piece buffers to reuse: fresh ones cost a page fault and a zeroed
    /// page per 4 KiB, a reused one nothing (every byte is overwritten by
    /// blocks before the piece is checked).
    spare_buffers: Vec<PieceBuf>,
    /// Counters.
    pub counters: DownloadCounters,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("missing", &self.picker.missing())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Download {
    /// A download of a torrent with `have` verified and `wanted` selected.
    pub fn new(
        piece_length: u64,
        total_length: u64,
        have: Bitfield,
        wanted: Bitfield,
        config: DownloadConfig,
    ) -> Self {
        Download {
            picker: Picker::new(piece_length, total_length, have, wanted, config.picker),
            config,
            assembling: HashMap::new(),
            hashing: HashMap::new(),
            suspects: HashMap::new(),
            strikes: HashMap::new(),
            banned: HashSet::new(),
            proven: HashSet::new(),
            verified_log: Vec::new(),
            memory: 0,
            spare_buffers: Vec::new(),
            counters: DownloadCounters::default(),
        }
    }

    /// Whether pieces in memory have reached the budget: ask for no more
    /// blocks until some are written.
    pub fn over_memory_budget(&self) -> bool {
        self.memory >= self.config.max_memory
    }

    /// A piece's buffer is free again (written, or failed its check).
    pub fn recycle(&mut self, buffer: PieceBuf) {
        self.memory = self.memory.saturating_sub(buffer.len() as u64);
        // Full-size buffers are kept up to the memory budget, so that a
        // download touches fresh memory only while it ramps up (on a VM
        // that returns free pages to the host, every fresh page is a fault
        // in the host too: this halved the CPU of a download here).
        let full = buffer.len() == self.picker.piece_len(0) as usize;
        let keep = (self.config.max_memory / u64::from(self.picker.piece_len(0)).max(1)) as usize;
        if full && !self.picker.is_done() && self.spare_buffers.len() < keep {
            self.spare_buffers.push(buffer);
        }
        if self.picker.is_done() {
            self.spare_buffers = Vec::new();
        }
    }

    /// Picks up to `max` blocks for `peer` at `ip`, which has `has`: as the
    /// picker does, or on probation while none of `ip`'s data has been
    /// verified. Only pieces already started when memory is short.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        ip: IpAddr,
        has: &Bitfield,
        max: usize,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<BlockRequest> {
        let short_of_memory = self.over_memory_budget();
        if !self.proven.contains(&ip) {
            // One piece of its own at a time: the next once this one passed
            // (and proved it) or failed (and banned it).
            let checking = self
                .hashing
                .values()
                .any(|senders| senders.contains(&Some(ip)));
            let may_start = !checking && !short_of_memory;
            return self
                .picker
                .pick_on_probation(peer, has, max, may_start, random);
        }
        if short_of_memory {
            // The disk is behind: finish the pieces started (which frees
            // their buffers), start none.
            return self.picker.pick_started(peer, has, max);
        }
        self.picker.pick(peer, has, max, random)
    }

    /// A block arrived from `peer` at `ip`. Returns its piece when that is
    /// now complete and must be hashed.
    pub fn on_block(
        &mut self,
        peer: PeerKey,
        ip: IpAddr,
        req: &BlockRequest,
        data: &[u8],
    ) -> Option<CompletePiece> {
        debug_assert_eq!(data.len(), req.length as usize);
        let Some(Arrival::Fresh { piece_done, .. }) = self.picker.on_block(peer, req) else {
            self.counters.bytes_duplicate += data.len() as u64;
            return None;
        };
        self.counters.bytes_received += data.len() as u64;
        let piece_len = self.picker.piece_len(req.piece) as usize;
        let spare = &mut self.spare_buffers;
        let memory = &mut self.memory;
        let assembly = self.assembling.entry(req.piece).or_insert_with(|| {
            *memory += piece_len as u64;
            let data = match spare.pop() {
                Some(b) if b.len() == piece_len => b,
                _ => PieceBuf::zeroed(piece_len),
            };
            Assembly {
                data,
                senders: vec![None; piece_len.div_ceil(BLOCK_LEN as usize)],
            }
        });
        let start = req.offset as usize;
        assembly.data[start..start + data.len()].copy_from_slice(data);
        assembly.senders[start / BLOCK_LEN as usize] = Some(ip);
        if !piece_done {
            return None;
        }
        let assembly = self.assembling.remove(&req.piece)?;
        self.hashing.insert(req.piece, assembly.senders);
        Some(CompletePiece {
            piece: req.piece,
            data: assembly.data,
        })
    }

    /// Reserves a run of whole pieces for the web seed `owner`, which has
    /// `has`, of at most `max_pieces` (see `Picker::pick_run`); none while
    /// memory is short.
    pub fn pick_run(
        &mut self,
        owner: PeerKey,
        has: &Bitfield,
        max_pieces: usize,
        after: Option<u32>,
    ) -> std::ops::Range<u32> {
        if self.over_memory_budget() {
            return 0..0;
        }
        self.picker.pick_run(owner, has, max_pieces, after)
    }

    /// A buffer for the whole of `piece`, counted in memory until it is
    /// handed back (`on_whole_piece`, or `recycle`). Its bytes are stale:
    /// the caller writes every one.
    pub fn take_piece_buffer(&mut self, piece: u32) -> PieceBuf {
        let len = self.picker.piece_len(piece) as usize;
        self.memory += len as u64;
        match self.spare_buffers.pop() {
            Some(b) if b.len() == len => b,
            _ => PieceBuf::zeroed(len),
        }
    }

    /// The web seed `owner` delivered the whole of `piece` in `data` (from
    /// `take_piece_buffer`). Returns it to be hashed, or `None` (the buffer
    /// recycled) when the piece was finished elsewhere meanwhile. Blocks
    /// that peers sent of it in endgame are dropped: one source per piece.
    /// The web seed checks the hash itself and keeps its own strikes, so no
    /// address is blamed here.
    pub fn on_whole_piece(
        &mut self,
        owner: PeerKey,
        piece: u32,
        data: PieceBuf,
    ) -> Option<CompletePiece> {
        let len = data.len() as u64;
        if self.picker.on_whole_piece(owner, piece).is_none() {
            self.counters.bytes_duplicate += len;
            self.recycle(data);
            return None;
        }
        if let Some(partial) = self.assembling.remove(&piece) {
            let blocks = partial.senders.iter().flatten().count() as u64;
            self.counters.bytes_duplicate += (blocks * u64::from(BLOCK_LEN)).min(len);
            self.recycle(partial.data);
        }
        self.counters.bytes_received += len;
        self.hashing.insert(piece, Vec::new());
        Some(CompletePiece { piece, data })
    }

    /// The web seed `owner` will not deliver `pieces` (of its run): others
    /// may fetch them.
    pub fn release_run(&mut self, owner: PeerKey, pieces: std::ops::Range<u32>) {
        self.picker.release_run(owner, pieces);
    }

    /// The hash check of `piece` passed: it will be written. Returns the
    /// addresses banned now (senders of blocks of earlier bad copies).
    pub fn on_hash_passed(&mut self, piece: u32, data: &[u8]) -> Vec<IpAddr> {
        let senders = self.hashing.remove(&piece).unwrap_or_default();
        self.proven.extend(senders.into_iter().flatten());
        let mut newly_banned = Vec::new();
        for suspect in self.suspects.remove(&piece).unwrap_or_default() {
            let start = suspect.block as usize * BLOCK_LEN as usize;
            let end = (start + BLOCK_LEN as usize).min(data.len());
            if sha1(&data[start..end]) != suspect.digest {
                newly_banned.extend(self.strike(suspect.sender, 1));
            }
        }
        newly_banned
    }

    /// The hash check of `piece` failed: it is fetched again. Returns the
    /// addresses banned now.
    pub fn on_hash_failed(&mut self, piece: u32, data: &[u8]) -> Vec<IpAddr> {
        self.counters.hash_failures += 1;
        self.counters.bytes_hash_failed += data.len() as u64;
        self.picker.piece_failed(piece);
        let senders = self.hashing.remove(&piece).unwrap_or_default();
        let distinct: HashSet<IpAddr> = senders.iter().flatten().copied().collect();
        if distinct.len() == 1 {
            let sender = *distinct.iter().next().expect("one sender");
            // A peer on probation has shown nothing good: one bad piece
            // bans it.
            let strikes = if self.proven.contains(&sender) {
                1
            } else {
                self.config.ban_after
            };
            return self.strike(sender, strikes).into_iter().collect();
        }
        let suspects = self.suspects.entry(piece).or_default();
        for (block, sender) in senders.iter().enumerate() {
            let Some(sender) = *sender else { continue };
            let start = block * BLOCK_LEN as usize;
            let end = (start + BLOCK_LEN as usize).min(data.len());
            suspects.push(Suspect {
                block: block as u32,
                sender,
                digest: sha1(&data[start..end]),
            });
        }
        Vec::new()
    }

    /// Gives `ip` `n` strikes; bans it (and throws away the pieces being
    /// assembled with its blocks) when they reach `ban_after`.
    fn strike(&mut self, ip: IpAddr, n: u32) -> Option<IpAddr> {
        // Back on probation: one piece at a time until it proves itself
        // again, so a peer that lies now and then cannot keep a pipeline
        // of bad pieces in flight.
        self.proven.remove(&ip);
        let strikes = self.strikes.entry(ip).or_insert(0);
        *strikes += n;
        if *strikes >= self.config.ban_after && self.banned.insert(ip) {
            self.counters.peers_banned += 1;
            self.discard_blocks_of(ip);
            return Some(ip);
        }
        None
    }

    /// Pieces being assembled with blocks from the banned `ip` would fail
    /// or need proof: they start again from scratch.
    fn discard_blocks_of(&mut self, ip: IpAddr) {
        let tainted: Vec<u32> = self
            .assembling
            .iter()
            .filter(|(_, a)| a.senders.contains(&Some(ip)))
            .map(|(&piece, _)| piece)
            .collect();
        for piece in tainted {
            let assembly = self.assembling.remove(&piece).expect("listed above");
            let blocks = assembly.senders.iter().flatten().count() as u64;
            self.counters.bytes_discarded +=
                (blocks * u64::from(BLOCK_LEN)).min(assembly.data.len() as u64);
            self.picker.reset(piece);
            self.recycle(assembly.data);
        }
    }

    /// The verified `piece` is on disk.
    pub fn on_written(&mut self, piece: u32) {
        self.picker.piece_verified(piece);
        self.verified_log.push(piece);
        self.counters.pieces_verified += 1;
        if self.picker.is_done() {
            // Seeding from here on: no more piece buffers.
            self.spare_buffers = Vec::new();
        }
    }

    /// Pieces verified in this run so far.
    pub fn verified_count(&self) -> usize {
        self.verified_log.len()
    }

    /// The verified `piece` could not be written: it stays missing.
    pub fn on_write_failed(&mut self, piece: u32) {
        self.picker.reset(piece);
    }

    /// Whether `ip` is banned.
    pub fn is_banned(&self, ip: &IpAddr) -> bool {
        self.banned.contains(ip)
    }

    /// The banned addresses.
    pub fn banned(&self) -> impl Iterator<Item = &IpAddr> {
        self.banned.iter()
    }

    /// Pieces verified in this run after the first `seen` of them.
    pub fn verified_since(&self, seen: usize) -> &[u32] {
        self.verified_log.get(seen..).unwrap_or(&[])
    }

    /// Pieces held in memory (being assembled or hashed).
    pub fn pieces_in_memory(&self) -> usize {
        self.assembling.len() + self.hashing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::picker::BLOCK_LEN;

    const PIECE: u64 = 2 * BLOCK_LEN as u64;

    fn download(pieces: u32) -> Download {
        Download::new(
            PIECE,
            PIECE * u64::from(pieces),
            Bitfield::new(pieces),
            Bitfield::full(pieces),
            DownloadConfig {
                picker: PickerConfig {
                    random_first: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// Blocks of piece 0, block `i` sent by `senders[i]` with `contents[i]`.
    fn assemble(d: &mut Download, senders: [(PeerKey, u8); 2], contents: [u8; 2]) -> PieceBuf {
        let all = Bitfield::full(d.picker.num_pieces());
        let mut done = None;
        for (i, (peer, addr)) in senders.into_iter().enumerate() {
            let reqs = d.picker.pick(peer, &all, 1, &mut |n| n - 1);
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].offset, i as u32 * BLOCK_LEN);
            let block = vec![contents[i]; BLOCK_LEN as usize];
            done = d.on_block(peer, ip(addr), &reqs[0], &block);
        }
        let piece = done.expect("piece complete");
        assert_eq!(piece.piece, 0, "tests fetch piece 0 first");
        piece.data
    }

    #[test]
    fn a_liar_among_honest_peers_is_named_when_its_piece_passes_from_one_peer() {
        let mut d = download(1);
        d.proven.extend([ip(1), ip(2)]);
        // Peer 2 (10.0.0.2) lies about block 1; peer 1 is honest.
        let bad = assemble(&mut d, [(1, 1), (2, 2)], [7, 66]);
        assert!(d.on_hash_failed(0, &bad).is_empty(), "cannot tell yet");
        assert_eq!(d.counters.bytes_hash_failed, PIECE);
        // The retry is the first picker's alone.
        let all = Bitfield::full(1);
        let retry = d.pick(1, ip(1), &all, 1, &mut |n| n - 1);
        assert_eq!(retry.len(), 1);
        assert!(d.pick(2, ip(2), &all, 4, &mut |n| n - 1).is_empty());
        let more = d.pick(1, ip(1), &all, 4, &mut |n| n - 1);
        let mut done = None;
        for req in retry.iter().chain(&more) {
            done = d.on_block(1, ip(1), req, &[7; BLOCK_LEN as usize]);
        }
        let good = done.expect("piece complete").data;
        // The honest copy shows which earlier block was bad.
        assert!(d.on_hash_passed(0, &good).is_empty(), "one strike of two");
        assert_eq!(d.strikes.get(&ip(2)), Some(&1));
        assert_eq!(d.strikes.get(&ip(1)), None, "the honest peer is not blamed");
        assert_eq!(d.counters.hash_failures, 1);
    }

    #[test]
    fn a_sole_sender_of_bad_pieces_is_banned_at_once_on_probation_after_two_if_proven() {
        let mut d = download(2);
        let bad = assemble(&mut d, [(3, 3), (3, 3)], [1, 2]);
        assert_eq!(d.on_hash_failed(0, &bad), vec![ip(3)], "nothing good seen");
        let mut d = download(2);
        d.proven.insert(ip(4));
        let bad = assemble(&mut d, [(4, 4), (4, 4)], [1, 2]);
        assert!(d.on_hash_failed(0, &bad).is_empty());
        let bad = assemble(&mut d, [(4, 4), (4, 4)], [1, 2]);
        assert_eq!(d.on_hash_failed(0, &bad), vec![ip(4)]);
        assert_eq!(d.counters.wasted(), 2 * PIECE);
    }

    #[test]
    fn a_peer_on_probation_fetches_one_piece_alone_until_it_passes() {
        let mut d = download(4);
        let all = Bitfield::full(4);
        let mut any = |n: usize| n - 1;
        // Peer 1 is new: the blocks of one piece, however many it may ask.
        let first = d.pick(1, ip(1), &all, 100, &mut any);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.piece == first[0].piece));
        // Nobody else may join that piece.
        d.proven.insert(ip(2));
        let other = d.pick(2, ip(2), &all, 100, &mut any);
        assert!(other.iter().all(|r| r.piece != first[0].piece));
        // While its piece is being checked, nothing more.
        let mut complete = None;
        for req in &first {
            complete = d.on_block(1, ip(1), req, &[0; BLOCK_LEN as usize]);
        }
        let complete = complete.expect("piece complete");
        assert!(d.pick(1, ip(1), &all, 100, &mut any).is_empty());
        // Passed: off probation, asked as much as it may take.
        assert!(d.on_hash_passed(complete.piece, &complete.data).is_empty());
        let after = d.pick(1, ip(1), &all, 100, &mut any);
        assert!(after.len() > 2, "{after:?}");
    }

    #[test]
    fn a_ban_throws_away_the_pieces_its_blocks_are_in() {
        let mut d = download(2);
        d.proven.insert(ip(1));
        let all = Bitfield::full(2);
        // Piece 0 from peer 5 (a liar on probation), half of piece 1 from
        // peer 1 and half from peer 5.
        let liar_piece = d.pick(5, ip(5), &all, 2, &mut |n| n - 1);
        assert_eq!(liar_piece.len(), 2);
        for req in &liar_piece {
            d.on_block(5, ip(5), req, &[9; BLOCK_LEN as usize]);
        }
        let honest = d.pick(1, ip(1), &all, 1, &mut |n| n - 1);
        d.on_block(1, ip(1), &honest[0], &[1; BLOCK_LEN as usize]);
        d.picker.release(1, &honest[0]);
        d.assembling
            .get_mut(&honest[0].piece)
            .expect("assembling")
            .senders[1] = Some(ip(5));
        let bad = vec![9; PIECE as usize];
        assert_eq!(d.on_hash_failed(liar_piece[0].piece, &bad), vec![ip(5)]);
        assert_eq!(d.pieces_in_memory(), 0, "the tainted piece is gone");
        assert_eq!(d.counters.bytes_discarded, PIECE);
        assert_eq!(d.counters.wasted(), 2 * PIECE);
        // Both fetched again from scratch.
        assert_eq!(d.pick(1, ip(1), &all, 8, &mut |n| n - 1).len(), 4);
    }

    #[test]
    fn verified_pieces_are_logged_for_have_messages() {
        let mut d = download(2);
        let data = assemble(&mut d, [(1, 1), (1, 1)], [5, 5]);
        assert!(d.on_hash_passed(0, &data).is_empty());
        assert_eq!(d.verified_since(0), &[] as &[u32]);
        d.on_written(0);
        assert_eq!(d.verified_since(0), &[0]);
        assert_eq!(d.verified_since(1), &[] as &[u32]);
        assert_eq!(d.counters.bytes_received, PIECE);
        assert_eq!(d.pieces_in_memory(), 0);
    }
}
