//! ringseed and libtorrent finding each other through the DHT alone (BEP
//! 5): no tracker, no peer given, magnet links with only `xt`, and an
//! Arch-style torrent (mktorrent, no announce URL). The DHT is made of local
//! nodes only: each side's one bootstrap node is the other (or a ringseed
//! node both know), and libtorrent's filters of local addresses are off.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// tests/support/lt_dht.py `args`, once it printed `prefix`.
fn lt_dht(args: &[&dyn AsRef<std::ffi::OsStr>], prefix: &str) -> std::process::Child {
    require_libtorrent();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_dht.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script);
    for a in args {
        cmd.arg(a);
    }
    spawn_until_line(&mut cmd, prefix)
}

/// libtorrent downloads `source` into `out`, its one DHT node `bootstrap`.
fn libtorrent_fetches(source: &str, out: &Path, bootstrap: &str) {
    let mut leech = lt_dht(
        &[&"leech", &source, &out, &"--bootstrap", &bootstrap],
        "done",
    );
    let _ = leech.wait();
}

/// The magnet link of `torrent` with its info-hash alone (no `tr`, no
/// `x.pe`, no name), as Arch Linux publishes them.
fn bare_magnet(torrent: &Path) -> String {
    let hash = info_json(torrent)["info_hash"]
        .as_str()
        .expect("an info-hash")
        .to_owned();
    format!("magnet:?xt=urn:btih:{hash}")
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
#[ignore = "interop: needs python3-libtorrent (scripts/test runs it)"]
fn libtorrent_finds_a_ringseed_seed_through_the_dht_alone() {
    let p = Payload::new((6 << 20) + 333, 51, "256K", &[]);
    let seeder = SeedProcess::start(&[&p.torrent, &"--data", &p.seed_dir(), &"--no-announce"]);
    // ringseed's DHT listens on its BitTorrent port (UDP).
    let bootstrap = format!("127.0.0.1:{}", seeder.addr.port());
    let out = p.dir.path().join("lt");
    libtorrent_fetches(&bare_magnet(&p.torrent), &out, &bootstrap);
    p.assert_downloaded(&out);
    assert!(seeder.stop().success());
}

/// A ringseed node both sides bootstrap from (it seeds something else):
/// libtorrent's seed announces there, ringseed's download looks there.
fn rendezvous() -> (Payload, SeedProcess, String) {
    let other = Payload::new(1 << 20, 52, "256K", &[]);
    let node = SeedProcess::start(&[
        &other.torrent,
        &"--data",
        &other.seed_dir(),
        &"--no-announce",
    ]);
    let addr = format!("127.0.0.1:{}", node.addr.port());
    (other, node, addr)
}

#[test]
#[ignore = "interop: needs python3-libtorrent (scripts/test runs it)"]
fn ringseed_downloads_a_bare_magnet_link_from_libtorrent_through_the_dht() {
    let p = Payload::new((6 << 20) + 777, 53, "256K", &[]);
    let (_other, node, bootstrap) = rendezvous();
    let seed = lt_dht(
        &[
            &"seed",
            &p.torrent,
            &p.seed_dir(),
            &"--bootstrap",
            &bootstrap,
        ],
        "ready",
    );
    let out = p.dir.path().join("out");
    let stdout = download_ok(
        &bare_magnet(&p.torrent),
        &out,
        &p.dir.path().join("state"),
        &[&"--no-announce", &"--dht-bootstrap", &bootstrap],
    );
    assert!(stdout.contains("complete:"), "{stdout}");
    p.assert_downloaded(&out);
    stop(seed);
    assert!(node.stop().success());
}

#[test]
#[ignore = "interop: needs python3-libtorrent and mktorrent (scripts/test runs it)"]
fn an_arch_style_torrent_without_trackers_downloads_through_the_dht() {
    require_program("mktorrent", "mktorrent");
    let p = Payload::new((4 << 20) + 99, 54, "256K", &[]);
    // As Arch Linux makes its ISO torrents: no announce URL, a url-list of
    // mirrors (none of them reachable here: the DHT must do it alone).
    let arch = p.dir.path().join("arch.torrent");
    run_ok(
        Command::new("mktorrent")
            .args(["-l", "18", "-w", "http://127.0.0.1:9/iso/payload.iso"])
            .arg("-o")
            .arg(&arch)
            .arg(&p.data),
    );
    assert!(info_json(&arch)["trackers"]
        .as_array()
        .is_none_or(|t| t.is_empty()));
    let (_other, node, bootstrap) = rendezvous();
    let seed = lt_dht(
        &[&"seed", &arch, &p.seed_dir(), &"--bootstrap", &bootstrap],
        "ready",
    );
    let out = p.dir.path().join("out");
    download_ok(
        &arch,
        &out,
        &p.dir.path().join("state"),
        &[&"--dht-bootstrap", &bootstrap],
    );
    p.assert_downloaded(&out);
    stop(seed);
    assert!(node.stop().success());
}

/// The node id is kept across restarts (the routing table is saved in the
/// state directory), so the network goes on knowing us.
#[test]
fn the_dht_node_id_survives_a_restart() {
    let p = Payload::new(1 << 20, 55, "256K", &[]);
    let state = p.dir.path().join("state");
    let args: [&dyn AsRef<std::ffi::OsStr>; 6] = [
        &p.torrent,
        &"--data",
        &p.seed_dir(),
        &"--no-announce",
        &"--state",
        &state,
    ];
    let id = || {
        let saved = std::fs::read(state.join("dht.dat")).expect("dht.dat saved on stop");
        assert!(saved.starts_with(b"d2:id20:"), "{saved:?}");
        saved[8..28].to_vec()
    };
    assert!(SeedProcess::start(&args).stop().success());
    let first = id();
    assert!(SeedProcess::start(&args).stop().success());
    assert_eq!(id(), first);
}

/// Two ringseed processes find each other through the DHT alone: the
/// download knows the seeder only as a DHT node (its bootstrap node), and
/// the bare magnet link names no peer.
#[test]
fn two_ringseed_processes_find_each_other_through_the_dht_alone() {
    let p = Payload::new((3 << 20) + 5, 56, "256K", &[]);
    let seeder = SeedProcess::start(&[&p.torrent, &"--data", &p.seed_dir(), &"--no-announce"]);
    let bootstrap = format!("127.0.0.1:{}", seeder.addr.port());
    let out = p.dir.path().join("out");
    let stdout = download_ok(
        &bare_magnet(&p.torrent),
        &out,
        &p.dir.path().join("state"),
        &[&"--no-announce", &"--dht-bootstrap", &bootstrap],
    );
    assert!(stdout.contains("complete:"), "{stdout}");
    p.assert_downloaded(&out);
    assert!(seeder.stop().success());
}

/// A DHT of 100 ringseed nodes (one process) with ringseed and libtorrent
/// peers bootstrapped from one of its nodes: libtorrent downloads a
/// trackerless torrent seeded by ringseed from its bare magnet link, so
/// does a second ringseed process, ringseed downloads one seeded by
/// libtorrent the same way, and the private torrent ringseed seeds beside
/// them is stored by no node.
#[test]
#[ignore = "interop: needs python3-libtorrent (scripts/test runs it)"]
fn a_hundred_node_local_dht_carries_ringseed_and_libtorrent_swarms() {
    let dir = tempfile::tempdir().unwrap();
    let swarm = Swarm::start(dir.path());
    let bootstrap = swarm.bootstrap.clone();
    // The network forms first: 100 nodes knowing 10 others each.
    swarm.wait_settled(1000);

    let public = Payload::new((4 << 20) + 11, 57, "256K", &[]);
    let private = Payload::new(1 << 20, 58, "256K", &["--private"]);
    let seed_on_the_dht = |p: &Payload| {
        SeedProcess::start(&[
            &p.torrent,
            &"--data",
            &p.seed_dir(),
            &"--no-announce",
            &"--dht-bootstrap",
            &bootstrap,
        ])
    };
    let seeder = seed_on_the_dht(&public);
    let private_seeder = seed_on_the_dht(&private);
    let out = public.dir.path().join("lt");
    libtorrent_fetches(&bare_magnet(&public.torrent), &out, &bootstrap);
    public.assert_downloaded(&out);
    let out = public.dir.path().join("ringseed");
    download_ok(
        &bare_magnet(&public.torrent),
        &out,
        &public.dir.path().join("state"),
        &[&"--no-announce", &"--dht-bootstrap", &bootstrap],
    );
    public.assert_downloaded(&out);

    let theirs = Payload::new((3 << 20) + 22, 59, "256K", &[]);
    let lt_seed = lt_dht(
        &[
            &"seed",
            &theirs.torrent,
            &theirs.seed_dir(),
            &"--bootstrap",
            &bootstrap,
        ],
        "ready",
    );
    let out = theirs.dir.path().join("out");
    download_ok(
        &bare_magnet(&theirs.torrent),
        &out,
        &theirs.dir.path().join("state"),
        &[&"--no-announce", &"--dht-bootstrap", &bootstrap],
    );
    theirs.assert_downloaded(&out);
    stop(lt_seed);
    assert!(seeder.stop().success());
    assert!(private_seeder.stop().success());

    let summary = swarm.stop();
    let hash = |t: &Path| info_json(t)["info_hash"].as_str().unwrap().to_owned();
    assert!(summary.contains(&hash(&public.torrent)), "{summary}");
    assert!(!summary.contains(&hash(&private.torrent)), "{summary}");
}

/// BEP 5: a trackerless torrent's `nodes` key is a way into the DHT. The
/// download has no bootstrap node and no peer: only the seeder's node,
/// named in the torrent.
#[test]
fn a_torrents_nodes_key_is_enough_to_join_the_dht() {
    let p = Payload::new((2 << 20) + 9, 60, "256K", &[]);
    let seeder = SeedProcess::start(&[&p.torrent, &"--data", &p.seed_dir(), &"--no-announce"]);
    // `nodes` sorts after every key `ringseed create` writes: appended last
    // in the root dictionary (the info-hash does not change).
    let mut bytes = std::fs::read(&p.torrent).unwrap();
    assert_eq!(bytes.pop(), Some(b'e'));
    bytes.extend_from_slice(format!("5:nodesll9:127.0.0.1i{}eeee", seeder.addr.port()).as_bytes());
    let with_nodes = p.dir.path().join("with-nodes.torrent");
    std::fs::write(&with_nodes, &bytes).unwrap();
    let out = p.dir.path().join("out");
    download_ok(
        &with_nodes,
        &out,
        &p.dir.path().join("state"),
        &[&"--no-announce"],
    );
    p.assert_downloaded(&out);
    assert!(seeder.stop().success());
}
