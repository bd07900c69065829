//! Fuzzes peer exchange (ut_pex) messages: decoding never panics, keeps at
//! most the cap, and what it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::pex::PexMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = PexMessage::decode(data, 50) else {
        return;
    };
    assert!(message.added.len() <= 100 && message.dropped.len() <= 100);
    let mut out = Vec::new();
    message.encode(&mut out);
    assert_eq!(PexMessage::decode(&out, 100).expect("our own encoding"), message);
});
