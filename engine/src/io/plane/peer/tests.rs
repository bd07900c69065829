//! A peer connection driven by a scripted peer: bytes in, plans out, no
//! sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::create::{create, CreateOptions};
use crate::io::files::DataPaths;
use crate::proto::wire::{BlockRequest, Message};

const PEER_ID: [u8; 20] = *b"-RS0100-ourselves...";
const THEIR_ID: [u8; 20] = *b"-XX0000-scriptedpeer";

/// A seeded torrent of 4 pieces of 32 KiB, the worker-side state a
/// connection borrows, and the channel complete pieces go to.
struct Fixture {
    _dir: tempfile::TempDir,
    torrent: Arc<Torrent>,
    torrents: HashMap<InfoHash, Arc<Torrent>>,
    fetching: HashMap<InfoHash, Arc<MetadataFetch>>,
    config: PlaneConfig,
    limits: Limits,
    tally: Tally,
    rng: u64,
    check: crossbeam_channel::Sender<CheckJob>,
    _checked: crossbeam_channel::Receiver<CheckJob>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..4 * 32768).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let options = CreateOptions {
            piece_length: Some(32768),
            ..Default::default()
        };
        let created = create(&path, &options, &()).unwrap();
        let paths = DataPaths::in_save_dir(&created.metainfo.info, dir.path());
        let torrent = Torrent::open(created.metainfo, &paths).unwrap();
        let torrents = HashMap::from([(torrent.metainfo.info_hash, Arc::clone(&torrent))]);
        let (check, checked) = crossbeam_channel::unbounded();
        Fixture {
            _dir: dir,
            torrent,
            torrents,
            fetching: HashMap::new(),
            config: PlaneConfig::default(),
            limits: Limits::default(),
            tally: Tally::default(),
            rng: 1,
            check,
            _checked: checked,
        }
    }

    fn env(&mut self) -> Env<'_> {
        Env {
            worker: 0,
            now: Duration::from_secs(1),
            peer_id: PEER_ID,
            config: &self.config,
            limits: &self.limits,
            torrents: &self.torrents,
            fetching: &self.fetching,
            tally: &mut self.tally,
            rng: &mut self.rng,
        }
    }

    fn info_hash(&self) -> InfoHash {
        self.torrent.metainfo.info_hash
    }

    fn receive(&mut self, conn: &mut PeerConnection, input: &[u8]) -> Received {
        let check = self.check.clone();
        conn.receive(input, &mut self.env(), 0, &check)
    }

    fn plan(&mut self, conn: &mut PeerConnection, room: SendRoom, rate: u64) -> (SendPlan, bool) {
        let mut plan = SendPlan::default();
        let mut bucket = TokenBucket::new(rate, Duration::ZERO);
        let throttled = conn.plan_send(&mut plan, room, &mut bucket, &mut self.env());
        (plan, throttled)
    }
}

const ROOM: SendRoom = SendRoom {
    bytes: 256 << 10,
    segments: 127,
    segments_per_block: 1023,
    copy_all: false,
};

fn their_handshake(info_hash: InfoHash) -> Vec<u8> {
    let mut out = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash,
        peer_id: THEIR_ID,
    }
    .encode(&mut out);
    out
}

fn messages(msgs: &[Message<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        wire::encode(m, &mut out);
    }
    out
}

/// The ids of the messages in `bytes` (after any handshake), in order.
fn message_ids(mut bytes: &[u8]) -> Vec<u8> {
    let mut ids = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if len > 0 {
            ids.push(bytes[4]);
        }
        bytes = &bytes[4 + len..];
    }
    ids
}

fn incoming() -> PeerConnection {
    PeerConnection::new("127.0.0.9:6881".parse().unwrap(), 7, None, Duration::ZERO)
}

#[test]
fn an_incoming_handshake_is_answered_with_ours_the_extension_handshake_and_have_all() {
    let mut f = Fixture::new();
    let mut conn = incoming();
    let hs = their_handshake(f.info_hash());
    // Half of it: nothing happens yet.
    let r = f.receive(&mut conn, &hs[..30]);
    assert!(r.joined.is_none() && r.close.is_none());
    assert_eq!(r.consumed, 0);
    let r = f.receive(&mut conn, &hs);
    assert_eq!(r.consumed, wire::HANDSHAKE_LEN);
    let joined = r.joined.expect("joined");
    assert_eq!(joined.info_hash, f.info_hash());
    assert!(!joined.leeching);
    assert_eq!(f.tally.worker.peers, 1);

    let (plan, throttled) = f.plan(&mut conn, ROOM, 0);
    assert!(!throttled);
    let ours = Handshake::decode(&plan.control).unwrap().unwrap();
    assert_eq!(ours.info_hash, f.info_hash());
    assert_eq!(ours.peer_id, PEER_ID);
    // Extension handshake (20), have_all (14), unchoke (1): no slot limit.
    let ids = message_ids(&plan.control[wire::HANDSHAKE_LEN..]);
    assert_eq!(ids, vec![20, 14, 1], "{ids:?}");
    assert!(plan.blocks.is_empty());
}

#[test]
fn first_bytes_that_are_not_a_handshake_are_not_bittorrent() {
    let mut f = Fixture::new();
    let mut conn = incoming();
    let mut junk = b"GET /announce?info_hash=x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    junk.resize(wire::HANDSHAKE_LEN, b' ');
    let r = f.receive(&mut conn, &junk);
    assert_eq!(r.close, Some(CloseReason::NotBitTorrent));
    assert_eq!(f.tally.worker.peers, 0);
}

#[test]
fn an_unknown_torrent_and_ourselves_are_refused() {
    let mut f = Fixture::new();
    let r = f.receive(&mut incoming(), &their_handshake(InfoHash([9; 20])));
    assert_eq!(r.close, Some(CloseReason::UnknownTorrent));
    let mut ours = Vec::new();
    Handshake {
        reserved: Reserved::OURS,
        info_hash: f.info_hash(),
        peer_id: PEER_ID,
    }
    .encode(&mut ours);
    let r = f.receive(&mut incoming(), &ours);
    assert_eq!(r.close, Some(CloseReason::UnknownTorrent));
}

#[test]
fn an_outgoing_connection_speaks_first_and_wants_the_torrent_it_dialed_for() {
    let mut f = Fixture::new();
    let addr = "127.0.0.9:6881".parse().unwrap();
    let mut conn = PeerConnection::new(addr, 7, Some(f.info_hash()), Duration::ZERO);
    conn.connected(PEER_ID, Reserved::OURS, Duration::from_secs(1));
    let (plan, _) = f.plan(&mut conn, ROOM, 0);
    let ours = Handshake::decode(&plan.control).unwrap().unwrap();
    assert_eq!(ours.info_hash, f.info_hash());
    assert_eq!(plan.control.len(), wire::HANDSHAKE_LEN);
    // A peer that answers for another torrent is dropped.
    let r = f.receive(&mut conn, &their_handshake(InfoHash([9; 20])));
    assert_eq!(r.close, Some(CloseReason::UnknownTorrent));
}

#[test]
fn requests_become_planned_blocks_within_the_room_and_the_bucket() {
    let mut f = Fixture::new();
    let mut conn = incoming();
    f.receive(&mut conn, &their_handshake(f.info_hash()));
    f.plan(&mut conn, ROOM, 0);
    let req = |piece, offset| {
        Message::Request(BlockRequest {
            piece,
            offset,
            length: 16384,
        })
    };
    let input = messages(&[Message::Interested, req(0, 0), req(0, 16384), req(1, 0)]);
    let r = f.receive(&mut conn, &input);
    assert_eq!((r.consumed, r.close), (input.len(), None));

    // Room for two blocks' bytes: the third waits for the next send.
    let room = SendRoom {
        bytes: 32768,
        ..ROOM
    };
    let (plan, throttled) = f.plan(&mut conn, room, 0);
    assert!(!throttled);
    assert_eq!(plan.blocks.len(), 2);
    assert_eq!((plan.blocks[1].piece, plan.blocks[1].offset), (0, 16384));
    assert!(Arc::ptr_eq(plan.torrent.as_ref().unwrap(), &f.torrent));
    conn.sent(&plan);

    // A bucket without the tokens holds the last one back.
    let mut plan = SendPlan::default();
    let mut bucket = TokenBucket::new(1, Duration::ZERO);
    assert!(bucket.try_take(256 << 10, Duration::ZERO));
    let mut env = f.env();
    env.now = Duration::ZERO;
    assert!(conn.plan_send(&mut plan, ROOM, &mut bucket, &mut env));
    assert!(plan.blocks.is_empty());
    let (plan, _) = f.plan(&mut conn, ROOM, 0);
    assert_eq!(plan.blocks.len(), 1);
}

#[test]
fn a_block_spanning_more_files_than_a_send_can_name_is_copied() {
    let mut f = Fixture::new();
    let mut conn = incoming();
    f.receive(&mut conn, &their_handshake(f.info_hash()));
    f.plan(&mut conn, ROOM, 0);
    let input = messages(&[
        Message::Interested,
        Message::Request(BlockRequest {
            piece: 2,
            offset: 0,
            length: 16384,
        }),
    ]);
    f.receive(&mut conn, &input);
    let room = SendRoom {
        segments_per_block: 1,
        ..ROOM
    };
    let (plan, _) = f.plan(&mut conn, room, 0);
    assert_eq!(plan.blocks.len(), 1);
    assert_eq!(plan.copied, vec![true], "sent from a buffer, not refused");
    // The unchoke that answers `interested` (1), and no reject.
    assert_eq!(message_ids(&plan.control), vec![1]);
}

#[test]
fn a_partial_frame_waits_and_says_how_much_room_it_needs() {
    let mut f = Fixture::new();
    let mut conn = incoming();
    f.receive(&mut conn, &their_handshake(f.info_hash()));
    let mut input = messages(&[Message::Interested]);
    // The start of a 40 000-byte extension message.
    input.extend_from_slice(&40_000u32.to_be_bytes());
    input.extend_from_slice(&[20, 0, b'd']);
    let r = f.receive(&mut conn, &input);
    assert_eq!(r.close, None);
    assert_eq!(r.consumed, 5);
    assert_eq!(r.need, 40_004);
}

#[test]
fn a_silent_handshake_times_out_and_an_idle_peer_gets_a_keep_alive() {
    let mut f = Fixture::new();
    let config = PlaneConfig::default();
    let mut conn = incoming();
    let (close, _) = conn.housekeeping(
        Duration::from_secs(21),
        Duration::ZERO,
        false,
        &config,
        &HashMap::new(),
    );
    assert_eq!(close, Some(CloseReason::Idle));

    let mut conn = incoming();
    f.receive(&mut conn, &their_handshake(f.info_hash()));
    f.plan(&mut conn, ROOM, 0);
    let (close, send) = conn.housekeeping(
        Duration::from_secs(100),
        Duration::from_secs(1),
        false,
        &config,
        &HashMap::new(),
    );
    assert_eq!(close, None);
    assert!(send, "a keep-alive is due");
    let (plan, _) = f.plan(&mut conn, ROOM, 0);
    assert_eq!(plan.control, vec![0, 0, 0, 0]);
}

/// A connection dialed for a magnet link whose metadata is being fetched.
fn fetching(f: &mut Fixture, info_hash: InfoHash) -> (PeerConnection, Arc<MetadataFetch>) {
    let fetch = Arc::new(MetadataFetch::new(info_hash));
    f.fetching.insert(info_hash, Arc::clone(&fetch));
    let addr = "127.0.0.9:6881".parse().unwrap();
    let mut conn = PeerConnection::new(addr, 7, Some(info_hash), Duration::ZERO);
    conn.connected(PEER_ID, Reserved::OURS, Duration::from_secs(1));
    (conn, fetch)
}

#[test]
fn a_magnet_links_metadata_is_fetched_by_the_same_connection() {
    use crate::proto::extension::{
        ExtensionHandshake, MetadataMessage, OUR_UT_METADATA_ID, UT_METADATA,
    };
    let mut f = Fixture::new();
    // A torrent this worker does not run: only its metadata is wanted.
    let info = f.torrent.metainfo.info_bytes.clone();
    let info_hash = f.info_hash();
    f.torrents.clear();
    let (mut conn, fetch) = fetching(&mut f, info_hash);

    let mut input = their_handshake(info_hash);
    let hs = ExtensionHandshake {
        extensions: vec![(UT_METADATA.to_owned(), 4)],
        metadata_size: Some(info.len() as u64),
        ..Default::default()
    };
    let mut payload = Vec::new();
    hs.encode(&mut payload);
    input.extend(messages(&[
        Message::HaveAll,
        Message::Extended {
            id: 0,
            payload: &payload,
        },
    ]));
    let r = f.receive(&mut conn, &input);
    assert_eq!((r.consumed, r.close), (input.len(), None));
    assert!(r.joined.is_none(), "no torrent joined: only metadata");
    let (plan, _) = f.plan(&mut conn, ROOM, 0);
    // Our handshake, our extension handshake, one request (one piece).
    let ids = message_ids(&plan.control[wire::HANDSHAKE_LEN..]);
    assert_eq!(ids, vec![20, 20]);
    assert!(plan.blocks.is_empty());

    let mut body = Vec::new();
    MetadataMessage::Data {
        piece: 0,
        total_size: info.len() as u64,
        data: &info,
    }
    .encode(&mut body);
    let input = messages(&[Message::Extended {
        id: OUR_UT_METADATA_ID,
        payload: &body,
    }]);
    let r = f.receive(&mut conn, &input);
    assert_eq!(r.close, Some(CloseReason::MetadataDone));
    assert!(fetch.is_finished());
    assert_eq!(fetch.wait(Duration::ZERO), Some(info));
    conn.close(&mut f.tally, &f.limits, &f.fetching);
    assert_eq!(fetch.failures(), 0, "a delivery is no failure");
}

#[test]
fn a_peer_that_cannot_give_metadata_is_one_failed_attempt() {
    let mut f = Fixture::new();
    let info_hash = InfoHash([5; 20]);
    let (mut conn, fetch) = fetching(&mut f, info_hash);
    let mut hs = Vec::new();
    Handshake {
        reserved: Reserved([0; 8]),
        info_hash,
        peer_id: THEIR_ID,
    }
    .encode(&mut hs);
    let r = f.receive(&mut conn, &hs);
    assert_eq!(r.close, Some(CloseReason::MetadataFailed));
    conn.close(&mut f.tally, &f.limits, &f.fetching);
    assert_eq!(fetch.failures(), 1);
    let error = fetch.error(Duration::from_secs(3)).to_string();
    assert!(error.contains("extension protocol"), "{error}");

    // One that closes before its handshake counts too.
    let (conn, fetch) = fetching(&mut f, InfoHash([6; 20]));
    conn.close(&mut f.tally, &f.limits, &f.fetching);
    assert_eq!(fetch.failures(), 1);
}

/// Regression (issue 13): a client sending one byte every few seconds held a
/// connection for minutes, because the handshake timeout restarted on every
/// byte. The deadline counts from the connection's start.
#[test]
fn the_handshake_deadline_counts_from_the_start_not_from_the_last_byte() {
    let mut f = Fixture::new();
    let config = PlaneConfig::default();
    let mut conn = incoming();
    let hs = their_handshake(f.info_hash());
    for second in [5u64, 10, 15, 19] {
        let check = f.check.clone();
        let mut env = f.env();
        env.now = Duration::from_secs(second);
        let part = &hs[..second as usize / 5];
        let r = conn.receive(part, &mut env, 0, &check);
        assert!(r.close.is_none() && r.joined.is_none());
        let (close, _) = conn.housekeeping(
            Duration::from_secs(second),
            Duration::ZERO,
            false,
            &config,
            &HashMap::new(),
        );
        assert_eq!(close, None, "at {second} s");
    }
    let (close, _) = conn.housekeeping(
        Duration::from_secs(20),
        Duration::ZERO,
        false,
        &config,
        &HashMap::new(),
    );
    assert_eq!(close, Some(CloseReason::Idle), "20 s after it started");
}

/// Found by black-box testing: 40 lying peers each holding an almost
/// complete 16 MiB dictionary made a download hold 686 MB; and one bad peer
/// (or incoming strangers) ended the fetch while an honest peer was still
/// answering.
#[test]
fn metadata_fetches_are_bounded_and_one_bad_peer_does_not_end_them() {
    let mut f = Fixture::new();
    let info_hash = InfoHash([8; 20]);
    let fetch = Arc::new(MetadataFetch::new(info_hash));
    f.fetching.insert(info_hash, Arc::clone(&fetch));
    let hs = their_handshake(info_hash);
    let mut conns: Vec<PeerConnection> = (0..6u8)
        .map(|i| {
            let addr = std::net::SocketAddr::from(([127, 0, 9, i + 1], 6881));
            PeerConnection::new(addr, u64::from(i), None, Duration::ZERO)
        })
        .collect();
    let closes: Vec<Option<CloseReason>> =
        conns.iter_mut().map(|c| f.receive(c, &hs).close).collect();
    let limited = closes
        .iter()
        .filter(|c| **c == Some(CloseReason::Limit))
        .count();
    assert_eq!(
        limited,
        6 - crate::io::plane::shared::MAX_METADATA_CONNECTIONS
    );
    for conn in conns {
        conn.close(&mut f.tally, &f.limits, &f.fetching);
    }
    // Four attempts ended unanswered; the two turned away are no failures.
    assert_eq!(fetch.failures(), 4);
    // Only the listed peers' failures decide whether to give up.
    let listed: std::net::SocketAddr = "127.0.9.200:6881".parse().unwrap();
    assert!(!fetch.each_failed(&[listed], 1));
    fetch.failed(listed, &"refused");
    assert!(fetch.each_failed(&[listed], 1));
    assert!(fetch.try_start(), "slots came back with the closes");
}
