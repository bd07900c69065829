//! Peer wire bytes: the handshake, a stream of messages, and a session
//! fed with them (seeding, or downloading a torrent of which we have some
//! pieces) must never panic, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

use ringseed_engine::policy::bitfield::Bitfield;
use ringseed_engine::policy::peer_session::{Event, PeerSession, SessionConfig, TorrentView};
use ringseed_engine::proto::wire::{self, Handshake, Message};

/// 37 pieces of 32 KiB, the last 5 000 bytes; 40 000 bytes of metadata;
/// with `partial`, we have only the even pieces.
struct Torrent(Vec<u8>, bool);

impl TorrentView for Torrent {
    fn num_pieces(&self) -> u32 {
        37
    }
    fn piece_len(&self, piece: u32) -> u32 {
        if piece == 36 {
            5_000
        } else {
            32_768
        }
    }
    fn info_bytes(&self) -> &[u8] {
        &self.0
    }
    fn have_piece(&self, piece: u32) -> bool {
        !self.1 || piece % 2 == 0
    }
    fn have_pieces(&self) -> Option<Bitfield> {
        self.1.then(|| {
            let mut b = Bitfield::new(37);
            (0..37).step_by(2).for_each(|p| b.set(p));
            b
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Handshake::decode(data);
    let torrent = Torrent(vec![b'x'; 40_000], data.first().is_some_and(|f| f & 2 != 0));
    // The first byte picks the peer's feature bits, the rest is its stream.
    let Some((&features, stream)) = data.split_first() else {
        return;
    };
    let mut peer = Handshake::decode(&[0; 68])
        .ok()
        .flatten()
        .unwrap_or(Handshake {
            reserved: Default::default(),
            info_hash: ringseed_engine::InfoHash([0; 20]),
            peer_id: [0; 20],
        });
    peer.reserved.0[5] = features & 0x10;
    peer.reserved.0[7] = features & 0x04;
    let mut session = PeerSession::new(&peer, None, &torrent, SessionConfig::default());
    session.set_choking(features & 1 == 0);
    let mut at = 0;
    while let Ok(Some((msg, used))) = wire::decode(&stream[at..], 1 << 16) {
        let mut again = Vec::new();
        wire::encode(&msg, &mut again);
        if !matches!(msg, Message::Unknown { .. }) {
            assert_eq!(again, &stream[at..at + used], "re-encoding differs");
        }
        at += used;
        match session.on_message(msg, &torrent) {
            Err(_) => break,
            Ok(Event::Block { req, data }) => assert_eq!(req.length as usize, data.len()),
            Ok(_) => {}
        }
        // Ask for what the session allows, as a worker would.
        if let Some((room, pieces)) = session.request_room() {
            let reqs: Vec<_> = pieces
                .ones()
                .take(room.min(4))
                .map(|piece| wire::BlockRequest {
                    piece,
                    offset: 0,
                    length: 16_384.min(torrent.piece_len(piece)),
                })
                .collect();
            session.request(&reqs, Duration::from_secs(1));
        }
        session.set_interested(features & 8 != 0);
        let _ = session.check_snub(Duration::from_secs(at as u64), Duration::from_secs(20));
        while let Some(req) = session.pop_request() {
            assert!(req.piece < 37 && req.offset + req.length <= torrent.piece_len(req.piece));
        }
    }
    let mut out = Vec::new();
    session.drain_output_into(&mut out);
});
