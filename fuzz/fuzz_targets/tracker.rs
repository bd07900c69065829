//! Tracker bytes from the network: HTTP announce and scrape replies, UDP
//! requests (what the built-in tracker reads) and UDP replies (what the
//! client reads) never panic, and decoded UDP packets re-encode to bytes
//! that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::tracker::{
    parse_http_announce, parse_http_scrape, UdpReply, UdpRequest,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_http_announce(data);
    let _ = parse_http_scrape(data);
    if let Ok(req) = UdpRequest::decode(data) {
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(UdpRequest::decode(&out).expect("our encoding decodes"), req);
    }
    for ipv6 in [false, true] {
        if let Ok(reply) = UdpReply::decode(data, ipv6) {
            let mut out = Vec::new();
            reply.encode(&mut out, ipv6);
            assert_eq!(
                UdpReply::decode(&out, ipv6).expect("our encoding decodes"),
                reply
            );
        }
    }
});
