//! How to move file bytes to a socket with io_uring, measured on this
//! kernel: `sendmsg` from a read-only mapping (what the data plane does, with
//! a 13-byte piece header per 16 KiB block), `sendmsg` with `SEND_ZC`, and
//! `splice` file -> pipe -> socket. A receiver thread drains loopback TCP.
//! Results and the choice they led to are in docs/BENCHMARKS.md.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::{cqueue, opcode, types, IoUring};
use ringseed_engine::io::plane::conn::advance_iovecs as advance;

const FILE_BYTES: usize = 64 << 20;
const BLOCK: usize = 16 << 10;
/// Bytes per submission: 16 blocks, as the data plane batches them.
const BATCH: usize = 256 << 10;

struct Setup {
    _dir: tempfile::TempDir,
    file: std::fs::File,
    map: memmap2::MmapRaw,
    tx: TcpStream,
    _rx: std::thread::JoinHandle<()>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let map = memmap2::MmapOptions::new()
        .map_raw_read_only(&file)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut rx, _) = listener.accept().unwrap();
    let rx = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while rx.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    Setup {
        _dir: dir,
        file,
        map,
        tx,
        _rx: rx,
    }
}

/// Sends the whole mapping `rounds` times with `sendmsg`, 16 blocks with
/// their headers per submission; `zc` uses SEND_ZC.
fn send_mapped(s: &Setup, ring: &mut IoUring, rounds: u64, zc: bool) -> Duration {
    let fd = types::Fd(s.tx.as_raw_fd());
    let headers = vec![[0u8; 13]; BATCH / BLOCK];
    let started = Instant::now();
    for _ in 0..rounds {
        let mut offset = 0;
        while offset < FILE_BYTES {
            let mut iov = rebuild(s, &headers, offset);
            let mut remaining: usize = iov.iter().map(|v| v.iov_len).sum();
            while remaining > 0 {
                // SAFETY: zeroed msghdr is valid; it points at `iov`, alive
                // until the completion below.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                let entry = if zc {
                    opcode::SendMsgZc::new(fd, &msg).build()
                } else {
                    opcode::SendMsg::new(fd, &msg).build()
                };
                // SAFETY: `msg`, `iov`, `headers` and the mapping outlive the
                // op: we wait for its completion (and, for ZC, its
                // notification that the kernel is done with the pages).
                unsafe { ring.submission().push(&entry).unwrap() };
                let mut result = None;
                let mut notified = !zc;
                while result.is_none() || !notified {
                    ring.submit_and_wait(1).unwrap();
                    for cqe in ring.completion() {
                        if cqueue::notif(cqe.flags()) {
                            notified = true;
                        } else {
                            result = Some(cqe.result());
                            if !cqueue::more(cqe.flags()) {
                                notified = true;
                            }
                        }
                    }
                }
                let n = result.unwrap();
                assert!(n > 0, "send failed: {n}");
                remaining -= n as usize;
                advance(&mut iov, n as usize);
            }
            offset += BATCH;
        }
    }
    started.elapsed()
}

fn rebuild(s: &Setup, headers: &[[u8; 13]], offset: usize) -> Vec<libc::iovec> {
    let mut iov = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        iov.push(libc::iovec {
            iov_base: h.as_ptr() as *mut _,
            iov_len: 13,
        });
        iov.push(libc::iovec {
            // SAFETY: as in `send_mapped`.
            iov_base: unsafe { s.map.as_ptr().add(offset + i * BLOCK) } as *mut _,
            iov_len: BLOCK,
        });
    }
    iov
}

/// Sends the whole file `rounds` times with splice file -> pipe -> socket
/// (no headers: the best case for splice).
fn send_spliced(s: &Setup, ring: &mut IoUring, rounds: u64) -> Duration {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: resizing our own pipe.
    unsafe { libc::fcntl(pipe[1], libc::F_SETPIPE_SZ, BATCH as libc::c_int) };
    let started = Instant::now();
    for _ in 0..rounds {
        let mut offset = 0;
        while offset < FILE_BYTES {
            let in_op = opcode::Splice::new(
                types::Fd(s.file.as_raw_fd()),
                offset as i64,
                types::Fd(pipe[1]),
                -1,
                BATCH as u32,
            )
            .build()
            .user_data(1);
            // SAFETY: only descriptors are involved; they outlive the op.
            unsafe { ring.submission().push(&in_op).unwrap() };
            ring.submit_and_wait(1).unwrap();
            let n = ring.completion().next().unwrap().result();
            assert!(n > 0, "splice in failed: {n}");
            let mut left = n;
            while left > 0 {
                let out_op = opcode::Splice::new(
                    types::Fd(pipe[0]),
                    -1,
                    types::Fd(s.tx.as_raw_fd()),
                    -1,
                    left as u32,
                )
                .build()
                .user_data(2);
                // SAFETY: as above.
                unsafe { ring.submission().push(&out_op).unwrap() };
                ring.submit_and_wait(1).unwrap();
                let m = ring.completion().next().unwrap().result();
                assert!(m > 0, "splice out failed: {m}");
                left -= m;
            }
            offset += n as usize;
        }
    }
    // SAFETY: closing our own pipe.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    started.elapsed()
}

fn send_paths(c: &mut Criterion) {
    let s = setup();
    let mut ring = IoUring::new(64).unwrap();
    let mut group = c.benchmark_group("send 64 MiB over loopback");
    group.throughput(Throughput::Bytes(FILE_BYTES as u64));
    group.sample_size(10);
    group.bench_function("sendmsg from mmap (16 KiB blocks + headers)", |b| {
        b.iter_custom(|rounds| send_mapped(&s, &mut ring, rounds, false))
    });
    group.bench_function("sendmsg SEND_ZC from mmap", |b| {
        b.iter_custom(|rounds| send_mapped(&s, &mut ring, rounds, true))
    });
    group.bench_function("splice file->pipe->socket (no headers)", |b| {
        b.iter_custom(|rounds| send_spliced(&s, &mut ring, rounds))
    });
    group.finish();
}

criterion_group!(benches, send_paths);
criterion_main!(benches);
