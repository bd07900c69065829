//! Fuzzes what a web seed's answer feeds us: `Content-Range`, `Retry-After`
//! and `Location`, and the classification of the answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::webseed::{classify, parse_content_range, AnswerHeaders};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_content_range(text);
    let headers = AnswerHeaders {
        content_range: Some(text),
        content_length: Some(1000),
        location: Some(text),
        retry_after: Some(text),
    };
    for status in [200, 206, 302, 416, 503] {
        let _ = classify("http://m/f", status, &headers, Some(100..200), 1000);
    }
});
