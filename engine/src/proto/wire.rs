//! The peer wire protocol: the handshake and length-prefixed messages of
//! BEP 3, the fast extension's messages (BEP 6) and the frame of the
//! extension protocol (BEP 10). Decoding borrows from the caller's buffer;
//! encoding appends to the caller's buffer.

use super::info_hash::InfoHash;

/// The protocol string of the handshake.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// The first 20 bytes of every plaintext handshake: the length byte and
/// [`PROTOCOL`].
pub const PROTOCOL_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";
/// Bytes in a handshake.
pub const HANDSHAKE_LEN: usize = 68;
/// The block size every client requests.
pub const BLOCK_SIZE: u32 = 16 * 1024;
/// The largest block we serve: BEP 3 lets clients ask for up to 128 KiB.
pub const MAX_REQUEST_LEN: u32 = 128 * 1024;
/// Bytes of a `piece` message before its block: length, id, index, begin.
pub const PIECE_HEADER_LEN: usize = 13;

/// The 8 reserved bytes of the handshake: feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reserved(pub [u8; 8]);

impl Reserved {
    /// What ringseed offers: the fast extension and the extension protocol.
    pub const OURS: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0x04]);

    /// BEP 6 fast extension.
    pub fn fast(&self) -> bool {
        self.0[7] & 0x04 != 0
    }

    /// BEP 10 extension protocol.
    pub fn extension_protocol(&self) -> bool {
        self.0[5] & 0x10 != 0
    }

    /// BEP 5: the peer runs a DHT node (and may send `port`).
    pub fn dht(&self) -> bool {
        self.0[7] & 0x01 != 0
    }

    /// These bits, with the DHT bit set or cleared.
    pub fn with_dht(mut self, on: bool) -> Reserved {
        if on {
            self.0[7] |= 0x01;
        } else {
            self.0[7] &= !0x01;
        }
        self
    }
}

/// The handshake both sides send first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Feature bits.
    pub reserved: Reserved,
    /// The torrent.
    pub info_hash: InfoHash,
    /// The sender's id.
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Parses a handshake from the start of `buf`: `Ok(None)` until 68 bytes
    /// are there.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
        if buf.is_empty() {
            return Ok(None);
        }
        // Refuse a wrong protocol as soon as its first bytes show it, so a
        // stray HTTP request is dropped at once.
        let seen = buf.len().min(20);
        let mut expected = [0u8; 20];
        expected[0] = PROTOCOL.len() as u8;
        expected[1..].copy_from_slice(PROTOCOL);
        if buf[..seen] != expected[..seen] {
            return Err(WireError::NotBitTorrent {
                prefix: buf[..seen].to_vec(),
            });
        }
        if buf.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        Ok(Some(Handshake {
            reserved: Reserved(buf[20..28].try_into().expect("8 bytes")),
            info_hash: InfoHash(buf[28..48].try_into().expect("20 bytes")),
            peer_id: buf[48..68].try_into().expect("20 bytes"),
        }))
    }

    /// Appends the 68-byte handshake.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(PROTOCOL.len() as u8);
        out.extend_from_slice(PROTOCOL);
        out.extend_from_slice(&self.reserved.0);
        out.extend_from_slice(&self.info_hash.0);
        out.extend_from_slice(&self.peer_id);
    }
}

/// A block: `length` bytes at `offset` in piece `piece`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    /// Piece index.
    pub piece: u32,
    /// Byte offset in the piece.
    pub offset: u32,
    /// Bytes.
    pub length: u32,
}

/// One peer wire message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Zero-length message.
    KeepAlive,
    /// id 0.
    Choke,
    /// id 1.
    Unchoke,
    /// id 2.
    Interested,
    /// id 3.
    NotInterested,
    /// id 4.
    Have(u32),
    /// id 5: one bit per piece, high bit first.
    Bitfield(&'a [u8]),
    /// id 6.
    Request(BlockRequest),
    /// id 7: a block.
    Piece {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        offset: u32,
        /// The block.
        data: &'a [u8],
    },
    /// id 8.
    Cancel(BlockRequest),
    /// id 9: the sender's DHT port.
    Port(u16),
    /// id 13 (BEP 6).
    SuggestPiece(u32),
    /// id 14 (BEP 6).
    HaveAll,
    /// id 15 (BEP 6).
    HaveNone,
    /// id 16 (BEP 6).
    RejectRequest(BlockRequest),
    /// id 17 (BEP 6).
    AllowedFast(u32),
    /// id 20 (BEP 10): extended message `id` (0 is the extension handshake).
    Extended {
        /// Extended message id, as the receiver assigned it.
        id: u8,
        /// Its bencoded (and possibly trailing raw) payload.
        payload: &'a [u8],
    },
    /// A message id we do not know; BEP 3 says to ignore it.
    Unknown {
        /// The id.
        id: u8,
    },
}

/// Why bytes from a peer were refused. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first bytes are not a BitTorrent handshake.
    #[error("not a BitTorrent handshake (starts with {prefix:02x?})")]
    NotBitTorrent {
        /// What came instead.
        prefix: Vec<u8>,
    },
    /// A length prefix above what we accept.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The declared length.
        len: u32,
        /// Our limit.
        max: u32,
    },
    /// A message whose length does not fit its id.
    #[error("message id {id} with length {len}, expected {expected}")]
    BadLength {
        /// Message id.
        id: u8,
        /// Payload length with the id byte.
        len: u32,
        /// What the id requires.
        expected: &'static str,
    },
}

/// Decodes one message from the start of `buf`: `Ok(None)` until it is
/// complete, else the message and the bytes it used. `max_len` bounds the
/// length prefix, so a peer cannot make us buffer more than that.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes"));
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    let id = buf[4];
    let body = &buf[5..total];
    let fixed = |n: usize, expected: &'static str| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::BadLength { id, len, expected })
        }
    };
    let u32_at = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4 bytes"));
    let block = || BlockRequest {
        piece: u32_at(0),
        offset: u32_at(4),
        length: u32_at(8),
    };
    let msg = match id {
        0..=3 | 14 | 15 => {
            fixed(0, "1")?;
            match id {
                0 => Message::Choke,
                1 => Message::Unchoke,
                2 => Message::Interested,
                3 => Message::NotInterested,
                14 => Message::HaveAll,
                _ => Message::HaveNone,
            }
        }
        4 | 13 | 17 => {
            fixed(4, "5")?;
            match id {
                4 => Message::Have(u32_at(0)),
                13 => Message::SuggestPiece(u32_at(0)),
                _ => Message::AllowedFast(u32_at(0)),
            }
        }
        5 => Message::Bitfield(body),
        6 | 8 | 16 => {
            fixed(12, "13")?;
            match id {
                6 => Message::Request(block()),
                8 => Message::Cancel(block()),
                _ => Message::RejectRequest(block()),
            }
        }
        7 => {
            if body.len() < 8 {
                return Err(WireError::BadLength {
                    id,
                    len,
                    expected: "at least 9",
                });
            }
            Message::Piece {
                piece: u32_at(0),
                offset: u32_at(4),
                data: &body[8..],
            }
        }
        9 => {
            fixed(2, "3")?;
            Message::Port(u16::from_be_bytes([body[0], body[1]]))
        }
        20 => {
            if body.is_empty() {
                return Err(WireError::BadLength {
                    id,
                    len,
                    expected: "at least 2",
                });
            }
            Message::Extended {
                id: body[0],
                payload: &body[1..],
            }
        }
        _ => Message::Unknown { id },
    };
    Ok(Some((msg, total)))
}

fn frame(out: &mut Vec<u8>, id: u8, payload_len: usize) {
    out.extend_from_slice(&(1 + payload_len as u32).to_be_bytes());
    out.push(id);
}

fn frame_u32(out: &mut Vec<u8>, id: u8, value: u32) {
    frame(out, id, 4);
    out.extend_from_slice(&value.to_be_bytes());
}

fn frame_block(out: &mut Vec<u8>, id: u8, b: &BlockRequest) {
    frame(out, id, 12);
    for v in [b.piece, b.offset, b.length] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends the encoding of `msg`.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    match msg {
        Message::KeepAlive => out.extend_from_slice(&[0; 4]),
        Message::Choke => frame(out, 0, 0),
        Message::Unchoke => frame(out, 1, 0),
        Message::Interested => frame(out, 2, 0),
        Message::NotInterested => frame(out, 3, 0),
        Message::Have(p) => frame_u32(out, 4, *p),
        Message::Bitfield(bits) => {
            frame(out, 5, bits.len());
            out.extend_from_slice(bits);
        }
        Message::Request(b) => frame_block(out, 6, b),
        Message::Piece {
            piece,
            offset,
            data,
        } => {
            out.extend_from_slice(&piece_header(*piece, *offset, data.len() as u32));
            out.extend_from_slice(data);
        }
        Message::Cancel(b) => frame_block(out, 8, b),
        Message::Port(p) => {
            frame(out, 9, 2);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Message::SuggestPiece(p) => frame_u32(out, 13, *p),
        Message::HaveAll => frame(out, 14, 0),
        Message::HaveNone => frame(out, 15, 0),
        Message::RejectRequest(b) => frame_block(out, 16, b),
        Message::AllowedFast(p) => frame_u32(out, 17, *p),
        Message::Extended { id, payload } => {
            frame(out, 20, 1 + payload.len());
            out.push(*id);
            out.extend_from_slice(payload);
        }
        Message::Unknown { id } => frame(out, *id, 0),
    }
}

/// The 13 bytes that precede a block of `len` bytes in a `piece` message;
/// the data plane sends them and the block (from the file) in one vectored
/// send.
pub fn piece_header(piece: u32, offset: u32, len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    h[..4].copy_from_slice(&(9 + len).to_be_bytes());
    h[4] = 7;
    h[5..9].copy_from_slice(&piece.to_be_bytes());
    h[9..].copy_from_slice(&offset.to_be_bytes());
    h
}

/// A bitfield with every one of `num_pieces` bits set (spare bits clear, as
/// BEP 3 requires).
pub fn full_bitfield(num_pieces: u32) -> Vec<u8> {
    let mut bits = vec![0xffu8; num_pieces.div_ceil(8) as usize];
    let spare = (bits.len() * 8) as u32 - num_pieces;
    if let Some(last) = bits.last_mut() {
        *last &= 0xffu8 << spare;
    }
    bits
}

#[cfg(test)]
mod tests;
