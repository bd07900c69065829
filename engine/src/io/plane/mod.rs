//! The data plane: one worker per core (see `worker` for the anatomy of
//! seeding a block and of receiving one), the tags that route completions
//! back, and the seam between the worker and the kernel: a [`Backend`]
//! takes [`Op`]s and hands back [`Completion`]s. Two backends have that one
//! shape: [`uring`] (the fast path) and [`epoll`] (where io_uring is
//! blocked), so every connection, limit, choker and counter is the same code
//! on both (monoio's `OpAble { uring_op, legacy_call }` is the model).

pub mod conn;
pub mod control;
pub mod epoll;
pub mod peer;
pub mod shared;
pub mod transport;
pub mod uring;
pub mod worker;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::time::Duration;

/// One operation a worker asks of its backend. Pointers are into buffers the
/// worker owns; [`Backend::push`] states what it must guarantee about them.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Accept connections on a listening socket until cancelled or an
    /// error: one completion per connection (its descriptor), each but the
    /// last with `more` set.
    Accept {
        /// The listening socket.
        listener: RawFd,
    },
    /// Receive up to `len` bytes of a stream socket into `buf`.
    Recv {
        /// The socket.
        fd: RawFd,
        /// Where the bytes go.
        buf: *mut u8,
        /// Room at `buf`.
        len: u32,
    },
    /// Read up to `len` bytes of a descriptor (the wake-up eventfd).
    Read {
        /// The descriptor.
        fd: RawFd,
        /// Where the bytes go.
        buf: *mut u8,
        /// Room at `buf`.
        len: u32,
    },
    /// One `sendmsg` (with `MSG_NOSIGNAL`); may send less than asked.
    SendMsg {
        /// The socket.
        fd: RawFd,
        /// The message header and, through it, the iovecs and what they
        /// point to (control bytes, piece headers, the file mapping).
        msg: *const libc::msghdr,
        /// Some of its pages may have to come from disk: the wait for them
        /// must not happen on the worker thread.
        cold: bool,
    },
    /// Connect a socket to `addr`.
    Connect {
        /// The socket.
        fd: RawFd,
        /// The address.
        addr: *const libc::sockaddr,
        /// Its length.
        len: libc::socklen_t,
    },
    /// Read up to `len` bytes of a file at `offset` into `buf`.
    ReadAt {
        /// The file.
        fd: RawFd,
        /// Where the bytes go.
        buf: *mut u8,
        /// Room at `buf`.
        len: u32,
        /// Where in the file.
        offset: u64,
    },
    /// Write `len` bytes at `buf` to a file at `offset`.
    Write {
        /// The file.
        fd: RawFd,
        /// The bytes.
        buf: *const u8,
        /// How many.
        len: u32,
        /// Where in the file.
        offset: u64,
    },
    /// Complete (with `-ETIME`) after `after`.
    Timeout {
        /// The delay.
        after: Duration,
    },
    /// Cancel the op tagged `target`, which works on `fd`.
    Cancel {
        /// The op's tag.
        target: u64,
        /// Its descriptor.
        fd: RawFd,
    },
}

/// What came of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The op's tag.
    pub user_data: u64,
    /// A byte count or descriptor, or a negated errno.
    pub result: i32,
    /// The op is still in flight (a multishot accept).
    pub more: bool,
}

/// A way to run a worker's ops: one per worker thread, never shared.
pub trait Backend {
    /// Queues `op`, tagged `user_data`; it runs at the next [`wait`] at
    /// the latest.
    ///
    /// # Safety
    ///
    /// Every buffer `op` points to (including, for `SendMsg`, the iovecs
    /// and the memory they describe) must stay allocated, unmoved, and
    /// untouched by the caller where the kernel writes, until this op's
    /// last completion (the one without `more`) has been returned by
    /// [`wait`] or [`cancel_all_and_wait`]. A descriptor must stay open
    /// until then, and [`forget_fd`] must be called before it is closed.
    ///
    /// [`wait`]: Backend::wait
    /// [`cancel_all_and_wait`]: Backend::cancel_all_and_wait
    /// [`forget_fd`]: Backend::forget_fd
    unsafe fn push(&mut self, op: Op, user_data: u64);

    /// Starts what was pushed and appends completions to `out`: at least one
    /// if `block`, else whatever is ready now.
    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> io::Result<()>;

    /// The worker is about to close `fd`, with none of its ops in flight.
    fn forget_fd(&mut self, fd: RawFd);

    /// Cancels every op and waits until none of the `in_flight` ones is
    /// left. Returns how many are still in flight if that failed: their
    /// buffers must then be leaked, not freed.
    fn cancel_all_and_wait(&mut self, in_flight: usize) -> usize;
}

/// Which data plane to run, as the operator asks (`--io`, `io = ...`,
/// `RINGSEED_IO`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring if this host allows it, else epoll, with a warning that
    /// says why.
    #[default]
    Auto,
    /// io_uring or nothing: refuse to start, saying what to change.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

impl IoMode {
    /// The name an operator writes.
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `--io` value that names no mode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown data plane {0:?}: expected auto, uring or epoll")]
pub struct UnknownIoMode(pub String);

impl FromStr for IoMode {
    type Err = UnknownIoMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            other => Err(UnknownIoMode(other.to_string())),
        }
    }
}

/// The data plane that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneKind {
    /// One io_uring per worker.
    Uring,
    /// One epoll instance per worker, with helper threads for file writes
    /// and sends of cold pages.
    Epoll,
}

impl PlaneKind {
    /// Its name in status, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaneKind::Uring => "uring",
            PlaneKind::Epoll => "epoll",
        }
    }
}

impl fmt::Display for PlaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Picks the data plane for `mode`: `Auto` probes io_uring and falls back to
/// epoll, returning why beside it; `Uring` fails with why.
pub fn choose(mode: IoMode) -> Result<(PlaneKind, Option<uring::Unavailable>), uring::Unavailable> {
    match mode {
        IoMode::Epoll => Ok((PlaneKind::Epoll, None)),
        IoMode::Uring => uring::probe().map(|()| (PlaneKind::Uring, None)),
        IoMode::Auto => match uring::probe() {
            Ok(()) => Ok((PlaneKind::Uring, None)),
            Err(why) => Ok((PlaneKind::Epoll, Some(why))),
        },
    }
}

/// What a completion is for, packed into the 64-bit `user_data` of its SQE:
/// kind in the top byte, a 24-bit connection generation (so a completion
/// for a closed connection never reaches a new one in the same slot) and a
/// 32-bit slab key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserData {
    /// The multishot accept.
    Accept,
    /// A receive of connection `key`.
    Recv {
        /// Slab key.
        key: u32,
        /// Connection generation.
        generation: u32,
    },
    /// A send of connection `key`.
    Send {
        /// Slab key.
        key: u32,
        /// Connection generation.
        generation: u32,
    },
    /// An outgoing connection of connection `key`.
    Connect {
        /// Slab key.
        key: u32,
        /// Connection generation.
        generation: u32,
    },
    /// A read of a block's bytes into connection `key`'s send buffer.
    BlockRead {
        /// Slab key.
        key: u32,
        /// Connection generation.
        generation: u32,
    },
    /// One file segment of a verified piece being written.
    Write {
        /// Key in the worker's table of writes.
        key: u32,
        /// Which segment of the piece (a piece may span files).
        segment: u32,
    },
    /// The periodic timer.
    Tick,
    /// The wake-up eventfd (shutdown).
    Wake,
    /// Cancellations and other fire-and-forget ops.
    Ignore,
}

impl UserData {
    /// Packs into `user_data`.
    pub fn pack(self) -> u64 {
        let conn = |kind: u64, key: u32, generation: u32| {
            kind << 56 | u64::from(generation & 0x00ff_ffff) << 32 | u64::from(key)
        };
        match self {
            UserData::Accept => 1 << 56,
            UserData::Recv { key, generation } => conn(2, key, generation),
            UserData::Send { key, generation } => conn(3, key, generation),
            UserData::Tick => 4 << 56,
            UserData::Wake => 5 << 56,
            UserData::Ignore => 6 << 56,
            UserData::Connect { key, generation } => conn(7, key, generation),
            UserData::Write { key, segment } => conn(8, key, segment),
            UserData::BlockRead { key, generation } => conn(9, key, generation),
        }
    }

    /// Unpacks a `user_data`.
    pub fn unpack(data: u64) -> Self {
        let key = data as u32;
        let generation = (data >> 32) as u32 & 0x00ff_ffff;
        match data >> 56 {
            1 => UserData::Accept,
            2 => UserData::Recv { key, generation },
            3 => UserData::Send { key, generation },
            4 => UserData::Tick,
            5 => UserData::Wake,
            7 => UserData::Connect { key, generation },
            8 => UserData::Write {
                key,
                segment: generation,
            },
            9 => UserData::BlockRead { key, generation },
            _ => UserData::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UserData;

    #[test]
    fn user_data_round_trips() {
        for d in [
            UserData::Accept,
            UserData::Recv {
                key: u32::MAX,
                generation: 0x00ff_ffff,
            },
            UserData::Send {
                key: 7,
                generation: 1,
            },
            UserData::Write {
                key: 3,
                segment: 0x00ff_ffff,
            },
            UserData::BlockRead {
                key: 9,
                generation: 0x00ff_fffe,
            },
            UserData::Tick,
            UserData::Wake,
            UserData::Ignore,
        ] {
            assert_eq!(UserData::unpack(d.pack()), d);
        }
    }
}
