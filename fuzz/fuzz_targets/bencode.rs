//! Bencode decoding never panics, `raw` is the exact input, and the canonical
//! re-encoding of every accepted value decodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::bencode::{decode, decode_prefix, OwnedValue};

fuzz_target!(|data: &[u8]| {
    if let Ok((value, used)) = decode_prefix(data) {
        assert!(
            used <= data.len(),
            "decode_prefix used {used} of {} bytes",
            data.len()
        );
        assert_eq!(
            value.raw,
            &data[..used],
            "prefix raw differs from consumed bytes"
        );
        assert_eq!(value.offset, 0);
    }

    let Ok(value) = decode(data) else { return };
    assert_eq!(value.raw, data, "raw is not the whole input");

    let owned = OwnedValue::from(&value);
    let encoded = owned.to_bytes();
    let again = match decode(&encoded) {
        Ok(v) => v,
        Err(e) => panic!("canonical encoding {encoded:?} does not decode: {e}"),
    };
    let again = OwnedValue::from(&again);
    if again != owned {
        panic!("re-encoding changed the value: {owned:?} became {again:?}");
    }
});
