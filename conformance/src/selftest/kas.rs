//! A deliberately simple kas built on [`protocol::Connection`] with injectable faults, so the
//! harness's own tests can show that each kas check fails when an implementation breaks its rule
//! (hidden subcommand `conformance selftest-kas --state-dir DIR --agent-port P --api-port Q`).
//!
//! It reads the state directory the kas suite writes (`conformance.json`, `kas.crt`, `kas.key`):
//! agents authenticate with the SHA-256 of their tokens, users with `Bearer pat:<agent>:<token>`.
//! `/k8s-proxy/{path}` is routed to a usable connection of the agent (not draining, below the
//! agent's stream limit), waiting up to the routing deadline, and becomes a `k8s-api` stream; the
//! answer streams back chunked. A client that goes away gets its stream reset with CANCEL; a stream
//! the agent resets is a 502. Unknown agents are 404, bad user tokens 401, agents not connected by
//! the deadline 503. Without a fault it passes the whole kas suite; each [`Fault`] breaks one rule.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Frame, PREFACE};
use protocol::{Config, Connection, ErrorCode, Event, StreamId, proto};
use sha2::{Digest, Sha256};

use super::tamper::{self, FirstIncoming, Input, Outgoing, Queue, UnknownFrameWatch};
use crate::http;

/// The rule the self-test kas breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: a conforming (if minimal) kas.
    None,
    /// Accepts a token the agents file does not list (as agent 1).
    AcceptAnyToken,
    /// Closes without the GOAWAY that must accompany a connection error.
    SilentOnError,
    /// Answers PINGs with a different payload.
    WrongPingPayload,
    /// Sends every DATA frame twice (exceeding the windows).
    DoubleData,
    /// Never returns flow-control credit for response bodies.
    NoCredit,
    /// Accepts an agent offering only versions it does not speak.
    AcceptUnsupportedVersion,
    /// Accepts HELLO settings out of range.
    AcceptBadSettings,
    /// Believes agents allow 100 concurrent streams, whatever they announce.
    ExceedStreamLimit,
    /// Does not answer an agent's GOAWAY with its own.
    NoGoawayReply,
    /// Forwards the user's Authorization header through the tunnel.
    LeakAuthorization,
    /// Leaves the stream open when the HTTP client goes away.
    NoCancelOnDisconnect,
    /// Answers 200 when the agent resets the stream.
    OkOnAgentReset,
    /// Answers 503 at once for an agent that is not connected, without waiting for the deadline.
    EarlyUnavailable,
    /// Answers 503 for an agent it does not know.
    UnknownAgentUnavailable,
    /// Accepts any user token.
    AnyUserToken,
    /// Treats a frame of an unknown type as a protocol error.
    GoawayOnUnknownFrame,
    /// Accepts with the highest version the agent offers, even one kas does not speak.
    AcceptHighestVersion,
    /// Exits (as a panic would) on a request without credentials.
    CrashOnMissingToken,
    /// Enforces no flood limits: never closes a PING or rapid-reset flooder with ENHANCE_YOUR_CALM.
    NoFloodLimits,
    /// Refuses `config` streams with RESET `UNKNOWN_SERVICE` instead of answering them.
    RefuseConfigStreams,
    /// Answers every `gitops` stream 200 with a status, whatever its method and headers.
    AcceptBadGitopsHeads,
}

/// Every fault by its command-line name.
pub const FAULTS: &[(&str, Fault)] = &[
    ("none", Fault::None),
    ("accept-any-token", Fault::AcceptAnyToken),
    ("silent-on-error", Fault::SilentOnError),
    ("wrong-ping-payload", Fault::WrongPingPayload),
    ("double-data", Fault::DoubleData),
    ("no-credit", Fault::NoCredit),
    (
        "accept-unsupported-version",
        Fault::AcceptUnsupportedVersion,
    ),
    ("accept-bad-settings", Fault::AcceptBadSettings),
    ("exceed-stream-limit", Fault::ExceedStreamLimit),
    ("no-goaway-reply", Fault::NoGoawayReply),
    ("leak-authorization", Fault::LeakAuthorization),
    ("no-cancel-on-disconnect", Fault::NoCancelOnDisconnect),
    ("ok-on-agent-reset", Fault::OkOnAgentReset),
    ("early-unavailable", Fault::EarlyUnavailable),
    ("unknown-agent-unavailable", Fault::UnknownAgentUnavailable),
    ("any-user-token", Fault::AnyUserToken),
    ("goaway-on-unknown-frame", Fault::GoawayOnUnknownFrame),
    ("accept-highest-version", Fault::AcceptHighestVersion),
    ("crash-on-missing-token", Fault::CrashOnMissingToken),
    ("no-flood-limits", Fault::NoFloodLimits),
    ("refuse-config-streams", Fault::RefuseConfigStreams),
    ("accept-bad-gitops-heads", Fault::AcceptBadGitopsHeads),
];

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        super::by_name(FAULTS, s)
    }
}

/// Why the self-test kas cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KasSetupError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not the kas suite's description: {reason}")]
    Description { path: String, reason: String },
    #[error(transparent)]
    Tls(#[from] tunnel_tls::TlsError),
}

/// The self-test kas's configuration, from the kas suite's state directory.
#[derive(Clone)]
pub struct KasOptions {
    pub agent_port: u16,
    pub api_port: u16,
    pub fault: Fault,
    /// SHA-256 (hex) of each agent token → agent id.
    pub agents: BTreeMap<String, u64>,
    /// SHA-256 (hex) of the user token.
    pub user_sha256: String,
    pub deadline: Duration,
    pub tls: Arc<rustls::ServerConfig>,
}

impl KasOptions {
    /// Reads `conformance.json`, `kas.crt` and `kas.key` from `state_dir`.
    pub fn load(
        state_dir: &Path,
        agent_port: u16,
        api_port: u16,
        fault: Fault,
    ) -> Result<KasOptions, KasSetupError> {
        let path = state_dir.join("conformance.json");
        let text = std::fs::read_to_string(&path).map_err(|source| KasSetupError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bad = |reason: &str| KasSetupError::Description {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let agents = v["agents"]
            .as_array()
            .ok_or_else(|| bad("no agents"))?
            .iter()
            .filter_map(|a| Some((a["token_sha256"].as_str()?.to_owned(), a["id"].as_u64()?)))
            .collect();
        let user_sha256 = v["users"][0]["token_sha256"]
            .as_str()
            .ok_or_else(|| bad("no user"))?
            .to_owned();
        let deadline = Duration::from_millis(
            v["pending_request_deadline_ms"]
                .as_u64()
                .ok_or_else(|| bad("no routing deadline"))?,
        );
        let file = |name: &str| -> PathBuf { state_dir.join(name) };
        let tls = tunnel_tls::server_config(file("kas.crt"), file("kas.key"), None)?;
        Ok(KasOptions {
            agent_port,
            api_port,
            fault,
            agents,
            user_sha256,
            deadline,
            tls,
        })
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// What an API request hears about its stream.
enum Update {
    Opened(StreamId),
    Head(u32),
    Data(Bytes),
    End,
    Reset(ErrorCode),
    /// The connection went away (or could not open the stream).
    Lost,
}

/// What an API request asks of a connection.
enum Command {
    Open {
        head: Box<proto::RequestHead>,
        body: Vec<u8>,
        updates: Sender<Update>,
    },
    Cancel(StreamId),
}

/// One agent connection as the router sees it.
struct Entry {
    agent: u64,
    max_streams: u32,
    load: u32,
    draining: bool,
    commands: Sender<Command>,
}

/// Every established agent connection.
#[derive(Default)]
struct Hub {
    conns: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
}

impl Hub {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<u64, Entry>) -> T) -> T {
        let mut guard = match self.conns.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }
}

/// Runs until killed.
pub fn run_kas(opts: &KasOptions) -> ! {
    let hub = Arc::new(Hub::default());
    let bind = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
            eprintln!("selftest-kas: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        })
    };
    let agents = bind(opts.agent_port);
    let api = bind(opts.api_port);
    {
        let (opts, hub) = (opts.clone(), hub.clone());
        std::thread::spawn(move || {
            for tcp in agents.incoming().flatten() {
                let (opts, hub) = (opts.clone(), hub.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_agent(&opts, &hub, tcp) {
                        eprintln!("selftest-kas: agent connection: {e}");
                    }
                });
            }
        });
    }
    for tcp in api.incoming().flatten() {
        let (opts, hub) = (opts.clone(), hub.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve_api(&opts, &hub, tcp) {
                eprintln!("selftest-kas: API request: {e}");
            }
        });
    }
    std::process::exit(1)
}

// ------------------------------------------------------------------------------ the API

fn status_body(code: u16, reason: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "code": code, "reason": reason, "message": message})
    .to_string()
    .into_bytes()
}

fn error(w: &mut TcpStream, code: u16, reason: &str, message: &str) -> io::Result<()> {
    http::write_response(
        w,
        code,
        "application/json",
        &status_body(code, reason, message),
    )
}

/// One API request on its own connection.
fn serve_api(opts: &KasOptions, hub: &Hub, tcp: TcpStream) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = tcp.try_clone()?;
    let mut r = BufReader::new(tcp);
    let Some(req) = http::read_request(&mut r)? else {
        return Ok(());
    };
    let Some(path) = req.target.strip_prefix("/k8s-proxy") else {
        return error(&mut w, 404, "NotFound", "only /k8s-proxy is served");
    };
    let bearer = req
        .head
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer pat:"))
        .and_then(|rest| rest.split_once(':'));
    let Some((agent, token)) = bearer else {
        if opts.fault == Fault::CrashOnMissingToken && req.head.header("authorization").is_none() {
            eprintln!("selftest-kas: crashing on a request without credentials");
            std::process::exit(101);
        }
        return error(
            &mut w,
            401,
            "Unauthorized",
            "a bearer pat:<agent>:<token> is needed",
        );
    };
    if opts.fault != Fault::AnyUserToken && sha256_hex(token) != opts.user_sha256 {
        return error(&mut w, 401, "Unauthorized", "unknown user token");
    }
    let agent: Option<u64> = agent
        .parse()
        .ok()
        .filter(|id| opts.agents.values().any(|a| a == id));
    let Some(agent) = agent else {
        if opts.fault == Fault::UnknownAgentUnavailable {
            return error(&mut w, 503, "ServiceUnavailable", "agent not connected");
        }
        return error(&mut w, 404, "NotFound", "no such agent");
    };
    let mut headers: Vec<proto::Header> = ["accept", "content-type"]
        .iter()
        .filter_map(|name| {
            req.head.header(name).map(|v| proto::Header {
                name: (*name).to_owned(),
                value: Bytes::from(v.to_owned()),
            })
        })
        .collect();
    if opts.fault == Fault::LeakAuthorization
        && let Some(a) = req.head.header("authorization")
    {
        headers.push(proto::Header {
            name: "authorization".into(),
            value: Bytes::from(a.to_owned()),
        });
    }
    let head = proto::RequestHead {
        service: protocol::service::K8S_API.into(),
        method: req.method.clone(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        },
        headers,
        timeout_ms: 0,
        impersonation: None,
    };
    // Route: a usable connection of the agent, or wait for one until the deadline.
    let (tx, updates) = mpsc::channel();
    let deadline = Instant::now() + opts.deadline;
    let mut command = Some(Command::Open {
        head: Box::new(head),
        body: req.body,
        updates: tx,
    });
    let conn = loop {
        let picked = hub.with(|conns| {
            let (id, e) = conns
                .iter_mut()
                .filter(|(_, e)| e.agent == agent && !e.draining && e.load < e.max_streams)
                .min_by_key(|(_, e)| e.load)?;
            e.load += 1;
            let _ = e.commands.send(command.take()?);
            Some(*id)
        });
        if let Some(id) = picked {
            break id;
        }
        if opts.fault == Fault::EarlyUnavailable || Instant::now() >= deadline {
            return error(&mut w, 503, "ServiceUnavailable", "agent not connected");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let result = relay(opts, hub, conn, &updates, &mut w);
    hub.with(|conns| {
        if let Some(e) = conns.get_mut(&conn) {
            e.load = e.load.saturating_sub(1);
        }
    });
    result
}

/// Streams the agent's answer to the client.
fn relay(
    opts: &KasOptions,
    hub: &Hub,
    conn: u64,
    updates: &Receiver<Update>,
    w: &mut TcpStream,
) -> io::Result<()> {
    let mut stream = None;
    let mut head_sent = false;
    // Until the stream ends; the agent side is bounded by its connection's own timers.
    loop {
        let Ok(u) = updates.recv() else {
            return Ok(());
        };
        match u {
            Update::Opened(id) => stream = Some(id),
            Update::Head(status) => {
                head_sent = true;
                let head = format!(
                    "HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\n\
                     Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                );
                if w.write_all(head.as_bytes())
                    .and_then(|()| w.flush())
                    .is_err()
                {
                    return cancel(opts, hub, conn, stream);
                }
            }
            Update::Data(d) => {
                let chunk = [format!("{:x}\r\n", d.len()).as_bytes(), &d, b"\r\n"].concat();
                if w.write_all(&chunk).and_then(|()| w.flush()).is_err() {
                    return cancel(opts, hub, conn, stream);
                }
            }
            Update::End => {
                if head_sent {
                    w.write_all(b"0\r\n\r\n")?;
                    return w.flush();
                }
                return error(w, 502, "InternalError", "the agent sent no response");
            }
            Update::Reset(code) if !head_sent => {
                if opts.fault == Fault::OkOnAgentReset {
                    return http::write_response(w, 200, "application/json", b"{}");
                }
                return error(w, 502, "InternalError", &format!("the agent reset: {code}"));
            }
            Update::Reset(_) | Update::Lost if head_sent => return Ok(()),
            Update::Reset(_) | Update::Lost => {
                return error(w, 502, "InternalError", "the agent connection was lost");
            }
        }
    }
}

/// The client went away: reset its stream (unless the fault forgets to).
fn cancel(opts: &KasOptions, hub: &Hub, conn: u64, stream: Option<StreamId>) -> io::Result<()> {
    if opts.fault != Fault::NoCancelOnDisconnect
        && let Some(id) = stream
    {
        hub.with(|conns| {
            if let Some(e) = conns.get(&conn) {
                let _ = e.commands.send(Command::Cancel(id));
            }
        });
    }
    Ok(())
}

// ------------------------------------------------------------------------------ agents

fn outgoing(fault: Fault) -> Outgoing {
    match fault {
        Fault::WrongPingPayload => Outgoing::rewriting(0, tamper::wrong_ping_payload),
        Fault::SilentOnError => Outgoing::rewriting(0, tamper::silent_on_error),
        Fault::NoGoawayReply => Outgoing::rewriting(0, tamper::no_goaway_reply),
        Fault::DoubleData => Outgoing::rewriting(0, tamper::double_data),
        _ => Outgoing::none(),
    }
}

fn first_incoming(fault: Fault) -> FirstIncoming {
    let rewrite_hello = move |f: Frame| match f {
        Frame::Hello(mut h) => {
            match fault {
                Fault::AcceptUnsupportedVersion => h.min_version = protocol::PROTOCOL_VERSION,
                Fault::AcceptBadSettings => {
                    if let Some(s) = &mut h.settings {
                        s.max_frame_size = protocol::tunnel::frame::DEFAULT_MAX_FRAME_SIZE;
                    }
                }
                Fault::ExceedStreamLimit => {
                    if let Some(s) = &mut h.settings {
                        s.max_concurrent_streams = 100;
                    }
                }
                _ => {}
            }
            Frame::Hello(h)
        }
        f => f,
    };
    match fault {
        Fault::AcceptUnsupportedVersion | Fault::AcceptBadSettings | Fault::ExceedStreamLimit => {
            FirstIncoming::rewriting(PREFACE, rewrite_hello)
        }
        _ => FirstIncoming::none(),
    }
}

/// A stream kas opened, and what it still has to send.
struct Open {
    updates: Sender<Update>,
    body: Queue,
}

/// A lingering close (PROTOCOL.md §17): shut our side down, then discard what the peer still sends for
/// a moment, so that closing with unread input does not reset the connection and destroy the final
/// GOAWAY before the peer reads it.
fn linger(tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) {
    use std::io::Read as _;
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match tls.sock.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// One agent connection, from TLS to close.
fn serve_agent(opts: &KasOptions, hub: &Hub, mut tcp: TcpStream) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls_conn =
        rustls::ServerConnection::new(opts.tls.clone()).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // Bounded by the read timeout: each round does I/O or fails.
    while tls_conn.is_handshaking() {
        tls_conn
            .complete_io(&mut tcp)
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let mut tls = rustls::StreamOwned::new(tls_conn, tcp);
    let fault = opts.fault;
    let mut config = Config::default();
    if fault == Fault::NoFloodLimits {
        config.flood.pings = u32::MAX;
        config.flood.rapid_resets = u32::MAX;
    }
    let mut conn = Connection::server(config, Instant::now());
    let mut out = outgoing(fault);
    let mut first = first_incoming(fault);
    if fault == Fault::AcceptHighestVersion {
        // Remember the highest version the HELLO offers, and accept with it.
        let offered = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = offered.clone();
        first = FirstIncoming::rewriting(PREFACE, move |f| {
            if let Frame::Hello(h) = &f {
                seen.store(h.max_version, Ordering::SeqCst);
            }
            f
        });
        out = Outgoing::rewriting(0, move |f| match f {
            Frame::Accept(mut a) => {
                a.version = a.version.max(offered.load(Ordering::SeqCst));
                vec![Frame::Accept(a)]
            }
            f => vec![f],
        });
    }
    let mut input = Input {
        first,
        refuse_unknown: (fault == Fault::GoawayOnUnknownFrame)
            .then(|| UnknownFrameWatch::new(PREFACE.len())),
    };
    let (tx, commands) = mpsc::channel::<Command>();
    let mut tx = Some(tx);
    let mut me: Option<u64> = None;
    let mut open: BTreeMap<StreamId, Open> = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the connection: it ends on close, EOF, or its own timers.
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            let bytes = out.apply(&bytes);
            if tls.write_all(&bytes).and_then(|()| tls.flush()).is_err() {
                conn.handle_eof();
            }
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Hello(info) => {
                    let id = opts.agents.get(&sha256_hex(&info.token)).copied();
                    let id = id.or((fault == Fault::AcceptAnyToken).then_some(1));
                    match id {
                        Some(id) => {
                            let cid = hub.next.fetch_add(1, Ordering::SeqCst);
                            conn.accept(id, format!("selftest-{cid}"), Instant::now());
                        }
                        None => conn.reject(proto::Reject {
                            code: proto::RejectCode::Unauthenticated as i32,
                            message: "unknown token".into(),
                            ..Default::default()
                        }),
                    }
                }
                Event::Connected(e) => {
                    let cid = hub.next.fetch_add(1, Ordering::SeqCst);
                    if let Some(commands) = tx.take() {
                        hub.with(|conns| {
                            conns.insert(
                                cid,
                                Entry {
                                    agent: e.agent_id,
                                    max_streams: e.peer_settings.max_concurrent_streams,
                                    load: 0,
                                    draining: false,
                                    commands,
                                },
                            )
                        });
                    }
                    me = Some(cid);
                }
                Event::StreamOpened { id, head, .. }
                    if head.service == protocol::service::CONFIG
                        && fault != Fault::RefuseConfigStreams =>
                {
                    // SERVICES.md §8: this kas has no configuration for any agent.
                    let (status, reason) = if head.method == protocol::service::CONFIG_METHOD {
                        (404, "no-config")
                    } else {
                        (400, "bad-method")
                    };
                    let head = proto::ResponseHead {
                        status,
                        headers: vec![proto::Header {
                            name: "x-tunnel-error".into(),
                            value: bytes::Bytes::from_static(reason.as_bytes()),
                        }],
                    };
                    if conn.send_response(id, head, true).is_err() {
                        conn.reset(id, ErrorCode::Internal, "cannot answer");
                    }
                }
                Event::StreamOpened { id, head, .. }
                    if head.service == protocol::service::GITOPS =>
                {
                    answer_gitops(&mut conn, id, &head, fault);
                }
                Event::StreamOpened { id, .. } => {
                    conn.reset(id, ErrorCode::UnknownService, "kas serves no agent streams");
                }
                Event::Response {
                    id,
                    head,
                    end_stream,
                } => {
                    if let Some(o) = open.get(&id) {
                        let _ = o.updates.send(Update::Head(head.status));
                        if end_stream {
                            let _ = o.updates.send(Update::End);
                        }
                    }
                }
                Event::Data { id, data } => {
                    if fault != Fault::NoCredit {
                        conn.release_capacity(id, data.len());
                    }
                    if let Some(o) = open.get(&id) {
                        let _ = o.updates.send(Update::Data(data));
                    }
                }
                Event::Finished { id } | Event::Trailer { id, .. } => {
                    if let Some(o) = open.remove(&id) {
                        let _ = o.updates.send(Update::End);
                    }
                }
                Event::Reset { id, code, .. } => {
                    if let Some(o) = open.remove(&id) {
                        let _ = o.updates.send(Update::Reset(code));
                    }
                }
                Event::Writable { id } => {
                    if let Some(o) = open.get_mut(&id) {
                        o.body.offer(&mut conn, id);
                    }
                }
                Event::GoAway { .. } => {
                    if let Some(cid) = me {
                        hub.with(|conns| {
                            if let Some(e) = conns.get_mut(&cid) {
                                e.draining = true;
                            }
                        });
                    }
                }
                Event::Closed(_) => {
                    while let Some(bytes) = conn.poll_transmit() {
                        let _ = tls.write_all(&out.apply(&bytes));
                    }
                    let _ = tls.flush();
                    linger(&mut tls);
                    if let Some(cid) = me {
                        hub.with(|conns| conns.remove(&cid));
                    }
                    for (_, o) in std::mem::take(&mut open) {
                        let _ = o.updates.send(Update::Lost);
                    }
                    return Ok(());
                }
            }
        }
        // What API requests ask of this connection.
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Open {
                    head,
                    body,
                    updates,
                } => match conn.open_stream(*head, body.is_empty()) {
                    Ok(id) => {
                        let _ = updates.send(Update::Opened(id));
                        let mut o = Open {
                            updates,
                            body: Queue {
                                fin: !body.is_empty(),
                                ..Queue::default()
                            },
                        };
                        if !body.is_empty() {
                            o.body.chunks.push_back(Bytes::from(body));
                        }
                        o.body.offer(&mut conn, id);
                        open.insert(id, o);
                    }
                    Err(_) => {
                        let _ = updates.send(Update::Lost);
                    }
                },
                Command::Cancel(id) => {
                    if open.remove(&id).is_some() {
                        conn.reset(id, ErrorCode::Cancel, "the client went away");
                    }
                }
            }
        }
        if conn.has_pending_transmit() {
            continue;
        }
        tamper::read_and_tick(&mut conn, &mut tls, &mut buf, &mut input)?;
    }
}

/// Where the state directory's files are, for the suite's `--cmd`.
pub fn command(conformance: &Path, fault: &str) -> String {
    format!(
        "exec {} selftest-kas --state-dir {{state_dir}} --agent-port {{agent_port}} \
         --api-port {{api_port}} --fault {fault}",
        conformance.display()
    )
}

/// SERVICES.md §9: this kas knows no agent's configuration, so every well-formed `gitops` stream is
/// answered 200 and told `UNKNOWN_PROJECT` (the stream stays open); a bad method or a missing
/// project is 400.
fn answer_gitops(conn: &mut Connection, id: StreamId, head: &proto::RequestHead, fault: Fault) {
    use gitops::wire;
    let lenient = fault == Fault::AcceptBadGitopsHeads;
    let has_project = head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(wire::PROJECT_HEADER) && !h.value.is_empty());
    let refusal = if head.method != wire::METHOD {
        Some("bad-method")
    } else if !has_project {
        Some("bad-head")
    } else {
        None
    };
    let sent = match refusal.filter(|_| !lenient) {
        Some(reason) => {
            let head = proto::ResponseHead {
                status: 400,
                headers: vec![proto::Header {
                    name: "x-tunnel-error".into(),
                    value: bytes::Bytes::from_static(reason.as_bytes()),
                }],
            };
            conn.send_response(id, head, true).map(|_| ())
        }
        None => {
            let ok = proto::ResponseHead {
                status: 200,
                headers: Vec::new(),
            };
            let status = wire::status(
                wire::StatusCode::UnknownProject,
                "",
                "the self-test kas knows no agent configuration",
            );
            conn.send_response(id, ok, false).and_then(|_| {
                conn.send_data(id, protocol::cache::encode_message(&status), false)
                    .map(|_| ())
            })
        }
    };
    if sent.is_err() {
        conn.reset(id, ErrorCode::Internal, "cannot answer");
    }
}
