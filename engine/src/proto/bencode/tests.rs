use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn err(input: &[u8]) -> DecodeError {
    decode(input).expect_err("input must be refused")
}

#[test]
fn decodes_every_type_and_keeps_raw_spans() {
    let input = b"d3:agei-42e4:listl1:xi0ee4:name4:spame";
    let v = decode(input).unwrap();
    assert_eq!(v.raw, &input[..]);
    assert_eq!(v.get("age").unwrap().as_int(), Some(-42));
    assert_eq!(v.get("name").unwrap().as_str(), Some("spam"));
    let list = v.get("list").unwrap();
    assert_eq!(list.raw, b"l1:xi0ee");
    assert_eq!(list.offset, 17);
    assert_eq!(list.as_list().unwrap()[1].as_int(), Some(0));
    assert!(v.get("missing").is_none());
}

#[test]
fn integer_limits() {
    assert_eq!(
        decode(b"i9223372036854775807e").unwrap().as_int(),
        Some(i64::MAX)
    );
    assert_eq!(
        decode(b"i-9223372036854775808e").unwrap().as_int(),
        Some(i64::MIN)
    );
    assert_eq!(
        err(b"i9223372036854775808e").kind,
        DecodeErrorKind::IntegerOverflow
    );
    assert_eq!(
        err(b"i-9223372036854775809e").kind,
        DecodeErrorKind::IntegerOverflow
    );
}

#[test]
fn refuses_non_canonical_integers() {
    assert_eq!(err(b"i03e").kind, DecodeErrorKind::LeadingZero);
    assert_eq!(err(b"i-0e").kind, DecodeErrorKind::NegativeZero);
    assert_eq!(err(b"ie").kind, DecodeErrorKind::EmptyInteger);
    assert_eq!(err(b"i-e").kind, DecodeErrorKind::EmptyInteger);
    assert_eq!(err(b"i1x2e").kind, DecodeErrorKind::UnexpectedByte(b'x'));
    assert_eq!(err(b"03:abc").kind, DecodeErrorKind::LeadingZero);
}

#[test]
fn refuses_lengths_beyond_the_input_without_allocating_them() {
    let e = err(b"18446744073709551615:x");
    assert_eq!(e.kind, DecodeErrorKind::IntegerOverflow);
    let e = err(b"d4:infoi1e9999999999:abce");
    assert_eq!(
        e.kind,
        DecodeErrorKind::LengthExceedsInput {
            declared: 9_999_999_999,
            available: 4
        }
    );
    assert_eq!(e.offset, 10);
}

#[test]
fn refuses_truncation_trailing_data_and_bad_structure() {
    for truncated in [&b""[..], b"i12", b"5", b"l", b"d3:key", b"d3:keyi1e"] {
        assert_eq!(
            err(truncated).kind,
            DecodeErrorKind::UnexpectedEof,
            "{truncated:?}"
        );
    }
    let e = err(b"i1ei2e");
    assert_eq!((e.kind, e.offset), (DecodeErrorKind::TrailingData, 3));
    assert_eq!(err(b"di1ei2ee").kind, DecodeErrorKind::NonStringKey);
    assert_eq!(err(b"x").kind, DecodeErrorKind::UnexpectedByte(b'x'));
    assert_eq!(err(b"-1:a").kind, DecodeErrorKind::UnexpectedByte(b'-'));
}

#[test]
fn refuses_duplicate_keys_sorted_or_not() {
    let dup = DecodeErrorKind::DuplicateKey { key: "a".into() };
    assert_eq!(err(b"d1:ai1e1:ai2ee").kind, dup);
    assert_eq!(err(b"d1:ai1e1:bi0e1:ai2ee").kind, dup);
    // Unsorted but unique keys are accepted, as real files have them.
    assert!(decode(b"d1:bi1e1:ai2ee").is_ok());
}

#[test]
fn limits_nesting_depth() {
    let deep = |n: usize| [vec![b'l'; n], vec![b'e'; n]].concat();
    assert!(decode(&deep(DEFAULT_MAX_DEPTH)).is_ok());
    assert_eq!(
        err(&deep(DEFAULT_MAX_DEPTH + 1)).kind,
        DecodeErrorKind::TooDeep {
            limit: DEFAULT_MAX_DEPTH
        }
    );
    // A million unclosed lists must fail fast, not overflow the stack.
    assert!(matches!(
        err(&vec![b'l'; 1 << 20]).kind,
        DecodeErrorKind::TooDeep { .. }
    ));
}

#[test]
fn decode_prefix_leaves_the_rest() {
    let (v, used) = decode_prefix(b"d8:msg_typei1eeRAWDATA").unwrap();
    assert_eq!(v.get("msg_type").unwrap().as_int(), Some(1));
    assert_eq!(used, 15);
}

fn owned_value() -> impl Strategy<Value = OwnedValue> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(OwnedValue::Int),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(OwnedValue::Bytes),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(OwnedValue::List),
            proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..8), inner), 0..6)
                .prop_map(|kv| OwnedValue::Dict(kv.into_iter().collect::<BTreeMap<_, _>>())),
        ]
    })
}

proptest! {
    #[test]
    fn round_trips_canonical_documents(value in owned_value()) {
        let bytes = value.to_bytes();
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.raw, &bytes[..]);
        prop_assert_eq!(OwnedValue::from(&decoded), value);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = decode(&bytes) {
            // What decodes re-encodes to bytes that decode to the same tree.
            let again = OwnedValue::from(&v).to_bytes();
            prop_assert_eq!(OwnedValue::from(&decode(&again).unwrap()), OwnedValue::from(&v));
        }
    }

    #[test]
    fn never_panics_on_mutated_documents(value in owned_value(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = value.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode(&bytes);
        bytes.truncate(i);
        let _ = decode(&bytes);
    }
}
