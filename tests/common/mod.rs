//! Helpers shared by the integration tests: the binary under test, test data,
//! and third-party programs that must be present (never silently skipped).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `ringseed` binary built for this test run. Its DHT has no
/// bootstrap nodes: tests never contact the public routers (a test of the
/// DHT names its own, local ones).
pub fn ringseed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringseed"));
    cmd.env("RINGSEED_DHT_BOOTSTRAP", "none");
    cmd
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

/// Runs `ringseed create DATA -o TORRENT EXTRA...`, which must succeed;
/// returns its stdout.
pub fn create_torrent(data: &Path, torrent: &Path, extra: &[&str]) -> String {
    run_ok(
        ringseed()
            .arg("create")
            .arg(data)
            .arg("-o")
            .arg(torrent)
            .args(extra),
    )
}

/// Parses `ringseed info --json` output.
pub fn info_json(torrent: &Path) -> serde_json::Value {
    let out = run_ok(ringseed().arg("info").arg("--json").arg(torrent));
    serde_json::from_str(&out).expect("info --json prints JSON")
}

/// The data plane that in-process tests ask for: `RINGSEED_IO` (as the
/// `ringseed` processes they start read it), so `scripts/test` runs the
/// suites on both planes; `auto` when unset.
pub fn data_plane_under_test() -> ringseed_engine::io::plane::IoMode {
    std::env::var("RINGSEED_IO")
        .map(|v| v.parse().expect("RINGSEED_IO is auto, uring or epoll"))
        .unwrap_or_default()
}

/// Makes `cmd` run under a seccomp filter that fails `io_uring_setup`,
/// `io_uring_enter` and `io_uring_register` with EPERM, as Docker's default
/// profile (Docker 25 and later) does. Syscalls 425 to 427 are the io_uring
/// calls on every architecture.
pub fn deny_io_uring(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    const LOAD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        // seccomp_data.nr is at offset 0.
        insn(LOAD_NR, 0, 0, 0),
        insn(JGE, 0, 2, 425),
        insn(JGT, 1, 0, 427),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: runs in the child between fork and exec and only makes two
    // prctl calls (async-signal-safe) on data that lives in this closure.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Makes `cmd` run with at most `n` open files (RLIMIT_NOFILE, soft and
/// hard), as a seeder under a low `ulimit -n`.
pub fn limit_open_files(cmd: &mut Command, n: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec and only makes one
    // setrlimit call (async-signal-safe) on a struct it owns.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A `ringseed seed` process, stopped with SIGINT (by its PID) when dropped.
pub struct SeedProcess {
    child: Option<std::process::Child>,
    pub addr: std::net::SocketAddr,
    /// Everything it printed on stdout up to "listening on".
    pub banner: String,
    /// What it printed after that.
    rest: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl SeedProcess {
    /// Starts `ringseed seed ARGS --listen 127.0.0.1:0` and waits for its
    /// "listening on" line (the readiness signal).
    pub fn start(args: &[&dyn AsRef<std::ffi::OsStr>]) -> SeedProcess {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Like `start`, listening on `listen`.
    pub fn start_on(listen: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> SeedProcess {
        Self::start_from(ringseed(), listen, args)
    }

    /// Like `start_on`, from `cmd` (the `ringseed` binary, set up as the
    /// caller wants: a seccomp filter, its stderr to a file...).
    pub fn start_from(
        mut cmd: Command,
        listen: &str,
        args: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> SeedProcess {
        use std::io::BufRead;
        cmd.arg("seed").args(["--listen", listen]);
        for a in args {
            cmd.arg(a);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start ringseed seed");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = String::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("ringseed seed exited ({status}) before listening:\n{banner}");
            };
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        let rest = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&rest);
        let drain = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        SeedProcess {
            child: Some(child),
            addr,
            banner,
            rest,
            drain: Some(drain),
        }
    }

    /// Stops it with SIGINT; returns its exit status and what it printed
    /// after its banner.
    pub fn stop_with_output(mut self) -> (std::process::ExitStatus, String) {
        let drain = self.drain.take();
        let rest = std::sync::Arc::clone(&self.rest);
        let status = self.stop();
        if let Some(d) = drain {
            let _ = d.join();
        }
        let out = rest.lock().unwrap().clone();
        (status, out)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The magnet link it printed for its first torrent.
    pub fn magnet(&self) -> String {
        self.banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("magnet: "))
            .expect("a magnet line")
            .to_owned()
    }

    /// Hands the process over to the caller (it is no longer stopped on drop).
    pub fn into_child(mut self) -> std::process::Child {
        self.child.take().expect("child present until dropped")
    }

    /// Stops it with SIGINT and returns its exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        let mut child = self.into_child();
        interrupt(&child);
        child.wait().unwrap()
    }
}

fn interrupt(child: &std::process::Child) {
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

impl Drop for SeedProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(None) = child.try_wait() {
                interrupt(child);
                let _ = child.wait();
            }
        }
    }
}

/// sha256 of a file, with coreutils' `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_owned()
}

/// Runs tests/support/lt_leech.py in the background.
pub fn spawn_lt_leecher(
    source: &dyn AsRef<std::ffi::OsStr>,
    save_dir: &Path,
    peer: Option<std::net::SocketAddr>,
    bind: &str,
) -> std::process::Child {
    spawn_lt_leecher_with(source, save_dir, peer, bind, &[])
}

/// Like `spawn_lt_leecher`, with more lt_leech.py arguments.
pub fn spawn_lt_leecher_with(
    source: &dyn AsRef<std::ffi::OsStr>,
    save_dir: &Path,
    peer: Option<std::net::SocketAddr>,
    bind: &str,
    extra: &[&str],
) -> std::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_leech.py");
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(script)
        .arg(source)
        .arg(save_dir)
        .args(["--bind", bind, "--timeout", "240"])
        .args(extra);
    if let Some(p) = peer {
        cmd.arg("--peer").arg(p.to_string());
    }
    cmd.stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start lt_leech.py")
}

/// Waits for a leecher started by `spawn_lt_leecher`; panics with its
/// output unless it finished the download.
pub fn wait_leecher(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.starts_with("done "),
        "libtorrent leecher failed ({}): {stdout}",
        out.status
    );
    stdout
}

/// The `KEY=N` figures of the last line of `out` starting with `prefix`
/// (`encryption rc4=1 ...` from the libtorrent scripts, `connections:
/// plain=0 ...` from ringseed).
pub fn figures_of(out: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
        .collect()
}

/// A network namespace joined to this one by a veth pair: a test host with
/// its own address, for clients that refuse loopback peers (Transmission
/// treats 127.0.0.0/8 as a martian address). Deleted on drop. Needs root.
pub struct NetNs {
    pub name: String,
    /// Our side of the link.
    pub host_ip: String,
    /// The namespace's side.
    pub ns_ip: String,
}

impl NetNs {
    pub fn create() -> NetNs {
        // Unique per test process and per call: tests run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id();
        let name = format!("rs-test-{id}-{n}");
        let subnet = format!("10.231.{}", (id * 7 + n) % 250 + 1);
        let (host_if, ns_if) = (
            format!("rsh{}x{n}", id % 10_000),
            format!("rsn{}x{n}", id % 10_000),
        );
        let ns = NetNs {
            name: name.clone(),
            host_ip: format!("{subnet}.1"),
            ns_ip: format!("{subnet}.2"),
        };
        let ip = |args: &[&str]| {
            let out = run(Command::new("ip").args(args));
            assert!(
                out.status.success(),
                "cannot set up the test network namespace (`ip {}`): {}. \
                 This test needs root and iproute2 (`apt-get install iproute2`).",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        require_program("ip", "iproute2");
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A free port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// opentracker on loopback, whitelisting one info-hash; killed on drop.
pub struct OpenTracker {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OpenTracker {
    pub fn start(ip: &str, port: u16, info_hash_hex: &str) -> OpenTracker {
        require_program("opentracker", "opentracker");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("whitelist"), format!("{info_hash_hex}\n")).unwrap();
        let child = std::process::Command::new("opentracker")
            .args(["-i", ip, "-p", &port.to_string(), "-P", &port.to_string()])
            .arg("-d")
            .arg(dir.path())
            .args(["-w", "whitelist"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start opentracker");
        let tracker = OpenTracker { child, _dir: dir };
        // Ready when it accepts a connection.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "opentracker did not start listening"
            );
            std::thread::yield_now();
        }
        tracker
    }
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A `ringseed download` process with its output collected as it comes;
/// killed (SIGKILL, by PID) when dropped.
pub struct DownloadProcess {
    child: Option<std::process::Child>,
    /// Where it listens for peers.
    pub addr: std::net::SocketAddr,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
    into: &std::sync::Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    let sink = std::sync::Arc::clone(into);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl DownloadProcess {
    /// Starts `ringseed download SOURCE -o OUT --state STATE --listen
    /// 127.0.0.1:0 ARGS` and waits until it listens.
    pub fn start(
        source: &dyn AsRef<std::ffi::OsStr>,
        out: &Path,
        state: &Path,
        args: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> DownloadProcess {
        Self::start_on("127.0.0.1:0", source, out, state, args)
    }

    /// Like `start`, listening on `listen`.
    pub fn start_on(
        listen: &str,
        source: &dyn AsRef<std::ffi::OsStr>,
        out: &Path,
        state: &Path,
        args: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> DownloadProcess {
        let mut cmd = ringseed();
        cmd.arg("download")
            .arg(source)
            .arg("-o")
            .arg(out)
            .arg("--state")
            .arg(state)
            .args(["--listen", listen]);
        for a in args {
            cmd.arg(a);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ringseed download");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let drains = vec![
            collect(child.stdout.take().unwrap(), &stdout),
            collect(child.stderr.take().unwrap(), &stderr),
        ];
        let mut d = DownloadProcess {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            stdout,
            stderr,
            drains,
        };
        let line = d.wait_for_line("listening on ", std::time::Duration::from_secs(120));
        d.addr = line["listening on ".len()..].trim().parse().unwrap();
        d
    }

    /// Waits for a stdout line starting with `prefix`; returns it. Panics
    /// with the output if the process exits or `timeout` passes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.starts_with(prefix))
            {
                return line.to_owned();
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() {
                // Its pipes are closed: collect the rest of its output.
                for d in self.drains.drain(..) {
                    let _ = d.join();
                }
            }
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!(
                    "ringseed download never printed {prefix:?} ({exited:?}):\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.lock().unwrap(),
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for it to exit (at most `timeout`, then kills it); returns its
    /// status, stdout and stderr.
    pub fn wait(
        mut self,
        timeout: std::time::Duration,
    ) -> (std::process::ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: signalling our own child by its PID.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                break child.wait().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }

    /// Sends `signal` (SIGINT to stop it cleanly, SIGKILL to crash it).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }
}

impl Drop for DownloadProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Runs a download to its end; panics with the output unless it exits 0.
/// Returns its stdout.
pub fn download_ok(
    source: &dyn AsRef<std::ffi::OsStr>,
    out: &Path,
    state: &Path,
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> String {
    let d = DownloadProcess::start(source, out, state, args);
    let (status, stdout, stderr) = d.wait(std::time::Duration::from_secs(240));
    assert!(
        status.success(),
        "ringseed download failed ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The `summary:` line of a download's stdout, as key=value pairs.
pub fn summary(stdout: &str) -> std::collections::HashMap<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A summary figure as a number.
pub fn summary_u64(stdout: &str, key: &str) -> u64 {
    summary(stdout)[key].parse().unwrap()
}

/// Spawns `cmd` with its stdout piped and returns once it prints a line
/// starting with `prefix` (its readiness signal); panics if it exits first.
/// The rest of its stdout is drained so it never blocks on a full pipe.
pub fn spawn_until_line(cmd: &mut Command, prefix: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(prefix) => break,
            Some(Ok(line)) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            _ => {
                let status = child.wait().unwrap();
                panic!("{cmd:?} exited ({status}) before printing {prefix:?}:\n{seen}");
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// tests/support/lying_seed.py serving `torrent` from `data` on `addr`,
/// once it listens. `extra` goes on its command line.
pub fn lying_seed(torrent: &Path, data: &Path, addr: &str, extra: &[&str]) -> std::process::Child {
    require_program("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lying_seed.py");
    spawn_until_line(
        Command::new("python3")
            .arg(script)
            .arg(torrent)
            .arg(data)
            .args(["--listen", addr])
            .args(extra)
            .stderr(std::process::Stdio::null()),
        "ready",
    )
}

/// Like [`lying_seed`], its stdout (ending with `served N corrupt M` once
/// it is sent SIGTERM) going to the file `report`.
pub fn lying_seed_reporting(
    torrent: &Path,
    data: &Path,
    addr: &str,
    report: &Path,
) -> std::process::Child {
    require_program("python3", "python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lying_seed.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(torrent)
        .arg(data)
        .args(["--listen", addr])
        .stdout(std::fs::File::create(report).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lying_seed.py");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(report)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "lying_seed.py on {addr} never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// Polls the tracker's scrape (with ringseed's own client) until it counts
/// one seed: the readiness signal that a seeder's announce went through.
pub fn wait_until_seeded(
    url: &str,
    hash: [u8; 20],
) -> ringseed_engine::proto::tracker::ScrapeStats {
    use ringseed_engine::io::announce::{ClientConfig, TrackerClient};
    use ringseed_engine::InfoHash;
    let config = ClientConfig {
        udp_timeout_scale: 0.1,
        ..ClientConfig::default()
    };
    let mut client = TrackerClient::new(config).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(stats) = client.scrape(url, &[InfoHash(hash)]) {
            if let Some(s) = stats.get(&InfoHash(hash)).filter(|s| s.complete >= 1) {
                return *s;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no seed ever showed up on {url}"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(200));
    }
}

/// A file, its torrent, and where both live (a temporary directory):
/// `seed/payload.iso` and `payload.torrent`.
pub struct Payload {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub torrent: PathBuf,
}

impl Payload {
    /// `len` bytes made from `seed`, in a torrent of `piece_size` pieces
    /// (made with `ringseed create` and `extra_create_args`).
    pub fn new(len: usize, seed: u64, piece_size: &str, extra_create_args: &[&str]) -> Payload {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("seed/payload.iso");
        write_data(&data, len, seed);
        let torrent = dir.path().join("payload.torrent");
        let args = [&["--piece-size", piece_size][..], extra_create_args].concat();
        create_torrent(&data, &torrent, &args);
        Payload { dir, data, torrent }
    }

    /// The directory that holds the data.
    pub fn seed_dir(&self) -> PathBuf {
        self.data.parent().unwrap().to_path_buf()
    }

    /// Checks that `dir` holds a copy of the data (sha256).
    pub fn assert_downloaded(&self, dir: &Path) {
        assert_eq!(
            sha256(&dir.join("payload.iso")),
            sha256(&self.data),
            "sha256 of the download"
        );
    }
}

/// `ringseed dht-swarm` of 100 nodes on 127.0.1.x, stopped (by its PID)
/// when dropped; its stdout (the `swarm:` summary once stopped) in `log`.
pub struct Swarm {
    child: std::process::Child,
    log: std::path::PathBuf,
    /// The first node, to bootstrap from.
    pub bootstrap: String,
}

impl Swarm {
    /// Starts it, its log under `dir`.
    pub fn start(dir: &Path) -> Swarm {
        let port = free_port();
        let log = dir.join("swarm.out");
        let child = ringseed()
            .args(["dht-swarm", "--nodes", "100", "--first-ip", "127.0.1.1"])
            .args(["--port", &port.to_string()])
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ringseed dht-swarm");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the swarm never got ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Swarm {
            child,
            log,
            bootstrap: format!("127.0.1.1:{port}"),
        }
    }

    /// Waits until the nodes' tables hold `entries` entries in all (the
    /// swarm prints its figures every second): the network has formed.
    pub fn wait_settled(&self, entries: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let known = log
                .lines()
                .rev()
                .filter_map(|l| l.strip_prefix("stats routing_nodes="))
                .find_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if known >= entries {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the swarm's tables hold {known} entries, not {entries}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Stops it; its summary line.
    pub fn stop(mut self) -> String {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert!(self.child.wait().unwrap().success());
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.pem`) and a leaf certificate for 127.0.0.1 signed by it
/// (`leaf.pem`, `leaf.key`), made with openssl in `dir`.
pub fn make_test_ca(dir: &Path) {
    require_program("openssl", "openssl");
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(dir).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ringseed test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

/// A child process stopped with SIGTERM (by its PID) when dropped.
pub struct Stopper(pub std::process::Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// tests/support/lt_seed.py seeding `torrent` from `seed_dir` on `addr`
/// with lt_seed.py's `--encryption` policy, once it is seeding.
pub fn spawn_lt_seeder(torrent: &Path, seed_dir: &Path, addr: &str, encryption: &str) -> Stopper {
    require_libtorrent();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_seed.py");
    Stopper(spawn_until_line(
        Command::new(SYSTEM_PYTHON)
            .arg(script)
            .arg(torrent)
            .arg(seed_dir)
            .args(["--listen", addr, "--encryption", encryption]),
        "ready",
    ))
}
