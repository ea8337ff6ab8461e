//! The world and its event loop.
//!
//! [`World`] owns everything: the agents (each with its cluster), the kas replicas, the connections
//! between them ([`Flow`]s), the client ledger, one seeded RNG, the virtual clock and the single event
//! queue. [`World::run`] pops events in (time, sequence) order and dispatches them until the end of the
//! scenario or the first invariant violation; each event and each notable outcome becomes one trace
//! line.
//!
//! The transport mechanics live here: [`World::pump`] hands a connection's events to the agent or kas
//! logic and then [`World::flush`]es what it wants to send onto its link (each transmit becomes one
//! `Deliver` event at its arrival time) and (re)arms its timer. Timers are lazy: an endpoint has at most
//! one timer event it relies on (`timer_at`); when a deadline moves later, the old queue entry comes
//! out, finds nothing due and is put back at the new deadline without being an event (no trace line,
//! no pump: `World::stale_timer`), so an idle connection costs exactly the events of its keepalive
//! exchange — the timer that sends the PING and the deliveries of the PING and the PONG, processed
//! by the real `Connection`s — and nothing in between.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::agent::SimAgent;
use super::body::Patterns;
use super::clients::Ledger;
use super::clock::{Clock, SimTime};
use super::flow::{End, Flow, FlowTable, Side};
use super::informer::Informers;
use super::invariants::Violation;
use super::kas::SimKas;
use super::net::Dir;
use super::progress::Progress;
use super::queue::EventQueue;
use super::report::{Metrics, Report};
use super::scenario::Scenario;
use super::trace::{Trace, TraceSink};

/// How many keepalive intervals a round covers at most (it ends earlier when the flow is touched).
const ROUND_INTERVALS: u32 = 3;

/// How long a round opened on `flow` lasts unless touched: long enough for both sides' PINGs to be
/// answered, and for a few keepalive intervals.
fn round_span(flow: &Flow, sc: &Scenario) -> Duration {
    let p = flow.link.params();
    ((p.latency + p.jitter) * 4 + Duration::from_millis(1))
        .max(sc.protocol.keepalive_interval * ROUND_INTERVALS)
}

/// Everything that can happen.
#[derive(Debug)]
pub(super) enum Ev {
    /// A replica's balance step ([`protocol::routing::balance::Balance`]).
    Balance {
        kas: usize,
    },
    /// An agent process starts (first boot or after a restart).
    Boot {
        agent: usize,
    },
    /// An agent's back-off is over: dial.
    Dial {
        agent: usize,
        attempt: u64,
    },
    /// A dial failed (timeout or refused).
    DialFailed {
        agent: usize,
        attempt: u64,
    },
    /// The SYN reaches kas.
    Syn {
        flow: u64,
    },
    /// The SYN-ACK reaches the agent: the TCP connection is up.
    SynAck {
        flow: u64,
    },
    /// Octets arrive.
    Deliver {
        flow: u64,
        dir: Dir,
        data: Bytes,
    },
    /// FIN or RST arrives.
    Signal {
        flow: u64,
        dir: Dir,
        rst: bool,
    },
    /// A connection's deadline.
    ConnTimer {
        flow: u64,
        side: Side,
    },
    /// The end of a flow's keepalive round ([`super::round`]).
    Round {
        flow: u64,
    },
    /// An agent's publisher deadline.
    AgentTimer {
        agent: usize,
    },
    /// The agent has its answer to a request ready.
    AgentRespond {
        flow: u64,
        stream: u32,
    },
    /// A cluster changes.
    Churn,
    /// Agent `agent`'s informer has seen its cluster's change (the watch latency after it).
    Watched {
        agent: usize,
    },
    /// A client sends a request.
    ClientRequest,
    /// A request reaches the kas replica that will route it.
    KasArrive {
        kas: usize,
        request: u64,
    },
    /// A client's deadline.
    RequestDeadline {
        request: u64,
    },
    /// A router's pending-request deadline.
    RouterTimer {
        kas: usize,
    },
    /// A random connection drop (fault index).
    DropTick {
        fault: usize,
    },
    /// A random agent restart (fault index).
    RestartTick {
        fault: usize,
    },
    KasCrash {
        kas: usize,
        fault: usize,
    },
    KasStart {
        kas: usize,
        rolling: Option<usize>,
    },
    /// Rolling restart of replica `kas` begins (GOAWAY to its agents).
    RollingBegin {
        kas: usize,
        fault: usize,
    },
    /// A draining replica stops (its grace is over or its connections are gone).
    KasStop {
        kas: usize,
        incarnation: u32,
        fault: usize,
    },
    /// The load balancer re-checks which replicas are up.
    LbCheck,
    /// A replayed agent down or request ([`super::replay`]; index into the plan's steps).
    Replay {
        index: usize,
    },
    /// Metrics sampling and periodic invariant checks.
    Sample,
    /// The end of the run.
    End,
}

/// How to run.
#[derive(Debug)]
pub struct RunOptions {
    /// Where trace lines go (the hash is always computed).
    pub trace: TraceSink,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// Do not free the world's memory at the end (a large world takes seconds to free): for a
    /// process that exits right after the run.
    pub fast_exit: bool,
    /// What the real programs cost (memory, handshake CPU, request latency): see `sim::profile`.
    pub profile: super::profile::CostProfile,
    /// Advance idle connections' keepalive exchanges as rounds ([`super::round`]; on by default).
    /// Off, every PING and PONG is stepped through the queue: the connections end in the same
    /// state, only the trace (and its hash) differs.
    pub keepalive_rounds: bool,
    /// Defer each round event's work and take it in batches, half of each on a second thread
    /// (`FlowTable::take_deferred`; on by default). Off, each round event does its own work at
    /// once: the trace, the connections and the report are the same.
    pub defer_rounds: bool,
    /// Worker threads that process cluster changes beside the loop ([`super::informer`]; 0: the
    /// loop does it itself). The trace is the same with any number.
    pub informer_threads: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            trace: TraceSink::None,
            progress: false,
            fast_exit: false,
            profile: super::profile::CostProfile::default_profile(),
            keepalive_rounds: true,
            defer_rounds: true,
            informer_threads: default_informer_threads(),
        }
    }
}

/// One informer worker per core beyond the loop's, at most 3; none on one core.
pub fn default_informer_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .min(3)
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: u64,
    /// Events processed.
    pub events: u64,
    /// Trace lines, when kept in memory.
    pub trace_lines: Vec<String>,
    /// The first invariant violation, if any.
    pub violation: Option<Violation>,
    pub report: Report,
    /// Wall-clock time of the run (not part of the trace).
    pub wall: Duration,
    /// A trace file could not be written.
    pub trace_error: Option<String>,
    /// A digest of every connection's state at the end (both `Connection`s' counters and next
    /// deadlines, the link's octet counts): what keepalive rounds must leave exactly as stepping
    /// does ([`RunOptions::keepalive_rounds`]), while the trace hash differs.
    pub state_digest: u64,
}

/// The simulated world (see the module docs).
pub(super) struct World {
    pub sc: Scenario,
    pub seed: u64,
    pub clock: Clock,
    pub now: SimTime,
    pub now_i: Instant,
    pub queue: EventQueue<Ev>,
    pub rng: ChaCha8Rng,
    pub trace: Trace,
    pub event_index: u64,
    pub violation: Option<Violation>,
    pub agents: Vec<SimAgent>,
    pub kas: Vec<SimKas>,
    pub flows: FlowTable,
    pub next_flow: u64,
    pub ledger: Ledger,
    /// Requests waiting in some replica's router, by agent id (the directory watch uses it).
    pub pending_for: BTreeMap<u64, BTreeSet<u64>>,
    /// The load balancer's view of which replicas are up.
    pub lb_up: Vec<bool>,
    pub lb_next: usize,
    pub config: protocol::Config,
    pub policy: protocol::tunnel::reconnect::BackoffPolicy,
    /// No new requests, changes or faults from then on.
    pub quiet_from: SimTime,
    /// Agents must be connected by then (faults and start-up over, plus the reconnect bound).
    pub reconnect_deadline: SimTime,
    pub end: SimTime,
    pub metrics: Metrics,
    /// Agents that churn `hot_factor` times faster.
    pub hot: Vec<usize>,
    /// Cumulative weights of the request mix.
    pub mix_cdf: Vec<f64>,
    /// The pattern request and response bodies are cut from.
    pub patterns: Patterns,
    /// Endpoints touched by the current event, pumped once it is handled.
    pub dirty: BTreeSet<(u64, Side)>,
    /// Flows pumped during the current event (with repeats): their flow-control bounds are checked
    /// after it, in flow order. A vector that keeps its allocation: no allocation per event.
    pub pumped: Vec<u64>,
    /// Chunks transmitted so far (counts for [`Injection::corrupt_transmit`](super::scenario::Injection)).
    pub transmits: u64,
    /// Watch events delivered to agents so far (for the watch-event injections).
    pub watch_events: u64,
    /// One-shot injections already done.
    pub injected: BTreeSet<&'static str>,
    /// The request whose stream kas abandons (the `abandon_request` injection).
    pub abandoned: Option<u64>,
    progress: Option<Progress>,
    fast_exit: bool,
    /// The live view, if one watches (it only reads the world: same trace with or without).
    pub live: Option<super::live::Recorder>,
    /// The cost profile (memory in the report, handshake CPU, request base latency).
    pub profile: super::profile::CostProfile,
    /// Per replica: when its handshake CPU is next free (handshakes queue on `replica_cores`).
    pub handshake_free: Vec<SimTime>,
    /// Open keepalive rounds on quiet connections ([`RunOptions::keepalive_rounds`]).
    keepalive_rounds: bool,
    /// See [`RunOptions::defer_rounds`].
    defer_rounds: bool,
    /// The agents' informer jobs (cluster changes) and their worker threads.
    pub informers: Informers,
    /// The replicas' connections a balance step may count and shed (registered, not draining),
    /// by replica, and the event index at which they are still current (`kas::balance_step`).
    pub balance_usable: Option<(u64, Vec<Vec<u64>>)>,
}

impl World {
    pub fn new(sc: Scenario, options: RunOptions) -> World {
        let seed = sc.seed;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let clock = Clock::new();
        let n = sc.agents;
        let config = sc.connection_config();
        let policy = protocol::tunnel::reconnect::BackoffPolicy {
            initial: sc.agent.backoff.initial,
            max: sc.agent.backoff.max,
            stable_after: sc.agent.backoff.stable_after,
        };
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let spread = sc.network.latency_spread * (rng.random::<f64>() * 2.0 - 1.0);
            let latency = sc.network.latency.mul_f64((1.0 + spread).max(0.0));
            agents.push(SimAgent::new(i, n, &sc, latency, policy));
        }
        let hot: Vec<usize> = (0..n)
            .filter(|_| sc.cluster.hot_fraction > 0.0 && rng.random_bool(sc.cluster.hot_fraction))
            .collect();
        let kas = (0..sc.kas.replicas)
            .map(|i| SimKas::new(i, &sc, n as u64))
            .collect();
        let mut total = 0.0;
        let mix_cdf = sc
            .clients
            .mix
            .iter()
            .map(|k| {
                total += k.weight;
                total
            })
            .collect();
        let max_body = sc
            .clients
            .mix
            .iter()
            .map(|k| k.request_bytes.max(k.response_bytes))
            .max()
            .unwrap_or(0);
        let end = SimTime::from_duration(sc.duration);
        let quiet_from = SimTime::from_duration(sc.duration - sc.quiesce);
        let reconnect_deadline = SimTime::from_duration(
            sc.faults_end().max(sc.agent.start_spread) + sc.reconnect_bound(),
        );
        let replicas = sc.kas.replicas;
        // The protocol core's deliberate bugs live in thread-locals: set them on the workers too.
        let (double_credit, view_fault) = (sc.inject.double_credit, sc.inject.view_fault);
        let threads =
            if sc.inject.skip_watch_event.is_some() || sc.inject.malformed_watch_event.is_some() {
                // These count watch events over the run: each change is joined before the next anyway.
                0
            } else {
                options.informer_threads
            };
        let informers = Informers::new(n, threads, move || {
            use protocol::testing::faults;
            faults::set_flow_fault(double_credit.then_some(faults::FlowFault::DoubleCredit));
            faults::set_view_fault(view_fault.then_some(faults::ViewFault::FailedCountsAsPending));
        });
        let mut w = World {
            seed,
            clock,
            now: SimTime::ZERO,
            now_i: clock.instant(SimTime::ZERO),
            queue: EventQueue::new(),
            rng,
            trace: Trace::new(options.trace),
            event_index: 0,
            violation: None,
            agents,
            kas,
            flows: FlowTable::new(clock),
            next_flow: 0,
            ledger: Ledger::default(),
            pending_for: BTreeMap::new(),
            lb_up: vec![true; replicas],
            lb_next: 0,
            config,
            policy,
            quiet_from,
            reconnect_deadline,
            end,
            metrics: Metrics::new(replicas),
            hot,
            mix_cdf,
            patterns: Patterns::new(usize::try_from(max_body).unwrap_or(0)),
            dirty: BTreeSet::new(),
            pumped: Vec::new(),
            transmits: 0,
            watch_events: 0,
            injected: BTreeSet::new(),
            abandoned: None,
            progress: options.progress.then(|| Progress::new(end)),
            fast_exit: options.fast_exit,
            live: None,
            profile: options.profile,
            handshake_free: vec![SimTime::ZERO; replicas],
            // A chunk-counting injection counts every transmit as an event's.
            keepalive_rounds: options.keepalive_rounds && sc.inject.corrupt_transmit.is_none(),
            defer_rounds: options.defer_rounds,
            balance_usable: None,
            informers,
            sc,
        };
        // Bugs injected into the protocol core live in this thread only.
        w.flows.parallel = !(w.sc.inject.double_credit || w.sc.inject.view_fault);
        w.schedule_start();
        w
    }

    /// The initial events.
    fn schedule_start(&mut self) {
        if let Some(plan) = self.sc.replay.clone() {
            self.schedule_replay(&plan);
        } else {
            let spread = self.sc.agent.start_spread;
            for i in 0..self.agents.len() {
                let at = SimTime::from_duration(spread.mul_f64(self.rng.random::<f64>()));
                self.queue.push(at, Ev::Boot { agent: i });
            }
        }
        self.schedule_faults();
        let churn = self.churn_rate();
        if churn > 0.0 {
            let at = SimTime::ZERO.plus(self.exp(churn));
            self.queue.push(at, Ev::Churn);
        }
        if self.sc.clients.rate > 0.0 {
            let at =
                SimTime::from_duration(self.sc.clients.start).plus(self.exp(self.sc.clients.rate));
            self.queue.push(at, Ev::ClientRequest);
        }
        self.queue.push(SimTime::ZERO, Ev::LbCheck);
        if let Some(b) = &self.sc.kas.balance {
            for k in 0..self.kas.len() {
                self.queue
                    .push(SimTime::from_duration(b.interval), Ev::Balance { kas: k });
            }
        }
        self.queue
            .push(SimTime::from_duration(self.sc.sample_interval), Ev::Sample);
        self.queue.push(self.end, Ev::End);
    }

    /// The jitter generator of flow `fid`'s link: the run's seed, stream `fid` (`sim::net`).
    pub fn link_rng(&self, fid: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(fid);
        rng
    }

    /// An exponentially distributed delay with the given rate (per second).
    pub fn exp(&mut self, rate: f64) -> Duration {
        if rate <= 0.0 {
            return Duration::MAX;
        }
        let u: f64 = self.rng.random();
        Duration::try_from_secs_f64(-(1.0 - u).ln() / rate).unwrap_or(Duration::MAX)
    }

    /// Runs to the end (or the first violation) and reports.
    pub fn run(mut self) -> Outcome {
        let started = Instant::now();
        // Deliberate bugs inside the protocol core, for the checker's self-tests (this thread only).
        use protocol::testing::faults;
        faults::set_flow_fault(
            self.sc
                .inject
                .double_credit
                .then_some(faults::FlowFault::DoubleCredit),
        );
        faults::set_view_fault(
            self.sc
                .inject
                .view_fault
                .then_some(faults::ViewFault::FailedCountsAsPending),
        );
        // Bounded by the queue: every event is due no later than the end event, which stops the loop.
        while let Some((t, ev)) = self.queue.pop() {
            self.flows.now = t;
            if let Ev::Round { flow } = &ev {
                debug_assert_eq!(
                    self.flows.round_until(*flow),
                    self.flows
                        .get(flow)
                        .and_then(|f| f.round.as_ref())
                        .map(super::round::Round::next_event),
                    "the table's round times follow the flows' rounds"
                );
            }
            match ev {
                Ev::ConnTimer { flow, side } if self.stale_timer(t, flow, side) => continue,
                Ev::Round { flow } if self.flows.round_until(flow) != Some(t) => {
                    // The round ended early (something touched the flow): not an event.
                    continue;
                }
                _ => {}
            }
            self.now = t;
            self.now_i = self.clock.instant(t);
            self.trace_event(&ev);
            let is_end = matches!(ev, Ev::End);
            if let Some(live) = &mut self.live {
                live.observe(t, &ev);
            }
            self.dispatch(ev);
            self.flush_dirty();
            self.check_event();
            self.event_index += 1;
            self.live_tick();
            if self.violation.is_some() || is_end {
                break;
            }
            if self.event_index & 0xffff == 0
                && let Some(p) = &mut self.progress
            {
                p.tick(self.now, self.event_index, started);
            }
        }
        if let Some(p) = &mut self.progress {
            p.finish();
        }
        self.join_informers();
        self.take_deferred_rounds();
        self.live_finish();
        faults::set_flow_fault(None);
        faults::set_view_fault(None);
        let wall = started.elapsed();
        let trace_error = self.trace.finish().err();
        let state_digest = self.state_digest();
        let report = self.report(wall);
        let outcome = Outcome {
            seed: self.seed,
            trace_hash: self.trace.hash(),
            events: self.event_index,
            trace_lines: self.trace.take_lines(),
            violation: self.violation.take(),
            report,
            wall,
            trace_error,
            state_digest,
        };
        // Ends the informer workers (a forgotten world would leave them waiting).
        self.informers.shutdown();
        if self.fast_exit {
            // Freeing millions of small allocations only to exit: let the process end do it.
            std::mem::forget(self);
        }
        outcome
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Boot { agent } => self.agent_boot(agent),
            Ev::Dial { agent, attempt } => self.agent_dial(agent, attempt),
            Ev::DialFailed { agent, attempt } => self.agent_dial_failed(agent, attempt),
            Ev::Syn { flow } => self.kas_syn(flow),
            Ev::SynAck { flow } => self.agent_syn_ack(flow),
            Ev::Deliver { flow, dir, data } => self.on_deliver(flow, dir, data),
            Ev::Signal { flow, dir, .. } => self.on_signal(flow, dir),
            Ev::ConnTimer { flow, side } => self.on_conn_timer(flow, side),
            Ev::Round { flow } => self.round_due(flow),
            Ev::AgentTimer { agent } => self.agent_timer(agent),
            Ev::AgentRespond { flow, stream } => self.agent_respond(flow, stream),
            Ev::Churn => self.churn(),
            Ev::Watched { agent } => self.watched(agent),
            Ev::ClientRequest => self.client_request(),
            Ev::KasArrive { kas, request } => self.kas_arrive(kas, request),
            Ev::RequestDeadline { request } => self.request_deadline(request),
            Ev::RouterTimer { kas } => self.router_timer(kas),
            Ev::DropTick { fault } => self.drop_tick(fault),
            Ev::RestartTick { fault } => self.restart_tick(fault),
            Ev::KasCrash { kas, fault } => self.kas_crash(kas, fault),
            Ev::KasStart { kas, rolling } => self.kas_start(kas, rolling),
            Ev::RollingBegin { kas, fault } => self.rolling_begin(kas, fault),
            Ev::KasStop {
                kas,
                incarnation,
                fault,
            } => self.kas_stop(kas, incarnation, fault),
            Ev::LbCheck => self.lb_check(),
            Ev::Balance { kas } => self.balance_step(kas),
            Ev::Replay { index } => self.replay_step(index),
            Ev::Sample => self.sample(),
            Ev::End => {
                self.join_informers();
                self.take_deferred_rounds();
                self.end_rounds();
                self.check_end();
            }
        }
    }

    fn trace_event(&mut self, ev: &Ev) {
        let i = self.event_index;
        let t = self.now;
        let tr = &mut self.trace;
        let u = |x: usize| x as u64;
        match ev {
            Ev::Boot { agent } => tr.event(i, t, "boot", "", &[("a", u(*agent))]),
            Ev::Dial { agent, attempt } => {
                tr.event(i, t, "dial", "", &[("a", u(*agent)), ("g", *attempt)])
            }
            Ev::DialFailed { agent, attempt } => tr.event(
                i,
                t,
                "dial-failed",
                "",
                &[("a", u(*agent)), ("g", *attempt)],
            ),
            Ev::Syn { flow } => tr.event(i, t, "syn", "", &[("f", *flow)]),
            Ev::SynAck { flow } => tr.event(i, t, "syn-ack", "", &[("f", *flow)]),
            Ev::Deliver { flow, dir, data } => tr.event(
                i,
                t,
                "deliver",
                dir_name(*dir),
                &[("f", *flow), ("n", data.len() as u64)],
            ),
            Ev::Signal { flow, dir, rst } => tr.event(
                i,
                t,
                if *rst { "rst" } else { "fin" },
                dir_name(*dir),
                &[("f", *flow)],
            ),
            Ev::ConnTimer { flow, side } => tr.event(i, t, "timer", side.name(), &[("f", *flow)]),
            Ev::Round { flow } => tr.event(i, t, "round", "", &[("f", *flow)]),
            Ev::AgentTimer { agent } => tr.event(i, t, "views-timer", "", &[("a", u(*agent))]),
            Ev::AgentRespond { flow, stream } => tr.event(
                i,
                t,
                "respond",
                "",
                &[("f", *flow), ("s", u64::from(*stream))],
            ),
            Ev::Churn => tr.event(i, t, "churn", "", &[]),
            Ev::Watched { agent } => tr.event(i, t, "watched", "", &[("a", u(*agent))]),
            Ev::ClientRequest => tr.event(i, t, "client", "", &[]),
            Ev::KasArrive { kas, request } => {
                tr.event(i, t, "arrive", "", &[("k", u(*kas)), ("r", *request)])
            }
            Ev::RequestDeadline { request } => tr.event(i, t, "deadline", "", &[("r", *request)]),
            Ev::RouterTimer { kas } => tr.event(i, t, "router-timer", "", &[("k", u(*kas))]),
            Ev::DropTick { fault } => tr.event(i, t, "drop-tick", "", &[("x", u(*fault))]),
            Ev::RestartTick { fault } => tr.event(i, t, "restart-tick", "", &[("x", u(*fault))]),
            Ev::KasCrash { kas, .. } => tr.event(i, t, "kas-crash", "", &[("k", u(*kas))]),
            Ev::KasStart { kas, .. } => tr.event(i, t, "kas-start", "", &[("k", u(*kas))]),
            Ev::RollingBegin { kas, .. } => tr.event(i, t, "rolling", "", &[("k", u(*kas))]),
            Ev::KasStop {
                kas, incarnation, ..
            } => tr.event(
                i,
                t,
                "kas-stop",
                "",
                &[("k", u(*kas)), ("n", u64::from(*incarnation))],
            ),
            Ev::LbCheck => tr.event(i, t, "lb-check", "", &[]),
            Ev::Balance { kas } => tr.event(i, t, "balance", "", &[("k", u(*kas))]),
            Ev::Replay { index } => tr.event(i, t, "replay", "", &[("x", u(*index))]),
            Ev::Sample => tr.event(i, t, "sample", "", &[]),
            Ev::End => tr.event(i, t, "end", "", &[]),
        }
    }

    /// A trace line about an outcome of the current event.
    pub fn note(&mut self, args: std::fmt::Arguments<'_>) {
        let i = self.event_index;
        let t = self.now;
        self.trace.line(format_args!("{i} {t} . {args}"));
    }

    /// Records an invariant violation (the first one stops the run).
    pub fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        let v = Violation {
            seed: self.seed,
            event_index: self.event_index,
            time: self.now,
            invariant,
            detail,
        };
        self.note(format_args!("VIOLATION {}: {}", v.invariant, v.detail));
        tracing::debug!(invariant, detail = %v.detail, "invariant violated");
        self.violation = Some(v);
    }

    // ------------------------------------------------------------------ transport

    /// The next event of an endpoint, if it is live and has one.
    fn next_event(&mut self, fid: u64, side: Side) -> Option<protocol::Event> {
        let flow = self.flows.get_mut_raw(&fid)?;
        match side {
            Side::Agent => flow.a.live_mut()?.conn.poll_event(),
            Side::Kas => flow.k.live_mut()?.conn.poll_event(),
        }
    }

    fn handle_event(&mut self, fid: u64, side: Side, ev: protocol::Event) {
        match side {
            Side::Agent => self.on_agent_event(fid, ev),
            Side::Kas => self.on_kas_event(fid, ev),
        }
    }

    /// Hands an endpoint's events to the agent or kas logic and moves what it wants to send onto its
    /// link, until neither produces anything (transmitting can complete streams and so report new
    /// events, `Closed` among them); then closes the socket if the connection is over, or arms the
    /// endpoint's timer.
    pub fn pump(&mut self, fid: u64, side: Side) {
        self.pumped.push(fid);
        // Each round handles at least one event or ends; handlers add a bounded number of events.
        for _ in 0..1_000_000u32 {
            while let Some(ev) = self.next_event(fid, side) {
                self.handle_event(fid, side, ev);
            }
            self.transmit(fid, side);
            match self.next_event(fid, side) {
                Some(ev) => self.handle_event(fid, side, ev),
                None => break,
            }
        }
        self.settle(fid, side);
    }

    /// Moves what an endpoint wants to send onto its link.
    fn transmit(&mut self, fid: u64, side: Side) {
        let now = self.now;
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return;
        };
        let Flow {
            a,
            k,
            link,
            agent,
            round,
            ..
        } = flow;
        let kas = flow.kas;
        let faults = &self.agents[*agent].faults;
        let dir = side.out_dir();
        let conn = match side {
            Side::Agent => match a {
                End::Live(e) => &mut e.conn,
                _ => return,
            },
            Side::Kas => match k {
                End::Live(e) => &mut e.conn,
                _ => return,
            },
        };
        let mut sent = 0u64;
        // poll_transmit drains a finite buffer.
        while let Some(mut bytes) = conn.poll_transmit() {
            self.transmits += 1;
            if self.sc.inject.corrupt_transmit == Some(self.transmits) {
                // Deliberate bug: a DATA frame on stream 0 (a connection error for the receiver).
                let mut b = BytesMut::from(&bytes[..]);
                b.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']);
                bytes = b.freeze();
                self.trace.line(format_args!(
                    "{} {} . INJECT corrupt-transmit f={fid}",
                    self.event_index, self.now
                ));
            }
            sent += bytes.len() as u64;
            if let Some(at) = link.send(dir, now, bytes.len(), kas, faults) {
                if let Some(r) = round {
                    r.deliver(at, dir, bytes);
                    continue;
                }
                self.queue.push(
                    at,
                    Ev::Deliver {
                        flow: fid,
                        dir,
                        data: bytes,
                    },
                );
            }
        }
        if side == Side::Kas {
            self.metrics.kas[kas].bytes += sent;
        }
    }

    /// Closes the socket of a connection that is over (FIN after the last octets), or arms the
    /// endpoint's timer.
    fn settle(&mut self, fid: u64, side: Side) {
        let now = self.now;
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return;
        };
        let Flow {
            a,
            k,
            link,
            agent,
            round,
            ..
        } = flow;
        let kas = flow.kas;
        let faults = &self.agents[*agent].faults;
        let dir = side.out_dir();
        let (conn, timer_at) = match side {
            Side::Agent => match a {
                End::Live(e) => (&mut e.conn, &mut e.timer_at),
                _ => return,
            },
            Side::Kas => match k {
                End::Live(e) => (&mut e.conn, &mut e.timer_at),
                _ => return,
            },
        };
        if conn.is_closed() {
            debug_assert!(
                round.is_none(),
                "a connection closed inside a keepalive round"
            );
            if let Some(at) = link.signal(dir, now, kas, faults) {
                self.queue.push(
                    at,
                    Ev::Signal {
                        flow: fid,
                        dir,
                        rst: false,
                    },
                );
            }
            match side {
                Side::Agent => *a = End::Gone,
                Side::Kas => *k = End::Gone,
            }
            self.maybe_remove_flow(fid);
            return;
        }
        if let Some(deadline) = conn.poll_timeout() {
            let t = self.clock.to_sim(deadline).max(now);
            if let Some(r) = round
                && t <= r.until
            {
                r.timer(t, side);
                return;
            }
            if timer_at.is_none_or(|s| t < s) {
                *timer_at = Some(t);
                self.queue.push(t, Ev::ConnTimer { flow: fid, side });
            }
        }
    }

    /// Sends FIN or RST from the sending side of `dir`.
    pub fn send_signal(&mut self, fid: u64, dir: Dir, rst: bool) {
        let now = self.now;
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let faults = &self.agents[flow.agent].faults;
        if let Some(at) = flow.link.signal(dir, now, flow.kas, faults) {
            self.queue.push(
                at,
                Ev::Signal {
                    flow: fid,
                    dir,
                    rst,
                },
            );
        }
    }

    /// Forgets a flow whose ends are both gone.
    pub fn maybe_remove_flow(&mut self, fid: u64) {
        if self.flows.get(&fid).is_some_and(Flow::is_finished) {
            self.flows.remove(&fid);
        }
    }

    fn on_deliver(&mut self, fid: u64, dir: Dir, data: Bytes) {
        let len = data.len() as u64;
        let now = self.now_i;
        let side = Side::receiver(dir);
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let kas = flow.kas;
        let delivered = match side {
            Side::Agent => match &mut flow.a {
                End::Live(e) => {
                    e.conn.handle_input_bytes(data, now);
                    true
                }
                _ => false,
            },
            Side::Kas => match &mut flow.k {
                End::Live(e) => {
                    e.conn.handle_input_bytes(data, now);
                    true
                }
                _ => false,
            },
        };
        if side == Side::Kas {
            self.metrics.kas[kas].bytes += len;
        }
        if delivered {
            self.pump(fid, side);
            return;
        }
        // Octets for a socket that no longer exists: the host answers RST, unless it is down.
        let host_down = side == Side::Kas && !self.kas[kas].host_up();
        let sender_live = match side {
            Side::Agent => flow.k.live().is_some(),
            Side::Kas => flow.a.live().is_some(),
        };
        if !host_down && sender_live {
            let back = match dir {
                Dir::Up => Dir::Down,
                Dir::Down => Dir::Up,
            };
            self.send_signal(fid, back, true);
        }
    }

    fn on_signal(&mut self, fid: u64, dir: Dir) {
        let side = Side::receiver(dir);
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let live = match side {
            Side::Agent => match &mut flow.a {
                End::Live(e) => {
                    e.conn.handle_eof();
                    true
                }
                End::Pending => {
                    flow.a = End::Gone;
                    false
                }
                End::Gone => false,
            },
            Side::Kas => match &mut flow.k {
                End::Live(e) => {
                    e.conn.handle_eof();
                    true
                }
                End::Pending => {
                    flow.k = End::Gone;
                    false
                }
                End::Gone => false,
            },
        };
        if live {
            self.pump(fid, side);
        } else {
            self.maybe_remove_flow(fid);
        }
    }

    /// Jumps from deadline to deadline: a connection timer event whose endpoint is gone, or whose
    /// deadline moved later since the event was queued (the endpoint received something, which
    /// re-armed its keepalive and idle timers), would find nothing due — `handle_timeout` fires no
    /// timer and the pump has nothing to move — so it is not an event at all: it is re-queued at the
    /// endpoint's current deadline, without a trace line. An idle connection thus costs exactly the
    /// events of its real keepalive exchange (timer → PING → PONG).
    fn stale_timer(&mut self, t: SimTime, fid: u64, side: Side) -> bool {
        let clock = self.clock;
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return true;
        };
        if let Some(round) = &mut flow.round {
            // The flow's timers belong to its round now: this deadline becomes one of its steps.
            if let Some(e) = flow.a.live_mut().filter(|_| side == Side::Agent) {
                e.timer_at = None;
            }
            if let Some(e) = flow.k.live_mut().filter(|_| side == Side::Kas) {
                e.timer_at = None;
            }
            round.timer(t, side);
            return true;
        }
        let Some(end) = (match side {
            Side::Agent => flow.a.live_mut().map(|e| (&e.conn, &mut e.timer_at)),
            Side::Kas => flow.k.live_mut().map(|e| (&e.conn, &mut e.timer_at)),
        }) else {
            return true;
        };
        let (conn, timer_at) = end;
        match conn.poll_timeout().map(|d| clock.to_sim(d)) {
            Some(due) if due <= t => false,
            Some(due) => {
                *timer_at = Some(due);
                self.queue.push(due, Ev::ConnTimer { flow: fid, side });
                true
            }
            None => {
                *timer_at = None;
                true
            }
        }
    }

    fn on_conn_timer(&mut self, fid: u64, side: Side) {
        let now = self.now_i;
        self.maybe_open_round(fid);
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return;
        };
        let fired = match side {
            Side::Agent => flow.a.live_mut().map(|e| {
                e.timer_at = None;
                e.conn.handle_timeout(now);
            }),
            Side::Kas => flow.k.live_mut().map(|e| {
                e.timer_at = None;
                e.conn.handle_timeout(now);
            }),
        };
        if fired.is_some() {
            self.pump(fid, side);
        }
    }

    /// Opens a keepalive round ([`super::round`]) on a quiet flow whose timer fires: both ends
    /// live, nothing in flight either way, no faults on its path. Its own event comes every
    /// [`ROUND_INTERVALS`] keepalive intervals (see `round_due`); it ends when something touches
    /// the flow.
    fn maybe_open_round(&mut self, fid: u64) {
        if !self.keepalive_rounds {
            return;
        }
        let now = self.now;
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return;
        };
        if flow.round.is_some()
            || flow.a.live().is_none()
            || flow.k.live().is_none()
            || !flow.link.is_quiet(now)
            || !self.agents[flow.agent].faults.is_empty()
        {
            return;
        }
        // Long enough for both sides' PINGs to be answered, and for a few keepalive intervals: an
        // idle connection then costs two events per round however many exchanges it holds.
        let until = now.plus(round_span(flow, &self.sc));
        flow.round = Some(super::round::Round::new(until));
        self.flows.sync_round(fid);
        self.queue.push(until, Ev::Round { flow: fid });
    }

    /// A round's own event: nothing touched the flow meanwhile, so it is as quiet as when the
    /// round opened; its steps due by now are taken and the round goes on for another span (its
    /// kas traffic is counted now), its endpoints' deadlines inside the new span kept as steps.
    fn round_due(&mut self, fid: u64) {
        let (clock, now) = (self.clock, self.now);
        // Takes a pending round event's work first (an earlier round event of this flow).
        let Some(flow) = self.flows.get_mut_raw(&fid) else {
            return;
        };
        if flow.a.live().is_none() || flow.k.live().is_none() || flow.link.is_dead() {
            // Cannot happen (steps make no events); end it the ordinary way.
            flow.advance_round(&clock, now);
            self.flows.get_mut(&fid);
            return;
        }
        let until = now.plus(round_span(flow, &self.sc));
        if flow.round.is_none() {
            return;
        }
        if self.defer_rounds {
            // The steps are taken later, perhaps on another thread (FlowTable::defer_round_event);
            // their kas traffic is counted when they are (take_deferred_rounds).
            self.flows.defer_round_event(fid, now, until);
        } else {
            let kas = flow.kas;
            let bytes = flow.round_event(&clock, now, until);
            self.metrics.kas[kas].bytes += bytes;
            self.flows.sync_round(fid);
        }
        self.queue.push(until, Ev::Round { flow: fid });
    }

    /// Does every deferred round event's work and counts its kas traffic: before anything reads
    /// the traffic metrics or every connection's state (samples, the end).
    pub(super) fn take_deferred_rounds(&mut self) {
        self.flows.take_deferred();
        for (k, bytes) in self.flows.take_round_bytes() {
            if let Some(m) = self.metrics.kas.get_mut(k) {
                m.bytes += bytes;
            }
        }
    }

    /// Ends every open round (at the end of the run: the checks and the state digest see every
    /// connection as stepping would have left it).
    fn end_rounds(&mut self) {
        let open: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| f.round.is_some())
            .map(|(id, _)| id)
            .collect();
        for fid in open {
            self.flows.get_mut(&fid);
        }
    }

    /// See [`Outcome::state_digest`].
    fn state_digest(&self) -> u64 {
        let mut h = super::trace::Fnv64::default();
        let mut word = |x: u64| h.update(&x.to_le_bytes());
        let clock = self.clock;
        let conn = |c: &protocol::Connection, word: &mut dyn FnMut(u64)| {
            let s = c.stats();
            for x in [
                s.bytes_received,
                s.bytes_sent,
                s.frames_received,
                s.frames_sent,
                s.data_bytes_received,
                s.data_bytes_sent,
                s.streams_opened_local,
                s.streams_opened_remote,
                s.streams_reset_sent,
                s.pings_sent,
                c.poll_timeout().map_or(u64::MAX, |d| clock.to_sim(d).0),
            ] {
                word(x);
            }
        };
        for (fid, f) in self.flows.iter() {
            word(fid);
            word(f.link.bytes(Dir::Up));
            word(f.link.bytes(Dir::Down));
            if let Some(e) = f.a.live() {
                conn(&e.conn, &mut word);
            }
            if let Some(e) = f.k.live() {
                conn(&e.conn, &mut word);
            }
        }
        h.finish()
    }

    /// Queues what rounds ended by a touch left (their segments still travelling), counts their
    /// kas traffic, and marks both endpoints to be pumped (which re-arms their timers).
    fn take_ended_rounds(&mut self) {
        if self.flows.ended.is_empty() {
            return;
        }
        let mut ended = std::mem::take(&mut self.flows.ended);
        for (fid, left) in ended.drain(..) {
            for (at, dir, data) in left.deliveries {
                self.queue.push(
                    at,
                    Ev::Deliver {
                        flow: fid,
                        dir,
                        data,
                    },
                );
            }
            if let Some(kas) = self.flows.get(&fid).map(|f| f.kas) {
                self.metrics.kas[kas].bytes += left.kas_bytes;
            }
            self.dirty.insert((fid, Side::Agent));
            self.dirty.insert((fid, Side::Kas));
        }
        // Keep the vector's allocation.
        if self.flows.ended.is_empty() {
            self.flows.ended = ended;
        }
    }

    /// Pumps every endpoint the current event touched (pumping may touch more; bounded).
    fn flush_dirty(&mut self) {
        for _ in 0..1_000_000u32 {
            self.take_ended_rounds();
            let Some((fid, side)) = self.dirty.pop_first() else {
                return;
            };
            self.pump(fid, side);
        }
    }

    /// A new flow id.
    pub fn new_flow_id(&mut self) -> u64 {
        self.next_flow += 1;
        self.next_flow
    }
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::Up => "up",
        Dir::Down => "down",
    }
}
