//! SHA-1 for piece hashes and info-hashes.
//!
//! RustCrypto's `sha1` selects SHA-NI at run time (detection cached once by
//! `cpufeatures`) and matched `openssl speed -evp sha1` on our machines, while
//! `sha1-asm` and `ring` were 2x and 4x slower (docs/BENCHMARKS.md): we wrap
//! it rather than carry SIMD code of our own.

use sha1::{Digest, Sha1};

/// A SHA-1 digest.
pub type Sha1Digest = [u8; 20];

/// SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> Sha1Digest {
    Sha1::digest(data).into()
}

/// Incremental SHA-1, for data that arrives in pieces (e.g. file segments).
#[derive(Default, Clone)]
pub struct Sha1Hasher(Sha1);

impl Sha1Hasher {
    /// A hasher with nothing hashed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `data` after what came before.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Sha1Digest {
        self.0.finalize().into()
    }
}

/// The SHA-1 implementation this CPU gets: `"sha-ni"` or `"portable"`.
pub fn sha1_backend() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            return "sha-ni";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("sha2") {
            return "armv8-sha";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let mut h = Sha1Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), sha1(b"abc"));
    }
}
