//! A live deployment in one process: kas (on its own threads), a simulated Kubernetes API server and
//! a real agentk (both on a tokio runtime), agent 1 dialling kas over TLS on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use kas::Running;
use protocol::cache::{ResourceKind, Views, default_views};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

use super::{Env, GUARD, eventually, get};

/// kas + API server + agentk.
pub struct Live {
    pub env: Env,
    pub kas: Running,
    pub api: RunningApiServer,
    pub rt: tokio::runtime::Runtime,
    pub kubeconfig: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<Result<(), agentk::Error>>>,
}

pub const AGENT: u64 = 1;

impl Live {
    /// Starts everything; `public_read` as in `api_listener.public_read`. Returns once agent 1 is
    /// connected.
    pub fn start(public_read: bool) -> Live {
        let mut env = Env::new();
        env.config.api_listener.public_read = public_read;
        let kas = env.start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = ApiServer::start_on(
            rt.handle(),
            ApiServerConfig {
                kubelet: false,
                nodes: 2,
                pods: 4,
                log_interval: Duration::from_millis(200),
                ..ApiServerConfig::default()
            },
        )
        .unwrap();
        let kubeconfig = env.dir.path().join("cluster.kubeconfig");
        api.write_kubeconfig(&kubeconfig, "sim").unwrap();
        let mut live = Live {
            env,
            kas,
            api,
            rt,
            kubeconfig,
            stop: None,
            agent: None,
        };
        live.start_agent();
        live
    }

    /// Starts agentk (agent 1) and waits until kas registered it.
    pub fn start_agent(&mut self) {
        let mut config = agentk::Config::new(
            format!("tls://{}", self.kas.agent_addr()),
            self.env.token(AGENT),
        );
        config.ca = self.env.pki.roots();
        config.tls_server_name = Some("localhost".into());
        config.kube = agentk::KubeSource::Kubeconfig {
            path: self.kubeconfig.clone(),
            context: None,
        };
        config.backoff = agentk::BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
        };
        config.shutdown_grace = Duration::from_secs(2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.agent = Some(self.rt.spawn(agentk::run(config, async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
        assert!(
            self.kas.wait_for_agents(&[AGENT], GUARD),
            "agentk did not connect"
        );
    }

    /// Stops agentk and waits for it to end.
    pub fn stop_agent(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.agent.take() {
            let result = self
                .rt
                .block_on(async { tokio::time::timeout(GUARD, task).await });
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "agentk stopped badly: {result:?}"
            );
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.kas.api_url())
    }

    /// The oracle's views of the API server's objects of agentk's watched kinds.
    pub fn truth(&self) -> Views {
        truth(&self.api)
    }

    /// `GET /api/v1/agents/1/views` (with the admin bearer).
    pub fn views_json(&self) -> serde_json::Value {
        let r = get(
            &self.url("/api/v1/agents/1/views"),
            Some(&self.env.admin_bearer(AGENT)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Waits until kas's views (through the HTTP API) equal the truth, synced and connected.
    pub fn wait_views_equal_truth(&self, what: &str) -> serde_json::Value {
        eventually(what, || {
            let v = self.views_json();
            let truth = serde_json::to_value(self.truth()).unwrap();
            (v["views"] == truth && v["synced"] == true && v["connected"] == true).then_some(v)
        })
    }

    pub fn shutdown(mut self) {
        self.stop_agent();
        let report = self.kas.shutdown_within(Duration::from_secs(5));
        assert!(report.is_clean(), "{report:?}");
        self.api.shutdown();
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

/// The views the naive oracle (`protocol::testing::naive_views`, independent of the production
/// evaluator) computes over `api`'s objects of agentk's default watched kinds.
pub fn truth(api: &RunningApiServer) -> Views {
    let objects: Vec<(ResourceKind, serde_json::Value)> = agentk::default_watch_kinds()
        .into_iter()
        .flat_map(|k| {
            api.store()
                .list(&k.api_version(), &k.kind, None)
                .into_iter()
                .map(move |o| (k.clone(), o))
        })
        .collect();
    protocol::testing::naive_views::evaluate(&default_views(), objects.iter().map(|(k, o)| (k, o)))
}

/// The value of `metric` in row `key` of view `view` in a views JSON (0 when the row is absent).
pub fn row_value(views: &serde_json::Value, view: &str, key: &[(&str, &str)], metric: &str) -> i64 {
    views[view]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| key.iter().all(|(k, v)| r[*k] == *v))
        .and_then(|r| r[metric].as_i64())
        .unwrap_or(0)
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: serde_json::Value,
}

/// A client reading an event stream over raw HTTP/1.1 (chunked).
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pending: String,
    pub comments: Vec<String>,
}

impl SseClient {
    /// `GET path` with `authorization` (if any); panics unless the answer is a 200 event stream.
    pub fn open(kas: &Running, path: &str, authorization: Option<&str>) -> SseClient {
        use std::io::Write;
        let mut tcp = TcpStream::connect(kas.api_addr()).unwrap();
        tcp.set_read_timeout(Some(GUARD)).unwrap();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: kas\r\nAccept: text/event-stream\r\n{auth}\r\n"
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
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        SseClient {
            reader,
            pending: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event (comments are collected in `comments`); `None` when the stream ended.
    pub fn next(&mut self) -> Option<Sse> {
        // Bounded: each iteration consumes a chunk; the read timeout is the hang guard.
        for _ in 0..100_000 {
            if let Some(i) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..i + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                let mut id = None;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            let chunk = super::read_chunk(&mut self.reader)?;
            self.pending.push_str(&String::from_utf8(chunk).unwrap());
        }
        None
    }

    /// Reads events until `f` accepts one (hang guard: the socket's read timeout, and a bound).
    pub fn wait_for(&mut self, what: &str, mut f: impl FnMut(&Sse) -> bool) -> Sse {
        for _ in 0..10_000 {
            match self.next() {
                Some(e) if f(&e) => return e,
                Some(_) => {}
                None => panic!("the event stream ended before {what}"),
            }
        }
        panic!("no {what}");
    }
}
