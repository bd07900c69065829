//! The only layer that touches the kernel: files, hashing threads and (with
//! the data plane) the per-core io_uring reactors.

pub mod files;
pub mod hasher;
