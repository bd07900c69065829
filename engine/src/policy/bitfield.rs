//! A set of piece indices as bits: what a peer has, what we have, what we
//! want. Stored in 64-bit words so that "which pieces could this peer give
//! us" is a few word operations per 64 pieces, not a loop per piece.

/// A fixed-size set of piece indices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u32,
}

impl Bitfield {
    /// `len` bits, all clear.
    pub fn new(len: u32) -> Self {
        Bitfield {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
        }
    }

    /// `len` bits, all set.
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield {
            words: vec![u64::MAX; (len as usize).div_ceil(64)],
            len,
        };
        b.clear_spare();
        b
    }

    /// Reads a wire bitfield (BEP 3: piece 0 is the high bit of byte 0).
    /// Returns `None` if its length does not fit `len` pieces or a spare
    /// bit at the end is set.
    pub fn from_wire(bytes: &[u8], len: u32) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut b = Bitfield::new(len);
        for (i, byte) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    let index = (i * 8 + bit) as u32;
                    if index >= len {
                        return None;
                    }
                    b.set(index);
                }
            }
        }
        Some(b)
    }

    /// The wire form (BEP 3).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = vec![0u8; (self.len as usize).div_ceil(8)];
        for index in self.ones() {
            out[index as usize / 8] |= 0x80 >> (index % 8);
        }
        out
    }

    fn clear_spare(&mut self) {
        let spare = self.words.len() * 64 - self.len as usize;
        if spare > 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= u64::MAX >> spare;
            }
        }
    }

    /// Number of bits (pieces).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether there are no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `index` is set; false beyond the end.
    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.words[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Sets bit `index` (< `len`).
    pub fn set(&mut self, index: u32) {
        self.words[index as usize / 64] |= 1 << (index % 64);
    }

    /// Clears bit `index` (< `len`).
    pub fn clear(&mut self, index: u32) {
        self.words[index as usize / 64] &= !(1 << (index % 64));
    }

    /// Bits set.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether every bit is set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Whether no bit is set.
    pub fn none(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The words, 64 pieces each, piece `64 * i + j` in bit `j` of word `i`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Indices of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + bit)
            })
        })
    }

    /// Whether `self` and `other` share a set bit.
    pub fn intersects(&self, other: &Bitfield) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_and_spare_bits() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.to_wire(), vec![0x80, 0x40]);
        assert_eq!(Bitfield::from_wire(&[0x80, 0x40], 10), Some(b.clone()));
        assert_eq!(Bitfield::from_wire(&[0x80, 0x60], 10), None, "spare bit");
        assert_eq!(Bitfield::from_wire(&[0x80], 10), None, "too short");
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn full_has_exactly_len_bits() {
        for len in [0, 1, 63, 64, 65, 130] {
            let b = Bitfield::full(len);
            assert_eq!(b.count(), len);
            assert!(b.is_full());
            assert!(!b.get(len));
        }
    }
}
