//! Fetching a torrent's info dictionary from peers (BEP 9 ut_metadata over
//! BEP 10), for a download started from a magnet link.
//!
//! This runs once per torrent, before it enters the data plane, and moves a
//! few dozen KiB: plain blocking sockets on a few control threads (one per
//! peer tried, several peers at once) are simpler than the ring and cost
//! nothing measurable. The first peer to deliver metadata whose SHA-1 is the
//! info-hash wins; anything else from a peer only ends that peer's attempt.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::hash::sha1;
use crate::proto::extension::{
    ExtensionHandshake, MetadataMessage, METADATA_PIECE_LEN, OUR_UT_METADATA_ID, UT_METADATA,
};
use crate::proto::info_hash::InfoHash;
use crate::proto::wire::{self, Handshake, Message, Reserved, HANDSHAKE_LEN};

/// Largest info dictionary we accept (a 100k-piece torrent's is ~2 MiB).
pub const MAX_METADATA_SIZE: u64 = 16 << 20;
/// Peers asked at once.
const PARALLEL_PEERS: usize = 8;
/// Per-socket connect and read timeout.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per peer.
const ATTEMPTS_PER_PEER: usize = 3;
/// Pause between tries of one peer.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why no peer gave us the metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// No peer to ask.
    #[error("no peers to fetch the torrent's metadata from (give --peer, or a magnet link with trackers or x.pe)")]
    NoPeers,
    /// Every peer failed or the time ran out; the last peer's error.
    #[error("no peer delivered the torrent's metadata within {timeout:?} ({tried} tried; last error: {last})")]
    Failed {
        /// How long we tried.
        timeout: Duration,
        /// Peers tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
}

/// Fetches the bencoded info dictionary of `info_hash` from `peers`,
/// giving up after `timeout`. The result hashes to `info_hash`.
pub fn fetch_metadata(
    info_hash: InfoHash,
    peers: &[SocketAddr],
    peer_id: [u8; 20],
    timeout: Duration,
) -> Result<Vec<u8>, MetadataError> {
    if peers.is_empty() {
        return Err(MetadataError::NoPeers);
    }
    let deadline = Instant::now() + timeout;
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>();
    let mut next = 0;
    let mut running = 0;
    let mut last = String::from("timed out");
    let mut tried = 0;
    loop {
        while running < PARALLEL_PEERS && next < peers.len() {
            let addr = peers[next];
            next += 1;
            running += 1;
            tried += 1;
            let tx = tx.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                // A peer may turn us away while it is still starting (or
                // busy): try it a few times.
                let mut result = Err(String::new());
                for attempt in 0..ATTEMPTS_PER_PEER {
                    if attempt > 0 {
                        std::thread::sleep(RETRY_AFTER);
                    }
                    result = fetch_from(addr, info_hash, peer_id, &done)
                        .map_err(|e| format!("{addr}: {e}"));
                    if result.is_ok() || done.load(Ordering::Relaxed) {
                        break;
                    }
                }
                let _ = tx.send(result);
            });
        }
        if running == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(info)) => {
                done.store(true, Ordering::Relaxed);
                return Ok(info);
            }
            Ok(Err(e)) => {
                running -= 1;
                last = e;
            }
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Relaxed);
    Err(MetadataError::Failed {
        timeout,
        tried,
        last,
    })
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn send(stream: &mut TcpStream, msg: &Message<'_>) -> io::Result<()> {
    let mut buf = Vec::new();
    wire::encode(msg, &mut buf);
    stream.write_all(&buf)
}

/// One peer's attempt.
fn fetch_from(
    addr: SocketAddr,
    info_hash: InfoHash,
    peer_id: [u8; 20],
    done: &AtomicBool,
) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, PEER_TIMEOUT)?;
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    stream.set_write_timeout(Some(PEER_TIMEOUT))?;
    let mut out = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash,
        peer_id,
    }
    .encode(&mut out);
    let hs = ExtensionHandshake {
        extensions: vec![(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)],
        client: Some(concat!("ringseed ", env!("CARGO_PKG_VERSION")).to_owned()),
        ..Default::default()
    };
    let mut payload = Vec::new();
    hs.encode(&mut payload);
    wire::encode(
        &Message::Extended {
            id: 0,
            payload: &payload,
        },
        &mut out,
    );
    stream.write_all(&out)?;

    let mut theirs = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut theirs)?;
    let hs = Handshake::decode(&theirs)
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("short handshake"))?;
    if hs.info_hash != info_hash {
        return Err(invalid("peer answered for another torrent"));
    }
    if !hs.reserved.extension_protocol() {
        return Err(invalid("peer does not support the extension protocol"));
    }

    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut metadata: Option<(u8, Vec<u8>, Vec<bool>)> = None;
    loop {
        if done.load(Ordering::Relaxed) {
            return Err(invalid("another peer was faster"));
        }
        // Handle every whole message buffered.
        let mut consumed = 0;
        while let Some((msg, used)) =
            wire::decode(&buf[consumed..], (MAX_METADATA_SIZE as u32) + 1024)
                .map_err(|e| invalid(e.to_string()))?
        {
            consumed += used;
            let Message::Extended { id, payload } = msg else {
                continue;
            };
            if id == 0 {
                let theirs =
                    ExtensionHandshake::decode(payload).map_err(|e| invalid(e.to_string()))?;
                let ut = theirs
                    .id_of(UT_METADATA)
                    .ok_or_else(|| invalid("peer does not serve ut_metadata"))?;
                let size = theirs
                    .metadata_size
                    .filter(|&n| n > 0 && n <= MAX_METADATA_SIZE)
                    .ok_or_else(|| invalid("peer sent no usable metadata_size"))?;
                let pieces = (size as usize).div_ceil(METADATA_PIECE_LEN);
                if metadata.is_none() {
                    for piece in 0..pieces as u32 {
                        let mut body = Vec::new();
                        MetadataMessage::Request { piece }.encode(&mut body);
                        send(
                            &mut stream,
                            &Message::Extended {
                                id: ut,
                                payload: &body,
                            },
                        )?;
                    }
                    metadata = Some((ut, vec![0; size as usize], vec![false; pieces]));
                }
            } else if id == OUR_UT_METADATA_ID {
                let Some((_, info, got)) = metadata.as_mut() else {
                    continue;
                };
                match MetadataMessage::decode(payload).map_err(|e| invalid(e.to_string()))? {
                    MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    } => {
                        let start = piece as usize * METADATA_PIECE_LEN;
                        let expected = (info.len().saturating_sub(start)).min(METADATA_PIECE_LEN);
                        if total_size != info.len() as u64
                            || piece as usize >= got.len()
                            || data.len() != expected
                        {
                            return Err(invalid(format!("bad metadata piece {piece}")));
                        }
                        info[start..start + data.len()].copy_from_slice(data);
                        got[piece as usize] = true;
                        if got.iter().all(|&g| g) {
                            if sha1(info) != info_hash.0 {
                                return Err(invalid("metadata does not match the info-hash"));
                            }
                            return Ok(std::mem::take(info));
                        }
                    }
                    MetadataMessage::Reject { piece } => {
                        return Err(invalid(format!("peer refused metadata piece {piece}")))
                    }
                    MetadataMessage::Request { .. } => {}
                }
            }
        }
        buf.drain(..consumed);
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("peer closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
