//! The kas suite: scripted agents and API clients against any kas.
//!
//! Set-up: the harness picks two free ports on 127.0.0.1 and fills a state directory (documented in
//! `conformance/README.md`; also described in `conformance.json` inside it):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the CA that issued `kas.crt` (the scripted agents trust it) |
//! | `kas.crt`, `kas.key` | the agent listener's certificate (for `localhost`, `127.0.0.1`, `::1`) and key |
//! | `agents.yaml` | agents 1..=16: `agents: [{id, name, token_sha256}]` |
//! | `agent-N.token` | agent N's token in clear |
//! | `users.yaml` | one user `conformance` allowed every agent: `users: [{name, token_sha256, agents: "*"}]` |
//! | `user.token` | that user's token in clear (API requests send `Authorization: Bearer pat:<agent-id>:<token>`) |
//! | `kas.yaml` | our kas's configuration: both listeners, TLS files, embedded auth, users file, routing deadline 2 s, no auth rate limits |
//! | `conformance.json` | all of the above, machine-readable |
//!
//! Then it starts the kas command once (placeholders `{agent_port}`, `{api_port}`, `{state_dir}`,
//! `{config}`), waits until both ports accept connections, runs the scenarios, and kills it.

mod abuse;
mod scenarios;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Frame, StreamId};
use protocol::{ErrorCode, Settings, proto};
use sha2::{Digest, Sha256};

use crate::http;
use crate::process::{Child, Registry, fill};
use crate::report::{Report, ScenarioResult, run_guarded};
use crate::tls::HarnessTls;
use crate::wire::{Peer, SendCredit, WireError, summary};

pub use scenarios::SCENARIOS;

/// Agents listed in `agents.yaml`: ids 1..=AGENTS.
pub const AGENTS: u64 = 16;
/// The routing deadline `kas.yaml` configures (a request for an agent that is not connected fails
/// with 503 after it).
pub const PENDING_DEADLINE: Duration = Duration::from_secs(2);
/// How long kas has to start listening, by default.
pub const STARTUP: Duration = Duration::from_secs(60);
/// Hang guard of one scenario.
pub const SCENARIO_GUARD: Duration = Duration::from_secs(120);
/// How long kas has to answer something simple.
pub const ANSWER: Duration = Duration::from_secs(20);

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub cmd: String,
    pub work_dir: Option<PathBuf>,
    pub only: Vec<String>,
    /// How long kas has to listen on both ports.
    pub startup: Duration,
}

/// What every scenario shares.
pub struct Shared {
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub tls: HarnessTls,
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub agent_tokens: BTreeMap<u64, String>,
    pub user_token: String,
    pub registry: Registry,
    pub kas: Mutex<Option<Child>>,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Shared {
    /// Writes the state directory.
    fn prepare(dir: &Path) -> Result<Shared, String> {
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let tls = HarnessTls::generate().map_err(|e| e.to_string())?;
        let agent_port = free_port()?;
        let mut api_port = free_port()?;
        if api_port == agent_port {
            api_port = free_port()?;
        }
        let tag = std::process::id();
        let agent_tokens: BTreeMap<u64, String> = (1..=AGENTS)
            .map(|id| (id, format!("conformance-agent-{id}-token-{tag}")))
            .collect();
        let user_token = format!("conformance-user-token-{tag}");
        write(&state_dir.join("ca.pem"), tls.pki.ca_pem())?;
        write(&state_dir.join("kas.crt"), &tls.pki.server.cert_pem)?;
        write(&state_dir.join("kas.key"), &tls.pki.server.key_pem)?;
        let mut agents = String::from("agents:\n");
        for (id, token) in &agent_tokens {
            agents.push_str(&format!(
                "  - id: {id}\n    name: agent-{id}\n    token_sha256: {}\n",
                sha256_hex(token)
            ));
            write(
                &state_dir.join(format!("agent-{id}.token")),
                &format!("{token}\n"),
            )?;
        }
        write(&state_dir.join("agents.yaml"), &agents)?;
        write(
            &state_dir.join("users.yaml"),
            &format!(
                "users:\n  - name: conformance\n    token_sha256: {}\n    agents: \"*\"\n",
                sha256_hex(&user_token)
            ),
        )?;
        write(&state_dir.join("user.token"), &format!("{user_token}\n"))?;
        let deadline_ms = PENDING_DEADLINE.as_millis();
        write(
            &state_dir.join("kas.yaml"),
            &format!(
                "# written by the conformance suite\nstate_dir: .\nagent_listener:\n  address: 127.0.0.1:{agent_port}\n  \
                 tls: {{ cert_file: kas.crt, key_file: kas.key }}\napi_listener:\n  address: 127.0.0.1:{api_port}\n\
                 agent_auth:\n  backend: embedded\nusers:\n  file: users.yaml\nrouting:\n  pending_request_deadline: {deadline_ms}ms\n\
                 rate_limits:\n  agent_auth_failures: {{ max_failures: 0 }}\n  user_auth_failures: {{ max_failures: 0 }}\n"
            ),
        )?;
        let description = serde_json::json!({
            "agent_listener": format!("127.0.0.1:{agent_port}"),
            "api_listener": format!("127.0.0.1:{api_port}"),
            "tls": {"ca": "ca.pem", "cert": "kas.crt", "key": "kas.key", "server_names": ["localhost", "127.0.0.1", "::1"]},
            "agents": agent_tokens.iter().map(|(id, t)| serde_json::json!({
                "id": id, "name": format!("agent-{id}"), "token": t, "token_sha256": sha256_hex(t),
                "token_file": format!("agent-{id}.token"),
            })).collect::<Vec<_>>(),
            "users": [{"name": "conformance", "token": user_token, "token_sha256": sha256_hex(&user_token), "agents": "*",
                       "bearer": "Authorization: Bearer pat:<agent-id>:<token>"}],
            "pending_request_deadline_ms": deadline_ms,
            "agent_auth_rate_limit": "none (agent_auth_failures.max_failures 0)",
            "api": {"k8s_proxy": "/k8s-proxy/{kubernetes path}", "statuses": {"unknown agent": 404, "bad user token": 401, "agent not connected by the deadline": 503}},
        });
        write(
            &state_dir.join("conformance.json"),
            &serde_json::to_string_pretty(&description).unwrap_or_default(),
        )?;
        Ok(Shared {
            dir: dir.to_path_buf(),
            state_dir,
            tls,
            agent_addr: SocketAddr::from(([127, 0, 0, 1], agent_port)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], api_port)),
            agent_tokens,
            user_token,
            registry: Registry::default(),
            kas: Mutex::new(None),
        })
    }

    /// Starts kas and waits until both ports accept connections.
    fn start_kas(&self, cmd: &str, startup: Duration) -> Result<(), String> {
        let vars = [
            ("agent_port", self.agent_addr.port().to_string()),
            ("api_port", self.api_addr.port().to_string()),
            ("state_dir", self.state_dir.display().to_string()),
            (
                "config",
                self.state_dir.join("kas.yaml").display().to_string(),
            ),
        ];
        let command = fill(cmd, &vars);
        let log = self.dir.join("logs").join("kas.log");
        let child = Child::spawn(&command, &log, &self.registry).map_err(|e| e.to_string())?;
        if let Ok(mut k) = self.kas.lock() {
            *k = Some(child);
        }
        let end = Instant::now() + startup;
        // Bounded by `end`.
        loop {
            self.kas_running()?;
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok();
            if up(&self.agent_addr) && up(&self.api_addr) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "kas did not listen on {} and {} within {startup:?} (log: {})",
                    self.agent_addr,
                    self.api_addr,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails if the kas process has exited.
    pub fn kas_running(&self) -> Result<(), String> {
        let mut guard = self
            .kas
            .lock()
            .map_err(|_| "kas handle poisoned".to_string())?;
        let Some(kas) = guard.as_mut() else {
            return Err("kas was not started".into());
        };
        match kas.exited() {
            None => Ok(()),
            Some(status) => Err(format!(
                "kas is not running ({status}); last log lines: {}",
                kas.log_tail(3)
            )),
        }
    }

    fn stop_kas(&self) {
        if let Ok(mut k) = self.kas.lock()
            && let Some(mut kas) = k.take()
        {
            kas.kill();
        }
    }

    /// The resident memory of the kas command (its whole process group), in KiB.
    pub fn kas_rss_kib(&self) -> Option<u64> {
        self.kas.lock().ok()?.as_ref()?.group_rss_kib()
    }

    pub fn token(&self, agent: u64) -> String {
        self.agent_tokens.get(&agent).cloned().unwrap_or_default()
    }

    /// `Bearer pat:<agent>:<user token>`.
    pub fn bearer(&self, agent: u64) -> String {
        format!("Bearer pat:{agent}:{}", self.user_token)
    }
}

/// Runs the suite; prints one line per scenario and returns the report.
pub fn run(opts: &Options) -> Report {
    let mut report = Report::default();
    let temp = match &opts.work_dir {
        Some(_) => None,
        None => match tempfile::Builder::new()
            .prefix("conformance-kas-")
            .tempdir()
        {
            Ok(t) => Some(t),
            Err(e) => {
                report.push(ScenarioResult {
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
    // The ports are chosen free and then handed to kas, so another process may take one in
    // between: a kas that could not bind gets fresh ports (a bounded number of times).
    let mut attempt = 0;
    let (shared, started) = loop {
        attempt += 1;
        let shared = match Shared::prepare(&dir) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                report.push(ScenarioResult {
                    name: "setup".into(),
                    outcome: Err(e),
                });
                return report;
            }
        };
        let started = shared.start_kas(&opts.cmd, opts.startup);
        match &started {
            Err(e) if attempt < 3 && e.contains("in use") => {
                shared.stop_kas();
                continue;
            }
            _ => break (shared, started),
        }
    };
    let startup_failed = started.is_err();
    report.push(ScenarioResult {
        name: "kas-started".into(),
        outcome: started,
    });
    if !startup_failed {
        for (name, scenario) in SCENARIOS {
            if !opts.only.is_empty() && !opts.only.iter().any(|o| name.contains(o.as_str())) {
                continue;
            }
            let sh = shared.clone();
            let f = *scenario;
            let result = run_guarded(name, SCENARIO_GUARD, &Registry::default(), move || {
                sh.kas_running()?;
                f(&sh)
            });
            report.push(result);
        }
        // A kas that is crashing right now has closed its sockets a moment before it is reaped:
        // give it that moment.
        std::thread::sleep(Duration::from_millis(500));
        report.push(ScenarioResult {
            name: "kas-still-running".into(),
            outcome: shared.kas_running(),
        });
    }
    if report.failed() > 0 {
        eprintln!("  kas log: {}", dir.join("logs").join("kas.log").display());
    }
    shared.stop_kas();
    shared.registry.kill_all();
    crate::agentk_suite::keep_on_failure(temp, &report);
    report
}

/// `Instant::now() + d`.
pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}

/// An HTTP request to kas's API on its own thread.
pub fn api_request(
    shared: &Shared,
    method: &str,
    target: &str,
    authorization: Option<String>,
    body: Option<Vec<u8>>,
) -> JoinHandle<Result<http::Response, String>> {
    let (addr, method, target) = (shared.api_addr, method.to_owned(), target.to_owned());
    std::thread::spawn(move || {
        let mut headers = vec![("Accept", "application/json")];
        if let Some(a) = &authorization {
            headers.push(("Authorization", a.as_str()));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/octet-stream"));
        }
        http::request(
            addr,
            &method,
            &target,
            &headers,
            body.as_deref(),
            Duration::from_secs(60),
        )
        .map_err(|e| format!("HTTP {method} {target}: {e}"))
    })
}

/// Waits for an API request's result (bounded by its own timeouts).
pub fn join(h: JoinHandle<Result<http::Response, String>>) -> Result<http::Response, String> {
    h.join()
        .map_err(|_| "the HTTP client thread panicked".to_string())?
}

/// A stream kas opened towards the scripted agent.
#[derive(Debug, Clone, Default)]
pub struct KasStream {
    pub head: proto::RequestHead,
    pub body: Vec<u8>,
    /// kas's direction ended.
    pub ended: bool,
    pub reset: Option<ErrorCode>,
}

/// One scripted agent connection.
pub struct AgentConn {
    pub peer: Peer,
    pub accept: proto::Accept,
    pub kas_settings: Settings,
    pub our_settings: Settings,
    pub credit: SendCredit,
    pub streams: BTreeMap<u32, KasStream>,
    /// Return credit for DATA as it arrives.
    pub release: bool,
    /// Every frame received: stream and summary.
    pub log: Vec<(u32, String)>,
    claimed: Vec<u32>,
}

/// Dials kas's agent listener.
pub fn dial(shared: &Shared) -> Result<Peer, String> {
    let tls = crate::tls::connect(
        shared.agent_addr,
        &shared.tls.client,
        after(Duration::from_secs(10)),
    )
    .map_err(|e| format!("connecting to kas: {e}"))?;
    Ok(Peer::new(tls))
}

/// The HELLO of agent `agent` (capabilities: k8s-api).
pub fn hello(
    shared: &Shared,
    agent: u64,
    versions: (u32, u32),
    settings: &Settings,
) -> proto::Hello {
    proto::Hello {
        min_version: versions.0,
        max_version: versions.1,
        token: shared.token(agent),
        meta: Some(proto::AgentMeta {
            version: "conformance".into(),
            pod_name: format!("conformance-agent-{agent}"),
            pod_namespace: "conformance".into(),
            capabilities: vec![protocol::service::K8S_API.into()],
            ..Default::default()
        }),
        settings: Some(settings.to_wire()),
    }
}

/// Sends the preface and HELLO; returns kas's first frame (ACCEPT or REJECT expected).
pub fn handshake(peer: &mut Peer, hello: proto::Hello) -> Result<Frame, String> {
    let mut octets = protocol::tunnel::frame::PREFACE.to_vec();
    octets.extend_from_slice(&Frame::Hello(hello).to_bytes());
    peer.send_raw(&octets)
        .map_err(|e| format!("sending HELLO: {e}"))?;
    peer.wait_for(after(ANSWER), "ACCEPT or REJECT", |_, f| {
        Ok(Some(f.clone()))
    })
}

/// Connects as `agent` with `settings` and expects ACCEPT.
pub fn connect(shared: &Shared, agent: u64, settings: Settings) -> Result<AgentConn, String> {
    let mut peer = dial(shared)?;
    match handshake(&mut peer, hello(shared, agent, (1, 1), &settings))? {
        Frame::Accept(a) => {
            let kas_settings = Settings::from_wire(a.settings.as_ref())
                .map_err(|e| format!("ACCEPT settings out of range: {e}"))?;
            peer.flow.start(&settings);
            Ok(AgentConn {
                peer,
                credit: SendCredit::new(&kas_settings),
                accept: a,
                kas_settings,
                our_settings: settings,
                streams: BTreeMap::new(),
                release: true,
                log: Vec::new(),
                claimed: Vec::new(),
            })
        }
        other => Err(format!("kas answered HELLO with {}", summary(&other))),
    }
}

impl AgentConn {
    /// The next frame, with kas's streams tracked (and credit returned if `release`). A GOAWAY with
    /// an error code fails.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        let f = match self.peer.recv(deadline) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(WireError::Eof) => {
                return Err(format!(
                    "kas closed the connection (last frames: {})",
                    self.peer.recent()
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        self.credit.on_frame(&f);
        self.log.push((f.stream().0, summary(&f)));
        match &f {
            Frame::Request {
                stream,
                head,
                end_stream,
            } => {
                self.credit.open(*stream);
                self.streams.insert(
                    stream.0,
                    KasStream {
                        head: head.clone(),
                        ended: *end_stream,
                        ..Default::default()
                    },
                );
            }
            Frame::Data {
                stream,
                data,
                end_stream,
            } => {
                if let Some(s) = self.streams.get_mut(&stream.0) {
                    s.body.extend_from_slice(data);
                    s.ended |= *end_stream;
                }
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
            Frame::Reset { stream, reset } => {
                if let Some(s) = self.streams.get_mut(&stream.0) {
                    s.reset = Some(ErrorCode::from_u32(reset.code));
                }
            }
            Frame::GoAway(g) if g.code != 0 => {
                return Err(format!("kas closed the connection with {}", summary(&f)));
            }
            _ => {}
        }
        Ok(Some(f))
    }

    /// Waits for a stream kas opens (one not returned before).
    pub fn wait_request(&mut self, within: Duration) -> Result<StreamId, String> {
        let deadline = after(within);
        // Bounded by the deadline.
        loop {
            if let Some(id) = self
                .streams
                .keys()
                .find(|id| !self.claimed.contains(id))
                .copied()
            {
                self.claimed.push(id);
                return Ok(StreamId(id));
            }
            if self.next(deadline)?.is_none() {
                return Err(format!(
                    "kas opened no stream within {within:?} (last frames: {})",
                    self.peer.recent()
                ));
            }
        }
    }

    /// Receives until kas's direction of `id` ended or it was reset.
    pub fn wait_ended(&mut self, id: StreamId, within: Duration) -> Result<(), String> {
        let deadline = after(within);
        // Bounded by the deadline.
        while !self
            .streams
            .get(&id.0)
            .is_some_and(|s| s.ended || s.reset.is_some())
        {
            if self.next(deadline)?.is_none() {
                return Err(format!("kas did not finish stream {id} within {within:?}"));
            }
        }
        Ok(())
    }

    /// Sends a RESPONSE head.
    pub fn respond_head(
        &mut self,
        id: StreamId,
        status: u32,
        end_stream: bool,
    ) -> Result<(), String> {
        self.peer
            .send(&Frame::Response {
                stream: id,
                head: proto::ResponseHead {
                    status,
                    headers: vec![proto::Header {
                        name: "content-type".into(),
                        value: Bytes::from_static(b"application/json"),
                    }],
                },
                end_stream,
            })
            .map_err(|e| format!("sending RESPONSE: {e}"))
    }

    /// Sends body octets within kas's windows (waiting for its WINDOW_UPDATEs), then END_STREAM if
    /// `end`.
    pub fn send_body(
        &mut self,
        id: StreamId,
        body: &[u8],
        end: bool,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = after(within);
        let mut sent = 0;
        // Bounded by the deadline: each round sends or waits for a frame.
        while sent < body.len() {
            let n = self.credit.available(id).min(body.len() - sent);
            if n == 0 {
                if Instant::now() > deadline {
                    return Err(format!(
                        "stuck after {sent} of {} octets: kas returned no flow-control credit",
                        body.len()
                    ));
                }
                self.next(after(Duration::from_millis(200)))?;
                if self.streams.get(&id.0).and_then(|s| s.reset).is_some() {
                    return Err(format!("kas reset stream {id} while the body was sent"));
                }
                continue;
            }
            let last = sent + n == body.len();
            self.peer
                .send(&Frame::Data {
                    stream: id,
                    data: Bytes::copy_from_slice(&body[sent..sent + n]),
                    end_stream: end && last,
                })
                .map_err(|e| format!("sending DATA: {e}"))?;
            self.credit.consume(id, n);
            sent += n;
        }
        if end && body.is_empty() {
            self.peer
                .send(&Frame::Data {
                    stream: id,
                    data: Bytes::new(),
                    end_stream: true,
                })
                .map_err(|e| format!("sending DATA: {e}"))?;
        }
        if let Some(o) = self.credit.overflows.first() {
            return Err(o.clone());
        }
        Ok(())
    }

    /// Answers `id` with a whole response.
    pub fn respond(&mut self, id: StreamId, status: u32, body: &[u8]) -> Result<(), String> {
        self.respond_head(id, status, false)?;
        self.send_body(id, body, true, ANSWER)
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
}

/// Waits for GOAWAY with `code` and then for kas to close; nothing may follow the GOAWAY.
pub fn expect_goaway_and_close(
    peer: &mut Peer,
    code: ErrorCode,
    within: Duration,
) -> Result<(), String> {
    let g = peer.wait_for(after(within), &format!("GOAWAY {code}"), |_, f| match f {
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
    let rest = peer.wait_eof(after(within))?;
    if let Some(f) = rest.first() {
        return Err(format!("kas sent {} after its GOAWAY", summary(f)));
    }
    Ok(())
}
