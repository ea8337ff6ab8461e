//! The live view of a run (`simulator run … --serve ADDR`): a page in the browser that shows the
//! run as it goes — replicas with their connections, streams, memory and request rates, agents
//! connected, reconnecting and down, the scenario's faults on a timeline with what actually happened
//! (crashes, restarts, rolling restarts), and the invariants' status — and that can pause the run,
//! step it event by event and resume it.
//!
//! Three parts:
//! - [`Live`], the handle shared by the run and the server: the control (paused, steps to go,
//!   speed) and the latest [`Snapshot`], as JSON.
//! - [`Recorder`], inside the [`World`]: after each event it honours the control (blocks while
//!   paused, counts steps, paces the run to `speed`×) and, at most ten times a wall-clock second (and
//!   whenever it stops), publishes a snapshot. It only *reads* the world and never touches its RNG,
//!   queue or trace, so a run has the same trace hash with and without a live view (tested in
//!   `simulator/tests/live_view.rs`). Like [`progress`](super::progress), it reads the wall clock,
//!   which is why it stays outside the simulation proper.
//! - [`serve`]: a small blocking HTTP server (`tiny_http`) on its own thread: `GET /` the page,
//!   `GET /state` the snapshot, `POST /control?action=pause|run|step[&n=N][&speed=X]`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::clock::SimTime;
use super::invariants::{INVARIANTS, Violation};
use super::kas::KasState;
use super::scenario::{Fault, Scenario};
use super::world::{Ev, Outcome, RunOptions, World};

/// The page (static; it reads `/state` and posts to `/control`).
const PAGE: &str = include_str!("live.html");
/// The most snapshots per wall-clock second while running.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Points kept per curve (older ones are thinned out, every other one dropped).
const HISTORY_POINTS: usize = 600;
/// Timeline entries kept (the oldest go first).
const TIMELINE_ENTRIES: usize = 500;
/// How long the paused loop waits before looking at the control again.
const PAUSE_POLL: Duration = Duration::from_millis(200);

/// How a live run starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveOptions {
    /// Start paused (before the first event's effects are shown, after it ran).
    pub paused: bool,
    /// Simulated seconds per wall-clock second (`None`: as fast as it goes).
    pub speed: Option<f64>,
}

/// What the run is told to do.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Control {
    pub paused: bool,
    /// Events still to run while paused.
    pub steps: u64,
    pub speed: Option<f64>,
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
    snapshot: Mutex<String>,
}

/// The handle the run and the server share (cheap to clone).
#[derive(Debug, Clone)]
pub struct Live {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Neither side panics while holding a lock; if one did, the data is still plain values.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Live {
    pub fn new(options: LiveOptions) -> Live {
        Live {
            shared: Arc::new(Shared {
                control: Mutex::new(Control {
                    paused: options.paused,
                    steps: 0,
                    speed: options.speed.filter(|s| *s > 0.0),
                }),
                changed: Condvar::new(),
                snapshot: Mutex::new(String::from("{\"state\":\"starting\"}")),
            }),
        }
    }

    /// The latest snapshot, as JSON.
    pub fn snapshot_json(&self) -> String {
        lock(&self.shared.snapshot).clone()
    }

    pub fn control(&self) -> Control {
        *lock(&self.shared.control)
    }

    /// Applies a control action: `pause`, `run`, or `step` (run `n` more events, then stay paused).
    pub fn apply(&self, action: &str, n: u64, speed: Option<f64>) -> Result<Control, String> {
        let mut c = lock(&self.shared.control);
        match action {
            "pause" => {
                c.paused = true;
                c.steps = 0;
            }
            "run" => {
                c.paused = false;
                c.steps = 0;
            }
            "step" => {
                c.paused = true;
                c.steps = c.steps.saturating_add(n.max(1));
            }
            "speed" => {}
            other => {
                return Err(format!(
                    "unknown action {other:?} (pause, run, step, speed)"
                ));
            }
        }
        if let Some(s) = speed {
            c.speed = (s > 0.0 && s.is_finite()).then_some(s);
        }
        let out = *c;
        drop(c);
        self.shared.changed.notify_all();
        Ok(out)
    }

    fn publish(&self, json: String) {
        *lock(&self.shared.snapshot) = json;
    }
}

/// Runs a scenario with a live view attached (otherwise exactly [`super::run`]).
pub fn run(scenario: Scenario, options: RunOptions, live: &Live) -> Outcome {
    let mut world = World::new(scenario, options);
    world.live = Some(Recorder::new(live.clone(), &world));
    world.run()
}

// ---------------------------------------------------------------- the snapshot

/// One replica as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub index: usize,
    /// `up`, `draining`, `down` or `down-silent` (the host does not answer).
    pub status: &'static str,
    pub incarnation: u32,
    pub restarts: u32,
    /// Accepted agent connections.
    pub connections: usize,
    /// Open streams at the last sample.
    pub streams: u64,
    /// Requests waiting in the router at the last sample.
    pub pending: usize,
    /// Memory estimate at the last sample (the report's model).
    pub memory_bytes: usize,
    /// Requests completed per simulated second, over the last sample interval.
    pub requests_per_s: f64,
    pub bytes_per_s: f64,
    pub requests: u64,
}

/// Agents by state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AgentCounts {
    pub total: usize,
    pub connected: usize,
    /// Running but not connected: waiting out a back-off, dialling or handshaking.
    pub reconnecting: usize,
    /// Process not running.
    pub down: usize,
    pub connects: u64,
    pub restarts: u64,
    pub drops: u64,
}

/// A scenario fault's window.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub kind: &'static str,
    pub from_s: f64,
    pub to_s: f64,
    /// The replica it is about, if one.
    pub kas: Option<usize>,
}

/// Something that happened, on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub t_s: f64,
    pub kind: &'static str,
    pub kas: Option<usize>,
}

/// The curves: one point per thinned-out sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub t_s: Vec<f64>,
    pub connected: Vec<usize>,
    pub reconnecting: Vec<usize>,
    /// Per replica.
    pub connections: Vec<Vec<usize>>,
    pub requests_per_s: Vec<Vec<f64>>,
}

/// The invariants' status.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantStatus {
    /// `holding` or `violated`.
    pub status: &'static str,
    pub checked: Vec<(&'static str, &'static str)>,
    pub violation: Option<Violation>,
}

/// What `/state` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub scenario: String,
    pub seed: u64,
    /// `running`, `paused` or `finished`.
    pub state: &'static str,
    pub now_s: f64,
    pub end_s: f64,
    pub events: u64,
    pub control: Control,
    pub replicas: Vec<ReplicaView>,
    pub agents: AgentCounts,
    pub faults: Vec<FaultWindow>,
    pub timeline: VecDeque<TimelineEntry>,
    pub history: History,
    pub invariants: InvariantStatus,
}

// ---------------------------------------------------------------- the recorder

/// The live view's side of the run loop (see the module docs).
#[derive(Debug)]
pub(super) struct Recorder {
    live: Live,
    faults: Vec<FaultWindow>,
    timeline: VecDeque<TimelineEntry>,
    history: History,
    /// Record a history point after this event (it was a sample).
    sampled: bool,
    samples: u64,
    /// Keep every `stride`-th sample.
    stride: u64,
    last_requests: Vec<u64>,
    last_sample_s: f64,
    rates: Vec<f64>,
    last_publish: Option<Instant>,
    /// Wall clock and simulated time when pacing (re)started.
    pace_origin: Option<(Instant, SimTime)>,
}

impl Recorder {
    fn new(live: Live, w: &World) -> Recorder {
        let replicas = w.kas.len();
        let faults =
            w.sc.faults
                .iter()
                .map(|f| FaultWindow {
                    kind: f.name(),
                    from_s: f.start().as_secs_f64(),
                    to_s: f.end(replicas).as_secs_f64(),
                    kas: match f {
                        Fault::KasCrash(c) => Some(c.kas),
                        Fault::Partition(p) => p.kas,
                        _ => None,
                    },
                })
                .collect();
        Recorder {
            live,
            faults,
            timeline: VecDeque::new(),
            history: History {
                connections: vec![Vec::new(); replicas],
                requests_per_s: vec![Vec::new(); replicas],
                ..History::default()
            },
            sampled: false,
            samples: 0,
            stride: 1,
            last_requests: vec![0; replicas],
            last_sample_s: 0.0,
            rates: vec![0.0; replicas],
            last_publish: None,
            pace_origin: None,
        }
    }

    /// Notes the event about to be dispatched (cheap: a match).
    pub(super) fn observe(&mut self, now: SimTime, ev: &Ev) {
        let (kind, kas) = match ev {
            Ev::Sample => {
                self.sampled = true;
                return;
            }
            Ev::KasCrash { kas, .. } => ("kas-crash", *kas),
            Ev::KasStart { kas, .. } => ("kas-start", *kas),
            Ev::RollingBegin { kas, .. } => ("rolling-restart", *kas),
            Ev::KasStop { kas, .. } => ("kas-stop", *kas),
            _ => return,
        };
        self.push_timeline(now, kind, Some(kas));
    }

    fn push_timeline(&mut self, now: SimTime, kind: &'static str, kas: Option<usize>) {
        if self.timeline.len() == TIMELINE_ENTRIES {
            self.timeline.pop_front();
        }
        self.timeline.push_back(TimelineEntry {
            t_s: now.as_secs_f64(),
            kind,
            kas,
        });
    }

    /// After an event: history, control, pacing, publishing.
    fn tick(&mut self, w: &World) {
        if std::mem::take(&mut self.sampled) {
            self.record_sample(w);
        }
        let mut waited = false;
        loop {
            let mut c = lock(&self.live.shared.control);
            if !c.paused {
                let speed = c.speed;
                drop(c);
                if waited {
                    self.pace_origin = None;
                }
                if let Some(speed) = speed
                    && self.pace(w.now, speed)
                {
                    // Slept a little: look at the control again before going on.
                    self.maybe_publish(w, "running");
                    continue;
                }
                self.maybe_publish(w, "running");
                return;
            }
            if c.steps > 0 {
                c.steps -= 1;
                return;
            }
            if !waited {
                drop(c);
                self.publish(w, "paused");
                waited = true;
                continue;
            }
            let (c, _) = self
                .live
                .shared
                .changed
                .wait_timeout(c, PAUSE_POLL)
                .unwrap_or_else(PoisonError::into_inner);
            drop(c);
        }
    }

    /// Keeps simulated time at `speed`× wall-clock time from the pacing origin: sleeps (a little at a
    /// time, so that a pause is seen) while the run is ahead. Whether it slept.
    fn pace(&mut self, now: SimTime, speed: f64) -> bool {
        let wall = Instant::now();
        let (w0, s0) = *self.pace_origin.get_or_insert((wall, now));
        let due = w0 + now.since(s0).div_f64(speed);
        if due <= wall {
            return false;
        }
        std::thread::sleep((due - wall).min(Duration::from_millis(50)));
        true
    }

    fn record_sample(&mut self, w: &World) {
        let t = w.now.as_secs_f64();
        let dt = (t - self.last_sample_s).max(1e-9);
        self.last_sample_s = t;
        for (k, c) in w.metrics.kas.iter().enumerate() {
            let done = c.requests();
            self.rates[k] = done.saturating_sub(self.last_requests[k]) as f64 / dt;
            self.last_requests[k] = done;
        }
        self.samples += 1;
        if !self.samples.is_multiple_of(self.stride) {
            return;
        }
        let agents = agent_counts(w);
        let h = &mut self.history;
        if h.t_s.len() >= HISTORY_POINTS {
            thin(&mut h.t_s);
            thin(&mut h.connected);
            thin(&mut h.reconnecting);
            h.connections.iter_mut().for_each(thin);
            h.requests_per_s.iter_mut().for_each(thin);
            self.stride *= 2;
        }
        h.t_s.push(t);
        h.connected.push(agents.connected);
        h.reconnecting.push(agents.reconnecting);
        for (k, kas) in w.kas.iter().enumerate() {
            h.connections[k].push(kas.established);
            h.requests_per_s[k].push(self.rates[k]);
        }
    }

    fn maybe_publish(&mut self, w: &World, state: &'static str) {
        // Reading the clock on every event would cost more than the rest of this: every 64th.
        if w.event_index & 63 != 0 && self.last_publish.is_some() {
            return;
        }
        if self
            .last_publish
            .is_some_and(|t| t.elapsed() < PUBLISH_EVERY)
        {
            return;
        }
        self.publish(w, state);
    }

    fn publish(&mut self, w: &World, state: &'static str) {
        self.last_publish = Some(Instant::now());
        let snapshot = self.snapshot(w, state);
        match serde_json::to_string(&snapshot) {
            Ok(json) => self.live.publish(json),
            Err(e) => tracing::error!(error = %e, "encoding the live snapshot failed"),
        }
    }

    fn snapshot(&self, w: &World, state: &'static str) -> Snapshot {
        let replicas = w
            .kas
            .iter()
            .zip(&w.metrics.kas)
            .enumerate()
            .map(|(k, (kas, c))| {
                let s = c.series();
                ReplicaView {
                    index: k,
                    status: match kas.state {
                        KasState::Up if kas.rolling.is_some() => "draining",
                        KasState::Up => "up",
                        KasState::Down { host_up: true } => "down",
                        KasState::Down { host_up: false } => "down-silent",
                    },
                    incarnation: kas.incarnation,
                    restarts: kas.restarts,
                    connections: kas.established,
                    streams: s.streams.last().copied().unwrap_or(0),
                    pending: s.pending.last().copied().unwrap_or(0),
                    memory_bytes: s.memory_bytes.last().copied().unwrap_or(0),
                    requests_per_s: self.rates[k],
                    bytes_per_s: s.bytes_per_s.last().copied().unwrap_or(0.0),
                    requests: c.requests(),
                }
            })
            .collect();
        let violation = w.violation.clone();
        Snapshot {
            scenario: w.sc.name.clone(),
            seed: w.seed,
            state,
            now_s: w.now.as_secs_f64(),
            end_s: w.end.as_secs_f64(),
            events: w.event_index,
            control: self.live.control(),
            replicas,
            agents: agent_counts(w),
            faults: self.faults.clone(),
            timeline: self.timeline.clone(),
            history: self.history.clone(),
            invariants: InvariantStatus {
                status: if violation.is_some() {
                    "violated"
                } else {
                    "holding"
                },
                checked: INVARIANTS.to_vec(),
                violation,
            },
        }
    }
}

/// Drops every other point (keeps the first).
fn thin<T: Copy>(v: &mut Vec<T>) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        i % 2 == 1
    });
}

fn agent_counts(w: &World) -> AgentCounts {
    let mut n = AgentCounts {
        total: w.agents.len(),
        drops: w.metrics.drops,
        ..AgentCounts::default()
    };
    for a in &w.agents {
        n.connects += a.connects;
        n.restarts += u64::from(a.restarts);
        if !a.up {
            n.down += 1;
        } else if a.connected_flow().is_some() {
            n.connected += 1;
        } else {
            n.reconnecting += 1;
        }
    }
    n
}

impl World {
    /// The run loop's hook after each event (see [`Recorder`]).
    pub(super) fn live_tick(&mut self) {
        if let Some(mut r) = self.live.take() {
            r.tick(self);
            self.live = Some(r);
        }
    }

    /// The run loop's hook after the last event: the final snapshot.
    pub(super) fn live_finish(&mut self) {
        if let Some(mut r) = self.live.take() {
            if let Some(v) = &self.violation {
                r.push_timeline(v.time, "violation", None);
            }
            r.publish(self, "finished");
            self.live = Some(r);
        }
    }
}

// ---------------------------------------------------------------- the server

/// The live view's HTTP server (its thread runs until the process ends).
#[derive(Debug)]
pub struct LiveServer {
    pub addr: SocketAddr,
}

/// Why the live view could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the live view on {addr}: {reason}")]
pub struct ServeError {
    pub addr: String,
    pub reason: String,
}

/// Serves `live` on `addr` (e.g. `127.0.0.1:8080`; port 0 picks one) from a new thread.
pub fn serve(addr: &str, live: &Live) -> Result<LiveServer, ServeError> {
    let err = |reason: String| ServeError {
        addr: addr.to_owned(),
        reason,
    };
    let server = tiny_http::Server::http(addr).map_err(|e| err(e.to_string()))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| err("not an IP address".to_owned()))?;
    let live = live.clone();
    std::thread::Builder::new()
        .name("live-view".to_owned())
        .spawn(move || {
            for request in server.incoming_requests() {
                handle(&live, request);
            }
        })
        .map_err(|e| err(e.to_string()))?;
    Ok(LiveServer { addr: bound })
}

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn handle(live: &Live, request: tiny_http::Request) {
    use tiny_http::Method;
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let (status, content_type, body) = match (request.method(), path) {
        (Method::Get, "/") => (200, "text/html; charset=utf-8", PAGE.to_owned()),
        (Method::Get, "/state") => (200, "application/json", live.snapshot_json()),
        (Method::Post, "/control") => control(live, query),
        (_, "/" | "/state" | "/control") => (
            405,
            "application/json",
            error_json("method not allowed: GET / and /state, POST /control"),
        ),
        _ => (404, "application/json", error_json("not found")),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    for h in [
        header("Content-Type", content_type),
        header("Cache-Control", "no-store"),
    ]
    .into_iter()
    .flatten()
    {
        response.add_header(h);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "live view: the client went away");
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// `POST /control?action=pause|run|step|speed[&n=N][&speed=X]`.
fn control(live: &Live, query: &str) -> (u16, &'static str, String) {
    let mut action = None;
    let mut n = 1u64;
    let mut speed = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| (400, "application/json", error_json(what));
        match k {
            "action" => action = Some(v),
            "n" => match v.parse::<u64>() {
                Ok(x) if x <= 1_000_000_000 => n = x,
                _ => return bad("n must be a whole number of events up to 1e9"),
            },
            "speed" => match v.parse::<f64>() {
                Ok(x) if x >= 0.0 && x.is_finite() => speed = Some(x),
                _ => return bad("speed must be a non-negative number (0: as fast as it goes)"),
            },
            _ => return bad("unknown parameter (action, n, speed)"),
        }
    }
    let Some(action) = action else {
        return (400, "application/json", error_json("missing action"));
    };
    match live.apply(action, n, speed) {
        Ok(c) => (
            200,
            "application/json",
            serde_json::to_string(&c).unwrap_or_default(),
        ),
        Err(e) => (400, "application/json", error_json(&e)),
    }
}
