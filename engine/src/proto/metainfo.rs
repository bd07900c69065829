//! Metainfo (.torrent) files, version 1: BEP 3 with announce-list (BEP 12),
//! web seeds (BEP 19), private torrents (BEP 27) and pad files (BEP 47).
//!
//! Parsing is strict where a mistake would be dangerous (file paths, piece
//! geometry) and lenient where real files differ harmlessly (unknown keys,
//! unsorted dictionaries). The info-hash is the SHA-1 of the `info` bytes
//! exactly as they appear in the file.

use std::collections::HashSet;
use std::path::PathBuf;

use super::bencode::{self, DecodeError, Value};
use super::info_hash::InfoHash;
use crate::hash::{sha1, Sha1Digest};

/// Largest piece length we accept (BEP 3 sets none; libtorrent caps at 128 MiB
/// for v1 files it creates, and larger ones only serve to exhaust memory).
pub const MAX_PIECE_LENGTH: u64 = 512 * 1024 * 1024;

/// Longest file name component we accept: the limit of Linux file systems.
pub const MAX_NAME_BYTES: usize = 255;

/// DHT nodes taken from a torrent's `nodes` key at most.
pub const MAX_NODES: usize = 64;

/// Most components in one file's path (its directories and its name). Each
/// level is a directory created on disk; real trees stay far below (a deep
/// source tree has 20), and a hostile torrent of 2,000 levels made 2,011
/// directories before this limit.
pub const MAX_PATH_DEPTH: usize = 64;

/// Longest path we accept, the torrent's name included: Linux's PATH_MAX
/// less room for the download directory it goes into.
pub const MAX_PATH_BYTES: usize = 3072;

/// A parsed .torrent file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// SHA-1 of `info_bytes`.
    pub info_hash: InfoHash,
    /// The bencoded `info` dictionary exactly as it appears in the file; it is
    /// what peers fetch with ut_metadata (BEP 9).
    pub info_bytes: Vec<u8>,
    /// The decoded `info` dictionary.
    pub info: Info,
    /// Tracker tiers (BEP 12); a lone `announce` becomes one tier.
    pub trackers: Vec<Vec<String>>,
    /// Web seeds (BEP 19 `url-list`), in the file's order, without
    /// duplicates or empty entries.
    pub web_seeds: Vec<String>,
    /// BEP 17 (Hoffman) `httpseeds`: listed, not fetched from (see
    /// docs/ARCHITECTURE.md, "Web seeds").
    pub http_seeds: Vec<String>,
    /// What was skipped while parsing (entries of `url-list` or
    /// `httpseeds` that are not text): shown by `info`.
    pub warnings: Vec<String>,
    /// DHT nodes to bootstrap from (BEP 5 `nodes`: `[["host", port], ...]`),
    /// as `HOST:PORT`; malformed entries are left out (the key only helps).
    pub nodes: Vec<String>,
    /// Seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// Free text.
    pub comment: Option<String>,
    /// The program that made the file.
    pub created_by: Option<String>,
}

/// The `info` dictionary: what the info-hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Suggested name of the file (single-file) or top directory (multi-file);
    /// a single safe path component.
    pub name: String,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u64,
    /// SHA-1 of each piece.
    pub pieces: Vec<Sha1Digest>,
    /// The files in torrent order; one entry named `name` for single-file
    /// torrents. Pad files are included, flagged.
    pub files: Vec<FileEntry>,
    /// Whether the torrent had a `files` list (a directory), even of one file.
    pub multi_file: bool,
    /// BEP 27: peers only from the trackers.
    pub private: bool,
}

/// One file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the download directory: for multi-file torrents
    /// `name/dir/file`, for single-file torrents `name`. Every component is
    /// safe (no `..`, no separators, no NUL, not empty).
    pub path: PathBuf,
    /// Length in bytes.
    pub length: u64,
    /// BEP 47 pad file (`attr` contains `p`): zeros that are never stored.
    pub pad: bool,
    /// BEP 47 executable flag (`attr` contains `x`).
    pub executable: bool,
}

/// Why a .torrent file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    /// The bytes are not valid bencode.
    #[error(transparent)]
    Bencode(#[from] DecodeError),
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// Dotted path of the field, e.g. `info.piece length`.
        field: String,
    },
    /// A field has the wrong bencode type.
    #[error("field `{field}` at byte {offset} is a {found}, expected a {expected}")]
    WrongType {
        /// Dotted path of the field.
        field: String,
        /// The type the format requires.
        expected: &'static str,
        /// The type found.
        found: &'static str,
        /// Byte offset of the value in the file.
        offset: usize,
    },
    /// A field has the right type but an unacceptable value.
    #[error("field `{field}` at byte {offset} is invalid: {reason}")]
    InvalidField {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it, with the offending value.
        reason: String,
        /// Byte offset of the value in the file.
        offset: usize,
    },
    /// A file path that could escape the download directory or cannot be
    /// created safely.
    #[error("unsafe file path {path:?} in `{field}` at byte {offset}: {reason}")]
    UnsafePath {
        /// Dotted path of the field.
        field: String,
        /// The path, components joined with `/`, lossily decoded.
        path: String,
        /// Why it is refused.
        reason: &'static str,
        /// Byte offset of the value in the file.
        offset: usize,
    },
}

type Result<T> = std::result::Result<T, MetainfoError>;

impl Metainfo {
    /// Parses a .torrent file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let root = bencode::decode(bytes)?;
        let root_dict = Field::new("(root)", &root);
        root_dict.dict()?;

        let info_value = root_dict.required("info")?;
        let info = parse_info(&info_value)?;
        let info_bytes = info_value.value.raw.to_vec();

        let mut trackers = Vec::new();
        if let Some(list) = root_dict.optional("announce-list") {
            for (t, tier) in list.list()?.iter().enumerate() {
                let tier_field = list.item(t, tier);
                let mut urls = Vec::new();
                for (u, url) in tier_field.list()?.iter().enumerate() {
                    let url = tier_field.item(u, url).string()?;
                    if !url.is_empty() && !urls.contains(&url) {
                        urls.push(url);
                    }
                }
                if !urls.is_empty() {
                    trackers.push(urls);
                }
            }
        }
        // BEP 12: `announce` is ignored when `announce-list` is present.
        if trackers.is_empty() {
            if let Some(announce) = root_dict.optional("announce") {
                let url = announce.string()?;
                if !url.is_empty() {
                    trackers.push(vec![url]);
                }
            }
        }

        // BEP 19 `url-list` and BEP 17 `httpseeds`: a string or a list. They
        // are outside the info-hash and only help, so a bad entry (or a bad
        // key) is skipped with a warning rather than refusing the torrent.
        let mut warnings = Vec::new();
        let web_seeds = url_entries(&root_dict, "url-list", &mut warnings);
        let http_seeds = url_entries(&root_dict, "httpseeds", &mut warnings);

        // BEP 5: a trackerless torrent may name DHT nodes to start from.
        let nodes = root_dict
            .optional("nodes")
            .and_then(|n| n.value.as_list())
            .map(|list| {
                list.iter()
                    .filter_map(|pair| {
                        let [host, port] = pair.as_list()? else {
                            return None;
                        };
                        let host = host.as_str()?;
                        let port = u16::try_from(port.as_int()?).ok().filter(|&p| p != 0)?;
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host.to_owned()
                        };
                        (!host.is_empty()).then(|| format!("{host}:{port}"))
                    })
                    .take(MAX_NODES)
                    .collect()
            })
            .unwrap_or_default();

        Ok(Metainfo {
            info_hash: InfoHash(sha1(&info_bytes)),
            info_bytes,
            info,
            trackers,
            web_seeds,
            http_seeds,
            warnings,
            nodes,
            creation_date: root_dict
                .optional("creation date")
                .map(|f| f.int())
                .transpose()?,
            comment: optional_text(&root_dict, "comment")?,
            created_by: optional_text(&root_dict, "created by")?,
        })
    }

    /// Total bytes of the torrent, pad files included.
    pub fn total_length(&self) -> u64 {
        self.info.total_length()
    }

    /// Tracker URLs of every tier, in order, without repeats.
    pub fn tracker_urls(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.trackers
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|u| seen.insert(*u))
            .collect()
    }
}

impl Info {
    /// Parses a bencoded `info` dictionary on its own (as fetched with
    /// ut_metadata); the caller checks its hash.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        parse_info(&Field::new("info", &bencode::decode(bytes)?))
    }

    /// Total bytes of the torrent, pad files included.
    pub fn total_length(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> usize {
        self.pieces.len()
    }
}

/// A value with the dotted path that names it in errors.
struct Field<'v, 'a> {
    name: String,
    value: &'v Value<'a>,
}

impl<'v, 'a> Field<'v, 'a> {
    fn new(name: impl Into<String>, value: &'v Value<'a>) -> Self {
        Field {
            name: name.into(),
            value,
        }
    }

    fn child(&self, key: &str, value: &'v Value<'a>) -> Self {
        if self.name == "(root)" {
            Field::new(key, value)
        } else {
            Field::new(format!("{}.{key}", self.name), value)
        }
    }

    fn item(&self, index: usize, value: &'v Value<'a>) -> Self {
        Field::new(format!("{}[{index}]", self.name), value)
    }

    fn wrong_type(&self, expected: &'static str) -> MetainfoError {
        MetainfoError::WrongType {
            field: self.name.clone(),
            expected,
            found: self.value.type_name(),
            offset: self.value.offset,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> MetainfoError {
        MetainfoError::InvalidField {
            field: self.name.clone(),
            reason: reason.into(),
            offset: self.value.offset,
        }
    }

    fn dict(&self) -> Result<&'v [(&'a [u8], Value<'a>)]> {
        self.value
            .as_dict()
            .ok_or_else(|| self.wrong_type("dictionary"))
    }

    fn list(&self) -> Result<&'v [Value<'a>]> {
        self.value.as_list().ok_or_else(|| self.wrong_type("list"))
    }

    fn bytes(&self) -> Result<&'a [u8]> {
        self.value
            .as_bytes()
            .ok_or_else(|| self.wrong_type("byte string"))
    }

    fn string(&self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.invalid(format!("not UTF-8: {:?}", String::from_utf8_lossy(bytes))))
    }

    fn int(&self) -> Result<i64> {
        self.value
            .as_int()
            .ok_or_else(|| self.wrong_type("integer"))
    }

    fn optional(&self, key: &str) -> Option<Field<'v, 'a>> {
        self.value.get(key).map(|v| self.child(key, v))
    }

    fn required(&self, key: &str) -> Result<Field<'v, 'a>> {
        self.optional(key)
            .ok_or_else(|| MetainfoError::MissingField {
                field: self.child(key, self.value).name,
            })
    }
}

/// The URLs of the optional `key` (a string or a list of strings): entries
/// that are not UTF-8 text, or a key of another type, are skipped and named
/// in `warnings`; empty entries and duplicates are dropped.
fn url_entries(root: &Field<'_, '_>, key: &str, warnings: &mut Vec<String>) -> Vec<String> {
    let Some(field) = root.optional(key) else {
        return Vec::new();
    };
    let mut urls: Vec<String> = Vec::new();
    let mut keep = |entry: Result<String>, warnings: &mut Vec<String>| match entry {
        Ok(url) if url.is_empty() || urls.contains(&url) => {}
        Ok(url) => urls.push(url),
        Err(e) => warnings.push(format!("skipped: {e}")),
    };
    if field.value.as_bytes().is_some() {
        keep(field.string(), warnings);
    } else {
        match field.list() {
            Ok(list) => {
                for (i, entry) in list.iter().enumerate() {
                    keep(field.item(i, entry).string(), warnings);
                }
            }
            Err(e) => warnings.push(format!("skipped: {e}")),
        }
    }
    urls
}

fn optional_text(dict: &Field<'_, '_>, key: &str) -> Result<Option<String>> {
    match dict.optional(key) {
        // Free text need not be valid UTF-8 to be shown.
        Some(f) => Ok(Some(String::from_utf8_lossy(f.bytes()?).into_owned())),
        None => Ok(None),
    }
}

fn parse_info(info: &Field<'_, '_>) -> Result<Info> {
    info.dict()?;

    // Prefer the `name.utf-8` that some creators add beside a legacy `name`.
    let name_field = match info.optional("name.utf-8") {
        Some(f) if f.string().is_ok() => f,
        _ => info.required("name")?,
    };
    let name = name_field.string()?;
    check_component(&name_field, name.as_bytes(), &name)?;

    let length_field = info.required("piece length")?;
    let piece_length = length_field.int()?;
    if piece_length <= 0 || piece_length as u64 > MAX_PIECE_LENGTH {
        return Err(
            length_field.invalid(format!("{piece_length} is outside 1..={MAX_PIECE_LENGTH}"))
        );
    }
    let piece_length = piece_length as u64;

    let pieces_field = info.required("pieces")?;
    let pieces_bytes = pieces_field.bytes()?;
    if pieces_bytes.len() % 20 != 0 {
        return Err(pieces_field.invalid(format!(
            "length {} is not a multiple of 20",
            pieces_bytes.len()
        )));
    }
    let pieces: Vec<Sha1Digest> = pieces_bytes
        .chunks_exact(20)
        .map(|c| c.try_into().expect("chunks of 20"))
        .collect();

    let private = match info.optional("private") {
        Some(f) => f.int()? == 1,
        None => false,
    };

    let (files, multi_file) = match (info.optional("length"), info.optional("files")) {
        (Some(_), Some(files)) => {
            return Err(files.invalid("both `length` and `files` are present"))
        }
        (None, None) => {
            return Err(MetainfoError::MissingField {
                field: "info.length or info.files".into(),
            })
        }
        (Some(length), None) => {
            let (pad, executable) = attributes(info)?;
            let file = FileEntry {
                path: PathBuf::from(&name),
                length: file_length(&length)?,
                pad,
                executable,
            };
            (vec![file], false)
        }
        (None, Some(list)) => (parse_files(&list, &name)?, true),
    };

    let total = files
        .iter()
        .try_fold(0u64, |acc, f| acc.checked_add(f.length))
        .ok_or_else(|| info.invalid("total length overflows 64 bits"))?;
    if total == 0 {
        return Err(info.invalid("the torrent holds no data (total length 0)"));
    }
    let expected_pieces = total.div_ceil(piece_length);
    if pieces.len() as u64 != expected_pieces {
        return Err(pieces_field.invalid(format!(
            "{} piece hashes for {total} bytes in pieces of {piece_length}, expected {expected_pieces}",
            pieces.len()
        )));
    }

    Ok(Info {
        name,
        piece_length,
        pieces,
        files,
        multi_file,
        private,
    })
}

fn file_length(field: &Field<'_, '_>) -> Result<u64> {
    let length = field.int()?;
    u64::try_from(length).map_err(|_| field.invalid(format!("negative length {length}")))
}

/// BEP 47 `attr`: `p` pad file, `x` executable (`h` hidden and `l` symlink
/// are accepted and ignored).
fn attributes(entry: &Field<'_, '_>) -> Result<(bool, bool)> {
    match entry.optional("attr") {
        Some(attr) => {
            let a = attr.bytes()?;
            Ok((a.contains(&b'p'), a.contains(&b'x')))
        }
        None => Ok((false, false)),
    }
}

fn parse_files(list: &Field<'_, '_>, name: &str) -> Result<Vec<FileEntry>> {
    let items = list.list()?;
    if items.is_empty() {
        return Err(list.invalid("empty file list"));
    }
    let mut files = Vec::with_capacity(items.len());
    let mut seen_files: HashSet<PathBuf> = HashSet::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let entry = list.item(i, item);
        entry.dict()?;
        let length = file_length(&entry.required("length")?)?;
        let (pad, executable) = attributes(&entry)?;

        let path_field = match entry.optional("path.utf-8") {
            Some(f)
                if f.list()
                    .is_ok_and(|c| c.iter().all(|v| v.as_str().is_some())) =>
            {
                f
            }
            _ => entry.required("path")?,
        };
        let components = path_field.list()?;
        if components.is_empty() {
            return Err(unsafe_path(&path_field, "", "empty path"));
        }
        if components.len() > MAX_PATH_DEPTH {
            return Err(unsafe_path(
                &path_field,
                &format!("({} components)", components.len()),
                "deeper than 64 levels (each level is a directory to create; real torrents stay far below)",
            ));
        }
        let mut path = PathBuf::from(name);
        let mut shown = String::new();
        for (c, component) in components.iter().enumerate() {
            let component_field = path_field.item(c, component);
            let bytes = component_field.bytes()?;
            if !shown.is_empty() {
                shown.push('/');
            }
            shown.push_str(&String::from_utf8_lossy(bytes));
            check_component(&path_field, bytes, &shown)?;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| unsafe_path(&path_field, &shown, "not UTF-8"))?;
            path.push(text);
        }
        if path.as_os_str().len() > MAX_PATH_BYTES {
            return Err(unsafe_path(
                &path_field,
                &shown,
                "longer than 3072 bytes (Linux paths end at 4096, with the download directory)",
            ));
        }

        // Two files at one path, or a file where another needs a directory,
        // would make one overwrite the other.
        let mut parent = path.parent();
        while let Some(dir) = parent {
            if seen_files.contains(dir) {
                return Err(unsafe_path(
                    &path_field,
                    &shown,
                    "a parent directory is also a file",
                ));
            }
            seen_dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
        if seen_dirs.contains(&path) || !seen_files.insert(path.clone()) {
            return Err(unsafe_path(&path_field, &shown, "the path is used twice"));
        }
        files.push(FileEntry {
            path,
            length,
            pad,
            executable,
        });
    }
    Ok(files)
}

fn unsafe_path(field: &Field<'_, '_>, path: &str, reason: &'static str) -> MetainfoError {
    MetainfoError::UnsafePath {
        field: field.name.clone(),
        path: path.to_owned(),
        reason,
        offset: field.value.offset,
    }
}

/// Refuses a path component that could escape the download directory or
/// that no file system can create.
fn check_component(field: &Field<'_, '_>, bytes: &[u8], shown: &str) -> Result<()> {
    let reason = if bytes.is_empty() {
        "empty component"
    } else if bytes == b"." || bytes == b".." {
        "`.` or `..` component"
    } else if bytes.contains(&b'/') || bytes.contains(&b'\\') {
        "component contains a path separator"
    } else if bytes.contains(&0) {
        "component contains NUL"
    } else if bytes.len() > MAX_NAME_BYTES {
        "component longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(unsafe_path(field, shown, reason))
}

#[cfg(test)]
mod tests;
