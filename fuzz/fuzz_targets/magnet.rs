//! Magnet-link parsing never panics, and every accepted link survives a round
//! trip: parsing its `Display` form gives back the same link.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::MagnetLink;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(link) = MagnetLink::parse(text) else {
        return;
    };
    let uri = link.to_string();
    match MagnetLink::parse(&uri) {
        Ok(again) if again == link => {}
        Ok(again) => panic!("round trip changed the link:\n  input  {text:?}\n  wrote  {uri:?}\n  parsed {link:?}\n  reread {again:?}"),
        Err(e) => panic!("round trip failed:\n  input {text:?}\n  wrote {uri:?}\n  error {e}"),
    }
});
