//! Metainfo parsing never panics, and every accepted torrent keeps its
//! invariants: the info-hash covers the info bytes, the piece count fits the
//! total length, file paths are relative with no `..`, and the layout cuts
//! each piece into segments that add up to the piece length.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use ringseed_engine::proto::layout::Layout;
use ringseed_engine::Metainfo;

/// Pieces whose segments are checked per input, to keep each run fast.
const MAX_PIECES_CHECKED: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Metainfo::from_bytes(data) else {
        return;
    };

    assert_eq!(
        m.info_hash.0,
        ringseed_engine::hash::sha1(&m.info_bytes),
        "info-hash is not the SHA-1 of info_bytes"
    );

    let total = m.total_length();
    assert_eq!(
        m.info.pieces.len() as u64,
        total.div_ceil(m.info.piece_length),
        "{} pieces for {total} bytes in pieces of {}",
        m.info.pieces.len(),
        m.info.piece_length
    );

    for (i, file) in m.info.files.iter().enumerate() {
        assert!(
            file.path.is_relative(),
            "file {i} path {:?} is not relative",
            file.path
        );
        for component in file.path.components() {
            assert!(
                !matches!(
                    component,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                ),
                "file {i} path {:?} has an unsafe component {component:?}",
                file.path
            );
        }
    }

    let layout = Layout::new(&m.info);
    assert_eq!(layout.total_length(), total);
    assert_eq!(u64::from(layout.num_pieces()), m.info.pieces.len() as u64);
    for p in 0..layout.num_pieces().min(MAX_PIECES_CHECKED) {
        let range = layout.piece_range(p);
        let sum: u64 = layout.segments(range.clone()).map(|s| s.len).sum();
        assert_eq!(
            sum,
            layout.piece_len(p),
            "piece {p} ({range:?}) segments cover {sum} bytes"
        );
    }
});
