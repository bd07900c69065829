use std::path::PathBuf;

use super::*;
use crate::proto::metainfo::FileEntry;

fn info(multi_file: bool, name: &str, files: &[(&str, bool)]) -> Info {
    Info {
        name: name.into(),
        piece_length: 16384,
        pieces: Vec::new(),
        files: files
            .iter()
            .map(|(path, pad)| FileEntry {
                path: PathBuf::from(path),
                length: 1,
                pad: *pad,
                executable: false,
            })
            .collect(),
        multi_file,
        private: false,
    }
}

fn url(s: &str) -> WebSeedUrl {
    WebSeedUrl::parse(s).unwrap()
}

#[test]
fn components_keep_only_unreserved_characters() {
    // anacrolix's cases, and the ones Transmission leaves raw.
    assert_eq!(escape_component("he//o#world"), "he%2F%2Fo%23world");
    assert_eq!(escape_component("%aa + %bb"), "%25aa%20%2B%20%25bb");
    assert_eq!(escape_component("a?b;c=d&e"), "a%3Fb%3Bc%3Dd%26e");
    assert_eq!(escape_component("Ünï-._~"), "%C3%9Cn%C3%AF-._~");
    assert_eq!(escape_component("Aldous+Huxley.jpg"), "Aldous%2BHuxley.jpg");
}

#[test]
fn single_file_url_is_the_file_unless_it_ends_in_a_slash() {
    let i = info(false, "arch linux.iso", &[("arch linux.iso", false)]);
    assert_eq!(
        url("http://m/iso/arch.iso").file_urls(&i),
        [Some("http://m/iso/arch.iso".to_owned())]
    );
    assert_eq!(
        url("http://m/iso/").file_urls(&i),
        [Some("http://m/iso/arch%20linux.iso".to_owned())]
    );
}

#[test]
fn multi_file_urls_add_the_slash_and_escape_each_component() {
    let i = info(
        true,
        "set",
        &[
            ("set/a b/c#1.txt", false),
            ("set/.pad/100", true),
            ("set/100%.bin", false),
        ],
    );
    let want = [
        Some("http://m/pub/set/a%20b/c%231.txt".to_owned()),
        None,
        Some("http://m/pub/set/100%25.bin".to_owned()),
    ];
    assert_eq!(url("http://m/pub").file_urls(&i), want);
    assert_eq!(url("http://m/pub/").file_urls(&i), want);
    // A multi-file torrent of one file is still a directory (libtorrent#3519).
    let one = info(true, "d", &[("d/f", false)]);
    assert_eq!(
        url("http://m/x").file_urls(&one),
        [Some("http://m/x/d/f".into())]
    );
}

#[test]
fn bases_are_made_legal_without_re_encoding() {
    assert_eq!(
        url("http://m/a b/ü/%2F/").as_str(),
        "http://m/a%20b/%C3%BC/%2F/"
    );
    assert!(matches!(
        WebSeedUrl::parse("ftp://m/x"),
        Err(UrlError::Scheme(_))
    ));
    assert!(matches!(
        WebSeedUrl::parse("/1/items/"),
        Err(UrlError::Scheme(_))
    ));
    assert!(matches!(
        WebSeedUrl::parse("http:///x"),
        Err(UrlError::NoHost(_))
    ));
    assert!(matches!(
        WebSeedUrl::parse("http://u:p@/x"),
        Err(UrlError::NoHost(_))
    ));
    assert_eq!(url("https://u:pw@m:8443/x").redacted(), "https://m:8443/x");
}

#[test]
fn debian_style_httpseeds_are_used_when_they_name_the_file() {
    let mut m = crate::proto::metainfo::Metainfo::from_bytes(
        b"d4:infod6:lengthi5e4:name8:d-12.iso12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee",
    )
    .unwrap();
    m.http_seeds = vec![
        "https://cdimage.example/12/d-12.iso".into(),
        "http://tracker.example/seed.php".into(),
    ];
    m.web_seeds = vec!["ftp://x/".into(), "http://m/".into()];
    let (seeds, skipped) = web_seeds_of(&m);
    let seeds: Vec<&str> = seeds.iter().map(WebSeedUrl::as_str).collect();
    assert_eq!(seeds, ["http://m/", "https://cdimage.example/12/d-12.iso"]);
    assert_eq!(skipped.len(), 1);
}

#[test]
fn origins_and_redirect_targets() {
    assert_eq!(origin("HTTP://M.example/x"), "http://m.example:80");
    assert_eq!(origin("https://u:p@m:8443/x?q"), "https://m:8443");
    assert_eq!(origin("http://[::1]/x"), "http://[::1]:80");
    assert_eq!(origin("http://[::1]:81/x"), "http://[::1]:81");
    let from = "http://a/pub/dir/f.iso?x=1";
    assert_eq!(
        resolve_location(from, "http://b/f").as_deref(),
        Some("http://b/f")
    );
    assert_eq!(
        resolve_location(from, "//c/f").as_deref(),
        Some("http://c/f")
    );
    assert_eq!(
        resolve_location(from, "/root/f").as_deref(),
        Some("http://a/root/f")
    );
    assert_eq!(
        resolve_location(from, "g b").as_deref(),
        Some("http://a/pub/dir/g%20b")
    );
    assert_eq!(
        resolve_location("http://a", "f").as_deref(),
        Some("http://a/f")
    );
    assert_eq!(resolve_location(from, "ftp://x/f"), None);
    assert!(!may_follow("https://a/x", "http://a/x"));
    assert!(may_follow("http://a/x", "https://a/x"));
}

#[test]
fn answers_to_a_range_request() {
    let h = |range: Option<&'static str>, len: Option<u64>| AnswerHeaders {
        content_range: range,
        content_length: len,
        ..Default::default()
    };
    let u = "http://m/f";
    assert_eq!(
        classify(
            u,
            206,
            &h(Some("bytes 100-199/1000"), Some(100)),
            Some(100..200),
            1000
        ),
        Ok(Answer::Part { range: 100..200 })
    );
    // A shorter part is usable.
    assert_eq!(
        classify(
            u,
            206,
            &h(Some("bytes 100-149/*"), None),
            Some(100..200),
            1000
        ),
        Ok(Answer::Part { range: 100..150 })
    );
    // Another start, more than asked, another file length: refused.
    for bad in ["bytes 0-99/1000", "bytes 100-299/1000", "bytes 100-199/999"] {
        let e = classify(u, 206, &h(Some(bad), None), Some(100..200), 1000).unwrap_err();
        assert_eq!(e.cause(), "bad_range", "{bad}");
    }
    assert_eq!(
        classify(u, 206, &h(None, None), Some(0..10), 1000)
            .unwrap_err()
            .cause(),
        "bad_range"
    );
    // The range ignored: the whole file, if it has the file's length.
    assert_eq!(
        classify(u, 200, &h(None, Some(1000)), Some(100..200), 1000),
        Ok(Answer::WholeFile)
    );
    assert_eq!(
        classify(u, 200, &h(None, Some(999)), None, 1000)
            .unwrap_err()
            .cause(),
        "bad_length"
    );
    let redirect = AnswerHeaders {
        location: Some("/other/f"),
        ..Default::default()
    };
    assert_eq!(
        classify(u, 307, &redirect, None, 1000),
        Ok(Answer::Redirect("http://m/other/f".into()))
    );
    let down = AnswerHeaders {
        location: Some("http://m/f"),
        ..Default::default()
    };
    assert!(classify("https://m/f", 302, &down, None, 1).is_err());
    assert_eq!(
        classify(u, 404, &h(None, None), None, 1),
        Ok(Answer::Missing(404))
    );
    let busy = AnswerHeaders {
        retry_after: Some("120"),
        ..Default::default()
    };
    assert_eq!(
        classify(u, 503, &busy, None, 1),
        Ok(Answer::Busy(Duration::from_secs(120)))
    );
    assert_eq!(
        classify(u, 429, &h(None, None), None, 1),
        Ok(Answer::Busy(DEFAULT_RETRY_AFTER))
    );
    assert_eq!(
        classify(u, 500, &h(None, None), None, 1)
            .unwrap_err()
            .cause(),
        "http_5xx"
    );
    assert_eq!(
        classify(u, 403, &h(None, None), None, 1)
            .unwrap_err()
            .cause(),
        "http_4xx"
    );
}

#[test]
fn content_ranges_and_retry_after() {
    assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 0, Some(1))));
    assert_eq!(parse_content_range(" bytes  5-9/*"), Some((5, 9, None)));
    for bad in [
        "bytes 9-5/10",
        "bytes 0-10/10",
        "bytes -5/10",
        "items 0-1/2",
        "bytes 0-1",
        "bytes +0-1/2",
    ] {
        assert_eq!(parse_content_range(bad), None, "{bad}");
    }
    assert_eq!(parse_retry_after("0"), Some(Duration::from_secs(5)));
    assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
}

proptest::proptest! {
    #[test]
    fn header_parsers_never_panic(s in ".{0,64}") {
        let _ = parse_content_range(&s);
        let _ = parse_retry_after(&s);
        let _ = resolve_location("http://a/b/c", &s);
        let _ = origin(&s);
        let _ = redact(&s);
    }
}
