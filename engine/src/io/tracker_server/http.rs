//! The HTTP tracker: one event loop per worker thread on the data plane's
//! [`Backend`] (io_uring, or epoll where io_uring is blocked), so a client
//! that is slow or silent holds one slot of many, never the thread. Each
//! connection gets one request, one reply and [`REQUEST_DEADLINE`] for both;
//! when the slots run out the oldest connection goes, since a real client's
//! request takes a round trip, not seconds.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use slab::Slab;

use super::State;
use crate::io::net::peer_addr;
use crate::io::plane::epoll::Epoll;
use crate::io::plane::uring::Uring;
use crate::io::plane::{Backend, Completion, Op, PlaneKind, UserData};
use crate::policy::swarm::PeerRequest;
use crate::proto::bencode::OwnedValue;
use crate::proto::info_hash::InfoHash;
use crate::proto::tracker::{write_compact_peers, Event, ScrapeStats};

/// Largest HTTP request we read.
const MAX_HTTP_REQUEST: usize = 8192;
/// Time a client has from its connection to the last byte of our reply. A
/// real announce is one packet each way; 3 s leaves room for two lost
/// packets (TCP's first retransmission waits 1 s).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// How often deadlines are checked (and a failed accept re-armed).
const TICK: Duration = Duration::from_millis(100);

/// Serves `listener` on a backend of `kind` made on this thread, keeping at
/// most `cap` connections open; runs for the life of the process.
pub(super) fn serve(kind: PlaneKind, listener: TcpListener, state: Arc<State>, cap: usize) {
    let cap = cap.max(1);
    let result = match kind {
        PlaneKind::Uring => {
            let entries = (cap * 2 + 64).next_power_of_two().clamp(256, 32768) as u32;
            Uring::new(entries).and_then(|b| HttpLoop::new(b, listener, state, cap).run())
        }
        PlaneKind::Epoll => Epoll::new().and_then(|b| HttpLoop::new(b, listener, state, cap).run()),
    };
    if let Err(e) = result {
        tracing::error!("HTTP tracker worker stopped: {e}");
    }
}

/// One client connection.
struct HttpConn {
    fd: OwnedFd,
    from: SocketAddr,
    generation: u32,
    opened: Instant,
    request: Box<[u8]>,
    received: usize,
    reply: Vec<u8>,
    sent: usize,
    /// The send's iovec and header, boxed so the kernel's pointers stay
    /// put while the slab moves.
    iov: Box<libc::iovec>,
    msg: Box<libc::msghdr>,
    /// Ops in flight (a receive or a send, never both).
    ops: u8,
    closing: bool,
}

struct HttpLoop<B: Backend> {
    backend: B,
    listener: TcpListener,
    state: Arc<State>,
    conns: Slab<HttpConn>,
    /// `(key, generation)` in accept order: the front is the oldest, so the
    /// first to pass its deadline and the first to go when full. Entries of
    /// closed connections are skipped when met.
    order: VecDeque<(usize, u32)>,
    /// Connections open and not closing.
    live: usize,
    cap: usize,
    accept_armed: bool,
    next_generation: u32,
}

impl<B: Backend> HttpLoop<B> {
    fn new(backend: B, listener: TcpListener, state: Arc<State>, cap: usize) -> Self {
        HttpLoop {
            backend,
            listener,
            state,
            conns: Slab::new(),
            order: VecDeque::new(),
            live: 0,
            cap,
            accept_armed: false,
            next_generation: 0,
        }
    }

    /// Hands an op to the backend.
    ///
    /// # Safety
    ///
    /// As [`Backend::push`]. Every op of this loop points into a connection's
    /// boxed request buffer or its reply, iovec and header, none of which
    /// is moved, resized or freed while `ops` counts an op in flight: a
    /// connection leaves the slab only at `ops == 0`, and the loop runs for
    /// the life of the process; on a backend error it returns leaking every
    /// buffer (`mem::forget`), since ops may still be in flight.
    unsafe fn push(&mut self, op: Op, data: UserData) {
        // SAFETY: the caller's contract, which is `Backend::push`'s.
        unsafe { self.backend.push(op, data.pack()) };
    }

    fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_tick();
        let mut completions: Vec<Completion> = Vec::with_capacity(256);
        loop {
            completions.clear();
            if let Err(e) = self.backend.wait(&mut completions, true) {
                // Ops may still be in flight in the kernel: their buffers
                // must never be freed. This loop ends only here, once.
                std::mem::forget(self);
                return Err(e);
            }
            for c in &completions {
                match UserData::unpack(c.user_data) {
                    UserData::Accept => self.on_accept(c.result, c.more),
                    UserData::Recv { key, generation } => {
                        if let Some(key) = self.op_done(key, generation) {
                            self.on_recv(key, c.result);
                        }
                    }
                    UserData::Send { key, generation } => {
                        if let Some(key) = self.op_done(key, generation) {
                            self.on_sent(key, c.result);
                        }
                    }
                    UserData::Tick => self.on_tick(),
                    _ => {}
                }
            }
        }
    }

    fn arm_accept(&mut self) {
        let listener = self.listener.as_raw_fd();
        // SAFETY: an accept points to nothing of ours; the listener lives as
        // long as the loop.
        unsafe { self.push(Op::Accept { listener }, UserData::Accept) };
        self.accept_armed = true;
    }

    fn arm_tick(&mut self) {
        // SAFETY: a timeout points to nothing of ours.
        unsafe { self.push(Op::Timeout { after: TICK }, UserData::Tick) };
    }

    fn on_tick(&mut self) {
        self.arm_tick();
        if !self.accept_armed {
            self.arm_accept();
        }
        let now = Instant::now();
        while let Some(&(key, generation)) = self.order.front() {
            match self.conns.get(key) {
                Some(c) if c.generation == generation && !c.closing => {
                    if now.duration_since(c.opened) < REQUEST_DEADLINE {
                        break;
                    }
                    self.state
                        .counters
                        .timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    self.close(key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    fn on_accept(&mut self, result: i32, more: bool) {
        if !more {
            // Re-armed at the next tick: after EMFILE or ENOMEM, at once
            // would spin.
            self.accept_armed = false;
        }
        if result < 0 {
            return;
        }
        // SAFETY: a successful accept returns a new descriptor nothing else
        // owns.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        let Some(from) = peer_addr(&fd) else { return };
        if self.live >= self.cap {
            self.evict_oldest();
        }
        let generation = self.next_generation;
        self.next_generation = (generation + 1) & 0x00ff_ffff;
        let key = self.conns.insert(HttpConn {
            fd,
            from,
            generation,
            opened: Instant::now(),
            request: vec![0; MAX_HTTP_REQUEST].into_boxed_slice(),
            received: 0,
            reply: Vec::new(),
            sent: 0,
            iov: Box::new(libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }),
            // SAFETY: msghdr is plain data; all zeroes is an empty message.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            ops: 0,
            closing: false,
        });
        self.live += 1;
        self.order.push_back((key, generation));
        self.arm_recv(key);
    }

    /// Closes the oldest open connection to make room: with every slot
    /// taken, it is the one most likely to be slow on purpose.
    fn evict_oldest(&mut self) {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == generation && !c.closing)
            {
                self.state
                    .counters
                    .timed_out
                    .fetch_add(1, Ordering::Relaxed);
                self.close(key);
                return;
            }
        }
    }

    /// An op of `key` completed: the connection's key if it is still the
    /// one the op was for and not closing (a closing one is freed here once
    /// its last op is back).
    fn op_done(&mut self, key: u32, generation: u32) -> Option<usize> {
        let key = key as usize;
        let conn = self.conns.get_mut(key)?;
        if conn.generation != generation {
            return None;
        }
        conn.ops -= 1;
        if conn.closing {
            self.close(key);
            return None;
        }
        Some(key)
    }

    fn arm_recv(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let room = &mut conn.request[conn.received..];
        let op = Op::Recv {
            fd: conn.fd.as_raw_fd(),
            buf: room.as_mut_ptr(),
            len: room.len() as u32,
        };
        conn.ops += 1;
        let data = UserData::Recv {
            key: key as u32,
            generation: conn.generation,
        };
        // SAFETY: into the connection's boxed request buffer, past what was
        // received; see `push`.
        unsafe { self.push(op, data) };
    }

    fn on_recv(&mut self, key: usize, result: i32) {
        if result <= 0 {
            self.close(key);
            return;
        }
        let conn = &mut self.conns[key];
        conn.received += result as usize;
        match respond_to(&conn.request[..conn.received], conn.from, &self.state) {
            Some(reply) => {
                conn.reply = reply;
                self.arm_send(key);
            }
            None => self.arm_recv(key),
        }
    }

    fn arm_send(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let rest = &mut conn.reply[conn.sent..];
        *conn.iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        conn.msg.msg_iov = &mut *conn.iov;
        conn.msg.msg_iovlen = 1;
        let op = Op::SendMsg {
            fd: conn.fd.as_raw_fd(),
            msg: &*conn.msg,
            cold: false,
        };
        conn.ops += 1;
        let data = UserData::Send {
            key: key as u32,
            generation: conn.generation,
        };
        // SAFETY: the header, iovec and reply are the connection's and stay
        // put until the send completes; see `push`.
        unsafe { self.push(op, data) };
    }

    fn on_sent(&mut self, key: usize, result: i32) {
        if result <= 0 {
            self.close(key);
            return;
        }
        let conn = &mut self.conns[key];
        conn.sent += result as usize;
        if conn.sent < conn.reply.len() {
            self.arm_send(key);
        } else {
            // One request per connection (`Connection: close`).
            self.close(key);
        }
    }

    /// Closes `key` now if it has no op in flight, else shuts the socket
    /// down so its op completes soon and frees it then (`op_done`).
    fn close(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.closing {
            conn.closing = true;
            self.live -= 1;
        }
        if conn.ops > 0 {
            // SAFETY: shutting down a socket we own; its op completes with
            // an error or 0, and its buffers live until then.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
            return;
        }
        let conn = self.conns.remove(key);
        self.backend.forget_fd(conn.fd.as_raw_fd());
        // Dropping `conn` closes the socket.
    }
}

/// The whole HTTP response to `request` once it is complete (or cannot
/// become valid), `None` while more bytes may complete it.
fn respond_to(request: &[u8], from: SocketAddr, state: &State) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let path = match parsed.parse(request) {
        Ok(httparse::Status::Complete(_)) => parsed.path.unwrap_or("/"),
        Ok(httparse::Status::Partial) if request.len() < MAX_HTTP_REQUEST => return None,
        Ok(httparse::Status::Partial) => {
            state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return Some(response("431 Request Header Fields Too Large", b""));
        }
        Err(_) => {
            state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return Some(response("400 Bad Request", b""));
        }
    };
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    Some(match route {
        "/announce" => response("200 OK", &announce(query, from, state)),
        "/scrape" => response("200 OK", &scrape(query, state)),
        "/stats" => response("200 OK", stats(state).as_bytes()),
        _ => response("404 Not Found", b""),
    })
}

fn response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The counters and table sizes, as JSON.
fn stats(state: &State) -> String {
    let c = &state.counters;
    let (swarms, peers) = state.shards.iter().fold((0, 0), |(s, p), shard| {
        let (s2, p2) = shard.lock().unwrap_or_else(|e| e.into_inner()).size();
        (s + s2, p + p2)
    });
    format!(
        "{{\"announces\":{},\"scrapes\":{},\"connects\":{},\"refused\":{},\"malformed\":{},\"timed_out\":{},\"swarms\":{swarms},\"peers\":{peers}}}\n",
        c.announces.load(Ordering::Relaxed),
        c.scrapes.load(Ordering::Relaxed),
        c.connects.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.malformed.load(Ordering::Relaxed),
        c.timed_out.load(Ordering::Relaxed),
    )
}

/// The query parameters, percent-decoded to bytes; repeated keys kept.
fn query_params(query: &str) -> Vec<(&str, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k, percent_decode_str(v).collect())
        })
        .collect()
}

fn failure(reason: &str) -> Vec<u8> {
    let mut d = OwnedValue::dict();
    d.insert("failure reason", OwnedValue::bytes(reason));
    d.to_bytes()
}

fn announce(query: &str, from: SocketAddr, state: &State) -> Vec<u8> {
    let params = query_params(query);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_slice())
    };
    let number = |k: &str| -> Option<u64> { std::str::from_utf8(get(k)?).ok()?.parse().ok() };
    let info_hash = get("info_hash").and_then(|v| <[u8; 20]>::try_from(v).ok());
    let (Some(info_hash), Some(port), Some(left)) = (info_hash, number("port"), number("left"))
    else {
        state.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return failure("missing or malformed info_hash, port or left");
    };
    let Ok(port) = u16::try_from(port) else {
        state.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return failure("port out of range");
    };
    let info_hash = InfoHash(info_hash);
    if !state.tracked(&info_hash) {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
        return failure("torrent not tracked here");
    }
    let event = match get("event") {
        Some(b"started") => Event::Started,
        Some(b"completed") => Event::Completed,
        Some(b"stopped") => Event::Stopped,
        _ => Event::None,
    };
    state.counters.announces.fetch_add(1, Ordering::Relaxed);
    let peer = SocketAddr::new(from.ip(), port);
    let outcome = state.shard(&info_hash).announce(
        info_hash,
        peer,
        event,
        left,
        PeerRequest {
            numwant: number("numwant").map(|n| n as usize),
            ipv6: None,
            start: state.random_start(from),
        },
        state.now(),
    );
    let mut reply = OwnedValue::dict();
    reply.insert("interval", OwnedValue::Int(state.interval.as_secs() as i64));
    reply.insert(
        "min interval",
        OwnedValue::Int((state.interval.as_secs() / 2) as i64),
    );
    reply.insert("complete", OwnedValue::Int(i64::from(outcome.complete)));
    reply.insert("incomplete", OwnedValue::Int(i64::from(outcome.incomplete)));
    if get("compact") == Some(b"0") {
        let list = outcome
            .peers
            .iter()
            .map(|p| {
                let mut d = OwnedValue::dict();
                d.insert("ip", OwnedValue::bytes(p.ip().to_string()));
                d.insert("port", OwnedValue::Int(i64::from(p.port())));
                d
            })
            .collect();
        reply.insert("peers", OwnedValue::List(list));
    } else {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        write_compact_peers(&outcome.peers, &mut v4, &mut v6);
        reply.insert("peers", OwnedValue::Bytes(v4));
        if !v6.is_empty() {
            reply.insert("peers6", OwnedValue::Bytes(v6));
        }
    }
    reply.to_bytes()
}

fn scrape(query: &str, state: &State) -> Vec<u8> {
    let mut files = OwnedValue::dict();
    let mut count = 0;
    for (key, value) in query_params(query) {
        if key != "info_hash" {
            continue;
        }
        let Ok(hash) = <[u8; 20]>::try_from(value.as_slice()) else {
            state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return failure("malformed info_hash");
        };
        let h = InfoHash(hash);
        let ScrapeStats {
            complete,
            downloaded,
            incomplete,
        } = state.shard(&h).scrape(&h);
        let mut d = OwnedValue::dict();
        d.insert("complete", OwnedValue::Int(i64::from(complete)));
        d.insert("downloaded", OwnedValue::Int(i64::from(downloaded)));
        d.insert("incomplete", OwnedValue::Int(i64::from(incomplete)));
        if let OwnedValue::Dict(entries) = &mut files {
            entries.insert(hash.to_vec(), d);
        }
        count += 1;
        if count == 100 {
            break;
        }
    }
    state.counters.scrapes.fetch_add(1, Ordering::Relaxed);
    let mut reply = OwnedValue::dict();
    reply.insert("files", files);
    reply.to_bytes()
}
