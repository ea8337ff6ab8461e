//! kas's metrics, written in the Prometheus text exposition format (version 0.0.4).
//!
//! Hand-written rather than with a metrics crate: kas has a dozen series, all known up front, and the
//! format is a few lines of text; this keeps the dependency tree small and the output exactly as
//! documented here. Counters and histograms are updated where things happen ([`Metrics`]); gauges that
//! describe current state (agents, connections, open streams, pending requests) are read from the
//! registry at scrape time and passed in as a [`Snapshot`].
//!
//! | series | type | labels |
//! |---|---|---|
//! | `kas_agents_connected` | gauge | |
//! | `kas_agent_connections` | gauge | |
//! | `kas_agent_connections_accepted_total` | counter | |
//! | `kas_tunnel_open_streams` | gauge | |
//! | `kas_pending_requests` | gauge | |
//! | `kas_requests_rerouted_total` | counter (requests the agent never processed, put back in line by the routing policy) | |
//! | `kas_views_agents` | gauge (agents whose views kas mirrors) | |
//! | `kas_event_subscribers` | gauge (open event streams) | |
//! | `kas_event_subscribers_dropped_total` | counter (event streams dropped as too slow) | |
//! | `kas_http_requests_total` | counter | `route`, `code` |
//! | `kas_http_request_duration_seconds` | histogram (time to response head) | `route` |
//! | `kas_proxied_bytes_total` | counter | `direction` (`in`: client → agent, `out`: agent → client) |
//! | `kas_agent_auth_failures_total` | counter | `reason` |
//! | `kas_user_auth_failures_total` | counter | `reason` |
//! | `kas_agent_misbehaviour_total` | counter (what agents did wrong, [`crate::agent_log`]) | `kind` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Current-state gauges, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Agents with at least one live connection.
    pub agents_connected: u64,
    /// Live agent connections.
    pub connections: u64,
    /// Streams open on all agent connections (both directions).
    pub open_streams: u64,
    /// Requests waiting for an agent connection.
    pub pending_requests: u64,
    /// Requests the routing policy put back in line after an unprocessed attempt, since start.
    pub requests_rerouted: u64,
    /// Agents whose views kas mirrors.
    pub views_agents: u64,
    /// Open event streams.
    pub event_subscribers: u64,
    /// Event streams dropped for being too slow, since start.
    pub event_subscribers_dropped: u64,
}

#[derive(Debug, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; LATENCY_BUCKETS.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Labelled {
    // Routes are static labels: counting a request allocates nothing.
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    agent_auth_failures: BTreeMap<String, u64>,
    user_auth_failures: BTreeMap<String, u64>,
    agent_misbehaviour: BTreeMap<String, u64>,
}

/// Counters and histograms, shared by every task of one kas.
#[derive(Debug, Default)]
pub struct Metrics {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections_accepted: AtomicU64,
    labelled: Mutex<Labelled>,
    /// Shedding between replicas ([`crate::balance`]).
    pub balance: crate::balance::BalanceMetrics,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    fn labelled(&self) -> std::sync::MutexGuard<'_, Labelled> {
        self.labelled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One HTTP request answered with `code` on `route` (counted when the response head is sent).
    pub fn request(&self, route: &'static str, code: u16) {
        *self.labelled().requests.entry((route, code)).or_default() += 1;
    }

    /// [`Metrics::request`] and [`Metrics::latency`] at once (one lock).
    pub fn answered(&self, route: &'static str, code: u16, elapsed: Duration) {
        let mut l = self.labelled();
        *l.requests.entry((route, code)).or_default() += 1;
        l.latency
            .entry(route)
            .or_insert_with(Histogram::new)
            .observe(elapsed.as_secs_f64());
    }

    /// Time from a request's arrival to its response head.
    pub fn latency(&self, route: &'static str, elapsed: Duration) {
        self.labelled()
            .latency
            .entry(route)
            .or_insert_with(Histogram::new)
            .observe(elapsed.as_secs_f64());
    }

    /// Body octets sent from a client to an agent.
    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Body octets sent from an agent to a client.
    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An agent connection was accepted.
    pub fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// An agent failed to authenticate (`reason`: `unauthenticated`, `permission_denied`,
    /// `rate_limited`, `backend`, `shutting_down`).
    pub fn agent_auth_failure(&self, reason: &str) {
        *self
            .labelled()
            .agent_auth_failures
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// An HTTP API request failed authentication or authorisation (`reason`: `unauthenticated`,
    /// `forbidden`, `rate_limited`).
    pub fn user_auth_failure(&self, reason: &str) {
        *self
            .labelled()
            .user_auth_failures
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// An agent misbehaved (`kind`: a [`crate::agent_log::Misbehaviour`] label).
    pub fn agent_misbehaviour(&self, kind: &str) {
        *self
            .labelled()
            .agent_misbehaviour
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Requests counted so far for `route` and `code` (for tests and logs).
    pub fn requests_counted(&self, route: &str, code: u16) -> u64 {
        self.labelled()
            .requests
            .iter()
            .find(|((r, c), _)| *r == route && *c == code)
            .map_or(0, |(_, n)| *n)
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        gauge(
            &mut out,
            "kas_agents_connected",
            "Agents with at least one live tunnel connection.",
            snapshot.agents_connected,
        );
        gauge(
            &mut out,
            "kas_agent_connections",
            "Live agent tunnel connections (draining ones included).",
            snapshot.connections,
        );
        header(
            &mut out,
            "kas_agent_connections_accepted_total",
            "Agent tunnel connections accepted since start.",
            "counter",
        );
        let _ = writeln!(
            out,
            "kas_agent_connections_accepted_total {}",
            self.connections_accepted.load(Ordering::Relaxed)
        );
        gauge(
            &mut out,
            "kas_tunnel_open_streams",
            "Streams open on agent tunnel connections.",
            snapshot.open_streams,
        );
        gauge(
            &mut out,
            "kas_pending_requests",
            "Requests waiting for an agent connection.",
            snapshot.pending_requests,
        );
        header(
            &mut out,
            "kas_requests_rerouted_total",
            "Requests the agent never processed (refused, or the connection was going away), put back in line.",
            "counter",
        );
        let _ = writeln!(
            out,
            "kas_requests_rerouted_total {}",
            snapshot.requests_rerouted
        );
        gauge(
            &mut out,
            "kas_views_agents",
            "Agents whose views kas mirrors (connected or not).",
            snapshot.views_agents,
        );
        gauge(
            &mut out,
            "kas_event_subscribers",
            "Open event streams (Server-Sent Events).",
            snapshot.event_subscribers,
        );
        header(
            &mut out,
            "kas_event_subscribers_dropped_total",
            "Event streams dropped because their client did not keep up.",
            "counter",
        );
        let _ = writeln!(
            out,
            "kas_event_subscribers_dropped_total {}",
            snapshot.event_subscribers_dropped
        );
        header(
            &mut out,
            "kas_proxied_bytes_total",
            "Body octets proxied through tunnels (in: client to agent, out: agent to client).",
            "counter",
        );
        let _ = writeln!(
            out,
            "kas_proxied_bytes_total{{direction=\"in\"}} {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "kas_proxied_bytes_total{{direction=\"out\"}} {}",
            self.bytes_out.load(Ordering::Relaxed)
        );

        let l = self.labelled();
        header(
            &mut out,
            "kas_http_requests_total",
            "HTTP API requests by route and response status code.",
            "counter",
        );
        for ((route, code), n) in &l.requests {
            let _ = writeln!(
                out,
                "kas_http_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
                escape(route)
            );
        }
        header(
            &mut out,
            "kas_http_request_duration_seconds",
            "Time from an HTTP API request's arrival to its response head.",
            "histogram",
        );
        for (route, h) in &l.latency {
            let route = escape(route);
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "kas_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "kas_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "kas_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "kas_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        header(
            &mut out,
            "kas_agent_auth_failures_total",
            "Failed agent authentications by reason.",
            "counter",
        );
        for (reason, n) in &l.agent_auth_failures {
            let _ = writeln!(
                out,
                "kas_agent_auth_failures_total{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        header(
            &mut out,
            "kas_user_auth_failures_total",
            "Failed HTTP API authentications and authorisations by reason.",
            "counter",
        );
        for (reason, n) in &l.user_auth_failures {
            let _ = writeln!(
                out,
                "kas_user_auth_failures_total{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        header(
            &mut out,
            "kas_agent_misbehaviour_total",
            "Things agents did wrong, by kind (each is logged at most once a minute per agent and kind).",
            "counter",
        );
        for (kind, n) in &l.agent_misbehaviour {
            let _ = writeln!(
                out,
                "kas_agent_misbehaviour_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        out.push_str(&self.balance.render());
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value (backslash, double quote, line feed).
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        m.request("k8s-proxy", 200);
        m.request("k8s-proxy", 200);
        m.request("k8s-proxy", 503);
        m.latency("k8s-proxy", Duration::from_millis(3));
        m.latency("k8s-proxy", Duration::from_secs(100));
        m.bytes_in(10);
        m.bytes_out(32);
        m.agent_auth_failure("unauthenticated");
        let text = m.render(&Snapshot {
            agents_connected: 2,
            connections: 3,
            open_streams: 4,
            pending_requests: 1,
            requests_rerouted: 8,
            views_agents: 5,
            event_subscribers: 6,
            event_subscribers_dropped: 7,
        });
        for line in [
            "kas_agents_connected 2",
            "kas_agent_connections 3",
            "kas_tunnel_open_streams 4",
            "kas_pending_requests 1",
            "kas_requests_rerouted_total 8",
            "kas_views_agents 5",
            "kas_event_subscribers 6",
            "kas_event_subscribers_dropped_total 7",
            "kas_http_requests_total{route=\"k8s-proxy\",code=\"200\"} 2",
            "kas_http_requests_total{route=\"k8s-proxy\",code=\"503\"} 1",
            "kas_http_request_duration_seconds_bucket{route=\"k8s-proxy\",le=\"0.0025\"} 0",
            "kas_http_request_duration_seconds_bucket{route=\"k8s-proxy\",le=\"0.005\"} 1",
            "kas_http_request_duration_seconds_bucket{route=\"k8s-proxy\",le=\"60\"} 1",
            "kas_http_request_duration_seconds_bucket{route=\"k8s-proxy\",le=\"+Inf\"} 2",
            "kas_http_request_duration_seconds_count{route=\"k8s-proxy\"} 2",
            "kas_proxied_bytes_total{direction=\"in\"} 10",
            "kas_proxied_bytes_total{direction=\"out\"} 32",
            "kas_agent_auth_failures_total{reason=\"unauthenticated\"} 1",
            "# TYPE kas_http_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(m.requests_counted("k8s-proxy", 200), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
