use super::*;

const MAX: u32 = 1 << 20;

fn all_messages() -> Vec<Message<'static>> {
    let b = BlockRequest {
        piece: 7,
        offset: 16384,
        length: 16384,
    };
    vec![
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Interested,
        Message::NotInterested,
        Message::Have(42),
        Message::Bitfield(&[0xff, 0x80]),
        Message::Request(b),
        Message::Piece {
            piece: 1,
            offset: 2,
            data: b"block",
        },
        Message::Cancel(b),
        Message::Port(6881),
        Message::SuggestPiece(3),
        Message::HaveAll,
        Message::HaveNone,
        Message::RejectRequest(b),
        Message::AllowedFast(9),
        Message::Extended {
            id: 0,
            payload: b"d1:md11:ut_metadatai1eee",
        },
    ]
}

#[test]
fn every_message_round_trips_and_waits_for_its_last_byte() {
    for msg in all_messages() {
        let mut buf = Vec::new();
        encode(&msg, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], MAX), Ok(None), "{msg:?} cut at {cut}");
        }
        buf.extend_from_slice(b"next");
        let (decoded, used) = decode(&buf, MAX).unwrap().unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(used, buf.len() - 4);
    }
}

#[test]
fn refuses_wrong_lengths_and_oversized_frames() {
    // `have` with 3 bytes instead of 4.
    let bad_have = [0, 0, 0, 4, 4, 0, 0, 1];
    assert_eq!(
        decode(&bad_have, MAX),
        Err(WireError::BadLength {
            id: 4,
            len: 4,
            expected: "5"
        })
    );
    // `request` one byte short.
    let mut short = vec![0, 0, 0, 12, 6];
    short.extend_from_slice(&[0; 11]);
    assert!(matches!(
        decode(&short, MAX),
        Err(WireError::BadLength { id: 6, .. })
    ));
    // `choke` with a payload.
    assert!(matches!(
        decode(&[0, 0, 0, 2, 0, 0], MAX),
        Err(WireError::BadLength { id: 0, .. })
    ));
    // `piece` without its header, extended without its id.
    assert!(matches!(
        decode(&[0, 0, 0, 5, 7, 0, 0, 0, 0], MAX),
        Err(WireError::BadLength { id: 7, .. })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 1, 20], MAX),
        Err(WireError::BadLength { id: 20, .. })
    ));
    // A 4 GiB frame is refused from its prefix alone.
    assert_eq!(
        decode(&[0xff, 0xff, 0xff, 0xff], MAX),
        Err(WireError::TooLong {
            len: u32::MAX,
            max: MAX
        })
    );
}

#[test]
fn unknown_ids_are_skipped_not_fatal() {
    let (msg, used) = decode(&[0, 0, 0, 3, 99, 1, 2, 0xff], MAX).unwrap().unwrap();
    assert_eq!((msg, used), (Message::Unknown { id: 99 }, 7));
}

#[test]
fn handshake_round_trip_and_early_refusal() {
    let hs = Handshake {
        reserved: Reserved::OURS,
        info_hash: InfoHash([3; 20]),
        peer_id: *b"-RS0100-abcdefghijkl",
    };
    let mut buf = Vec::new();
    hs.encode(&mut buf);
    assert_eq!(buf.len(), HANDSHAKE_LEN);
    assert_eq!(Handshake::decode(&buf[..67]), Ok(None));
    let decoded = Handshake::decode(&buf).unwrap().unwrap();
    assert_eq!(decoded, hs);
    assert!(decoded.reserved.fast() && decoded.reserved.extension_protocol());
    assert!(!Reserved::default().fast());
    assert!(matches!(
        Handshake::decode(b"GET / HTTP/1.1"),
        Err(WireError::NotBitTorrent { .. })
    ));
    assert!(matches!(
        Handshake::decode(&[19, b'B', b'X']),
        Err(WireError::NotBitTorrent { .. })
    ));
}

#[test]
fn piece_header_matches_the_encoder() {
    let mut buf = Vec::new();
    encode(
        &Message::Piece {
            piece: 5,
            offset: 32768,
            data: &[9; 100],
        },
        &mut buf,
    );
    assert_eq!(&buf[..PIECE_HEADER_LEN], &piece_header(5, 32768, 100));
}

#[test]
fn full_bitfield_clears_spare_bits() {
    assert_eq!(full_bitfield(8), [0xff]);
    assert_eq!(full_bitfield(9), [0xff, 0x80]);
    assert_eq!(full_bitfield(13), [0xff, 0xf8]);
    assert_eq!(full_bitfield(1), [0x80]);
}
