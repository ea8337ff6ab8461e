//! The `views` stream in the simulation: each agent drives the production
//! [`AgentViews`](protocol::cache::AgentViews) endpoint and each replica the production
//! [`MirrorTable`](protocol::cache::MirrorTable), exactly as agentk and kas do; this module only
//! moves octets between them and the simulated tunnel streams, and injects the scenario's faults.
//!
//! Behaviour is production's (SERVICES.md §6): agentk opens the stream with `SYNC /`
//! ([`views_request_head`]), links it once kas answers 200, and sends view snapshots/updates *and*
//! object-change batches; a replica marks an agent's mirror disconnected when the agent's *last*
//! views stream on it ends (a GOAWAY handover's overlapping streams keep it connected), and drops a
//! mirror without streams after `kas.mirror_retention`.

use std::num::NonZeroU64;
use std::sync::LazyLock;

use bytes::Bytes;
use protocol::cache::proto as cache_proto;
use protocol::cache::{
    AgentCache, AgentViews, AgentViewsConfig, LinkEnd, MirrorTable, MirrorTableConfig,
    PublisherConfig, ResponseVerdict, StoreError, ViewSet, ViewSpecError, ViewsViolation,
    classify_views_response, default_views, encode_message, views_request_head,
};
use protocol::{ErrorCode, StreamId, proto};

use super::cluster::Cluster;
use super::flow::send_body;
use super::scenario::Scenario;
use super::world::{Ev, World};

/// A replica's mirror table for `sc`.
pub fn mirror_table(sc: &Scenario) -> MirrorTable {
    MirrorTable::new(MirrorTableConfig {
        // kas's default bound, or more when the scenario has more agents (the simulation does not
        // study mirror capacity).
        max_agents: MirrorTableConfig::default().max_agents.max(sc.agents),
        resync_interval: sc.kas.resync_interval,
        retention: Some(sc.kas.mirror_retention),
        ..MirrorTableConfig::default()
    })
}

/// The request head of the views stream (agentk's).
pub fn request_head() -> proto::RequestHead {
    views_request_head()
}

/// The default views compiled once: every agent's cache shares them ([`AgentCache::with_views`]),
/// so the specs an event evaluates are one hot copy rather than a cold one per agent.
static DEFAULT_VIEWS: LazyLock<Result<ViewSet, ViewSpecError>> =
    LazyLock::new(|| ViewSet::new(&default_views()));

/// Feeds a booting agent's endpoint the first list of its cluster (its events dropped: nothing
/// watches them yet).
pub(super) fn take_relist(
    views: &mut AgentViews,
    cluster: &Cluster,
    now: std::time::Instant,
) -> Result<(), StoreError> {
    for (kind, ev) in cluster.relist() {
        views.handle_watch(kind, ev, now)?;
    }
    while views.poll_event().is_some() {}
    Ok(())
}

fn violation_kind(e: &ViewsViolation) -> &'static str {
    match e {
        ViewsViolation::Message(_) => "views-messages",
        ViewsViolation::Wire(_) => "views-wire",
    }
}

impl World {
    // ------------------------------------------------------------------ agent side

    /// A booting agent's endpoint (a new epoch), fed with the first list of its cluster.
    pub(super) fn agent_views_boot(&mut self, i: usize, epoch: NonZeroU64) -> Option<AgentViews> {
        let mut cfg = PublisherConfig::new(epoch);
        cfg.window = self.sc.agent.views_window;
        cfg.ack_timeout = self.sc.agent.views_ack_timeout;
        cfg.max_unacked = self.sc.agent.views_max_unacked;
        let config = AgentViewsConfig::new(self.sc.agent.views_window);
        let mut views = match &*DEFAULT_VIEWS {
            Ok(v) => AgentViews::with_cache(AgentCache::with_views(v, cfg), config),
            Err(e) => {
                self.violate("agent-cache", format!("default views do not compile: {e}"));
                return None;
            }
        };
        self.join_informer(i);
        let a = &self.agents[i];
        if let Err(e) = take_relist(&mut views, &a.local().cluster, self.now_i) {
            let detail = format!("agent {} relist rejected: {e}", a.id);
            self.violate("agent-cache", detail);
            return None;
        }
        Some(views)
    }

    /// kas answered agent `i`'s views request on `fid` with `status`.
    pub(super) fn agent_views_answered(&mut self, i: usize, fid: u64, status: u32) {
        self.join_informer(i);
        let now_i = self.now_i;
        let a = &mut self.agents[i];
        let connected = a.connected_flow();
        if classify_views_response(status) == ResponseVerdict::Linked
            && connected == Some(fid)
            && let Some(views) = &mut a.local_mut().views
        {
            views.handle_linked(fid, now_i);
        }
        self.pump_views(i);
    }

    /// Octets kas sent on agent `i`'s views stream of `fid`.
    pub(super) fn agent_views_data(&mut self, i: usize, fid: u64, data: &[u8]) {
        self.join_informer(i);
        let now_i = self.now_i;
        if let Some(views) = &mut self.agents[i].local_mut().views
            && let Err(e) = views.handle_body(fid, data, now_i)
        {
            self.violate(violation_kind(&e), format!("agent {i}: {e}"));
            return;
        }
        self.pump_views(i);
    }

    /// Agent `i`'s views stream on `fid` is gone (ignored unless it is the current link).
    pub(super) fn agent_views_gone(&mut self, i: usize, fid: u64, end: LinkEnd) {
        self.join_informer(i);
        if let Some(views) = &mut self.agents[i].local_mut().views {
            views.handle_unlinked(fid, end);
        }
    }

    /// Lets the endpoint send what is due on the active connection's views stream and arms its
    /// timer. The caller flushes the connection.
    pub(super) fn pump_views(&mut self, i: usize) {
        self.join_informer(i);
        let now_i = self.now_i;
        let a = &mut self.agents[i];
        let connected = a.connected_flow();
        let Some(views) = a.local.as_deref_mut().and_then(|l| l.views.as_mut()) else {
            return;
        };
        if let Some(fid) = connected
            && views.link() == Some(fid)
            && let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut())
            && let Some(stream) = end.views
        {
            // The endpoint sends a bounded number of messages per call (window, max_unacked).
            for _ in 0..1000 {
                let Some(mut m) = views.poll_message(now_i) else {
                    break;
                };
                if self.sc.inject.malformed_view == Some(i)
                    && add_stray_unit(&mut m)
                    && self.injected.insert("malformed-view")
                {
                    self.trace.line(format_args!(
                        "{} {} . INJECT malformed-view a={i}",
                        self.event_index, self.now
                    ));
                }
                let mut bytes = encode_message(&m);
                if self.sc.inject.garble_views_frame == Some(i)
                    && self.injected.insert("garble-views-frame")
                {
                    // Deliberate bug: a length prefix no varint has.
                    let mut b = vec![0xffu8; 11];
                    b.extend_from_slice(&bytes);
                    bytes = Bytes::from(b);
                }
                if let Err(e) = send_body(&mut end.conn, &mut end.outbox, stream, bytes, false) {
                    tracing::debug!(error = %e, "views stream unusable");
                    break;
                }
            }
        }
        while views.poll_event().is_some() {}
        if let Some(deadline) = views.poll_timeout() {
            let t = self
                .clock
                .to_sim(deadline)
                .max(self.now.plus(std::time::Duration::from_millis(1)));
            if a.timer_at.is_none_or(|s| t < s) {
                a.timer_at = Some(t);
                self.queue.push(t, Ev::AgentTimer { agent: i });
            }
        }
    }

    // ------------------------------------------------------------------ kas side

    /// Agent `agent_id` opened views stream `id` on replica `k`'s connection `fid`.
    pub(super) fn kas_views_opened(
        &mut self,
        k: usize,
        fid: u64,
        agent_id: u64,
        id: StreamId,
        head: &proto::RequestHead,
    ) {
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.k.live_mut()) else {
            return;
        };
        match self.kas[k].mirrors.handle_open(agent_id, head, self.now_i) {
            Ok((mut stream, ok)) => {
                if end.conn.send_response(id, ok, false).is_err() {
                    self.kas[k].mirrors.handle_closed(stream, self.now_i);
                    return;
                }
                end.views = Some(id);
                // Bounded: the first resync request.
                while let Some(bytes) = stream.poll_transmit() {
                    let _ = send_body(&mut end.conn, &mut end.outbox, id, bytes, false);
                }
                end.views_stream = Some(stream);
            }
            Err(refusal) => {
                let _ = end.conn.send_response(id, refusal.response_head(), true);
            }
        }
    }

    /// Octets agent `agent_id` sent on replica `k`'s views stream `id` of `fid`.
    pub(super) fn kas_views_data(
        &mut self,
        k: usize,
        fid: u64,
        agent_id: u64,
        id: StreamId,
        data: &[u8],
    ) {
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.k.live_mut()) else {
            return;
        };
        let Some(stream) = end.views_stream.as_mut() else {
            return;
        };
        let corrupt = self.sc.inject.corrupt_view_value.map(|i| i as u64 + 1) == Some(agent_id)
            && !self.injected.contains("corrupt-view-value");
        let mut corrupted = false;
        let before = stream.messages();
        let result = self.kas[k]
            .mirrors
            .handle_body_tapped(stream, data, self.now_i, |m| {
                if corrupt && !corrupted && corrupt_first_value(m) {
                    corrupted = true;
                }
            });
        self.metrics.views_messages += stream.messages() - before;
        // Bounded: one ack or resync per message handled.
        while let Some(bytes) = stream.poll_transmit() {
            let _ = send_body(&mut end.conn, &mut end.outbox, id, bytes, false);
        }
        // The replica does not publish events in the simulation.
        while self.kas[k].mirrors.poll_event().is_some() {}
        if corrupted && self.injected.insert("corrupt-view-value") {
            self.trace.line(format_args!(
                "{} {} . INJECT corrupt-view-value a={agent_id}",
                self.event_index, self.now
            ));
        }
        if let Err(e) = result {
            self.violate(violation_kind(&e), format!("kas {k} agent {agent_id}: {e}"));
            return;
        }
        self.check_mirror(k, agent_id);
    }

    /// Replica `k`'s views stream on `fid` ended (`finished`: the agent ended its direction,
    /// otherwise reset or lost). The mirror is marked disconnected when it was the agent's last.
    pub(super) fn kas_views_closed(&mut self, k: usize, fid: u64, finished: bool) {
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.k.live_mut()) else {
            return;
        };
        let id = end.views.take();
        let Some(mut stream) = end.views_stream.take() else {
            return;
        };
        if let Some(id) = id
            && finished
        {
            end.conn.reset(id, ErrorCode::Cancel, "views stream ended");
        }
        let truncated = if finished {
            self.kas[k].mirrors.handle_end(&mut stream).err()
        } else {
            None
        };
        self.kas[k].mirrors.handle_closed(stream, self.now_i);
        while self.kas[k].mirrors.poll_event().is_some() {}
        if let Some(e) = truncated {
            self.violate(violation_kind(&e), format!("kas {k} flow {fid}: {e}"));
        }
    }

    /// Drops replica `k`'s mirrors that had no stream for the retention period.
    pub(super) fn expire_mirrors(&mut self, k: usize) {
        let now_i = self.now_i;
        let mirrors = &mut self.kas[k].mirrors;
        if mirrors.poll_timeout().is_some_and(|t| t <= now_i) {
            mirrors.handle_timeout(now_i);
        }
        while mirrors.poll_event().is_some() {}
    }
}

/// Adds a value without nanos to the first row a view message carries (a deliberate bug); whether
/// there was one.
fn add_stray_unit(m: &mut cache_proto::AgentToServer) -> bool {
    match first_row(m) {
        Some(r) => {
            r.units.push(1);
            true
        }
        None => false,
    }
}

/// Changes the first metric value of the first row a view message carries (a deliberate bug on
/// the replica); whether there was one.
fn corrupt_first_value(m: &mut cache_proto::AgentToServer) -> bool {
    match first_row(m).and_then(|r| r.units.first_mut()) {
        Some(u) => {
            *u += 1;
            true
        }
        None => false,
    }
}

fn first_row(m: &mut cache_proto::AgentToServer) -> Option<&mut cache_proto::Row> {
    use cache_proto::agent_to_server::Msg;
    match &mut m.msg {
        Some(Msg::Update(u)) => u.views.iter_mut().flat_map(|v| v.upserts.iter_mut()).next(),
        Some(Msg::Snapshot(s)) => s.views.iter_mut().flat_map(|v| v.rows.iter_mut()).next(),
        _ => None,
    }
}
