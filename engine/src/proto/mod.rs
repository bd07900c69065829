//! Sans-IO protocol formats: bytes in, values out, and back. No sockets,
//! threads or clocks; every parser returns a typed error on bad input.

pub mod bencode;
pub mod extension;
pub mod info_hash;
pub mod krpc;
pub mod layout;
pub mod magnet;
pub mod metainfo;
pub mod mse;
pub mod pex;
pub mod tracker;
pub mod webseed;
pub mod wire;
