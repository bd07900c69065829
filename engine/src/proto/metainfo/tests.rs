use super::*;
use crate::proto::bencode::OwnedValue as V;

fn list(items: Vec<V>) -> V {
    V::List(items)
}

fn single_file_info(length: i64, piece_length: i64) -> V {
    let mut info = V::dict();
    info.insert("name", V::bytes("file.iso"));
    info.insert("length", V::Int(length));
    info.insert("piece length", V::Int(piece_length));
    let pieces = (length.max(0) as u64)
        .div_ceil(piece_length.max(1) as u64)
        .min(1000) as usize;
    info.insert("pieces", V::bytes(vec![7u8; 20 * pieces]));
    info
}

fn torrent(info: V) -> V {
    let mut root = V::dict();
    root.insert("announce", V::bytes("http://t.example/announce"));
    root.insert("info", info);
    root
}

fn multi_file_info(paths: &[&[&str]]) -> V {
    let mut info = V::dict();
    info.insert("name", V::bytes("dir"));
    info.insert("piece length", V::Int(16384));
    let files = paths
        .iter()
        .map(|p| {
            let mut f = V::dict();
            f.insert("length", V::Int(10));
            f.insert("path", list(p.iter().map(V::bytes).collect()));
            f
        })
        .collect();
    info.insert("files", V::List(files));
    info.insert("pieces", V::bytes([1u8; 20]));
    info
}

fn parse(v: &V) -> Result<Metainfo> {
    Metainfo::from_bytes(&v.to_bytes())
}

#[test]
fn single_file_with_every_optional_field() {
    let mut root = torrent(single_file_info(100_000, 32768));
    root.insert(
        "announce-list",
        list(vec![
            list(vec![V::bytes("udp://a:1"), V::bytes("udp://b:2")]),
            list(vec![V::bytes("http://c/announce")]),
        ]),
    );
    root.insert("url-list", V::bytes("http://mirror/file.iso"));
    root.insert("creation date", V::Int(1_700_000_000));
    root.insert("comment", V::bytes("hello"));
    root.insert("created by", V::bytes("test"));
    let m = parse(&root).unwrap();
    assert_eq!(m.info.name, "file.iso");
    assert_eq!(m.total_length(), 100_000);
    assert_eq!(m.info.num_pieces(), 4);
    assert!(!m.info.multi_file);
    assert_eq!(m.info.files[0].path, PathBuf::from("file.iso"));
    // announce-list wins over announce (BEP 12).
    assert_eq!(
        m.tracker_urls(),
        ["udp://a:1", "udp://b:2", "http://c/announce"]
    );
    assert_eq!(m.web_seeds, ["http://mirror/file.iso"]);
    assert_eq!(m.creation_date, Some(1_700_000_000));
    assert_eq!(m.comment.as_deref(), Some("hello"));
    assert_eq!(m.created_by.as_deref(), Some("test"));
    assert!(!m.info.private);
}

#[test]
fn bad_web_seed_entries_are_skipped_with_a_warning_not_refused() {
    let mut root = torrent(single_file_info(100, 32768));
    root.insert(
        "url-list",
        list(vec![
            V::bytes("http://a/"),
            V::bytes(&b"http://\xff/"[..]),
            V::Int(7),
            V::bytes(""),
            V::bytes("http://a/"),
            V::bytes("https://b/x.iso"),
        ]),
    );
    root.insert("httpseeds", V::Int(3));
    let m = parse(&root).unwrap();
    assert_eq!(m.web_seeds, ["http://a/", "https://b/x.iso"]);
    assert!(m.http_seeds.is_empty());
    assert_eq!(m.warnings.len(), 3, "{:?}", m.warnings);
    assert!(m.warnings.iter().any(|w| w.contains("httpseeds")));

    // BEP 17 `httpseeds`, as Debian's torrents carry it: listed apart.
    let mut root = torrent(single_file_info(100, 32768));
    root.insert("httpseeds", list(vec![V::bytes("http://h/seed.php")]));
    root.insert("url-list", list(vec![]));
    let m = parse(&root).unwrap();
    assert_eq!(m.http_seeds, ["http://h/seed.php"]);
    assert!(m.web_seeds.is_empty() && m.warnings.is_empty());
}

#[test]
fn info_hash_covers_the_raw_info_bytes_not_a_re_encoding() {
    // Unsorted keys inside `info`: a re-encoding would sort them and change
    // the hash. The raw bytes must be hashed as they are.
    let info =
        b"d6:lengthi5e4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaa7:privatei1ee";
    let unsorted =
        b"d4:name1:a6:lengthi5e12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaa7:privatei1ee";
    for raw in [&info[..], &unsorted[..]] {
        let file = [&b"d4:info"[..], raw, b"e"].concat();
        let m = Metainfo::from_bytes(&file).unwrap();
        assert_eq!(m.info_bytes, raw);
        assert_eq!(m.info_hash, InfoHash(sha1(raw)));
        assert!(m.info.private);
    }
}

#[test]
fn multi_file_paths_and_pad_files() {
    let mut info = multi_file_info(&[&["a.txt"], &["sub", "b.txt"]]);
    if let V::Dict(d) = &mut info {
        let V::List(files) = d.get_mut(&b"files"[..]).unwrap() else {
            unreachable!()
        };
        let mut pad = V::dict();
        pad.insert("length", V::Int(5));
        pad.insert("attr", V::bytes("p"));
        pad.insert("path", list(vec![V::bytes(".pad"), V::bytes("5")]));
        files.push(pad);
    }
    let m = parse(&torrent(info)).unwrap();
    let paths: Vec<_> = m
        .info
        .files
        .iter()
        .map(|f| f.path.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["dir/a.txt", "dir/sub/b.txt", "dir/.pad/5"]);
    assert!(m.info.files[2].pad && !m.info.files[0].pad);
    assert_eq!(m.total_length(), 25);
    assert!(m.info.multi_file);
}

#[test]
fn refuses_path_traversal_and_unsafe_names() {
    let cases: &[(&[&str], &str)] = &[
        (&["..", "etc", "passwd"], "`.` or `..` component"),
        (&["a", ".."], "`.` or `..` component"),
        (&["/etc/passwd"], "component contains a path separator"),
        (&["a\\..\\b"], "component contains a path separator"),
        (&["a", ""], "empty component"),
        (&["nul\0byte"], "component contains NUL"),
    ];
    for (path, why) in cases {
        let err = parse(&torrent(multi_file_info(&[path]))).unwrap_err();
        match err {
            MetainfoError::UnsafePath { reason, field, .. } => {
                assert_eq!(reason, *why, "{path:?}");
                assert_eq!(field, "info.files[0].path");
            }
            other => panic!("{path:?}: {other}"),
        }
    }
    let long = "x".repeat(256);
    assert!(matches!(
        parse(&torrent(multi_file_info(&[&[&long]]))),
        Err(MetainfoError::UnsafePath { .. })
    ));
    let mut info = single_file_info(10, 16384);
    info.insert("name", V::bytes(".."));
    let err = parse(&torrent(info)).unwrap_err();
    assert!(
        matches!(err, MetainfoError::UnsafePath { ref field, .. } if field == "info.name"),
        "{err}"
    );
}

/// Regression (issue 13): a 2,000-level deep path was accepted and created
/// 2,011 directories.
#[test]
fn refuses_paths_too_deep_or_too_long_to_create() {
    let deep: Vec<String> = (0..65).map(|i| format!("d{i}")).collect();
    let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
    let err = parse(&torrent(multi_file_info(&[&deep]))).unwrap_err();
    assert!(
        matches!(&err, MetainfoError::UnsafePath { reason, .. } if reason.starts_with("deeper than 64")),
        "{err}"
    );
    assert!(err.to_string().contains("65 components"), "{err}");
    // 64 levels are fine.
    assert!(parse(&torrent(multi_file_info(&[&deep[..64]]))).is_ok());
    let long = "x".repeat(250);
    let long_path: Vec<&str> = (0..13).map(|_| long.as_str()).collect();
    let err = parse(&torrent(multi_file_info(&[&long_path]))).unwrap_err();
    assert!(
        matches!(&err, MetainfoError::UnsafePath { reason, .. } if reason.starts_with("longer than 3072")),
        "{err}"
    );
}

#[test]
fn refuses_paths_that_collide() {
    let dup = parse(&torrent(multi_file_info(&[&["a"], &["a"]]))).unwrap_err();
    assert!(matches!(
        dup,
        MetainfoError::UnsafePath {
            reason: "the path is used twice",
            ..
        }
    ));
    let file_then_dir = parse(&torrent(multi_file_info(&[&["a"], &["a", "b"]]))).unwrap_err();
    assert!(matches!(file_then_dir, MetainfoError::UnsafePath { .. }));
    let dir_then_file = parse(&torrent(multi_file_info(&[&["a", "b"], &["a"]]))).unwrap_err();
    assert!(matches!(dir_then_file, MetainfoError::UnsafePath { .. }));
}

#[test]
fn wrong_types_name_the_field_and_offset() {
    let mut info = single_file_info(10, 16384);
    info.insert("piece length", V::bytes("16384"));
    let err = parse(&torrent(info)).unwrap_err();
    match &err {
        MetainfoError::WrongType {
            field,
            expected,
            found,
            offset,
        } => {
            assert_eq!(field, "info.piece length");
            assert_eq!((*expected, *found), ("integer", "byte string"));
            assert!(*offset > 0);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("info.piece length"));

    let not_a_dict = Metainfo::from_bytes(b"li1ee").unwrap_err();
    assert!(matches!(
        not_a_dict,
        MetainfoError::WrongType {
            expected: "dictionary",
            ..
        }
    ));
}

#[test]
fn missing_fields() {
    let mut root = V::dict();
    root.insert("announce", V::bytes("x"));
    let err = parse(&root).unwrap_err();
    assert_eq!(
        err,
        MetainfoError::MissingField {
            field: "info".into()
        }
    );

    let mut info = single_file_info(10, 16384);
    if let V::Dict(d) = &mut info {
        d.remove(&b"pieces"[..]);
    }
    let err = parse(&torrent(info)).unwrap_err();
    assert_eq!(
        err,
        MetainfoError::MissingField {
            field: "info.pieces".into()
        }
    );
}

#[test]
fn refuses_bad_geometry() {
    let invalid_field = |v: &V| match parse(v).unwrap_err() {
        MetainfoError::InvalidField { field, .. } => field,
        other => panic!("{other}"),
    };
    assert_eq!(
        invalid_field(&torrent(single_file_info(10, 0))),
        "info.piece length"
    );
    assert_eq!(
        invalid_field(&torrent(single_file_info(10, -5))),
        "info.piece length"
    );
    assert_eq!(
        invalid_field(&torrent(single_file_info(-10, 16384))),
        "info.length"
    );

    let mut wrong_count = single_file_info(100_000, 16384);
    wrong_count.insert("pieces", V::bytes([0u8; 40]));
    assert_eq!(invalid_field(&torrent(wrong_count)), "info.pieces");

    let mut ragged = single_file_info(10, 16384);
    ragged.insert("pieces", V::bytes([0u8; 21]));
    assert_eq!(invalid_field(&torrent(ragged)), "info.pieces");

    let mut empty = single_file_info(0, 16384);
    empty.insert("pieces", V::bytes(b""));
    assert_eq!(invalid_field(&torrent(empty)), "info");
}

#[test]
fn huge_declared_lengths_are_refused_cheaply() {
    let mut info = single_file_info(i64::MAX, 16384);
    info.insert("pieces", V::bytes([0u8; 20]));
    assert!(matches!(
        parse(&torrent(info)),
        Err(MetainfoError::InvalidField { .. })
    ));
    // Two files whose lengths overflow a u64 together.
    let mut info = multi_file_info(&[&["a"], &["b"]]);
    if let V::Dict(d) = &mut info {
        let V::List(files) = d.get_mut(&b"files"[..]).unwrap() else {
            unreachable!()
        };
        for f in files {
            f.insert("length", V::Int(i64::MAX));
        }
    }
    assert!(matches!(
        parse(&torrent(info)),
        Err(MetainfoError::InvalidField { .. })
    ));
    let err = Metainfo::from_bytes(b"d4:info99999999999:e").unwrap_err();
    assert!(matches!(err, MetainfoError::Bencode(_)), "{err}");
}

#[test]
fn truncated_files_give_a_bencode_error_at_every_length() {
    let bytes = torrent(multi_file_info(&[&["a"], &["b", "c"]])).to_bytes();
    assert!(Metainfo::from_bytes(&bytes).is_ok());
    for len in 0..bytes.len() {
        assert!(
            matches!(
                Metainfo::from_bytes(&bytes[..len]),
                Err(MetainfoError::Bencode(_))
            ),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn dht_nodes_are_read_and_malformed_ones_left_out() {
    let mut root = torrent(single_file_info(100, 16384));
    root.insert(
        "nodes",
        list(vec![
            list(vec![V::bytes("127.0.0.1"), V::Int(6881)]),
            list(vec![V::bytes("::1"), V::Int(6882)]),
            list(vec![V::bytes("router.example"), V::Int(25401)]),
            // Not a [host, port] pair, a port of 0, a port out of range.
            list(vec![V::bytes("1.2.3.4")]),
            list(vec![V::bytes("1.2.3.4"), V::Int(0)]),
            list(vec![V::bytes("1.2.3.4"), V::Int(70000)]),
            V::Int(5),
        ]),
    );
    let m = parse(&root).unwrap();
    assert_eq!(
        m.nodes,
        ["127.0.0.1:6881", "[::1]:6882", "router.example:25401"]
    );
}
