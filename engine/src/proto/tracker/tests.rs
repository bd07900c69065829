use super::*;

fn announce() -> Announce {
    Announce {
        info_hash: InfoHash([0xab; 20]),
        peer_id: *b"-RS0100-abcdefghijkl",
        port: 6881,
        uploaded: 1,
        downloaded: 2,
        left: 3,
        event: Event::Started,
        numwant: Some(50),
        key: 0xdead_beef,
        tracker_id: Some("id 1".into()),
    }
}

#[test]
fn http_announce_url_encodes_every_parameter() {
    let url = announce().http_url("http://t.example/announce?passkey=x");
    assert!(url.starts_with("http://t.example/announce?passkey=x&info_hash=%AB%AB"));
    for part in [
        "peer_id=%2DRS0100%2Dabcdefghijkl",
        "&port=6881&uploaded=1&downloaded=2&left=3&compact=1&key=deadbeef",
        "&event=started",
        "&numwant=50",
        "&trackerid=id%201",
    ] {
        assert!(url.contains(part), "{part} in {url}");
    }
    let plain = Announce {
        event: Event::None,
        numwant: None,
        tracker_id: None,
        ..announce()
    };
    let url = plain.http_url("http://t/announce");
    assert!(url.starts_with("http://t/announce?info_hash="));
    assert!(!url.contains("event=") && !url.contains("numwant") && !url.contains("trackerid"));
}

#[test]
fn http_reply_with_compact_v4_and_v6_peers() {
    let mut body =
        b"d8:completei5e10:incompletei2e8:intervali1800e12:min intervali900e5:peers12:".to_vec();
    body.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 80]);
    body.extend_from_slice(b"6:peers618:");
    body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&[0x1a, 0xe2]);
    body.extend_from_slice(b"10:tracker id3:abc15:warning message4:slowe");
    let reply = parse_http_announce(&body).unwrap();
    assert_eq!(reply.interval, 1800);
    assert_eq!(reply.min_interval, Some(900));
    assert_eq!((reply.complete, reply.incomplete), (Some(5), Some(2)));
    assert_eq!(reply.tracker_id.as_deref(), Some("abc"));
    assert_eq!(reply.warning.as_deref(), Some("slow"));
    let peers: Vec<String> = reply.peers.iter().map(|p| p.to_string()).collect();
    assert_eq!(peers, ["127.0.0.1:6881", "10.0.0.2:80", "[::1]:6882"]);
}

#[test]
fn http_reply_with_dictionary_peers_skips_bad_entries() {
    let body = b"d8:intervali60e5:peersld2:ip9:127.0.0.14:porti6881eed2:ip11:example.org4:porti1eed2:ip3:::14:porti99999eed2:ip3:::14:porti7eeee";
    let reply = parse_http_announce(body).unwrap();
    let peers: Vec<String> = reply.peers.iter().map(|p| p.to_string()).collect();
    assert_eq!(peers, ["127.0.0.1:6881", "[::1]:7"]);
}

#[test]
fn http_failures_and_malformed_replies() {
    assert_eq!(
        parse_http_announce(b"d14:failure reason12:unregisterede"),
        Err(TrackerError::Failure("unregistered".into()))
    );
    assert_eq!(
        parse_http_announce(b"d5:peers0:e"),
        Err(TrackerError::BadField {
            field: "interval",
            problem: "is missing".into()
        })
    );
    assert!(matches!(
        parse_http_announce(b"d8:intervali60e5:peers7:1234567e"),
        Err(TrackerError::BadField { field: "peers", .. })
    ));
    assert!(matches!(
        parse_http_announce(b"d8:intervali-1ee"),
        Err(TrackerError::BadField {
            field: "interval",
            ..
        })
    ));
    assert!(matches!(
        parse_http_announce(b"<html>"),
        Err(TrackerError::Bencode(_))
    ));
    assert!(matches!(
        parse_http_announce(b"le"),
        Err(TrackerError::BadField { .. })
    ));
}

#[test]
fn scrape_urls_and_replies() {
    assert_eq!(
        scrape_url("http://t/announce").as_deref(),
        Some("http://t/scrape")
    );
    assert_eq!(
        scrape_url("http://t/x/announce.php?k=1").as_deref(),
        Some("http://t/x/scrape.php?k=1")
    );
    assert_eq!(scrape_url("http://t/a"), None);
    let mut body = b"d5:filesd20:".to_vec();
    body.extend_from_slice(&[7; 20]);
    body.extend_from_slice(b"d8:completei3e10:downloadedi9e10:incompletei1eeee");
    let stats = parse_http_scrape(&body).unwrap();
    assert_eq!(
        stats[&InfoHash([7; 20])],
        ScrapeStats {
            complete: 3,
            downloaded: 9,
            incomplete: 1
        }
    );
    assert!(parse_http_scrape(b"d5:filesd3:abcdeee").is_err());
}

#[test]
fn udp_requests_round_trip() {
    for req in [
        UdpRequest::Connect { transaction_id: 7 },
        UdpRequest::Announce {
            connection_id: 0x1122_3344_5566_7788,
            transaction_id: 9,
            announce: Announce {
                tracker_id: None,
                ..announce()
            },
        },
        UdpRequest::Announce {
            connection_id: 1,
            transaction_id: 2,
            announce: Announce {
                numwant: None,
                tracker_id: None,
                event: Event::Stopped,
                ..announce()
            },
        },
        UdpRequest::Scrape {
            connection_id: 5,
            transaction_id: 6,
            info_hashes: vec![InfoHash([1; 20]), InfoHash([2; 20])],
        },
    ] {
        let mut packet = Vec::new();
        req.encode(&mut packet);
        assert_eq!(UdpRequest::decode(&packet).unwrap(), req);
    }
    let mut connect = Vec::new();
    UdpRequest::Connect { transaction_id: 1 }.encode(&mut connect);
    assert_eq!(connect.len(), 16);
    assert_eq!(&connect[..8], &[0, 0, 4, 0x17, 0x27, 0x10, 0x19, 0x80]);
}

#[test]
fn udp_replies_round_trip_per_family() {
    let v4: SocketAddr = "127.0.0.1:6881".parse().unwrap();
    let v6: SocketAddr = "[::1]:6882".parse().unwrap();
    let announce = UdpReply::Announce {
        transaction_id: 3,
        interval: 1800,
        leechers: 2,
        seeders: 1,
        peers: vec![v4, v6],
    };
    for (ipv6, expected) in [(false, v4), (true, v6)] {
        let mut packet = Vec::new();
        announce.encode(&mut packet, ipv6);
        let UdpReply::Announce { peers, .. } = UdpReply::decode(&packet, ipv6).unwrap() else {
            panic!()
        };
        assert_eq!(peers, [expected]);
    }
    for reply in [
        UdpReply::Connect {
            transaction_id: 1,
            connection_id: 99,
        },
        UdpReply::Scrape {
            transaction_id: 2,
            stats: vec![ScrapeStats {
                complete: 1,
                downloaded: 2,
                incomplete: 3,
            }],
        },
        UdpReply::Error {
            transaction_id: 4,
            message: "not whitelisted".into(),
        },
    ] {
        let mut packet = Vec::new();
        reply.encode(&mut packet, false);
        assert_eq!(UdpReply::decode(&packet, false).unwrap(), reply);
    }
}

#[test]
fn udp_garbage_is_a_typed_error() {
    for packet in [
        &b""[..],
        &[0; 15][..],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1][..], // connect, wrong protocol id
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1][..], // announce, too short
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1][..], // scrape without hashes
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1][..], // unknown action
    ] {
        assert!(
            matches!(UdpRequest::decode(packet), Err(TrackerError::BadPacket(_))),
            "{packet:?}"
        );
    }
    assert!(UdpReply::decode(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0], false).is_err());
    assert!(UdpReply::decode(
        &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        false
    )
    .is_err());
    assert!(UdpReply::decode(&[0, 0, 0, 8, 0, 0, 0, 1], false).is_err());
}

#[test]
fn retransmit_backoff() {
    assert_eq!(udp_retransmit_timeout(0), Duration::from_secs(15));
    assert_eq!(udp_retransmit_timeout(3), Duration::from_secs(120));
    assert_eq!(udp_retransmit_timeout(8), Duration::from_secs(3840));
    assert_eq!(udp_retransmit_timeout(20), Duration::from_secs(3840));
}
