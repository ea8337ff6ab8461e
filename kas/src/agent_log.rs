//! What agents do wrong, logged without letting an agent flood kas's log.
//!
//! An agent controls how often it misbehaves (20,000 streams for an unknown service take it a fraction
//! of a second), so each misbehaviour is counted in metrics (`kas_agent_misbehaviour_total{kind}`) but
//! logged at most once per [`LOG_INTERVAL`] per agent and kind: the first occurrence is logged with
//! its details; later ones within the interval are only counted, and the next line (the next
//! occurrence after the interval, or [`AgentLog::flush`] when the agent disconnects) says how many were
//! left out and shows the last of them. So a misbehaving agent costs at most two lines per kind per
//! interval, and nothing it does is invisible.
//!
//! The table of (agent, kind) entries is bounded ([`MAX_ENTRIES`]); when it is full, entries whose
//! interval ended are dropped first, and if none has, the new occurrence is only counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// At most one line per agent and kind per interval (plus one summary).
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Most (agent, kind) entries remembered.
pub const MAX_ENTRIES: usize = 10_000;

/// Longest sample kept and logged, in characters.
const MAX_SAMPLE: usize = 200;

/// Ways an agent can misbehave that kas notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Misbehaviour {
    /// Opened a stream for a service kas does not offer.
    UnknownService,
    /// Broke the views protocol, or opened a views stream kas could not take.
    ViewsStream,
    /// Answered a request with a head kas cannot relay (bad status, bad `Content-Length`).
    BadResponseHead,
    /// Sent a body that contradicts its response head.
    BadResponseBody,
    /// Was closed for flooding (PROTOCOL.md §17: too many costly frames, unread answers).
    Flood,
    /// Broke the gitops protocol (bad head, undecodable message or report).
    GitopsStream,
    /// Broke the config protocol, or opened a config stream kas could not take.
    ConfigStream,
}

impl Misbehaviour {
    /// Every kind.
    pub const ALL: [Misbehaviour; 7] = [
        Misbehaviour::UnknownService,
        Misbehaviour::ViewsStream,
        Misbehaviour::BadResponseHead,
        Misbehaviour::BadResponseBody,
        Misbehaviour::Flood,
        Misbehaviour::GitopsStream,
        Misbehaviour::ConfigStream,
    ];

    /// The `kind` label in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Misbehaviour::UnknownService => "unknown_service",
            Misbehaviour::ViewsStream => "views_stream",
            Misbehaviour::BadResponseHead => "bad_response_head",
            Misbehaviour::BadResponseBody => "bad_response_body",
            Misbehaviour::Flood => "flood",
            Misbehaviour::GitopsStream => "gitops_stream",
            Misbehaviour::ConfigStream => "config_stream",
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// When the last line for this entry was logged.
    logged_at: Instant,
    /// Occurrences since then that were not logged, and the last of them.
    suppressed: u64,
    last_sample: String,
}

/// The rate-limited, aggregating log of agents' misbehaviour; shared by every task of one kas.
#[derive(Debug)]
pub struct AgentLog {
    metrics: Arc<Metrics>,
    interval: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<(u64, Misbehaviour), Entry>>,
}

fn sample(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_SAMPLE).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

impl AgentLog {
    /// A log counting into `metrics`, with the default interval and table size.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_limits(metrics, LOG_INTERVAL, MAX_ENTRIES)
    }

    /// A log with its own interval and table size (tests).
    pub fn with_limits(metrics: Arc<Metrics>, interval: Duration, max_entries: usize) -> Self {
        AgentLog {
            metrics,
            interval,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, Misbehaviour), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Agent `agent_id` misbehaved as `kind`; `detail` says how (never a credential).
    pub fn warn(&self, agent_id: u64, kind: Misbehaviour, detail: &str) {
        self.warn_at(agent_id, kind, detail, Instant::now());
    }

    /// [`AgentLog::warn`] as of `now`; returns whether a line was logged.
    pub fn warn_at(&self, agent_id: u64, kind: Misbehaviour, detail: &str, now: Instant) -> bool {
        self.metrics.agent_misbehaviour(kind.label());
        let mut entries = self.lock();
        let interval = self.interval;
        if let Some(e) = entries.get_mut(&(agent_id, kind)) {
            if now.saturating_duration_since(e.logged_at) < interval {
                e.suppressed += 1;
                e.last_sample = sample(detail);
                return false;
            }
            let suppressed = std::mem::take(&mut e.suppressed);
            e.logged_at = now;
            e.last_sample.clear();
            drop(entries);
            tracing::warn!(
                agent_id,
                kind = kind.label(),
                detail = %sample(detail),
                suppressed_before = suppressed,
                "agent misbehaved"
            );
            return true;
        }
        if entries.len() >= self.max_entries {
            entries.retain(|_, e| now.saturating_duration_since(e.logged_at) < interval);
            if entries.len() >= self.max_entries {
                return false;
            }
        }
        entries.insert(
            (agent_id, kind),
            Entry {
                logged_at: now,
                suppressed: 0,
                last_sample: String::new(),
            },
        );
        drop(entries);
        tracing::warn!(
            agent_id,
            kind = kind.label(),
            detail = %sample(detail),
            "agent misbehaved (further occurrences are counted and summarised)"
        );
        true
    }

    /// Logs what was left out for `agent_id` (one line per kind with suppressed occurrences) and
    /// forgets its entries; called when an agent's connection ends. Returns the lines logged.
    pub fn flush(&self, agent_id: u64) -> usize {
        let gone: Vec<(Misbehaviour, Entry)> = {
            let mut entries = self.lock();
            Misbehaviour::ALL
                .iter()
                .filter_map(|k| entries.remove(&(agent_id, *k)).map(|e| (*k, e)))
                .collect()
        };
        let mut lines = 0;
        for (kind, e) in gone.into_iter().filter(|(_, e)| e.suppressed > 0) {
            lines += 1;
            tracing::warn!(
                agent_id,
                kind = kind.label(),
                suppressed = e.suppressed,
                last_detail = %e.last_sample,
                "agent misbehaved more often than logged"
            );
        }
        lines
    }

    /// Entries in the table (tests).
    pub fn entries(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn log(max_entries: usize) -> AgentLog {
        AgentLog::with_limits(
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
            max_entries,
        )
    }

    #[test]
    fn twenty_thousand_occurrences_are_one_line_until_the_interval_ends() {
        let l = log(100);
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..20_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            lines += usize::from(l.warn_at(7, Misbehaviour::UnknownService, "svc x", now));
        }
        assert_eq!(lines, 1);
        // Another kind, another agent: their own lines.
        assert!(l.warn_at(7, Misbehaviour::ViewsStream, "bad", t0));
        assert!(l.warn_at(8, Misbehaviour::UnknownService, "svc", t0));
        // After the interval: one line again (carrying the count left out).
        assert!(l.warn_at(
            7,
            Misbehaviour::UnknownService,
            "svc y",
            t0 + Duration::from_secs(61)
        ));
        // Every occurrence is counted in metrics.
        let text = l.metrics.render(&Default::default());
        assert!(
            text.contains("kas_agent_misbehaviour_total{kind=\"unknown_service\"} 20002"),
            "{text}"
        );
    }

    #[test]
    fn flush_summarises_what_was_left_out_and_forgets_the_agent() {
        let l = log(100);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.warn_at(3, Misbehaviour::BadResponseHead, "status 999", t0);
        }
        l.warn_at(3, Misbehaviour::Flood, "pings", t0);
        assert_eq!(l.flush(3), 1, "only the kind with suppressed occurrences");
        assert_eq!(l.entries(), 0);
        assert_eq!(l.flush(3), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let l = log(10);
        let t0 = Instant::now();
        for agent in 0..1000 {
            l.warn_at(agent, Misbehaviour::UnknownService, "x", t0);
            assert!(l.entries() <= 10);
        }
        // Once the interval ended, old entries make room.
        assert!(l.warn_at(
            5000,
            Misbehaviour::UnknownService,
            "x",
            t0 + Duration::from_secs(61)
        ));
    }

    #[test]
    fn samples_are_truncated() {
        let long = "x".repeat(10_000);
        assert!(sample(&long).chars().count() <= MAX_SAMPLE + 1);
    }
}
