//! Bencode (BEP 3): the encoding of .torrent files, tracker replies and
//! extension messages.

mod decode;
mod encode;

pub use decode::{decode, decode_prefix, Kind, Value, DEFAULT_MAX_DEPTH};
pub use encode::{write_bytes, write_int, OwnedValue};

/// Why bencoded input was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bencode at byte {offset}: {kind}")]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// Byte offset in the input where the offending item starts.
    pub offset: usize,
}

/// The kinds of malformed bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The input ended inside a value.
    #[error("unexpected end of input")]
    UnexpectedEof,
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte {0:#04x}")]
    UnexpectedByte(u8),
    /// `i03e` or `03:abc`: leading zeros are not canonical.
    #[error("number with a leading zero")]
    LeadingZero,
    /// `i-0e`.
    #[error("negative zero")]
    NegativeZero,
    /// `ie` or `i-e`.
    #[error("integer without digits")]
    EmptyInteger,
    /// An integer or length outside 64-bit range.
    #[error("number overflows 64 bits")]
    IntegerOverflow,
    /// A byte string longer than what is left of the input.
    #[error("byte string declares {declared} bytes but only {available} remain")]
    LengthExceedsInput {
        /// The length written in the input.
        declared: u64,
        /// Bytes actually left after the `:`.
        available: usize,
    },
    /// Lists and dictionaries nested too deep.
    #[error("nesting deeper than {limit} levels")]
    TooDeep {
        /// The nesting limit in force.
        limit: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("dictionary key is not a byte string")]
    NonStringKey,
    /// The same key twice in one dictionary.
    #[error("duplicate dictionary key {key:?}")]
    DuplicateKey {
        /// The repeated key, lossily decoded.
        key: String,
    },
    /// Bytes after a complete top-level value.
    #[error("trailing data after the value")]
    TrailingData,
}

#[cfg(test)]
mod tests;
