//! `pods/{name}/portforward`: the pod network behind it ([`PodNetwork`]: a real TCP listener
//! per forwarded pod port) and the port-forward protocol on a SPDY session ([`Handler`]).
//!
//! Each forwarded connection is a pair of client streams sharing a `requestid` header and
//! naming the pod `port`: `streamtype: error` (the server writes a message there if the
//! connection fails, then FIN) and `streamtype: data` (the bytes, both ways, each direction
//! ending with FIN). kubectl speaks this over plain SPDY or SPDY tunnelled in WebSocket.
//!
//! What answers on a pod port: a listener registered with [`PodNetwork::register`] (a test's
//! own server), else, for ports the pod declares (`containerPort`), a small HTTP server the
//! simulator starts on first use: `GET /metrics` answers Prometheus text, anything else a line
//! naming the pod and port. Undeclared ports refuse the connection, as an empty port would.

pub mod channels;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::objects::PodPhase;
use crate::spdy::session::{self, IncomingStream};
use crate::status::ApiError;
use crate::store::Store;

/// Port-forward pairs waiting for their second stream, at most.
const MAX_PENDING: usize = 1024;

/// The pod a port-forward session reaches, as resolved when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Declared container ports.
    pub ports: Vec<u16>,
}

impl PodTarget {
    /// The running pod `ns/name`.
    pub fn resolve(store: &Store, ns: &str, name: &str) -> Result<Self, ApiError> {
        let pod = store.get("v1", "Pod", Some(ns), name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{name}\" not found"),
            )
        })?;
        if PodPhase::of(&pod) != PodPhase::Running {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: pod {name} is not running"
            )));
        }
        let ports = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        Ok(Self {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ports,
        })
    }
}

/// Where the simulated pods' ports really listen.
#[derive(Debug)]
pub struct PodNetwork {
    registered: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    builtin: Mutex<HashMap<(String, u16), SocketAddr>>,
    shutdown: watch::Receiver<bool>,
}

impl PodNetwork {
    /// A network whose built-in listeners stop when `shutdown` flips.
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            registered: Mutex::new(HashMap::new()),
            builtin: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Makes `addr` answer for port `port` of pod `ns/pod`.
    pub fn register(&self, ns: &str, pod: &str, port: u16, addr: SocketAddr) {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((ns.to_string(), pod.to_string(), port), addr);
    }

    /// The address answering for `port` of `pod` (starting the built-in server if needed).
    pub async fn address(&self, pod: &PodTarget, port: u16) -> Result<SocketAddr, String> {
        let refused = || {
            format!(
                "error forwarding port {port} to pod {}, uid : failed to connect to localhost:{port} inside namespace \"{}\": connect: connection refused",
                pod.uid, pod.namespace
            )
        };
        let key = (pod.namespace.clone(), pod.name.clone(), port);
        if let Some(a) = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(*a);
        }
        if !pod.ports.contains(&port) {
            return Err(refused());
        }
        let bkey = (pod.uid.clone(), port);
        if let Some(a) = self
            .builtin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&bkey)
        {
            return Ok(*a);
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("{}: {e}", refused()))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut builtin = self.builtin.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = builtin.get(&bkey) {
            // Another session started it meanwhile.
            return Ok(*a);
        }
        builtin.insert(bkey, addr);
        tokio::spawn(serve_http(
            listener,
            pod.clone(),
            port,
            self.shutdown.clone(),
        ));
        tracing::debug!(pod = %pod.name, port, %addr, "pod port listening");
        Ok(addr)
    }
}

/// The built-in HTTP server of one pod port.
async fn serve_http(
    listener: TcpListener,
    pod: PodTarget,
    port: u16,
    mut shutdown: watch::Receiver<bool>,
) {
    let pod = Arc::new(pod);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let pod = pod.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let body = if req.uri().path() == "/metrics" {
                format!(
                    "# HELP sim_pod_info Information about the simulated pod.\n# TYPE sim_pod_info gauge\nsim_pod_info{{namespace=\"{}\",pod=\"{}\",port=\"{port}\"}} 1\n",
                    pod.namespace, pod.name
                )
            } else {
                format!("hello from {}/{} port {port}\n", pod.namespace, pod.name)
            };
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The port-forward side of a SPDY session.
pub struct Handler {
    network: Arc<PodNetwork>,
    pod: PodTarget,
    pending: HashMap<String, (Option<IncomingStream>, Option<IncomingStream>)>,
    tasks: Vec<AbortHandle>,
}

impl Handler {
    /// A handler forwarding to `pod`'s ports on `network`.
    pub fn new(network: Arc<PodNetwork>, pod: PodTarget) -> Self {
        Self {
            network,
            pod,
            pending: HashMap::new(),
            tasks: Vec::new(),
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl session::Handler for Handler {
    fn stream(&mut self, stream: IncomingStream) {
        let id = stream.header("requestid").unwrap_or("").to_string();
        let kind = stream.header("streamtype").unwrap_or("").to_string();
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&id) {
            tracing::info!("port-forward: too many half-open requests; refusing a stream");
            return;
        }
        let slot = self.pending.entry(id.clone()).or_default();
        match kind.as_str() {
            "error" => slot.0 = Some(stream),
            "data" => slot.1 = Some(stream),
            other => {
                tracing::debug!(
                    streamtype = other,
                    "port-forward: ignoring a stream of unknown type"
                );
                return;
            }
        }
        if let Some((Some(_), Some(_))) = self.pending.get(&id)
            && let Some((Some(error), Some(data))) = self.pending.remove(&id)
        {
            self.tasks.retain(|t| !t.is_finished());
            let task = tokio::spawn(forward(self.network.clone(), self.pod.clone(), error, data));
            self.tasks.push(task.abort_handle());
        }
    }
}

async fn forward(
    network: Arc<PodNetwork>,
    pod: PodTarget,
    error: IncomingStream,
    data: IncomingStream,
) {
    let fail = |msg: String| async {
        tracing::debug!(pod = %pod.name, message = %msg, "port-forward failed");
        let _ = error.writer.write(Bytes::from(msg)).await;
        let _ = error.writer.finish().await;
        let _ = data.writer.finish().await;
    };
    let Some(port) = data.header("port").and_then(|p| p.parse::<u16>().ok()) else {
        let raw = data.header("port").unwrap_or("").to_string();
        fail(format!("invalid port {raw:?} in the port-forward request")).await;
        return;
    };
    let tcp = match network.address(&pod, port).await {
        Ok(addr) => TcpStream::connect(addr)
            .await
            .map_err(|e| format!("error forwarding port {port} to pod {}: {e}", pod.uid)),
        Err(e) => Err(e),
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(msg) => {
            fail(msg).await;
            return;
        }
    };
    let IncomingStream {
        data: mut from_client,
        writer,
        ..
    } = data;
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        while let Some(b) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer
                        .write(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = writer.finish().await;
        let _ = error.writer.finish().await;
    };
    tokio::join!(up, down);
}
