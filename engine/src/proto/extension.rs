//! Payloads of the extension protocol (BEP 10): the extension handshake and
//! ut_metadata (BEP 9) messages, with which a peer that has only a magnet
//! link fetches the info dictionary.

use std::net::IpAddr;

use super::bencode::{self, DecodeError, OwnedValue};

/// Metadata is exchanged in pieces of 16 KiB (BEP 9).
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// The name of the metadata extension in `m`.
pub const UT_METADATA: &str = "ut_metadata";
/// The id we assign to ut_metadata in our handshake: peers send their
/// ut_metadata messages to us with this id.
pub const OUR_UT_METADATA_ID: u8 = 1;

/// The extension handshake (extended message id 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtensionHandshake {
    /// Extension names and the ids the sender wants to receive them with;
    /// id 0 means disabled.
    pub extensions: Vec<(String, u8)>,
    /// Client name and version.
    pub client: Option<String>,
    /// How many outstanding requests the sender queues.
    pub reqq: Option<u32>,
    /// The receiver's address as the sender sees it.
    pub your_ip: Option<IpAddr>,
    /// Size of the info dictionary (BEP 9).
    pub metadata_size: Option<u64>,
    /// The sender's listen port.
    pub listen_port: Option<u16>,
}

/// Why an extension payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// The payload is not bencode.
    #[error("extension payload: {0}")]
    Bencode(#[from] DecodeError),
    /// The payload is bencode but not the expected shape.
    #[error("extension payload: {0}")]
    Malformed(&'static str),
}

impl ExtensionHandshake {
    /// The id the sender assigned to extension `name`, if it enabled it.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(n, id)| n == name && *id != 0)
            .map(|(_, id)| *id)
    }

    /// Parses a handshake payload. Unknown keys are ignored; keys of the
    /// wrong type are treated as absent, as other clients do.
    pub fn decode(payload: &[u8]) -> Result<Self, ExtensionError> {
        let (root, _) = bencode::decode_prefix(payload)?;
        root.as_dict()
            .ok_or(ExtensionError::Malformed("handshake is not a dictionary"))?;
        let mut hs = ExtensionHandshake::default();
        if let Some(m) = root.get("m").and_then(|m| m.as_dict()) {
            for (name, id) in m {
                let (Ok(name), Some(id)) = (std::str::from_utf8(name), id.as_int()) else {
                    continue;
                };
                if let Ok(id) = u8::try_from(id) {
                    hs.extensions.push((name.to_owned(), id));
                }
            }
        }
        hs.client = root.get("v").and_then(|v| v.as_str()).map(str::to_owned);
        hs.reqq = root
            .get("reqq")
            .and_then(|v| v.as_int())
            .and_then(|n| u32::try_from(n).ok());
        hs.your_ip = root
            .get("yourip")
            .and_then(|v| v.as_bytes())
            .and_then(ip_from_bytes);
        hs.metadata_size = root
            .get("metadata_size")
            .and_then(|v| v.as_int())
            .and_then(|n| u64::try_from(n).ok());
        hs.listen_port = root
            .get("p")
            .and_then(|v| v.as_int())
            .and_then(|n| u16::try_from(n).ok());
        Ok(hs)
    }

    /// Appends the bencoded payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut m = OwnedValue::dict();
        for (name, id) in &self.extensions {
            m.insert(name, OwnedValue::Int(i64::from(*id)));
        }
        let mut root = OwnedValue::dict();
        root.insert("m", m);
        if let Some(v) = &self.client {
            root.insert("v", OwnedValue::bytes(v));
        }
        if let Some(n) = self.reqq {
            root.insert("reqq", OwnedValue::Int(i64::from(n)));
        }
        if let Some(ip) = self.your_ip {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            root.insert("yourip", OwnedValue::Bytes(bytes));
        }
        if let Some(n) = self.metadata_size {
            root.insert("metadata_size", OwnedValue::Int(n as i64));
        }
        if let Some(p) = self.listen_port {
            root.insert("p", OwnedValue::Int(i64::from(p)));
        }
        root.encode(out);
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// A ut_metadata message (BEP 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// msg_type 0: send me this piece.
    Request {
        /// Metadata piece index.
        piece: u32,
    },
    /// msg_type 1: here is the piece (raw bytes follow the dictionary).
    Data {
        /// Metadata piece index.
        piece: u32,
        /// Size of the whole info dictionary.
        total_size: u64,
        /// The piece's bytes.
        data: &'a [u8],
    },
    /// msg_type 2: I will not send this piece.
    Reject {
        /// Metadata piece index.
        piece: u32,
    },
}

impl<'a> MetadataMessage<'a> {
    /// Parses a ut_metadata payload.
    pub fn decode(payload: &'a [u8]) -> Result<Self, ExtensionError> {
        let (dict, used) = bencode::decode_prefix(payload)?;
        let int = |key| dict.get(key).and_then(|v| v.as_int());
        let piece =
            int("piece")
                .and_then(|p| u32::try_from(p).ok())
                .ok_or(ExtensionError::Malformed(
                    "ut_metadata without a valid `piece`",
                ))?;
        match int("msg_type") {
            Some(0) => Ok(MetadataMessage::Request { piece }),
            Some(1) => Ok(MetadataMessage::Data {
                piece,
                total_size: int("total_size")
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or(ExtensionError::Malformed(
                        "ut_metadata data without `total_size`",
                    ))?,
                data: &payload[used..],
            }),
            Some(2) => Ok(MetadataMessage::Reject { piece }),
            _ => Err(ExtensionError::Malformed("unknown ut_metadata `msg_type`")),
        }
    }

    /// Appends the payload (dictionary, then the data of a `Data` message).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut dict = OwnedValue::dict();
        let (msg_type, piece) = match self {
            MetadataMessage::Request { piece } => (0, piece),
            MetadataMessage::Data {
                piece, total_size, ..
            } => {
                dict.insert("total_size", OwnedValue::Int(*total_size as i64));
                (1, piece)
            }
            MetadataMessage::Reject { piece } => (2, piece),
        };
        dict.insert("msg_type", OwnedValue::Int(msg_type));
        dict.insert("piece", OwnedValue::Int(i64::from(*piece)));
        dict.encode(out);
        if let MetadataMessage::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
    }
}

/// The `piece`-th 16 KiB slice of the info dictionary, if it exists.
pub fn metadata_piece(info_bytes: &[u8], piece: u32) -> Option<&[u8]> {
    let start = (piece as usize).checked_mul(METADATA_PIECE_LEN)?;
    if start >= info_bytes.len() {
        return None;
    }
    Some(&info_bytes[start..(start + METADATA_PIECE_LEN).min(info_bytes.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trip() {
        let hs = ExtensionHandshake {
            extensions: vec![
                (UT_METADATA.into(), OUR_UT_METADATA_ID),
                ("ut_pex".into(), 0),
            ],
            client: Some("ringseed 0.1.0".into()),
            reqq: Some(500),
            your_ip: Some("127.0.0.11".parse().unwrap()),
            metadata_size: Some(31_337),
            listen_port: Some(6881),
        };
        let mut buf = Vec::new();
        hs.encode(&mut buf);
        let back = ExtensionHandshake::decode(&buf).unwrap();
        assert_eq!(back.id_of(UT_METADATA), Some(1));
        assert_eq!(back.id_of("ut_pex"), None, "id 0 means disabled");
        assert_eq!(back.reqq, Some(500));
        assert_eq!(back.your_ip, hs.your_ip);
        assert_eq!(back.metadata_size, Some(31_337));
        assert_eq!(back.listen_port, Some(6881));
        assert_eq!(back.client.as_deref(), Some("ringseed 0.1.0"));
    }

    #[test]
    fn lenient_about_odd_fields_strict_about_structure() {
        let hs =
            ExtensionHandshake::decode(b"d1:md11:ut_metadatai3e6:ut_pex3:bade4:reqqi-1ee").unwrap();
        assert_eq!(hs.id_of(UT_METADATA), Some(3));
        assert_eq!(hs.reqq, None);
        assert!(ExtensionHandshake::decode(b"li1ee").is_err());
        assert!(ExtensionHandshake::decode(b"d1:m").is_err());
    }

    #[test]
    fn metadata_messages() {
        for msg in [
            MetadataMessage::Request { piece: 2 },
            MetadataMessage::Reject { piece: 0 },
            MetadataMessage::Data {
                piece: 1,
                total_size: 20_000,
                data: b"raw info bytes",
            },
        ] {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            assert_eq!(MetadataMessage::decode(&buf).unwrap(), msg);
        }
        assert!(MetadataMessage::decode(b"d8:msg_typei9e5:piecei0ee").is_err());
        assert!(MetadataMessage::decode(b"d8:msg_typei0ee").is_err());
    }

    #[test]
    fn metadata_pieces() {
        let info = vec![1u8; METADATA_PIECE_LEN + 10];
        assert_eq!(metadata_piece(&info, 0).unwrap().len(), METADATA_PIECE_LEN);
        assert_eq!(metadata_piece(&info, 1).unwrap().len(), 10);
        assert_eq!(metadata_piece(&info, 2), None);
        assert_eq!(metadata_piece(&info, u32::MAX), None);
    }
}
