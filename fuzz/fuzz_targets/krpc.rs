//! KRPC datagrams from the network (the DHT's only input) never panic, and
//! decoded messages re-encode to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::krpc::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let again = Message::decode(&m.to_bytes()).expect("our encoding decodes");
        assert_eq!(again, m);
    }
});
