//! The audit log: one JSON line per request a user made through kas (proxied to an agent, or read
//! from kas's memory) and one per upgraded session (`kubectl exec`, `attach`, `cp`, `port-forward`),
//! written when it ended, to a file or stdout (`audit` in the configuration).
//!
//! A record ([`AuditRecord`]):
//!
//! ```json
//! {"time":"2026-12-03T15:40:00Z","kind":"request","request_id":7,"user":"admin","token_kind":"pat",
//!  "agent_id":1,"method":"GET","route":"k8s-proxy","path":"/api/v1/pods?limit=500","status":200,
//!  "bytes_in":0,"bytes_out":1234,"duration_ms":12.5}
//! {"time":"…","kind":"session","request_id":8,"user":"admin","token_kind":"pat","agent_id":1,
//!  "method":"GET","route":"k8s-proxy","path":"/api/v1/namespaces/default/pods/box/exec?command=sh&stdin=true",
//!  "status":101,"bytes_in":12,"bytes_out":40,"duration_ms":5012.0,"upgrade":"websocket","end":"closed"}
//! ```
//!
//! `acted_as` (whom the request acted as in the cluster, the access-control decision's
//! impersonation) appears once kas decides it; absent otherwise. `bytes_in` of an ordinary request is
//! its declared `Content-Length` (`null` for a chunked upload), `bytes_out` what the response body
//! carried to the client; a session counts every octet each way. The path keeps its query, except
//! the values of parameters whose names say they carry a secret ([`redact_query`]); a record never
//! holds a header, so no token reaches it.
//!
//! The file is opened for appending; [`AuditLog::reopen`] (on SIGHUP) reopens it by name, so
//! logrotate can move it away; with `max_file_size` set, kas rotates it itself (`<path>.1`). A
//! write failure is logged (rate-limited to once a minute) and counted, never fails the request.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use serde::Serialize;

use crate::api::response::{BodyError, ResponseBody};
use crate::config::AuditConfig;

/// What a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// One HTTP request and its response.
    Request,
    /// One upgraded session, from its `101` to its end.
    Session,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// When it ended (RFC 3339, UTC).
    pub time: String,
    /// Request or upgraded session.
    pub kind: RecordKind,
    /// kas's request id (as in its logs).
    pub request_id: u64,
    /// The authenticated user's name; `None` for a public read without a token.
    pub user: Option<String>,
    /// The kind of token the user presented (`pat`, `ci`, `session`).
    pub token_kind: Option<&'static str>,
    /// Whom the request acted as in the cluster (the access decision's impersonation), when kas
    /// decided one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acted_as: Option<String>,
    /// The agent the request was for.
    pub agent_id: Option<u64>,
    /// HTTP method.
    pub method: String,
    /// kas's route label (`k8s-proxy`, `service-proxy`, `cache`, `views`, ...).
    pub route: &'static str,
    /// Path and query, secrets redacted.
    pub path: String,
    /// The response status (101 for a session).
    pub status: u16,
    /// Octets client → kas (see the module documentation).
    pub bytes_in: Option<u64>,
    /// Octets kas → client.
    pub bytes_out: u64,
    /// From arrival to the end of the response (or of the session).
    pub duration_ms: f64,
    /// The protocol a session switched to (`websocket`, `SPDY/3.1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    /// How a session ended (`closed`, `idle`, `shutdown`, `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<&'static str>,
}

/// Who made a request and what it was, known when it arrives; completed into a record at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditContext {
    /// kas's request id.
    pub request_id: u64,
    /// The user's name.
    pub user: Option<String>,
    /// The token kind.
    pub token_kind: Option<&'static str>,
    /// Whom it acts as: set once by access control when it decided (shared by the clones of this
    /// context, so the record written at the end sees it).
    pub acted_as: std::sync::Arc<std::sync::OnceLock<String>>,
    /// The agent.
    pub agent_id: Option<u64>,
    /// HTTP method.
    pub method: String,
    /// Route label.
    pub route: &'static str,
    /// Path and query, redacted.
    pub path: String,
    /// The declared request body length.
    pub content_length: Option<u64>,
    /// When it arrived.
    pub arrived: Instant,
}

impl AuditContext {
    /// The record of this request ending now.
    pub fn record(
        &self,
        kind: RecordKind,
        status: u16,
        bytes_in: Option<u64>,
        bytes_out: u64,
    ) -> AuditRecord {
        AuditRecord {
            time: crate::rfc3339::format(SystemTime::now()),
            kind,
            request_id: self.request_id,
            user: self.user.clone(),
            token_kind: self.token_kind,
            acted_as: self.acted_as.get().cloned(),
            agent_id: self.agent_id,
            method: self.method.clone(),
            route: self.route,
            path: self.path.clone(),
            status,
            bytes_in,
            bytes_out,
            duration_ms: self.arrived.elapsed().as_secs_f64() * 1000.0,
            upgrade: None,
            end: None,
        }
    }
}

/// Query parameter names (lower-case substrings) whose values are replaced by `REDACTED`.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "auth",
    "key",
    "signature",
    "credential",
    "session",
    "code",
];

/// `path` with the values of secret-looking query parameters replaced by `REDACTED`.
pub fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = name.to_ascii_lowercase();
            if !value.is_empty() && SECRET_PARAMS.iter().any(|s| lower.contains(s)) {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[derive(Debug)]
enum Sink {
    Off,
    Stdout,
    File {
        path: PathBuf,
        file: File,
        written: u64,
    },
}

/// The audit log of one kas.
#[derive(Debug)]
pub struct AuditLog {
    sink: Mutex<Sink>,
    /// The traffic recorder this hook feeds too ([`crate::recording`]), when recording.
    recorder: std::sync::OnceLock<Arc<crate::recording::Recorder>>,
    max_file_size: u64,
    counters: WriteCounters,
}

/// What a record file's writer counts (the audit log's and the traffic recording's): records
/// written, failures (logged at most once a minute), rotations.
#[derive(Debug)]
pub(crate) struct WriteCounters {
    records: AtomicU64,
    failures: AtomicU64,
    rotations: AtomicU64,
    /// Seconds since `started` of the last failure logged (rate limit).
    last_failure_log: AtomicU64,
    started: Instant,
    /// Logged with a failure (`audit log write failed`).
    failure_message: &'static str,
}

impl WriteCounters {
    pub(crate) fn new(failure_message: &'static str) -> Self {
        WriteCounters {
            records: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            last_failure_log: AtomicU64::new(0),
            started: Instant::now(),
            failure_message,
        }
    }

    pub(crate) fn wrote(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rotated(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure; logs it unless one was logged less than a minute ago.
    pub(crate) fn failed(&self, message: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if (last == 0 || now >= last + Duration::from_secs(60).as_secs())
            && self
                .last_failure_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = message, "{}", self.failure_message);
        }
    }

    pub(crate) fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// The series `kas_{name}_records_total`, `_failures_total`, `_rotations_total` in the
    /// Prometheus text format; `noun` starts their help texts.
    pub(crate) fn render(&self, name: &str, noun: &str) -> String {
        format!(
            "# HELP kas_{name}_records_total {noun} records written.\n\
             # TYPE kas_{name}_records_total counter\n\
             kas_{name}_records_total {}\n\
             # HELP kas_{name}_failures_total {noun} records or rotations that failed.\n\
             # TYPE kas_{name}_failures_total counter\n\
             kas_{name}_failures_total {}\n\
             # HELP kas_{name}_rotations_total {noun} file rotations.\n\
             # TYPE kas_{name}_rotations_total counter\n\
             kas_{name}_rotations_total {}\n",
            self.records(),
            self.failures.load(Ordering::Relaxed),
            self.rotations.load(Ordering::Relaxed),
        )
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, len))
}

impl AuditLog {
    fn with_sink(sink: Sink, max_file_size: u64) -> Self {
        AuditLog {
            sink: Mutex::new(sink),
            recorder: std::sync::OnceLock::new(),
            max_file_size,
            counters: WriteCounters::new("audit log write failed"),
        }
    }

    /// No audit log: records are dropped (and not counted).
    pub fn disabled() -> Self {
        Self::with_sink(Sink::Off, 0)
    }

    /// The audit log the configuration asks for; an error if its file cannot be opened.
    pub fn open(config: &AuditConfig) -> io::Result<Self> {
        let sink = match &config.path {
            None => Sink::Off,
            Some(p) if p.as_os_str() == "-" => Sink::Stdout,
            Some(p) => {
                let (file, written) = open_append(p)?;
                Sink::File {
                    path: p.clone(),
                    file,
                    written,
                }
            }
        };
        Ok(Self::with_sink(sink, config.max_file_size))
    }

    /// Whether records are written anywhere.
    pub fn is_enabled(&self) -> bool {
        !matches!(*self.lock(), Sink::Off)
    }

    /// Also hands every record to the traffic recorder (the one hook that sees each request end).
    pub fn set_recorder(&self, recorder: Arc<crate::recording::Recorder>) {
        let _ = self.recorder.set(recorder);
    }

    /// Whether requests need a context (the audit log or the traffic recorder is on).
    pub fn wants_records(&self) -> bool {
        self.recorder.get().is_some() || self.is_enabled()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one record (one line).
    pub fn write(&self, record: &AuditRecord) {
        if let Some(recorder) = self.recorder.get() {
            recorder.request(record);
        }
        let mut sink = self.lock();
        if matches!(*sink, Sink::Off) {
            return;
        }
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => return self.failed(&format!("serialising a record: {e}")),
        };
        line.push(b'\n');
        let result = match &mut *sink {
            Sink::Off => Ok(()),
            Sink::Stdout => io::stdout().lock().write_all(&line),
            Sink::File {
                path,
                file,
                written,
            } => {
                if self.max_file_size > 0
                    && *written > 0
                    && *written + line.len() as u64 > self.max_file_size
                {
                    let rotated = rotated_name(path);
                    match std::fs::rename(&*path, &rotated).and_then(|()| open_append(path)) {
                        Ok((f, len)) => {
                            *file = f;
                            *written = len;
                            self.counters.rotated();
                        }
                        Err(e) => self.failed(&format!("rotating {}: {e}", path.display())),
                    }
                }
                let r = file.write_all(&line);
                if r.is_ok() {
                    *written += line.len() as u64;
                }
                r
            }
        };
        drop(sink);
        match result {
            Ok(()) => {
                self.counters.wrote();
            }
            Err(e) => self.failed(&format!("writing a record: {e}")),
        }
    }

    /// Reopens the file by name (after logrotate moved it; kas does this on SIGHUP).
    pub fn reopen(&self) {
        let mut sink = self.lock();
        if let Sink::File {
            path,
            file,
            written,
        } = &mut *sink
        {
            match open_append(path) {
                Ok((f, len)) => {
                    *file = f;
                    *written = len;
                    tracing::info!(path = %path.display(), "audit log reopened");
                }
                Err(e) => {
                    let m = format!("reopening {}: {e}", path.display());
                    drop(sink);
                    self.failed(&m);
                }
            }
        }
    }

    fn failed(&self, message: &str) {
        self.counters.failed(message);
    }

    /// Records written since start.
    pub fn records(&self) -> u64 {
        self.counters.records()
    }

    /// The audit log's series in the Prometheus text format (and the traffic recorder's, which
    /// this hook feeds).
    pub fn render_metrics(&self) -> String {
        self.counters.render("audit", "Audit")
            + &self
                .recorder
                .get()
                .map(|r| r.render_metrics())
                .unwrap_or_default()
    }
}

/// `body` counted, with the request's record written when it ends (or the client goes away).
pub fn audited(
    body: ResponseBody,
    context: AuditContext,
    status: u16,
    log: Arc<AuditLog>,
) -> ResponseBody {
    AuditedBody {
        body,
        context,
        status,
        log,
        bytes_out: 0,
        written: false,
    }
    .boxed_unsync()
}

/// A response body that writes its request's audit record once, at its end or when dropped.
struct AuditedBody {
    body: ResponseBody,
    context: AuditContext,
    status: u16,
    log: Arc<AuditLog>,
    bytes_out: u64,
    written: bool,
}

impl AuditedBody {
    fn finish(&mut self) {
        if !self.written {
            self.written = true;
            let record = self.context.record(
                RecordKind::Request,
                self.status,
                self.context.content_length,
                self.bytes_out,
            );
            self.log.write(&record);
        }
    }
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

pub(crate) fn rotated_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn context() -> AuditContext {
        AuditContext {
            request_id: 3,
            user: Some("alice".into()),
            token_kind: Some("pat"),
            acted_as: Default::default(),
            agent_id: Some(1),
            method: "GET".into(),
            route: "k8s-proxy",
            path: "/api/v1/pods".into(),
            content_length: None,
            arrived: Instant::now(),
        }
    }

    #[test]
    fn secrets_in_queries_are_redacted() {
        assert_eq!(
            redact_query("/x?access_token=abc&limit=5&X-Amz-Signature=zz&command=ls"),
            "/x?access_token=REDACTED&limit=5&X-Amz-Signature=REDACTED&command=ls"
        );
        assert_eq!(redact_query("/plain"), "/plain");
        assert_eq!(redact_query("/x?token"), "/x?token");
    }

    #[test]
    fn records_are_json_lines_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditConfig {
            path: Some(path.clone()),
            max_file_size: 600,
        })
        .unwrap();
        let record = context().record(RecordKind::Request, 200, Some(0), 10);
        for _ in 0..4 {
            log.write(&record);
        }
        assert_eq!(log.records(), 4);
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(rotated_name(&path)).unwrap();
        assert_eq!(now.lines().count() + old.lines().count(), 4, "{now}\n{old}");
        let v: serde_json::Value = serde_json::from_str(now.lines().next().unwrap()).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["kind"], "request");
        assert!(v.get("acted_as").is_none());
        assert!(v.get("upgrade").is_none());
        // Reopen after the file was moved away: writing goes on in a new file.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        log.reopen();
        log.write(&record);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert!(log.render_metrics().contains("kas_audit_records_total 5"));
    }

    #[test]
    fn a_disabled_log_writes_nothing() {
        let log = AuditLog::disabled();
        log.write(&context().record(RecordKind::Session, 101, Some(1), 1));
        assert_eq!(log.records(), 0);
        assert!(!log.is_enabled());
    }
}
