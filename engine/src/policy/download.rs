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

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::hash::{sha1, Sha1Digest};
use crate::policy::bitfield::Bitfield;
use crate::policy::picker::{Arrival, PeerKey, Picker, PickerConfig, BLOCK_LEN};
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
    pub bytes_wasted: u64,
    /// Pieces that failed their hash check.
    pub hash_failures: u64,
    /// Pieces verified and written in this run.
    pub pieces_verified: u64,
    /// Peer addresses banned.
    pub peers_banned: u64,
}

/// A complete piece, to be hashed.
#[derive(Debug)]
pub struct CompletePiece {
    /// Its index.
    pub piece: u32,
    /// Its bytes.
    pub data: Vec<u8>,
}

struct Assembly {
    data: Vec<u8>,
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
    /// Pieces verified, in order: workers send `have` for each new entry.
    verified_log: Vec<u32>,
    /// Bytes of pieces in memory (see `DownloadConfig::max_memory`).
    memory: u64,
    /// Piece buffers to reuse: fresh ones cost a page fault and a zeroed
    /// page per 4 KiB, a reused one nothing (every byte is overwritten by
    /// blocks before the piece is checked).
    spare_buffers: Vec<Vec<u8>>,
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
    pub fn recycle(&mut self, buffer: Vec<u8>) {
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
            self.counters.bytes_wasted += data.len() as u64;
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
                _ => vec![0; piece_len],
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

    /// The hash check of `piece` passed: it will be written. Returns the
    /// addresses banned now (senders of blocks of earlier bad copies).
    pub fn on_hash_passed(&mut self, piece: u32, data: &[u8]) -> Vec<IpAddr> {
        self.hashing.remove(&piece);
        let mut newly_banned = Vec::new();
        for suspect in self.suspects.remove(&piece).unwrap_or_default() {
            let start = suspect.block as usize * BLOCK_LEN as usize;
            let end = (start + BLOCK_LEN as usize).min(data.len());
            if sha1(&data[start..end]) != suspect.digest {
                newly_banned.extend(self.strike(suspect.sender));
            }
        }
        newly_banned
    }

    /// The hash check of `piece` failed: it is fetched again. Returns the
    /// addresses banned now.
    pub fn on_hash_failed(&mut self, piece: u32, data: &[u8]) -> Vec<IpAddr> {
        self.counters.hash_failures += 1;
        self.picker.piece_failed(piece);
        let senders = self.hashing.remove(&piece).unwrap_or_default();
        let distinct: HashSet<IpAddr> = senders.iter().flatten().copied().collect();
        if distinct.len() == 1 {
            let sender = *distinct.iter().next().expect("one sender");
            return self.strike(sender).into_iter().collect();
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

    fn strike(&mut self, ip: IpAddr) -> Option<IpAddr> {
        let strikes = self.strikes.entry(ip).or_insert(0);
        *strikes += 1;
        if *strikes >= self.config.ban_after && self.banned.insert(ip) {
            self.counters.peers_banned += 1;
            return Some(ip);
        }
        None
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
        self.picker.piece_failed(piece);
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
    fn assemble(d: &mut Download, senders: [(PeerKey, u8); 2], contents: [u8; 2]) -> Vec<u8> {
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
    fn a_liar_is_found_among_honest_peers_and_banned_on_its_second_lie() {
        let mut d = download(1);
        // Peer 2 (10.0.0.2) lies about block 1; peer 1 is honest.
        let bad = assemble(&mut d, [(1, 1), (2, 2)], [7, 66]);
        assert!(d.on_hash_failed(0, &bad).is_empty(), "cannot tell yet");
        let bad = assemble(&mut d, [(2, 2), (1, 1)], [66, 7]);
        assert!(d.on_hash_failed(0, &bad).is_empty());
        // An honest copy: both earlier copies of the liar's blocks differ.
        let good = assemble(&mut d, [(1, 1), (1, 1)], [7, 7]);
        let banned = d.on_hash_passed(0, &good);
        assert_eq!(banned, vec![ip(2)]);
        assert!(d.is_banned(&ip(2)));
        assert!(!d.is_banned(&ip(1)), "the honest peer is not blamed");
        assert_eq!(d.counters.hash_failures, 2);
        assert_eq!(d.counters.peers_banned, 1);
    }

    #[test]
    fn a_sole_sender_of_bad_pieces_is_banned_after_two() {
        let mut d = download(2);
        let bad = assemble(&mut d, [(3, 3), (3, 3)], [1, 2]);
        assert!(d.on_hash_failed(0, &bad).is_empty());
        let bad = assemble(&mut d, [(3, 3), (3, 3)], [1, 2]);
        assert_eq!(d.on_hash_failed(0, &bad), vec![ip(3)]);
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
