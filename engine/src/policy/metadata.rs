//! Fetching a torrent's info dictionary from one peer (BEP 9 ut_metadata
//! over BEP 10), for a download started from a magnet link. Sans-IO: the
//! peer's messages go in, bytes to send come out, and the dictionary once
//! every piece is in and its SHA-1 is the info-hash. Each connection
//! assembles its own copy, so a peer that lies spoils only its own attempt.

use crate::hash::sha1;
use crate::proto::extension::{
    ExtensionHandshake, MetadataMessage, METADATA_PIECE_LEN, OUR_UT_METADATA_ID, UT_METADATA,
};
use crate::proto::info_hash::InfoHash;
use crate::proto::wire::{self, Message};

/// Largest info dictionary we accept (a 100k-piece torrent's is ~2 MiB).
pub const MAX_METADATA_SIZE: u64 = 16 << 20;

/// Why a peer's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Its handshake does not offer BEP 10.
    #[error("peer does not support the extension protocol")]
    NoExtensionProtocol,
    /// Its extension handshake names no ut_metadata.
    #[error("peer does not serve ut_metadata")]
    NoUtMetadata,
    /// Its `metadata_size` is missing, zero or too large.
    #[error("peer sent no usable metadata_size ({0:?})")]
    BadSize(Option<u64>),
    /// A piece that does not fit the size.
    #[error("bad metadata piece {0}")]
    BadPiece(u32),
    /// It refused a piece.
    #[error("peer refused metadata piece {0}")]
    Rejected(u32),
    /// Every piece came, and their SHA-1 is not the info-hash.
    #[error("metadata does not match the info-hash")]
    HashMismatch,
    /// A malformed extension message.
    #[error("malformed extension message: {0}")]
    Malformed(String),
}

/// One peer's attempt at the metadata.
pub struct MetadataFetcher {
    info_hash: InfoHash,
    /// The peer's id for ut_metadata, once its handshake came.
    peer_id_for_ut: Option<u8>,
    info: Vec<u8>,
    have: Vec<bool>,
    out: Vec<u8>,
}

impl MetadataFetcher {
    /// Starts an attempt with a peer whose handshake offered BEP 10
    /// (`extensions`); queues our extension handshake.
    pub fn new(info_hash: InfoHash, extensions: bool, client: &str) -> Result<Self, FetchError> {
        if !extensions {
            return Err(FetchError::NoExtensionProtocol);
        }
        let mut f = MetadataFetcher {
            info_hash,
            peer_id_for_ut: None,
            info: Vec::new(),
            have: Vec::new(),
            out: Vec::with_capacity(256),
        };
        let hs = ExtensionHandshake {
            extensions: vec![(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)],
            client: Some(client.to_owned()),
            ..Default::default()
        };
        let mut payload = Vec::new();
        hs.encode(&mut payload);
        wire::encode(
            &Message::Extended {
                id: 0,
                payload: &payload,
            },
            &mut f.out,
        );
        Ok(f)
    }

    /// Takes one message of the peer; returns the info dictionary once it
    /// is complete and verified. Messages about pieces (bitfield, have...)
    /// are ignored: without the metadata they cannot be checked.
    pub fn on_message(&mut self, msg: Message<'_>) -> Result<Option<Vec<u8>>, FetchError> {
        let Message::Extended { id, payload } = msg else {
            return Ok(None);
        };
        let malformed =
            |e: crate::proto::extension::ExtensionError| FetchError::Malformed(e.to_string());
        if id == 0 {
            if self.peer_id_for_ut.is_some() {
                // A later handshake (a change of ids) is not followed.
                return Ok(None);
            }
            let theirs = ExtensionHandshake::decode(payload).map_err(malformed)?;
            let ut = theirs.id_of(UT_METADATA).ok_or(FetchError::NoUtMetadata)?;
            let size = theirs
                .metadata_size
                .filter(|&n| n > 0 && n <= MAX_METADATA_SIZE)
                .ok_or(FetchError::BadSize(theirs.metadata_size))?;
            let pieces = (size as usize).div_ceil(METADATA_PIECE_LEN);
            for piece in 0..pieces as u32 {
                let mut body = Vec::new();
                MetadataMessage::Request { piece }.encode(&mut body);
                wire::encode(
                    &Message::Extended {
                        id: ut,
                        payload: &body,
                    },
                    &mut self.out,
                );
            }
            self.peer_id_for_ut = Some(ut);
            self.info = vec![0; size as usize];
            self.have = vec![false; pieces];
            return Ok(None);
        }
        if id != OUR_UT_METADATA_ID || self.peer_id_for_ut.is_none() {
            return Ok(None);
        }
        match MetadataMessage::decode(payload).map_err(malformed)? {
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                let start = piece as usize * METADATA_PIECE_LEN;
                let expected = self
                    .info
                    .len()
                    .saturating_sub(start)
                    .min(METADATA_PIECE_LEN);
                if total_size != self.info.len() as u64
                    || piece as usize >= self.have.len()
                    || data.len() != expected
                {
                    return Err(FetchError::BadPiece(piece));
                }
                self.info[start..start + data.len()].copy_from_slice(data);
                self.have[piece as usize] = true;
                if !self.have.iter().all(|&h| h) {
                    return Ok(None);
                }
                if sha1(&self.info) != self.info_hash.0 {
                    return Err(FetchError::HashMismatch);
                }
                Ok(Some(std::mem::take(&mut self.info)))
            }
            MetadataMessage::Reject { piece } => Err(FetchError::Rejected(piece)),
            // We have nothing to give yet.
            MetadataMessage::Request { .. } => Ok(None),
        }
    }

    /// Moves the bytes to send into `dst`.
    pub fn drain_output_into(&mut self, dst: &mut Vec<u8>) {
        dst.append(&mut self.out);
    }

    /// Bytes waiting to be sent.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// What the peer offered and delivered so far: (pieces received, pieces
    /// in all, size in bytes), once its extension handshake came.
    pub fn progress(&self) -> Option<(usize, usize, usize)> {
        self.peer_id_for_ut.map(|_| {
            (
                self.have.iter().filter(|&&h| h).count(),
                self.have.len(),
                self.info.len(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UT: u8 = 3;

    fn info_dict(len: usize) -> (Vec<u8>, InfoHash) {
        let mut info = format!("d4:name{len}:").into_bytes();
        info.extend((0..len).map(|i| b'a' + (i % 26) as u8));
        info.push(b'e');
        let hash = InfoHash(sha1(&info));
        (info, hash)
    }

    fn their_handshake(size: Option<u64>) -> Vec<u8> {
        let hs = ExtensionHandshake {
            extensions: vec![(UT_METADATA.to_owned(), UT)],
            metadata_size: size,
            ..Default::default()
        };
        let mut payload = Vec::new();
        hs.encode(&mut payload);
        payload
    }

    fn data(piece: u32, total: usize, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MetadataMessage::Data {
            piece,
            total_size: total as u64,
            data: bytes,
        }
        .encode(&mut out);
        out
    }

    /// The metadata piece requests in `out`, after our handshake.
    fn requested(f: &mut MetadataFetcher) -> Vec<u32> {
        let mut out = Vec::new();
        f.drain_output_into(&mut out);
        let mut pieces = Vec::new();
        let mut rest = &out[..];
        while let Some((msg, used)) = wire::decode(rest, 1 << 20).unwrap() {
            if let Message::Extended { id: UT, payload } = msg {
                if let MetadataMessage::Request { piece } =
                    MetadataMessage::decode(payload).unwrap()
                {
                    pieces.push(piece);
                }
            }
            rest = &rest[used..];
        }
        pieces
    }

    #[test]
    fn every_piece_is_asked_for_and_the_verified_dictionary_comes_out() {
        let (info, hash) = info_dict(40_000);
        let mut f = MetadataFetcher::new(hash, true, "test").unwrap();
        assert!(f.pending_output() > 0, "our extension handshake");
        let hs = their_handshake(Some(info.len() as u64));
        assert_eq!(
            f.on_message(Message::Extended {
                id: 0,
                payload: &hs
            }),
            Ok(None)
        );
        assert_eq!(requested(&mut f), vec![0, 1, 2]);
        // Out of order, as peers may answer.
        for piece in [2u32, 0, 1] {
            let start = piece as usize * METADATA_PIECE_LEN;
            let end = (start + METADATA_PIECE_LEN).min(info.len());
            let body = data(piece, info.len(), &info[start..end]);
            let got = f
                .on_message(Message::Extended {
                    id: OUR_UT_METADATA_ID,
                    payload: &body,
                })
                .unwrap();
            assert_eq!(got.is_some(), piece == 1);
            if let Some(got) = got {
                assert_eq!(got, info);
            }
        }
    }

    #[test]
    fn a_peer_without_the_extension_protocol_or_ut_metadata_is_useless() {
        let hash = InfoHash([1; 20]);
        assert_eq!(
            MetadataFetcher::new(hash, false, "t").err(),
            Some(FetchError::NoExtensionProtocol)
        );
        let mut f = MetadataFetcher::new(hash, true, "t").unwrap();
        let hs = ExtensionHandshake::default();
        let mut payload = Vec::new();
        hs.encode(&mut payload);
        assert_eq!(
            f.on_message(Message::Extended {
                id: 0,
                payload: &payload
            }),
            Err(FetchError::NoUtMetadata)
        );
    }

    #[test]
    fn sizes_pieces_and_hashes_that_do_not_fit_end_the_attempt() {
        let (info, hash) = info_dict(1000);
        for size in [None, Some(0), Some(MAX_METADATA_SIZE + 1)] {
            let mut f = MetadataFetcher::new(hash, true, "t").unwrap();
            let hs = their_handshake(size);
            assert_eq!(
                f.on_message(Message::Extended {
                    id: 0,
                    payload: &hs
                }),
                Err(FetchError::BadSize(size))
            );
        }
        let mut f = MetadataFetcher::new(hash, true, "t").unwrap();
        let hs = their_handshake(Some(info.len() as u64));
        f.on_message(Message::Extended {
            id: 0,
            payload: &hs,
        })
        .unwrap();
        let short = data(0, info.len(), &info[..10]);
        assert_eq!(
            f.on_message(Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload: &short
            }),
            Err(FetchError::BadPiece(0))
        );
        // The right size, the wrong bytes.
        let mut f = MetadataFetcher::new(hash, true, "t").unwrap();
        f.on_message(Message::Extended {
            id: 0,
            payload: &hs,
        })
        .unwrap();
        let wrong = data(0, info.len(), &vec![b'x'; info.len()]);
        assert_eq!(
            f.on_message(Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload: &wrong
            }),
            Err(FetchError::HashMismatch)
        );
    }
}
