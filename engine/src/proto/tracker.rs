//! Tracker messages, sans-IO: HTTP announce and scrape (BEP 3, compact
//! peers BEP 23, IPv6 peers BEP 7, scrape BEP 48) and the UDP tracker
//! protocol (BEP 15), both directions, so the client and the built-in
//! tracker share one codec.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use percent_encoding::{percent_encode, NON_ALPHANUMERIC};

use super::bencode::{self, DecodeError, Value};
use super::info_hash::InfoHash;

/// The `event` of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Event {
    /// A regular update.
    #[default]
    None,
    /// The first announce.
    Started,
    /// The download finished.
    Completed,
    /// Leaving the swarm.
    Stopped,
}

impl Event {
    /// The BEP 15 number.
    pub fn udp_code(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }

    /// From the BEP 15 number.
    pub fn from_udp_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Event::None,
            1 => Event::Completed,
            2 => Event::Started,
            3 => Event::Stopped,
            _ => return None,
        })
    }

    /// The HTTP parameter value, if any.
    pub fn http_name(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// What a client tells a tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Our listen port.
    pub port: u16,
    /// Bytes sent since `started`.
    pub uploaded: u64,
    /// Bytes received since `started`.
    pub downloaded: u64,
    /// Bytes still missing (0 for a seed).
    pub left: u64,
    /// Why we announce.
    pub event: Event,
    /// Peers wanted; `None` lets the tracker choose.
    pub numwant: Option<u32>,
    /// A random key that identifies us across IP changes.
    pub key: u32,
    /// The `tracker id` the tracker gave us last time.
    pub tracker_id: Option<String>,
}

impl Announce {
    /// The GET URL of this announce on the HTTP tracker `announce_url`
    /// (parameters appended to any it already has, e.g. a passkey).
    pub fn http_url(&self, announce_url: &str) -> String {
        let mut url = announce_url.to_owned();
        url.push(if announce_url.contains('?') { '&' } else { '?' });
        let _ = write!(
            url,
            "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&key={:08x}",
            percent_encode(&self.info_hash.0, NON_ALPHANUMERIC),
            percent_encode(&self.peer_id, NON_ALPHANUMERIC),
            self.port,
            self.uploaded,
            self.downloaded,
            self.left,
            self.key
        );
        if let Some(event) = self.event.http_name() {
            let _ = write!(url, "&event={event}");
        }
        if let Some(n) = self.numwant {
            let _ = write!(url, "&numwant={n}");
        }
        if let Some(id) = &self.tracker_id {
            let _ = write!(
                url,
                "&trackerid={}",
                percent_encode(id.as_bytes(), NON_ALPHANUMERIC)
            );
        }
        url
    }
}

/// What a tracker answers to an announce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceReply {
    /// Seconds until the next regular announce.
    pub interval: u32,
    /// Seconds a client must wait at least between announces.
    pub min_interval: Option<u32>,
    /// To send back with the next announces.
    pub tracker_id: Option<String>,
    /// Seeds in the swarm.
    pub complete: Option<u32>,
    /// Leechers in the swarm.
    pub incomplete: Option<u32>,
    /// Peers to connect to.
    pub peers: Vec<SocketAddr>,
    /// A message to show the user; the announce still succeeded.
    pub warning: Option<String>,
}

/// A torrent's counts from a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeStats {
    /// Seeds.
    pub complete: u32,
    /// Completed downloads ever.
    pub downloaded: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// Why a tracker's reply was refused, or what the tracker refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The tracker said no (`failure reason`, or a UDP error).
    #[error("tracker refused: {0}")]
    Failure(String),
    /// The HTTP body is not bencode.
    #[error("tracker reply: {0}")]
    Bencode(#[from] DecodeError),
    /// A field is missing or of the wrong kind.
    #[error("tracker reply: field `{field}` {problem}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong, with the offending value where useful.
        problem: String,
    },
    /// A UDP packet of the wrong size or kind.
    #[error("UDP tracker packet: {0}")]
    BadPacket(String),
}

fn bad(field: &'static str, problem: impl Into<String>) -> TrackerError {
    TrackerError::BadField {
        field,
        problem: problem.into(),
    }
}

fn u32_field(dict: &Value<'_>, field: &'static str) -> Result<Option<u32>, TrackerError> {
    match dict.get(field) {
        None => Ok(None),
        Some(v) => {
            let n = v
                .as_int()
                .ok_or_else(|| bad(field, format!("is a {}", v.type_name())))?;
            u32::try_from(n)
                .map(Some)
                .map_err(|_| bad(field, format!("{n} is out of range")))
        }
    }
}

/// Parses an HTTP announce reply body.
pub fn parse_http_announce(body: &[u8]) -> Result<AnnounceReply, TrackerError> {
    let root = bencode::decode(body)?;
    if root.as_dict().is_none() {
        return Err(bad(
            "(root)",
            format!("is a {}, not a dictionary", root.type_name()),
        ));
    }
    if let Some(reason) = root.get("failure reason") {
        let text = reason.as_bytes().unwrap_or(b"(not a string)");
        return Err(TrackerError::Failure(
            String::from_utf8_lossy(text).into_owned(),
        ));
    }
    let text = |field| {
        root.get(field)
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut reply = AnnounceReply {
        interval: u32_field(&root, "interval")?.ok_or_else(|| bad("interval", "is missing"))?,
        min_interval: u32_field(&root, "min interval")?,
        tracker_id: text("tracker id"),
        complete: u32_field(&root, "complete")?,
        incomplete: u32_field(&root, "incomplete")?,
        peers: Vec::new(),
        warning: text("warning message"),
    };
    if let Some(peers) = root.get("peers") {
        match (peers.as_bytes(), peers.as_list()) {
            (Some(compact), _) => reply.peers.extend(compact_v4(compact, "peers")?),
            (_, Some(list)) => {
                for p in list {
                    let ip = p
                        .get("ip")
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse::<IpAddr>().ok());
                    let port = p.get("port").and_then(|v| v.as_int());
                    // Host names and bad entries are skipped, not fatal.
                    if let (Some(ip), Some(port)) = (ip, port.and_then(|p| u16::try_from(p).ok())) {
                        reply.peers.push(SocketAddr::new(ip, port));
                    }
                }
            }
            _ => return Err(bad("peers", format!("is a {}", peers.type_name()))),
        }
    }
    if let Some(peers6) = root.get("peers6").and_then(|v| v.as_bytes()) {
        reply.peers.extend(compact_v6(peers6, "peers6")?);
    }
    Ok(reply)
}

fn compact_v4(bytes: &[u8], field: &'static str) -> Result<Vec<SocketAddr>, TrackerError> {
    if bytes.len() % 6 != 0 {
        return Err(bad(
            field,
            format!("has {} bytes, not a multiple of 6", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(6)
        .map(|c| {
            let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([c[4], c[5]]))
        })
        .collect())
}

fn compact_v6(bytes: &[u8], field: &'static str) -> Result<Vec<SocketAddr>, TrackerError> {
    if bytes.len() % 18 != 0 {
        return Err(bad(
            field,
            format!("has {} bytes, not a multiple of 18", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(18)
        .map(|c| {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&c[..16]).expect("16 bytes"));
            SocketAddr::new(ip.into(), u16::from_be_bytes([c[16], c[17]]))
        })
        .collect())
}

/// Appends compact peers: IPv4 ones to `v4` (6 bytes each), IPv6 ones to
/// `v6` (18 bytes each).
pub fn write_compact_peers(peers: &[SocketAddr], v4: &mut Vec<u8>, v6: &mut Vec<u8>) {
    for p in peers {
        match p.ip() {
            IpAddr::V4(ip) => {
                v4.extend_from_slice(&ip.octets());
                v4.extend_from_slice(&p.port().to_be_bytes());
            }
            IpAddr::V6(ip) => {
                v6.extend_from_slice(&ip.octets());
                v6.extend_from_slice(&p.port().to_be_bytes());
            }
        }
    }
}

/// The scrape URL of an HTTP announce URL (BEP 48): the last path component
/// `announce` becomes `scrape`; `None` if the URL has no such component.
pub fn scrape_url(announce_url: &str) -> Option<String> {
    let (path, query) = announce_url
        .split_once('?')
        .map_or((announce_url, None), |(p, q)| (p, Some(q)));
    let slash = path.rfind('/')?;
    let last = &path[slash + 1..];
    let rest = last.strip_prefix("announce")?;
    let mut url = format!("{}/scrape{rest}", &path[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Some(url)
}

/// Parses an HTTP scrape reply body.
pub fn parse_http_scrape(body: &[u8]) -> Result<HashMap<InfoHash, ScrapeStats>, TrackerError> {
    let root = bencode::decode(body)?;
    if let Some(reason) = root.get("failure reason") {
        let text = reason.as_bytes().unwrap_or(b"(not a string)");
        return Err(TrackerError::Failure(
            String::from_utf8_lossy(text).into_owned(),
        ));
    }
    let files = root
        .get("files")
        .and_then(|f| f.as_dict())
        .ok_or_else(|| bad("files", "is missing or not a dictionary"))?;
    let mut out = HashMap::new();
    for (hash, stats) in files {
        let hash: [u8; 20] = (*hash).try_into().map_err(|_| {
            bad(
                "files",
                format!("has a key of {} bytes, not 20", hash.len()),
            )
        })?;
        out.insert(
            InfoHash(hash),
            ScrapeStats {
                complete: u32_field(stats, "complete")?.unwrap_or(0),
                downloaded: u32_field(stats, "downloaded")?.unwrap_or(0),
                incomplete: u32_field(stats, "incomplete")?.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// BEP 15's magic constant of a connect request.
pub const UDP_PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// How long to wait for the `n`-th retransmission of a UDP request (BEP 15:
/// 15 * 2^n seconds, n up to 8).
pub fn udp_retransmit_timeout(n: u32) -> Duration {
    Duration::from_secs(15 << n.min(8))
}

/// A request to a UDP tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    /// action 0: ask for a connection id.
    Connect {
        /// Matches the reply to the request.
        transaction_id: u32,
    },
    /// action 1.
    Announce {
        /// From the connect reply.
        connection_id: u64,
        /// Matches the reply to the request.
        transaction_id: u32,
        /// The announce (its `tracker_id` is not carried over UDP).
        announce: Announce,
    },
    /// action 2: counts for up to ~74 torrents.
    Scrape {
        /// From the connect reply.
        connection_id: u64,
        /// Matches the reply to the request.
        transaction_id: u32,
        /// The torrents.
        info_hashes: Vec<InfoHash>,
    },
}

/// A UDP tracker's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    /// action 0.
    Connect {
        /// Echoed.
        transaction_id: u32,
        /// To use in requests for the next minute.
        connection_id: u64,
    },
    /// action 1.
    Announce {
        /// Echoed.
        transaction_id: u32,
        /// Seconds until the next announce.
        interval: u32,
        /// Leechers.
        leechers: u32,
        /// Seeds.
        seeders: u32,
        /// Peers, all of the family of the socket the reply came on.
        peers: Vec<SocketAddr>,
    },
    /// action 2, in request order.
    Scrape {
        /// Echoed.
        transaction_id: u32,
        /// Counts per requested torrent.
        stats: Vec<ScrapeStats>,
    },
    /// action 3.
    Error {
        /// Echoed.
        transaction_id: u32,
        /// Why.
        message: String,
    },
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn packet_error(what: impl Into<String>) -> TrackerError {
    TrackerError::BadPacket(what.into())
}

impl UdpRequest {
    /// Appends the packet.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            UdpRequest::Connect { transaction_id } => {
                out.extend_from_slice(&UDP_PROTOCOL_ID.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
                out.extend_from_slice(&transaction_id.to_be_bytes());
            }
            UdpRequest::Announce {
                connection_id,
                transaction_id,
                announce: a,
            } => {
                out.extend_from_slice(&connection_id.to_be_bytes());
                out.extend_from_slice(&1u32.to_be_bytes());
                out.extend_from_slice(&transaction_id.to_be_bytes());
                out.extend_from_slice(&a.info_hash.0);
                out.extend_from_slice(&a.peer_id);
                out.extend_from_slice(&a.downloaded.to_be_bytes());
                out.extend_from_slice(&a.left.to_be_bytes());
                out.extend_from_slice(&a.uploaded.to_be_bytes());
                out.extend_from_slice(&a.event.udp_code().to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes()); // IP: the sender's
                out.extend_from_slice(&a.key.to_be_bytes());
                let numwant = a.numwant.map_or(-1i32, |n| n.min(i32::MAX as u32) as i32);
                out.extend_from_slice(&numwant.to_be_bytes());
                out.extend_from_slice(&a.port.to_be_bytes());
            }
            UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            } => {
                out.extend_from_slice(&connection_id.to_be_bytes());
                out.extend_from_slice(&2u32.to_be_bytes());
                out.extend_from_slice(&transaction_id.to_be_bytes());
                for h in info_hashes {
                    out.extend_from_slice(&h.0);
                }
            }
        }
    }

    /// Parses a packet a client sent (for the tracker server).
    pub fn decode(packet: &[u8]) -> Result<Self, TrackerError> {
        if packet.len() < 16 {
            return Err(packet_error(format!(
                "{} bytes is shorter than any request",
                packet.len()
            )));
        }
        let connection_id = be_u64(packet, 0);
        let action = be_u32(packet, 8);
        let transaction_id = be_u32(packet, 12);
        match action {
            0 if connection_id == UDP_PROTOCOL_ID => Ok(UdpRequest::Connect { transaction_id }),
            0 => Err(packet_error(format!(
                "connect with protocol id {connection_id:#x}"
            ))),
            1 => {
                if packet.len() < 98 {
                    return Err(packet_error(format!(
                        "announce of {} bytes, needs 98",
                        packet.len()
                    )));
                }
                let numwant = be_u32(packet, 92) as i32;
                Ok(UdpRequest::Announce {
                    connection_id,
                    transaction_id,
                    announce: Announce {
                        info_hash: InfoHash(packet[16..36].try_into().expect("20 bytes")),
                        peer_id: packet[36..56].try_into().expect("20 bytes"),
                        downloaded: be_u64(packet, 56),
                        left: be_u64(packet, 64),
                        uploaded: be_u64(packet, 72),
                        event: Event::from_udp_code(be_u32(packet, 80))
                            .ok_or_else(|| packet_error(format!("event {}", be_u32(packet, 80))))?,
                        key: be_u32(packet, 88),
                        numwant: u32::try_from(numwant).ok(),
                        port: u16::from_be_bytes([packet[96], packet[97]]),
                        tracker_id: None,
                    },
                })
            }
            2 => {
                let hashes = &packet[16..];
                if hashes.is_empty() || hashes.len() % 20 != 0 {
                    return Err(packet_error(format!(
                        "scrape with {} bytes of hashes",
                        hashes.len()
                    )));
                }
                Ok(UdpRequest::Scrape {
                    connection_id,
                    transaction_id,
                    info_hashes: hashes
                        .chunks_exact(20)
                        .map(|c| InfoHash(c.try_into().expect("20 bytes")))
                        .collect(),
                })
            }
            other => Err(packet_error(format!("unknown action {other}"))),
        }
    }
}

impl UdpReply {
    /// Appends the packet; peers of the other address family are left out
    /// (BEP 15 sends IPv4 peers over IPv4 and IPv6 peers over IPv6).
    pub fn encode(&self, out: &mut Vec<u8>, ipv6: bool) {
        let head = |out: &mut Vec<u8>, action: u32, transaction_id: u32| {
            out.extend_from_slice(&action.to_be_bytes());
            out.extend_from_slice(&transaction_id.to_be_bytes());
        };
        match self {
            UdpReply::Connect {
                transaction_id,
                connection_id,
            } => {
                head(out, 0, *transaction_id);
                out.extend_from_slice(&connection_id.to_be_bytes());
            }
            UdpReply::Announce {
                transaction_id,
                interval,
                leechers,
                seeders,
                peers,
            } => {
                head(out, 1, *transaction_id);
                for n in [interval, leechers, seeders] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                write_compact_peers(peers, &mut v4, &mut v6);
                out.extend_from_slice(if ipv6 { &v6 } else { &v4 });
            }
            UdpReply::Scrape {
                transaction_id,
                stats,
            } => {
                head(out, 2, *transaction_id);
                for s in stats {
                    for n in [s.complete, s.downloaded, s.incomplete] {
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                }
            }
            UdpReply::Error {
                transaction_id,
                message,
            } => {
                head(out, 3, *transaction_id);
                out.extend_from_slice(message.as_bytes());
            }
        }
    }

    /// Parses a tracker's reply; `ipv6` says which family its peers are.
    pub fn decode(packet: &[u8], ipv6: bool) -> Result<Self, TrackerError> {
        if packet.len() < 8 {
            return Err(packet_error(format!(
                "{} bytes is shorter than any reply",
                packet.len()
            )));
        }
        let action = be_u32(packet, 0);
        let transaction_id = be_u32(packet, 4);
        let body = &packet[8..];
        match action {
            0 if body.len() >= 8 => Ok(UdpReply::Connect {
                transaction_id,
                connection_id: be_u64(body, 0),
            }),
            1 if body.len() >= 12 => Ok(UdpReply::Announce {
                transaction_id,
                interval: be_u32(body, 0),
                leechers: be_u32(body, 4),
                seeders: be_u32(body, 8),
                peers: if ipv6 {
                    compact_v6(&body[12..], "peers")?
                } else {
                    compact_v4(&body[12..], "peers")?
                },
            }),
            2 if body.len() % 12 == 0 => Ok(UdpReply::Scrape {
                transaction_id,
                stats: body
                    .chunks_exact(12)
                    .map(|c| ScrapeStats {
                        complete: be_u32(c, 0),
                        downloaded: be_u32(c, 4),
                        incomplete: be_u32(c, 8),
                    })
                    .collect(),
            }),
            3 => Ok(UdpReply::Error {
                transaction_id,
                message: String::from_utf8_lossy(body).into_owned(),
            }),
            0..=2 => Err(packet_error(format!(
                "action {action} reply of {} bytes",
                packet.len()
            ))),
            other => Err(packet_error(format!("unknown action {other}"))),
        }
    }
}

#[cfg(test)]
mod tests;
