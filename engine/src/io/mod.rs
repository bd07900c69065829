//! The only layer that touches the kernel: files, hashing threads, mapped
//! storage and the per-core io_uring data plane.

pub mod announce;
pub mod dht;
pub mod dht_load;
pub mod dht_swarm;
pub mod file_pool;
pub mod files;
pub mod hasher;
pub mod loadtest;
pub mod net;
pub mod piece_check;
pub mod plane;
pub mod resume;
pub mod storage;
pub mod tracker_server;
pub mod webseed;
