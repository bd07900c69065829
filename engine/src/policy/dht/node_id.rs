//! Node ids bound to IP addresses (BEP 42), and the external-address vote
//! that tells us which address ours must be bound to.
//!
//! A BEP 42 id starts with 21 bits of CRC32-C over the masked IP address and
//! a 3-bit random `r` that is repeated in the id's last byte, so anyone can
//! check that a node did not pick its id to sit next to an info-hash. We
//! prefer verified nodes when a bucket is full; we do not refuse unverified
//! ones, since much of the network still runs without BEP 42.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::proto::krpc::NodeId;
use crate::rng;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The CRC32-C of `ip` masked as BEP 42 says, with `r` in the top bits.
fn crc_of(ip: IpAddr, r: u8) -> u32 {
    let r = r & 0x07;
    match ip {
        IpAddr::V4(ip) => {
            let mut b = ip.octets();
            for (byte, mask) in b.iter_mut().zip([0x03, 0x0f, 0x3f, 0xff]) {
                *byte &= mask;
            }
            b[0] |= r << 5;
            CASTAGNOLI.checksum(&b)
        }
        IpAddr::V6(ip) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&ip.octets()[..8]);
            for (byte, mask) in b
                .iter_mut()
                .zip([0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff])
            {
                *byte &= mask;
            }
            b[0] |= r << 5;
            CASTAGNOLI.checksum(&b)
        }
    }
}

/// A BEP 42 id for external address `ip`: the CRC prefix for `r` (the
/// value BEP 42 calls `rand`; its low 3 bits are used, all 8 are stored in
/// the last byte), the rest from `rng`.
pub fn id_for_ip(ip: IpAddr, r: u8, rng_state: &mut u64) -> NodeId {
    let crc = crc_of(ip, r);
    let mut id = [0u8; 20];
    for chunk in id.chunks_mut(8) {
        let bytes = rng::next(rng_state).to_be_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 0x07);
    id[19] = r;
    NodeId(id)
}

/// A fresh BEP 42 id for `ip` with `r` drawn from `rng_state`.
pub fn random_id_for_ip(ip: IpAddr, rng_state: &mut u64) -> NodeId {
    let r = rng::next(rng_state) as u8;
    id_for_ip(ip, r, rng_state)
}

/// Addresses BEP 42 exempts: loopback, private and link-local networks,
/// where ids cannot be bound to a public address.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

/// Whether `id` is a valid BEP 42 id for a node at `ip` (always true for
/// exempt addresses).
pub fn is_valid(id: &NodeId, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let crc = crc_of(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

/// How many recent votes are remembered.
pub const VOTES_KEPT: usize = 32;
/// Votes a new address needs before it is believed.
pub const MIN_VOTES: usize = 5;

/// Our external address as other nodes see it, from the `ip` key of their
/// replies (BEP 42). One vote per voter (the latest), the most recent
/// [`VOTES_KEPT`] voters kept; an address is believed once it has at least
/// [`MIN_VOTES`] votes and a strict majority.
#[derive(Debug, Default)]
pub struct AddressVotes {
    votes: VecDeque<(IpAddr, IpAddr)>,
    current: Option<IpAddr>,
}

impl AddressVotes {
    /// The address the majority last agreed on.
    pub fn current(&self) -> Option<IpAddr> {
        self.current
    }

    /// Records that `voter` saw us at `seen`; returns the new address if the
    /// majority now names a different one than before.
    pub fn vote(&mut self, voter: IpAddr, seen: IpAddr) -> Option<IpAddr> {
        self.votes.retain(|(v, _)| *v != voter);
        self.votes.push_back((voter, seen));
        if self.votes.len() > VOTES_KEPT {
            self.votes.pop_front();
        }
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for (_, ip) in &self.votes {
            *counts.entry(*ip).or_default() += 1;
        }
        let (&leader, &n) = counts.iter().max_by_key(|(_, n)| **n)?;
        if n >= MIN_VOTES && n * 2 > self.votes.len() && self.current != Some(leader) {
            self.current = Some(leader);
            return Some(leader);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of BEP 42: IP, `rand`, and the id given as the example.
    const VECTORS: [(&str, u8, &str); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
        ),
    ];

    fn hex_id(s: &str) -> NodeId {
        let mut id = [0u8; 20];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap();
        }
        NodeId(id)
    }

    #[test]
    fn bep42_vectors_generate_the_same_prefix() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for (ip, r, example) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let want = hex_id(example);
            let id = id_for_ip(ip, r, &mut state);
            assert_eq!(id.0[..2], want.0[..2], "{ip}");
            assert_eq!(id.0[2] & 0xf8, want.0[2] & 0xf8, "{ip}");
            assert_eq!(id.0[19], r);
            assert!(is_valid(&id, ip));
        }
    }

    #[test]
    fn bep42_example_ids_verify_and_others_do_not() {
        for (ip, _, example) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let mut id = hex_id(example);
            assert!(is_valid(&id, ip), "{ip}");
            id.0[0] ^= 0x80;
            assert!(!is_valid(&id, ip), "{ip}");
        }
        // The same id from another public address fails.
        let id = hex_id(VECTORS[0].2);
        assert!(!is_valid(&id, "8.8.8.8".parse().unwrap()));
        // Private addresses are exempt.
        assert!(is_valid(&id, "192.168.1.7".parse().unwrap()));
        assert!(is_valid(&id, "fd00::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_ids_round_trip() {
        let mut state = 7;
        let ip: IpAddr = "2001:db8:1234:5678::1".parse().unwrap();
        for _ in 0..50 {
            let id = random_id_for_ip(ip, &mut state);
            assert!(is_valid(&id, ip));
        }
    }

    #[test]
    fn external_address_needs_a_majority_of_distinct_voters() {
        let mut votes = AddressVotes::default();
        let ours: IpAddr = "203.0.113.5".parse().unwrap();
        let liar: IpAddr = "198.51.100.1".parse().unwrap();
        // One voter repeating itself is one vote.
        for _ in 0..10 {
            assert_eq!(votes.vote("1.1.1.1".parse().unwrap(), liar), None);
        }
        let mut changed = None;
        for i in 0..5u8 {
            changed = changed.or(votes.vote(IpAddr::from([9, 9, 9, i]), ours));
        }
        assert_eq!(changed, Some(ours));
        assert_eq!(votes.current(), Some(ours));
        // More votes for the same address raise no new event.
        assert_eq!(votes.vote("9.9.8.1".parse().unwrap(), ours), None);
    }
}
