//! # Traffic traces: what a kas saw, without secrets
//!
//! kas can record the traffic it serves (`recording:` in its configuration, or `kas --record FILE`;
//! `kas::recording`), and the simulator replays such a file, scaled (`simulator run --replay FILE
//! --scale 10x`; `simulator::sim::replay`). This crate is the format both sides share, and nothing
//! else: pure types, their JSON-lines encoding, the pseudonymisation of agent ids, the route classes
//! requests are reduced to, and the reader. No I/O beyond reading a [`BufRead`] the caller opened, no
//! clock, no runtime.
//!
//! ## The file
//!
//! One JSON object per line. The first line is the [`Header`] (format name and version, the kas
//! version, when the recording started, the replica, the recording options); every further line is a
//! [`Record`], with a time relative to the start (microseconds):
//!
//! ```text
//! {"format":"kas-traffic-trace","version":1,"kas_version":"0.1.0","started_unix_ms":1796300000000,"replica":"r-1","options":{"sample_rate":1.0,"max_file_size":67108864,"part":0}}
//! {"event":"connected","t_us":1200,"agent":"a-5c1f0e9b2a7d4c11","connection":"c1","replica":"r-1"}
//! {"event":"request","t_us":250000,"agent":"a-5c1f0e9b2a7d4c11","service":"k8s-api","method":"GET","class":"GET pods list","status":200,"request_bytes":0,"response_bytes":4096,"duration_us":3100}
//! {"event":"views","t_us":260000,"agent":"a-5c1f0e9b2a7d4c11","rows":3,"bytes":512}
//! {"event":"disconnected","t_us":900000,"agent":"a-5c1f0e9b2a7d4c11","connection":"c1","replica":"r-1"}
//! ```
//!
//! Records are written when something *ended* (a request when its response ended), so times are not
//! in file order; a reader sorts them ([`Trace::sorted`]).
//!
//! ## What is never in it
//!
//! No token, user name, IP address, object name, namespace or path: agents appear as a keyed hash
//! ([`Pseudonymizer`], a key drawn per recording and never written), requests as a route *class*
//! ([`route_class`]: method, resource type and verb, e.g. `GET pods list`), methods outside the HTTP
//! standard ones as `OTHER`. Resource types and cache kinds are kept only when they look like type
//! names (lower-case/upper-case letters, digits, `.` and `-`, at most 63 characters); anything else is
//! `other`.
//!
//! ## Bounds
//!
//! The writer (kas) rotates the file at `max_file_size` (one previous part kept, each part starting
//! with its own header, `options.part` counting) and can sample agents ([`Pseudonymizer::sampled`]:
//! a whole agent is in or out, so its sessions stay coherent). The reader refuses lines over
//! [`MAX_LINE`] and files over [`MAX_RECORDS`] records with a typed error.

use std::collections::BTreeMap;
use std::io::BufRead;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The `format` of the header line.
pub const FORMAT: &str = "kas-traffic-trace";
/// The version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Longest line a reader accepts (octets).
pub const MAX_LINE: usize = 64 * 1024;
/// Most records a reader accepts from one file.
pub const MAX_RECORDS: usize = 20_000_000;

/// The first line of a trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The recording kas's version.
    pub kas_version: String,
    /// When the recording started (Unix time, milliseconds); record times are relative to it.
    pub started_unix_ms: u64,
    /// The replica that recorded (its replica id, or `single` for a kas alone).
    pub replica: String,
    /// How it was recorded.
    pub options: RecordingOptions,
}

impl Header {
    /// A header of this crate's format and version.
    pub fn new(
        kas_version: &str,
        started_unix_ms: u64,
        replica: &str,
        options: RecordingOptions,
    ) -> Header {
        Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            kas_version: kas_version.to_owned(),
            started_unix_ms,
            replica: replica.to_owned(),
            options,
        }
    }
}

/// The recording options, as written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingOptions {
    /// Fraction of agents recorded (1.0: all).
    pub sample_rate: f64,
    /// The file is rotated at this size (0: never).
    pub max_file_size: u64,
    /// Which part of a rotated recording this file is (0: the first).
    pub part: u32,
}

impl Default for RecordingOptions {
    /// Every agent, no rotation, the first part.
    fn default() -> Self {
        RecordingOptions {
            sample_rate: 1.0,
            max_file_size: 0,
            part: 0,
        }
    }
}

/// The service a request went to (protocol/SERVICES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// The agent's Kubernetes API (`/k8s-proxy`).
    K8sApi,
    /// An in-cluster Service (`/api/v1/agents/{id}/proxy/...`).
    ServiceProxy,
    /// agentk's informer cache (`/api/v1/agents/{id}/cache/...`).
    Cache,
    /// An upgraded session (exec, attach, cp, port-forward), from its `101` to its end.
    Upgrade,
}

impl Service {
    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::K8sApi => "k8s-api",
            Service::ServiceProxy => "service-proxy",
            Service::Cache => "cache",
            Service::Upgrade => "upgrade",
        }
    }
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// An agent connection was registered.
    Connected {
        /// Microseconds since the start of the recording.
        t_us: u64,
        /// The agent's pseudonym ([`Pseudonymizer::agent`]).
        agent: String,
        /// kas's connection id (`c7`).
        connection: String,
        /// The replica it connected to.
        replica: String,
    },
    /// An agent connection closed.
    Disconnected {
        /// Microseconds since the start.
        t_us: u64,
        /// The agent's pseudonym.
        agent: String,
        /// kas's connection id.
        connection: String,
        /// The replica.
        replica: String,
    },
    /// A request through kas to an agent, written when its response (or session) ended; `t_us` is
    /// when it arrived.
    Request {
        /// Microseconds since the start, at arrival.
        t_us: u64,
        /// The agent's pseudonym.
        agent: String,
        /// Which service.
        service: Service,
        /// HTTP method (`OTHER` for a non-standard one).
        method: String,
        /// The route class ([`route_class`]).
        class: String,
        /// The response status (101 for a session).
        status: u16,
        /// Request body octets (client → agent).
        request_bytes: u64,
        /// Response body octets (agent → client).
        response_bytes: u64,
        /// From arrival to the end of the response.
        duration_us: u64,
    },
    /// A chunk of an agent's views stream that kas applied to its mirror.
    Views {
        /// Microseconds since the start.
        t_us: u64,
        /// The agent's pseudonym.
        agent: String,
        /// View rows it changed.
        rows: u64,
        /// Octets of the chunk.
        bytes: u64,
    },
}

impl Record {
    /// Microseconds since the start of the recording.
    pub fn t_us(&self) -> u64 {
        match self {
            Record::Connected { t_us, .. }
            | Record::Disconnected { t_us, .. }
            | Record::Request { t_us, .. }
            | Record::Views { t_us, .. } => *t_us,
        }
    }

    /// The agent's pseudonym.
    pub fn agent(&self) -> &str {
        match self {
            Record::Connected { agent, .. }
            | Record::Disconnected { agent, .. }
            | Record::Request { agent, .. }
            | Record::Views { agent, .. } => agent,
        }
    }
}

/// One JSON line (with its `\n`) for a header or record.
pub fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Agent ids as keyed hashes: the same agent gets the same pseudonym within one recording, and
/// without the key (drawn per recording, never written) pseudonyms cannot be tied to ids.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer").finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    /// A pseudonymizer with this key (draw it at random for each recording).
    pub fn new(key: [u8; 32]) -> Pseudonymizer {
        Pseudonymizer { key }
    }

    fn mac(&self, label: &[u8], id: u64) -> [u8; 32] {
        // HMAC takes keys of any length: `new_from_slice` cannot fail for 32 octets.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return [0; 32];
        };
        mac.update(label);
        mac.update(&id.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of `agent_id`: `a-` and 16 hex digits.
    pub fn agent(&self, agent_id: u64) -> String {
        let h = self.mac(b"agent", agent_id);
        format!("a-{}", hex::encode(&h[..8]))
    }

    /// Whether `agent_id` is recorded at `rate` (0..=1): a keyed, per-agent decision, so an agent's
    /// traffic is recorded whole or not at all.
    pub fn sampled(&self, agent_id: u64, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 || rate.is_nan() {
            return false;
        }
        let h = self.mac(b"sample", agent_id);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        let u = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
        u < rate
    }
}

/// The HTTP method as recorded: a standard one, or `OTHER`.
pub fn method_class(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}

/// A resource type or kind name kept in a class: letters, digits, `.`, `-`, 1..=63 characters;
/// otherwise `other` (a name that does not look like a type is not written).
fn type_name(s: &str) -> &str {
    if !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        s
    } else {
        "other"
    }
}

/// The route class of a request: method, resource type and verb, never a name, namespace or query
/// value. `path` is the path the client asked kas for (query included or not):
///
/// - `k8s-api`, `upgrade`: the Kubernetes path after `/k8s-proxy` (a leading `/k8s-proxy` is
///   stripped): `GET /api/v1/namespaces/ns/pods` → `GET pods list`, `…/pods/x` → `GET pods get`,
///   `?watch=true` → `watch`, `…/pods/x/log` → `GET pods/log get`, `POST` → `create`, `PUT` →
///   `update`, `PATCH` → `patch`, `DELETE` → `delete` (`deletecollection` without a name);
///   `/api`, `/apis…`, `/version`, `/openapi…` → `GET discovery`;
/// - `service-proxy`: `GET service` (service names and paths are names);
/// - `cache`: `GET cache Pod` (the kind after `/cache/`).
pub fn route_class(service: Service, method: &str, path: &str) -> String {
    let method = method_class(method);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match service {
        Service::ServiceProxy => format!("{method} service"),
        Service::Cache => {
            let kind = path.rsplit_once("/cache/").map_or("", |(_, k)| k);
            format!("{method} cache {}", type_name(kind.trim_end_matches('/')))
        }
        Service::K8sApi | Service::Upgrade => {
            let path = path.strip_prefix("/k8s-proxy").unwrap_or(path);
            k8s_class(method, path, query)
        }
    }
}

fn k8s_class(method: &'static str, path: &str, query: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // After `/api/v1` or `/apis/{group}/{version}`.
    let rest: &[&str] = match segs.as_slice() {
        []
        | ["version" | "openapi", ..]
        | ["api"]
        | ["api", _]
        | ["apis"]
        | ["apis", _]
        | ["apis", _, _] => return format!("{method} discovery"),
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return format!("{method} other"),
    };
    // `namespaces/{ns}/{resource}...` is namespaced; `namespaces[/{name}]` is the namespaces resource.
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, false, None),
        [resource, _name] => (*resource, true, None),
        [resource, _name, sub, ..] => (*resource, true, Some(*sub)),
        [] => return format!("{method} other"),
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1" || p == "watch");
    let verb = match (method, name) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    };
    match sub {
        Some(sub) => format!("{method} {}/{} {verb}", type_name(resource), type_name(sub)),
        None => format!("{method} {} {verb}", type_name(resource)),
    }
}

/// A trace file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading failed.
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
    /// The file is empty.
    #[error("the trace is empty (no header line)")]
    Empty,
    /// The first line is not a header of this format.
    #[error("line 1 is not a {FORMAT} header: {0}")]
    BadHeader(String),
    /// A version this reader does not know.
    #[error("trace version {found} is not supported (this reader reads version {VERSION})")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// A line that is not a record.
    #[error("line {line}: {message}")]
    BadRecord {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Beyond [`MAX_LINE`] or [`MAX_RECORDS`].
    #[error("line {line}: {what} over the limit of {limit}")]
    TooLarge {
        /// 1-based line number.
        line: usize,
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// A whole trace, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The header.
    pub header: Header,
    /// The records in file order.
    pub records: Vec<Record>,
}

/// Reads one line of at most [`MAX_LINE`] octets (without its `\n`); `None` at the end.
fn read_line(r: &mut impl BufRead, line_no: usize) -> Result<Option<Vec<u8>>, TraceError> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Err(TraceError::TooLarge {
            line: line_no,
            what: "line length",
            limit: MAX_LINE,
        });
    }
    Ok(Some(buf))
}

impl Trace {
    /// Reads a trace: the header, then records until the end (blank lines are skipped).
    pub fn read(mut r: impl BufRead) -> Result<Trace, TraceError> {
        let first = read_line(&mut r, 1)?.ok_or(TraceError::Empty)?;
        let value: serde_json::Value =
            serde_json::from_slice(&first).map_err(|e| TraceError::BadHeader(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(TraceError::BadHeader(
                "no \"format\":\"kas-traffic-trace\"".into(),
            ));
        }
        if let Some(v) = value.get("version").and_then(|v| v.as_u64())
            && v != u64::from(VERSION)
        {
            return Err(TraceError::Version {
                found: u32::try_from(v).unwrap_or(u32::MAX),
            });
        }
        let header: Header =
            serde_json::from_value(value).map_err(|e| TraceError::BadHeader(e.to_string()))?;
        let mut records = Vec::new();
        let mut line_no = 1;
        // Bounded by the input and MAX_RECORDS.
        while let Some(line) = read_line(&mut r, line_no + 1)? {
            line_no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if records.len() >= MAX_RECORDS {
                return Err(TraceError::TooLarge {
                    line: line_no,
                    what: "record count",
                    limit: MAX_RECORDS,
                });
            }
            let record: Record =
                serde_json::from_slice(&line).map_err(|e| TraceError::BadRecord {
                    line: line_no,
                    message: e.to_string(),
                })?;
            records.push(record);
        }
        Ok(Trace { header, records })
    }

    /// The records by time (stable: equal times keep file order).
    pub fn sorted(&self) -> Vec<Record> {
        let mut v = self.records.clone();
        v.sort_by_key(Record::t_us);
        v
    }

    /// What the trace holds, counted.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.records)
    }
}

/// What a trace (or a replay of it) holds, counted: the figures a record → replay round trip
/// compares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Distinct agents.
    pub agents: u64,
    /// Connections registered.
    pub connects: u64,
    /// Connections closed.
    pub disconnects: u64,
    /// Requests by `"{service} {class}"`.
    pub requests: BTreeMap<String, u64>,
    /// Request body octets of all requests.
    pub request_bytes: u64,
    /// Response body octets of all requests.
    pub response_bytes: u64,
    /// Views chunks.
    pub views_updates: u64,
    /// View rows changed.
    pub views_rows: u64,
    /// Views octets.
    pub views_bytes: u64,
}

impl Counts {
    /// Counts `records`.
    pub fn of(records: &[Record]) -> Counts {
        let mut c = Counts::default();
        let mut agents = std::collections::BTreeSet::new();
        for r in records {
            agents.insert(r.agent());
            match r {
                Record::Connected { .. } => c.connects += 1,
                Record::Disconnected { .. } => c.disconnects += 1,
                Record::Request {
                    service,
                    class,
                    request_bytes,
                    response_bytes,
                    ..
                } => {
                    *c.requests
                        .entry(format!("{} {class}", service.as_str()))
                        .or_default() += 1;
                    c.request_bytes += request_bytes;
                    c.response_bytes += response_bytes;
                }
                Record::Views { rows, bytes, .. } => {
                    c.views_updates += 1;
                    c.views_rows += rows;
                    c.views_bytes += bytes;
                }
            }
        }
        c.agents = agents.len() as u64;
        c
    }

    /// Every figure multiplied by `k` (what a replay at scale `k` must show).
    pub fn scaled(&self, k: u64) -> Counts {
        Counts {
            agents: self.agents * k,
            connects: self.connects * k,
            disconnects: self.disconnects * k,
            requests: self
                .requests
                .iter()
                .map(|(c, n)| (c.clone(), n * k))
                .collect(),
            request_bytes: self.request_bytes * k,
            response_bytes: self.response_bytes * k,
            views_updates: self.views_updates * k,
            views_rows: self.views_rows * k,
            views_bytes: self.views_bytes * k,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn class(s: Service, m: &str, p: &str) -> String {
        route_class(s, m, p)
    }

    #[test]
    fn classes_keep_types_and_verbs_and_drop_names() {
        use Service::*;
        assert_eq!(
            class(K8sApi, "GET", "/k8s-proxy/api/v1/pods"),
            "GET pods list"
        );
        assert_eq!(
            class(K8sApi, "GET", "/api/v1/namespaces/secret-ns/pods?limit=5"),
            "GET pods list"
        );
        assert_eq!(
            class(K8sApi, "GET", "/api/v1/namespaces/ns/pods/db-password"),
            "GET pods get"
        );
        assert_eq!(
            class(K8sApi, "get", "/api/v1/namespaces/ns/pods?watch=true&x=1"),
            "GET pods watch"
        );
        assert_eq!(
            class(
                K8sApi,
                "PATCH",
                "/apis/apps/v1/namespaces/ns/deployments/app"
            ),
            "PATCH deployments patch"
        );
        assert_eq!(
            class(
                Upgrade,
                "POST",
                "/k8s-proxy/api/v1/namespaces/n/pods/box/exec?command=cat"
            ),
            "POST pods/exec create"
        );
        assert_eq!(
            class(K8sApi, "GET", "/api/v1/namespaces"),
            "GET namespaces list"
        );
        assert_eq!(
            class(K8sApi, "GET", "/api/v1/namespaces/team-a"),
            "GET namespaces get"
        );
        assert_eq!(
            class(K8sApi, "DELETE", "/api/v1/namespaces/n/pods"),
            "DELETE pods deletecollection"
        );
        assert_eq!(class(K8sApi, "GET", "/api"), "GET discovery");
        assert_eq!(class(K8sApi, "GET", "/apis"), "GET discovery");
        assert_eq!(class(K8sApi, "GET", "/apis/apps/v1"), "GET discovery");
        assert_eq!(class(K8sApi, "GET", "/api/v1"), "GET discovery");
        assert_eq!(class(K8sApi, "GET", "/version"), "GET discovery");
        assert_eq!(class(K8sApi, "GET", "/healthz/secret"), "GET other");
        assert_eq!(class(K8sApi, "BREW", "/api/v1/pods"), "OTHER pods other");
        assert_eq!(class(K8sApi, "GET", "/api/v1/p%20ods"), "GET other list");
        assert_eq!(
            class(ServiceProxy, "GET", "/api/v1/agents/1/proxy/ns/svc:80/x"),
            "GET service"
        );
        assert_eq!(
            class(Cache, "GET", "/api/v1/agents/1/cache/Pod?namespace=x"),
            "GET cache Pod"
        );
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let p = Pseudonymizer::new([7; 32]);
        let q = Pseudonymizer::new([8; 32]);
        assert_eq!(p.agent(1), p.agent(1));
        assert_ne!(p.agent(1), p.agent(2));
        assert_ne!(p.agent(1), q.agent(1));
        assert!(p.agent(1).starts_with("a-") && p.agent(1).len() == 18);
        assert!(!p.agent(12345).contains("12345"));
        assert!(p.sampled(3, 1.0) && !p.sampled(3, 0.0));
        let n = (0..10_000).filter(|i| p.sampled(*i, 0.25)).count();
        assert!((2_000..3_000).contains(&n), "{n}");
    }

    #[test]
    fn a_trace_round_trips_and_counts() {
        let header = Header::new("0.1.0", 5, "single", RecordingOptions::default());
        let records = vec![
            Record::Request {
                t_us: 50,
                agent: "a-1".into(),
                service: Service::K8sApi,
                method: "GET".into(),
                class: "GET pods list".into(),
                status: 200,
                request_bytes: 3,
                response_bytes: 100,
                duration_us: 7,
            },
            Record::Connected {
                t_us: 10,
                agent: "a-1".into(),
                connection: "c1".into(),
                replica: "single".into(),
            },
            Record::Views {
                t_us: 60,
                agent: "a-1".into(),
                rows: 2,
                bytes: 40,
            },
            Record::Disconnected {
                t_us: 90,
                agent: "a-1".into(),
                connection: "c1".into(),
                replica: "single".into(),
            },
        ];
        let mut file = encode_line(&header);
        for r in &records {
            file.extend(encode_line(r));
        }
        file.extend_from_slice(b"\n");
        let trace = Trace::read(&file[..]).unwrap();
        assert_eq!(trace.header, header);
        assert_eq!(trace.records, records);
        assert_eq!(trace.sorted()[0].t_us(), 10);
        let c = trace.counts();
        assert_eq!((c.agents, c.connects, c.disconnects), (1, 1, 1));
        assert_eq!(c.requests.get("k8s-api GET pods list"), Some(&1));
        assert_eq!((c.request_bytes, c.response_bytes), (3, 100));
        assert_eq!((c.views_updates, c.views_rows, c.views_bytes), (1, 2, 40));
        assert_eq!(c.scaled(10).response_bytes, 1000);
    }

    #[test]
    fn bad_files_get_typed_errors() {
        assert!(matches!(Trace::read(&b""[..]), Err(TraceError::Empty)));
        assert!(matches!(
            Trace::read(&b"{\"format\":\"x\"}\n"[..]),
            Err(TraceError::BadHeader(_))
        ));
        let v2 = br#"{"format":"kas-traffic-trace","version":2}"#;
        assert!(matches!(
            Trace::read(&v2[..]),
            Err(TraceError::Version { found: 2 })
        ));
        let mut ok = encode_line(&Header::new("x", 0, "r", RecordingOptions::default()));
        let mut bad = ok.clone();
        bad.extend_from_slice(b"{\"event\":\"nope\"}\n");
        assert!(matches!(
            Trace::read(&bad[..]),
            Err(TraceError::BadRecord { line: 2, .. })
        ));
        ok.extend(vec![b'x'; MAX_LINE + 10]);
        assert!(matches!(
            Trace::read(&ok[..]),
            Err(TraceError::TooLarge { line: 2, .. })
        ));
    }

    proptest::proptest! {
        /// No segment of the path but type names and verbs reaches the class.
        #[test]
        fn classes_never_carry_names(name in "[a-z][a-z0-9]{11,20}", ns in "[a-z][a-z0-9]{11,20}") {
            for (m, p) in [
                ("GET", format!("/api/v1/namespaces/{ns}/pods/{name}")),
                ("DELETE", format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}")),
                ("GET", format!("/api/v1/namespaces/{ns}/pods/{name}/log?container={name}")),
                ("GET", format!("/api/v1/namespaces/{ns}/secrets?labelSelector={name}")),
            ] {
                let c = route_class(Service::K8sApi, m, &p);
                proptest::prop_assert!(!c.contains(&name) && !c.contains(&ns), "{c}");
            }
        }
    }
}
