//! Keepalive rounds: an idle connection advanced by itself.
//!
//! An idle connection's keepalive exchange — each side's timer sends a PING, the peer answers with a
//! PONG — changes nothing but the two [`protocol::Connection`]s' timers and counters and the
//! [`Link`](super::net::Link)'s lanes. Stepped through the world, it costs six events (two timers,
//! four deliveries) every keepalive interval on every connection, which is most of a long run's
//! events. So when a connection timer fires on a *quiet* connection (both ends live, nothing in
//! flight either way, no path faults), the world opens a [`Round`] on the flow: from then on the
//! flow's own events (the segments it sends, its timers) are kept in the round instead of the world's
//! queue and are taken later, in time order and each at its own instant, by the same
//! `Connection` calls the world would make (`handle_input`, `handle_timeout`, `poll_transmit`,
//! `poll_timeout`): at the round's own event, which comes every few keepalive intervals and lets
//! the round go on, or as soon as anything else touches the flow
//! ([`FlowTable::get_mut`](super::flow::FlowTable::get_mut)), which ends the round: it first takes
//! every step due by then and hands what is left back to the world's queue. Since the
//! link draws its jitter from its own generator, the connection ends in exactly the state stepping
//! it event by event gives (`simulator/tests/sim_determinism.rs` compares the two); only the trace
//! differs: a round is its opening timer and one `round f=…` line every few keepalive intervals.
//!
//! A round's own event only records its work ([`Round::due`]): the steps are taken when the flow
//! is next touched or, for many flows at once split over two threads, when a batch has gathered or
//! the world reads every connection (samples, the end) — see [`FlowTable`](super::flow::FlowTable).
//!
//! A step never reports an application event (PING and PONG do not make any); if one did, it would
//! stay in the connection until the world pumps the endpoint at the end of the round.

use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::clock::{Clock, SimTime};
use super::flow::{End, Flow, Side};
use super::net::{Dir, PathFaults};

/// One pending step of a round.
#[derive(Debug)]
enum Step {
    /// Octets arrive in `dir`.
    Deliver { dir: Dir, data: Bytes },
    /// An endpoint's deadline.
    Timer { side: Side },
}

/// A pending step: (due, order of scheduling, step).
type Entry = (SimTime, u32, Step);

/// A round's pending steps, in no particular order: up to four in place (a keepalive exchange has at
/// most four pending: two timers, a PING or PONG in flight, and the next exchange's first segment),
/// in the round itself (which lives in the flow), which every step reads anyway: no second pointer
/// to chase.
type Steps = SmallVec<[Entry; 4]>;

/// A flow's keepalive round in progress (see the module docs).
#[derive(Debug)]
pub struct Round {
    /// When the round's own event is due (it ends the round).
    pub until: SimTime,
    /// Steps not taken yet. A handful at most.
    steps: Steps,
    seq: u32,
    /// Steps taken.
    pub taken: u64,
    /// Octets the kas end sent and received in steps (the replica's traffic metric).
    pub kas_bytes: u64,
    /// The round's own event came at `.0` and the round goes on to `.1`, but its steps due by
    /// `.0` are not taken yet ([`Flow::take_due`]): they change nothing anyone reads before the
    /// flow is next touched (PING and PONG move no stream, window or liveness), so the world defers
    /// them and takes many flows' at once on two threads ([`FlowTable`](super::flow::FlowTable)).
    pub due: Option<(SimTime, SimTime)>,
}

/// What ending a round leaves for the world: steps not taken yet, to queue as ordinary events.
#[derive(Debug, Default)]
pub struct Leftover {
    /// Segments still travelling: (arrival, direction, octets).
    pub deliveries: Vec<(SimTime, Dir, Bytes)>,
    pub taken: u64,
    pub kas_bytes: u64,
}

impl Round {
    /// When the round's own event is next due: [`until`](Self::until), or the end a deferred round
    /// event already gave it ([`due`](Self::due)), which `until` takes once that work is done.
    pub fn next_event(&self) -> SimTime {
        self.due.map_or(self.until, |(_, until)| until)
    }

    pub fn new(until: SimTime) -> Round {
        Round {
            until,
            steps: Steps::new(),
            seq: 0,
            taken: 0,
            kas_bytes: 0,
            due: None,
        }
    }

    fn push(&mut self, at: SimTime, step: Step) {
        self.seq += 1;
        self.steps.push((at, self.seq, step));
    }

    /// Keeps a segment the flow sent in the round.
    pub fn deliver(&mut self, at: SimTime, dir: Dir, data: Bytes) {
        self.push(at, Step::Deliver { dir, data });
    }

    /// Keeps an endpoint's deadline that falls inside the round (unless a step for it is due no
    /// later: that one re-arms it when taken).
    pub fn timer(&mut self, at: SimTime, side: Side) {
        let covered = self
            .steps
            .iter()
            .any(|(t, _, s)| matches!(s, Step::Timer { side: x } if *x == side) && *t <= at);
        if !covered {
            self.push(at, Step::Timer { side });
        }
    }

    /// The earliest pending step due by `upto`.
    fn next_due(&mut self, upto: SimTime) -> Option<(SimTime, Step)> {
        let i = (0..self.steps.len())
            .filter(|&i| self.steps[i].0 <= upto)
            .min_by_key(|&i| (self.steps[i].0, self.steps[i].1))?;
        let (at, _, step) = self.steps.swap_remove(i);
        Some((at, step))
    }
}

/// No faults: rounds are only opened on flows whose path has none.
static NO_FAULTS: PathFaults = PathFaults {
    partitions: Vec::new(),
    nat: Vec::new(),
};

impl Flow {
    /// Takes every step of the flow's round due by `upto`, in order, each at its own instant.
    pub fn advance_round(&mut self, clock: &Clock, upto: SimTime) {
        let Some(mut round) = self.round.take() else {
            return;
        };
        // Deadlines are compared as instants (`d <= clock.instant(t)` is `clock.to_sim(d) <= t`,
        // both exact to the nanosecond): converting every deadline to simulated time cost two
        // percent of a run.
        let until = clock.instant(round.until);
        // Each step is taken once; steps add a bounded number of steps (a PING its PONG).
        for _ in 0..10_000u32 {
            let Some((t, step)) = round.next_due(upto) else {
                break;
            };
            round.taken += 1;
            let now = clock.instant(t);
            let side = match step {
                Step::Deliver { dir, data } => {
                    let side = Side::receiver(dir);
                    if side == Side::Kas {
                        round.kas_bytes += data.len() as u64;
                    }
                    match side {
                        Side::Agent => {
                            if let End::Live(e) = &mut self.a {
                                e.conn.handle_input_bytes(data, now);
                            }
                        }
                        Side::Kas => {
                            if let End::Live(e) = &mut self.k {
                                e.conn.handle_input_bytes(data, now);
                            }
                        }
                    }
                    side
                }
                Step::Timer { side } => {
                    if let Some(conn) = self.conn_mut(side)
                        && conn.poll_timeout().is_some_and(|d| d <= now)
                    {
                        conn.handle_timeout(now);
                    }
                    side
                }
            };
            self.round_transmit(&mut round, clock, side, t, until);
        }
        self.round = Some(round);
    }

    /// Moves what `side` wants to send onto the link as round steps, and keeps its deadline as a
    /// step if it falls inside the round.
    /// `until` is `round.until` as an instant.
    fn round_transmit(
        &mut self,
        round: &mut Round,
        clock: &Clock,
        side: Side,
        t: SimTime,
        until: Instant,
    ) {
        let kas = self.kas;
        let dir = side.out_dir();
        let conn = match side {
            Side::Agent => match &mut self.a {
                End::Live(e) => &mut e.conn,
                _ => return,
            },
            Side::Kas => match &mut self.k {
                End::Live(e) => &mut e.conn,
                _ => return,
            },
        };
        // poll_transmit drains a finite buffer.
        while let Some(bytes) = conn.poll_transmit() {
            if side == Side::Kas {
                round.kas_bytes += bytes.len() as u64;
            }
            if let Some(at) = self.link.send(dir, t, bytes.len(), kas, &NO_FAULTS) {
                round.deliver(at, dir, bytes);
            }
        }
        // `max(to_sim(d), t) <= round.until`, the deadline converted only when it is kept.
        if let Some(d) = conn.poll_timeout()
            && d <= until
            && t <= round.until
        {
            round.timer(clock.to_sim(d).max(t), side);
        }
    }

    /// The work of the round's own event at `at` (see [`Round::due`]): takes the steps due by
    /// `at`, then lets the round go on to `until`, keeping its endpoints' deadlines inside the new
    /// span as steps. Returns the octets the kas end sent and received in those steps.
    pub fn round_event(&mut self, clock: &Clock, at: SimTime, until: SimTime) -> u64 {
        self.advance_round(clock, at);
        let deadlines = [Side::Agent, Side::Kas].map(|side| {
            let conn = match side {
                Side::Agent => self.a.live().map(|e| &e.conn),
                Side::Kas => self.k.live().map(|e| &e.conn),
            };
            (side, conn.and_then(|c| c.poll_timeout()))
        });
        let Some(round) = self.round.as_mut() else {
            return 0;
        };
        round.until = until;
        for (side, due) in deadlines {
            if let Some(due) = due.map(|d| clock.to_sim(d).max(at))
                && due <= until
            {
                round.timer(due, side);
            }
        }
        std::mem::take(&mut round.kas_bytes)
    }

    /// Does a deferred round event's work ([`Round::due`]), if one is pending; returns the kas
    /// end's octets of its steps.
    pub fn take_due(&mut self, clock: &Clock) -> u64 {
        match self.round.as_mut().and_then(|r| r.due.take()) {
            Some((at, until)) => self.round_event(clock, at, until),
            None => 0,
        }
    }

    /// Ends the flow's round after taking its steps due by `now`: what is left for the world.
    pub fn end_round(&mut self, clock: &Clock, now: SimTime) -> Option<Leftover> {
        debug_assert!(
            self.round.as_ref().is_none_or(|r| r.due.is_none()),
            "a deferred round event is taken before the round ends"
        );
        self.advance_round(clock, now);
        let round = self.round.take()?;
        let mut deliveries: Vec<_> = round
            .steps
            .into_iter()
            .filter_map(|(at, seq, s)| match s {
                Step::Deliver { dir, data } => Some((at, seq, dir, data)),
                // The world re-arms both endpoints' timers when it pumps them.
                Step::Timer { .. } => None,
            })
            .collect();
        deliveries.sort_by_key(|(at, seq, ..)| (*at, *seq));
        Some(Leftover {
            deliveries: deliveries
                .into_iter()
                .map(|(at, _, dir, data)| (at, dir, data))
                .collect(),
            taken: round.taken,
            kas_bytes: round.kas_bytes,
        })
    }

    fn conn_mut(&mut self, side: Side) -> Option<&mut protocol::Connection> {
        match side {
            Side::Agent => self.a.live_mut().map(|e| &mut e.conn),
            Side::Kas => self.k.live_mut().map(|e| &mut e.conn),
        }
    }
}
