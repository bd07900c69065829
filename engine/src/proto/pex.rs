//! Peer exchange (BEP 11, `ut_pex`): the message, sans-IO.
//!
//! A bencoded dictionary of compact peer lists: `added` (IPv4, 6 bytes per
//! peer) with `added.f` (one flag byte per added peer), `added6` (18 bytes)
//! with `added6.f`, and `dropped` / `dropped6`. libtorrent ignores `added`
//! unless `added.f` has exactly one byte per peer, so we always send the
//! flags; we accept `added` without them (rqbit and older clients send
//! none).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bencode::{self, DecodeError, OwnedValue, Value};

/// The extension's name in the BEP 10 handshake.
pub const UT_PEX: &str = "ut_pex";
/// The id we assign to ut_pex in our handshake (ut_metadata is 1).
pub const OUR_UT_PEX_ID: u8 = 2;

/// Flag: the peer prefers encryption.
pub const FLAG_ENCRYPTION: u8 = 0x01;
/// Flag: the peer is a seed (or upload only).
pub const FLAG_SEED: u8 = 0x02;
/// Flag: the peer supports uTP.
pub const FLAG_UTP: u8 = 0x04;
/// Flag: the peer supports ut_holepunch.
pub const FLAG_HOLEPUNCH: u8 = 0x08;
/// Flag: the peer is reachable (the sender connected to it).
pub const FLAG_REACHABLE: u8 = 0x10;
/// The flags BEP 11 defines; others are dropped on receipt (libtorrent
/// uses 0x80 internally).
pub const KNOWN_FLAGS: u8 =
    FLAG_ENCRYPTION | FLAG_SEED | FLAG_UTP | FLAG_HOLEPUNCH | FLAG_REACHABLE;

/// Most entries of one kind (added or dropped, both families together) per
/// message we send (BEP 11).
pub const MAX_ENTRIES: usize = 50;

/// A peer exchange message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender is connected to now, with their flags.
    pub added: Vec<(SocketAddr, u8)>,
    /// Peers the sender is no longer connected to.
    pub dropped: Vec<SocketAddr>,
}

/// Why a peer exchange message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    /// Not bencode.
    #[error("ut_pex: {0}")]
    Bencode(#[from] DecodeError),
    /// Not a dictionary, or a peer list whose length is not a multiple of
    /// its entry size.
    #[error("ut_pex: {0}")]
    Malformed(&'static str),
}

impl PexMessage {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Parses a message, keeping at most `max` added and `max` dropped
    /// peers of each family (a peer that sends more does not make us hold
    /// more). An `added.f` of the wrong length is ignored (flags 0), as are
    /// reserved flag bits.
    pub fn decode(payload: &[u8], max: usize) -> Result<Self, PexError> {
        let (root, _) = bencode::decode_prefix(payload)?;
        root.as_dict()
            .ok_or(PexError::Malformed("message is not a dictionary"))?;
        let list = |key: &str| -> Result<&[u8], PexError> {
            match root.get(key) {
                None => Ok(&[]),
                Some(v) => v
                    .as_bytes()
                    .ok_or(PexError::Malformed("a peer list is not a string")),
            }
        };
        let mut message = PexMessage::default();
        for (key, flags_key, size) in [("added", "added.f", 6), ("added6", "added6.f", 18)] {
            let peers = list(key)?;
            if peers.len() % size != 0 {
                return Err(PexError::Malformed("peer list of a partial entry"));
            }
            let count = peers.len() / size;
            let flags = root
                .get(flags_key)
                .and_then(Value::as_bytes)
                .filter(|f| f.len() == count);
            for (i, entry) in peers.chunks_exact(size).take(max).enumerate() {
                let flag = flags.map_or(0, |f| f[i] & KNOWN_FLAGS);
                message.added.push((compact(entry), flag));
            }
        }
        for (key, size) in [("dropped", 6), ("dropped6", 18)] {
            let peers = list(key)?;
            if peers.len() % size != 0 {
                return Err(PexError::Malformed("peer list of a partial entry"));
            }
            message
                .dropped
                .extend(peers.chunks_exact(size).take(max).map(compact));
        }
        Ok(message)
    }

    /// Appends the bencoded message: every key, as libtorrent sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (mut added, mut added_f, mut added6, mut added6_f) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (addr, flags) in &self.added {
            match addr {
                SocketAddr::V4(_) => {
                    put_compact(&mut added, addr);
                    added_f.push(*flags);
                }
                SocketAddr::V6(_) => {
                    put_compact(&mut added6, addr);
                    added6_f.push(*flags);
                }
            }
        }
        let (mut dropped, mut dropped6) = (Vec::new(), Vec::new());
        for addr in &self.dropped {
            match addr {
                SocketAddr::V4(_) => put_compact(&mut dropped, addr),
                SocketAddr::V6(_) => put_compact(&mut dropped6, addr),
            }
        }
        let mut root = OwnedValue::dict();
        root.insert("added", OwnedValue::Bytes(added));
        root.insert("added.f", OwnedValue::Bytes(added_f));
        root.insert("added6", OwnedValue::Bytes(added6));
        root.insert("added6.f", OwnedValue::Bytes(added6_f));
        root.insert("dropped", OwnedValue::Bytes(dropped));
        root.insert("dropped6", OwnedValue::Bytes(dropped6));
        root.encode(out);
    }
}

/// A compact peer: 4 or 16 address bytes, then the port, big-endian. An
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) comes out as the IPv4
/// address it is, so that no filter, ban or duplicate check of IPv4
/// addresses can be passed by naming one in `added6`.
fn compact(entry: &[u8]) -> SocketAddr {
    let (ip, port) = entry.split_at(entry.len() - 2);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = match <[u8; 4]>::try_from(ip) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(ip).expect("18-byte entries"),
        ))
        .to_canonical(),
    };
    SocketAddr::new(ip, port)
}

fn put_compact(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_what_libtorrent_sends() {
        // Real libtorrent bytes (from rqbit's ut_pex test).
        let bytes = hex(
            "64353a616464656431323ab99f9d14b56797f969861090373a61646465642e66323a0c00\
             363a616464656436303a383a6164646564362e66303a373a64726f70706564303a383a\
             64726f7070656436303a65",
        );
        let m = PexMessage::decode(&bytes, 50).unwrap();
        assert_eq!(
            m.added,
            [
                ("185.159.157.20:46439".parse().unwrap(), 0x0c),
                ("151.249.105.134:4240".parse().unwrap(), 0x00),
            ]
        );
        assert!(m.dropped.is_empty());
    }

    #[test]
    fn encodes_every_key_with_one_flag_byte_per_added_peer() {
        let m = PexMessage {
            added: vec![(
                "127.0.0.2:6881".parse().unwrap(),
                FLAG_SEED | FLAG_REACHABLE,
            )],
            dropped: vec![],
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(
            out,
            b"d5:added6:\x7f\x00\x00\x02\x1a\xe17:added.f1:\x126:added60:8:added6.f0:7:dropped0:8:dropped60:e"
        );
        assert_eq!(PexMessage::decode(&out, 50).unwrap(), m);
    }

    #[test]
    fn round_trips_both_families_and_caps_what_it_keeps() {
        let added: Vec<(SocketAddr, u8)> = (0..60u16)
            .map(|i| {
                (
                    SocketAddr::new([10, 0, 0, 1].into(), 1000 + i),
                    FLAG_ENCRYPTION,
                )
            })
            .chain([("[2001:db8::1]:51413".parse().unwrap(), FLAG_UTP)])
            .collect();
        let m = PexMessage {
            added,
            dropped: vec!["10.9.9.9:1".parse().unwrap(), "[::2]:2".parse().unwrap()],
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(PexMessage::decode(&out, 100).unwrap(), m);
        let capped = PexMessage::decode(&out, 50).unwrap();
        assert_eq!(capped.added.len(), 51, "50 IPv4 and the one IPv6");
    }

    #[test]
    fn a_mapped_ipv4_address_in_added6_is_read_as_ipv4() {
        let m = PexMessage {
            added: vec![("[::ffff:127.0.0.1]:22".parse().unwrap(), 0)],
            dropped: vec![],
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        let read = PexMessage::decode(&out, 50).unwrap();
        assert_eq!(read.added, [("127.0.0.1:22".parse().unwrap(), 0)]);
    }

    #[test]
    fn malformed_lists_are_refused_and_bad_flags_ignored() {
        assert!(PexMessage::decode(b"d5:added5:12345e", 50).is_err());
        assert!(PexMessage::decode(b"d5:addedi1ee", 50).is_err());
        assert!(PexMessage::decode(b"le", 50).is_err());
        assert!(PexMessage::decode(b"d5:added", 50).is_err());
        // Flags of the wrong length: the peers stay, without flags.
        let m = PexMessage::decode(
            b"d5:added6:\x01\x02\x03\x04\x00\x017:added.f2:\xff\xffe",
            50,
        )
        .unwrap();
        assert_eq!(m.added, [("1.2.3.4:1".parse().unwrap(), 0)]);
        // Reserved bits are dropped; an empty message is fine.
        let m =
            PexMessage::decode(b"d5:added6:\x01\x02\x03\x04\x00\x017:added.f1:\x92e", 50).unwrap();
        assert_eq!(m.added[0].1, 0x12);
        assert!(PexMessage::decode(b"de", 50).unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = PexMessage::decode(&bytes, 50);
        }
    }
}
