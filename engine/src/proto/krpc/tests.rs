use proptest::prelude::*;

use super::*;

fn id(s: &[u8; 20]) -> NodeId {
    NodeId(*s)
}

/// Decodes `bytes`, checks that it re-encodes to exactly `bytes` (the BEP 5
/// examples are canonical), and returns it.
fn round_trip(bytes: &[u8]) -> Message {
    let m = Message::decode(bytes)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(bytes)));
    assert_eq!(
        String::from_utf8_lossy(&m.to_bytes()),
        String::from_utf8_lossy(bytes)
    );
    m
}

fn query(m: &Message) -> &Query {
    match &m.body {
        Body::Query(q) => q,
        other => panic!("not a query: {other:?}"),
    }
}

fn response(m: &Message) -> &Response {
    match &m.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

#[test]
fn bep5_ping_examples() {
    let q = round_trip(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe");
    assert_eq!(q.transaction, b"aa");
    assert_eq!(query(&q).id, id(b"abcdefghij0123456789"));
    assert_eq!(query(&q).kind, QueryKind::Ping);
    let r = round_trip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
    assert_eq!(response(&r).id, id(b"mnopqrstuvwxyz123456"));
}

#[test]
fn bep5_find_node_examples() {
    let q = round_trip(
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::FindNode {
            target: id(b"mnopqrstuvwxyz123456")
        }
    );
    // BEP 5 abbreviates the node list as "def456..." (9 bytes, not a whole
    // compact node): accepted, with no node in it.
    let r = Message::decode(b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re")
        .unwrap();
    assert_eq!(response(&r).id, id(b"0123456789abcdefghij"));
    assert!(response(&r).nodes.is_empty());
    // The same reply with one real node.
    let r = round_trip(
        b"d1:rd2:id20:0123456789abcdefghij5:nodes26:mnopqrstuvwxyz123456\x7f\x00\x00\x01\x1a\xe1e1:t2:aa1:y1:re",
    );
    assert_eq!(
        response(&r).nodes,
        vec![NodeInfo {
            id: id(b"mnopqrstuvwxyz123456"),
            addr: "127.0.0.1:6881".parse().unwrap()
        }]
    );
}

#[test]
fn bep5_get_peers_examples() {
    let q = round_trip(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::GetPeers {
            info_hash: InfoHash(*b"mnopqrstuvwxyz123456"),
            noseed: false,
            scrape: false
        }
    );
    let r = round_trip(
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
    );
    let r = response(&r);
    assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
    assert_eq!(
        r.values,
        vec![
            parse_compact_addr(b"axje.u").unwrap(),
            parse_compact_addr(b"idhtnm").unwrap()
        ]
    );
    let r = Message::decode(
        b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re",
    )
    .unwrap();
    assert_eq!(response(&r).token.as_deref(), Some(&b"aoeusnth"[..]));
}

#[test]
fn bep5_announce_peer_examples() {
    let q = round_trip(
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::AnnouncePeer {
            info_hash: InfoHash(*b"mnopqrstuvwxyz123456"),
            port: 6881,
            implied_port: true,
            token: b"aoeusnth".to_vec(),
            seed: false
        }
    );
    round_trip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
}

#[test]
fn bep5_error_example() {
    let e = round_trip(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee");
    assert_eq!(
        e.body,
        Body::Error(ErrorReply {
            code: ERROR_GENERIC,
            message: "A Generic Error Ocurred".into()
        })
    );
}

fn every_message() -> Vec<Message> {
    let me = NodeId([7; 20]);
    let v4: SocketAddr = "203.0.113.7:6881".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:51413".parse().unwrap();
    let n4 = NodeInfo {
        id: NodeId([1; 20]),
        addr: v4,
    };
    let n6 = NodeInfo {
        id: NodeId([2; 20]),
        addr: v6,
    };
    let ih = InfoHash([9; 20]);
    let q = |kind, want| Body::Query(Query { id: me, kind, want });
    let mut full = Response::with_id(me);
    full.nodes = vec![n4, n4];
    full.nodes6 = vec![n6];
    full.token = Some(b"tok".to_vec());
    full.values = vec![v4, v6];
    let mut seeds = BloomFilter::default();
    seeds.insert(v4.ip());
    full.scrape = Some(Box::new(Scrape {
        seeds,
        peers: BloomFilter::default(),
    }));
    full.samples = Some(Samples {
        interval: 300,
        num: 12,
        hashes: vec![ih, InfoHash([3; 20])],
    });
    let bodies = vec![
        q(QueryKind::Ping, Want::default()),
        q(
            QueryKind::FindNode {
                target: NodeId([5; 20]),
            },
            Want { v4: true, v6: true },
        ),
        q(
            QueryKind::GetPeers {
                info_hash: ih,
                noseed: true,
                scrape: true,
            },
            Want {
                v4: false,
                v6: true,
            },
        ),
        q(
            QueryKind::AnnouncePeer {
                info_hash: ih,
                port: 0,
                implied_port: true,
                token: vec![0, 255],
                seed: true,
            },
            Want::default(),
        ),
        q(
            QueryKind::SampleInfohashes {
                target: NodeId([6; 20]),
            },
            Want::default(),
        ),
        q(
            QueryKind::Other {
                method: b"vote".to_vec(),
            },
            Want::default(),
        ),
        Body::Response(Response::with_id(me)),
        Body::Response(full),
        Body::Error(ErrorReply {
            code: ERROR_METHOD_UNKNOWN,
            message: "Method Unknown".into(),
        }),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Message {
            transaction: vec![i as u8, 0xff],
            version: (i % 2 == 0).then(|| b"RS01".to_vec()),
            ip: match i % 3 {
                0 => None,
                1 => Some(v4),
                _ => Some(v6),
            },
            read_only: i % 2 == 1,
            body,
        })
        .collect()
}

#[test]
fn every_message_round_trips() {
    for m in every_message() {
        let bytes = m.to_bytes();
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            m,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn refuses_what_it_cannot_use() {
    let bad_field = |bytes: &[u8]| match Message::decode(bytes) {
        Err(KrpcError::BadField { field, .. }) => field,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
    };
    assert_eq!(
        bad_field(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe"),
        "t"
    );
    assert_eq!(bad_field(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"), "a.id");
    assert_eq!(bad_field(b"d1:t2:aa1:y1:xe"), "y");
    assert_eq!(
        bad_field(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:qe"),
        "q"
    );
    assert_eq!(bad_field(b"li1ee"), "(root)");
    assert_eq!(
        bad_field(b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe"),
        "a.port"
    );
    assert!(matches!(
        Message::decode(b"d1:t"),
        Err(KrpcError::Bencode(_))
    ));
    let huge = vec![b'x'; MAX_MESSAGE_LEN + 1];
    assert!(matches!(
        Message::decode(&huge),
        Err(KrpcError::TooLarge { .. })
    ));
}

#[test]
fn node_id_distance_and_prefix() {
    let a = NodeId([0; 20]);
    let mut b = [0u8; 20];
    b[1] = 0x10;
    let b = NodeId(b);
    assert_eq!(a.common_prefix_len(&b), 11);
    assert_eq!(a.common_prefix_len(&a), 160);
    assert!(b.bit(11) && !b.bit(10));
    assert_eq!(a.with_bit(11, true), b);
    assert_eq!(a.distance(&b), b.0);
}

#[test]
fn bloom_estimate_tracks_the_count() {
    for n in [1u32, 10, 100, 1000] {
        let mut f = BloomFilter::default();
        for i in 0..n {
            f.insert(IpAddr::from((0xc000_0000 + i).to_be_bytes()));
        }
        let e = f.estimate();
        let tolerance = (f64::from(n) * 0.15).max(2.0);
        assert!((e - f64::from(n)).abs() <= tolerance, "{n}: {e}");
    }
    assert!(BloomFilter::default().estimate().abs() < 0.001);
}

/// What a fuzzer checks: no input panics, and whatever decodes re-encodes
/// to something that decodes the same.
fn check(bytes: &[u8]) {
    if let Ok(m) = Message::decode(bytes) {
        let again = Message::decode(&m.to_bytes()).expect("our encoding decodes");
        assert_eq!(again, m);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..9,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let mut bytes = every_message()[which].to_bytes();
        for (pos, byte, op) in edits {
            let pos = usize::from(pos) % (bytes.len() + 1);
            match op {
                0 if pos < bytes.len() => bytes[pos] = byte,
                1 => bytes.insert(pos, byte),
                2 if pos < bytes.len() => { bytes.remove(pos); }
                _ => bytes.truncate(pos),
            }
        }
        check(&bytes);
    }
}

#[test]
fn digit_flips_of_every_message_never_panic() {
    // Length prefixes are where parsers break: try every digit at every
    // position of every sample message.
    for m in every_message() {
        let bytes = m.to_bytes();
        for pos in 0..bytes.len() {
            for d in [b'0', b'1', b'9', b'e', b':', b'd', b'l', b'i'] {
                let mut b = bytes.clone();
                b[pos] = d;
                check(&b);
            }
        }
    }
}
