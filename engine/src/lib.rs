//! ringseed-engine: a BitTorrent engine for seeding large files to many peers.
//!
//! Three layers, each depending only on the ones below it:
//!
//! - [`proto`]: sans-IO formats (bencode, metainfo, magnet links, the piece
//!   and file geometry);
//! - [`policy`]: pure state machines (peer sessions, choker, rate limit);
//! - [`io`]: everything that touches the kernel.
//!
//! [`create`] builds torrents; [`hash`] is SHA-1 with SHA-NI where available.

pub mod create;
pub mod hash;
pub mod io;
pub mod memory;
pub mod policy;
pub mod proto;
pub mod rng;
pub mod session;
pub mod stats;

pub use proto::info_hash::InfoHash;
pub use proto::magnet::MagnetLink;
pub use proto::metainfo::{Metainfo, MetainfoError};
