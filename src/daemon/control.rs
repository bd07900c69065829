//! The control socket of `ringseed ctl` and the metrics endpoint: both
//! turn a request into a [`Query`] for the daemon's main loop and write
//! back its answer, so they never touch the catalog themselves.
//!
//! The control protocol is one JSON object per line each way. Who may use
//! it is decided by the socket file's mode (`control_socket_mode`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::status::Status;

/// A command of `ringseed ctl`: parsed from its command line, sent to the
/// daemon as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Show every torrent's state and the daemon's figures.
    Status {
        /// Print the full status as JSON (for the client only).
        #[arg(long)]
        #[serde(skip)]
        json: bool,
    },
    /// Seed a .torrent (data beside it or in --data), or make a torrent of
    /// a file or directory and seed it; kept across restarts.
    Add {
        /// The .torrent, file or directory.
        path: PathBuf,
        /// Where the .torrent's data is.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Stop seeding a torrent (by info-hash, name or source path); kept
    /// across restarts until it is added again.
    Remove {
        /// Info-hash, name or source path.
        target: String,
    },
    /// Re-read the configuration file (as SIGHUP does).
    Reload,
    /// Change the log level until the next reload (e.g. `debug`, or
    /// `info,ringseed::daemon=debug`).
    LogLevel {
        /// A level or directives.
        level: String,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the command worked.
    pub ok: bool,
    /// What happened, or why not.
    pub message: String,
    /// For `status`.
    pub status: Option<Status>,
}

/// What the servers ask the main loop.
pub enum Query {
    /// A control command.
    Control(Request),
    /// The figures (for `/metrics` and `/status`).
    Status,
}

/// Sends a query to the main loop and waits for the answer.
pub type Ask = Box<dyn Fn(Query) -> Option<Reply> + Send + Sync>;

/// Makes an [`Ask`] that hands queries to the main loop through `events`.
pub fn asker<E: Send + 'static>(
    events: mpsc::Sender<E>,
    wrap: fn(Query, mpsc::Sender<Reply>) -> E,
) -> Ask {
    let events = std::sync::Mutex::new(events);
    Box::new(move |query| {
        let (tx, rx) = mpsc::channel();
        let sent = events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(wrap(query, tx));
        sent.ok()?;
        rx.recv_timeout(Duration::from_secs(30)).ok()
    })
}

/// Binds the control socket at `path` with file mode `mode`; a stale socket
/// left by a killed daemon is replaced, a live one is an error.
pub fn bind_control(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: is another ringseed daemon running?",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Created with its final mode: no moment where the umask's applies.
    // SAFETY: umask only changes this process's file-creation mask, and it
    // is restored at once; the daemon calls this before starting any other
    // thread, so no other file is created with this mask.
    let old = unsafe { libc::umask(!mode & 0o777) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener =
        bound.with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Connections served at once by each server. A client beyond them is
/// refused at once (closed) rather than queued behind slow ones.
const MAX_CLIENTS: usize = 32;

/// How long a client has to send its whole request, however it trickles
/// it: every read is bounded by what is left.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A stream whose reads all end by one deadline: each read waits at most
/// for what is left of it, and none starts after it.
struct DeadlineReader<'a, S> {
    stream: &'a S,
    deadline: Instant,
}

/// The two kinds of stream the servers read.
trait TimedStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl TimedStream for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl TimedStream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl<S: TimedStream> Read for DeadlineReader<'_, S>
where
    for<'s> &'s S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

impl<'a, S> DeadlineReader<'a, S> {
    fn new(stream: &'a S) -> Self {
        DeadlineReader {
            stream,
            deadline: Instant::now() + REQUEST_DEADLINE,
        }
    }
}

/// Accepts connections on a thread named `name` and serves each on a
/// thread of its own with `handle`, at most [`MAX_CLIENTS`] at once; a
/// client beyond them is closed at once.
fn serve_each<S: Send + 'static>(
    name: &str,
    incoming: impl Iterator<Item = std::io::Result<S>> + Send + 'static,
    ask: Ask,
    handle: fn(S, &Ask),
) -> std::io::Result<()> {
    let ask = std::sync::Arc::new(ask);
    let (slots, freed) = mpsc::sync_channel::<()>(MAX_CLIENTS);
    for _ in 0..MAX_CLIENTS {
        let _ = slots.send(());
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for stream in incoming {
                let Ok(stream) = stream else {
                    // Out of descriptors, most likely: do not spin on it.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                // A free slot, or the client is refused (dropped): each
                // client thread returns its slot when done.
                match freed.try_recv() {
                    Ok(()) => {}
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
                let ask = std::sync::Arc::clone(&ask);
                let slot = slots.clone();
                std::thread::spawn(move || {
                    handle(stream, &ask);
                    let _ = slot.send(());
                });
            }
        })
        .map(drop)
}

/// Serves the control socket on a thread of its own.
pub fn serve_control(listener: UnixListener, ask: Ask) -> std::io::Result<()> {
    let incoming = std::iter::repeat_with(move || listener.accept().map(|(s, _)| s));
    serve_each("ringseed-ctl", incoming, ask, answer_control)
}

/// Reads one request line from a `ringseed ctl` client and writes the reply.
fn answer_control(stream: UnixStream, ask: &Ask) {
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut line = String::new();
    let mut reader = BufReader::new(DeadlineReader::new(&stream));
    if reader.by_ref().take(1 << 20).read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => ask(Query::Control(request)).unwrap_or_else(|| Reply {
            message: "the daemon did not answer (it is stopping?)".into(),
            ..Reply::default()
        }),
        Err(e) => Reply {
            message: format!("not a control request: {e}"),
            ..Reply::default()
        },
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_default();
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

/// Sends one request to the daemon at `socket` and returns its reply.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Reply> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the daemon's control socket {} (is the daemon running, and may \
             this user use the socket?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("no answer from the daemon")?;
    serde_json::from_str(&answer).with_context(|| format!("a bad answer: {answer:?}"))
}

/// Serves `/metrics` (Prometheus) and `/status` (JSON) over HTTP on a
/// thread; returns the bound address.
pub fn serve_metrics(addr: SocketAddr, ask: Ask) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    let incoming = std::iter::repeat_with(move || listener.accept().map(|(s, _)| s));
    serve_each("ringseed-metrics", incoming, ask, |stream, ask| {
        let _ = serve_http(stream, ask);
    })?;
    Ok(local)
}

fn serve_http(mut stream: TcpStream, ask: &Ask) -> std::io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let reader_stream = stream.try_clone()?;
    let mut reader = DeadlineReader::new(&reader_stream);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let path = loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break request.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if buf.len() < 16 << 10 => continue,
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    b"bad request\n",
                )
            }
        }
    };
    let route = path.split('?').next().unwrap_or("");
    if route != "/metrics" && route != "/status" {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"try /metrics or /status\n",
        );
    }
    let Some(status) = ask(Query::Status).and_then(|r| r.status) else {
        return respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            b"stopping\n",
        );
    };
    if route == "/metrics" {
        respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            status.to_prometheus().as_bytes(),
        )
    } else {
        let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
        respond(&mut stream, "200 OK", "application/json", &body)
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        let r = Request::Add {
            path: "/srv/x.iso".into(),
            data: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"add","path":"/srv/x.iso","data":null}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let status = serde_json::to_string(&Request::Status { json: true }).unwrap();
        assert_eq!(status, r#"{"cmd":"status"}"#);
        let level: Request =
            serde_json::from_str(r#"{"cmd":"log-level","level":"debug"}"#).unwrap();
        assert_eq!(
            level,
            Request::LogLevel {
                level: "debug".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
    }
}
