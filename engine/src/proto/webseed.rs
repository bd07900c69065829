//! Web seeds (BEP 19, "GetRight style"), sans-IO: which URL serves each file
//! of a torrent, and what an HTTP answer to a range request means.
//!
//! The URL rules are the ones that bit other clients (see
//! docs/design/webseed-pex.md, section 1): a single-file torrent's URL is the
//! file unless it ends in `/`; a multi-file torrent's files are
//! `base/name/dir/file` even when the base lacks its `/` and even for a
//! multi-file torrent of one file; every path component is escaped byte by
//! byte except RFC 3986's unreserved characters (what aria2 does), so `#`,
//! `?`, `%` and `+` in names survive; the base itself is only made legal,
//! never decoded and re-encoded.

use std::ops::Range;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

use crate::proto::metainfo::{Info, Metainfo};

/// Bytes escaped in a path component: all but RFC 3986's unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bytes that may not appear in a URL as they are (non-ASCII is always
/// escaped by `utf8_percent_encode`); `%` and reserved characters stay.
const ILLEGAL_IN_URL: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Backoff after a "busy" answer without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a `url-list` entry is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `http://` or `https://` (BEP 19 allows skipping FTP).
    #[error("unsupported scheme in web seed `{0}` (only http and https)")]
    Scheme(String),
    /// No host after the scheme (archive.org's path-only `/1/items/`).
    #[error("no host in web seed `{0}`")]
    NoHost(String),
}

/// A usable web seed: its base URL, made legal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSeedUrl {
    base: String,
}

impl WebSeedUrl {
    /// Checks and normalises a `url-list` entry (or a magnet's `ws=`).
    pub fn parse(entry: &str) -> Result<Self, UrlError> {
        let entry = entry.trim();
        let lower = entry.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &entry[7..]
        } else if lower.starts_with("https://") {
            &entry[8..]
        } else {
            return Err(UrlError::Scheme(entry.to_owned()));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(UrlError::NoHost(entry.to_owned()));
        }
        Ok(WebSeedUrl {
            base: normalize(entry),
        })
    }

    /// The URL as given, made legal.
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// The URL without credentials, for status lines and logs.
    pub fn redacted(&self) -> String {
        redact(&self.base)
    }

    /// The URL of each file of `info` (in torrent order) on this web seed;
    /// `None` for pad files, which are never fetched (BEP 47).
    pub fn file_urls(&self, info: &Info) -> Vec<Option<String>> {
        if !info.multi_file {
            let url = if self.base.ends_with('/') {
                format!("{}{}", self.base, escape_component(&info.name))
            } else {
                self.base.clone()
            };
            return vec![Some(url)];
        }
        let mut dir = self.base.clone();
        if !dir.ends_with('/') {
            dir.push('/');
        }
        info.files
            .iter()
            .map(|file| {
                if file.pad {
                    return None;
                }
                // `path` is `name/dir/file`, built from the torrent's UTF-8
                // strings, so its components are the torrent's exactly.
                let parts: Vec<String> = file
                    .path
                    .components()
                    .map(|c| escape_component(&c.as_os_str().to_string_lossy()))
                    .collect();
                Some(format!("{dir}{}", parts.join("/")))
            })
            .collect()
    }
}

/// The web seeds of a torrent: every usable `url-list` entry, and a BEP 17
/// `httpseeds` entry that is plainly the file (single-file torrent, no
/// query, last segment the torrent's name: what Debian publishes), since
/// those answer range requests like any mirror. Returns what was skipped too.
pub fn web_seeds_of(metainfo: &Metainfo) -> (Vec<WebSeedUrl>, Vec<UrlError>) {
    let mut seeds: Vec<WebSeedUrl> = Vec::new();
    let mut skipped = Vec::new();
    let plain_file = |url: &str| {
        !metainfo.info.multi_file
            && !url.contains('?')
            && url.rsplit('/').next() == Some(escape_component(&metainfo.info.name).as_str())
    };
    let bep17 = metainfo.http_seeds.iter().filter(|u| plain_file(u));
    for entry in metainfo.web_seeds.iter().chain(bep17) {
        match WebSeedUrl::parse(entry) {
            Ok(url) if !seeds.contains(&url) => seeds.push(url),
            Ok(_) => {}
            Err(e) => skipped.push(e),
        }
    }
    (seeds, skipped)
}

/// One path component, every byte but RFC 3986's unreserved as `%XX`.
pub fn escape_component(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

/// `url` with the bytes that may not appear in a URL escaped, and nothing
/// else changed (an existing `%2F` stays `%2F`).
pub fn normalize(url: &str) -> String {
    utf8_percent_encode(url, ILLEGAL_IN_URL).to_string()
}

/// `url` without `user:password@`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The origin (scheme, host, port) of an absolute URL, lower-cased; redirect
/// credentials and per-server connection bounds go by it.
pub fn origin(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return String::new();
    };
    let scheme = url[..scheme_end].to_ascii_lowercase();
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !host_port.ends_with(']');
    let default = if scheme == "https" { 443 } else { 80 };
    if has_port {
        format!("{scheme}://{host_port}")
    } else {
        format!("{scheme}://{host_port}:{default}")
    }
}

/// Resolves a redirect's `Location` against the URL that sent it, and makes
/// it legal. `None` for a scheme we do not follow.
pub fn resolve_location(from: &str, location: &str) -> Option<String> {
    let location = normalize(location.trim());
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(location);
    }
    if lower.contains("://") {
        return None;
    }
    let scheme_end = from.find("://")? + 3;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{}{rest}", &from[..scheme_end]));
    }
    let path_start = from[scheme_end..]
        .find('/')
        .map_or(from.len(), |i| scheme_end + i);
    if location.starts_with('/') {
        return Some(format!("{}{location}", &from[..path_start]));
    }
    // Relative to the directory of `from` (its query dropped).
    let path_end = from.find(['?', '#']).unwrap_or(from.len());
    let dir_end = from[..path_end]
        .rfind('/')
        .filter(|&i| i >= path_start)
        .map_or(path_end, |i| i + 1);
    let mut base = from[..dir_end].to_owned();
    if dir_end == path_end && !base.ends_with('/') {
        base.push('/');
    }
    Some(format!("{base}{location}"))
}

/// Whether following a redirect from `from` to `to` is allowed: never from
/// HTTPS down to plain HTTP.
pub fn may_follow(from: &str, to: &str) -> bool {
    !(from.to_ascii_lowercase().starts_with("https://")
        && to.to_ascii_lowercase().starts_with("http://"))
}

/// The headers of an answer that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerHeaders<'a> {
    /// `Content-Range`.
    pub content_range: Option<&'a str>,
    /// `Content-Length`, parsed.
    pub content_length: Option<u64>,
    /// `Location`.
    pub location: Option<&'a str>,
    /// `Retry-After`.
    pub retry_after: Option<&'a str>,
}

/// What an answer to a GET for `asked` bytes of a file means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The body holds the file's bytes `range` (a start equal to the one
    /// asked for, an end that may fall short of it).
    Part {
        /// File offsets the body covers.
        range: Range<u64>,
    },
    /// The body is the whole file, from byte 0: the range was ignored (or
    /// none was asked).
    WholeFile,
    /// Go to this URL instead (already resolved).
    Redirect(String),
    /// The file is not on this mirror (404, 410, or 416: shorter there).
    Missing(u16),
    /// The mirror is busy: ask again after this long.
    Busy(Duration),
}

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// A 206 whose `Content-Range` is missing or malformed.
    #[error("bad Content-Range {0:?}")]
    BadContentRange(Option<String>),
    /// A 206 for other bytes than asked, or of a file of another length
    /// (the mirror holds another file under that name).
    #[error("wrong range: asked {asked:?} of {file_len} bytes, got {got}")]
    WrongRange {
        /// What we asked for.
        asked: Range<u64>,
        /// The file's length in the torrent.
        file_len: u64,
        /// The `Content-Range` answered.
        got: String,
    },
    /// A 200 whose length is not the file's.
    #[error("whole file of {got:?} bytes, expected {file_len}")]
    WrongLength {
        /// The `Content-Length` answered.
        got: Option<u64>,
        /// The file's length in the torrent.
        file_len: u64,
    },
    /// A redirect without a usable `Location`.
    #[error("redirect without a usable Location ({0:?})")]
    BadRedirect(Option<String>),
    /// Any other status.
    #[error("HTTP status {0}")]
    Status(u16),
}

impl AnswerError {
    /// The error counter this falls under.
    pub fn cause(&self) -> &'static str {
        match self {
            AnswerError::BadContentRange(_) | AnswerError::WrongRange { .. } => "bad_range",
            AnswerError::WrongLength { .. } => "bad_length",
            AnswerError::BadRedirect(_) => "bad_redirect",
            AnswerError::Status(s) if *s >= 500 => "http_5xx",
            AnswerError::Status(_) => "http_4xx",
        }
    }
}

/// Classifies the answer `status` with `headers` to a GET of `url` for the
/// file bytes `asked` (`None`: the whole file, no `Range` sent) of a file of
/// `file_len` bytes.
pub fn classify(
    url: &str,
    status: u16,
    headers: &AnswerHeaders<'_>,
    asked: Option<Range<u64>>,
    file_len: u64,
) -> Result<Answer, AnswerError> {
    match status {
        206 => {
            let got = headers.content_range;
            let (start, end, total) = got
                .and_then(parse_content_range)
                .ok_or_else(|| AnswerError::BadContentRange(got.map(str::to_owned)))?;
            let asked = asked.unwrap_or(0..file_len);
            let fits = start == asked.start
                && end < asked.end
                && total.is_none_or(|t| t == file_len)
                && headers.content_length.is_none_or(|l| l == end + 1 - start);
            if !fits {
                return Err(AnswerError::WrongRange {
                    asked,
                    file_len,
                    got: got.unwrap_or_default().to_owned(),
                });
            }
            Ok(Answer::Part {
                range: start..end + 1,
            })
        }
        200 => {
            if headers.content_length != Some(file_len) {
                return Err(AnswerError::WrongLength {
                    got: headers.content_length,
                    file_len,
                });
            }
            Ok(Answer::WholeFile)
        }
        301 | 302 | 303 | 307 | 308 => headers
            .location
            .and_then(|l| resolve_location(url, l))
            .filter(|to| may_follow(url, to))
            .map(Answer::Redirect)
            .ok_or_else(|| AnswerError::BadRedirect(headers.location.map(str::to_owned))),
        404 | 410 | 416 => Ok(Answer::Missing(status)),
        429 | 503 => Ok(Answer::Busy(
            headers
                .retry_after
                .and_then(parse_retry_after)
                .unwrap_or(DEFAULT_RETRY_AFTER),
        )),
        _ => Err(AnswerError::Status(status)),
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) as `(first, last, total)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (number(first)?, number(last)?);
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t)?),
    };
    (first <= last && total.is_none_or(|t| last < t)).then_some((first, last, total))
}

/// `Retry-After` in seconds, clamped to 5 s .. 1 h. An HTTP-date is not
/// parsed (`None`: the caller's default applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs.clamp(5, 3600)))
}

#[cfg(test)]
mod tests;
