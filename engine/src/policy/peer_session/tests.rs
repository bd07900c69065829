use super::*;
use crate::proto::info_hash::InfoHash;
use crate::proto::wire::{decode, Reserved};

/// 3 pieces of 64 KiB, the last 40 000 bytes; 20 000 bytes of metadata.
struct FakeTorrent {
    info: Vec<u8>,
}

impl TorrentView for FakeTorrent {
    fn num_pieces(&self) -> u32 {
        3
    }
    fn piece_len(&self, piece: u32) -> u32 {
        if piece == 2 {
            40_000
        } else {
            65_536
        }
    }
    fn info_bytes(&self) -> &[u8] {
        &self.info
    }
}

fn torrent() -> FakeTorrent {
    FakeTorrent {
        info: (0..20_000u32).map(|i| i as u8).collect(),
    }
}

fn handshake(fast: bool, ext: bool) -> Handshake {
    let mut reserved = Reserved::default();
    if fast {
        reserved.0[7] |= 0x04;
    }
    if ext {
        reserved.0[5] |= 0x10;
    }
    Handshake {
        reserved,
        info_hash: InfoHash([1; 20]),
        peer_id: [2; 20],
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        max_queued_requests: 4,
        client_name: "test".into(),
        listen_port: Some(6881),
        dht_port: None,
        pex: true,
    }
}

/// Decodes everything the session queued for sending.
fn sent(s: &mut PeerSession) -> Vec<Message<'static>> {
    let mut buf = Vec::new();
    s.drain_output_into(&mut buf);
    let buf: &'static [u8] = Box::leak(buf.into_boxed_slice());
    let mut msgs = Vec::new();
    let mut at = 0;
    while let Some((m, used)) = decode(&buf[at..], 1 << 20).unwrap() {
        msgs.push(m);
        at += used;
    }
    assert_eq!(at, buf.len(), "only whole messages are queued");
    msgs
}

fn req(piece: u32, offset: u32, length: u32) -> BlockRequest {
    BlockRequest {
        piece,
        offset,
        length,
    }
}

#[test]
fn greets_fast_peers_with_have_all_and_others_with_a_bitfield() {
    let t = torrent();
    let mut fast = PeerSession::new(&handshake(true, true), None, &t, config());
    let greeting = sent(&mut fast);
    assert!(matches!(greeting[0], Message::Extended { id: 0, .. }));
    assert_eq!(greeting[1], Message::HaveAll);

    let mut plain = PeerSession::new(&handshake(false, false), None, &t, config());
    assert_eq!(sent(&mut plain), [Message::Bitfield(&[0xe0])]);
}

#[test]
fn extension_handshake_advertises_reqq_metadata_size_and_yourip() {
    let t = torrent();
    let ip: IpAddr = "127.0.0.11".parse().unwrap();
    let mut s = PeerSession::new(&handshake(true, true), Some(ip), &t, config());
    let Message::Extended { payload, .. } = sent(&mut s)[0] else {
        panic!()
    };
    let hs = ExtensionHandshake::decode(payload).unwrap();
    assert_eq!(hs.id_of(UT_METADATA), Some(OUR_UT_METADATA_ID));
    assert_eq!(hs.reqq, Some(4));
    assert_eq!(hs.metadata_size, Some(20_000));
    assert_eq!(hs.your_ip, Some(ip));
    assert_eq!(hs.listen_port, Some(6881));
}

/// A torrent like `torrent()`, private (BEP 27).
struct PrivateTorrent(FakeTorrent);

impl TorrentView for PrivateTorrent {
    fn num_pieces(&self) -> u32 {
        self.0.num_pieces()
    }
    fn piece_len(&self, piece: u32) -> u32 {
        self.0.piece_len(piece)
    }
    fn info_bytes(&self) -> &[u8] {
        self.0.info_bytes()
    }
    fn private(&self) -> bool {
        true
    }
}

fn their_extension_handshake(extensions: &[(&str, u8)]) -> Vec<u8> {
    let hs = ExtensionHandshake {
        extensions: extensions
            .iter()
            .map(|(n, id)| ((*n).to_owned(), *id))
            .collect(),
        listen_port: Some(51413),
        ..Default::default()
    };
    let mut payload = Vec::new();
    hs.encode(&mut payload);
    payload
}

#[test]
fn peer_exchange_with_public_torrents_only() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, true), None, &t, config());
    let Message::Extended { payload, .. } = sent(&mut s)[0] else {
        panic!()
    };
    let ours = ExtensionHandshake::decode(payload).unwrap();
    assert_eq!(ours.id_of(UT_PEX), Some(OUR_UT_PEX_ID));
    // The peer's ut_pex id is where our messages go.
    let theirs = their_extension_handshake(&[(UT_PEX, 9)]);
    s.on_message(
        Message::Extended {
            id: 0,
            payload: &theirs,
        },
        &t,
    )
    .unwrap();
    assert!(s.peer_takes_pex());
    assert_eq!(s.peer_listen_port(), Some(51413));
    let message = PexMessage {
        added: vec![("1.2.3.4:5".parse().unwrap(), 0)],
        dropped: vec![],
    };
    s.send_pex(&message);
    let Message::Extended { id: 9, payload } = sent(&mut s)[0] else {
        panic!("not a ut_pex message")
    };
    assert_eq!(PexMessage::decode(payload, 50).unwrap(), message);
    // Theirs, with our id, comes out as an event.
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    let event = s
        .on_message(
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload: &bytes,
            },
            &t,
        )
        .unwrap();
    assert!(matches!(event, Event::PeerExchange(m) if m == message));

    // Private (BEP 27), or peer exchange turned off: not advertised, not
    // sent, not taken.
    exchanges_nothing(&PrivateTorrent(torrent()), config(), &theirs, &message);
    let off = SessionConfig {
        pex: false,
        ..config()
    };
    exchanges_nothing(&t, off, &theirs, &message);
}

/// A session for `torrent` with `config` neither advertises ut_pex nor
/// sends nor takes a PEX message, though the peer (`theirs`) offers it.
fn exchanges_nothing(
    torrent: &dyn TorrentView,
    config: SessionConfig,
    theirs: &[u8],
    message: &PexMessage,
) {
    let mut s = PeerSession::new(&handshake(true, true), None, torrent, config);
    let Message::Extended { payload, .. } = sent(&mut s)[0] else {
        panic!()
    };
    assert_eq!(
        ExtensionHandshake::decode(payload).unwrap().id_of(UT_PEX),
        None
    );
    s.on_message(
        Message::Extended {
            id: 0,
            payload: theirs,
        },
        torrent,
    )
    .unwrap();
    assert!(!s.peer_takes_pex());
    s.send_pex(message);
    assert!(sent(&mut s).is_empty());
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    let event = s
        .on_message(
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload: &bytes,
            },
            torrent,
        )
        .unwrap();
    assert!(matches!(event, Event::None));
}

#[test]
fn serves_requests_only_while_unchoked_and_rejects_the_rest() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config());
    sent(&mut s);
    s.on_message(Message::Interested, &t).unwrap();
    assert!(s.is_interested());

    // Choked: a fast peer gets a reject.
    s.on_message(Message::Request(req(0, 0, 16384)), &t)
        .unwrap();
    assert_eq!(sent(&mut s), [Message::RejectRequest(req(0, 0, 16384))]);
    assert_eq!(s.queued(), 0);

    s.set_choking(false);
    assert_eq!(sent(&mut s), [Message::Unchoke]);
    for i in 0..4 {
        s.on_message(Message::Request(req(0, i * 16384, 16384)), &t)
            .unwrap();
    }
    // The queue holds `max_queued_requests`; the fifth is rejected.
    s.on_message(Message::Request(req(1, 0, 16384)), &t)
        .unwrap();
    assert_eq!(sent(&mut s), [Message::RejectRequest(req(1, 0, 16384))]);
    assert_eq!(s.pop_request(), Some(req(0, 0, 16384)));

    // Cancel removes a queued request and answers it (BEP 6).
    s.on_message(Message::Cancel(req(0, 16384, 16384)), &t)
        .unwrap();
    assert_eq!(sent(&mut s), [Message::RejectRequest(req(0, 16384, 16384))]);
    // A cancel of something not queued is ignored.
    s.on_message(Message::Cancel(req(2, 0, 1)), &t).unwrap();
    assert!(sent(&mut s).is_empty());

    // Choking rejects what is left.
    s.set_choking(true);
    assert_eq!(
        sent(&mut s),
        [
            Message::Choke,
            Message::RejectRequest(req(0, 32768, 16384)),
            Message::RejectRequest(req(0, 49152, 16384)),
        ]
    );
    assert_eq!(s.counters().rejected_requests, 5);
}

#[test]
fn peers_without_fast_extension_get_silence_not_rejects() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(false, false), None, &t, config());
    sent(&mut s);
    s.on_message(Message::Request(req(0, 0, 16384)), &t)
        .unwrap();
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.counters().rejected_requests, 1);
    for fast_only in [
        Message::HaveNone,
        Message::AllowedFast(1),
        Message::SuggestPiece(0),
    ] {
        assert_eq!(
            s.on_message(fast_only, &t),
            Err(SessionEnd::Violation(Violation::FastWithoutSupport))
        );
    }
    assert_eq!(
        s.on_message(
            Message::Extended {
                id: 0,
                payload: b"de"
            },
            &t
        ),
        Err(SessionEnd::Violation(Violation::ExtendedWithoutSupport))
    );
}

#[test]
fn invalid_requests_are_violations() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config());
    s.set_choking(false);
    for bad in [
        req(3, 0, 16384),          // piece out of range
        req(2, 32768, 16384),      // past the end of the short last piece
        req(0, 0, 0),              // empty
        req(0, 0, 128 * 1024 + 1), // above 128 KiB
        req(0, u32::MAX, 16384),   // offset overflow
    ] {
        assert_eq!(
            s.on_message(Message::Request(bad), &t),
            Err(SessionEnd::Violation(Violation::InvalidRequest(bad)))
        );
    }
    // The exact end of the last piece, and a 32 KiB block, are fine.
    s.on_message(Message::Request(req(2, 40_000 - 7232, 7232)), &t)
        .unwrap();
    s.on_message(Message::Request(req(0, 0, 32768)), &t)
        .unwrap();
    assert_eq!(s.queued(), 2);
}

#[test]
fn state_messages_and_bad_ones() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, true), None, &t, config());
    for ok in [
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Have(2),
        Message::Port(1),
        Message::Unknown { id: 77 },
        Message::HaveNone,
        Message::Bitfield(&[0x40]),
        Message::Extended {
            id: 9,
            payload: b"ignored",
        },
    ] {
        s.on_message(ok, &t).unwrap();
    }
    s.on_message(Message::Interested, &t).unwrap();
    s.on_message(Message::NotInterested, &t).unwrap();
    assert!(!s.is_interested());
    assert_eq!(
        s.on_message(Message::Have(3), &t),
        Err(Violation::HaveOutOfRange {
            piece: 3,
            num_pieces: 3
        }
        .into())
    );
    for bits in [&[0x40, 0][..], &[0x41][..], &[][..]] {
        assert!(matches!(
            s.on_message(Message::Bitfield(bits), &t),
            Err(SessionEnd::Violation(Violation::BadBitfield { .. }))
        ));
    }
    assert_eq!(
        s.on_message(Message::Bitfield(&[0xe0]), &t),
        Err(SessionEnd::PeerIsSeed)
    );
    assert_eq!(
        s.on_message(Message::HaveAll, &t),
        Err(SessionEnd::PeerIsSeed)
    );
    assert_eq!(
        s.on_message(
            Message::Piece {
                piece: 1,
                offset: 0,
                data: b"x"
            },
            &t
        ),
        Err(Violation::UnrequestedBlock(1).into())
    );
    assert!(matches!(
        s.on_message(
            Message::Extended {
                id: 0,
                payload: b"not bencode"
            },
            &t
        ),
        Err(SessionEnd::Violation(Violation::Extension(_)))
    ));
}

#[test]
fn serves_metadata_pieces_and_rejects_beyond_the_end() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, true), None, &t, config());
    sent(&mut s);
    // The peer's extension handshake names its id for ut_metadata: 3.
    s.on_message(
        Message::Extended {
            id: 0,
            payload: b"d1:md11:ut_metadatai3eee",
        },
        &t,
    )
    .unwrap();
    let request = |piece: u32, s: &mut PeerSession| {
        let mut payload = Vec::new();
        MetadataMessage::Request { piece }.encode(&mut payload);
        s.on_message(
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload: &payload,
            },
            &t,
        )
        .unwrap();
        let msgs = sent(s);
        let Message::Extended { id: 3, payload } = msgs[0] else {
            panic!("{msgs:?}")
        };
        MetadataMessage::decode(payload).unwrap()
    };
    let MetadataMessage::Data {
        piece: 0,
        total_size: 20_000,
        data,
    } = request(0, &mut s)
    else {
        panic!()
    };
    assert_eq!(data, &t.info[..16384]);
    let MetadataMessage::Data { piece: 1, data, .. } = request(1, &mut s) else {
        panic!()
    };
    assert_eq!(data, &t.info[16384..]);
    assert_eq!(request(2, &mut s), MetadataMessage::Reject { piece: 2 });
    assert_eq!(s.counters().metadata_pieces_served, 2);
}

/// The same torrent, of which we have piece 1 only.
struct PartialTorrent(FakeTorrent);

impl TorrentView for PartialTorrent {
    fn num_pieces(&self) -> u32 {
        self.0.num_pieces()
    }
    fn piece_len(&self, piece: u32) -> u32 {
        self.0.piece_len(piece)
    }
    fn info_bytes(&self) -> &[u8] {
        self.0.info_bytes()
    }
    fn have_piece(&self, piece: u32) -> bool {
        piece == 1
    }
    fn have_pieces(&self) -> Option<Bitfield> {
        let mut b = Bitfield::new(3);
        b.set(1);
        Some(b)
    }
}

fn leeching(fast: bool) -> (PartialTorrent, PeerSession) {
    let t = PartialTorrent(torrent());
    let mut s = PeerSession::new(&handshake(fast, false), None, &t, config());
    assert_eq!(sent(&mut s), [Message::Bitfield(&[0x40])], "what we have");
    assert!(s.is_leeching());
    (t, s)
}

#[test]
fn a_leeching_session_welcomes_seeds_and_reports_their_pieces() {
    let (t, mut s) = leeching(true);
    assert_eq!(
        s.on_message(Message::HaveAll, &t),
        Ok(Event::HasPieces(Bitfield::full(3)))
    );
    assert!(s.peer_is_seed());
    assert_eq!(
        s.on_message(Message::HaveAll, &t),
        Err(SessionEnd::Violation(Violation::LateBitfield))
    );
    // We serve only what we have.
    s.set_choking(false);
    sent(&mut s);
    s.on_message(Message::Request(req(0, 0, 16384)), &t)
        .unwrap();
    assert_eq!(sent(&mut s), [Message::RejectRequest(req(0, 0, 16384))]);
    s.on_message(Message::Request(req(1, 0, 16384)), &t)
        .unwrap();
    assert_eq!(s.queued(), 1);
}

#[test]
fn requests_flow_only_when_interested_and_unchoked_and_blocks_are_matched() {
    let (t, mut s) = leeching(false);
    s.on_message(Message::Have(0), &t).unwrap();
    assert_eq!(s.request_room(), None, "not interested yet");
    s.set_interested(true);
    assert_eq!(sent(&mut s), [Message::Interested]);
    assert_eq!(s.request_room(), None, "choked");
    assert_eq!(s.on_message(Message::Unchoke, &t), Ok(Event::MayRequest));
    let (room, has) = s.request_room().unwrap();
    assert_eq!(room, MIN_QUEUE_DEPTH);
    assert!(has.get(0) && !has.get(2));
    let r = req(0, 0, 16384);
    s.request(&[r, req(0, 16384, 16384)], Duration::from_secs(1));
    assert_eq!(sent(&mut s).len(), 2);
    let data = [7u8; 16384];
    let block = Message::Piece {
        piece: 0,
        offset: 0,
        data: &data,
    };
    assert_eq!(
        s.on_message(block, &t),
        Ok(Event::Block {
            req: r,
            data: &data
        })
    );
    // The same block again was not asked for (any more): ignored, counted.
    assert_eq!(s.on_message(block, &t), Ok(Event::None));
    assert_eq!(s.counters().unrequested_bytes, 16384);
    // A plain peer's choke drops what we asked.
    assert_eq!(
        s.on_message(Message::Choke, &t),
        Ok(Event::Lost(vec![req(0, 16384, 16384)]))
    );
}

#[test]
fn fast_peers_reject_one_by_one_and_allow_pieces_while_choking() {
    let (t, mut s) = leeching(true);
    s.on_message(Message::HaveAll, &t).unwrap();
    s.set_interested(true);
    assert_eq!(
        s.on_message(Message::AllowedFast(2), &t),
        Ok(Event::MayRequest)
    );
    let (_, allowed) = s.request_room().unwrap();
    assert_eq!(allowed.ones().collect::<Vec<_>>(), vec![2]);
    s.request(&[req(2, 0, 16384)], Duration::ZERO);
    assert_eq!(
        s.on_message(Message::Choke, &t),
        Ok(Event::None),
        "BEP 6: no implicit drop"
    );
    assert_eq!(
        s.on_message(Message::RejectRequest(req(2, 0, 16384)), &t),
        Ok(Event::Lost(vec![req(2, 0, 16384)]))
    );
}

#[test]
fn a_silent_peer_is_snubbed_and_its_requests_withdrawn() {
    let (t, mut s) = leeching(false);
    s.on_message(Message::Bitfield(&[0xe0]), &t).unwrap();
    s.set_interested(true);
    s.on_message(Message::Unchoke, &t).unwrap();
    s.request(&[req(0, 0, 16384)], Duration::from_secs(10));
    sent(&mut s);
    let timeout = Duration::from_secs(30);
    assert!(s.check_snub(Duration::from_secs(39), timeout).is_empty());
    assert_eq!(
        s.check_snub(Duration::from_secs(40), timeout),
        vec![req(0, 0, 16384)]
    );
    assert_eq!(sent(&mut s), [Message::Cancel(req(0, 0, 16384))]);
    assert_eq!(s.request_room().unwrap().0, 1, "one block at a time");
}

#[test]
fn queue_depth_follows_the_rate_within_limits() {
    assert_eq!(queue_depth(0.0, 250), MIN_QUEUE_DEPTH);
    // 100 MB/s for 2 s is ~12 200 blocks: capped by our maximum...
    assert_eq!(queue_depth(100e6, 5000), MAX_QUEUE_DEPTH);
    // ...and by the peer's reqq.
    assert_eq!(queue_depth(100e6, 250), 250);
    // 1 MB/s: 2 s of it.
    assert_eq!(queue_depth(1e6, 500), 122);
}

#[test]
fn a_peer_that_keeps_sending_is_never_snubbed() {
    let (t, mut s) = leeching(false);
    s.on_message(Message::Bitfield(&[0xe0]), &t).unwrap();
    s.set_interested(true);
    s.on_message(Message::Unchoke, &t).unwrap();
    let timeout = Duration::from_secs(20);
    for second in 0..60u64 {
        let now = Duration::from_secs(second);
        let offset = (second as u32 % 4) * 16384;
        s.request(&[req(0, offset, 16384)], now);
        let data = [1u8; 16384];
        let block = Message::Piece {
            piece: 0,
            offset,
            data: &data,
        };
        assert!(matches!(s.on_message(block, &t), Ok(Event::Block { .. })));
        s.block_arrived(now);
        // One request stays outstanding all along: the pipeline never empties.
        s.request(&[req(1, offset, 16384)], now);
        assert!(
            s.check_snub(now, timeout).is_empty(),
            "snubbed at {second} s"
        );
        s.cancel(&req(1, offset, 16384));
    }
}

#[test]
fn a_block_that_arrives_after_completion_is_no_breach() {
    let (t, mut s) = leeching(false);
    s.on_message(Message::Bitfield(&[0xe0]), &t).unwrap();
    s.set_interested(true);
    s.on_message(Message::Unchoke, &t).unwrap();
    s.request(&[req(0, 0, 16384)], Duration::ZERO);
    s.finish_download();
    let data = [1u8; 16384];
    let late = Message::Piece {
        piece: 0,
        offset: 0,
        data: &data,
    };
    assert_eq!(s.on_message(late, &t), Ok(Event::None));
    assert_eq!(s.counters().unrequested_bytes, 16384);
}

/// Regression (issue 13): webtorrent starts requesting only on an `unchoke`
/// that arrives after its `interested`; ringseed unchoked once, before it,
/// and webtorrent waited forever.
#[test]
fn interested_is_answered_with_unchoke_when_the_peer_is_unchoked() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config());
    s.set_choking(false);
    sent(&mut s);
    s.on_message(Message::Interested, &t).unwrap();
    assert_eq!(sent(&mut s), vec![Message::Unchoke]);
    // Said again only after a change of interest.
    s.on_message(Message::Interested, &t).unwrap();
    assert!(sent(&mut s).is_empty());
    s.on_message(Message::NotInterested, &t).unwrap();
    s.on_message(Message::Interested, &t).unwrap();
    assert_eq!(sent(&mut s), vec![Message::Unchoke]);
    // A choked peer hears nothing until the choker unchokes it.
    s.set_choking(true);
    sent(&mut s);
    s.on_message(Message::NotInterested, &t).unwrap();
    s.on_message(Message::Interested, &t).unwrap();
    assert!(sent(&mut s).is_empty());
}

#[test]
fn a_peer_that_floods_requests_it_must_know_are_refused_is_dropped() {
    let t = torrent();
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config());
    s.on_message(Message::Interested, &t).unwrap();
    // Choked: 4 queues' worth of refusals are tolerated (in flight when
    // the choke went out), the next one is a flood.
    let limit = config().max_queued_requests * FLOOD_AFTER_QUEUES;
    for i in 0..limit {
        s.on_message(Message::Request(req(0, (i % 4) * 16384, 16384)), &t)
            .unwrap();
    }
    assert_eq!(
        s.on_message(Message::Request(req(0, 0, 16384)), &t),
        Err(SessionEnd::Violation(Violation::RequestFlood(limit + 1)))
    );
    // A request taken to be served starts the count again; cancels do not.
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config());
    s.set_choking(false);
    for _ in 0..3 {
        for i in 0..limit {
            s.on_message(Message::Request(req(0, (i % 4) * 16384, 16384)), &t)
                .unwrap();
        }
        while s.pop_request().is_some() {}
    }
    // The queue full (4), then each round: a request refused, a queued one
    // cancelled and asked again (queued).
    for i in 0..4 {
        s.on_message(Message::Request(req(0, i * 16384, 16384)), &t)
            .unwrap();
    }
    let mut flood = None;
    for _ in 0..=limit {
        if let Err(e) = s.on_message(Message::Request(req(1, 0, 16384)), &t) {
            flood = Some(e);
            break;
        }
        s.on_message(Message::Cancel(req(0, 0, 16384)), &t).unwrap();
        s.on_message(Message::Request(req(0, 0, 16384)), &t)
            .unwrap();
    }
    assert_eq!(
        flood,
        Some(SessionEnd::Violation(Violation::RequestFlood(limit + 1)))
    );
}

#[test]
fn dht_ports_go_both_ways_after_the_bitfield() {
    let t = torrent();
    let mut hs = handshake(true, false);
    hs.reserved = hs.reserved.with_dht(true);
    let config = SessionConfig {
        dht_port: Some(6881),
        ..config()
    };
    let mut s = PeerSession::new(&hs, None, &t, config.clone());
    assert_eq!(sent(&mut s), [Message::HaveAll, Message::Port(6881)]);
    s.on_message(Message::Port(7000), &t).unwrap();
    assert_eq!(s.take_dht_port(), Some(7000));
    assert_eq!(s.take_dht_port(), None, "once");
    s.on_message(Message::Port(0), &t).unwrap();
    assert_eq!(s.take_dht_port(), None, "port 0 is nobody");
    // A peer without the DHT bit hears nothing of ours.
    let mut s = PeerSession::new(&handshake(true, false), None, &t, config);
    assert_eq!(sent(&mut s), [Message::HaveAll]);
}
