//! The epoll backend, for hosts where io_uring is blocked (Docker's default
//! seccomp profile, `kernel.io_uring_disabled`, RHEL 9): it runs the same
//! [`Op`]s as the io_uring backend with readiness and non-blocking syscalls,
//! so the worker above it cannot tell the difference.
//!
//! - Sockets are registered once, edge-triggered, for reading and writing.
//!   An op is tried at once (in the next `wait`); if it would block, it waits
//!   for the next edge. A receive or send that moved fewer bytes than asked
//!   drained its socket, so the next one waits for an edge without trying;
//!   except a receive once the peer has shut its side (RDHUP): its FIN may
//!   wait behind the data with no edge of its own (found by black-box
//!   testing: such peers stayed in CLOSE-WAIT until the idle timeout).
//! - A multishot accept is the listener's pending read: every readiness
//!   accepts up to [`ACCEPT_BATCH`] connections, each a completion with
//!   `more` set.
//! - What may block on the disk runs on a small pool of helper threads (the
//!   role io-wq plays for io_uring): file writes (`pwrite`), and sends whose
//!   pages are cold (the copy from the mapping faults them in on the helper,
//!   never on the worker). A cold send that finds its socket full comes back
//!   and waits for the next edge like any other.
//! - Timeouts are deadlines that bound `epoll_wait`.
//! - Nothing here reads or writes the mappings: the kernel does, in
//!   `sendmsg`, and reports a truncated file as `EFAULT`, as with io_uring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Backend, Completion, Op};

/// Most connections accepted per readiness of the listener before other
/// sockets get their turn.
const ACCEPT_BATCH: usize = 64;
/// Helper threads per worker for file writes and cold sends: enough to keep
/// a few disk reads in flight while one waits.
const HELPERS: usize = 4;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// The `epoll_event` data of the helpers' eventfd (sockets carry their fd).
const HELPERS_DONE: u64 = u64::MAX;

/// What waits for a socket to become readable.
#[derive(Clone, Copy)]
enum ReadOp {
    Accept,
    Recv { buf: *mut u8, len: u32 },
    Read { buf: *mut u8, len: u32 },
}

/// What waits for a socket to become writable.
#[derive(Clone, Copy)]
enum WriteOp {
    Send {
        msg: *const libc::msghdr,
        cold: bool,
    },
    Connect,
}

/// A descriptor the worker has ops on.
#[derive(Default)]
struct FdState {
    registered: bool,
    /// No `EAGAIN` since the last readable edge.
    readable: bool,
    /// No `EAGAIN` since the last writable edge.
    writable: bool,
    /// The peer shut its side (an RDHUP or HUP edge came): a FIN may wait
    /// behind data, with no edge of its own, so reads go on until they
    /// return 0 or fail.
    peer_closed: bool,
    /// Writable edges seen: a cold send handed to a helper that comes back
    /// with `EAGAIN` knows whether an edge came meanwhile.
    write_edges: u32,
    read: Option<(u64, ReadOp)>,
    write: Option<(u64, WriteOp)>,
    /// Listed in `Epoll::to_try`.
    queued: bool,
}

/// A job for a helper thread.
enum Job {
    Send {
        user_data: u64,
        fd: RawFd,
        msg: *const libc::msghdr,
        write_edges: u32,
    },
    Write {
        user_data: u64,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    },
    ReadAt {
        user_data: u64,
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        offset: u64,
    },
}

// SAFETY: a job's pointers are to buffers that `Backend::push`'s contract
// keeps alive and untouched by the worker until the op completes, which is
// after the helper has finished with them; descriptors stay open as long.
unsafe impl Send for Job {}

/// What a helper reports.
struct Done {
    completion: Completion,
    /// A cold send found its socket full: it waits for an edge and is
    /// retried (`fd`, `msg`, the write edges seen when it was handed over).
    retry: Option<(RawFd, *const libc::msghdr, u32)>,
}

// SAFETY: see `Job`.
unsafe impl Send for Done {}

/// The helpers: threads taking jobs from one channel and reporting to a
/// list the worker drains when their eventfd wakes it.
struct Helpers {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    done: Arc<Mutex<Vec<Done>>>,
    wake: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs handed over and not yet reported.
    busy: usize,
}

impl Helpers {
    fn start(count: usize) -> io::Result<Self> {
        let wake = Arc::new(eventfd()?);
        let done = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let rx = rx.clone();
            let done = Arc::clone(&done);
            let wake = Arc::clone(&wake);
            let name = format!("ringseed-io{i}");
            threads.push(std::thread::Builder::new().name(name).spawn(move || {
                for job in rx {
                    let report = run_job(job);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(report);
                    let one = 1u64;
                    // SAFETY: an 8-byte write from a live u64 to an eventfd.
                    unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
                }
            })?);
        }
        Ok(Helpers {
            jobs: Some(tx),
            done,
            wake,
            threads,
            busy: 0,
        })
    }

    fn submit(&mut self, job: Job) {
        self.busy += 1;
        if let Some(jobs) = &self.jobs {
            // The helpers hold the receiver until `drop`.
            let _ = jobs.send(job);
        }
    }

    fn take_done(&mut self) -> Vec<Done> {
        let mut count = 0u64;
        // SAFETY: reads the eventfd's 8-byte counter into a live u64.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()));
        self.busy -= done.len();
        done
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run_job(job: Job) -> Done {
    match job {
        Job::Send {
            user_data,
            fd,
            msg,
            write_edges,
        } => {
            // SAFETY: `msg` and what it points to live until this op
            // completes (`Backend::push`); the kernel reads the mapping and
            // reports a truncated file as EFAULT.
            let n = unsafe { libc::sendmsg(fd, msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            let result = result_of(n as isize);
            Done {
                completion: Completion {
                    user_data,
                    result,
                    more: false,
                },
                retry: (result == -libc::EAGAIN).then_some((fd, msg, write_edges)),
            }
        }
        Job::Write {
            user_data,
            fd,
            buf,
            len,
            offset,
        } => {
            // SAFETY: `buf[..len]` lives until this op completes.
            let n = unsafe { libc::pwrite(fd, buf.cast(), len as usize, offset as libc::off_t) };
            done(user_data, n)
        }
        Job::ReadAt {
            user_data,
            fd,
            buf,
            len,
            offset,
        } => {
            // SAFETY: `buf[..len]` is lent to this op until it completes.
            let n = unsafe { libc::pread(fd, buf.cast(), len as usize, offset as libc::off_t) };
            done(user_data, n)
        }
    }
}

/// A helper's report of a positioned read or write that returned `n`.
fn done(user_data: u64, n: isize) -> Done {
    Done {
        completion: Completion {
            user_data,
            result: result_of(n),
            more: false,
        },
        retry: None,
    }
}

/// A syscall's return value as a completion result: the count, or -errno.
fn result_of(n: isize) -> i32 {
    if n < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        n.min(i32::MAX as isize) as i32
    }
}

/// A worker's epoll instance and helpers.
pub struct Epoll {
    epfd: OwnedFd,
    fds: Vec<FdState>,
    /// Descriptors with an op to try before sleeping.
    to_try: Vec<RawFd>,
    ready: Vec<Completion>,
    timers: Vec<(Instant, u64)>,
    helpers: Helpers,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll instance with its helper threads.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let helpers = Helpers::start(HELPERS)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: HELPERS_DONE,
        };
        // SAFETY: registers a descriptor we own with a valid event.
        if unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                helpers.wake.as_raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            epfd,
            fds: Vec::new(),
            to_try: Vec::new(),
            ready: Vec::new(),
            timers: Vec::new(),
            helpers,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        })
    }

    /// The state of `fd`, registered (non-blocking, edge-triggered) if new.
    fn track(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, FdState::default);
        }
        let epfd = self.epfd.as_raw_fd();
        let st = &mut self.fds[i];
        if !st.registered {
            // SAFETY: fcntl and epoll_ctl on a descriptor the worker keeps
            // open while it has ops on it; failures surface as the op's
            // error when it is tried.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET)
                        as u32,
                    u64: fd as u64,
                };
                libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev);
            }
            *st = FdState {
                registered: true,
                readable: true,
                writable: true,
                ..FdState::default()
            };
        }
        st
    }

    fn schedule(&mut self, fd: RawFd) {
        let st = &mut self.fds[fd as usize];
        if !st.queued {
            st.queued = true;
            self.to_try.push(fd);
        }
    }

    fn complete(&mut self, user_data: u64, result: i32, more: bool) {
        self.ready.push(Completion {
            user_data,
            result,
            more,
        });
    }

    /// Runs what `fd` waits for, as far as its readiness allows.
    fn try_fd(&mut self, fd: RawFd) {
        let st = &mut self.fds[fd as usize];
        st.queued = false;
        if st.readable {
            if let Some((user_data, op)) = st.read {
                self.try_read(fd, user_data, op);
            }
        }
        let st = &mut self.fds[fd as usize];
        if st.writable {
            if let Some((user_data, WriteOp::Send { msg, cold })) = st.write {
                if cold {
                    st.write = None;
                    let write_edges = st.write_edges;
                    self.helpers.submit(Job::Send {
                        user_data,
                        fd,
                        msg,
                        write_edges,
                    });
                } else {
                    // SAFETY: `msg` lives until this op completes (`push`).
                    let n =
                        unsafe { libc::sendmsg(fd, msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
                    let result = result_of(n as isize);
                    if result == -libc::EAGAIN {
                        st.writable = false;
                    } else {
                        // SAFETY: as above; the iovecs are the caller's.
                        if n >= 0 && (n as usize) < unsafe { msg_len(msg) } {
                            st.writable = false;
                        }
                        st.write = None;
                        self.complete(user_data, result, false);
                    }
                }
            }
        }
    }

    fn try_read(&mut self, fd: RawFd, user_data: u64, op: ReadOp) {
        match op {
            ReadOp::Accept => {
                for _ in 0..ACCEPT_BATCH {
                    // SAFETY: accept4 without an address buffer.
                    let conn = unsafe {
                        libc::accept4(
                            fd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if conn >= 0 {
                        self.complete(user_data, conn, true);
                        continue;
                    }
                    let err = io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    match err {
                        libc::EAGAIN => {
                            self.fds[fd as usize].readable = false;
                            return;
                        }
                        // The peer gave up before we took it: take the next.
                        libc::ECONNABORTED | libc::EINTR => continue,
                        // Out of descriptors or memory: the accept ends, as
                        // a multishot accept does; the worker re-arms it.
                        _ => {
                            self.fds[fd as usize].read = None;
                            self.complete(user_data, -err, false);
                            return;
                        }
                    }
                }
                // A full batch: more may wait; others go first.
                self.schedule(fd);
            }
            ReadOp::Recv { buf, len } | ReadOp::Read { buf, len } => {
                // SAFETY: `buf[..len]` is lent to this op until it completes
                // (`push`).
                let n = unsafe {
                    match op {
                        ReadOp::Recv { .. } => {
                            libc::recv(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT)
                        }
                        _ => libc::read(fd, buf.cast(), len as usize),
                    }
                };
                let result = result_of(n);
                let st = &mut self.fds[fd as usize];
                if result == -libc::EAGAIN {
                    st.readable = false;
                    return;
                }
                // Fewer bytes than asked: the queue was drained, unless the
                // peer's FIN waits behind them (it makes no edge of its own).
                if n > 0 && (n as usize) < len as usize && !st.peer_closed {
                    st.readable = false;
                }
                st.read = None;
                self.complete(user_data, result, false);
            }
        }
    }

    /// A connecting socket became writable or failed.
    fn finish_connect(&mut self, fd: RawFd, user_data: u64) {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one c_int into `err`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        let result = if r < 0 { result_of(-1) } else { -err };
        self.fds[fd as usize].write = None;
        self.complete(user_data, result, false);
    }

    fn take_helpers_done(&mut self) {
        for done in self.helpers.take_done() {
            match done.retry {
                Some((fd, msg, edges_then)) => {
                    let user_data = done.completion.user_data;
                    let st = &mut self.fds[fd as usize];
                    st.write = Some((user_data, WriteOp::Send { msg, cold: true }));
                    if st.write_edges == edges_then {
                        st.writable = false;
                    } else {
                        self.schedule(fd);
                    }
                }
                None => self.ready.push(done.completion),
            }
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.timers.len() {
            if self.timers[i].0 <= now {
                let (_, user_data) = self.timers.swap_remove(i);
                self.complete(user_data, -libc::ETIME, false);
            } else {
                i += 1;
            }
        }
    }

    /// One `epoll_wait` of at most `timeout_ms`, and what its events allow.
    fn poll(&mut self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: `events` has room for `len` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let (bits, data) = (ev.events, ev.u64);
            if data == HELPERS_DONE {
                self.take_helpers_done();
                continue;
            }
            let fd = data as RawFd;
            let Some(st) = self.fds.get_mut(fd as usize).filter(|s| s.registered) else {
                continue;
            };
            let hup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
            if bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | hup != 0 {
                st.readable = true;
            }
            if bits & libc::EPOLLRDHUP as u32 | hup != 0 {
                st.peer_closed = true;
            }
            if bits & libc::EPOLLOUT as u32 | hup != 0 {
                st.writable = true;
                st.write_edges = st.write_edges.wrapping_add(1);
                if let Some((user_data, WriteOp::Connect)) = st.write {
                    self.finish_connect(fd, user_data);
                }
            }
            self.try_fd(fd);
        }
        Ok(())
    }
}

impl Backend for Epoll {
    unsafe fn push(&mut self, op: Op, user_data: u64) {
        match op {
            Op::Accept { listener } => {
                self.track(listener).read = Some((user_data, ReadOp::Accept));
                self.schedule(listener);
            }
            Op::Recv { fd, buf, len } => {
                self.track(fd).read = Some((user_data, ReadOp::Recv { buf, len }));
                self.schedule(fd);
            }
            Op::Read { fd, buf, len } => {
                self.track(fd).read = Some((user_data, ReadOp::Read { buf, len }));
                self.schedule(fd);
            }
            Op::SendMsg { fd, msg, cold } => {
                self.track(fd).write = Some((user_data, WriteOp::Send { msg, cold }));
                self.schedule(fd);
            }
            Op::Connect { fd, addr, len } => {
                self.track(fd);
                // SAFETY: `addr[..len]` lives until this op completes.
                let r = unsafe { libc::connect(fd, addr, len) };
                let result = result_of(r as isize);
                if result == -libc::EINPROGRESS {
                    let st = &mut self.fds[fd as usize];
                    st.writable = false;
                    st.write = Some((user_data, WriteOp::Connect));
                } else {
                    self.complete(user_data, result, false);
                }
            }
            Op::Write {
                fd,
                buf,
                len,
                offset,
            } => self.helpers.submit(Job::Write {
                user_data,
                fd,
                buf,
                len,
                offset,
            }),
            // Regular files are always "ready" to epoll: a read that may wait
            // for the disk goes to a helper.
            Op::ReadAt {
                fd,
                buf,
                len,
                offset,
            } => self.helpers.submit(Job::ReadAt {
                user_data,
                fd,
                buf,
                len,
                offset,
            }),
            Op::Timeout { after } => self.timers.push((Instant::now() + after, user_data)),
            Op::Cancel { target, fd } => {
                let mut found = false;
                if let Some(st) = self.fds.get_mut(fd as usize) {
                    if st.read.is_some_and(|(d, _)| d == target) {
                        st.read = None;
                        found = true;
                    }
                    if st.write.is_some_and(|(d, _)| d == target) {
                        st.write = None;
                        found = true;
                    }
                }
                if found {
                    self.complete(target, -libc::ECANCELED, false);
                }
                let result = if found { 0 } else { -libc::ENOENT };
                self.complete(user_data, result, false);
            }
        }
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> io::Result<()> {
        loop {
            for fd in std::mem::take(&mut self.to_try) {
                if self.fds[fd as usize].queued {
                    self.try_fd(fd);
                }
            }
            let now = Instant::now();
            self.expire_timers(now);
            let timeout_ms = if !block || !self.ready.is_empty() || !self.to_try.is_empty() {
                0
            } else {
                self.timers
                    .iter()
                    .map(|(at, _)| {
                        let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                        ms.min(i32::MAX as u128) as i32
                    })
                    .min()
                    .unwrap_or(-1)
            };
            self.poll(timeout_ms)?;
            self.expire_timers(Instant::now());
            out.append(&mut self.ready);
            if !block || !out.is_empty() {
                return Ok(());
            }
        }
    }

    fn forget_fd(&mut self, fd: RawFd) {
        if let Some(st) = self.fds.get_mut(fd as usize) {
            if st.registered {
                debug_assert!(st.read.is_none() && st.write.is_none());
                // SAFETY: removes a descriptor the worker still has open.
                unsafe {
                    libc::epoll_ctl(
                        self.epfd.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        fd,
                        std::ptr::null_mut(),
                    )
                };
            }
            *st = FdState::default();
        }
    }

    fn cancel_all_and_wait(&mut self, in_flight: usize) -> usize {
        let mut left = in_flight;
        for st in &mut self.fds {
            left = left.saturating_sub(usize::from(st.read.take().is_some()));
            left = left.saturating_sub(usize::from(st.write.take().is_some()));
        }
        left = left.saturating_sub(self.timers.len());
        self.timers.clear();
        left = left.saturating_sub(self.ready.drain(..).filter(|c| !c.more).count());
        // Helpers finish what they have; a cold send that found its socket
        // full ends here instead of waiting for an edge.
        while self.helpers.busy > 0 {
            let mut pfd = libc::pollfd {
                fd: self.helpers.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, -1) } < 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
            {
                break;
            }
            left = left.saturating_sub(self.helpers.take_done().len());
        }
        left
    }
}

/// Bytes described by `msg`'s iovecs.
///
/// # Safety
/// `msg` points to a valid msghdr whose `msg_iov[..msg_iovlen]` is valid.
unsafe fn msg_len(msg: *const libc::msghdr) -> usize {
    // SAFETY: the caller's contract.
    let msg = unsafe { &*msg };
    if msg.msg_iovlen == 0 {
        return 0;
    }
    // SAFETY: the caller's contract.
    let iov = unsafe { std::slice::from_raw_parts(msg.msg_iov, msg.msg_iovlen as _) };
    iov.iter().map(|v| v.iov_len).sum()
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
