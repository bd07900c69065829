//! `ringseed download` from web seeds (BEP 19): nginx (Debian's package)
//! serving a file and a multi-file directory over HTTP and HTTPS (a test CA
//! the download is told to trust), alone and beside a libtorrent seeder,
//! with a mirror that lies, one that ignores ranges, a redirect and a 404.
//! Every download is checked by sha256.
//!
//! They need nginx, mktorrent and python3-libtorrent; `cargo test` skips
//! them, `scripts/test` (and CI) runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PIECE: usize = 64 << 10;

/// Local mirrors: one nginx with a server per behaviour, on free ports.
struct Mirrors {
    // Fields drop in order: nginx stops before its directory goes.
    _nginx: Stopper,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of each server.
    good: String,
    tls: String,
    no_ranges: String,
    redirect: String,
    liar: String,
    partial: String,
    slow: String,
    /// 2 KiB/s: too slow to hold a run.
    crawl: String,
}

impl Mirrors {
    /// Mirrors of the files under `good/` (written by the caller through
    /// `root()` before `start`), with `bad/` a corrupted copy and
    /// `partial/` a copy missing one file.
    fn start(dir: tempfile::TempDir) -> Mirrors {
        require_program("nginx", "nginx");
        make_test_ca(dir.path());
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log stderr warn;
user root root;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; keepalive_requests 10000; keepalive_timeout 60s;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  types {{ }} default_type application/octet-stream;
  server {{ listen 127.0.0.1:{}; root {d}/good; }}
  server {{ listen 127.0.0.1:{} ssl; root {d}/good;
    ssl_certificate {d}/leaf.pem; ssl_certificate_key {d}/leaf.key; }}
  server {{ listen 127.0.0.1:{}; root {d}/good; max_ranges 0; }}
  server {{ listen 127.0.0.1:{}; return 307 http://127.0.0.1:{}$request_uri; }}
  server {{ listen 127.0.0.1:{}; root {d}/bad; }}
  server {{ listen 127.0.0.1:{}; root {d}/partial; }}
  server {{ listen 127.0.0.1:{}; root {d}/good; limit_rate 512k; }}
  server {{ listen 127.0.0.1:{}; root {d}/good; limit_rate 2k; }}
}}
",
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            ports[0],
            ports[4],
            ports[5],
            ports[6],
            ports[7]
        );
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = Stopper(
            Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .args(["-e", "stderr"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start nginx"),
        );
        for port in &ports {
            wait_for_port(*port);
        }
        let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
        Mirrors {
            good: url(0),
            tls: format!("https://127.0.0.1:{}", ports[1]),
            no_ranges: url(2),
            redirect: url(3),
            liar: url(4),
            partial: url(5),
            slow: url(6),
            crawl: url(7),
            _nginx: nginx,
            dir,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `ringseed download TORRENT` with no tracker and no DHT (web seeds and
    /// `args` only), which must succeed and produce the files of `data`
    /// (a file or directory under `good/pub`); returns its stdout.
    fn download(&self, torrent: &Path, data: &str, args: &[&str]) -> String {
        let out = tempfile::tempdir().unwrap();
        let ca = self.ca();
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"--no-announce", &"--no-dht", &"--web-seed-ca", &ca];
        all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        let state = out.path().join("state");
        let stdout = download_ok(&torrent, &out.path().join("out"), &state, &all);
        let source = self.path("good/pub").join(data);
        assert_same_tree(&source, &out.path().join("out").join(data));
        stdout
    }
}

/// Waits until something accepts on 127.0.0.1:`port`.
fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on port {port}");
}

/// Every file under `want` has the same sha256 under `got`.
fn assert_same_tree(want: &Path, got: &Path) {
    if want.is_file() {
        assert_eq!(sha256(got), sha256(want), "sha256 of {}", got.display());
        return;
    }
    for entry in std::fs::read_dir(want).unwrap() {
        let entry = entry.unwrap();
        assert_same_tree(&entry.path(), &got.join(entry.file_name()));
    }
}

/// The `web seed:` line of `url` in a download's stdout, as key=value
/// pairs (`state` unquoted).
fn web_seed(stdout: &str, url: &str) -> std::collections::HashMap<String, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("web seed: {url} ")))
        .unwrap_or_else(|| panic!("no web seed line for {url} in:\n{stdout}"));
    let (state, rest) = line
        .strip_prefix("state=\"")
        .and_then(|l| l.split_once("\" "))
        .unwrap_or_else(|| panic!("no state in {line}"));
    let mut fields: std::collections::HashMap<String, String> = rest
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    fields.insert("state".into(), state.to_owned());
    fields
}

fn number(fields: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    fields[key].parse().unwrap()
}

/// The count of error `cause` in a web seed line's `errors=` field.
fn errors(fields: &std::collections::HashMap<String, String>, cause: &str) -> u64 {
    fields["errors"]
        .split(',')
        .filter_map(|e| e.split_once(':'))
        .find(|(k, _)| *k == cause)
        .map_or(0, |(_, n)| n.parse().unwrap())
}

/// Mirrors of one file, `good/pub/x.iso` (`len` bytes), with the liar's copy
/// corrupted in every fourth piece.
fn single_file_mirrors(len: usize) -> Mirrors {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("good/pub/x.iso");
    write_data(&iso, len, 61);
    let mut bad = std::fs::read(&iso).unwrap();
    for piece in (1..len / PIECE).step_by(4) {
        bad[piece * PIECE + 123] ^= 0xff;
    }
    std::fs::create_dir_all(dir.path().join("bad/pub")).unwrap();
    std::fs::write(dir.path().join("bad/pub/x.iso"), bad).unwrap();
    Mirrors::start(dir)
}

/// A torrent of `good/pub/DATA` with `web_seeds`, made by mktorrent with no
/// announce URL (as Arch Linux publishes them).
fn mktorrent(m: &Mirrors, data: &str, web_seeds: &[String]) -> PathBuf {
    require_program("mktorrent", "mktorrent");
    let torrent = m.path(&format!("{}.torrent", data.replace('/', "_")));
    let mut cmd = Command::new("mktorrent");
    cmd.args(["-l", "16"]);
    for url in web_seeds {
        cmd.arg("-w").arg(url);
    }
    run_ok(
        cmd.arg("-o")
            .arg(&torrent)
            .arg(m.path("good/pub").join(data)),
    );
    torrent
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn an_arch_style_torrent_downloads_from_two_mirrors_over_http_and_https() {
    let m = single_file_mirrors(6 << 20);
    let seeds = [format!("{}/pub/", m.good), format!("{}/pub/x.iso", m.tls)];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let info = info_json(&torrent);
    assert_eq!(info["trackers"], serde_json::json!([]));
    let out = m.download(&torrent, "x.iso", &[]);
    for url in &seeds {
        let seed = web_seed(&out, url);
        assert_eq!(seed["state"], "active", "{url}: {seed:?}");
        assert!(number(&seed, "bytes") > 0, "{url} served nothing: {seed:?}");
    }
    assert_eq!(summary_u64(&out, "received"), 6 << 20);
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn a_single_url_list_string_and_https_alone() {
    // One `-w`: mktorrent writes `url-list` as a string, not a list.
    let m = single_file_mirrors(3 << 20);
    let seeds = [format!("{}/pub/", m.tls)];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let bytes = std::fs::read(&torrent).unwrap();
    let key = bytes.windows(10).position(|w| w == b"8:url-list").unwrap();
    assert!(bytes[key + 10].is_ascii_digit(), "url-list is not a string");
    let out = m.download(&torrent, "x.iso", &[]);
    assert!(number(&web_seed(&out, &seeds[0]), "bytes") >= 3 << 20);
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn a_lying_mirror_is_dropped_and_the_download_is_still_correct() {
    let m = single_file_mirrors(8 << 20);
    let liar = format!("{}/pub/", m.liar);
    let seeds = [format!("{}/pub/", m.good), liar.clone()];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let out = m.download(&torrent, "x.iso", &[]);
    let bad = web_seed(&out, &liar);
    assert_eq!(bad["state"], "dropped (bad data)", "{bad:?}");
    assert!(errors(&bad, "hash_fail") >= 2, "{bad:?}");
    assert!(summary_u64(&out, "hash_failures") >= 2);
    assert_eq!(
        summary(&out)["banned"],
        "-",
        "no peer is blamed for a mirror"
    );
    assert_eq!(web_seed(&out, &seeds[0])["state"], "active");
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn a_crawling_mirror_gives_up_its_run_to_the_others() {
    // 2 KiB/s never trips the per-read timeout; the slow-run rule must.
    let m = single_file_mirrors(4 << 20);
    let crawl = format!("{}/pub/", m.crawl);
    let seeds = [crawl.clone(), format!("{}/pub/", m.good)];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let out = m.download(&torrent, "x.iso", &[]);
    let slow = web_seed(&out, &crawl);
    assert!(errors(&slow, "slow") >= 1, "{slow:?}");
    assert!(number(&web_seed(&out, &seeds[1]), "bytes") >= 3 << 20);
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn a_mirror_that_ignores_ranges_still_serves_the_whole_file() {
    let m = single_file_mirrors(4 << 20);
    let seeds = [format!("{}/pub/", m.no_ranges)];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let out = m.download(&torrent, "x.iso", &["--web-seed-connections", "1"]);
    let seed = web_seed(&out, &seeds[0]);
    assert_eq!(seed["ignores_ranges"], "yes", "{seed:?}");
    assert_eq!(seed["state"], "active");
}

/// Mirrors of a directory `good/pub/set` with names that need escaping,
/// and `partial/` lacking one of its files.
fn multi_file_mirrors() -> Mirrors {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("good/pub/set");
    write_data(&set.join("a b+c.bin"), 1_000_001, 71);
    write_data(&set.join("sub dir/100% #1?.txt"), 70_000, 72);
    write_data(&set.join("ünïcode/ß.dat"), 2_500_000, 73);
    write_data(&set.join("tiny"), 17, 74);
    let partial = dir.path().join("partial/pub/set");
    std::fs::create_dir_all(partial.join("sub dir")).unwrap();
    std::fs::create_dir_all(partial.join("ünïcode")).unwrap();
    for f in ["a b+c.bin", "sub dir/100% #1?.txt", "tiny"] {
        std::fs::copy(set.join(f), partial.join(f)).unwrap();
    }
    Mirrors::start(dir)
}

#[test]
#[ignore = "needs nginx and mktorrent: run by scripts/test"]
fn a_multi_file_torrent_through_a_redirect_and_a_mirror_missing_one_file() {
    let m = multi_file_mirrors();
    // No trailing slash on the redirecting base: one is added.
    let seeds = [format!("{}/pub", m.redirect), format!("{}/pub/", m.partial)];
    let torrent = mktorrent(&m, "set", &seeds);
    let out = m.download(&torrent, "set", &[]);
    let redirected = web_seed(&out, &seeds[0]);
    assert!(number(&redirected, "bytes") > 0, "{redirected:?}");
    let partial = web_seed(&out, &seeds[1]);
    assert_eq!(partial["files_dropped"], "1", "{partial:?}");
    assert!(errors(&partial, "http_404") >= 1, "{partial:?}");
    assert_eq!(partial["state"], "active");
}

#[test]
#[ignore = "needs nginx and python3-libtorrent: run by scripts/test"]
fn pad_files_are_never_fetched() {
    let m = multi_file_mirrors();
    let torrent = m.path("padded.torrent");
    let seed = format!("{}/pub/", m.good);
    lt_tool(&[&"create-padded", &m.path("good/pub/set"), &torrent, &seed]);
    let files = info_json(&torrent)["files"].as_array().unwrap().clone();
    assert!(
        files.iter().any(|f| f["pad"] == true),
        "no pad file: {files:?}"
    );
    let out = m.download(&torrent, "set", &[]);
    let seed = web_seed(&out, &seed);
    assert_eq!(seed["errors"], "-", "a pad file was asked for: {seed:?}");
}

#[test]
#[ignore = "needs nginx and python3-libtorrent: run by scripts/test"]
fn web_seeds_and_a_libtorrent_seeder_together() {
    let m = single_file_mirrors(16 << 20);
    // The slow mirror (512 KB/s per connection) so that the peer matters too;
    // the seeder on 127.0.0.2, so a mirror's fault could not ban it unseen.
    let seeds = [format!("{}/pub/", m.slow)];
    let torrent = mktorrent(&m, "x.iso", &seeds);
    let addr = format!("127.0.0.2:{}", free_port());
    let _lt = spawn_lt_seeder(&torrent, &m.path("good/pub"), &addr, "default");
    let out = m.download(&torrent, "x.iso", &["--peer", &addr]);
    let from_mirror = number(&web_seed(&out, &seeds[0]), "bytes");
    let received = summary_u64(&out, "received");
    assert!(from_mirror > 0, "the mirror served nothing:\n{out}");
    assert!(received > from_mirror, "the peer served nothing:\n{out}");
    assert_eq!(summary(&out)["banned"], "-");
}
