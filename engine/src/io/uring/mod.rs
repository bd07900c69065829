//! The io_uring data plane: one worker per core (see `worker` for the
//! anatomy of seeding a block and of receiving one) and the tags that route
//! completions back.

pub mod conn;
pub mod worker;

use io_uring::{cqueue, opcode, types, IoUring};

/// Cancels every op of `ring` and waits until none of the `in_flight` ones
/// is left (a multishot op counts once: only its last completion, without
/// `more`, ends it). Call it before freeing buffers that ops point into,
/// after shutting the sockets down. Returns the ops still in flight if the
/// ring itself failed: their buffers must then be leaked, not freed.
pub fn cancel_all_and_wait(ring: &mut IoUring, mut in_flight: usize) -> usize {
    if in_flight == 0 {
        return 0;
    }
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(UserData::Ignore.pack());
    // SAFETY: a cancellation references no memory of ours.
    if unsafe { ring.submission().push(&cancel) }.is_ok() {
        in_flight += 1;
    }
    while in_flight > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => break,
        }
        let done = ring
            .completion()
            .filter(|c| !cqueue::more(c.flags()))
            .count();
        in_flight = in_flight.saturating_sub(done);
    }
    in_flight
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
            UserData::Tick,
            UserData::Wake,
            UserData::Ignore,
        ] {
            assert_eq!(UserData::unpack(d.pack()), d);
        }
    }
}
