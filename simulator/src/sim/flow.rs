//! One TCP connection between an agent and a kas replica: its two endpoints, each a real
//! [`protocol::Connection`] plus the little state the simulated application keeps beside it, and the
//! [`Link`] between them.
//!
//! An endpoint is `Pending` until its socket exists (the kas end when the SYN arrives, the agent end
//! when the SYN-ACK does), `Live` while the process holds it, and `Gone` once the process closed it or
//! died. The flow is forgotten when both ends are gone.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use protocol::cache::ViewsStream;
use protocol::{Connection, StreamError, StreamId};

use super::body::BodyCheck;
use super::clock::{Clock, SimTime};
use super::net::{Dir, Link};
use super::round::{Leftover, Round};

/// Which end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Agent,
    Kas,
}

impl Side {
    /// The direction of what this side sends.
    pub fn out_dir(self) -> Dir {
        match self {
            Side::Agent => Dir::Up,
            Side::Kas => Dir::Down,
        }
    }

    /// The side receiving what travels in `dir`.
    pub fn receiver(dir: Dir) -> Side {
        match dir {
            Dir::Up => Side::Kas,
            Dir::Down => Side::Agent,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Agent => "agent",
            Side::Kas => "kas",
        }
    }
}

/// Life of one endpoint.
#[derive(Debug)]
pub enum End<T> {
    Pending,
    Live(T),
    Gone,
}

impl<T> End<T> {
    pub fn live(&self) -> Option<&T> {
        match self {
            End::Live(t) => Some(t),
            _ => None,
        }
    }

    pub fn live_mut(&mut self) -> Option<&mut T> {
        match self {
            End::Live(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, End::Gone)
    }
}

/// Body octets waiting for flow-control credit on one stream, and whether the stream ends after them.
#[derive(Debug, Default)]
pub struct Outbox {
    pub queue: VecDeque<Bytes>,
    pub fin: bool,
}

impl Outbox {
    pub fn bytes(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum()
    }
}

/// Offers `data` (then the end of the stream if `fin`) on stream `id`, queueing what flow control does
/// not take now in `outboxes`; [`drain_outbox`] continues on `Writable`.
pub fn send_body(
    conn: &mut Connection,
    outboxes: &mut BTreeMap<StreamId, Outbox>,
    id: StreamId,
    data: Bytes,
    fin: bool,
) -> Result<(), StreamError> {
    if let Some(o) = outboxes.get_mut(&id) {
        if !data.is_empty() {
            o.queue.push_back(data);
        }
        o.fin |= fin;
        return Ok(());
    }
    let len = data.len();
    let n = conn.send_data(id, data.clone(), fin)?;
    if n < len {
        let mut o = Outbox::default();
        o.queue.push_back(data.slice(n..));
        o.fin = fin;
        outboxes.insert(id, o);
    }
    Ok(())
}

/// Sends what stream `id` has queued, as far as credit allows.
pub fn drain_outbox(
    conn: &mut Connection,
    outboxes: &mut BTreeMap<StreamId, Outbox>,
    id: StreamId,
) -> Result<(), StreamError> {
    let Some(o) = outboxes.get_mut(&id) else {
        return Ok(());
    };
    // Each round sends one queued chunk or stops; bounded by the queue length.
    for _ in 0..=o.queue.len() {
        let Some(front) = o.queue.pop_front() else {
            break;
        };
        let last = o.queue.is_empty();
        let len = front.len();
        let n = conn.send_data(id, front.clone(), last && o.fin)?;
        if n < len {
            o.queue.push_front(front.slice(n..));
            return Ok(());
        }
    }
    // Everything, and the end of the stream with the last chunk, was accepted.
    if o.queue.is_empty() {
        outboxes.remove(&id);
    }
    Ok(())
}

/// A request kas opened towards the agent, as the agent serves it.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    pub request: u64,
    pub kind: usize,
    pub body_done: bool,
    /// The request body as it arrives.
    pub body: BodyCheck,
}

/// agentk's end of a connection.
#[derive(Debug)]
pub struct AgentEnd {
    pub conn: Connection,
    pub timer_at: Option<SimTime>,
    pub connected_at: Option<SimTime>,
    /// kas sent GOAWAY: a replacement was dialled; this one only finishes its streams.
    pub draining: bool,
    pub views: Option<StreamId>,
    pub outbox: BTreeMap<StreamId, Outbox>,
    pub serving: BTreeMap<StreamId, Serving>,
}

impl AgentEnd {
    pub fn new(conn: Connection) -> AgentEnd {
        AgentEnd {
            conn,
            timer_at: None,
            connected_at: None,
            draining: false,
            views: None,
            outbox: BTreeMap::new(),
            serving: BTreeMap::new(),
        }
    }
}

/// kas's end of a connection.
#[derive(Debug)]
pub struct KasEnd {
    pub conn: Connection,
    pub timer_at: Option<SimTime>,
    /// The authenticated agent, once accepted.
    pub agent_id: Option<u64>,
    /// Registered in the router.
    pub registered: bool,
    pub views: Option<StreamId>,
    /// The replica's side of that views stream ([`MirrorTable`](protocol::cache::MirrorTable)).
    pub views_stream: Option<ViewsStream>,
    pub outbox: BTreeMap<StreamId, Outbox>,
    /// Request streams kas opened on this connection.
    pub requests: BTreeMap<StreamId, KasStream>,
}

/// A request stream kas opened.
#[derive(Debug, Clone, Copy)]
pub struct KasStream {
    pub request: u64,
    /// The response status, once the head arrived.
    pub status: Option<u32>,
    /// The response body as it arrives.
    pub body: BodyCheck,
}

impl KasEnd {
    pub fn new(conn: Connection) -> KasEnd {
        KasEnd {
            conn,
            timer_at: None,
            agent_id: None,
            registered: false,
            views: None,
            views_stream: None,
            outbox: BTreeMap::new(),
            requests: BTreeMap::new(),
        }
    }
}

/// One TCP connection (see the module docs).
#[derive(Debug)]
pub struct Flow {
    pub agent: usize,
    pub kas: usize,
    /// The kas process incarnation the connection was made to.
    pub incarnation: u32,
    pub link: Link,
    pub a: End<AgentEnd>,
    pub k: End<KasEnd>,
    pub created: SimTime,
    /// A keepalive round in progress ([`super::round`]). In place, not boxed: the flow is read
    /// anyway when a round is opened, advanced or ended, so its steps come with it (no allocation
    /// per round, no second pointer to chase into a cold line).
    pub round: Option<Round>,
}

impl Flow {
    /// Both ends gone: nothing can happen on this flow any more.
    pub fn is_finished(&self) -> bool {
        self.a.is_gone() && self.k.is_gone()
    }
}

/// Every flow, by id. Ids are handed out in increasing order and index a vector directly (a slab
/// without reuse), so lookups are cheap and iteration is in id order, like an ordered map.
///
/// [`get_mut`](Self::get_mut) is how the simulated programs touch a flow: it first ends the flow's
/// keepalive round, if one is open ([`super::round`]), taking its steps due by the current event's
/// time and leaving the rest in [`ended`](Self::ended) for the world to queue.
///
/// Beside the flows it keeps when each flow's open round is due ([`round_until`](Self::round_until)),
/// dense by id: the world checks every round event against it, and most of those find their round
/// ended early, which this answers without touching the flow (a cache miss into a large struct).
///
/// A round's own event only records its work ([`defer_round_event`](Self::defer_round_event),
/// [`Round::due`]); the work is done when the flow is next taken out ([`get_mut`](Self::get_mut),
/// [`get_mut_raw`](Self::get_mut_raw), [`remove`](Self::remove)) or, for many flows at once split
/// between this thread and a second one, when [`DEFER_BATCH`] have gathered or the world asks
/// ([`take_deferred`](Self::take_deferred)). Each flow's work depends on nothing but the flow,
/// so who does it, and when, changes nothing: the connections end exactly as if each round event
/// had done its own work (same trace hash, same state digest). [`get`](Self::get) may see a flow
/// whose round event's steps are pending, as it may see any open round's steps pending: rounds
/// move only timers and keepalive counters.
#[derive(Debug)]
pub struct FlowTable {
    slots: Vec<Option<Box<Flow>>>,
    /// `round.until` of each flow's open round, 0 without one (a round always ends after 0).
    rounds: Vec<u64>,
    live: usize,
    clock: Clock,
    /// The time of the event being handled.
    pub now: SimTime,
    /// Rounds ended by a touch, with what they left (the world takes them after each step).
    pub ended: Vec<(u64, Leftover)>,
    /// Flows whose round event's work is deferred, in the order deferred (an id may repeat).
    deferred: Vec<u64>,
    /// Whether deferred work may run on a second thread. Off when the scenario injects a bug
    /// into the protocol core: those are per thread (`protocol::testing::faults`).
    pub parallel: bool,
    /// Octets of the kas end in deferred round steps taken, by replica, not yet counted in the
    /// world's metrics ([`take_round_bytes`](Self::take_round_bytes)).
    round_bytes: Vec<u64>,
}

/// How many deferred round events gather before they are taken together.
pub const DEFER_BATCH: usize = 1024;

/// Below this many flows, deferred work is done on this thread alone (a thread costs more).
const PARALLEL_MIN: usize = 64;

impl FlowTable {
    pub fn new(clock: Clock) -> FlowTable {
        FlowTable {
            slots: Vec::new(),
            rounds: Vec::new(),
            live: 0,
            clock,
            now: SimTime::ZERO,
            ended: Vec::new(),
            deferred: Vec::new(),
            parallel: true,
            round_bytes: Vec::new(),
        }
    }

    fn count_round_bytes(round_bytes: &mut Vec<u64>, kas: usize, bytes: u64) {
        if bytes > 0 {
            if kas >= round_bytes.len() {
                round_bytes.resize(kas + 1, 0);
            }
            round_bytes[kas] += bytes;
        }
    }

    /// Records a round event at `at` on flow `id` whose round goes on to `until`; its work is
    /// done later (see the type's docs). The flow must have an open round with no pending event.
    pub fn defer_round_event(&mut self, id: u64, at: SimTime, until: SimTime) {
        let Some(i) = usize::try_from(id).ok() else {
            return;
        };
        let Some(round) = self
            .slots
            .get_mut(i)
            .and_then(|f| f.as_deref_mut())
            .and_then(|f| f.round.as_mut())
        else {
            return;
        };
        debug_assert!(round.due.is_none(), "one round event pending at a time");
        round.due = Some((at, until));
        self.rounds[i] = until.0;
        self.deferred.push(id);
        if self.deferred.len() >= DEFER_BATCH {
            self.take_deferred();
        }
    }

    /// Does every deferred round event's work now, split between this thread and a second one.
    pub fn take_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let mut ids = std::mem::take(&mut self.deferred);
        ids.sort_unstable();
        ids.dedup();
        // Disjoint borrows of the pending flows, walking the slots once in id order.
        let mut work: Vec<&mut Flow> = Vec::with_capacity(ids.len());
        let mut rest: &mut [Option<Box<Flow>>] = &mut self.slots;
        let mut base = 0usize;
        for &id in &ids {
            let Some(i) = usize::try_from(id).ok().and_then(|i| i.checked_sub(base)) else {
                continue;
            };
            let tail = std::mem::take(&mut rest);
            let Some((slot, after)) = tail.get_mut(i..).and_then(<[_]>::split_first_mut) else {
                break;
            };
            rest = after;
            base = usize::try_from(id).unwrap_or(usize::MAX).saturating_add(1);
            if let Some(flow) = slot.as_deref_mut()
                && flow.round.as_ref().is_some_and(|r| r.due.is_some())
            {
                work.push(flow);
            }
        }
        let clock = self.clock;
        let run = |flows: &mut [&mut Flow]| -> Vec<(usize, u64)> {
            flows
                .iter_mut()
                .map(|f| (f.kas, f.take_due(&clock)))
                .collect()
        };
        let counted = if self.parallel && work.len() >= PARALLEL_MIN {
            let half = work.len() / 2;
            let (mine, theirs) = work.split_at_mut(half);
            std::thread::scope(|s| {
                let helper = s.spawn(|| run(theirs));
                let mut counted = run(mine);
                match helper.join() {
                    Ok(more) => counted.extend(more),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                counted
            })
        } else {
            run(&mut work)
        };
        for (kas, bytes) in counted {
            Self::count_round_bytes(&mut self.round_bytes, kas, bytes);
        }
        // Keep the vector's allocation.
        ids.clear();
        self.deferred = ids;
    }

    /// The kas octets of deferred round steps taken since the last call, by replica.
    pub fn take_round_bytes(&mut self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.round_bytes
            .iter_mut()
            .enumerate()
            .map(|(k, b)| (k, std::mem::take(b)))
            .filter(|(_, b)| *b > 0)
    }

    /// Does `flow`'s deferred round event's work, if it has one pending.
    fn catch_up(flow: &mut Flow, clock: &Clock, round_bytes: &mut Vec<u64>) {
        if flow.round.as_ref().is_some_and(|r| r.due.is_some()) {
            let bytes = flow.take_due(clock);
            Self::count_round_bytes(round_bytes, flow.kas, bytes);
        }
    }

    /// Slot `i`'s flow with its deferred round event's work done.
    fn caught_up(&mut self, i: usize) -> Option<&mut Flow> {
        let flow = self.slots.get_mut(i)?.as_deref_mut()?;
        Self::catch_up(flow, &self.clock, &mut self.round_bytes);
        Some(flow)
    }

    /// Adds a flow under an id not used before.
    pub fn insert(&mut self, id: u64, flow: Flow) {
        let i = usize::try_from(id).unwrap_or(usize::MAX);
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
            self.rounds.resize(i + 1, 0);
        }
        self.rounds[i] = flow.round.as_ref().map_or(0, |r| r.next_event().0);
        if self.slots[i].replace(Box::new(flow)).is_none() {
            self.live += 1;
        }
    }

    pub fn get(&self, id: &u64) -> Option<&Flow> {
        self.slots.get(usize::try_from(*id).ok()?)?.as_deref()
    }

    /// The flow, its keepalive round (if any) ended first (see the type's docs).
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut Flow> {
        let i = usize::try_from(*id).ok()?;
        let flow = self.slots.get_mut(i)?.as_deref_mut()?;
        Self::catch_up(flow, &self.clock, &mut self.round_bytes);
        if flow.round.is_some()
            && let Some(left) = flow.end_round(&self.clock, self.now)
        {
            self.rounds[i] = 0;
            self.ended.push((*id, left));
        }
        Some(flow)
    }

    /// When the flow's open keepalive round is due, if it has one (the flow is not touched).
    pub fn round_until(&self, id: u64) -> Option<SimTime> {
        let until = *self.rounds.get(usize::try_from(id).ok()?)?;
        (until != 0).then_some(SimTime(until))
    }

    /// Records the flow's round as it is now: call after opening a round or moving its end
    /// through [`get_mut_raw`](Self::get_mut_raw) (ending one goes through [`get_mut`](Self::get_mut)).
    pub fn sync_round(&mut self, id: u64) {
        let Some(i) = usize::try_from(id).ok() else {
            return;
        };
        let until = self
            .slots
            .get(i)
            .and_then(|f| f.as_deref())
            .and_then(|f| f.round.as_ref())
            .map_or(0, |r| r.next_event().0);
        if let Some(r) = self.rounds.get_mut(i) {
            *r = until;
        }
    }

    /// The flow as it is, its round (if any) left open: for the world's transport mechanics only.
    pub fn get_mut_raw(&mut self, id: &u64) -> Option<&mut Flow> {
        self.caught_up(usize::try_from(*id).ok()?)
    }

    pub fn remove(&mut self, id: &u64) -> Option<Flow> {
        let i = usize::try_from(*id).ok()?;
        self.caught_up(i)?;
        let f = self.slots.get_mut(i)?.take()?;
        self.rounds[i] = 0;
        self.live -= 1;
        Some(*f)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Flows in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Flow)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_deref().map(|f| (i as u64, f)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::proto;
    use protocol::testing::pair::Pair;
    use std::time::Instant;

    #[test]
    fn outbox_sends_everything_despite_small_windows() {
        let mut cfg = protocol::Config::default();
        cfg.settings.initial_stream_window = 1000;
        let mut p = Pair::new(
            protocol::Config::default(),
            cfg,
            protocol::AgentHello::default(),
            1,
            Instant::now(),
        );
        p.handshake(1);
        let head = proto::RequestHead {
            service: "x".into(),
            ..Default::default()
        };
        let id = p.agent.open_stream(head, false).unwrap();
        let mut out = BTreeMap::new();
        send_body(
            &mut p.agent,
            &mut out,
            id,
            Bytes::from(vec![7u8; 5000]),
            true,
        )
        .unwrap();
        assert!(out.contains_key(&id));
        let mut got = 0;
        let mut finished = false;
        for _ in 0..100 {
            p.drive();
            while let Some(ev) = p.server.poll_event() {
                match ev {
                    protocol::Event::StreamOpened { id, .. } => {
                        p.server
                            .send_response(id, proto::ResponseHead::default(), true)
                            .unwrap();
                    }
                    protocol::Event::Data { id, data } => {
                        got += data.len();
                        p.server.release_capacity(id, data.len());
                    }
                    protocol::Event::Finished { .. } => finished = true,
                    _ => {}
                }
            }
            p.drive();
            while let Some(ev) = p.agent.poll_event() {
                if let protocol::Event::Writable { id } = ev {
                    drain_outbox(&mut p.agent, &mut out, id).unwrap();
                }
            }
            if finished {
                break;
            }
        }
        assert_eq!(got, 5000);
        assert!(finished);
        assert!(out.is_empty());
    }
}
