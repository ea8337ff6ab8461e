//! A fake Kubernetes API server on `127.0.0.1`, which the kubeconfig the agentk suite writes points
//! at, so scenarios can make an agent produce known responses of any size and observe what it sends
//! upstream:
//!
//! | route | answer |
//! |---|---|
//! | `GET /version` | 200, a small JSON version object |
//! | `GET /conformance/large?bytes=N` | 200, N octets of [`pattern`] |
//! | `POST /conformance/echo` | 200, `{"bytes": n, "sha256": "..."}` of the request body |
//! | `GET /conformance/slow?ms=M` | 200 `slow done` after M milliseconds |
//! | `GET /conformance/hang` | never answers; records when the client gives up (closes) |
//! | `GET /conformance/upgrade?mode=M` with `Connection: upgrade`, `Upgrade: conformance-echo` | [`UPGRADE_PROTOCOL`]: `101`, then by mode: `echo` echoes every octet until the client's half-close, then sends `bye` and half-closes; `server-first` sends `hello` and half-closes at once, then reads until the client's half-close; `hold` reads until the client goes; `refuse` answers 403 instead. The octets received after the `101` are recorded when the client's direction ends ([`ApiEvent::UpgradeEnded`]). Without the upgrade headers: 400 |
//! | anything else | 404 with a Kubernetes `Status` body |
//!
//! Every request is recorded with its `Authorization` header ([`ApiEvent`]).

use std::io::{BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::http;

/// The body octet at `i` of `/conformance/large`.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Longest a `/conformance/hang` or `/conformance/slow` request is held.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// What the fake API server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiEvent {
    Request {
        method: String,
        target: String,
        authorization: Option<String>,
        /// Every `Impersonate-*` header, in order, names lower-cased.
        impersonation: Vec<(String, String)>,
    },
    /// The client closed a `/conformance/hang` request.
    HangCancelled,
    /// The client's direction of an upgraded `/conformance/upgrade` connection ended: `clean` after
    /// a half-close (EOF), not after an error; the octets it sent after the `101`.
    UpgradeEnded { received: Vec<u8>, clean: bool },
}

/// The protocol `/conformance/upgrade` switches to.
pub const UPGRADE_PROTOCOL: &str = "conformance-echo";

/// The running server; stops when dropped.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<ApiEvent>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    pub fn start() -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (events.clone(), stop.clone());
        let accept = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || accept_loop(listener, ev, st))?;
        Ok(FakeApiServer {
            addr,
            events,
            stop,
            accept: Some(accept),
        })
    }

    pub fn events(&self) -> Vec<ApiEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Requests seen whose target starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<ApiEvent> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, ApiEvent::Request { target, .. } if target.starts_with(prefix)))
            .collect()
    }

    /// The upgraded sessions that ended, in order.
    pub fn upgrades_ended(&self) -> Vec<(Vec<u8>, bool)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ApiEvent::UpgradeEnded { received, clean } => Some((received, clean)),
                _ => None,
            })
            .collect()
    }

    pub fn hang_cancellations(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| **e == ApiEvent::HangCancelled)
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, events: Arc<Mutex<Vec<ApiEvent>>>, stop: Arc<AtomicBool>) {
    // Runs until `stop`; each connection gets a thread that ends with it (or with `stop`).
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let (ev, st) = (events.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name("fake-apiserver-conn".into())
                    .spawn(move || serve(tcp, ev, st));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn record(events: &Mutex<Vec<ApiEvent>>, e: ApiEvent) {
    if let Ok(mut v) = events.lock() {
        v.push(e);
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
    .to_string()
    .into_bytes()
}

fn serve(tcp: TcpStream, events: Arc<Mutex<Vec<ApiEvent>>>, stop: Arc<AtomicBool>) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = tcp.try_clone() else {
        return;
    };
    let mut w = write_half;
    let mut r = BufReader::new(tcp);
    // One request per iteration (keep-alive); ends when the client closes, on errors, or on `stop`.
    while !stop.load(Ordering::SeqCst) {
        let req = match http::read_request(&mut r) {
            Ok(Some(req)) => req,
            _ => return,
        };
        record(
            &events,
            ApiEvent::Request {
                method: req.method.clone(),
                target: req.target.clone(),
                authorization: req.head.header("authorization").map(str::to_owned),
                impersonation: req
                    .head
                    .headers
                    .iter()
                    .filter(|(n, _)| n.to_ascii_lowercase().starts_with("impersonate-"))
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                    .collect(),
            },
        );
        let result = match (req.method.as_str(), req.path()) {
            ("GET", "/version") => http::write_response(
                &mut w,
                200,
                "application/json",
                br#"{"major":"1","minor":"33","gitVersion":"v1.33.0-conformance","platform":"linux/amd64"}"#,
            ),
            ("GET", "/conformance/large") => {
                let n = req
                    .query("bytes")
                    .and_then(|b| b.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(64 * 1024 * 1024);
                let body: Vec<u8> = (0..n).map(pattern).collect();
                http::write_response(&mut w, 200, "application/octet-stream", &body)
            }
            ("POST" | "PUT", "/conformance/echo") => {
                let digest = hex::encode(Sha256::digest(&req.body));
                let body = serde_json::json!({"bytes": req.body.len(), "sha256": digest});
                http::write_response(&mut w, 200, "application/json", body.to_string().as_bytes())
            }
            ("GET", "/conformance/slow") => {
                let ms = req
                    .query("ms")
                    .and_then(|b| b.parse::<u64>().ok())
                    .unwrap_or(1000);
                let until = Instant::now() + Duration::from_millis(ms).min(HOLD_LIMIT);
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                http::write_response(&mut w, 200, "text/plain", b"slow done")
            }
            ("GET", "/conformance/hang") => {
                hold_until_closed(r.get_mut(), &events, &stop);
                return;
            }
            ("GET", "/conformance/upgrade") => {
                let asks = req
                    .head
                    .header("connection")
                    .is_some_and(|c| c.split(',').any(|o| o.trim().eq_ignore_ascii_case("upgrade")))
                    && req
                        .head
                        .header("upgrade")
                        .is_some_and(|u| u.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
                let mode = req.query("mode").unwrap_or("echo").to_owned();
                if !asks {
                    let _ = http::write_response(
                        &mut w,
                        400,
                        "application/json",
                        &status_json(400, "BadRequest", "expected an upgrade to conformance-echo"),
                    );
                    return;
                }
                if mode == "refuse" {
                    let _ = http::write_response(
                        &mut w,
                        403,
                        "application/json",
                        &status_json(403, "Forbidden", "upgrade refused by the conformance API server"),
                    );
                    return;
                }
                upgraded(r, w, &mode, &events, &stop);
                return;
            }
            _ => http::write_response(
                &mut w,
                404,
                "application/json",
                &status_json(404, "NotFound", "the conformance API server does not serve this"),
            ),
        };
        if result.is_err() {
            return;
        }
    }
}

/// Holds a request without answering until the client closes the connection (recorded) or the
/// hold limit passes.
fn hold_until_closed(tcp: &mut TcpStream, events: &Mutex<Vec<ApiEvent>>, stop: &AtomicBool) {
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
    let until = Instant::now() + HOLD_LIMIT;
    let mut buf = [0u8; 512];
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        match tcp.read(&mut buf) {
            Ok(0) => {
                record(events, ApiEvent::HangCancelled);
                return;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                record(events, ApiEvent::HangCancelled);
                return;
            }
        }
    }
}

/// Serves an upgraded `/conformance/upgrade` connection in `mode` (see the module table).
fn upgraded(
    mut r: BufReader<TcpStream>,
    mut w: TcpStream,
    mode: &str,
    events: &Mutex<Vec<ApiEvent>>,
    stop: &AtomicBool,
) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n\r\n"
    );
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    if mode == "server-first" {
        let _ = w.write_all(b"hello");
        let _ = w.shutdown(std::net::Shutdown::Write);
    }
    let _ = r
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)));
    let until = Instant::now() + HOLD_LIMIT;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded by the hold limit.
    let clean = loop {
        if Instant::now() > until || stop.load(Ordering::SeqCst) {
            break false;
        }
        match r.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if mode == "echo" && w.write_all(&buf[..n]).is_err() {
                    break false;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break false,
        }
    };
    if mode == "echo" && clean {
        let _ = w.write_all(b"bye");
        let _ = w.shutdown(std::net::Shutdown::Write);
    }
    record(events, ApiEvent::UpgradeEnded { received, clean });
}
