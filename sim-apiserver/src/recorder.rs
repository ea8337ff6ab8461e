//! Records core `v1` `Event`s about simulated activity (scheduling, starts, exits, node
//! readiness), keeping at most a fixed number so a long churn run does not grow without bound;
//! and the API requests the server received ([`RequestRecorder`]), so tests can count the calls a
//! client makes (e.g. that a cache really spares the API server).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::objects;
use super::store::Store;

struct State {
    seq: u64,
    recorded: VecDeque<(String, String)>,
}

/// Creates events in the store, deleting the oldest beyond a cap.
#[derive(Clone)]
pub struct EventRecorder {
    store: Store,
    cap: usize,
    state: Arc<Mutex<State>>,
}

impl EventRecorder {
    /// A recorder keeping at most `cap` events.
    pub fn new(store: Store, cap: usize) -> Self {
        Self {
            store,
            cap: cap.max(1),
            state: Arc::new(Mutex::new(State {
                seq: 0,
                recorded: VecDeque::new(),
            })),
        }
    }

    /// Records an event of `event_type` (`Normal`/`Warning`) about `involved`.
    pub fn record(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.seq += 1;
        let ev = objects::event(involved, event_type, reason, message, st.seq);
        match self.store.create(ev) {
            Ok(created) => {
                let ns = created
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let name = created
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                st.recorded.push_back((ns, name));
            }
            Err(e) => tracing::debug!(error = %e, reason, "could not record event"),
        }
        while st.recorded.len() > self.cap {
            if let Some((ns, name)) = st.recorded.pop_front() {
                // Already gone (e.g. its namespace was deleted) is fine.
                let _ = self.store.delete("v1", "Event", Some(&ns), &name);
            }
        }
    }
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
}

/// The most recent requests the server received (at most a fixed number, oldest dropped first)
/// and how many it received in all.
#[derive(Clone)]
pub struct RequestRecorder {
    cap: usize,
    state: Arc<Mutex<(u64, VecDeque<RecordedRequest>)>>,
}

impl RequestRecorder {
    /// A recorder keeping the last `cap` requests.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            state: Arc::default(),
        }
    }

    /// Records a request.
    pub fn record(&self, method: &http::Method, uri: &http::Uri) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.0 += 1;
        if st.1.len() >= self.cap {
            st.1.pop_front();
        }
        st.1.push_back(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
        });
    }

    /// The recorded requests, oldest first, and the number received in all.
    pub fn snapshot(&self) -> (u64, Vec<RecordedRequest>) {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (st.0, st.1.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use serde_json::json;

    #[test]
    fn records_the_last_requests() {
        let r = RequestRecorder::new(2);
        for path in ["/a", "/b?x=1", "/c"] {
            r.record(&http::Method::GET, &path.parse().expect("uri"));
        }
        let (total, kept) = r.snapshot();
        assert_eq!(total, 3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].path, "/b");
        assert_eq!(kept[0].query.as_deref(), Some("x=1"));
        assert_eq!(kept[1].path, "/c");
    }

    #[test]
    fn caps_events() {
        let s = Store::new(StoreConfig::default());
        s.add_namespace("default").unwrap_or_else(|e| panic!("{e}"));
        let rec = EventRecorder::new(s.clone(), 3);
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "default"}});
        for i in 0..10 {
            rec.record(&pod, "Normal", "Test", &format!("event {i}"));
        }
        let events = s.list("v1", "Event", Some("default"));
        assert_eq!(events.len(), 3);
        assert!(events.iter().any(|e| e["message"] == "event 9"));
        assert!(!events.iter().any(|e| e["message"] == "event 0"));
    }
}
