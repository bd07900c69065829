//! Pure, deterministic policy: per-connection protocol state, the seeding
//! choker, the upload rate limiter. Time and randomness come in as
//! arguments, so tests are exact.

pub mod choker;
pub mod rate_limit;
pub mod seed_session;
pub mod swarm;
pub mod tiers;
