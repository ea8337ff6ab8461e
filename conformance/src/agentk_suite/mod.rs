//! The agentk suite: a scripted kas against any agentk.
//!
//! Set-up (once per run, in the work directory): a throw-away CA and server certificate for
//! `localhost`/`127.0.0.1`/`::1`, `ca.pem`, a token file, and a kubeconfig pointing at a fake API
//! server ([`crate::apiserver`]). Each scenario binds a fresh listener on `127.0.0.1:0`, starts the
//! agent command with the placeholders filled in, plays kas on the connections it makes, and kills the
//! agent's process group at the end.
//!
//! Placeholders: `{kas_address}` (`127.0.0.1:PORT`), `{kas_url}` (`tls://127.0.0.1:PORT`),
//! `{kas_host}`, `{kas_port}`, `{token_file}`, `{ca_file}`, `{kubeconfig}`, `{tls_server_name}`
//! (`localhost`, also valid: the address's IP), `{work_dir}`.

mod scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::tunnel::frame::{Frame, StreamId};
use protocol::{ErrorCode, PROTOCOL_VERSION, Settings, proto};

use crate::apiserver::FakeApiServer;
use crate::process::{Child, Registry, fill};
use crate::report::{Report, run_guarded};
use crate::tls::{HarnessTls, TlsSetupError};
use crate::wire::{Peer, WireError, summary};

pub use scenarios::SCENARIOS;

/// How long an agent has to connect (process start, TLS, HELLO).
pub const CONNECT: Duration = Duration::from_secs(30);
/// Hang guard of one scenario.
pub const SCENARIO_GUARD: Duration = Duration::from_secs(180);
/// The agent id the scripted kas announces in ACCEPT.
pub const AGENT_ID: u64 = 7;

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The command template.
    pub cmd: String,
    /// Keep files and logs here (default: a temporary directory, removed at the end).
    pub work_dir: Option<PathBuf>,
    /// Run only scenarios whose name contains one of these.
    pub only: Vec<String>,
}

/// What every scenario shares.
pub struct Shared {
    pub cmd: String,
    pub dir: PathBuf,
    pub tls: HarnessTls,
    pub token: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub kubeconfig: PathBuf,
    /// The credential the kubeconfig gives the agent for the (fake) API server.
    pub upstream_token: String,
    pub api: FakeApiServer,
    pub registry: Registry,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Shared {
    fn new(cmd: &str, dir: &Path) -> Result<Shared, String> {
        let tls = HarnessTls::generate().map_err(|e| e.to_string())?;
        let api = FakeApiServer::start().map_err(|e| format!("fake API server: {e}"))?;
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let token = format!("conformance-agent-token-{}", std::process::id());
        let upstream_token = "conformance-upstream-token".to_owned();
        let token_file = dir.join("agent.token");
        let ca_file = dir.join("ca.pem");
        let kubeconfig = dir.join("kubeconfig.yaml");
        write(&token_file, &format!("{token}\n"))?;
        write(&ca_file, tls.pki.ca_pem())?;
        write(
            &kubeconfig,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: conformance\n  cluster:\n    server: http://{}\n\
                 contexts:\n- name: conformance\n  context:\n    cluster: conformance\n    user: conformance\n\
                 current-context: conformance\nusers:\n- name: conformance\n  user:\n    token: {upstream_token}\n",
                api.addr
            ),
        )?;
        Ok(Shared {
            cmd: cmd.to_owned(),
            dir: dir.to_path_buf(),
            tls,
            token,
            token_file,
            ca_file,
            kubeconfig,
            upstream_token,
            api,
            registry: Registry::default(),
        })
    }
}

/// Runs the suite; prints one line per scenario and returns the report.
pub fn run(opts: &Options) -> Report {
    let mut report = Report::default();
    let temp = match &opts.work_dir {
        Some(_) => None,
        None => match tempfile::Builder::new()
            .prefix("conformance-agentk-")
            .tempdir()
        {
            Ok(t) => Some(t),
            Err(e) => {
                report.push(crate::report::ScenarioResult {
                    name: "setup".into(),
                    outcome: Err(format!("cannot create a work directory: {e}")),
                });
                return report;
            }
        },
    };
    let dir = opts
        .work_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    let shared = match Shared::new(&opts.cmd, &dir) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            report.push(crate::report::ScenarioResult {
                name: "setup".into(),
                outcome: Err(e),
            });
            return report;
        }
    };
    for (name, scenario) in SCENARIOS {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let sh = shared.clone();
        let f = *scenario;
        let result = run_guarded(name, SCENARIO_GUARD, &shared.registry, move || f(&sh));
        if result.outcome.is_err() {
            eprintln!(
                "  agent log of {name}: {}",
                dir.join("logs").join(format!("{name}.log")).display()
            );
        }
        report.push(result);
    }
    shared.registry.kill_all();
    keep_on_failure(temp, &report);
    report
}

/// Keeps a temporary work directory when something failed, so its logs can be read.
pub(crate) fn keep_on_failure(temp: Option<tempfile::TempDir>, report: &Report) {
    if let Some(t) = temp
        && report.failed() > 0
    {
        let kept = t.keep();
        eprintln!("  work directory kept for its logs: {}", kept.display());
    }
}

/// `Instant::now() + d`.
pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}

/// One scenario's agent process and listener.
pub struct Session<'a> {
    pub shared: &'a Shared,
    pub name: &'static str,
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub child: Child,
}

impl<'a> Session<'a> {
    /// Binds a listener and starts the agent command.
    pub fn start(shared: &'a Shared, name: &'static str) -> Result<Session<'a>, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let path = |p: &Path| p.display().to_string();
        let vars = [
            ("kas_address", format!("127.0.0.1:{}", addr.port())),
            ("kas_url", format!("tls://127.0.0.1:{}", addr.port())),
            ("kas_host", "127.0.0.1".to_owned()),
            ("kas_port", addr.port().to_string()),
            ("token_file", path(&shared.token_file)),
            ("ca_file", path(&shared.ca_file)),
            ("kubeconfig", path(&shared.kubeconfig)),
            ("tls_server_name", "localhost".to_owned()),
            ("work_dir", path(&shared.dir)),
        ];
        let command = fill(&shared.cmd, &vars);
        let log = shared.dir.join("logs").join(format!("{name}.log"));
        let child = Child::spawn(&command, &log, &shared.registry).map_err(|e| e.to_string())?;
        Ok(Session {
            shared,
            name,
            listener,
            addr,
            child,
        })
    }

    /// Why the agent is gone, if it is.
    pub fn exit_reason(&mut self) -> Option<String> {
        let status = self.child.exited()?;
        Some(format!(
            "the agent exited ({status}); last log lines: {}",
            self.child.log_tail(3)
        ))
    }

    /// The next connection, `None` if none came before the deadline.
    pub fn try_accept(&mut self, deadline: Instant) -> Result<Option<KasConn>, String> {
        match crate::tls::accept(&self.listener, &self.shared.tls.server, deadline) {
            Ok((tls, tcp_at)) => {
                let mut peer = Peer::new(tls);
                let preface = peer
                    .recv_raw(8, after(Duration::from_secs(10)))
                    .map_err(|e| format!("reading the preface: {e}"))?
                    .ok_or("no preface within 10 s of connecting")?;
                if preface != protocol::tunnel::frame::PREFACE {
                    return Err(format!(
                        "wrong preface {} (expected {})",
                        hex::encode(&preface),
                        hex::encode(protocol::tunnel::frame::PREFACE)
                    ));
                }
                let hello =
                    peer.wait_for(after(Duration::from_secs(10)), "HELLO", |_, f| match f {
                        Frame::Hello(h) => Ok(Some(h.clone())),
                        other => Err(format!("the first frame is {}, not HELLO", summary(other))),
                    })?;
                let agent_settings = Settings::from_wire(hello.settings.as_ref())
                    .map_err(|e| format!("HELLO settings out of range: {e}"))?;
                Ok(Some(KasConn {
                    peer,
                    hello,
                    tcp_at,
                    agent_settings,
                    agent_streams: AgentStreams::default(),
                    next_id: 2,
                    exchanges: BTreeMap::new(),
                    release: true,
                }))
            }
            Err(TlsSetupError::Timeout) => {
                if let Some(r) = self.exit_reason() {
                    return Err(r);
                }
                Ok(None)
            }
            Err(e) => Err(format!("accepting the agent's connection: {e}")),
        }
    }

    /// The next connection, within `within`.
    pub fn accept(&mut self, within: Duration) -> Result<KasConn, String> {
        match self.try_accept(after(within))? {
            Some(c) => Ok(c),
            None => Err(match self.exit_reason() {
                Some(r) => r,
                None => format!("the agent did not connect within {within:?}"),
            }),
        }
    }

    /// Fails if the agent process crashed.
    pub fn not_crashed(&mut self) -> Result<(), String> {
        match self.child.crashed() {
            Some(how) => Err(format!(
                "the agent crashed ({how}); last log lines: {}",
                self.child.log_tail(3)
            )),
            None => Ok(()),
        }
    }
}

/// What the scripted kas does with streams the agent opens.
#[derive(Debug, Clone, Default)]
pub struct AgentStreams {
    /// Keep them open (never answer) instead of refusing them with RESET `UNKNOWN_SERVICE`.
    pub hold: bool,
    pub open: BTreeSet<u32>,
    pub max_open: usize,
    pub opened: usize,
    pub highest: u32,
}

/// One stream kas opened, as received so far.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub status: Option<u32>,
    pub headers: Vec<proto::Header>,
    pub body: Vec<u8>,
    pub trailer: Option<proto::Trailer>,
    pub reset: Option<ErrorCode>,
    /// The agent's direction ended (END_STREAM, TRAILER or RESET).
    pub done: bool,
}

impl Exchange {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

/// One connection from the agent, played as kas.
pub struct KasConn {
    pub peer: Peer,
    pub hello: proto::Hello,
    /// When the TCP connection was accepted.
    pub tcp_at: Instant,
    pub agent_settings: Settings,
    pub agent_streams: AgentStreams,
    next_id: u32,
    /// Streams this side opened.
    pub exchanges: BTreeMap<u32, Exchange>,
    /// Return flow-control credit for DATA on our streams as it arrives.
    pub release: bool,
}

/// The settings the scripted kas announces unless a scenario says otherwise (the defaults).
pub fn kas_settings() -> Settings {
    Settings::default()
}

impl KasConn {
    /// HELLO checks every conforming agent passes.
    pub fn check_hello(&self, shared: &Shared) -> Result<(), String> {
        let h = &self.hello;
        if !(h.min_version <= PROTOCOL_VERSION && PROTOCOL_VERSION <= h.max_version) {
            return Err(format!(
                "HELLO offers versions {}..={}, which do not include {PROTOCOL_VERSION}",
                h.min_version, h.max_version
            ));
        }
        if h.token != shared.token {
            return Err("the HELLO token differs from the token file's content".into());
        }
        let caps = h
            .meta
            .as_ref()
            .map(|m| m.capabilities.clone())
            .unwrap_or_default();
        if !caps.iter().any(|c| c == protocol::service::K8S_API) {
            return Err(format!("HELLO capabilities {caps:?} lack k8s-api"));
        }
        Ok(())
    }

    /// Sends ACCEPT with `settings` and `version`, and starts watching flow control.
    pub fn accept_version(&mut self, settings: Settings, version: u32) -> Result<(), String> {
        self.peer
            .send(&Frame::Accept(proto::Accept {
                version,
                agent_id: AGENT_ID,
                settings: Some(settings.to_wire()),
                connection_id: "conformance".into(),
                ..proto::Accept::default()
            }))
            .map_err(|e| format!("sending ACCEPT: {e}"))?;
        self.peer.flow.start(&settings);
        Ok(())
    }

    /// Sends ACCEPT (version 1) with `settings`.
    pub fn accept(&mut self, settings: Settings) -> Result<(), String> {
        self.accept_version(settings, PROTOCOL_VERSION)
    }

    /// Sends REJECT.
    pub fn reject(
        &mut self,
        code: proto::RejectCode,
        retry_after_ms: u32,
        versions: (u32, u32),
    ) -> Result<(), String> {
        self.peer
            .send(&Frame::Reject(proto::Reject {
                code: code as i32,
                message: "refused by the conformance suite".into(),
                retry_after_ms,
                min_version: versions.0,
                max_version: versions.1,
            }))
            .map_err(|e| format!("sending REJECT: {e}"))
    }

    /// Allocates the next stream id without sending anything (for REQUESTs sent in a batch).
    pub fn open_later(&mut self) -> StreamId {
        let id = StreamId(self.next_id);
        self.next_id += 2;
        self.exchanges.insert(id.0, Exchange::default());
        id
    }

    /// Opens a stream.
    pub fn open(&mut self, head: proto::RequestHead, end_stream: bool) -> Result<StreamId, String> {
        let id = StreamId(self.next_id);
        self.next_id += 2;
        self.exchanges.insert(id.0, Exchange::default());
        self.peer
            .send(&Frame::Request {
                stream: id,
                head,
                end_stream,
            })
            .map_err(|e| format!("sending REQUEST: {e}"))?;
        Ok(id)
    }

    /// The next frame not handled here. Handled: agent-opened streams (refused or held), responses
    /// on our streams (recorded in `exchanges`, credit returned if `release`). A GOAWAY with an error
    /// code fails.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        // Bounded by the deadline (recv returns None once it passed).
        loop {
            let f = match self.peer.recv(deadline) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(WireError::Eof) => {
                    return Err(format!(
                        "the agent closed the connection (last frames: {})",
                        self.peer.recent()
                    ));
                }
                Err(e) => return Err(e.to_string()),
            };
            match &f {
                Frame::Request { stream, .. } if stream.0 % 2 == 1 => {
                    let a = &mut self.agent_streams;
                    a.opened += 1;
                    a.highest = a.highest.max(stream.0);
                    if a.hold {
                        a.open.insert(stream.0);
                        a.max_open = a.max_open.max(a.open.len());
                    } else {
                        self.peer
                            .send(&Frame::Reset {
                                stream: *stream,
                                reset: proto::Reset {
                                    code: ErrorCode::UnknownService.to_u32(),
                                    message: "the conformance kas serves no agent streams".into(),
                                },
                            })
                            .map_err(|e| e.to_string())?;
                    }
                    continue;
                }
                Frame::Reset { stream, .. } if stream.0 % 2 == 1 => {
                    self.agent_streams.open.remove(&stream.0);
                    continue;
                }
                Frame::Data { stream, .. } | Frame::Trailer { stream, .. } if stream.0 % 2 == 1 => {
                    continue;
                }
                Frame::GoAway(g) if g.code != 0 => {
                    return Err(format!(
                        "the agent closed the connection with {}",
                        summary(&f)
                    ));
                }
                _ => {}
            }
            if let Some(ex) = self.exchanges.get_mut(&f.stream().0) {
                match &f {
                    Frame::Response {
                        head, end_stream, ..
                    } => {
                        ex.status = Some(head.status);
                        ex.headers = head.headers.clone();
                        ex.done |= *end_stream;
                    }
                    Frame::Data {
                        stream,
                        data,
                        end_stream,
                    } => {
                        ex.body.extend_from_slice(data);
                        ex.done |= *end_stream;
                        if self.release && !data.is_empty() {
                            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                            let mut frames = vec![Frame::WindowUpdate {
                                stream: StreamId(0),
                                increment: n,
                            }];
                            if !*end_stream {
                                frames.push(Frame::WindowUpdate {
                                    stream: *stream,
                                    increment: n,
                                });
                            }
                            self.peer.send_all(&frames).map_err(|e| e.to_string())?;
                        }
                    }
                    Frame::Trailer { trailer, .. } => {
                        ex.trailer = Some(trailer.clone());
                        ex.done = true;
                    }
                    Frame::Reset { reset, .. } => {
                        ex.reset = Some(ErrorCode::from_u32(reset.code));
                        ex.done = true;
                    }
                    _ => {}
                }
            }
            return Ok(Some(f));
        }
    }

    /// Receives until `ids` are all done (or the deadline).
    pub fn until_done(&mut self, ids: &[StreamId], deadline: Instant) -> Result<(), String> {
        // Bounded by the deadline.
        while !ids
            .iter()
            .all(|id| self.exchanges.get(&id.0).is_some_and(|e| e.done))
        {
            if self.next(deadline)?.is_none() {
                let pending: Vec<u32> = ids
                    .iter()
                    .filter(|id| !self.exchanges.get(&id.0).is_some_and(|e| e.done))
                    .map(|id| id.0)
                    .collect();
                return Err(format!(
                    "streams {pending:?} not finished in time (last frames: {})",
                    self.peer.recent()
                ));
            }
        }
        Ok(())
    }

    /// The finished exchange of `id`, which must have a response head.
    pub fn answered(&self, id: StreamId) -> Result<&Exchange, String> {
        let ex = self
            .exchanges
            .get(&id.0)
            .ok_or_else(|| format!("no stream {id}"))?;
        if let Some(code) = ex.reset {
            return Err(format!("stream {id} was reset with {code}"));
        }
        if ex.status.is_none() {
            return Err(format!("stream {id} got no RESPONSE"));
        }
        Ok(ex)
    }

    /// Receives frames (handling the usual ones) for `d`; fails on an unexpected close.
    pub fn idle(&mut self, d: Duration) -> Result<Vec<Frame>, String> {
        let deadline = after(d);
        let mut got = Vec::new();
        // Bounded by the deadline.
        while let Some(f) = self.next(deadline)? {
            got.push(f);
        }
        Ok(got)
    }

    /// Sends a PING and waits for its ACK.
    pub fn ping(&mut self, payload: [u8; 8], within: Duration) -> Result<(), String> {
        self.peer
            .send(&Frame::Ping {
                ack: false,
                payload,
            })
            .map_err(|e| format!("sending PING: {e}"))?;
        let deadline = after(within);
        // Bounded by the deadline.
        loop {
            match self.next(deadline)? {
                Some(Frame::Ping {
                    ack: true,
                    payload: p,
                }) if p == payload => return Ok(()),
                Some(Frame::Ping {
                    ack: true,
                    payload: p,
                }) => {
                    return Err(format!(
                        "PING ACK carries {}, the PING carried {} (§11: the same 8 octets)",
                        hex::encode(p),
                        hex::encode(payload)
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "no PING ACK within {within:?} (last frames: {})",
                        self.peer.recent()
                    ));
                }
            }
        }
    }

    /// Waits for a GOAWAY with `code`, then for the agent to close; nothing may follow the GOAWAY.
    pub fn expect_goaway_and_close(
        &mut self,
        code: ErrorCode,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = after(within);
        let g = self
            .peer
            .wait_for(deadline, &format!("GOAWAY {code}"), |_, f| match f {
                Frame::GoAway(g) => Ok(Some(g.clone())),
                _ => Ok(None),
            })?;
        if g.code != code.to_u32() {
            return Err(format!(
                "GOAWAY with {} ({:?}), expected {code}",
                ErrorCode::from_u32(g.code),
                g.message
            ));
        }
        let after_goaway = self.peer.wait_eof(after(within))?;
        if let Some(f) = after_goaway.first() {
            return Err(format!("sent {} after its GOAWAY", summary(f)));
        }
        Ok(())
    }
}
