//! A deliberately simple agent built on [`protocol::Connection`] with injectable faults, so the
//! harness's own tests can show that each check fails when an implementation breaks its rule
//! (hidden subcommand `conformance selftest-agent`).
//!
//! It serves `k8s-api` itself (no cluster): `GET /version` and `GET /conformance/large?bytes=N` as the
//! fake API server does, 404 for anything else. It reconnects with a fixed exponential back-off
//! (500 ms doubling to 8 s) that honours REJECT's `retry_after_ms`. Faults alter exactly one rule.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT, PREFACE};
use protocol::{AgentHello, CloseReason, Config, Connection, Event, proto};

use crate::apiserver::pattern;

/// The rule the self-test agent breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: a conforming (if minimal) agent.
    None,
    /// Reconnects at once after a refusal, ignoring `retry_after_ms` and backing off never.
    NoBackoff,
    /// Answers PINGs with a different payload.
    WrongPingPayload,
    /// Closes without the GOAWAY that must accompany a connection error.
    SilentOnError,
    /// Sends every DATA frame twice (exceeding the windows).
    DoubleData,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        Ok(match s {
            "none" => Fault::None,
            "no-backoff" => Fault::NoBackoff,
            "wrong-ping-payload" => Fault::WrongPingPayload,
            "silent-on-error" => Fault::SilentOnError,
            "double-data" => Fault::DoubleData,
            other => return Err(format!("unknown fault {other:?}")),
        })
    }
}

/// Why the self-test agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(transparent)]
    Tls(#[from] tunnel_tls::TlsError),
}

/// The self-test agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub kas_address: String,
    pub token: String,
    pub client: Arc<rustls::ClientConfig>,
    pub fault: Fault,
}

impl AgentOptions {
    pub fn new(
        kas_address: &str,
        token_file: &Path,
        ca_file: &Path,
        fault: Fault,
    ) -> Result<AgentOptions, SelftestError> {
        let token = std::fs::read_to_string(token_file).map_err(|source| SelftestError::Read {
            path: token_file.display().to_string(),
            source,
        })?;
        let client =
            tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(ca_file.to_path_buf()), None)?;
        Ok(AgentOptions {
            kas_address: kas_address.trim_start_matches("tls://").to_owned(),
            token: token.trim().to_owned(),
            client,
            fault,
        })
    }
}

/// Runs until killed: connect, serve, reconnect.
pub fn run_agent(opts: &AgentOptions) -> ! {
    let mut failures: u32 = 0;
    loop {
        let (refused_retry, lived) = match serve_once(opts) {
            Ok(Ending { retry_after, lived }) => (retry_after, lived),
            Err(e) => {
                eprintln!("selftest-agent: {e}");
                (None, Duration::ZERO)
            }
        };
        if lived > Duration::from_secs(5) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let backoff =
            Duration::from_millis(500).saturating_mul(1 << failures.min(5).saturating_sub(1));
        let delay = match opts.fault {
            Fault::NoBackoff => Duration::from_millis(10),
            _ => backoff.max(refused_retry.unwrap_or_default()),
        };
        std::thread::sleep(delay);
    }
}

struct Ending {
    retry_after: Option<Duration>,
    lived: Duration,
}

/// Rewrites the outgoing frames according to the fault.
struct Mutator {
    fault: Fault,
    decoder: Decoder,
    preface_left: usize,
}

impl Mutator {
    fn apply(&mut self, out: &[u8]) -> Vec<u8> {
        if self.fault == Fault::None || self.fault == Fault::NoBackoff {
            return out.to_vec();
        }
        let mut result = Vec::new();
        let skip = self.preface_left.min(out.len());
        result.extend_from_slice(&out[..skip]);
        self.preface_left -= skip;
        self.decoder.feed(&out[skip..]);
        while let Ok(Some(f)) = self.decoder.decode() {
            match (self.fault, f) {
                (Fault::WrongPingPayload, Frame::Ping { ack: true, payload }) => {
                    let mut p = payload;
                    p[0] ^= 0xff;
                    result.extend_from_slice(
                        &Frame::Ping {
                            ack: true,
                            payload: p,
                        }
                        .to_bytes(),
                    );
                }
                (Fault::SilentOnError, Frame::GoAway(g)) if g.code != 0 => {}
                (
                    Fault::DoubleData,
                    Frame::Data {
                        stream,
                        data,
                        end_stream,
                    },
                ) if !data.is_empty() => {
                    let dup = Frame::Data {
                        stream,
                        data: data.clone(),
                        end_stream: false,
                    };
                    result.extend_from_slice(&dup.to_bytes());
                    result.extend_from_slice(
                        &Frame::Data {
                            stream,
                            data,
                            end_stream,
                        }
                        .to_bytes(),
                    );
                }
                (_, f) => result.extend_from_slice(&f.to_bytes()),
            }
        }
        result
    }
}

fn answer(head: &proto::RequestHead) -> (u32, Bytes) {
    let path = head.path.split('?').next().unwrap_or_default();
    match (head.service.as_str(), head.method.as_str(), path) {
        ("k8s-api", "GET", "/version") => (
            200,
            Bytes::from_static(br#"{"major":"1","minor":"33","gitVersion":"selftest"}"#),
        ),
        ("k8s-api", "GET", "/conformance/large") => {
            let n = head
                .path
                .split_once("bytes=")
                .and_then(|(_, n)| n.split('&').next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
                .min(16 * 1024 * 1024);
            (200, (0..n).map(pattern).collect::<Vec<u8>>().into())
        }
        _ => (
            404,
            Bytes::from_static(b"{\"kind\":\"Status\",\"code\":404}"),
        ),
    }
}

fn serve_once(opts: &AgentOptions) -> Result<Ending, String> {
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
            capabilities: vec!["k8s-api".into()],
            ..Default::default()
        },
    };
    let mut conn = Connection::agent(Config::default(), hello, start);
    let mut mutator = Mutator {
        fault: opts.fault,
        decoder: Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT),
        preface_left: PREFACE.len(),
    };
    let mut pending: HashMap<protocol::StreamId, Bytes> = HashMap::new();
    let mut connected_at = None;
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the connection: it ends on close, EOF, or its own timers.
    loop {
        while let Some(out) = conn.poll_transmit() {
            let bytes = mutator.apply(&out);
            if tls.write_all(&bytes).and_then(|()| tls.flush()).is_err() {
                conn.handle_eof();
            }
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Connected(_) => connected_at = Some(Instant::now()),
                Event::StreamOpened { id, head, .. } => {
                    let (status, body) = answer(&head);
                    let resp = proto::ResponseHead {
                        status,
                        headers: Vec::new(),
                    };
                    if conn.send_response(id, resp, false).is_ok() {
                        pending.insert(id, body);
                    }
                }
                Event::Data { id, data } => conn.release_capacity(id, data.len()),
                Event::Reset { id, .. } => {
                    pending.remove(&id);
                }
                Event::Closed(reason) => {
                    while let Some(out) = conn.poll_transmit() {
                        let _ = tls.write_all(&mutator.apply(&out));
                    }
                    let _ = tls.flush();
                    let retry_after = match reason {
                        CloseReason::Refused { retry_after_ms, .. } => {
                            Some(Duration::from_millis(retry_after_ms.into()))
                        }
                        _ => None,
                    };
                    return Ok(Ending {
                        retry_after,
                        lived: connected_at.map(|t| t.elapsed()).unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
        // Offer pending bodies within flow control.
        let ids: Vec<protocol::StreamId> = pending.keys().copied().collect();
        for id in ids {
            if let Some(body) = pending.remove(&id) {
                match conn.send_data(id, body.clone(), true) {
                    Ok(n) if n == body.len() => {}
                    Ok(n) => {
                        pending.insert(id, body.slice(n..));
                    }
                    Err(_) => {}
                }
            }
        }
        if conn.has_pending_transmit() {
            continue;
        }
        let now = Instant::now();
        let wait = conn
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        tls.get_ref()
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        match tls.read(&mut buf) {
            Ok(0) => conn.handle_eof(),
            Ok(n) => conn.handle_input(&buf[..n], Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => conn.handle_eof(),
        }
        conn.handle_timeout(Instant::now());
    }
}
