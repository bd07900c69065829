//! One peer connection owned by a worker: its receive buffer, its session,
//! and the send in flight.
//!
//! # Buffers lent to the kernel
//!
//! While a receive is in flight the kernel writes into `recv.buf`; while a
//! send is in flight it reads `send.msg`, `send.iov`, the headers and control
//! bytes they point to, and the torrent's mapping. The rule, checked by the
//! `*_in_flight` flags: none of these is moved, resized or freed while its
//! operation is in flight, and a connection is only dropped when neither
//! operation is (see `Worker::close`). An outgoing connect reads
//! `connect_to` until it completes. Heap buffers (`Vec`, `Box`) keep their
//! address when the `Conn` itself moves inside the slab.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::io::storage::Torrent;
use crate::policy::peer_session::PeerSession;
use crate::proto::info_hash::InfoHash;
use crate::proto::wire::PIECE_HEADER_LEN;

/// Receive buffer size of a new connection: a handshake and a burst of
/// requests. It grows (up to the frame limit) only for a larger message.
pub const INITIAL_RECV_BUF: usize = 4096;

/// Before the handshake, and after.
pub enum Phase {
    /// Waiting for the peer's 68-byte handshake.
    Handshake,
    /// Serving a torrent.
    Active {
        /// The torrent, kept alive by this connection.
        torrent: Arc<Torrent>,
        /// The protocol state.
        session: Box<PeerSession>,
    },
}

/// The receive side.
pub struct RecvBuf {
    /// Bytes received live in `buf[..len]`.
    pub buf: Vec<u8>,
    /// Filled length.
    pub len: usize,
    /// A receive op owns `buf[len..]`.
    pub in_flight: bool,
}

/// The send side: one vectored send at a time.
pub struct SendBuf {
    /// The msghdr the kernel reads; points at `iov`.
    pub msg: Box<libc::msghdr>,
    /// The iovecs not yet sent.
    pub iov: Vec<libc::iovec>,
    /// Control messages (handshake, choke, rejects...) of this send.
    pub control: Vec<u8>,
    /// Piece headers of the blocks of this send.
    pub headers: Vec<[u8; PIECE_HEADER_LEN]>,
    /// Keeps the mapping of the blocks alive while the send is in flight,
    /// even if the torrent is removed meanwhile.
    pub torrent: Option<Arc<Torrent>>,
    /// Bytes of this send not yet confirmed.
    pub remaining: usize,
    /// Blocks in this send, counted when it completes.
    pub blocks: u64,
    /// Some block's pages were not in the page cache: the send (and its
    /// resubmissions after a short send) runs in io-wq.
    pub cold: bool,
    /// A send op is in flight.
    pub in_flight: bool,
}

impl SendBuf {
    fn new() -> Self {
        // SAFETY: msghdr is a plain C struct; all-zero is its empty value.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        SendBuf {
            msg: Box::new(msg),
            iov: Vec::new(),
            control: Vec::new(),
            headers: Vec::new(),
            torrent: None,
            remaining: 0,
            blocks: 0,
            cold: false,
            in_flight: false,
        }
    }

    /// Clears a completed send.
    pub fn reset(&mut self) {
        debug_assert!(!self.in_flight);
        self.iov.clear();
        self.control.clear();
        self.headers.clear();
        self.torrent = None;
        self.remaining = 0;
        self.blocks = 0;
        self.cold = false;
    }

    /// Points the msghdr at the iovecs; call after filling them and before
    /// submitting.
    pub fn prepare(&mut self) {
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
    }

    /// Drops `n` confirmed bytes from the front of the iovecs (a partial
    /// send), ready to send the rest.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(!self.in_flight);
        self.remaining -= n;
        advance_iovecs(&mut self.iov, n);
    }
}

/// Drops the first `n` bytes described by `iov` (after a short send).
pub fn advance_iovecs(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut done = 0;
    for v in iov.iter_mut() {
        if n < v.iov_len {
            // SAFETY: `n < iov_len`, so the pointer stays inside the buffer
            // this iovec describes.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
        n -= v.iov_len;
        done += 1;
    }
    iov.drain(..done);
}

/// A connection.
pub struct Conn {
    /// The socket.
    pub fd: OwnedFd,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub generation: u32,
    /// The peer's address.
    pub addr: SocketAddr,
    /// Handshake or active.
    pub phase: Phase,
    /// Receive side.
    pub recv: RecvBuf,
    /// Send side.
    pub send: SendBuf,
    /// Set once the connection is being closed: no new ops are started.
    pub closing: bool,
    /// Last time the peer sent anything.
    pub last_heard: Duration,
    /// Last time we sent anything.
    pub last_sent: Duration,
    /// Bytes of blocks served since the last unchoke (for the choker).
    pub served_since_unchoke: u64,
    /// Last choke or unchoke.
    pub choke_changed: Duration,
    /// For a connection we opened: the torrent we dialed the peer for.
    pub outgoing: Option<InfoHash>,
    /// For a connection we are opening: the address the connect op reads.
    pub connect_to: Option<Box<socket2::SockAddr>>,
    /// A connect op is in flight.
    pub connect_in_flight: bool,
    /// (piece, start, end) of the last read-ahead started for this peer, so
    /// the following blocks of that range do not start it again.
    pub prefetched: Option<(u32, u32, u32)>,
}

impl Conn {
    /// A new connection, waiting for the handshake.
    pub fn new(fd: OwnedFd, generation: u32, addr: SocketAddr, now: Duration) -> Self {
        Conn {
            fd,
            generation,
            addr,
            phase: Phase::Handshake,
            recv: RecvBuf {
                buf: vec![0; INITIAL_RECV_BUF],
                len: 0,
                in_flight: false,
            },
            send: SendBuf::new(),
            closing: false,
            last_heard: now,
            last_sent: now,
            served_since_unchoke: 0,
            choke_changed: now,
            prefetched: None,
            outgoing: None,
            connect_to: None,
            connect_in_flight: false,
        }
    }

    /// Whether an op of this connection is still with the kernel.
    pub fn has_ops_in_flight(&self) -> bool {
        self.recv.in_flight || self.send.in_flight || self.connect_in_flight
    }

    /// The torrent served, once past the handshake.
    pub fn torrent(&self) -> Option<&Arc<Torrent>> {
        match &self.phase {
            Phase::Active { torrent, .. } => Some(torrent),
            Phase::Handshake => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_and_partial_iovecs() {
        let a = [1u8; 10];
        let b = [2u8; 20];
        let mut s = SendBuf::new();
        s.iov = vec![
            libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: 20,
            },
        ];
        s.remaining = 30;
        s.advance(15);
        assert_eq!(s.iov.len(), 1);
        assert_eq!(s.iov[0].iov_len, 15);
        assert_eq!(s.iov[0].iov_base as usize, b.as_ptr() as usize + 5);
        assert_eq!(s.remaining, 15);
        s.advance(15);
        assert!(s.iov.is_empty());
    }
}
