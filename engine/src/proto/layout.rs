//! The geometry a metainfo defines: one contiguous byte space cut into pieces
//! and, independently, into files. Pure arithmetic, shared by hashing,
//! seeding and (later) writing.

use std::ops::Range;

use super::metainfo::Info;

/// Where each file and piece lies in the torrent's byte space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    piece_length: u64,
    total_length: u64,
    num_pieces: u32,
    /// Byte range of each file, in torrent order.
    files: Vec<Range<u64>>,
    /// Pad files hold zeros and are never stored.
    pad: Vec<bool>,
}

/// A run of bytes of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index into the torrent's file list.
    pub file: usize,
    /// Offset inside that file.
    pub file_offset: u64,
    /// Number of bytes.
    pub len: u64,
    /// A BEP 47 pad file: the bytes are zeros, not read from disk.
    pub pad: bool,
}

impl Layout {
    /// The layout of a parsed `info` dictionary.
    pub fn new(info: &Info) -> Self {
        let lengths = info.files.iter().map(|f| (f.length, f.pad));
        Self::from_files(info.piece_length, lengths)
    }

    /// A layout from `(length, is_pad)` per file.
    ///
    /// # Panics
    /// If `piece_length` is 0, or the pieces do not fit in a `u32` count
    /// (metainfo parsing refuses both).
    pub fn from_files(piece_length: u64, lengths: impl IntoIterator<Item = (u64, bool)>) -> Self {
        assert!(piece_length > 0, "piece length must be positive");
        let mut files = Vec::new();
        let mut pad = Vec::new();
        let mut offset = 0u64;
        for (length, is_pad) in lengths {
            files.push(offset..offset + length);
            pad.push(is_pad);
            offset += length;
        }
        let num_pieces =
            u32::try_from(offset.div_ceil(piece_length)).expect("piece count fits in u32");
        Layout {
            piece_length,
            total_length: offset,
            num_pieces,
            files,
            pad,
        }
    }

    /// Bytes per piece (the last may be shorter).
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    /// Total bytes, pad files included.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Number of files.
    pub fn num_files(&self) -> usize {
        self.files.len()
    }

    /// Byte range of file `index` in the torrent.
    pub fn file_range(&self, index: usize) -> Range<u64> {
        self.files[index].clone()
    }

    /// Whether file `index` is a pad file.
    pub fn is_pad(&self, index: usize) -> bool {
        self.pad[index]
    }

    /// Byte range of piece `index` in the torrent.
    pub fn piece_range(&self, index: u32) -> Range<u64> {
        let start = u64::from(index) * self.piece_length;
        start..(start + self.piece_length).min(self.total_length)
    }

    /// Length of piece `index`.
    pub fn piece_len(&self, index: u32) -> u64 {
        let r = self.piece_range(index);
        r.end - r.start
    }

    /// The pieces that hold any byte of file `index` (empty for an empty file).
    pub fn pieces_of_file(&self, index: usize) -> Range<u32> {
        let r = &self.files[index];
        if r.is_empty() {
            return 0..0;
        }
        let first = r.start / self.piece_length;
        let last = (r.end - 1) / self.piece_length;
        first as u32..last as u32 + 1
    }

    /// The files that hold any byte of `range`, as segments in order; empty
    /// files are skipped.
    pub fn segments(&self, range: Range<u64>) -> impl Iterator<Item = Segment> + '_ {
        // First file whose end lies beyond the start of the range.
        let first = self.files.partition_point(|f| f.end <= range.start);
        self.files[first..]
            .iter()
            .enumerate()
            .take_while(move |(_, f)| f.start < range.end)
            .filter(|(_, f)| !f.is_empty())
            .map(move |(i, f)| {
                let start = range.start.max(f.start);
                let end = range.end.min(f.end);
                Segment {
                    file: first + i,
                    file_offset: start - f.start,
                    len: end - start,
                    pad: self.pad[first + i],
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_segments_across_file_edges() {
        // Files of 10, 0, 25 (pad) and 5 bytes; pieces of 16.
        let l = Layout::from_files(16, [(10, false), (0, false), (25, true), (5, false)]);
        assert_eq!((l.total_length(), l.num_pieces()), (40, 3));
        assert_eq!(l.piece_range(2), 32..40);
        assert_eq!(l.piece_len(2), 8);
        let segs: Vec<_> = l.segments(l.piece_range(0)).collect();
        assert_eq!(
            segs,
            [
                Segment {
                    file: 0,
                    file_offset: 0,
                    len: 10,
                    pad: false
                },
                Segment {
                    file: 2,
                    file_offset: 0,
                    len: 6,
                    pad: true
                },
            ]
        );
        let segs: Vec<_> = l.segments(l.piece_range(2)).collect();
        assert_eq!(
            segs,
            [
                Segment {
                    file: 2,
                    file_offset: 22,
                    len: 3,
                    pad: true
                },
                Segment {
                    file: 3,
                    file_offset: 0,
                    len: 5,
                    pad: false
                },
            ]
        );
        assert_eq!(l.pieces_of_file(0), 0..1);
        assert_eq!(l.pieces_of_file(1), 0..0);
        assert_eq!(l.pieces_of_file(2), 0..3);
        assert_eq!(l.pieces_of_file(3), 2..3);
    }

    #[test]
    fn segments_cover_every_byte_once() {
        let l = Layout::from_files(7, [(3, false), (11, false), (0, false), (9, false)]);
        for p in 0..l.num_pieces() {
            let total: u64 = l.segments(l.piece_range(p)).map(|s| s.len).sum();
            assert_eq!(total, l.piece_len(p));
        }
    }
}
