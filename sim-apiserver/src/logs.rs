//! Pod logs (`/api/v1/namespaces/{ns}/pods/{name}/log`): fake but deterministic log lines.
//!
//! A running container "writes" line `k` at `startedAt + k × interval`, so the log is a pure
//! function of the pod and the clock: no per-pod state, and `tailLines`, `sinceSeconds` and
//! `follow` all fall out of the arithmetic. Following ends when the pod stops running or is
//! deleted, as with a real container. At most [`RETAINED_LINES`] lines are kept (older ones
//! have "rotated away").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::objects::{PodPhase, name_hash};
use super::resource::known;
use super::status::ApiError;
use super::store::Store;
use super::time;

/// Lines kept per container.
pub const RETAINED_LINES: u64 = 10_000;

/// Query parameters of a log request.
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    /// `container`: required when the pod has several containers.
    pub container: Option<String>,
    /// `follow`: keep streaming new lines.
    pub follow: bool,
    /// `tailLines`: only the last N lines.
    pub tail_lines: Option<u64>,
    /// `sinceSeconds`: only lines newer than this.
    pub since_seconds: Option<u64>,
    /// `timestamps`: prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// `limitBytes`: stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// A log response body.
pub enum LogBody {
    /// The whole (bounded) log.
    Complete(String),
    /// A followed log: lines arrive as they are written.
    Stream(mpsc::Receiver<Bytes>),
}

#[derive(Clone)]
struct Timeline {
    pod: String,
    container: String,
    start_ms: u128,
    end_ms: Option<u128>,
    interval_ms: u128,
}

const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "INFO", "DEBUG", "WARN"];
const PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/api/items",
    "/api/orders",
    "/metrics",
    "/login",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE"];

impl Timeline {
    fn at_ms(&self, k: u64) -> u128 {
        self.start_ms + u128::from(k) * self.interval_ms
    }

    /// Number of lines written by `now_ms`.
    fn written_by(&self, now_ms: u128) -> u64 {
        let until = self.end_ms.map_or(now_ms, |e| e.min(now_ms));
        if until < self.start_ms {
            return 0;
        }
        u64::try_from((until - self.start_ms) / self.interval_ms + 1).unwrap_or(u64::MAX)
    }

    fn line(&self, k: u64, timestamps: bool) -> String {
        let t =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(self.at_ms(k)).unwrap_or(u64::MAX));
        // FNV alone mixes the last bytes poorly; finish with splitmix64.
        let mut h = name_hash(&format!("{}/{}/{k}", self.pod, self.container));
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let pick = |xs: &[&'static str], shift: u32| xs[((h >> shift) % xs.len() as u64) as usize];
        let status = if pick(LEVELS, 40) == "WARN" { 503 } else { 200 };
        let text = format!(
            "{} {} {} handled request id={k} method={} path={} status={status} latency_ms={}",
            time::format_nanos(t)
                .get(..23)
                .map(|s| format!("{s}Z"))
                .unwrap_or_default(),
            pick(LEVELS, 40),
            self.container,
            pick(METHODS, 8),
            pick(PATHS, 16),
            (h >> 24) % 250 + 1,
        );
        if timestamps {
            format!("{} {text}\n", time::format_nanos(t))
        } else {
            format!("{text}\n")
        }
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn timeline(pod: &Value, container: &str, interval: Duration) -> Result<Timeline, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let status = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container));
    let state = status.and_then(|s| s.get("state"));
    let ts = |p: &str| {
        state
            .and_then(|s| s.pointer(p))
            .and_then(Value::as_str)
            .and_then(time::parse_rfc3339)
            .map(|s| u128::try_from(s).unwrap_or(0) * 1000)
    };
    let (start_ms, end_ms) = if let Some(s) = ts("/running/startedAt") {
        (s, None)
    } else if let Some(s) = ts("/terminated/startedAt") {
        // Timestamps have second precision: the container ran until the end of that second
        // at the latest (lines after that were never written).
        (s, Some(ts("/terminated/finishedAt").unwrap_or(s) + 999))
    } else {
        let reason = state
            .and_then(|s| s.pointer("/waiting/reason"))
            .and_then(Value::as_str)
            .unwrap_or("ContainerCreating");
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    };
    Ok(Timeline {
        pod: name.to_string(),
        container: container.to_string(),
        start_ms,
        end_ms,
        interval_ms: interval.as_millis().max(1),
    })
}

fn choose_container(pod: &Value, wanted: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    match wanted {
        Some(c) if containers.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "pod {name} has no containers"
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Answers a log request for pod `namespace/name`.
pub fn pod_logs(
    store: &Store,
    namespace: &str,
    name: &str,
    req: &LogRequest,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<LogBody, ApiError> {
    let pod = store.get_object(&known::pod(), Some(namespace), name)?;
    let container = choose_container(&pod, req.container.as_deref())?;
    let tl = timeline(&pod, &container, interval)?;
    let now = now_ms();
    let written = tl.written_by(now);
    let mut first = written.saturating_sub(RETAINED_LINES);
    if let Some(since) = req.since_seconds {
        let cutoff = now.saturating_sub(u128::from(since) * 1000);
        if cutoff > tl.start_ms {
            let k = (cutoff - tl.start_ms).div_ceil(tl.interval_ms);
            first = first.max(u64::try_from(k).unwrap_or(u64::MAX).min(written));
        }
    }
    if let Some(tail) = req.tail_lines {
        first = first.max(written.saturating_sub(tail));
    }
    let mut budget = req.limit_bytes.unwrap_or(usize::MAX);
    let mut text = String::new();
    for k in first..written {
        let line = tl.line(k, req.timestamps);
        if line.len() > budget {
            text.push_str(line.get(..budget).unwrap_or(""));
            budget = 0;
            break;
        }
        budget -= line.len();
        text.push_str(&line);
    }
    if !req.follow || budget == 0 || tl.end_ms.is_some() {
        return Ok(LogBody::Complete(text));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let store = store.clone();
    let namespace = namespace.to_string();
    let name = name.to_string();
    let timestamps = req.timestamps;
    tokio::spawn(async move {
        if !text.is_empty() && tx.send(Bytes::from(text)).await.is_err() {
            return;
        }
        let mut next = written;
        let mut budget = budget;
        loop {
            let due = tl.at_ms(next);
            let wait =
                Duration::from_millis(u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0));
            tokio::select! {
                _ = shutdown.changed() => break,
                () = tx.closed() => break,
                () = tokio::time::sleep(wait) => {}
            }
            // Stop following once the container stops running (or the pod is gone).
            let running = store
                .get_object(&known::pod(), Some(&namespace), &name)
                .ok()
                .is_some_and(|p| PodPhase::of(&p) == PodPhase::Running);
            if !running {
                break;
            }
            let line = tl.line(next, timestamps);
            next += 1;
            let line = if line.len() > budget {
                line.get(..budget).unwrap_or("").to_string()
            } else {
                line
            };
            budget -= line.len();
            if tx.send(Bytes::from(line)).await.is_err() || budget == 0 {
                break;
            }
        }
    });
    Ok(LogBody::Stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn setup() -> (Store, watch::Sender<bool>, watch::Receiver<bool>) {
        let s = Store::new(StoreConfig::default());
        s.add_namespace("default").unwrap_or_else(|e| panic!("{e}"));
        s.add_node("n1").unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = watch::channel(false);
        (s, tx, rx)
    }

    #[tokio::test]
    async fn tail_and_follow() {
        let (s, _tx, sd) = setup();
        s.add_pod("default", "p").unwrap_or_else(|e| panic!("{e}"));
        // Backdate the start so there is history to tail.
        let started = time::format_unix(time::unix_seconds(SystemTime::now()) - 30);
        s.modify("v1", "Pod", Some("default"), "p", |p| {
            p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] =
                serde_json::json!(started);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let req = LogRequest {
            tail_lines: Some(3),
            timestamps: true,
            ..Default::default()
        };
        let LogBody::Complete(text) =
            pod_logs(&s, "default", "p", &req, Duration::from_secs(1), sd.clone())
                .unwrap_or_else(|e| panic!("{e}"))
        else {
            panic!("not following: expected a complete body")
        };
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| l.contains("handled request")));
        let all = LogRequest::default();
        let LogBody::Complete(all_text) =
            pod_logs(&s, "default", "p", &all, Duration::from_secs(1), sd.clone())
                .unwrap_or_else(|e| panic!("{e}"))
        else {
            panic!("expected a complete body")
        };
        assert!(all_text.lines().count() >= 30);

        let follow = LogRequest {
            follow: true,
            tail_lines: Some(0),
            ..Default::default()
        };
        let LogBody::Stream(mut rx) = pod_logs(
            &s,
            "default",
            "p",
            &follow,
            Duration::from_millis(20),
            sd.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}")) else {
            panic!("expected a stream")
        };
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .ok()
            .flatten();
        assert!(line.is_some_and(|l| String::from_utf8_lossy(&l).contains("handled request")));
        s.set_pod_phase("default", "p", PodPhase::Succeeded)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut ended = false;
        for _ in 0..10_000 {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        assert!(ended, "following must end when the container stops");
    }

    #[test]
    fn errors() {
        let (s, _tx, sd) = setup();
        s.add_pod("default", "p").unwrap_or_else(|e| panic!("{e}"));
        s.set_pod_phase("default", "p", PodPhase::Pending)
            .unwrap_or_else(|e| panic!("{e}"));
        let e = pod_logs(
            &s,
            "default",
            "p",
            &LogRequest::default(),
            Duration::from_secs(1),
            sd.clone(),
        )
        .err();
        assert!(e.is_some_and(|e| e.code == 400 && e.message.contains("waiting to start")));
        let e = pod_logs(
            &s,
            "default",
            "nope",
            &LogRequest::default(),
            Duration::from_secs(1),
            sd.clone(),
        )
        .err();
        assert!(e.is_some_and(|e| e.code == 404));
        let req = LogRequest {
            container: Some("other".into()),
            ..Default::default()
        };
        let e = pod_logs(&s, "default", "p", &req, Duration::from_secs(1), sd).err();
        assert!(e.is_some_and(|e| e.code == 400));
    }
}
