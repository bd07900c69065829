//! A magnet link's metadata fetched from a hostile peer: any stream of wire
//! messages after the handshake never panics, never makes the fetcher hold
//! more than the size limit, and anything it returns hashes to the
//! info-hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::hash::sha1;
use ringseed_engine::policy::metadata::MetadataFetcher;
use ringseed_engine::proto::wire;
use ringseed_engine::InfoHash;

fuzz_target!(|data: &[u8]| {
    // The first 20 bytes choose the info-hash; the rest is the peer's stream.
    if data.len() < 20 {
        return;
    }
    let info_hash = InfoHash(data[..20].try_into().unwrap());
    let mut fetcher = MetadataFetcher::new(info_hash, true, "fuzz").unwrap();
    let mut rest = &data[20..];
    while let Ok(Some((msg, used))) = wire::decode(rest, 1 << 20) {
        rest = &rest[used..];
        match fetcher.on_message(msg) {
            Ok(Some(info)) => {
                assert_eq!(sha1(&info), info_hash.0);
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        let mut out = Vec::new();
        fetcher.drain_output_into(&mut out);
    }
});
