//! The bencode encoder: an owned value tree for building documents
//! (.torrent files, extension messages) and writers into a caller's buffer.

use std::collections::BTreeMap;

use super::{Kind, Value};

/// An owned bencode value, for building documents. Dictionaries are sorted by
/// key as BEP 3 requires, so the encoding is canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedValue {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<OwnedValue>),
    /// A dictionary, sorted by key.
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    /// Appends the canonical encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::Int(i) => write_int(out, *i),
            OwnedValue::Bytes(b) => write_bytes(out, b),
            OwnedValue::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode(out);
                }
                out.push(b'e');
            }
            OwnedValue::Dict(entries) => {
                out.push(b'd');
                for (key, value) in entries {
                    write_bytes(out, key);
                    value.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The canonical encoding of `self` as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// A byte string value from anything byte-like.
    pub fn bytes(b: impl AsRef<[u8]>) -> Self {
        OwnedValue::Bytes(b.as_ref().to_vec())
    }

    /// An empty dictionary, to be filled with [`OwnedValue::insert`].
    pub fn dict() -> Self {
        OwnedValue::Dict(BTreeMap::new())
    }

    /// Sets `key` in a dictionary; does nothing on other types.
    pub fn insert(&mut self, key: &str, value: OwnedValue) {
        if let OwnedValue::Dict(entries) = self {
            entries.insert(key.as_bytes().to_vec(), value);
        }
    }
}

impl From<&Value<'_>> for OwnedValue {
    fn from(value: &Value<'_>) -> Self {
        match &value.kind {
            Kind::Int(i) => OwnedValue::Int(*i),
            Kind::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Kind::List(items) => OwnedValue::List(items.iter().map(OwnedValue::from).collect()),
            Kind::Dict(entries) => OwnedValue::Dict(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_vec(), OwnedValue::from(v)))
                    .collect(),
            ),
        }
    }
}

/// Appends `i<n>e`.
pub fn write_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}
