//! One connection owned by a worker: its socket, its transport, its
//! receive buffer and the send in flight, around the transport-free
//! [`PeerConnection`].
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

use std::os::fd::OwnedFd;

use super::peer::{PeerConnection, SendPlan};
use super::transport::Transport;
use crate::io::storage::FileSegment;
use crate::proto::mse::Cipher;
use crate::proto::wire::{self, PIECE_HEADER_LEN};

/// Receive buffer size of a new connection: a handshake and a burst of
/// requests. It grows (up to the frame limit) only for a larger message.
pub const INITIAL_RECV_BUF: usize = 4096;

/// The receive side.
pub struct RecvBuf {
    /// Bytes received live in `buf[..len]`.
    pub(super) buf: Vec<u8>,
    /// Filled length.
    pub(super) len: usize,
    /// A receive op owns `buf[len..]`.
    pub(super) in_flight: bool,
}

impl RecvBuf {
    /// Drops the first `consumed` bytes (handled), keeping the rest at the
    /// front, and grows the buffer to `need` if the next frame is larger.
    pub fn consume(&mut self, consumed: usize, need: usize) {
        debug_assert!(!self.in_flight);
        self.buf.copy_within(consumed..self.len, 0);
        self.len -= consumed;
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
    }
}

/// The send side: one vectored send at a time.
pub struct SendBuf {
    /// The msghdr the kernel reads; points at `iov`.
    pub(super) msg: Box<libc::msghdr>,
    /// The iovecs not yet sent.
    pub(super) iov: Vec<libc::iovec>,
    /// Piece headers of the blocks of this send.
    pub(super) headers: Vec<[u8; PIECE_HEADER_LEN]>,
    /// What this send carries; its torrent keeps the mapping alive while
    /// the send is in flight, even if the torrent is removed meanwhile.
    pub(super) plan: SendPlan,
    /// Bytes of this send not yet confirmed.
    pub(super) remaining: usize,
    /// A send op is in flight.
    pub(super) in_flight: bool,
    /// The bytes of the plan's copied blocks, one after another, in
    /// `copy[..total]`; grown before a send's first read (never resized
    /// while a read writes into it), kept from send to send while the
    /// connection is busy and freed when it goes idle (`release_copy`).
    pub(super) copy: Vec<u8>,
    /// Reads still to do into `copy`: (fd, file offset, offset in `copy`,
    /// length); the last is done first.
    pub(super) reads: Vec<FileSegment>,
    /// The file of the read in flight, held open until it completes.
    pub(super) reading_file: Option<std::sync::Arc<std::fs::File>>,
    /// A read into `copy` is in flight.
    pub(super) reading: bool,
}

impl SendBuf {
    pub(super) fn new() -> Self {
        // SAFETY: msghdr is a plain C struct; all-zero is its empty value.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        SendBuf {
            msg: Box::new(msg),
            iov: Vec::new(),
            headers: Vec::new(),
            plan: SendPlan::default(),
            remaining: 0,
            in_flight: false,
            copy: Vec::new(),
            reads: Vec::new(),
            reading_file: None,
            reading: false,
        }
    }

    /// Clears a completed send.
    pub fn reset(&mut self) {
        debug_assert!(!self.in_flight && !self.reading);
        self.iov.clear();
        self.headers.clear();
        self.plan.clear();
        // `copy` keeps its bytes: the next send overwrites what it uses,
        // without zeroing it first.
        self.reads.clear();
        self.remaining = 0;
    }

    /// Lists the reads that copy the plan's copied blocks into `copy`
    /// (sized for them now), one per run of bytes contiguous in a file and
    /// in `copy` (a peer's consecutive blocks are one read); `false` if a
    /// block's file is gone.
    pub fn plan_reads(&mut self) -> bool {
        let Some(torrent) = self.plan.torrent.clone() else {
            return true;
        };
        let total: usize = self
            .plan
            .blocks
            .iter()
            .zip(&self.plan.copied)
            .filter(|(_, &c)| c)
            .map(|(b, _)| b.length as usize)
            .sum();
        // Reused from the last send; only growth is zeroed. Reads fill
        // `copy[..total]` before it is sent, except the bytes of pad files,
        // which are zeros on no disk: those are zeroed below.
        if self.copy.len() < total {
            self.copy.resize(total, 0);
        }
        let mut at = 0;
        for (req, _) in self
            .plan
            .blocks
            .iter()
            .zip(&self.plan.copied)
            .filter(|(_, &c)| c)
        {
            let Some(reads) = torrent.block_reads(req) else {
                return false;
            };
            let len = req.length as usize;
            if reads.iter().map(|seg| seg.len).sum::<usize>() < len {
                self.copy[at..at + len].fill(0);
            }
            for seg in reads {
                let seg = FileSegment {
                    at: at + seg.at,
                    ..seg
                };
                match self.reads.last_mut() {
                    Some(last)
                        if last.file == seg.file
                            && last.file_offset + last.len as u64 == seg.file_offset
                            && last.at + last.len == seg.at =>
                    {
                        last.len += seg.len;
                    }
                    _ => self.reads.push(seg),
                }
            }
            at += len;
        }
        self.reads.reverse();
        true
    }

    /// Frees the copy buffer (the connection has nothing to send).
    pub fn release_copy(&mut self) {
        debug_assert!(!self.in_flight && !self.reading);
        self.copy = Vec::new();
    }

    /// Lays the plan out as iovecs: the control bytes, then for each block
    /// its 13-byte header and iovecs into the mapping, or its bytes in
    /// `copy`.
    pub(super) fn render_iovecs(&mut self) {
        debug_assert!(!self.in_flight && self.iov.is_empty());
        if !self.plan.control.is_empty() {
            self.iov.push(libc::iovec {
                iov_base: self.plan.control.as_mut_ptr().cast(),
                iov_len: self.plan.control.len(),
            });
        }
        self.headers.extend(
            self.plan
                .blocks
                .iter()
                .map(|r| wire::piece_header(r.piece, r.offset, r.length)),
        );
        if let Some(torrent) = &self.plan.torrent {
            // `headers` and `copy` are final: pointers into them stay valid.
            let mut copied_at = 0;
            for ((req, header), &copied) in self
                .plan
                .blocks
                .iter()
                .zip(&self.headers)
                .zip(&self.plan.copied)
            {
                self.iov.push(libc::iovec {
                    iov_base: header.as_ptr() as *mut libc::c_void,
                    iov_len: PIECE_HEADER_LEN,
                });
                if copied {
                    let len = req.length as usize;
                    self.iov.push(libc::iovec {
                        iov_base: self.copy[copied_at..].as_mut_ptr().cast(),
                        iov_len: len,
                    });
                    copied_at += len;
                } else {
                    torrent.block_iovecs(req, &mut self.iov);
                }
            }
        }
        self.remaining = self.iov.iter().map(|v| v.iov_len).sum();
    }

    /// Encrypts what `render_iovecs` laid out, in the order it leaves:
    /// every block must have been copied (none points into a mapping).
    pub(super) fn encrypt_in_place(&mut self, cipher: &mut Cipher) {
        debug_assert!(self.plan.copied.iter().all(|&c| c));
        cipher.apply(&mut self.plan.control);
        let mut at = 0;
        for (req, header) in self.plan.blocks.iter().zip(&mut self.headers) {
            cipher.apply(header);
            let len = req.length as usize;
            cipher.apply(&mut self.copy[at..at + len]);
            at += len;
        }
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

/// An outgoing connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// It starts with an MSE handshake.
    pub encrypted: bool,
    /// If it fails before the peer's handshake, it is dialed once more the
    /// other way.
    pub fall_back: bool,
}

/// A connection.
pub struct Conn {
    /// The socket.
    pub(super) fd: OwnedFd,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub(super) generation: u32,
    /// How its bytes travel.
    pub(super) transport: Transport,
    /// The protocol, transport-free.
    pub(super) peer: PeerConnection,
    /// Receive side.
    pub(super) recv: RecvBuf,
    /// Send side.
    pub(super) send: SendBuf,
    /// Set once the connection is being closed: no new ops are started.
    pub(super) closing: bool,
    /// For a connection we dialed: the attempt's MSE mode, and whether,
    /// should it fail before the peer's handshake, it is tried once more
    /// the other way (cleared when the connect fails: nobody listens).
    pub(super) dial: Option<Dial>,
    /// For a connection we are opening: the address the connect op reads.
    pub(super) connect_to: Option<Box<socket2::SockAddr>>,
    /// A connect op is in flight.
    pub(super) connect_in_flight: bool,
}

impl Conn {
    /// A new connection over `transport`, waiting for the handshake.
    pub fn new(fd: OwnedFd, generation: u32, transport: Transport, peer: PeerConnection) -> Self {
        Conn {
            fd,
            generation,
            transport,
            peer,
            recv: RecvBuf {
                buf: vec![0; INITIAL_RECV_BUF],
                len: 0,
                in_flight: false,
            },
            send: SendBuf::new(),
            closing: false,
            connect_to: None,
            connect_in_flight: false,
            dial: None,
        }
    }

    /// Whether an op of this connection is still with the kernel.
    pub fn has_ops_in_flight(&self) -> bool {
        self.recv.in_flight || self.send.in_flight || self.send.reading || self.connect_in_flight
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
