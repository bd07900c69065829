//! Extension protocol payloads (BEP 10 handshake, BEP 9 ut_metadata) from
//! peers: never panic; what decodes re-encodes to something that decodes
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::extension::{ExtensionHandshake, MetadataMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(hs) = ExtensionHandshake::decode(data) {
        let mut out = Vec::new();
        hs.encode(&mut out);
        let again = ExtensionHandshake::decode(&out).expect("our encoding decodes");
        assert_eq!(again.reqq, hs.reqq);
        assert_eq!(again.metadata_size, hs.metadata_size);
    }
    if let Ok(msg) = MetadataMessage::decode(data) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(
            MetadataMessage::decode(&out).expect("our encoding decodes"),
            msg
        );
    }
});
