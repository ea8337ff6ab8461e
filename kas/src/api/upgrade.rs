//! HTTP upgrades through the tunnel (protocol/SERVICES.md §3.1): `kubectl exec`, `attach`, `cp` and
//! `port-forward` on `/k8s-proxy`, whatever protocol they switch to (WebSocket, SPDY/3.1).
//!
//! An HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` header ([`take`]) becomes a
//! `k8s-api` stream whose head keeps `Upgrade`, `Sec-WebSocket-*` and `X-Stream-Protocol-Version`
//! ([`HeaderRule::for_upgrade_head`]: credentials, `Impersonate-*` and identity assertions are dropped
//! as in any head) and which stays open in kas's direction. If the agent answers `101` with an
//! `Upgrade` header, the client gets the `101` ([`switched`]) and, once hyper hands over the
//! connection, [`session`] copies bytes both ways without looking at them: each direction ends on
//! its own (client EOF → end of stream, end of stream → write shutdown to the client: half-close), a
//! reset or failure on either side ends both (the stream is reset with `CANCEL`, the client's
//! connection closed). Any other answer is an ordinary response (kubectl then falls back from
//! WebSocket to SPDY). An HTTP/1.0 request never upgrades, and kas's API speaks no HTTP/2.
//!
//! Limits ([`Sessions`]): at most [`UpgradeLimits::max_sessions_per_agent`] sessions per agent (over
//! it: 429 before anything reaches the agent); a session with no byte in either direction for
//! [`UpgradeLimits::idle_timeout`] is ended; kas shutting down ends every session
//! ([`Sessions::close_all`]); a lost agent connection resets its streams, which ends their sessions.
//! A client that stops reading stops the copy of its own session only: the stream's flow control then
//! holds the agent back on that stream alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use protocol::ErrorCode;
use protocol::proto::ResponseHead;
use protocol::service::HeaderRule;
use runtime_smol::{Connection, Stream};

use crate::registry::Lease;
use crate::state::KasState;

use super::response::{ApiError, ResponseBody};
use super::upgraded_io::UpgradedIo;

/// Largest chunk copied at once in either direction.
const CHUNK: usize = 32 * 1024;

/// Limits of upgraded sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeLimits {
    /// Concurrent upgraded sessions per agent (all of its connections together).
    pub max_sessions_per_agent: usize,
    /// A session with no byte in either direction for this long is ended.
    pub idle_timeout: Duration,
}

impl Default for UpgradeLimits {
    fn default() -> Self {
        UpgradeLimits {
            max_sessions_per_agent: 4096,
            idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// Every upgraded session of one kas: counts per agent, the limits, metrics, and the shutdown signal.
#[derive(Debug)]
pub struct Sessions {
    limits: UpgradeLimits,
    per_agent: Mutex<HashMap<u64, usize>>,
    started: AtomicU64,
    refused: AtomicU64,
    idle_ended: AtomicU64,
    failed: AtomicU64,
    /// Closed by [`Sessions::close_all`]; every session waits on it.
    stop: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

/// A place among an agent's sessions; given back when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    sessions: Arc<Sessions>,
    agent_id: u64,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut map = self.sessions.lock();
        if let Some(n) = map.get_mut(&self.agent_id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.agent_id);
            }
        }
    }
}

impl Sessions {
    /// No sessions yet.
    pub fn new(limits: UpgradeLimits) -> Self {
        Sessions {
            limits,
            per_agent: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            idle_ended: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: async_channel::bounded(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.per_agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits.
    pub fn limits(&self) -> UpgradeLimits {
        self.limits
    }

    /// A slot for one more session of `agent_id`, or the 429 to answer.
    pub fn acquire(self: &Arc<Self>, agent_id: u64) -> Result<SessionSlot, ApiError> {
        let mut map = self.lock();
        let n = map.entry(agent_id).or_default();
        if *n >= self.limits.max_sessions_per_agent {
            drop(map);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "agent {agent_id} has {} upgraded sessions (exec, attach, port-forward) open, the most kas allows",
                    self.limits.max_sessions_per_agent
                ),
            ));
        }
        *n += 1;
        Ok(SessionSlot {
            sessions: self.clone(),
            agent_id,
        })
    }

    /// Sessions open now for `agent_id` (counting those still waiting for the agent's answer).
    pub fn open(&self, agent_id: u64) -> usize {
        self.lock().get(&agent_id).copied().unwrap_or(0)
    }

    /// Ends every session (kas is shutting down).
    pub fn close_all(&self) {
        self.stop.0.close();
    }

    /// The sessions' series in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let open: usize = self.lock().values().sum();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP kas_upgraded_sessions Upgraded sessions (exec, attach, port-forward) open now.\n\
             # TYPE kas_upgraded_sessions gauge\n\
             kas_upgraded_sessions {open}\n\
             # HELP kas_upgraded_sessions_total Upgraded sessions by how they ended or were refused.\n\
             # TYPE kas_upgraded_sessions_total counter\n\
             kas_upgraded_sessions_total{{result=\"started\"}} {}\n\
             kas_upgraded_sessions_total{{result=\"refused_limit\"}} {}\n\
             kas_upgraded_sessions_total{{result=\"idle_timeout\"}} {}\n\
             kas_upgraded_sessions_total{{result=\"failed\"}} {}\n",
            c(&self.started),
            c(&self.refused),
            c(&self.idle_ended),
            c(&self.failed),
        )
    }
}

/// A client's request to switch protocols, taken from its request.
#[derive(Debug)]
pub struct ClientUpgrade {
    on_upgrade: OnUpgrade,
    /// The `Upgrade` header as sent (`websocket`, `SPDY/3.1`), for logs and the audit log.
    pub protocol: String,
    slot: SessionSlot,
    /// The request's audit context, when the audit log is on.
    audit: Option<crate::audit::AuditContext>,
}

/// Whether `req` asks to switch protocols: HTTP/1.1, `Connection: upgrade`, an `Upgrade` header.
pub fn requests_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && protocol::service::requests_upgrade(
            req.headers()
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        )
}

/// Takes the client's upgrade out of `req` if it asks for one, with a session slot of `agent_id`
/// (429 over the limit).
pub fn take(
    state: &KasState,
    req: &mut Request<Incoming>,
    agent_id: u64,
) -> Result<Option<ClientUpgrade>, ApiError> {
    if !requests_upgrade(req) {
        return Ok(None);
    }
    let slot = state.upgrades.acquire(agent_id)?;
    let protocol = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(64)
        .collect();
    let audit = req
        .extensions()
        .get::<crate::audit::AuditContext>()
        .cloned();
    Ok(Some(ClientUpgrade {
        on_upgrade: hyper::upgrade::on(req),
        protocol,
        slot,
        audit,
    }))
}

/// The forwarding rule for a request: the upgrade rule for an upgrade.
pub fn request_rule(req: &Request<Incoming>, upgrade: bool) -> HeaderRule {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    if upgrade {
        HeaderRule::for_upgrade_head(headers)
    } else {
        HeaderRule::for_head(headers)
    }
}

/// The client's `101` for the agent's `101` head, and the session spawned to carry the bytes once
/// hyper hands the connection over. A `101` without an `Upgrade` header is the agent's fault (502).
pub fn switched(
    state: &Arc<KasState>,
    stream: Arc<Stream>,
    lease: Lease<Connection>,
    head: &ResponseHead,
    upgrade: ClientUpgrade,
    span: &tracing::Span,
) -> Result<Response<ResponseBody>, ApiError> {
    let agent_id = lease.agent_id();
    let pairs = || {
        head.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref()))
    };
    if !protocol::service::is_upgrade_tunnel_head(pairs()) {
        stream.reset(ErrorCode::Cancel);
        let m = "agent switched protocols (101) without an Upgrade header";
        state
            .agent_log
            .warn(agent_id, crate::agent_log::Misbehaviour::BadResponseHead, m);
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("agent {agent_id}: {m}"),
        ));
    }
    let rule = HeaderRule::for_upgrade_head(pairs());
    let mut resp = Response::new(super::response::full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    for h in head.headers.iter().filter(|h| rule.forwards(&h.name)) {
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::debug!(name = %h.name, "dropping an invalid response header"),
        }
    }
    Ok(start(
        state,
        resp,
        upgrade,
        Far::Stream(stream, lease),
        span,
    ))
}

/// Marks `resp` (a `101`) as an upgrade and spawns the session with the `far` end.
fn start(
    state: &Arc<KasState>,
    mut resp: Response<ResponseBody>,
    upgrade: ClientUpgrade,
    far: Far,
    span: &tracing::Span,
) -> Response<ResponseBody> {
    resp.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    state.upgrades.started.fetch_add(1, Ordering::Relaxed);
    state
        .spawner
        .spawn_detached(session(state.clone(), upgrade, far, span.clone()));
    resp
}

/// The client's `101` for the `101` of the replica holding the agent (the session was forwarded
/// over the private API, [`crate::peer`]), and the session spawned to carry the bytes between the
/// client's connection and the holder's once hyper hands both over. The holder carries them on to
/// the agent's stream; this replica writes the session's one audit record.
pub fn switched_via_replica(
    state: &Arc<KasState>,
    mut holder: Response<Incoming>,
    upgrade: ClientUpgrade,
    span: &tracing::Span,
) -> Response<ResponseBody> {
    let on_upgrade = hyper::upgrade::on(&mut holder);
    let rule = HeaderRule::for_upgrade_head(
        holder
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let mut resp = Response::new(super::response::full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    for (n, v) in holder.headers() {
        if rule.forwards(n.as_str()) && !n.as_str().starts_with(crate::peer::CONTROL_PREFIX) {
            headers.append(n.clone(), v.clone());
        }
    }
    start(state, resp, upgrade, Far::Replica(on_upgrade), span)
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Both directions ended with a half-close.
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// kas is shutting down.
    Shutdown,
    /// The client or the agent failed or reset it.
    Failed(String),
}

impl SessionEnd {
    /// The word for logs and the audit log.
    pub fn label(&self) -> &'static str {
        match self {
            SessionEnd::Closed => "closed",
            SessionEnd::Idle => "idle",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Failed(_) => "failed",
        }
    }
}

/// What one upgraded session carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// Octets client → agent.
    pub bytes_in: u64,
    /// Octets agent → client.
    pub bytes_out: u64,
    /// How it ended.
    pub end: SessionEnd,
    /// How long it lasted after the `101`.
    pub duration: Duration,
}

/// The other end of a session: the agent's stream on a connection here, or the replica holding the
/// agent (the holder's upgraded private API connection, once hyper hands it over).
enum Far {
    Stream(Arc<Stream>, Lease<Connection>),
    Replica(OnUpgrade),
}

/// Carries one upgraded session until both directions ended, one side failed, it was idle too long,
/// or kas shuts down. Holds the request's lease (the router counts it as running) and its slot.
async fn session(state: Arc<KasState>, upgrade: ClientUpgrade, far: Far, span: tracing::Span) {
    let started = Instant::now();
    let ClientUpgrade {
        on_upgrade,
        protocol,
        slot,
        audit,
    } = upgrade;
    let write_audit = |report: &SessionReport| {
        if let Some(ctx) = &audit {
            let mut record = ctx.record(
                crate::audit::RecordKind::Session,
                101,
                Some(report.bytes_in),
                report.bytes_out,
            );
            record.upgrade = Some(protocol.clone());
            record.end = Some(report.end.label());
            state.audit.write(&record);
        }
    };
    let not_upgraded = |e: String| {
        state.upgrades.failed.fetch_add(1, Ordering::Relaxed);
        span.in_scope(|| tracing::info!(error = %e, "connection not upgraded: session ended"));
        write_audit(&SessionReport {
            bytes_in: 0,
            bytes_out: 0,
            end: SessionEnd::Failed(e),
            duration: Duration::ZERO,
        });
    };
    let client = match on_upgrade.await {
        Ok(u) => UpgradedIo(u),
        Err(e) => {
            if let Far::Stream(stream, _) = &far {
                stream.reset(ErrorCode::Cancel);
            }
            return not_upgraded(format!("client: {e}"));
        }
    };
    let limits = state.upgrades.limits;
    let stop = &state.upgrades.stop.1;
    let (report, stream) = match far {
        Far::Stream(stream, lease) => {
            let report = carry(client, &stream, limits.idle_timeout, stop, &state.metrics).await;
            (report, Some((stream, lease)))
        }
        Far::Replica(holder) => match holder.await {
            Ok(holder) => {
                let report = carry_io(client, UpgradedIo(holder), limits.idle_timeout, stop).await;
                (report, None)
            }
            Err(e) => return not_upgraded(format!("replica holding the agent: {e}")),
        },
    };
    match &report.end {
        SessionEnd::Closed => {}
        SessionEnd::Idle => {
            state.upgrades.idle_ended.fetch_add(1, Ordering::Relaxed);
        }
        SessionEnd::Shutdown | SessionEnd::Failed(_) => {
            state.upgrades.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Ended other than closed: the agent's stream is reset (a holder's connection is dropped, which
    // ends its side of the session).
    if let Some((stream, lease)) = stream {
        if report.end != SessionEnd::Closed {
            stream.reset(ErrorCode::Cancel);
        }
        drop(lease);
    }
    write_audit(&report);
    drop(slot);
    span.in_scope(|| {
        tracing::info!(
            protocol = %protocol,
            bytes_in = report.bytes_in,
            bytes_out = report.bytes_out,
            duration_ms = report.duration.as_millis() as u64,
            end = ?report.end,
            elapsed_total_ms = started.elapsed().as_millis() as u64,
            "upgraded session ended"
        )
    });
}

/// What moved in a session and when the last byte did.
struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte moved in either direction.
    last: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// `n` octets moved client → agent (`inbound`) or back.
    fn moved(&self, inbound: bool, n: usize) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let counter = if inbound {
            &self.bytes_in
        } else {
            &self.bytes_out
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Runs the two directions of a session until both ended or one failed, it was idle for
    /// `idle_timeout`, or `stop` closed.
    async fn supervise(
        &self,
        up: impl Future<Output = Result<(), String>>,
        down: impl Future<Output = Result<(), String>>,
        idle_timeout: Duration,
        stop: &async_channel::Receiver<()>,
    ) -> SessionReport {
        let pipe = async {
            match futures_lite::future::try_zip(up, down).await {
                Ok(_) => SessionEnd::Closed,
                Err(e) => SessionEnd::Failed(e),
            }
        };
        let idle = async {
            // Bounded: each wait ends at the current idle deadline; the session ends when one
            // passes with no byte moved.
            loop {
                let since = Duration::from_millis(self.last.load(Ordering::Relaxed));
                let deadline = self.started + since + idle_timeout;
                if Instant::now() >= deadline {
                    return SessionEnd::Idle;
                }
                smol::Timer::at(deadline).await;
            }
        };
        let shutdown = async {
            let _ = stop.recv().await;
            SessionEnd::Shutdown
        };
        let end = futures_lite::future::or(pipe, futures_lite::future::or(idle, shutdown)).await;
        SessionReport {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            end,
            duration: self.started.elapsed(),
        }
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to`'s write side (half-close).
async fn copy_half(
    mut from: impl futures_lite::AsyncRead + Unpin,
    mut to: impl futures_lite::AsyncWrite + Unpin,
    activity: &Activity,
    inbound: bool,
) -> Result<(), String> {
    let (src, dst) = if inbound {
        ("client", "replica holding the agent")
    } else {
        ("replica holding the agent", "client")
    };
    let mut buf = vec![0u8; CHUNK];
    // Bounded by `from`: every iteration reads from it or ends.
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| format!("{src} read: {e}"))?;
        if n == 0 {
            let _ = to.close().await;
            return Ok(());
        }
        activity.moved(inbound, n);
        to.write_all(&buf[..n])
            .await
            .map_err(|e| format!("{dst} write: {e}"))?;
        to.flush().await.map_err(|e| format!("{dst} write: {e}"))?;
    }
}

/// The byte pipe between the client and the replica holding the agent (a session another replica
/// carries to the agent): each direction half-closes on its own.
async fn carry_io(
    client: UpgradedIo,
    holder: UpgradedIo,
    idle_timeout: Duration,
    stop: &async_channel::Receiver<()>,
) -> SessionReport {
    let activity = Activity::new();
    let (client_read, client_write) = futures_lite::io::split(client);
    let (holder_read, holder_write) = futures_lite::io::split(holder);
    let up = copy_half(client_read, holder_write, &activity, true);
    let down = copy_half(holder_read, client_write, &activity, false);
    activity.supervise(up, down, idle_timeout, stop).await
}

/// The byte pipe between the client and the stream (see the module documentation).
async fn carry(
    client: UpgradedIo,
    stream: &Stream,
    idle_timeout: Duration,
    stop: &async_channel::Receiver<()>,
    metrics: &crate::metrics::Metrics,
) -> SessionReport {
    let activity = Activity::new();
    let (mut client_read, mut client_write) = futures_lite::io::split(client);
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        // Bounded by the client's connection: every iteration reads from it or ends.
        loop {
            let n = client_read
                .read(&mut buf)
                .await
                .map_err(|e| format!("client read: {e}"))?;
            if n == 0 {
                let _ = stream.finish();
                return Ok::<(), String>(());
            }
            activity.moved(true, n);
            metrics.bytes_in(n);
            let mut writer: &Stream = stream;
            writer
                .write_all(&buf[..n])
                .await
                .map_err(|e| format!("agent stream: {e}"))?;
        }
    };
    let down = async {
        // Bounded by the stream: every iteration takes a chunk of it or ends.
        loop {
            match stream.read_chunk(CHUNK).await {
                Some(Ok(bytes)) => {
                    activity.moved(false, bytes.len());
                    metrics.bytes_out(bytes.len());
                    client_write
                        .write_all(&bytes)
                        .await
                        .map_err(|e| format!("client write: {e}"))?;
                    client_write
                        .flush()
                        .await
                        .map_err(|e| format!("client write: {e}"))?;
                }
                Some(Err(e)) => return Err(format!("agent stream: {e}")),
                None => {
                    if let Ok(Some(t)) = stream.trailer().await
                        && t.code != protocol::service::status::OK
                    {
                        return Err(format!(
                            "agent ended the session with code {}: {}",
                            t.code, t.message
                        ));
                    }
                    let _ = client_write.close().await;
                    return Ok::<(), String>(());
                }
            }
        }
    };
    activity.supervise(up, down, idle_timeout, stop).await
}
