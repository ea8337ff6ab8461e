//! Test support: a state directory with certificates, agents and users; a kas started in-process on
//! 127.0.0.1; a fake agent built on runtime-smol's agent API answering streams with canned behaviour;
//! small HTTP client helpers (ureq, and raw TCP for streaming checks).
//!
//! Every wait has a generous hang guard; none is an assertion on time.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod live;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncWriteExt as _;
use kas::auth::{AgentsFile, GeneratedAgent};
use kas::config::Config;
use kas::users::{AllowedAgents, UserSpec, UsersFile};
use kas::{Kas, Running, StartOptions};
use protocol::proto::{AgentMeta, Header, RequestHead, ResponseHead};
use runtime_smol::{AgentOptions, Connection, Stream};
use tunnel_tls::ThrowawayPki;

/// Hang guard for anything a test waits for.
pub const GUARD: Duration = Duration::from_secs(30);

/// A state directory: PKI, agents 1..=3 (tokens), users `admin` (every agent) and `alice` (agent 1).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: ThrowawayPki,
    pub agents: Vec<GeneratedAgent>,
    pub admin_token: String,
    pub alice_token: String,
    pub config: Config,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki = ThrowawayPki::generate().unwrap();
        std::fs::write(dir.path().join("kas.crt"), &pki.server.cert_pem).unwrap();
        std::fs::write(dir.path().join("kas.key"), &pki.server.key_pem).unwrap();
        let agents = AgentsFile::generate(3, dir.path()).unwrap();
        let users = UsersFile::generate(
            dir.path(),
            &[
                UserSpec {
                    name: "admin".into(),
                    agents: AllowedAgents::All,
                    kinds: None,
                },
                UserSpec {
                    name: "alice".into(),
                    agents: AllowedAgents::Only([1].into_iter().collect()),
                    kinds: None,
                },
            ],
        )
        .unwrap();
        let mut config = Config::default();
        config.agent_listener.address = "127.0.0.1:0".parse().unwrap();
        config.api_listener.address = "127.0.0.1:0".parse().unwrap();
        config.routing.pending_request_deadline = Duration::from_secs(10);
        config.routing.response_timeout = Duration::from_secs(10);
        config.resolve_paths(dir.path());
        Env {
            admin_token: users[0].token.clone(),
            alice_token: users[1].token.clone(),
            dir,
            pki,
            agents,
            config,
        }
    }

    pub fn start(&self) -> Running {
        Kas::start_with(
            self.config.clone(),
            StartOptions {
                threads: 2,
                shutdown_grace: Duration::from_secs(5),
                api_tls: None,
            },
        )
        .unwrap()
    }

    /// kas with its HTTP API on HTTPS (the agent listener's certificate; CA in `ca.pem`).
    pub fn start_https(&self) -> Running {
        std::fs::write(self.dir.path().join("ca.pem"), self.pki.ca_pem()).unwrap();
        Kas::start_with(
            self.config.clone(),
            StartOptions {
                threads: 2,
                shutdown_grace: Duration::from_secs(5),
                api_tls: Some(self.config.agent_listener.tls.clone()),
            },
        )
        .unwrap()
    }

    pub fn token(&self, agent_id: u64) -> &str {
        &self
            .agents
            .iter()
            .find(|a| a.id == agent_id)
            .expect("agent exists")
            .token
    }

    /// `Bearer pat:<agent>:<admin token>`.
    pub fn admin_bearer(&self, agent_id: u64) -> String {
        format!("Bearer pat:{agent_id}:{}", self.admin_token)
    }
}

/// What the fake agent reports to the test.
#[derive(Debug, Clone)]
pub struct Seen {
    pub event: &'static str,
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// Channels between a test and its fake agent's handlers.
#[derive(Clone)]
pub struct Script {
    /// Everything the agent saw (request heads, bodies, resets).
    pub seen_tx: async_channel::Sender<Seen>,
    pub seen: async_channel::Receiver<Seen>,
    /// Releases held responses (`/watch`'s second chunk, `/after-release`, `/slow`).
    pub release_tx: async_channel::Sender<()>,
    pub release: async_channel::Receiver<()>,
    /// Put in an `x-agent` response header (tells connections apart).
    pub name: String,
}

impl Script {
    pub fn new(name: &str) -> Script {
        let (seen_tx, seen) = async_channel::unbounded();
        let (release_tx, release) = async_channel::unbounded();
        Script {
            seen_tx,
            seen,
            release_tx,
            release,
            name: name.to_owned(),
        }
    }

    /// The next thing the agent saw (hang guard: [`GUARD`]).
    pub fn next_seen(&self) -> Seen {
        let seen = self.seen.clone();
        smol::block_on(async {
            futures_lite::future::or(async { seen.recv().await.ok() }, async {
                smol::Timer::after(GUARD).await;
                None
            })
            .await
        })
        .expect("the agent reported nothing in time")
    }

    /// Waits for an event of this kind, skipping others.
    pub fn wait_for(&self, event: &str) -> Seen {
        for _ in 0..100 {
            let s = self.next_seen();
            if s.event == event {
                return s;
            }
        }
        panic!("no {event} event");
    }

    pub fn release(&self) {
        self.release_tx.try_send(()).unwrap();
    }
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn head(status: u32, headers: Vec<Header>) -> ResponseHead {
    ResponseHead { status, headers }
}

async fn read_body(stream: &Stream) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..100_000 {
        match stream.read_chunk(64 * 1024).await {
            Some(Ok(b)) => body.extend_from_slice(&b),
            _ => break,
        }
    }
    body
}

/// The canned behaviour, by the request path (after the service's own prefix).
async fn serve_stream(script: Script, conn: Connection, head_in: RequestHead, stream: Stream) {
    let path = head_in.path.clone();
    let report = |event: &'static str, body: Vec<u8>| {
        let _ = script.seen_tx.try_send(Seen {
            event,
            head: head_in.clone(),
            body,
        });
    };
    let route = path.split('?').next().unwrap_or("").to_owned();
    let tail = route.rsplit('/').next().unwrap_or("").to_owned();
    match tail.as_str() {
        "echo" => {
            let body = read_body(&stream).await;
            report("request", body.clone());
            let _ = stream.respond(
                head(
                    201,
                    vec![
                        header("content-type", "text/plain"),
                        header("x-agent", &script.name),
                    ],
                ),
                false,
            );
            let mut w: &Stream = &stream;
            let _ = w.write_all(&body).await;
            let _ = stream.finish();
        }
        "watch" => {
            report("request", Vec::new());
            let _ = stream.respond(
                head(
                    200,
                    vec![header("content-type", "application/json;stream=watch")],
                ),
                false,
            );
            let mut w: &Stream = &stream;
            let _ = w.write_all(b"{\"type\":\"ADDED\"}\n").await;
            let _ = script.release.recv().await;
            let _ = w.write_all(b"{\"type\":\"MODIFIED\"}\n").await;
            let _ = stream.finish();
        }
        "ticks" => {
            report("request", Vec::new());
            let _ = stream.respond(head(200, vec![header("content-type", "text/plain")]), false);
            let mut w: &Stream = &stream;
            // Bounded: 2000 ticks of 20 ms at most; ends when kas resets the stream.
            for _ in 0..2000 {
                if w.write_all(b"tick\n").await.is_err() {
                    report("reset", Vec::new());
                    return;
                }
                smol::Timer::after(Duration::from_millis(20)).await;
            }
            report("no-reset", Vec::new());
        }
        "quiet" => {
            report("request", Vec::new());
            let _ = stream.respond(head(200, vec![header("content-type", "text/plain")]), false);
            let mut w: &Stream = &stream;
            let _ = w.write_all(b"first\n").await;
            let _ = script.release.recv().await;
        }
        "slow" => {
            report("request", Vec::new());
            let _ = script.release.recv().await;
            let _ = stream.respond(head(200, vec![]), true);
        }
        "after-release" => {
            report("request", Vec::new());
            let _ = script.release.recv().await;
            let _ = stream.respond(head(200, vec![header("x-agent", &script.name)]), false);
            let mut w: &Stream = &stream;
            let _ = w.write_all(b"released").await;
            let _ = stream.finish();
        }
        "exec"
            if head_in
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade")) =>
        {
            // An upgraded session: 101, then every byte echoed; the client's end of stream ends
            // this side too (half-close), after the echo.
            report("request", Vec::new());
            let _ = stream.respond(
                head(
                    101,
                    vec![
                        header("upgrade", "websocket"),
                        header("connection", "Upgrade"),
                        header("sec-websocket-protocol", "v5.channel.k8s.io"),
                        header("x-agent", &script.name),
                    ],
                ),
                false,
            );
            let mut w: &Stream = &stream;
            // Bounded by the stream: every iteration takes a chunk of it or ends.
            while let Some(Ok(b)) = stream.read_chunk(64 * 1024).await {
                if w.write_all(&b).await.is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"bye\n").await;
            let _ = stream.finish();
        }
        "drop" => {
            report("request", Vec::new());
            conn.abort(protocol::ErrorCode::Internal, "simulated crash");
        }
        "fail-midway" => {
            report("request", Vec::new());
            let _ = stream.respond(head(200, vec![header("content-type", "text/plain")]), false);
            let mut w: &Stream = &stream;
            let _ = w.write_all(b"partial").await;
            let _ = script.release.recv().await;
            let _ = stream.send_trailer(protocol::proto::Trailer {
                code: protocol::service::status::UNAVAILABLE,
                message: "upstream went away".into(),
                headers: vec![],
            });
        }
        _ => {
            let body = read_body(&stream).await;
            report("request", body);
            let headers: Vec<String> = head_in.headers.iter().map(|h| h.name.clone()).collect();
            let answer = serde_json::json!({
                "kind": "PodList",
                "service": head_in.service,
                "method": head_in.method,
                "path": head_in.path,
                "headers": headers,
                "agent": script.name,
            })
            .to_string();
            let _ = stream.respond(
                head(
                    200,
                    vec![
                        header("content-type", "application/json"),
                        header("x-agent", &script.name),
                        header("content-length", &answer.len().to_string()),
                    ],
                ),
                false,
            );
            let mut w: &Stream = &stream;
            let _ = w.write_all(answer.as_bytes()).await;
            let _ = stream.finish();
        }
    }
}

/// An agent connected to kas, serving every stream kas opens with [`serve_stream`].
pub struct FakeAgent {
    pub conn: Connection,
    _task: smol::Task<()>,
}

pub fn agent_meta(version: &str) -> AgentMeta {
    AgentMeta {
        version: version.into(),
        commit: "test".into(),
        pod_name: "agentk-abc".into(),
        pod_namespace: "gitlab-agent".into(),
        node_name: "node-1".into(),
        capabilities: vec!["k8s-api".into(), "service-proxy".into()],
    }
}

/// Connects with `token`; the error is the runtime's (e.g. `Refused`).
pub fn try_connect(
    env: &Env,
    addr: SocketAddr,
    token: &str,
    meta: AgentMeta,
) -> Result<Connection, runtime_smol::Error> {
    let tls = tunnel_tls::client_config(&env.pki.roots(), None).unwrap();
    let opts = AgentOptions {
        token: token.to_owned(),
        meta,
        config: protocol::Config::default(),
    };
    smol::block_on(async {
        futures_lite::future::or(
            async {
                runtime_smol::connect_agent(
                    addr,
                    tls,
                    tunnel_tls::server_name("localhost").unwrap(),
                    opts,
                )
                .await
                .map(|(c, _)| c)
            },
            async {
                smol::Timer::after(GUARD).await;
                Err(runtime_smol::Error::Timeout)
            },
        )
        .await
    })
}

impl FakeAgent {
    pub fn connect(env: &Env, kas: &Running, agent_id: u64, script: &Script) -> FakeAgent {
        Self::connect_with(env, kas, agent_id, script, agent_meta("9.9.9"))
    }

    pub fn connect_with(
        env: &Env,
        kas: &Running,
        agent_id: u64,
        script: &Script,
        meta: AgentMeta,
    ) -> FakeAgent {
        Self::connect_with_token(env, kas, agent_id, env.token(agent_id), script, meta)
    }

    /// Connects as `agent_id` presenting `token` (e.g. a second token of the agent).
    pub fn connect_with_token(
        env: &Env,
        kas: &Running,
        agent_id: u64,
        token: &str,
        script: &Script,
        meta: AgentMeta,
    ) -> FakeAgent {
        let conn = try_connect(env, kas.agent_addr(), token, meta).unwrap();
        let serving = conn.clone();
        let script = script.clone();
        let task = smol::spawn(async move {
            // Bounded by the connection: ends when it closes.
            while let Some((head, stream)) = serving.accept_stream().await {
                smol::spawn(serve_stream(script.clone(), serving.clone(), head, stream)).detach();
            }
        });
        // kas registers the connection right after ACCEPT; wait until it did.
        assert!(
            kas.wait_for_agents(&[agent_id], GUARD),
            "agent {agent_id} not registered"
        );
        FakeAgent { conn, _task: task }
    }
}

/// A blocking HTTP client that does not treat 4xx/5xx as errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(GUARD))
        .build()
        .new_agent()
}

/// A response: status, headers (lower-case names), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub fn reply(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str, authorization: Option<&str>) -> Reply {
    let mut req = http().get(url);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    reply(req.call().unwrap())
}

pub fn post(url: &str, authorization: &str, body: &[u8]) -> Reply {
    let resp = http()
        .post(url)
        .header("Authorization", authorization)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    reply(resp)
}

/// A raw HTTP/1.1 GET over TCP: the status line and headers are read; the body is left on the reader.
pub fn raw_get(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> (String, BufReader<TcpStream>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: kas\r\nAuthorization: {authorization}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    (head, reader)
}

/// Reads one chunk of a chunked body (`None` at the last chunk).
pub fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size_line = String::new();
    reader.read_line(&mut size_line).unwrap();
    let size = usize::from_str_radix(size_line.trim(), 16)
        .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
    if size == 0 {
        return None;
    }
    let mut data = vec![0; size];
    reader.read_exact(&mut data).unwrap();
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf).unwrap();
    Some(data)
}

/// A free loopback address (bound, then released) whose port lies below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). Tests pick a port and start a server on it later — or restart
/// one on it while clients keep dialling: a port from the ephemeral range could meanwhile be the
/// source port of an outgoing connection, and the server fail to bind it (seen once in a full test
/// run: `kas-3 ready` timed out). Each port is handed out once per process, from a start that differs
/// between processes.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    // Bounded: every port of the range is tried at most once per call.
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The port of a [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Polls `f` until it returns `Some`, or panics after [`GUARD`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one metric series in Prometheus text (`name{labels}` exactly as written).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub fn metrics(kas: &Running) -> String {
    get(&format!("{}/metrics", kas.api_url()), None).body
}
