//! The zero-copy bencode decoder.
//!
//! Every decoded [`Value`] borrows from the input and remembers the exact
//! bytes it was decoded from (`raw`) and where they start (`offset`), so the
//! info-hash can be taken over the `info` dictionary as it appears in the
//! file. Hostile input is bounded: nesting depth is limited, no allocation is
//! made from a declared length, and every failure names its byte offset.

use super::{DecodeError, DecodeErrorKind};

/// Nesting limit of [`decode`]: deeper than any real .torrent or wire message.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// One decoded bencode value, borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<'a> {
    /// The value's encoding exactly as it appears in the input.
    pub raw: &'a [u8],
    /// Byte offset of `raw` in the buffer given to the decoder.
    pub offset: usize,
    /// What the value is.
    pub kind: Kind<'a>,
}

/// The four bencode types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `i<digits>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(&'a [u8]),
    /// `l<values>e`
    List(Vec<Value<'a>>),
    /// `d<key><value>...e`, in input order; keys are unique.
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if this is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The list items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    /// The dictionary entries, if this is a dictionary.
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Value<'a>)]> {
        match &self.kind {
            Kind::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// Looks up `key` if this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Int(_) => "integer",
            Kind::Bytes(_) => "byte string",
            Kind::List(_) => "list",
            Kind::Dict(_) => "dictionary",
        }
    }
}

/// Decodes exactly one value that must span the whole input.
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(DecodeError {
            kind: DecodeErrorKind::TrailingData,
            offset: used,
        });
    }
    Ok(value)
}

/// Decodes one value from the start of `input` and returns it with the number
/// of bytes it used; what follows is left to the caller (BEP 9 metadata
/// messages carry raw bytes after a dictionary).
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    let mut decoder = Decoder {
        input,
        pos: 0,
        max_depth: DEFAULT_MAX_DEPTH,
    };
    let value = decoder.value(0)?;
    Ok((value, decoder.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Decoder<'a> {
    fn err<T>(&self, kind: DecodeErrorKind, offset: usize) -> Result<T, DecodeError> {
        Err(DecodeError { kind, offset })
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        match self.input.get(self.pos) {
            Some(&b) => Ok(b),
            None => self.err(DecodeErrorKind::UnexpectedEof, self.pos),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        let start = self.pos;
        let kind = match self.peek()? {
            b'i' => {
                self.pos += 1;
                Kind::Int(self.integer(b'e')?)
            }
            b'0'..=b'9' => Kind::Bytes(self.byte_string()?),
            b'l' => {
                self.enter(depth)?;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Kind::List(items)
            }
            b'd' => {
                self.enter(depth)?;
                let mut entries: Vec<(&'a [u8], Value<'a>)> = Vec::new();
                let mut sorted = true;
                while self.peek()? != b'e' {
                    let key_offset = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return self.err(DecodeErrorKind::NonStringKey, key_offset);
                    }
                    let key = self.byte_string()?;
                    if let Some((last, _)) = entries.last() {
                        if *last == key {
                            return self.err(duplicate(key), key_offset);
                        }
                        sorted &= *last < key;
                    }
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                if !sorted {
                    // BEP 3 wants sorted keys, but real files break that; we
                    // accept any order and only refuse ambiguous duplicates.
                    let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
                    keys.sort_unstable();
                    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
                        return self.err(duplicate(pair[0]), start);
                    }
                }
                self.pos += 1;
                Kind::Dict(entries)
            }
            other => return self.err(DecodeErrorKind::UnexpectedByte(other), start),
        };
        Ok(Value {
            raw: &self.input[start..self.pos],
            offset: start,
            kind,
        })
    }

    fn enter(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth >= self.max_depth {
            return self.err(
                DecodeErrorKind::TooDeep {
                    limit: self.max_depth,
                },
                self.pos,
            );
        }
        self.pos += 1;
        Ok(())
    }

    /// Parses a decimal integer up to `terminator`, which it consumes.
    fn integer(&mut self, terminator: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        // Accumulate as a negative number so that i64::MIN fits.
        let mut acc: i64 = 0;
        loop {
            let b = self.peek()?;
            if b == terminator {
                break;
            }
            if !b.is_ascii_digit() {
                return self.err(DecodeErrorKind::UnexpectedByte(b), self.pos);
            }
            acc = acc
                .checked_mul(10)
                .and_then(|a| a.checked_sub(i64::from(b - b'0')))
                .ok_or(DecodeError {
                    kind: DecodeErrorKind::IntegerOverflow,
                    offset: start,
                })?;
            self.pos += 1;
        }
        let digits = &self.input[digits_start..self.pos];
        if digits.is_empty() {
            return self.err(DecodeErrorKind::EmptyInteger, start);
        }
        if digits.len() > 1 && digits[0] == b'0' {
            return self.err(DecodeErrorKind::LeadingZero, start);
        }
        if negative && acc == 0 {
            return self.err(DecodeErrorKind::NegativeZero, start);
        }
        self.pos += 1;
        if negative {
            Ok(acc)
        } else {
            acc.checked_neg().ok_or(DecodeError {
                kind: DecodeErrorKind::IntegerOverflow,
                offset: start,
            })
        }
    }

    fn byte_string(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        if self.peek()? == b'-' {
            return self.err(DecodeErrorKind::UnexpectedByte(b'-'), start);
        }
        let declared = self.integer(b':')?;
        let available = self.input.len() - self.pos;
        // `integer` refused a sign, so `declared` is non-negative.
        let len = declared as u64;
        if len > available as u64 {
            return self.err(
                DecodeErrorKind::LengthExceedsInput {
                    declared: len,
                    available,
                },
                start,
            );
        }
        let bytes = &self.input[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(bytes)
    }
}

fn duplicate(key: &[u8]) -> DecodeErrorKind {
    DecodeErrorKind::DuplicateKey {
        key: String::from_utf8_lossy(key).into_owned(),
    }
}
