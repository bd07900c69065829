use std::net::Ipv4Addr;

use super::*;

const T0: Duration = Duration::from_secs(1000);

/// An id with `prefix` as its first byte and `n` in its last bytes.
fn id(prefix: u8, n: u16) -> NodeId {
    let mut id = [0u8; 20];
    id[0] = prefix;
    id[18..].copy_from_slice(&n.to_be_bytes());
    NodeId(id)
}

/// A public-looking address, one /24 per `n`.
fn addr(n: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(45, (n >> 8) as u8 + 1, n as u8, 1)),
        6881,
    )
}

fn node(prefix: u8, n: u16) -> NodeInfo {
    NodeInfo {
        id: id(prefix, n),
        addr: addr(n),
    }
}

fn own() -> NodeId {
    NodeId([0; 20])
}

#[test]
fn only_the_bucket_with_our_id_splits() {
    let mut t = RoutingTable::new(own());
    // Eight far nodes (first bit differs from ours) fill the one bucket.
    for n in 0..8 {
        assert_eq!(t.insert(T0, node(0x80, n), true), Inserted::Added);
    }
    assert_eq!(t.bucket_count(), 1);
    // A ninth, near us: the bucket splits into far (bit 0 differs) and near.
    assert_eq!(t.insert(T0, node(0x01, 100), true), Inserted::Added);
    assert_eq!(t.bucket_count(), 2);
    // The far bucket no longer splits: a ninth far node waits.
    assert_eq!(t.insert(T0, node(0xc0, 101), true), Inserted::Cached);
    assert_eq!(t.bucket_count(), 2);
    assert_eq!(t.replacement_len(), 1);
    // Near nodes keep splitting the last bucket.
    for n in 0..20 {
        t.insert(T0, node(0x01 << (n % 7), 200 + n), true);
    }
    assert!(t.bucket_count() > 2);
    assert_eq!(t.len(), t.entries().count());
    for e in t.entries() {
        assert_eq!(t.get(&e.id).map(|x| x.addr), Some(e.addr));
    }
}

#[test]
fn a_failing_node_is_replaced_from_the_cache() {
    let mut t = RoutingTable::new(own());
    for n in 0..8 {
        t.insert(T0, node(0x80, n), true);
    }
    t.insert(T0, node(0x01, 100), true); // split
    assert_eq!(t.insert(T0, node(0x90, 50), true), Inserted::Cached);
    let victim = node(0x80, 3);
    for _ in 0..MAX_FAILURES - 1 {
        t.failed(victim.addr, T0);
        assert!(t.get(&victim.id).is_some());
    }
    assert_eq!(
        t.get(&victim.id).unwrap().state(T0),
        NodeState::Questionable
    );
    t.failed(victim.addr, T0);
    assert!(t.get(&victim.id).is_none(), "bad node replaced");
    assert!(t.get(&id(0x90, 50)).is_some(), "replacement promoted");
    assert_eq!(t.replacement_len(), 0);
}

#[test]
fn a_bad_node_gives_way_to_a_newcomer_at_once() {
    let mut t = RoutingTable::new(own());
    for n in 0..8 {
        t.insert(T0, node(0x80, n), true);
    }
    t.insert(T0, node(0x01, 100), true);
    for _ in 0..MAX_FAILURES {
        t.failed(addr(5), T0);
    }
    // No replacement was waiting, so it stayed, bad.
    assert_eq!(t.get(&id(0x80, 5)).unwrap().state(T0), NodeState::Bad);
    assert!(t
        .closest(&id(0x80, 5), 8, T0)
        .iter()
        .all(|n| n.id != id(0x80, 5)));
    assert_eq!(t.insert(T0, node(0xa0, 60), false), Inserted::Added);
    assert!(t.get(&id(0x80, 5)).is_none());
}

#[test]
fn node_states_follow_replies_and_time() {
    let mut t = RoutingTable::new(own());
    t.insert(T0, node(0x80, 1), true);
    t.insert(T0, node(0x80, 2), false);
    let e1 = t.get(&id(0x80, 1)).unwrap();
    assert_eq!(e1.state(T0), NodeState::Good);
    assert_eq!(e1.state(T0 + GOOD_FOR), NodeState::Questionable);
    assert_eq!(
        t.get(&id(0x80, 2)).unwrap().state(T0),
        NodeState::Questionable
    );
    // A node that never replied goes at its first failure.
    t.failed(addr(2), T0);
    assert!(t.get(&id(0x80, 2)).is_none());
    // Questionable nodes are offered for pinging once a minute.
    let later = T0 + GOOD_FOR;
    assert_eq!(t.nodes_to_ping(later, 10).len(), 1);
    assert!(t.nodes_to_ping(later, 10).is_empty());
    assert_eq!(
        t.nodes_to_ping(later + Duration::from_secs(60), 10).len(),
        1
    );
    // A reply makes it good again.
    t.insert(later, node(0x80, 1), true);
    assert_eq!(t.get(&id(0x80, 1)).unwrap().state(later), NodeState::Good);
}

#[test]
fn one_node_per_ip() {
    let mut t = RoutingTable::new(own());
    let a = node(0x80, 1);
    t.insert(T0, a, true);
    let other_port = NodeInfo {
        id: id(0x81, 99),
        addr: SocketAddr::new(a.addr.ip(), 7000),
    };
    assert_eq!(t.insert(T0, other_port, true), Inserted::Refused);
    // The same id from another address does not displace the one we know.
    let stolen_id = NodeInfo {
        id: a.id,
        addr: addr(77),
    };
    assert_eq!(t.insert(T0, stolen_id, true), Inserted::Refused);
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(&a.id).unwrap().addr, a.addr);
}

#[test]
fn a_node_that_changes_its_id_is_dropped() {
    let mut t = RoutingTable::new(own());
    let a = node(0x80, 1);
    t.insert(T0, a, true);
    let renamed = NodeInfo {
        id: id(0x40, 1),
        addr: a.addr,
    };
    assert_eq!(t.insert(T0, renamed, true), Inserted::IdChanged);
    assert!(t.get(&a.id).is_none());
    assert!(t.get(&renamed.id).is_none());
    assert!(t.is_empty());
}

#[test]
fn at_most_two_per_subnet_in_a_bucket() {
    let mut t = RoutingTable::new(own());
    let in_subnet = |host: u8, n: u16| NodeInfo {
        id: id(0x80, n),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(45, 1, 1, host)), 6881),
    };
    assert_eq!(t.insert(T0, in_subnet(1, 1), true), Inserted::Added);
    assert_eq!(t.insert(T0, in_subnet(2, 2), true), Inserted::Added);
    assert_eq!(t.insert(T0, in_subnet(3, 3), true), Inserted::Refused);
    // Private networks are exempt.
    for host in 1..=5 {
        let n = NodeInfo {
            id: id(0x80, 10 + u16::from(host)),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, host)), 6881),
        };
        assert_eq!(t.insert(T0, n, true), Inserted::Added);
    }
}

#[test]
fn verified_ids_are_preferred_when_full() {
    let mut t = RoutingTable::new(own());
    // A full far bucket of unverified nodes that never replied.
    for n in 0..8 {
        t.insert(T0, node(0x80, n), false);
    }
    t.insert(T0, node(0x01, 100), true); // split: the far bucket is final
    let ip: IpAddr = "45.9.9.9".parse().unwrap();
    let mut state = 5;
    let mut vid = node_id::random_id_for_ip(ip, &mut state);
    vid.0[0] |= 0x80; // keep it in the far bucket...
                      // ...and still valid: search for one that is.
    while !node_id::is_valid(&vid, ip) || vid.0[0] & 0x80 == 0 {
        vid = node_id::random_id_for_ip(ip, &mut state);
    }
    let verified = NodeInfo {
        id: vid,
        addr: SocketAddr::new(ip, 6881),
    };
    assert_eq!(t.insert(T0, verified, true), Inserted::Added);
    assert!(t.get(&vid).unwrap().verified);
    // An unverified newcomer only waits.
    assert_eq!(t.insert(T0, node(0xf0, 300), true), Inserted::Cached);
}

#[test]
fn closest_sorts_by_xor_distance() {
    let mut t = RoutingTable::new(own());
    for n in 0..40u16 {
        t.insert(T0, node((n * 37 % 256) as u8, n), true);
    }
    let target = id(0x55, 0);
    let got = t.closest(&target, 8, T0);
    assert_eq!(got.len(), 8);
    let mut all: Vec<NodeInfo> = t.entries().map(Entry::info).collect();
    all.sort_by_key(|n| n.id.distance(&target));
    assert_eq!(got, all[..8].to_vec());
}

#[test]
fn refresh_targets_fall_in_their_bucket() {
    let mut t = RoutingTable::new(NodeId([0x5a; 20]));
    let mut state = 3;
    for n in 0..200u16 {
        let mut nid = [0u8; 20];
        for (i, b) in nid.iter_mut().enumerate() {
            *b = (crate::rng::next(&mut state) >> (i % 8)) as u8;
        }
        t.insert(
            T0,
            NodeInfo {
                id: NodeId(nid),
                addr: addr(n),
            },
            true,
        );
    }
    let buckets = t.bucket_count();
    assert!(t.buckets_to_refresh(T0, 200, &mut state).is_empty());
    let later = T0 + REFRESH_AFTER;
    let targets = t.buckets_to_refresh(later, 200, &mut state);
    assert_eq!(targets.len(), buckets);
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(t.index(target), i);
    }
    assert!(t.buckets_to_refresh(later, 200, &mut state).is_empty());
}

#[test]
fn saved_table_round_trips() {
    let saved = SavedTable {
        id: NodeId([3; 20]),
        nodes: vec![
            node(0x80, 1),
            NodeInfo {
                id: NodeId([4; 20]),
                addr: "[2001:db8::1]:6881".parse().unwrap(),
            },
        ],
    };
    assert_eq!(SavedTable::decode(&saved.encode()).unwrap(), saved);
    assert_eq!(SavedTable::decode(b"de"), Err(SavedTableError::BadId));
    assert!(SavedTable::decode(b"x").is_err());
}
