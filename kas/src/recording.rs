//! Recording what this kas saw, for replay in the simulator (`simulator run --replay FILE --scale
//! 10x`): agent connections coming and going, requests with their sizes and durations, views
//! traffic. Off by default; on with `recording:` in the configuration or `kas --record FILE`.
//!
//! The format is `traffic_trace`'s (a header line, then one JSON record per line, times relative to
//! the start); this module only decides *what* to write and writes it:
//!
//! - connections: [`Recorder::connected`]/[`Recorder::disconnected`], called by the registry
//!   ([`crate::registry::Registry::set_recorder`]) when a connection is added or removed;
//! - requests: [`Recorder::request`], fed by the audit log's hook — the one place that sees every
//!   user request and upgraded session when it ends ([`crate::audit::AuditLog::set_recorder`]);
//! - views: [`Recorder::views`], from the mirrors when a chunk of a views stream was applied
//!   ([`crate::mirrors::Mirrors::set_recorder`]).
//!
//! No secrets: agent ids become keyed hashes (a key drawn for each recording, never written), paths
//! become route classes (`GET pods list`), and nothing else of a request (user, token, address,
//! query) is read. Bounded: the file is rotated at `max_file_size` (the previous part kept as
//! `FILE.1`, each part starting with its own header), and `sample_rate` records only that fraction of
//! agents (each agent whole or not at all). Off, nothing is computed: the hooks hold no recorder.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use traffic_trace::{Header, Pseudonymizer, Record, RecordingOptions, Service};

use crate::audit::{AuditRecord, RecordKind, WriteCounters, rotated_name};
use crate::config::RecordingConfig;

#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: File,
    written: u64,
    part: u32,
}

/// The traffic recorder of one kas (see the module documentation).
#[derive(Debug)]
pub struct Recorder {
    sink: Mutex<Sink>,
    started: Instant,
    started_unix_ms: u64,
    replica: String,
    pseudonyms: Pseudonymizer,
    sample_rate: f64,
    max_file_size: u64,
    counters: WriteCounters,
}

impl Recorder {
    /// Starts a recording into the configured file (replaced if it exists); `replica` names this
    /// kas in the records. `None` when the configuration has no file.
    pub fn open(config: &RecordingConfig, replica: &str) -> io::Result<Option<Recorder>> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let recorder = Recorder {
            sink: Mutex::new(Sink {
                path: path.clone(),
                file: File::create(path)?,
                written: 0,
                part: 0,
            }),
            started: Instant::now(),
            started_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            replica: replica.to_owned(),
            pseudonyms: Pseudonymizer::new(key),
            sample_rate: config.sample_rate.0.clamp(0.0, 1.0),
            max_file_size: config.max_file_size,
            counters: WriteCounters::new("traffic recording write failed"),
        };
        {
            let mut sink = recorder.lock();
            let header = recorder.header(0);
            let line = traffic_trace::encode_line(&header);
            sink.file.write_all(&line)?;
            sink.written = line.len() as u64;
        }
        tracing::info!(path = %path.display(), sample_rate = recorder.sample_rate, "recording traffic");
        Ok(Some(recorder))
    }

    fn header(&self, part: u32) -> Header {
        Header::new(
            env!("CARGO_PKG_VERSION"),
            self.started_unix_ms,
            &self.replica,
            RecordingOptions {
                sample_rate: self.sample_rate,
                max_file_size: self.max_file_size,
                part,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX)
    }

    fn now_us(&self) -> u64 {
        self.since_start(Instant::now())
    }

    /// The agent's pseudonym, or `None` when it is not sampled.
    fn agent(&self, agent_id: u64) -> Option<String> {
        self.pseudonyms
            .sampled(agent_id, self.sample_rate)
            .then(|| self.pseudonyms.agent(agent_id))
    }

    /// An agent connection was registered.
    pub fn connected(&self, agent_id: u64, connection_id: &str) {
        if let Some(agent) = self.agent(agent_id) {
            self.write(&Record::Connected {
                t_us: self.now_us(),
                agent,
                connection: connection_id.to_owned(),
                replica: self.replica.clone(),
            });
        }
    }

    /// An agent connection closed.
    pub fn disconnected(&self, agent_id: u64, connection_id: &str) {
        if let Some(agent) = self.agent(agent_id) {
            self.write(&Record::Disconnected {
                t_us: self.now_us(),
                agent,
                connection: connection_id.to_owned(),
                replica: self.replica.clone(),
            });
        }
    }

    /// A user request or upgraded session ended (the audit log's record of it): recorded when it
    /// went to an agent (`k8s-proxy`, `service-proxy`, `cache`, or a session). Only the route, the
    /// method, the status, sizes and duration are read; user, path and query never leave here but as
    /// a route class.
    pub fn request(&self, audit: &AuditRecord) {
        let service = match (audit.kind, audit.route) {
            (RecordKind::Session, _) => Service::Upgrade,
            (RecordKind::Request, "k8s-proxy") => Service::K8sApi,
            (RecordKind::Request, "service-proxy") => Service::ServiceProxy,
            (RecordKind::Request, "cache") => Service::Cache,
            _ => return,
        };
        let Some(agent) = audit.agent_id.and_then(|id| self.agent(id)) else {
            return;
        };
        let duration = Duration::try_from_secs_f64(audit.duration_ms / 1000.0).unwrap_or_default();
        let arrived = Instant::now().checked_sub(duration).unwrap_or(self.started);
        self.write(&Record::Request {
            t_us: self.since_start(arrived),
            agent,
            service,
            method: traffic_trace::method_class(&audit.method).to_owned(),
            class: traffic_trace::route_class(service, &audit.method, &audit.path),
            status: audit.status,
            request_bytes: audit.bytes_in.unwrap_or(0),
            response_bytes: audit.bytes_out,
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        });
    }

    /// A chunk of `bytes` octets of an agent's views stream was applied, changing `rows` view rows.
    pub fn views(&self, agent_id: u64, rows: u64, bytes: u64) {
        if let Some(agent) = self.agent(agent_id) {
            self.write(&Record::Views {
                t_us: self.now_us(),
                agent,
                rows,
                bytes,
            });
        }
    }

    fn write(&self, record: &Record) {
        let line = traffic_trace::encode_line(record);
        let mut sink = self.lock();
        if self.max_file_size > 0
            && sink.written + line.len() as u64 > self.max_file_size
            && let Err(e) = self.rotate(&mut sink)
        {
            let m = format!("rotating {}: {e}", sink.path.display());
            drop(sink);
            return self.failed(&m);
        }
        let result = sink.file.write_all(&line);
        if result.is_ok() {
            sink.written += line.len() as u64;
        }
        drop(sink);
        match result {
            Ok(()) => {
                self.counters.wrote();
            }
            Err(e) => self.failed(&format!("writing a record: {e}")),
        }
    }

    /// Moves the file to `FILE.1` and starts the next part with its own header.
    fn rotate(&self, sink: &mut Sink) -> io::Result<()> {
        std::fs::rename(&sink.path, rotated_name(&sink.path))?;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&sink.path)?;
        let part = sink.part + 1;
        let line = traffic_trace::encode_line(&self.header(part));
        file.write_all(&line)?;
        *sink = Sink {
            path: sink.path.clone(),
            file,
            written: line.len() as u64,
            part,
        };
        self.counters.rotated();
        Ok(())
    }

    fn failed(&self, message: &str) {
        self.counters.failed(message);
    }

    /// Records written since start.
    pub fn records(&self) -> u64 {
        self.counters.records()
    }

    /// The recorder's series in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.counters.render("recording", "Traffic")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recorder(path: &std::path::Path, max_file_size: u64, rate: f64, replica: &str) -> Recorder {
        let config = RecordingConfig {
            path: Some(path.to_owned()),
            max_file_size,
            sample_rate: crate::config::SampleRate(rate),
        };
        Recorder::open(&config, replica).unwrap().unwrap()
    }

    fn audit(route: &'static str, path: &str, agent: u64) -> AuditRecord {
        AuditRecord {
            time: "2026-12-03T00:00:00Z".into(),
            kind: RecordKind::Request,
            request_id: 1,
            user: Some("alice-the-admin".into()),
            token_kind: Some("pat"),
            acted_as: Some("system:serviceaccount:secret-sa".into()),
            agent_id: Some(agent),
            method: "GET".into(),
            route,
            path: path.into(),
            status: 200,
            bytes_in: Some(5),
            bytes_out: 77,
            duration_ms: 2.5,
            upgrade: None,
            end: None,
        }
    }

    #[test]
    fn records_carry_classes_and_pseudonyms_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let r = recorder(&path, 0, 1.0, "single");
        r.connected(4242, "c1");
        r.request(&audit(
            "k8s-proxy",
            "/k8s-proxy/api/v1/namespaces/top-secret-ns/pods/db-0",
            4242,
        ));
        r.request(&audit("agents", "/api/v1/agents", 4242));
        r.views(4242, 3, 120);
        r.disconnected(4242, "c1");
        let text = std::fs::read_to_string(&path).unwrap();
        for secret in ["4242", "alice", "top-secret", "db-0", "secret-sa"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let trace = traffic_trace::Trace::read(text.as_bytes()).unwrap();
        assert_eq!(trace.header.replica, "single");
        let c = trace.counts();
        assert_eq!((c.agents, c.connects, c.disconnects), (1, 1, 1));
        assert_eq!(c.requests.get("k8s-api GET pods get"), Some(&1), "{c:?}");
        assert_eq!((c.request_bytes, c.response_bytes), (5, 77));
        assert_eq!((c.views_rows, c.views_bytes), (3, 120));
        assert_eq!(r.records(), 4);

        // Rotation: each part starts with a header and stays readable.
        let small = dir.path().join("small.jsonl");
        let r = recorder(&small, 600, 1.0, "r");
        for i in 0..20 {
            r.views(i, 1, 1);
        }
        let now = traffic_trace::Trace::read(std::fs::read(&small).unwrap().as_slice()).unwrap();
        let old =
            traffic_trace::Trace::read(std::fs::read(rotated_name(&small)).unwrap().as_slice())
                .unwrap();
        assert!(now.header.options.part > old.header.options.part);
        assert!(std::fs::metadata(&small).unwrap().len() <= 600);
        assert!(r.render_metrics().contains("kas_recording_rotations_total"));
    }

    #[test]
    fn sampling_keeps_whole_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let r = recorder(&path, 0, 0.5, "single");
        for agent in 1..=200 {
            r.connected(agent, "c");
            r.disconnected(agent, "c");
        }
        let trace = traffic_trace::Trace::read(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let c = trace.counts();
        assert!((60..140).contains(&c.agents), "{c:?}");
        assert_eq!(c.connects, c.agents);
        assert_eq!(c.disconnects, c.agents);
    }

    #[test]
    fn no_file_no_recorder() {
        assert!(
            Recorder::open(&RecordingConfig::default(), "x")
                .unwrap()
                .is_none()
        );
    }
}
