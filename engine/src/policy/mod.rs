//! Pure, deterministic policy: per-connection protocol state, the piece
//! picker and download bookkeeping, the chokers, the upload rate limiter,
//! the tracker's swarm tables. Time and randomness come in as arguments, so
//! tests are exact.

pub mod bitfield;
pub mod choker;
pub mod dht;
pub mod download;
pub mod load_pattern;
pub mod metadata;
pub mod peer_session;
pub mod pex;
pub mod picker;
pub mod piece_buf;
pub mod rate_limit;
pub mod swarm;
pub mod tiers;
