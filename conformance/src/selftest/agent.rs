//! A deliberately simple agent built on [`protocol::Connection`] with injectable faults, so the
//! harness's own tests can show that each agentk check fails when an implementation breaks its rule
//! (hidden subcommand `conformance selftest-agent`).
//!
//! Without a fault it conforms, and passes the whole agentk suite: it forwards `k8s-api` requests to
//! the API server of its kubeconfig with the kubeconfig's token (one upstream HTTP/1.1 connection per
//! stream, closed when kas resets the stream), opens `config` and `gitops` streams (the latter per
//! manifest project of the configuration it applied: [`super::gitops`]), refuses other services with
//! RESET `UNKNOWN_SERVICE`,
//! returns credit as it reads request bodies, answers GOAWAY by dialling a replacement at once while
//! the old connection drains, and reconnects with an exponential back-off (500 ms doubling to 8 s)
//! that honours REJECT's `retry_after_ms`. Each [`Fault`] breaks exactly one rule.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Frame, PREFACE};
use protocol::{AgentHello, CloseReason, Config, Connection, ErrorCode, Event, StreamId, proto};

use super::tamper::{self, FirstIncoming, Input, Outgoing, Queue, UnknownFrameWatch};
use crate::http;

/// The rule the self-test agent breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: a conforming (if minimal) agent.
    None,
    /// Reconnects 10 ms after any failure: no back-off, no `retry_after_ms`.
    NoBackoff,
    /// Backs off, but ignores REJECT's `retry_after_ms`.
    IgnoreRetryAfter,
    /// Answers PINGs with a different payload.
    WrongPingPayload,
    /// Closes without the GOAWAY that must accompany a connection error.
    SilentOnError,
    /// Sends every DATA frame twice (exceeding the windows).
    DoubleData,
    /// Sends a PING after HELLO, before ACCEPT.
    PingBeforeAccept,
    /// Takes an ACCEPT whose version is outside the range it offered.
    AcceptAnyVersion,
    /// Exits with a panic's status when refused with VERSION_UNSUPPORTED.
    CrashOnVersionReject,
    /// Opens two streams towards kas whatever kas's `max_concurrent_streams` says.
    ExceedsStreamLimit,
    /// Announces `max_concurrent_streams` 4 but serves up to 32.
    UnenforcedStreamLimit,
    /// Does not answer kas's GOAWAY with its own.
    NoGoawayReply,
    /// Dials a replacement only once the draining connection is closed.
    NoReconnectOnGoaway,
    /// Sends DATA on a stream kas has reset.
    DataAfterReset,
    /// Keeps the upstream request running when kas resets its stream.
    KeepUpstreamOnReset,
    /// Forwards the Authorization header received through the tunnel instead of its own.
    ForwardTunnelCredentials,
    /// Answers requests for unknown services with 200.
    ServeUnknownService,
    /// Never returns flow-control credit for request bodies.
    NoCredit,
    /// Treats a frame of an unknown type as a protocol error.
    GoawayOnUnknownFrame,
    /// Reports FRAME_SIZE_ERROR as PROTOCOL_ERROR.
    FrameSizeAsProtocol,
    /// Opens its `config` stream without the commit it applied.
    ForgetConfigCommit,
    /// Opens its `gitops` streams without the commit whose set it has.
    ForgetGitopsCommit,
    /// Ignores the request head's `impersonation`: acts as itself whatever kas decided.
    IgnoreImpersonation,
    /// Forwards the `Impersonate-*` headers received through the tunnel.
    ForwardClientImpersonation,
    /// Forwards upgrade requests as ordinary ones (drops `Upgrade`).
    UpgradeIgnored,
    /// Ends upgraded sessions with a full close instead of a half-close: kas's END_STREAM closes
    /// the upstream connection both ways, the upstream's end resets the stream.
    UpgradeFullClose,
    /// Resets the stream when the API server refuses an upgrade, instead of relaying the answer.
    UpgradeRefusalReset,
}

/// Every fault by its command-line name.
pub const FAULTS: &[(&str, Fault)] = &[
    ("none", Fault::None),
    ("no-backoff", Fault::NoBackoff),
    ("ignore-retry-after", Fault::IgnoreRetryAfter),
    ("wrong-ping-payload", Fault::WrongPingPayload),
    ("silent-on-error", Fault::SilentOnError),
    ("double-data", Fault::DoubleData),
    ("ping-before-accept", Fault::PingBeforeAccept),
    ("accept-any-version", Fault::AcceptAnyVersion),
    ("crash-on-version-reject", Fault::CrashOnVersionReject),
    ("exceeds-stream-limit", Fault::ExceedsStreamLimit),
    ("unenforced-stream-limit", Fault::UnenforcedStreamLimit),
    ("no-goaway-reply", Fault::NoGoawayReply),
    ("no-reconnect-on-goaway", Fault::NoReconnectOnGoaway),
    ("data-after-reset", Fault::DataAfterReset),
    ("keep-upstream-on-reset", Fault::KeepUpstreamOnReset),
    (
        "forward-tunnel-credentials",
        Fault::ForwardTunnelCredentials,
    ),
    ("serve-unknown-service", Fault::ServeUnknownService),
    ("no-credit", Fault::NoCredit),
    ("goaway-on-unknown-frame", Fault::GoawayOnUnknownFrame),
    ("frame-size-as-protocol", Fault::FrameSizeAsProtocol),
    ("forget-config-commit", Fault::ForgetConfigCommit),
    ("forget-gitops-commit", Fault::ForgetGitopsCommit),
    ("ignore-impersonation", Fault::IgnoreImpersonation),
    (
        "forward-client-impersonation",
        Fault::ForwardClientImpersonation,
    ),
    ("upgrade-ignored", Fault::UpgradeIgnored),
    ("upgrade-full-close", Fault::UpgradeFullClose),
    ("upgrade-refusal-reset", Fault::UpgradeRefusalReset),
];

/// The configuration applied last (SERVICES.md §8), kept across connections of this process.
static APPLIED: Mutex<Option<protocol::service::ConfigHead>> = Mutex::new(None);

/// What the next `config` stream names.
fn config_have(fault: Fault) -> protocol::service::ConfigHead {
    if fault == Fault::ForgetConfigCommit {
        return protocol::service::ConfigHead::default();
    }
    APPLIED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Applies the configuration messages buffered in `decoder`: remembers the last good one.
fn apply_config(decoder: &mut protocol::cache::MessageDecoder) -> Result<(), String> {
    // Bounded by the buffered octets.
    while let Some(bytes) = decoder.next_message().map_err(|e| e.to_string())? {
        let update = agent_config::ConfigUpdate::from_json(&bytes).map_err(|e| e.to_string())?;
        if !protocol::service::is_commit_id(&update.commit) {
            return Err(format!("bad commit {:?}", update.commit));
        }
        super::gitops::set_projects(
            update
                .config
                .gitops
                .manifest_projects
                .iter()
                .filter_map(|p| p.id.as_ref().map(|i| i.as_str().to_string())),
        );
        *APPLIED.lock().unwrap_or_else(|p| p.into_inner()) = Some(protocol::service::ConfigHead {
            commit: Some(update.commit),
            fingerprint: Some(update.fingerprint.0),
        });
    }
    Ok(())
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        super::by_name(FAULTS, s)
    }
}

/// Why the self-test agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} has no {what}")]
    Kubeconfig { path: String, what: &'static str },
    #[error(transparent)]
    Tls(#[from] tunnel_tls::TlsError),
}

/// Where `k8s-api` requests go: the kubeconfig's API server and token.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` (the kubeconfig's server is `http://host:port`).
    pub addr: String,
    pub token: String,
}

impl Upstream {
    /// Reads the server and the token of a kubeconfig like the one the harness writes (one cluster,
    /// one user, a plain-HTTP server and a bearer token).
    pub fn from_kubeconfig(path: &Path) -> Result<Upstream, SelftestError> {
        let text = std::fs::read_to_string(path).map_err(|source| SelftestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        let missing = |what| SelftestError::Kubeconfig {
            path: path.display().to_string(),
            what,
        };
        let server = field("server:").ok_or_else(|| missing("server"))?;
        let addr = server
            .strip_prefix("http://")
            .ok_or_else(|| missing("plain-HTTP server"))?
            .trim_end_matches('/')
            .to_owned();
        let token = field("token:").ok_or_else(|| missing("token"))?;
        Ok(Upstream { addr, token })
    }
}

/// The self-test agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub kas_address: String,
    pub token: String,
    pub client: Arc<rustls::ClientConfig>,
    pub fault: Fault,
    /// `None`: `k8s-api` requests get 502.
    pub upstream: Option<Upstream>,
}

impl AgentOptions {
    pub fn new(
        kas_address: &str,
        token_file: &Path,
        ca_file: &Path,
        kubeconfig: Option<&Path>,
        fault: Fault,
    ) -> Result<AgentOptions, SelftestError> {
        let token = std::fs::read_to_string(token_file).map_err(|source| SelftestError::Read {
            path: token_file.display().to_string(),
            source,
        })?;
        let client =
            tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(ca_file.to_path_buf()), None)?;
        let upstream = kubeconfig.map(Upstream::from_kubeconfig).transpose()?;
        Ok(AgentOptions {
            kas_address: kas_address.trim_start_matches("tls://").to_owned(),
            token: token.trim().to_owned(),
            client,
            fault,
            upstream,
        })
    }
}

/// What a connection tells the supervisor.
enum Note {
    /// kas sent GOAWAY: dial a replacement.
    GoingAway(u64),
    /// The connection is over.
    Ended(u64, Ending),
}

struct Ending {
    retry_after: Option<Duration>,
    lived: Duration,
}

/// Runs until killed: one connection at a time, a replacement dialled as soon as kas says GOAWAY
/// (the old one drains meanwhile), a back-off after failures.
pub fn run_agent(opts: &AgentOptions) -> ! {
    let (tx, rx) = mpsc::channel::<Note>();
    let spawn = |id: u64| {
        let (opts, tx) = (opts.clone(), tx.clone());
        std::thread::spawn(move || {
            let ending = match serve_once(&opts, id, &tx) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("selftest-agent: {e}");
                    Ending {
                        retry_after: None,
                        lived: Duration::ZERO,
                    }
                }
            };
            let _ = tx.send(Note::Ended(id, ending));
        });
    };
    let mut active = 0u64;
    spawn(active);
    let mut failures: u32 = 0;
    // Until killed: every note is about a connection this loop started.
    loop {
        let Ok(note) = rx.recv() else {
            std::process::exit(1);
        };
        match note {
            Note::GoingAway(id) if id == active && opts.fault != Fault::NoReconnectOnGoaway => {
                failures = 0;
                active += 1;
                spawn(active);
            }
            Note::Ended(id, ending) if id == active => {
                if ending.lived > Duration::from_secs(5) {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(500)
                    .saturating_mul(1 << failures.min(5).saturating_sub(1));
                let retry_after = ending.retry_after.unwrap_or_default();
                let delay = match opts.fault {
                    Fault::NoBackoff => Duration::from_millis(10),
                    Fault::IgnoreRetryAfter => backoff,
                    _ => backoff.max(retry_after),
                };
                std::thread::sleep(delay);
                active += 1;
                spawn(active);
            }
            Note::GoingAway(_) | Note::Ended(..) => {}
        }
    }
}

/// What the connection sends, as the fault rewrites it.
fn outgoing(fault: Fault) -> Outgoing {
    let preface = PREFACE.len();
    match fault {
        Fault::WrongPingPayload => Outgoing::rewriting(preface, tamper::wrong_ping_payload),
        Fault::SilentOnError => Outgoing::rewriting(preface, tamper::silent_on_error),
        Fault::NoGoawayReply => Outgoing::rewriting(preface, tamper::no_goaway_reply),
        Fault::FrameSizeAsProtocol => Outgoing::rewriting(preface, |f| match f {
            Frame::GoAway(mut g) if g.code == ErrorCode::FrameSize.to_u32() => {
                g.code = ErrorCode::Protocol.to_u32();
                vec![Frame::GoAway(g)]
            }
            f => vec![f],
        }),
        Fault::DoubleData => Outgoing::rewriting(preface, tamper::double_data),
        Fault::PingBeforeAccept => Outgoing::rewriting(preface, |f| match f {
            Frame::Hello(h) => vec![
                Frame::Hello(h),
                Frame::Ping {
                    ack: false,
                    payload: *b"too-soon",
                },
            ],
            f => vec![f],
        }),
        Fault::UnenforcedStreamLimit => Outgoing::rewriting(preface, |f| match f {
            Frame::Hello(mut h) => {
                if let Some(s) = &mut h.settings {
                    s.max_concurrent_streams = 4;
                }
                vec![Frame::Hello(h)]
            }
            f => vec![f],
        }),
        _ => Outgoing::none(),
    }
}

/// What the connection receives first, as the fault rewrites it.
fn first_incoming(fault: Fault) -> FirstIncoming {
    match fault {
        Fault::AcceptAnyVersion => FirstIncoming::rewriting(b"", |f| match f {
            Frame::Accept(mut a) => {
                a.version = protocol::PROTOCOL_VERSION;
                Frame::Accept(a)
            }
            f => f,
        }),
        Fault::ExceedsStreamLimit => FirstIncoming::rewriting(b"", |f| match f {
            Frame::Accept(mut a) => {
                if let Some(s) = &mut a.settings {
                    s.max_concurrent_streams = 1000;
                }
                Frame::Accept(a)
            }
            f => f,
        }),
        _ => FirstIncoming::none(),
    }
}

/// The agent's local configuration (32 concurrent streams: a thread each).
fn config() -> Config {
    let mut c = Config::default();
    c.settings.max_concurrent_streams = 32;
    c
}

/// A response body waiting for credit.
#[derive(Default)]
struct Outbox {
    queue: Queue,
    /// RESPONSE sent (body may follow).
    started: bool,
}

/// What a forwarding thread reports for its stream.
enum Reply {
    Head(u32),
    /// `101` with these headers; the stream then carries the upgraded bytes.
    Switched(Vec<proto::Header>),
    Body(Bytes),
    End,
    /// The upstream's direction of an upgraded session ended (kas's may go on).
    UpstreamEnded,
    Failed(String),
}

/// A k8s-api request being forwarded.
struct Forward {
    /// Request body octets, then `None` at the end.
    body: Sender<Option<Bytes>>,
    /// The upstream socket, to close when kas resets the stream.
    upstream: TcpStream,
}

fn serve_once(opts: &AgentOptions, id: u64, notes: &Sender<Note>) -> Result<Ending, String> {
    let tcp = TcpStream::connect(&opts.kas_address).map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = tunnel_tls::server_name("localhost").map_err(|e| e.to_string())?;
    let tls_conn =
        rustls::ClientConnection::new(opts.client.clone(), name).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(tls_conn, tcp);
    let start = Instant::now();
    let hello = AgentHello {
        token: opts.token.clone(),
        meta: proto::AgentMeta {
            version: "selftest".into(),
            capabilities: vec![
                protocol::service::K8S_API.into(),
                protocol::service::CONFIG.into(),
                protocol::service::GITOPS.into(),
            ],
            ..Default::default()
        },
    };
    let fault = opts.fault;
    let mut conn = Connection::agent(config(), hello, start);
    let mut out = outgoing(fault);
    let mut input = Input {
        first: first_incoming(fault),
        refuse_unknown: (fault == Fault::GoawayOnUnknownFrame).then(|| UnknownFrameWatch::new(0)),
    };
    let (reply_tx, replies) = mpsc::channel::<(StreamId, Reply)>();
    let mut forwards: BTreeMap<StreamId, Forward> = BTreeMap::new();
    let mut outboxes: BTreeMap<StreamId, Outbox> = BTreeMap::new();
    let mut connected_at = None;
    let mut late: Vec<(Instant, StreamId)> = Vec::new();
    let mut config_stream: Option<StreamId> = None;
    let mut config_decoder = protocol::cache::MessageDecoder::default();
    let mut gitops_streams = super::gitops::GitopsStreams::default();
    let forget_gitops_commit = fault == Fault::ForgetGitopsCommit;
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
                Event::Connected(_) => {
                    connected_at = Some(Instant::now());
                    let head = protocol::service::config_request_head(&config_have(fault));
                    config_stream = conn.open_stream(head, false).ok();
                    gitops_streams.open_missing(&mut conn, forget_gitops_commit);
                    if fault == Fault::ExceedsStreamLimit {
                        for _ in 0..2 {
                            let head = proto::RequestHead {
                                service: "views".into(),
                                method: "STREAM".into(),
                                path: "/".into(),
                                ..Default::default()
                            };
                            let _ = conn.open_stream(head, false);
                        }
                    }
                }
                Event::StreamOpened {
                    id: sid,
                    head,
                    end_stream,
                } => {
                    if head.service == protocol::service::K8S_API {
                        match start_forward(opts, sid, &head, reply_tx.clone()) {
                            Ok(f) => {
                                if end_stream {
                                    let _ = f.body.send(None);
                                }
                                forwards.insert(sid, f);
                            }
                            Err(e) => {
                                eprintln!("selftest-agent: upstream: {e}");
                                let head = proto::ResponseHead {
                                    status: 502,
                                    headers: Vec::new(),
                                };
                                if conn.send_response(sid, head, true).is_err() {
                                    conn.reset(sid, ErrorCode::Internal, "upstream");
                                }
                            }
                        }
                    } else if fault == Fault::ServeUnknownService {
                        let head = proto::ResponseHead {
                            status: 200,
                            headers: Vec::new(),
                        };
                        let _ = conn.send_response(sid, head, true);
                    } else {
                        conn.reset(sid, ErrorCode::UnknownService, "not served here");
                    }
                }
                Event::Data { id: sid, data } if Some(sid) == config_stream => {
                    conn.release_capacity(sid, data.len());
                    config_decoder.push(&data);
                    if let Err(e) = apply_config(&mut config_decoder) {
                        eprintln!("selftest-agent: config stream: {e}");
                        conn.reset(sid, ErrorCode::Protocol, "bad config message");
                        config_stream = None;
                    }
                    gitops_streams.open_missing(&mut conn, forget_gitops_commit);
                }
                Event::Data { id: sid, data } if gitops_streams.owns(sid) => {
                    conn.release_capacity(sid, data.len());
                    if let Err(e) = gitops_streams.on_data(&mut conn, sid, &data) {
                        eprintln!("selftest-agent: gitops stream: {e}");
                        conn.reset(sid, ErrorCode::Protocol, "bad gitops message");
                        gitops_streams.remove(sid);
                    }
                }
                Event::Data { id: sid, data } => {
                    if fault != Fault::NoCredit {
                        conn.release_capacity(sid, data.len());
                    }
                    if let Some(f) = forwards.get(&sid) {
                        let _ = f.body.send(Some(data));
                    }
                }
                Event::Finished { id: sid } | Event::Trailer { id: sid, .. } => {
                    if let Some(f) = forwards.get(&sid) {
                        let _ = f.body.send(None);
                    }
                }
                Event::Reset {
                    id: sid, remote, ..
                } => {
                    outboxes.remove(&sid);
                    gitops_streams.remove(sid);
                    if let Some(f) = forwards.remove(&sid)
                        && fault != Fault::KeepUpstreamOnReset
                    {
                        let _ = f.upstream.shutdown(std::net::Shutdown::Both);
                    }
                    // kas's streams only (even ids): the fault is about answering kas's requests.
                    if remote && fault == Fault::DataAfterReset && sid.0 % 2 == 0 {
                        // Long after the reset was processed (and any PING behind it answered).
                        late.push((Instant::now() + Duration::from_millis(300), sid));
                    }
                }
                Event::GoAway { .. } => {
                    let _ = notes.send(Note::GoingAway(id));
                }
                Event::Closed(reason) => {
                    while let Some(bytes) = conn.poll_transmit() {
                        let _ = tls.write_all(&out.apply(&bytes));
                    }
                    let _ = tls.flush();
                    for f in forwards.values() {
                        let _ = f.upstream.shutdown(std::net::Shutdown::Both);
                    }
                    let retry_after = match reason {
                        CloseReason::Refused {
                            code,
                            retry_after_ms,
                            ..
                        } => {
                            if fault == Fault::CrashOnVersionReject
                                && code == protocol::RejectCode::VersionUnsupported
                            {
                                eprintln!("selftest-agent: crashing on VERSION_UNSUPPORTED");
                                std::process::exit(101);
                            }
                            Some(Duration::from_millis(retry_after_ms.into()))
                        }
                        _ => None,
                    };
                    return Ok(Ending {
                        retry_after,
                        lived: connected_at.map(|t| t.elapsed()).unwrap_or_default(),
                    });
                }
                Event::Hello(_) | Event::Response { .. } | Event::Writable { .. } => {}
            }
        }
        // The data-after-reset fault's late frames.
        let now = Instant::now();
        late.retain(|(at, sid)| {
            if *at > now {
                return true;
            }
            let frame = super::tamper::data(sid.0, b"after the reset");
            let _ = tls.write_all(&frame.to_bytes()).and_then(|()| tls.flush());
            false
        });
        // What the forwarding threads got from upstream.
        while let Ok((sid, reply)) = replies.try_recv() {
            if !conn.stream_exists(sid) {
                continue;
            }
            let o = outboxes.entry(sid).or_default();
            match reply {
                Reply::Head(status) => {
                    let head = proto::ResponseHead {
                        status,
                        headers: Vec::new(),
                    };
                    o.started = conn.send_response(sid, head, false).is_ok();
                }
                Reply::Switched(headers) => {
                    let head = proto::ResponseHead {
                        status: 101,
                        headers,
                    };
                    o.started = conn.send_response(sid, head, false).is_ok();
                }
                Reply::UpstreamEnded if fault == Fault::UpgradeFullClose => {
                    outboxes.remove(&sid);
                    if let Some(f) = forwards.remove(&sid) {
                        let _ = f.upstream.shutdown(std::net::Shutdown::Both);
                    }
                    conn.reset(sid, ErrorCode::Cancel, "upstream closed");
                }
                Reply::UpstreamEnded => o.queue.fin = true,
                Reply::Body(b) => o.queue.chunks.push_back(b),
                Reply::End => {
                    o.queue.fin = true;
                    forwards.remove(&sid);
                }
                Reply::Failed(e) => {
                    eprintln!("selftest-agent: upstream: {e}");
                    outboxes.remove(&sid);
                    forwards.remove(&sid);
                    conn.reset(sid, ErrorCode::Internal, "upstream failed");
                }
            }
        }
        // Offer queued bodies within flow control.
        let ids: Vec<StreamId> = outboxes.keys().copied().collect();
        for sid in ids {
            let Some(o) = outboxes.get_mut(&sid) else {
                continue;
            };
            if !o.started {
                continue;
            }
            if o.queue.offer(&mut conn, sid) && o.queue.fin {
                let _ = conn.finish(sid);
                outboxes.remove(&sid);
            }
        }
        if conn.has_pending_transmit() {
            continue;
        }
        tamper::read_and_tick(&mut conn, &mut tls, &mut buf, &mut input)?;
    }
}

/// Connects to the API server and starts a thread forwarding one request: it gathers the body,
/// sends the request with the kubeconfig's token, and reports the response.
fn start_forward(
    opts: &AgentOptions,
    sid: StreamId,
    head: &proto::RequestHead,
    replies: Sender<(StreamId, Reply)>,
) -> Result<Forward, String> {
    let up = opts.upstream.clone().ok_or("no kubeconfig")?;
    let tcp = TcpStream::connect(&up.addr).map_err(|e| format!("{}: {e}", up.addr))?;
    let keep = tcp.try_clone().map_err(|e| e.to_string())?;
    let (body_tx, body_rx) = mpsc::channel::<Option<Bytes>>();
    let tunnel_authorization = head
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned());
    let authorization = if opts.fault == Fault::ForwardTunnelCredentials {
        tunnel_authorization.unwrap_or_default()
    } else {
        format!("Bearer {}", up.token)
    };
    let mut headers = vec![("Authorization".to_owned(), authorization.clone())];
    headers.extend(impersonation_headers(opts.fault, head)?);
    let (method, path) = (head.method.clone(), head.path.clone());
    let upgrade = head
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .filter(|_| opts.fault != Fault::UpgradeIgnored);
    let fault = opts.fault;
    std::thread::spawn(move || {
        let result = match upgrade {
            Some(protocol) => {
                let up = Upgrade {
                    method: &method,
                    path: &path,
                    authorization: &authorization,
                    protocol: &protocol,
                    fault,
                };
                forward_upgrade(tcp, &up, &body_rx, &replies, sid)
            }
            None => forward(tcp, &method, &path, &headers, &body_rx, &replies, sid),
        };
        if let Err(e) = result {
            let _ = replies.send((sid, Reply::Failed(e)));
        }
    });
    Ok(Forward {
        body: body_tx,
        upstream: keep,
    })
}

/// The `Impersonate-*` headers for the API server: exactly the head's `impersonation` (SERVICES.md
/// §3), none from the tunnel's headers — unless a fault says otherwise.
fn impersonation_headers(
    fault: Fault,
    head: &proto::RequestHead,
) -> Result<Vec<(String, String)>, String> {
    if fault == Fault::ForwardClientImpersonation {
        return Ok(head
            .headers
            .iter()
            .filter(|h| access_control::client::is_impersonation_header(&h.name))
            .map(|h| {
                (
                    h.name.clone(),
                    String::from_utf8_lossy(&h.value).into_owned(),
                )
            })
            .collect());
    }
    let Some(imp) = head
        .impersonation
        .as_ref()
        .filter(|_| fault != Fault::IgnoreImpersonation)
    else {
        return Ok(Vec::new());
    };
    let act_as = access_control::wire::act_as_of(imp);
    access_control::to_impersonation_headers(&act_as).map_err(|e| e.to_string())
}

fn forward(
    mut tcp: TcpStream,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &Receiver<Option<Bytes>>,
    replies: &Sender<(StreamId, Reply)>,
    sid: StreamId,
) -> Result<(), String> {
    let mut request_body = Vec::new();
    // Until the end of the body (or the stream is gone and the sender dropped).
    loop {
        match body.recv() {
            Ok(Some(chunk)) => request_body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(_) => return Ok(()),
        }
    }
    let has_body = !request_body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    http::write_request(
        &mut tcp,
        method,
        path,
        &headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        has_body.then_some(request_body.as_slice()),
    )
    .map_err(|e| format!("sending upstream: {e}"))?;
    let mut r = BufReader::new(tcp);
    let (status, head) =
        http::read_response_head(&mut r).map_err(|e| format!("upstream answer: {e}"))?;
    let _ = replies.send((sid, Reply::Head(u32::from(status))));
    let body = http::read_body(&mut r, &head, true).map_err(|e| format!("upstream body: {e}"))?;
    if !body.is_empty() {
        let _ = replies.send((sid, Reply::Body(Bytes::from(body))));
    }
    let _ = replies.send((sid, Reply::End));
    Ok(())
}

/// An upgrade request to forward (SERVICES.md §3.1).
struct Upgrade<'a> {
    method: &'a str,
    path: &'a str,
    authorization: &'a str,
    protocol: &'a str,
    fault: Fault,
}

/// Forwards an upgrade: the request at once (no body), then either the refusal as an ordinary
/// response, or `101` and raw bytes both ways, each direction ending with a half-close.
fn forward_upgrade(
    mut tcp: TcpStream,
    up: &Upgrade<'_>,
    body: &Receiver<Option<Bytes>>,
    replies: &Sender<(StreamId, Reply)>,
    sid: StreamId,
) -> Result<(), String> {
    let request = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\
         Authorization: {}\r\n\r\n",
        up.method, up.path, up.protocol, up.authorization
    );
    tcp.write_all(request.as_bytes())
        .and_then(|()| tcp.flush())
        .map_err(|e| format!("sending upstream: {e}"))?;
    let writer = tcp.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(tcp);
    let (status, head) =
        http::read_response_head(&mut r).map_err(|e| format!("upstream answer: {e}"))?;
    if status != 101 {
        if up.fault == Fault::UpgradeRefusalReset {
            return Err(format!("upgrade refused with {status}"));
        }
        let _ = replies.send((sid, Reply::Head(u32::from(status))));
        let body =
            http::read_body(&mut r, &head, true).map_err(|e| format!("upstream body: {e}"))?;
        if !body.is_empty() {
            let _ = replies.send((sid, Reply::Body(Bytes::from(body))));
        }
        let _ = replies.send((sid, Reply::End));
        return Ok(());
    }
    let headers = head
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("connection"))
        .map(|(n, v)| proto::Header {
            name: n.to_ascii_lowercase(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect();
    let _ = replies.send((sid, Reply::Switched(headers)));
    // Upstream → kas on its own thread, until the upstream's end (or failure).
    let to_kas = replies.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        // Bounded by the upstream connection.
        loop {
            match std::io::Read::read(&mut r, &mut buf) {
                Ok(0) => {
                    let _ = to_kas.send((sid, Reply::UpstreamEnded));
                    return;
                }
                Ok(n) => {
                    let _ = to_kas.send((sid, Reply::Body(Bytes::copy_from_slice(&buf[..n]))));
                }
                Err(e) => {
                    let _ = to_kas.send((sid, Reply::Failed(format!("upstream: {e}"))));
                    return;
                }
            }
        }
    });
    // kas → upstream, until kas's END_STREAM (half-close) or the stream is gone.
    let mut writer = writer;
    loop {
        match body.recv() {
            Ok(Some(chunk)) => writer
                .write_all(&chunk)
                .map_err(|e| format!("upstream write: {e}"))?,
            Ok(None) => {
                let how = if up.fault == Fault::UpgradeFullClose {
                    std::net::Shutdown::Both
                } else {
                    std::net::Shutdown::Write
                };
                let _ = writer.shutdown(how);
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}
