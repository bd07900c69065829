//! The 20-byte identifiers of BitTorrent v1: info-hashes and SHA-1 digests.

use std::fmt;

/// The SHA-1 of a torrent's bencoded `info` dictionary, exactly as it appears
/// in the .torrent file: the torrent's identity in the swarm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct InfoHash(pub [u8; 20]);

/// Why a textual info-hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an info-hash (40 hex or 32 base32 characters)")]
pub struct InfoHashParseError {
    /// The refused text.
    pub value: String,
}

impl InfoHash {
    /// Lowercase hexadecimal, 40 characters.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }

    /// Parses 40 hex digits (any case) or 32 base32 characters (RFC 4648,
    /// as in old magnet links).
    pub fn parse(text: &str) -> Result<Self, InfoHashParseError> {
        let decoded = match text.len() {
            40 => data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .ok(),
            32 => data_encoding::BASE32
                .decode(text.to_ascii_uppercase().as_bytes())
                .ok(),
            _ => None,
        };
        decoded
            .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
            .map(InfoHash)
            .ok_or_else(|| InfoHashParseError {
                value: text.to_owned(),
            })
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base32_agree() {
        let hex = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        let h = InfoHash::parse(hex).unwrap();
        assert_eq!(h.to_hex(), hex);
        assert_eq!(InfoHash::parse(&hex.to_uppercase()).unwrap(), h);
        let b32 = data_encoding::BASE32.encode(&h.0);
        assert_eq!(InfoHash::parse(&b32).unwrap(), h);
        assert_eq!(InfoHash::parse(&b32.to_lowercase()).unwrap(), h);
        assert!(InfoHash::parse("xyz").is_err());
        assert!(InfoHash::parse(&"g".repeat(40)).is_err());
    }
}
