//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=&tr=&ws=&x.pe=`.

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use super::info_hash::InfoHash;
use super::metainfo::Metainfo;

/// Characters escaped in parameter values: what would end or confuse a query
/// parameter. `:` and `/` stay readable, as other clients write them.
const VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'=')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MagnetLink {
    /// `xt=urn:btih:`, hex or base32.
    pub info_hash: InfoHash,
    /// `dn`: display name.
    pub display_name: Option<String>,
    /// `tr`: tracker URLs, in order.
    pub trackers: Vec<String>,
    /// `ws`: web seeds (BEP 19).
    pub web_seeds: Vec<String>,
    /// `x.pe`: peer addresses (`host:port`) to try directly.
    pub peers: Vec<String>,
}

/// Why a magnet link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    /// It does not start with `magnet:?`.
    #[error("{link:?} is not a magnet link (it must start with `magnet:?`)")]
    NotMagnet {
        /// The refused text (shortened).
        link: String,
    },
    /// No `xt=urn:btih:` parameter (a v2-only `urn:btmh:` link is refused too).
    #[error("magnet link has no `xt=urn:btih:` info-hash")]
    MissingInfoHash,
    /// The btih value is neither 40 hex nor 32 base32 characters.
    #[error("magnet link info-hash {value:?} is neither 40 hex nor 32 base32 characters")]
    BadInfoHash {
        /// The refused value.
        value: String,
    },
    /// Two different `urn:btih:` values.
    #[error("magnet link has two different info-hashes")]
    ConflictingInfoHashes,
    /// A parameter value that is not valid UTF-8 once decoded.
    #[error("magnet parameter `{key}` is not UTF-8 once percent-decoded")]
    NotUtf8 {
        /// The parameter name.
        key: String,
    },
}

impl MagnetLink {
    /// A magnet link for a torrent, with its name, trackers and web seeds.
    pub fn from_metainfo(metainfo: &Metainfo) -> Self {
        MagnetLink {
            info_hash: metainfo.info_hash,
            display_name: Some(metainfo.info.name.clone()),
            trackers: metainfo
                .tracker_urls()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            web_seeds: metainfo.web_seeds.clone(),
            peers: Vec::new(),
        }
    }

    /// Parses a magnet URI. Unknown parameters are ignored.
    pub fn parse(link: &str) -> Result<Self, MagnetError> {
        let query = link
            .strip_prefix("magnet:?")
            .ok_or_else(|| MagnetError::NotMagnet {
                link: link.chars().take(80).collect(),
            })?;
        let mut info_hash = None;
        let mut display_name = None;
        let (mut trackers, mut web_seeds, mut peers) = (Vec::new(), Vec::new(), Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            // `xt.1`, `tr.2`...: numbered forms of the same parameters.
            let key = raw_key.split_once('.').map_or(raw_key, |(k, n)| {
                if n.bytes().all(|b| b.is_ascii_digit()) {
                    k
                } else {
                    raw_key
                }
            });
            let value = percent_decode_str(&raw_value.replace('+', " "))
                .decode_utf8()
                .map_err(|_| MagnetError::NotUtf8 {
                    key: raw_key.to_owned(),
                })?
                .into_owned();
            match key {
                "xt" => {
                    let Some(hash) = value.strip_prefix("urn:btih:") else {
                        continue;
                    };
                    let parsed = InfoHash::parse(hash).map_err(|_| MagnetError::BadInfoHash {
                        value: hash.to_owned(),
                    })?;
                    if info_hash.is_some_and(|h| h != parsed) {
                        return Err(MagnetError::ConflictingInfoHashes);
                    }
                    info_hash = Some(parsed);
                }
                "dn" => display_name = Some(value),
                "tr" if !trackers.contains(&value) => trackers.push(value),
                "ws" => web_seeds.push(value),
                "x.pe" => peers.push(value),
                _ => {}
            }
        }
        Ok(MagnetLink {
            info_hash: info_hash.ok_or(MagnetError::MissingInfoHash)?,
            display_name,
            trackers,
            web_seeds,
            peers,
        })
    }
}

impl fmt::Display for MagnetLink {
    /// The URI form, hex info-hash first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", self.info_hash)?;
        let params = self
            .display_name
            .iter()
            .map(|v| ("dn", v))
            .chain(self.trackers.iter().map(|v| ("tr", v)))
            .chain(self.web_seeds.iter().map(|v| ("ws", v)))
            .chain(self.peers.iter().map(|v| ("x.pe", v)));
        for (key, value) in params {
            write!(f, "&{key}={}", utf8_percent_encode(value, VALUE))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn parses_every_parameter() {
        let link = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Ubuntu+24.04%20ISO&tr=udp%3A%2F%2Ft.example%3A6969&tr.1=http://b/announce?x=1\
             &ws=http%3A%2F%2Fmirror%2Fu.iso&x.pe=127.0.0.1:6881&x.pe=[::1]:51413&unknown=1"
        );
        let m = MagnetLink::parse(&link).unwrap();
        assert_eq!(m.info_hash.to_hex(), HEX);
        assert_eq!(m.display_name.as_deref(), Some("Ubuntu 24.04 ISO"));
        assert_eq!(
            m.trackers,
            ["udp://t.example:6969", "http://b/announce?x=1"]
        );
        assert_eq!(m.web_seeds, ["http://mirror/u.iso"]);
        assert_eq!(m.peers, ["127.0.0.1:6881", "[::1]:51413"]);
    }

    #[test]
    fn base32_info_hash() {
        let h = InfoHash::parse(HEX).unwrap();
        let b32 = data_encoding::BASE32.encode(&h.0);
        let m = MagnetLink::parse(&format!("magnet:?xt=urn:btih:{b32}")).unwrap();
        assert_eq!(m.info_hash, h);
    }

    #[test]
    fn round_trips_through_display() {
        let m = MagnetLink {
            info_hash: InfoHash::parse(HEX).unwrap(),
            display_name: Some("a&b=c d+e%".into()),
            trackers: vec!["http://t/announce?passkey=1&x=2".into(), "udp://u:1".into()],
            web_seeds: vec!["http://w/ü".into()],
            peers: vec!["10.0.0.1:1".into()],
        };
        let uri = m.to_string();
        assert!(uri.starts_with(&format!(
            "magnet:?xt=urn:btih:{HEX}&dn=a%26b%3Dc%20d%2Be%25"
        )));
        assert_eq!(MagnetLink::parse(&uri).unwrap(), m);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            MagnetLink::parse("http://x"),
            Err(MagnetError::NotMagnet { .. })
        ));
        assert_eq!(
            MagnetLink::parse("magnet:?dn=x"),
            Err(MagnetError::MissingInfoHash)
        );
        assert_eq!(
            MagnetLink::parse("magnet:?xt=urn:btmh:1220abcd"),
            Err(MagnetError::MissingInfoHash)
        );
        assert_eq!(
            MagnetLink::parse("magnet:?xt=urn:btih:1234"),
            Err(MagnetError::BadInfoHash {
                value: "1234".into()
            })
        );
        let other = "d".repeat(40);
        assert_eq!(
            MagnetLink::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            Err(MagnetError::ConflictingInfoHashes)
        );
        assert!(matches!(
            MagnetLink::parse(&format!("magnet:?xt=urn:btih:{HEX}&dn=%ff")),
            Err(MagnetError::NotUtf8 { .. })
        ));
    }
}
