//! What a simulated peer of the load tester asks for: which piece next
//! (random like rarest first, sequential, or one hot piece that everyone
//! wants), walked block by block, and whether to keep the piece's bytes
//! to check them against its hash. Deterministic given its random source.

use crate::policy::picker::BLOCK_LEN;
use crate::proto::wire::BlockRequest;

/// Which pieces simulated peers fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Uniformly random pieces: what rarest first looks like to a seed.
    Random,
    /// Pieces in order from a random start, wrapping around.
    Sequential,
    /// Every peer wants the same few pieces (a flash crowd on a new piece).
    Hot,
    /// Handshake and interest, then no requests: idle connections.
    Idle,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Pattern::Random),
            "sequential" => Ok(Pattern::Sequential),
            "hot" => Ok(Pattern::Hot),
            "idle" => Ok(Pattern::Idle),
            _ => Err(format!(
                "{s:?} is not a pattern: random, sequential, hot or idle"
            )),
        }
    }
}

/// Pieces the hot pattern spreads over.
pub const HOT_PIECES: u32 = 4;

/// A simulated peer's walk through the torrent.
#[derive(Debug, Clone)]
pub struct LoadPattern {
    pattern: Pattern,
    num_pieces: u32,
    piece_length: u64,
    total_length: u64,
    /// The piece being walked and the next block offset in it.
    current: Option<(u32, u32)>,
    next_sequential: u32,
    /// Fraction of pieces (0..=1) whose bytes are kept and checked.
    verify_fraction: f64,
}

/// The next request, and whether its piece is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRequest {
    /// The request.
    pub req: BlockRequest,
    /// Its piece is checked: keep the block's bytes.
    pub verify: bool,
    /// It is the first block of its piece.
    pub starts_piece: bool,
}

impl LoadPattern {
    /// A walk over a torrent of `total_length` bytes in pieces of
    /// `piece_length`; `start` seeds the sequential pattern's first piece.
    pub fn new(
        pattern: Pattern,
        piece_length: u64,
        total_length: u64,
        verify_fraction: f64,
        start: u64,
    ) -> Self {
        let num_pieces = total_length.div_ceil(piece_length) as u32;
        LoadPattern {
            pattern,
            num_pieces,
            piece_length,
            total_length,
            current: None,
            next_sequential: (start % u64::from(num_pieces.max(1))) as u32,
            verify_fraction,
        }
    }

    fn piece_len(&self, piece: u32) -> u32 {
        let start = u64::from(piece) * self.piece_length;
        (self.total_length - start).min(self.piece_length) as u32
    }

    /// The next block to request; `random()` gives a uniform u64. `None`
    /// for the idle pattern.
    pub fn next(&mut self, random: &mut dyn FnMut() -> u64) -> Option<NextRequest> {
        if self.pattern == Pattern::Idle || self.num_pieces == 0 {
            return None;
        }
        let (piece, offset, starts_piece) = match self.current {
            Some((piece, offset)) => (piece, offset, false),
            None => {
                let piece = match self.pattern {
                    Pattern::Random => (random() % u64::from(self.num_pieces)) as u32,
                    Pattern::Hot => (random() % u64::from(HOT_PIECES.min(self.num_pieces))) as u32,
                    Pattern::Sequential | Pattern::Idle => {
                        let p = self.next_sequential;
                        self.next_sequential = (p + 1) % self.num_pieces;
                        p
                    }
                };
                (piece, 0, true)
            }
        };
        let len = self.piece_len(piece);
        let length = (len - offset).min(BLOCK_LEN);
        let verify = self.verify_fraction > 0.0 && piece_sample(piece) < self.verify_fraction;
        let next = offset + length;
        self.current = (next < len).then_some((piece, next));
        Some(NextRequest {
            req: BlockRequest {
                piece,
                offset,
                length,
            },
            verify,
            starts_piece,
        })
    }
}

/// A number in [0, 1) fixed per piece: the piece is checked when it is
/// below the verify fraction, so every block of a piece agrees, whichever
/// peer fetches it.
fn piece_sample(piece: u32) -> f64 {
    let mixed = u64::from(piece).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
            n >> 7
        }
    }

    #[test]
    fn walks_whole_pieces_block_by_block_with_a_short_tail() {
        let piece = 2 * u64::from(BLOCK_LEN);
        let total = 3 * piece - 100;
        let mut p = LoadPattern::new(Pattern::Sequential, piece, total, 0.0, 2);
        let mut rng = counter();
        let reqs: Vec<_> = (0..6).map(|_| p.next(&mut rng).unwrap()).collect();
        assert_eq!(reqs[0].req.piece, 2);
        assert!(reqs[0].starts_piece && !reqs[1].starts_piece);
        assert_eq!(
            reqs[1].req.length,
            BLOCK_LEN - 100,
            "the torrent's last block"
        );
        assert_eq!(reqs[2].req.piece, 0, "wraps around");
        assert_eq!(
            reqs[5].req,
            BlockRequest {
                piece: 1,
                offset: BLOCK_LEN,
                length: BLOCK_LEN
            }
        );
    }

    #[test]
    fn hot_stays_on_a_few_pieces_and_random_spreads() {
        let piece = u64::from(BLOCK_LEN);
        let mut hot = LoadPattern::new(Pattern::Hot, piece, piece * 1000, 0.0, 0);
        let mut random = LoadPattern::new(Pattern::Random, piece, piece * 1000, 0.0, 0);
        let mut rng = counter();
        let hot_pieces: std::collections::HashSet<u32> = (0..200)
            .map(|_| hot.next(&mut rng).unwrap().req.piece)
            .collect();
        let random_pieces: std::collections::HashSet<u32> = (0..200)
            .map(|_| random.next(&mut rng).unwrap().req.piece)
            .collect();
        assert!(hot_pieces.len() <= HOT_PIECES as usize);
        assert!(random_pieces.len() > 100);
    }

    #[test]
    fn verification_is_sampled_per_piece_and_idle_asks_nothing() {
        let piece = 2 * u64::from(BLOCK_LEN);
        let mut all = LoadPattern::new(Pattern::Sequential, piece, piece * 10, 1.0, 0);
        let mut none = LoadPattern::new(Pattern::Sequential, piece, piece * 10, 0.0, 0);
        let mut rng = counter();
        assert!((0..20).all(|_| all.next(&mut rng).unwrap().verify));
        assert!((0..20).all(|_| !none.next(&mut rng).unwrap().verify));
        let mut idle = LoadPattern::new(Pattern::Idle, piece, piece * 10, 0.0, 0);
        assert_eq!(idle.next(&mut rng), None);
    }
}
