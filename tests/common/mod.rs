//! Helpers shared by the integration tests: the binary under test, test data,
//! and third-party programs that must be present (never silently skipped).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `ringseed` binary built for this test run.
pub fn ringseed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringseed"))
}

/// Runs a command and returns its output, panicking with its stderr if it
/// could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Fails the test, with the package to install, unless `program` is on PATH.
pub fn require_program(program: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this interop test needs `{program}`: install it with `apt-get install {debian_package}` \
         (scripts/test does this on Debian/Ubuntu)"
    );
}

/// Debian's python3, which sees python3-libtorrent (another python3 earlier on
/// PATH may not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Fails the test unless python3-libtorrent is importable.
pub fn require_libtorrent() {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this interop test needs libtorrent-rasterbar's Python bindings: \
         `apt-get install python3-libtorrent` (scripts/test does this on Debian/Ubuntu)"
    );
}

/// Runs tests/support/lt_tool.py with `args`; returns its stdout.
pub fn lt_tool(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_tool.py");
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(script);
    for a in args {
        cmd.arg(a);
    }
    run_ok(&mut cmd)
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift from
/// `seed`), so every run tests the same bytes without shipping them.
pub fn write_data(path: &Path, len: usize, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// A directory tree with files of awkward sizes (empty, smaller than a
/// block, not a multiple of any piece size) and nested directories.
pub fn write_tree(root: &Path) -> PathBuf {
    let top = root.join("tree");
    write_data(&top.join("a.bin"), 1_234_567, 1);
    write_data(&top.join("b/c.bin"), 16_383, 2);
    write_data(&top.join("b/d/e.bin"), 3_000_001, 3);
    write_data(&top.join("empty"), 0, 4);
    write_data(&top.join("z.txt"), 17, 5);
    top
}

/// Parses `ringseed info --json` output.
pub fn info_json(torrent: &Path) -> serde_json::Value {
    let out = run_ok(ringseed().arg("info").arg("--json").arg(torrent));
    serde_json::from_str(&out).expect("info --json prints JSON")
}
