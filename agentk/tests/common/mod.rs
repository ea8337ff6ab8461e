//! Test harness: a fake kas (runtime-tokio's server with a throw-away PKI on 127.0.0.1), the
//! simulated API server, agentk running in-process, a counting TCP relay and small HTTP servers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use protocol::proto::{Header, Reject, RejectCode, RequestHead, ResponseHead, Trailer};
use runtime_tokio::{Accepted, Connection, Server, ServerConnection, Stream};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tunnel_tls::ThrowawayPki;

/// Hang guard for every wait in these tests (never a timing assertion).
pub const GUARD: Duration = Duration::from_secs(30);

pub const TOKEN: &str = "agent-token-for-tests";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `f` or panics with `what` after [`GUARD`].
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} did not happen within {GUARD:?}"),
    }
}

/// Polls `cond` every 20 ms until it holds (hang guard [`GUARD`]).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    guard(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------ kas

/// How the fake kas answers HELLO.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    Accept,
    Reject {
        code: RejectCode,
        retry_after_ms: u32,
    },
}

/// A fake kas: runtime-tokio's tunnel server with TLS from a throw-away PKI, counting HELLOs and
/// handing authenticated connections to the test.
pub struct FakeKas {
    pub addr: SocketAddr,
    pub hellos: Arc<AtomicUsize>,
    /// When each HELLO arrived, in order.
    pub hello_times: Arc<Mutex<Vec<std::time::Instant>>>,
    verdict: Arc<Mutex<Verdict>>,
    conns: mpsc::UnboundedReceiver<ServerConnection<Connection>>,
    accept_task: JoinHandle<()>,
}

impl FakeKas {
    pub async fn start(pki: &ThrowawayPki, addr: SocketAddr, verdict: Verdict) -> FakeKas {
        let tls = tunnel_tls::server_config_with(pki.server.identity().expect("identity"), None)
            .expect("server tls config");
        let hellos = Arc::new(AtomicUsize::new(0));
        let hello_times = Arc::new(Mutex::new(Vec::new()));
        let verdict = Arc::new(Mutex::new(verdict));
        let (h, v, times) = (hellos.clone(), verdict.clone(), hello_times.clone());
        let auth = move |hello: protocol::HelloInfo, _peer: SocketAddr| {
            times
                .lock()
                .expect("hello times lock")
                .push(std::time::Instant::now());
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            let verdict = *v.lock().expect("verdict lock");
            async move {
                let reject = |code: RejectCode, retry_after_ms: u32, message: &str| Reject {
                    code: code as i32,
                    message: message.into(),
                    retry_after_ms,
                    ..Default::default()
                };
                if hello.token != TOKEN {
                    return Err(reject(RejectCode::Unauthenticated, 0, "unknown token"));
                }
                match verdict {
                    Verdict::Accept => Ok(Accepted {
                        agent_id: 42,
                        connection_id: format!("conn-{n}"),
                    }),
                    Verdict::Reject {
                        code,
                        retry_after_ms,
                    } => Err(reject(code, retry_after_ms, "refused by the test")),
                }
            }
        };
        // Binding a port that was just released can race with its previous owner: retry briefly.
        let mut server = None;
        for _ in 0..100 {
            match Server::bind(
                addr,
                Some(tls.clone()),
                protocol::Config::default(),
                auth.clone(),
            )
            .await
            {
                Ok(s) => {
                    server = Some(s);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bind failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let server = server.expect("fake kas could not bind");
        let addr = server.local_addr();
        let (tx, conns) = mpsc::unbounded_channel();
        let accept_task = tokio::spawn(async move {
            while let Ok(c) = server.accept().await {
                if tx.send(c).is_err() {
                    break;
                }
            }
        });
        FakeKas {
            addr,
            hellos,
            hello_times,
            verdict,
            conns,
            accept_task,
        }
    }

    /// Waits (hang guard 60 s) until `n` HELLOs arrived; the gaps between consecutive ones.
    pub async fn hello_gaps(&self, n: usize) -> Vec<Duration> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let times = self.hello_times.lock().expect("hello times lock").clone();
            if times.len() >= n {
                return times.windows(2).map(|w| w[1] - w[0]).take(n - 1).collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} HELLOs within 60 s (hang guard)",
                times.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn set_verdict(&self, v: Verdict) {
        *self.verdict.lock().expect("verdict lock") = v;
    }

    /// The next authenticated agent connection.
    pub async fn next_connection(&mut self) -> ServerConnection<Connection> {
        guard("an agent connection", self.conns.recv())
            .await
            .expect("fake kas accept loop ended")
    }

    /// Stops listening (the listener is closed; accepted connections are not touched).
    pub fn stop_listening(self) {
        self.accept_task.abort();
    }
}

impl Drop for FakeKas {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

// ------------------------------------------------------------------------------------ requests

pub fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

pub fn head(service: &str, method: &str, path: &str, headers: Vec<Header>) -> RequestHead {
    RequestHead {
        service: service.into(),
        method: method.into(),
        path: path.into(),
        headers,
        timeout_ms: 0,
        impersonation: None,
    }
}

/// A complete answer read from a stream.
#[derive(Debug)]
pub struct Answer {
    pub head: ResponseHead,
    pub body: Vec<u8>,
    pub trailer: Option<Trailer>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads the rest of a stream: response head, body, trailer.
pub async fn read_answer(s: &Stream) -> Answer {
    let head = guard("response head", s.response())
        .await
        .expect("response head");
    let mut body = Vec::new();
    while let Some(chunk) = guard("body chunk", s.read_chunk(64 * 1024)).await {
        body.extend_from_slice(&chunk.expect("body chunk"));
    }
    let trailer = guard("trailer", s.trailer()).await.expect("trailer");
    Answer {
        head,
        body,
        trailer,
    }
}

/// Sends a request on `conn` (with `body` streamed in the given chunks) and reads the answer.
pub async fn request(conn: &Connection, head: RequestHead, body: &[&[u8]]) -> Answer {
    let mut s = conn.open(head, body.is_empty()).expect("open stream");
    for chunk in body {
        guard(
            "request body write",
            tokio::io::AsyncWriteExt::write_all(&mut s, chunk),
        )
        .await
        .expect("write request body");
    }
    if !body.is_empty() {
        s.finish().expect("finish request body");
    }
    read_answer(&s).await
}

/// Reads from `s` until the accumulated body contains `needle`; returns what was read.
pub async fn read_until(s: &Stream, needle: &str, seen: &mut String) {
    guard(&format!("{needle:?} in the stream"), async {
        while !seen.contains(needle) {
            match s.read_chunk(64 * 1024).await {
                Some(Ok(c)) => seen.push_str(&String::from_utf8_lossy(&c)),
                Some(Err(e)) => panic!("stream failed while waiting for {needle:?}: {e}"),
                None => panic!("stream ended while waiting for {needle:?}; got {seen}"),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------- the API server

/// The simulated API server on this runtime (no kubelet or churn: the store changes only when a
/// test changes it), and a kubeconfig for it in a temporary directory.
pub struct Cluster {
    pub api: RunningApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

pub fn cluster() -> Cluster {
    let api = ApiServer::start(ApiServerConfig {
        kubelet: false,
        log_interval: Duration::from_millis(100),
        pods: 4,
        nodes: 2,
        ..ApiServerConfig::default()
    })
    .expect("start the simulated API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "sim")
        .expect("kubeconfig");
    Cluster {
        api,
        dir,
        kubeconfig,
    }
}

/// A kubeconfig pointing at `server` (e.g. a relay in front of the API server).
pub fn kubeconfig_for(dir: &std::path::Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        sim_apiserver::kubeconfig::kubeconfig_yaml(server, "sim", None),
    )
    .expect("write kubeconfig");
    path
}

/// A direct GET on the API server (no tunnel), for comparison.
pub async fn direct_get(api: &RunningApiServer, path: &str) -> (u16, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri: http::Uri = format!("{}{path}", api.url()).parse().expect("uri");
    let resp = guard("direct GET", client.get(uri))
        .await
        .expect("direct GET");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec())
}

// ------------------------------------------------------------------------------------- agentk

/// agentk running in-process until dropped.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), agentk::Error>>,
}

impl RunningAgent {
    /// Asks agentk to shut down and waits for it.
    pub async fn shutdown(mut self) -> Result<(), agentk::Error> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        guard("agentk shutdown", &mut self.task)
            .await
            .expect("agentk task panicked")
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// agentk's configuration for these tests, without the informer cache (the k8s-api and
/// service-proxy tests count upstream connections and streams); see [`cache_agent_config`].
pub fn agent_config(
    pki: &ThrowawayPki,
    kas: SocketAddr,
    kubeconfig: &std::path::Path,
) -> agentk::Config {
    let mut c = cache_agent_config(pki, kas, kubeconfig);
    c.cache.watch_kinds.clear();
    c
}

/// agentk's configuration with the default informer cache (nodes, pods, deployments, events).
pub fn cache_agent_config(
    pki: &ThrowawayPki,
    kas: SocketAddr,
    kubeconfig: &std::path::Path,
) -> agentk::Config {
    let mut c = agentk::Config::new(format!("tls://{kas}"), TOKEN);
    c.ca = pki.roots();
    c.kube = agentk::KubeSource::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        context: None,
    };
    c.backoff = agentk::BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        stable_after: Duration::from_secs(10),
    };
    c.shutdown_grace = Duration::from_secs(2);
    c
}

pub fn spawn_agent(config: agentk::Config) -> RunningAgent {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agentk::run(config, async move {
        let _ = stopped.await;
    }));
    RunningAgent {
        stop: Some(stop),
        task,
    }
}

// ------------------------------------------------------------------------------ TCP and HTTP

/// A TCP relay counting its open connections; a connection counts as closed as soon as either side
/// closed it (then both are dropped).
pub struct CountingRelay {
    pub addr: SocketAddr,
    pub open: Arc<AtomicUsize>,
    pub total: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingRelay {
    pub async fn start(upstream: SocketAddr) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let open = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let (o, t) = (open.clone(), total.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                o.fetch_add(1, Ordering::SeqCst);
                t.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingRelay {
            addr,
            open,
            total,
            task,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body that sends one chunk and then fails (the upstream breaks mid-way).
struct BrokenBody {
    sent: bool,
    /// Lets the head and first chunk reach the client before the failure.
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.sent {
            std::task::ready!(self.pause.as_mut().poll(cx));
            std::task::Poll::Ready(Some(Err(std::io::Error::other("upstream broke"))))
        } else {
            self.sent = true;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"partial ",
            )))))
        }
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A small HTTP/1.1 server for service-proxy tests. `GET /slow` waits until `release` is sent;
/// `GET /broken` sends part of a chunked body and then breaks the connection; everything else
/// echoes `METHOD path?query\nbody`.
pub struct TestHttpServer {
    pub addr: SocketAddr,
    pub release: tokio::sync::watch::Sender<bool>,
    pub slow_started: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestHttpServer {
    pub async fn start() -> TestHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let addr = listener.local_addr().expect("http addr");
        let (release, released) = tokio::sync::watch::channel(false);
        let slow_started = Arc::new(AtomicUsize::new(0));
        let started = slow_started.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let released = released.clone();
                let started = started.clone();
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut released = released.clone();
                    let started = started.clone();
                    async move {
                        let method = req.method().to_string();
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        if pq == "/slow" {
                            started.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            return Ok::<_, Infallible>(http::Response::new(full(
                                Bytes::from_static(b"slow response done"),
                            )));
                        }
                        if pq == "/broken" {
                            return Ok(http::Response::new(
                                BrokenBody {
                                    sent: false,
                                    pause: Box::pin(tokio::time::sleep(Duration::from_millis(200))),
                                }
                                .boxed(),
                            ));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut text = format!("{method} {pq}\n").into_bytes();
                        text.extend_from_slice(&body);
                        let mut resp = http::Response::new(full(text));
                        resp.headers_mut()
                            .insert("x-echo", http::HeaderValue::from_static("yes"));
                        Ok(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        TestHttpServer {
            addr,
            release,
            slow_started,
            task,
        }
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Service `namespace/name` with cluster IP 127.0.0.1 and one port named `http`.
pub fn loopback_service(namespace: &str, name: &str, port: u16) -> serde_json::Value {
    let mut svc = sim_apiserver::objects::service(namespace, name, None, port.into());
    svc["spec"]["clusterIP"] = serde_json::json!("127.0.0.1");
    svc["spec"]["clusterIPs"] = serde_json::json!(["127.0.0.1"]);
    svc
}

// ------------------------------------------------------------------- views: kas's mirror

/// A message agentk sent on a views stream, as the fake kas saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Snapshot { epoch: u64, seq: u64 },
    Update { epoch: u64, base_seq: u64, seq: u64 },
    ObjectChanges(Vec<protocol::cache::ObjectChange>),
}

/// The fake kas's view of one agent, kept by the test across connections (like kas's registry).
#[derive(Debug, Default)]
pub struct MirrorState {
    pub mirror: protocol::cache::Mirror,
    /// Every message received, with the number (1, 2, ...) of the views stream it came on.
    pub received: Vec<(usize, Received)>,
    /// The resync request sent when each views stream opened: (stream, epoch, seq).
    pub opening_requests: Vec<(usize, u64, u64)>,
    /// How often the mirror could not apply an update and asked for a resync.
    pub resyncs_needed: usize,
    /// Messages the mirror rejected as malformed.
    pub errors: Vec<String>,
    /// Views streams opened so far.
    pub streams: usize,
}

pub type SharedMirror = Arc<Mutex<MirrorState>>;

impl MirrorState {
    /// View messages (snapshots and updates) received on views stream `stream`.
    pub fn view_messages(&self, stream: usize) -> Vec<Received> {
        self.received
            .iter()
            .filter(|(s, r)| *s == stream && !matches!(r, Received::ObjectChanges(_)))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every object change received, in order.
    pub fn object_changes(&self) -> Vec<protocol::cache::ObjectChange> {
        self.received
            .iter()
            .filter_map(|(_, r)| match r {
                Received::ObjectChanges(c) => Some(c.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

fn server_message(msg: protocol::cache::proto::server_to_agent::Msg) -> Bytes {
    protocol::cache::encode_message(&protocol::cache::proto::ServerToAgent { msg: Some(msg) })
}

async fn write_frame(stream: &Stream, frame: Bytes) -> bool {
    let mut w = stream;
    tokio::io::AsyncWriteExt::write_all(&mut w, &frame)
        .await
        .is_ok()
}

/// Serves, like kas, the streams agentk opens on `conn`: each `views` stream feeds `state`'s
/// mirror (first a resync request, then an ack or resync request per message as the mirror
/// says); anything else is answered 404.
pub fn serve_views(conn: Connection, state: SharedMirror) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((head, stream)) = conn.accept_stream().await {
            if head.service != protocol::service::VIEWS || head.method != "SYNC" {
                let _ = stream.respond(
                    ResponseHead {
                        status: 404,
                        headers: vec![],
                    },
                    true,
                );
                continue;
            }
            tokio::spawn(mirror_stream(stream, state.clone()));
        }
    })
}

async fn mirror_stream(stream: Stream, state: SharedMirror) {
    use protocol::cache::MirrorOutcome;
    use protocol::cache::proto::agent_to_server::Msg as In;
    use protocol::cache::proto::server_to_agent::Msg as Out;
    stream
        .respond(
            ResponseHead {
                status: 200,
                headers: vec![],
            },
            false,
        )
        .expect("answer the views stream");
    let (number, first) = {
        let mut s = state.lock().expect("mirror lock");
        s.streams += 1;
        let number = s.streams;
        let request = s.mirror.on_connected(std::time::Instant::now());
        s.opening_requests
            .push((number, request.epoch, request.seq));
        (number, request)
    };
    if !write_frame(&stream, server_message(Out::Resync(first))).await {
        return;
    }
    let mut decoder = protocol::cache::MessageDecoder::default();
    while let Some(Ok(chunk)) = stream.read_chunk(64 * 1024).await {
        decoder.push(&chunk);
        while let Some(bytes) = decoder.next_message().expect("agentk frames its messages") {
            let message = protocol::cache::decode_agent_message(&bytes)
                .expect("agentk sends valid cache messages");
            let reply = {
                let mut s = state.lock().expect("mirror lock");
                let r = match &message.msg {
                    Some(In::Snapshot(x)) => Received::Snapshot {
                        epoch: x.epoch,
                        seq: x.seq,
                    },
                    Some(In::Update(x)) => Received::Update {
                        epoch: x.epoch,
                        base_seq: x.base_seq,
                        seq: x.seq,
                    },
                    Some(In::ObjectChanges(x)) => Received::ObjectChanges(
                        x.changes
                            .iter()
                            .map(|c| {
                                protocol::cache::ObjectChange::try_from(c)
                                    .expect("valid object change")
                            })
                            .collect(),
                    ),
                    None => panic!("agentk sent an empty cache message"),
                };
                s.received.push((number, r));
                match s.mirror.handle(&message, std::time::Instant::now()) {
                    Ok(MirrorOutcome::Applied { ack, .. }) => Some(Out::Ack(ack)),
                    Ok(MirrorOutcome::Ignored { ack }) => ack.map(Out::Ack),
                    Ok(MirrorOutcome::ResyncNeeded { request }) => {
                        s.resyncs_needed += 1;
                        Some(Out::Resync(request))
                    }
                    Err(e) => {
                        s.errors.push(e.to_string());
                        None
                    }
                }
            };
            if let Some(reply) = reply
                && !write_frame(&stream, server_message(reply)).await
            {
                break;
            }
        }
    }
    state.lock().expect("mirror lock").mirror.on_disconnected();
}

/// The views the naive oracle (`protocol::testing::naive_views`, independent of the production
/// evaluator) computes over the API server's current objects of the default watched kinds: what the
/// mirror must show once agentk caught up.
pub fn truth(api: &RunningApiServer) -> protocol::cache::Views {
    let objects: Vec<(protocol::cache::ResourceKind, serde_json::Value)> =
        agentk::default_watch_kinds()
            .into_iter()
            .flat_map(|k| {
                api.store()
                    .list(&k.api_version(), &k.kind, None)
                    .into_iter()
                    .map(move |o| (k.clone(), o))
            })
            .collect();
    protocol::testing::naive_views::evaluate(
        &protocol::cache::default_views(),
        objects.iter().map(|(k, o)| (k, o)),
    )
}

/// Whether the mirror's views equal [`truth`].
pub fn mirror_is_truth(state: &SharedMirror, api: &RunningApiServer) -> bool {
    let s = state.lock().expect("mirror lock");
    s.mirror.is_synced() && *s.mirror.views() == truth(api)
}

/// The value of `metric` in row `key` of view `view` (0 when the row does not exist).
pub fn view_value(views: &protocol::cache::Views, view: &str, key: &[&str], metric: &str) -> i64 {
    let v = views.get(view).unwrap_or_else(|| panic!("no view {view}"));
    let i = v
        .schema
        .metrics
        .iter()
        .position(|m| m == metric)
        .unwrap_or_else(|| panic!("view {view} has no metric {metric}"));
    let key: Vec<String> = key.iter().map(|k| (*k).to_owned()).collect();
    v.rows
        .get(&key)
        .and_then(|r| r.get(i))
        .map_or(0, |d| (d.nanos() / 1_000_000_000) as i64)
}

/// The views the mirror shows now.
pub fn mirror_views(state: &SharedMirror) -> protocol::cache::Views {
    state.lock().expect("mirror lock").mirror.views().clone()
}

// -------------------------------------------------------------- API server request log

/// A TCP relay in front of the API server recording the request line (method and path with
/// query) of every HTTP/1.1 request passing through it, and every line the client sent (so the
/// request headers that reached the API server can be checked).
pub struct RecordingRelay {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub lines: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RecordingRelay {
    pub async fn start(upstream: SocketAddr) -> RecordingRelay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let all = lines.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let log = log.clone();
                let all = all.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut line: Vec<u8> = Vec::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            for &b in &buf[..n] {
                                if b == b'\n' {
                                    record_request_line(&line, &log);
                                    all.lock()
                                        .expect("log lock")
                                        .push(String::from_utf8_lossy(&line).trim_end().to_owned());
                                    line.clear();
                                } else if line.len() < 8192 {
                                    line.push(b);
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        RecordingRelay {
            addr,
            requests,
            lines,
            task,
        }
    }

    /// The request lines so far (`GET /api/v1/pods?limit=500`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("log lock").clone()
    }

    /// Every line clients sent so far (request lines, headers, line-oriented bodies).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }
}

fn record_request_line(line: &[u8], log: &Mutex<Vec<String>>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let mut parts = text.split(' ');
    if let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
        && version.starts_with("HTTP/1.")
        && matches!(
            method,
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
        )
    {
        log.lock()
            .expect("log lock")
            .push(format!("{method} {target}"));
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
