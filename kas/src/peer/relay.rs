//! Cluster-wide events: every replica's event hub also carries the events the other replicas
//! publish, so `/api/v1/events` (every agent) and `/api/v1/agents/{id}/events` on any replica show
//! the events of agents held anywhere.
//!
//! While this replica's hub has at least one subscriber (other than the relays themselves), it holds
//! one relay stream per other live replica (the replicas' directory in Redis): a private API
//! request (`x-kas-op: events`) whose answer is every event the holder publishes itself, one per
//! line (`<kind> <agent id> <data JSON>`), with an empty line as heartbeat. Each line is published
//! into this hub as relayed ([`crate::events::EventHub::publish_relayed`]). A relayed event is never
//! relayed again (the holder's relay subscription takes local events only): one hop, no loops.
//!
//! Relays start within [`CHECK`] of the first subscriber (events of other replicas before that are
//! not shown; SSE events are not replayed anyway), end within [`CHECK`] of the last one leaving,
//! and restart within [`CHECK`] when one ends (replica gone, relay dropped as too slow, the
//! connection silent for [`SILENCE`]). Event ids are this hub's: a relayed event gets the next id
//! here. An agent connected to two replicas has its `agent` events from each (`connected` means
//! its first connection on that replica; see docs/replicas.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use protocol::routing::ReplicaId;

use crate::api::response::{ApiError, BodyError, ErrorStyle, ResponseBody};
use crate::events::{Owner, Subscription};
use crate::state::KasState;

/// How often the relays are checked against the subscribers and the live replicas.
pub const CHECK: Duration = Duration::from_millis(500);

/// A relay stream silent this long (no event, no heartbeat) is taken as dead and restarted.
pub const SILENCE: Duration = Duration::from_secs(45);

/// How often the holder side writes a heartbeat line.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The longest line taken from a relay stream (a longer one ends the relay: the holder misbehaved).
const MAX_LINE: usize = 4 * 1024 * 1024;

/// The holder side: a relay stream of every event published here for the replica `from`.
pub(super) fn serve(state: &KasState, from: &str) -> Response<ResponseBody> {
    let sub = match state
        .events
        .subscribe_local(Owner::internal(&format!("relay to replica {from}")))
    {
        Ok(sub) => sub,
        Err(e) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                .into_response(ErrorStyle::Plain);
        }
    };
    struct Serving {
        sub: Subscription,
        heartbeat: smol::Timer,
    }
    let serving = Serving {
        sub,
        heartbeat: smol::Timer::interval(HEARTBEAT),
    };
    let lines = futures_lite::stream::unfold(serving, |mut s| async move {
        use futures_lite::StreamExt as _;
        let next = futures_lite::future::or(async { Some(s.sub.recv().await) }, async {
            s.heartbeat.next().await;
            None
        })
        .await;
        let bytes = match next {
            Some(Some(p)) => Bytes::from(format!("{} {} {}\n", p.kind, p.agent_id, p.data)),
            // Heartbeat.
            None => Bytes::from_static(b"\n"),
            // Dropped as too slow, or kas is stopping: the relay reconnects.
            Some(None) => return None,
        };
        Some((Ok::<_, BodyError>(Frame::data(bytes)), s))
    });
    let mut resp = Response::new(StreamBody::new(lines).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Publishes one relay line into this hub; `false` for a line that is not one.
fn publish_line(state: &KasState, line: &[u8]) -> bool {
    if line.is_empty() {
        return true;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = line.splitn(3, ' ');
    let (Some(kind), Some(agent), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(agent_id) = agent.parse::<u64>() else {
        return false;
    };
    // An unknown kind (a newer replica's) is left out, not an error.
    let _ = state
        .events
        .publish_relayed(kind, agent_id, data.to_owned());
    true
}

/// One relay stream from `replica`, until it ends, fails, falls silent, or `cancel` closes.
async fn relay_one(
    state: Arc<KasState>,
    replica: ReplicaId,
    cancel: async_channel::Receiver<()>,
) -> Result<(), String> {
    let Some(r) = &state.replicas else {
        return Ok(());
    };
    let resp = r.peers.open_events(&state, replica).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{replica} answered {}", resp.status()));
    }
    tracing::debug!(%replica, "event relay up");
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    enum Got {
        Frame(Option<Result<Frame<Bytes>, hyper::Error>>),
        Silent,
        Cancelled,
    }
    // Bounded by the stream: every iteration takes a frame, or the relay ends.
    loop {
        let got = futures_lite::future::or(
            futures_lite::future::or(async { Got::Frame(body.frame().await) }, async {
                smol::Timer::after(SILENCE).await;
                Got::Silent
            }),
            async {
                let _ = cancel.recv().await;
                Got::Cancelled
            },
        )
        .await;
        let data = match got {
            Got::Cancelled => return Ok(()),
            Got::Silent => return Err(format!("{replica} silent for {SILENCE:?}")),
            Got::Frame(None) => return Err(format!("{replica} ended the relay")),
            Got::Frame(Some(Err(e))) => return Err(format!("{replica}: {e}")),
            Got::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        pending.extend_from_slice(&data);
        // Bounded: each round takes one line out of `pending`.
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !publish_line(&state, &line[..end]) {
                return Err(format!("{replica} sent a line that is not an event"));
            }
        }
        if pending.len() > MAX_LINE {
            return Err(format!("{replica} sent a line over {MAX_LINE} bytes"));
        }
    }
}

/// A running relay: closing `cancel` ends it; `ended` is set when it ended on its own.
struct Running {
    cancel: async_channel::Sender<()>,
    ended: Arc<AtomicBool>,
}

/// Keeps one relay per other live replica while the hub has subscribers (see the module
/// documentation), until `stop` closes.
pub async fn run(state: Arc<KasState>, stop: async_channel::Receiver<()>) {
    let Some(r) = state.replicas.clone() else {
        return;
    };
    let me = r.tracker.replica();
    let mut running: BTreeMap<ReplicaId, Running> = BTreeMap::new();
    // Bounded by `stop`: every iteration waits one check period or ends.
    loop {
        let wanted: Vec<_> = if state.events.relay_subscribers() > 0 {
            r.tracker
                .replicas()
                .into_iter()
                .filter(|e| e.replica != me)
                .collect()
        } else {
            Vec::new()
        };
        // Ended relays and relays to replicas no longer wanted go; missing ones start.
        running.retain(|id, relay| {
            !relay.ended.load(Ordering::SeqCst) && wanted.iter().any(|e| e.replica == *id)
        });
        r.peers.learn(&wanted);
        for entry in wanted {
            if running.contains_key(&entry.replica) {
                continue;
            }
            let (cancel, cancelled) = async_channel::bounded(1);
            let ended = Arc::new(AtomicBool::new(false));
            let (state2, ended2, replica) = (state.clone(), ended.clone(), entry.replica);
            state.spawner.spawn_detached(async move {
                if let Err(e) = relay_one(state2, replica, cancelled).await {
                    tracing::info!(%replica, error = %e, "event relay ended; restarting");
                }
                ended2.store(true, Ordering::SeqCst);
            });
            running.insert(entry.replica, Running { cancel, ended });
        }
        r.peers.set_relays(running.len());
        let stopped = futures_lite::future::or(
            async {
                smol::Timer::after(CHECK).await;
                false
            },
            async {
                let _ = stop.recv().await;
                true
            },
        )
        .await;
        if stopped {
            break;
        }
    }
    for relay in running.values() {
        relay.cancel.close();
    }
}
