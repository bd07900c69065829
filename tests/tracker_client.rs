//! The tracker client over HTTPS, against a local tracker with a
//! certificate from a test CA that the client is told to trust (and only
//! then).

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use ringseed_engine::io::announce::{AnnounceError, ClientConfig, TrackerClient};
use ringseed_engine::proto::tracker::{Announce, Event};
use ringseed_engine::InfoHash;

#[test]
fn https_announce_to_a_tracker_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_test_ca(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/https_tracker.py");
    let mut server = KillOnDrop(
        Command::new(SYSTEM_PYTHON)
            .arg(script)
            .arg(dir.path().join("leaf.pem"))
            .arg(dir.path().join("leaf.key"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the HTTPS tracker"),
    );
    let mut lines = std::io::BufReader::new(server.0.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let port: u16 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    let url = format!("https://127.0.0.1:{port}/announce");
    let announce = Announce {
        info_hash: InfoHash([0xab; 20]),
        peer_id: *b"-RS0100-httpstest000",
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: 0,
        event: Event::Started,
        numwant: Some(10),
        key: 1,
        tracker_id: None,
    };

    // Without the CA the certificate is refused.
    let mut untrusting = TrackerClient::new(ClientConfig::default()).unwrap();
    let err = untrusting.announce(&url, &announce).unwrap_err();
    assert!(matches!(err, AnnounceError::Http { .. }), "{err}");

    let config = ClientConfig {
        roots_pem: Some(std::fs::read(dir.path().join("ca.pem")).unwrap()),
        ..ClientConfig::default()
    };
    let mut client = TrackerClient::new(config).unwrap();
    let reply = client.announce(&url, &announce).unwrap();
    assert_eq!(reply.interval, 900);
    assert_eq!(reply.peers, ["127.0.0.1:6881".parse().unwrap()]);
    assert_eq!(reply.warning.as_deref(), Some("hello"));
    let seen = lines.next().unwrap().unwrap();
    assert!(seen.starts_with("/announce?info_hash=%AB%AB"), "{seen}");
    assert!(
        seen.contains("&event=started") && seen.contains("&left=0"),
        "{seen}"
    );
}

/// Ends a child process (by its PID) when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
