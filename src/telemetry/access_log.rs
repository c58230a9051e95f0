//! Access log: one line per request, JSON or combined-style.
//!
//! Workers append lines to their own buffer ([`WorkerLog`]) and hand full
//! buffers (or, every 200 ms, partial ones) to a writer thread over a
//! channel; the writer returns emptied buffers for reuse. A slow disk
//! therefore never stalls a worker: when the writer falls behind, the
//! channel fills and lines are dropped (and counted) instead.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Line format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Apache/nginx combined-style, with ringgate's fields appended.
    Combined,
}

impl LogFormat {
    /// The format as `[log] access` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Combined => "combined",
        }
    }
}

/// As the config file spells it (`GET /config` shows `"json"`).
impl std::fmt::Debug for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shared side: channels to and from the writer thread.
pub struct AccessLog {
    format: LogFormat,
    tx: Sender<Vec<u8>>,
    ret: Receiver<Vec<u8>>,
    /// Lines dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Raised by [`AccessLog::reopen`], taken by the writer thread.
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Starts the writer for `[log]`: `None` when the access log is off. The
/// error names the key and the fix.
pub fn open(cfg: &crate::config::LogConfig) -> Result<Option<Arc<AccessLog>>, String> {
    match cfg.access {
        None => Ok(None),
        Some(f) => AccessLog::start(f, &cfg.path).map(Some).map_err(|e| {
            format!(
                "log.path: cannot open {} for appending: {e} (fix: create its directory and make it writable by ringgate, or use path = \"-\" for stdout)",
                cfg.path
            )
        }),
    }
}

/// Flush a worker's buffer once it holds this much.
const FLUSH_AT: usize = 32 * 1024;

impl AccessLog {
    /// Starts the writer thread for `path` ("-" = stdout).
    pub fn start(format: LogFormat, path: &str) -> std::io::Result<Arc<AccessLog>> {
        let mut out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = bounded::<Vec<u8>>(64);
        let (ret_tx, ret) = bounded::<Vec<u8>>(64);
        let reopen = Arc::new(AtomicBool::new(false));
        let asked = reopen.clone();
        let path = path.to_string();
        std::thread::Builder::new()
            .name(String::from("ringgate-log"))
            .spawn(move || {
                for mut buf in rx {
                    if asked.swap(false, Ordering::AcqRel) && path != "-" {
                        match std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                        {
                            Ok(f) => {
                                let _ = out.flush();
                                out = Box::new(f);
                                tracing::info!(path = %path, "access log reopened");
                            }
                            Err(e) => tracing::warn!(
                                path = %path,
                                error = %e,
                                "cannot reopen the access log; still writing to the file open before"
                            ),
                        }
                    }
                    if buf.is_empty() {
                        continue; // a wake-up from `reopen`
                    }
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                    buf.clear();
                    let _ = ret_tx.try_send(buf);
                }
            })?;
        Ok(Arc::new(AccessLog {
            format,
            tx,
            ret,
            dropped: AtomicU64::new(0),
            reopen,
        }))
    }

    /// Reopens the log file at its path, for log rotation: after the file
    /// was moved away, the writer thread creates a fresh one before it
    /// writes anything else (lines already handed to it go to the new
    /// file). On failure it keeps writing to the old file and logs why.
    /// Never blocks the caller; no-op for stdout.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // Wake the writer even when no worker has lines for it; when its
        // queue is full it sees the flag with the next buffer anyway.
        let _ = self.tx.try_send(Vec::new());
    }
}

/// One request's log record.
pub struct Record<'a> {
    /// Request id.
    pub request_id: &'a [u8],
    /// Trace id (32 hex digits), if any.
    pub trace_id: &'a [u8],
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: &'a [u8],
    /// Path and query.
    pub path: &'a [u8],
    /// HTTP minor version.
    pub minor: u8,
    /// The request came as an HTTP/2 stream.
    pub h2: bool,
    /// Route name, or "-".
    pub route: &'a str,
    /// Upstream target, if one was used.
    pub upstream: Option<SocketAddr>,
    /// Status sent.
    pub status: u16,
    /// Request bytes received.
    pub bytes_in: u64,
    /// Response bytes sent.
    pub bytes_out: u64,
    /// Total time in µs.
    pub total_us: u64,
    /// Upstream time in µs, if any.
    pub upstream_us: Option<u64>,
    /// User-Agent.
    pub user_agent: &'a [u8],
    /// Referer.
    pub referer: &'a [u8],
    /// The connection's TLS facts (`None`: plain HTTP).
    pub tls: Option<&'a crate::tls::ConnTls>,
}

/// Appends `target` (a request target or a URL) to `out` with the value of
/// every query parameter named in `names` replaced by `REDACTED`. Names
/// match as the credential lookup matches them: exactly, not decoded.
pub fn push_redacted(out: &mut Vec<u8>, target: &[u8], names: &[Box<[u8]>]) {
    // Nothing to redact: no scan, one copy.
    let q = if names.is_empty() {
        None
    } else {
        target.iter().position(|&b| b == b'?')
    };
    let Some(q) = q.map(|q| q + 1) else {
        return out.extend_from_slice(target);
    };
    out.extend_from_slice(&target[..q]);
    for (i, kv) in target[q..].split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match kv.iter().position(|&b| b == b'=') {
            Some(e) if names.iter().any(|n| **n == kv[..e]) => {
                out.extend_from_slice(&kv[..=e]);
                out.extend_from_slice(b"REDACTED");
            }
            _ => out.extend_from_slice(kv),
        }
    }
}

/// A worker's side of the access log.
pub struct WorkerLog {
    shared: Arc<AccessLog>,
    buf: RefCell<Vec<u8>>,
    last_flush: Cell<std::time::Instant>,
}

/// A JSON string, or `null`.
fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(b'"');
            json_bytes(out, s.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn json_bytes(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f..=0xff => {
                let _ = write!(out, "\\u{:04x}", b);
            }
            _ => out.push(b),
        }
    }
}

/// Formats a unix time in ms as RFC 3339 UTC with milliseconds.
pub fn rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = (secs / 86400) as i64;
    let sod = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let mut y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    if m <= 2 {
        y += 1;
    }
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
}

impl WorkerLog {
    /// A worker's buffer.
    pub fn new(shared: Arc<AccessLog>) -> Self {
        WorkerLog {
            shared,
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT + 4096)),
            last_flush: Cell::new(std::time::Instant::now()),
        }
    }

    /// Appends one line.
    pub fn log(&self, r: &Record<'_>) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut b = self.buf.borrow_mut();
        match self.shared.format {
            LogFormat::Json => {
                b.extend_from_slice(b"{\"time\":\"");
                rfc3339(&mut b, now_ms);
                b.extend_from_slice(b"\",\"request_id\":\"");
                json_bytes(&mut b, r.request_id);
                b.extend_from_slice(b"\",\"trace_id\":\"");
                json_bytes(&mut b, r.trace_id);
                let _ = write!(b, "\",\"client\":\"{}\",\"method\":\"", r.client.ip());
                json_bytes(&mut b, r.method);
                b.extend_from_slice(b"\",\"path\":\"");
                json_bytes(&mut b, r.path);
                b.extend_from_slice(b"\",\"route\":\"");
                json_bytes(&mut b, r.route.as_bytes());
                b.extend_from_slice(b"\",\"upstream\":");
                match r.upstream {
                    Some(u) => {
                        let _ = write!(b, "\"{u}\"");
                    }
                    None => b.extend_from_slice(b"null"),
                }
                let _ = write!(
                    b,
                    ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"total_us\":{},\"upstream_us\":",
                    r.status, r.bytes_in, r.bytes_out, r.total_us
                );
                match r.upstream_us {
                    Some(u) => {
                        let _ = write!(b, "{u}");
                    }
                    None => b.extend_from_slice(b"null"),
                }
                if let Some(t) = r.tls {
                    b.extend_from_slice(b",\"tls\":{\"version\":\"");
                    b.extend_from_slice(t.version.as_bytes());
                    b.extend_from_slice(b"\",\"cipher\":\"");
                    b.extend_from_slice(t.cipher.as_bytes());
                    b.extend_from_slice(b"\",\"sni\":");
                    json_opt(&mut b, t.sni.as_deref());
                    b.extend_from_slice(b",\"alpn\":");
                    json_opt(&mut b, t.alpn);
                    b.extend_from_slice(b",\"client_subject\":");
                    json_opt(&mut b, t.client_subject.as_deref());
                    b.push(b'}');
                }
                b.extend_from_slice(b"}\n");
            }
            LogFormat::Combined => {
                let _ = write!(b, "{} - - [", r.client.ip());
                rfc3339(&mut b, now_ms);
                b.extend_from_slice(b"] \"");
                b.extend_from_slice(r.method);
                b.push(b' ');
                b.extend_from_slice(r.path);
                if r.h2 {
                    let _ = write!(b, " HTTP/2.0\" {} {} \"", r.status, r.bytes_out);
                } else {
                    let _ = write!(b, " HTTP/1.{}\" {} {} \"", r.minor, r.status, r.bytes_out);
                }
                b.extend_from_slice(if r.referer.is_empty() {
                    b"-"
                } else {
                    r.referer
                });
                b.extend_from_slice(b"\" \"");
                b.extend_from_slice(if r.user_agent.is_empty() {
                    b"-"
                } else {
                    r.user_agent
                });
                b.extend_from_slice(b"\" rid=");
                b.extend_from_slice(r.request_id);
                let _ = write!(b, " route={} upstream=", r.route);
                match r.upstream {
                    Some(u) => {
                        let _ = write!(b, "{u}");
                    }
                    None => b.push(b'-'),
                }
                let _ = write!(b, " total_us={} upstream_us=", r.total_us);
                match r.upstream_us {
                    Some(u) => {
                        let _ = write!(b, "{u}");
                    }
                    None => b.push(b'-'),
                }
                if let Some(t) = r.tls {
                    let _ = write!(b, " tls={} cipher={} sni=", t.version, t.cipher);
                    b.extend_from_slice(t.sni.as_deref().unwrap_or("-").as_bytes());
                }
                b.push(b'\n');
            }
        }
        if b.len() >= FLUSH_AT {
            drop(b);
            self.flush();
        }
    }

    /// Whether this buffer feeds `log`'s writer.
    pub fn writes_to(&self, log: &Arc<AccessLog>) -> bool {
        Arc::ptr_eq(&self.shared, log)
    }

    /// Hands the buffer to the writer thread (never blocks).
    pub fn flush(&self) {
        let mut b = self.buf.borrow_mut();
        self.last_flush.set(std::time::Instant::now());
        if b.is_empty() {
            return;
        }
        let fresh = self
            .shared
            .ret
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FLUSH_AT + 4096));
        let full = std::mem::replace(&mut *b, fresh);
        match self.shared.tx.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(mut v)) | Err(TrySendError::Disconnected(mut v)) => {
                let lines = v.iter().filter(|&&c| c == b'\n').count() as u64;
                self.shared.dropped.fetch_add(lines, Ordering::Relaxed);
                v.clear();
                *b = v;
            }
        }
    }

    /// Flushes when the last flush is older than `every`.
    pub fn flush_if_older(&self, every: std::time::Duration) {
        if self.last_flush.get().elapsed() >= every {
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_query_values_are_redacted_and_the_rest_kept() {
        let names: Vec<Box<[u8]>> = vec![b"key".as_slice().into(), b"sig".as_slice().into()];
        let cases: [(&str, &str); 8] = [
            ("/a", "/a"),
            ("/a?x=1", "/a?x=1"),
            ("/a?key=s", "/a?key=REDACTED"),
            ("/a?x=1&key=s&y=2", "/a?x=1&key=REDACTED&y=2"),
            (
                "/a?key=&sig=s&key=t",
                "/a?key=REDACTED&sig=REDACTED&key=REDACTED",
            ),
            ("/a?key&keys=s&xkey=s", "/a?key&keys=s&xkey=s"),
            ("/a?&&key=s&", "/a?&&key=REDACTED&"),
            ("/a?x=key=s", "/a?x=key=s"),
        ];
        for (input, want) in cases {
            let mut out = b"prefix:".to_vec();
            push_redacted(&mut out, input.as_bytes(), &names);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("prefix:{want}"),
                "{input}"
            );
        }
        let mut out = Vec::new();
        push_redacted(&mut out, b"/a?key=s", &[]);
        assert_eq!(out, b"/a?key=s");
    }

    fn wait_for(path: &std::path::Path, want: &str) -> String {
        for _ in 0..500 {
            if let Ok(t) = std::fs::read_to_string(path)
                && t.contains(want)
            {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never contained {want:?}", path.display());
    }

    #[test]
    fn reopen_moves_writing_to_a_fresh_file_at_the_path() {
        let dir = std::env::temp_dir().join(format!("ringgate-log-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let log = AccessLog::start(LogFormat::Json, path.to_str().unwrap()).unwrap();
        log.tx.send(b"one\n".to_vec()).unwrap();
        wait_for(&path, "one");
        // logrotate moves the file; ringgate still holds it open.
        std::fs::rename(&path, &rotated).unwrap();
        log.tx.send(b"two\n".to_vec()).unwrap();
        wait_for(&rotated, "two");
        assert!(!path.exists(), "nothing reopened the file yet");
        log.reopen();
        // The file comes back at once, before any line is written to it.
        for _ in 0..500 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(path.exists(), "reopen created no file at the path");
        log.tx.send(b"three\n".to_vec()).unwrap();
        assert_eq!(wait_for(&path, "three"), "three\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rfc3339_formats() {
        let mut v = Vec::new();
        super::rfc3339(&mut v, 1_795_867_200_123);
        assert_eq!(std::str::from_utf8(&v).unwrap(), "2026-11-28T12:00:00.123Z");
    }
}
