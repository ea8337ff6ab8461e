//! Records core `v1` `Event`s about simulated activity (scheduling, starts, exits, node
//! readiness), keeping at most a fixed number so a long churn run does not grow without bound.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use serde_json::json;

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
