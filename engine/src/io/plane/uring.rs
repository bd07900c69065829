//! The io_uring backend: each [`Op`] becomes one SQE of the worker's own
//! ring (`SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them), and a
//! send of cold pages is flagged `IOSQE_ASYNC` so an io-wq kernel thread,
//! not the worker, waits for the disk. Also: the probe that tells whether
//! this host lets us use io_uring at all, and why not.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::{Backend, Completion, Op, UserData};

/// A worker's ring.
pub struct Uring {
    ring: IoUring,
    /// Completions reaped while the submission queue was full (see `push`),
    /// handed out at the next `wait`.
    backlog: Vec<Completion>,
    /// Timespecs that timeouts point to, one per distinct delay, kept as
    /// long as the ring (a worker uses one or two).
    timespecs: HashMap<Duration, Box<types::Timespec>>,
}

impl Uring {
    /// Creates a ring of `entries` on the calling thread, which must be the
    /// only one to use it (single issuer).
    pub fn new(entries: u32) -> io::Result<Self> {
        Ok(Uring {
            ring: build_ring(entries)?,
            backlog: Vec::new(),
            timespecs: HashMap::new(),
        })
    }

    fn entry(&mut self, op: Op) -> squeue::Entry {
        match op {
            Op::Accept { listener } => opcode::AcceptMulti::new(types::Fd(listener)).build(),
            Op::Recv { fd, buf, len } => opcode::Recv::new(types::Fd(fd), buf, len).build(),
            Op::Read { fd, buf, len } => opcode::Read::new(types::Fd(fd), buf, len).build(),
            Op::SendMsg { fd, msg, cold } => {
                let entry = opcode::SendMsg::new(types::Fd(fd), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build();
                if cold {
                    // Pages are being read from disk: let an io-wq thread
                    // wait for them instead of the worker.
                    entry.flags(squeue::Flags::ASYNC)
                } else {
                    entry
                }
            }
            Op::Connect { fd, addr, len } => opcode::Connect::new(types::Fd(fd), addr, len).build(),
            Op::Write {
                fd,
                buf,
                len,
                offset,
            } => opcode::Write::new(types::Fd(fd), buf, len)
                .offset(offset)
                .build(),
            Op::ReadAt {
                fd,
                buf,
                len,
                offset,
            } => opcode::Read::new(types::Fd(fd), buf, len)
                .offset(offset)
                .build(),
            Op::Timeout { after } => {
                let spec = self
                    .timespecs
                    .entry(after)
                    .or_insert_with(|| Box::new(types::Timespec::from(after)));
                opcode::Timeout::new(&**spec).build()
            }
            Op::Cancel { target, .. } => opcode::AsyncCancel::new(target).build(),
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.backlog);
        out.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            more: cqueue::more(c.flags()),
        }));
    }
}

impl Backend for Uring {
    unsafe fn push(&mut self, op: Op, user_data: u64) {
        let entry = self.entry(op).user_data(user_data);
        loop {
            // SAFETY: the caller keeps what `op` points to alive until its
            // completion (this function's contract); a timeout's timespec is
            // owned by `self.timespecs`, which lives as long as the ring.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                // The completion queue is full: move its entries aside
                // (handed out at the next `wait`) so the kernel can post more
                // and take our submissions.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut reaped = std::mem::take(&mut self.backlog);
                    self.reap(&mut reaped);
                    self.backlog = reaped;
                }
                Err(_) => std::thread::yield_now(),
                Ok(_) => {}
            }
        }
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> io::Result<()> {
        let want = usize::from(block && self.backlog.is_empty());
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // The completion queue is full: drain it below.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        self.reap(out);
        Ok(())
    }

    fn forget_fd(&mut self, _fd: std::os::fd::RawFd) {}

    fn cancel_all_and_wait(&mut self, in_flight: usize) -> usize {
        cancel_all_and_wait(&mut self.ring, in_flight)
    }
}

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

fn build_ring(entries: u32) -> io::Result<IoUring> {
    // SINGLE_ISSUER + DEFER_TASKRUN: completions are processed only when we
    // ask, on this thread, with no IPIs (Linux 6.1+). Older kernels get a
    // plain ring.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
        .or_else(|_| IoUring::new(entries))
}

/// Why io_uring cannot run the data plane here, in words an operator can
/// act on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Unavailable {
    fn from_setup(e: &io::Error) -> Self {
        Unavailable(match e.raw_os_error() {
            Some(libc::ENOSYS) => format!(
                "io_uring_setup failed ({e}): this kernel has no io_uring (older than Linux 5.1, \
                 or built without CONFIG_IO_URING)"
            ),
            Some(libc::EPERM) | Some(libc::EACCES) => format!(
                "io_uring_setup failed ({e}): io_uring is forbidden here, either by \
                 `sysctl kernel.io_uring_disabled` (set it to 0; RHEL 9 sets 2) or by a seccomp \
                 profile (Docker 25 and later block it by default: run the container with a \
                 profile that allows io_uring_setup, io_uring_enter and io_uring_register)"
            ),
            Some(libc::ENOMEM) => format!(
                "io_uring_setup failed ({e}): the rings cannot lock memory; raise \
                 RLIMIT_MEMLOCK (LimitMEMLOCK= in the systemd unit), or use Linux 5.12 or newer"
            ),
            _ => format!("io_uring_setup failed: {e}"),
        })
    }
}

/// The opcodes the data plane submits. `Socket` is not submitted, but it
/// came in Linux 5.19 with multishot accept, which the probe cannot name.
const NEEDED: [(u8, &str); 9] = [
    (opcode::AcceptMulti::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Read::CODE, "READ"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (
        opcode::Socket::CODE,
        "SOCKET (Linux 5.19: multishot accept)",
    ),
];

/// Whether this process may run the io_uring data plane: a ring can be set
/// up and the kernel has every opcode it submits.
///
/// The probe's ring lives on a thread of its own: a thread that ever had a
/// ring keeps an io_uring context, and the ring's teardown can interrupt
/// that thread's blocking socket calls with `EINTR` (seen in our tests).
pub fn probe() -> Result<(), Unavailable> {
    std::thread::Builder::new()
        .name("ringseed-probe".into())
        .spawn(probe_here)
        .map_err(|e| Unavailable(format!("cannot start the io_uring probe: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(Unavailable("the io_uring probe panicked".into())))
}

fn probe_here() -> Result<(), Unavailable> {
    let ring = IoUring::new(8).map_err(|e| Unavailable::from_setup(&e))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        Unavailable(format!(
            "io_uring cannot list its opcodes ({e}): ringseed needs Linux 5.19 or newer"
        ))
    })?;
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unavailable(format!(
            "this kernel's io_uring lacks {}: ringseed's io_uring data plane needs Linux 5.19 \
             or newer",
            missing.join(", ")
        )))
    }
}
