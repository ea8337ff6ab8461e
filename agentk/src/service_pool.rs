//! Keep-alive HTTP/1.1 connections to upstreams (in-cluster services, the Kubernetes API server),
//! each driven by the task serving the request that uses it.
//!
//! A general-purpose client (hyper-util's pooled client) runs every connection on a task of its own
//! and hands each request, response head and body chunk between that task and the caller, and
//! spawns one more task per request to put the connection back in the pool. The service proxy
//! serves one exchange per stream, so it does without: it checks a connection out for one exchange,
//! polls the connection together with the exchange ([`Upstream::drive`]), and puts it back
//! ([`ServicePool::checkin`]) when the response body ended and the connection is ready for the next
//! request. A connection left in any other state (kas reset the stream, the deadline passed, the
//! upstream failed) is closed.
//!
//! Idle connections are kept at most [`IDLE`] and at most [`MAX_IDLE_PER_AUTHORITY`] per
//! `clusterIP:port`; one the service closed meanwhile is noticed when checked out (its end of file
//! is read) and dropped, and a request that a pooled connection turned away before sending any of
//! it is sent again on a fresh connection.
//!
//! The pool is generic over how a connection is made ([`Connect`]): plain TCP for services
//! ([`Tcp`]), TCP and TLS with kube's configuration for the API server
//! ([`crate::upstream::ApiConnector`]). A small request body (a `Content-Length` of at most
//! [`SMALL_BODY`](crate::body::SMALL_BODY)) is read whole before the request is sent
//! ([`RequestBody::buffer_small`]), so head and body leave in one write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::forward::{Exchange, Guarded, Outcome, relay};
use crate::upstream::{BoxError, classify};

/// How long connecting to a service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection is kept.
pub const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per `clusterIP:port`.
pub const MAX_IDLE_PER_AUTHORITY: usize = 128;
/// `clusterIP:port`s with idle connections kept at once.
const MAX_AUTHORITIES: usize = 1024;

/// How a pool makes a connection to an upstream.
pub trait Connect: Send + Sync + 'static {
    /// The connection's byte stream.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    /// Connects to `authority` (`host:port`).
    fn connect(&self, authority: &str) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;
}

/// Plain TCP (`TCP_NODELAY`), for in-cluster services; [`CONNECT_TIMEOUT`] at most.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tcp;

impl Connect for Tcp {
    type Io = TokioIo<TcpStream>;

    async fn connect(&self, authority: &str) -> Result<Self::Io, BoxError> {
        Ok(TokioIo::new(connect_tcp(authority, CONNECT_TIMEOUT).await?))
    }
}

/// A TCP connection to `authority` with `TCP_NODELAY`, within `timeout` (an `io::Error` of kind
/// `TimedOut` after it).
pub async fn connect_tcp(authority: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {authority} timed out"),
            )
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// One HTTP/1.1 connection to an upstream: the request side and the connection itself, which
/// makes progress only while [`Upstream::drive`] polls it.
pub struct Upstream<C: Connect = Tcp> {
    send: http1::SendRequest<RequestBody>,
    conn: http1::Connection<C::Io, RequestBody>,
    /// The connection ended (closed by the upstream, or failed).
    ended: bool,
}

impl<C: Connect> Upstream<C> {
    /// Connects to `authority` with `connector` (for services `ip:port`, as
    /// [`crate::proxy_path::resolve`] gives it). Boxed: hyper's connection state is large, and a
    /// pooled connection moves between the pool and every request's future it serves.
    pub async fn connect(connector: &C, authority: &str) -> Result<Box<Upstream<C>>, BoxError> {
        let io = connector.connect(authority).await?;
        let (send, conn) = http1::handshake(io).await?;
        Ok(Box::new(Upstream {
            send,
            conn,
            ended: false,
        }))
    }

    /// Polls the connection once without waiting: whether it is still usable (a service that
    /// closed an idle connection shows up here as its end of file).
    fn still_open(&mut self) -> bool {
        if self.ended || self.send.is_closed() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if self.conn.poll_without_shutdown(&mut cx).is_ready() {
            self.ended = true;
        }
        !self.ended && !self.send.is_closed()
    }

    /// Runs `exchange` with the request side while polling the connection, so the connection
    /// makes progress in the caller's task.
    pub async fn drive<'a, F>(
        &'a mut self,
        exchange: impl FnOnce(&'a mut http1::SendRequest<RequestBody>) -> F,
    ) -> F::Output
    where
        F: Future,
    {
        let Upstream { send, conn, ended } = self;
        let mut fut = std::pin::pin!(exchange(send));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            if !*ended && conn.poll_without_shutdown(cx).is_ready() {
                // Closed or failed: the exchange learns it from hyper's channels.
                *ended = true;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Whether the connection can take the next request, after an exchange ended: polled until it
    /// settles, at most a few rounds (a connection not ready by then is not reused).
    async fn ready_for_next(&mut self) -> bool {
        // Bounded: three rounds.
        for _ in 0..3 {
            let ready = {
                let mut cx = Context::from_waker(Waker::noop());
                if self.ended || self.conn.poll_without_shutdown(&mut cx).is_ready() {
                    self.ended = true;
                    return false;
                }
                self.send.poll_ready(&mut cx)
            };
            match ready {
                Poll::Ready(Ok(())) => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => tokio::task::yield_now().await,
            }
        }
        false
    }
}

/// Idle connections of one pool, by authority, each with the time it was checked in.
type IdleMap<C> = HashMap<String, Vec<(Box<Upstream<C>>, Instant)>>;

/// The idle connections, by authority (`clusterIP:port` for services), and how new ones are made.
pub struct ServicePool<C: Connect = Tcp> {
    connector: C,
    idle: Mutex<IdleMap<C>>,
}

impl Default for ServicePool<Tcp> {
    fn default() -> Self {
        ServicePool::new(Tcp)
    }
}

impl<C: Connect> ServicePool<C> {
    /// An empty pool making its connections with `connector`.
    pub fn new(connector: C) -> ServicePool<C> {
        ServicePool {
            connector,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, IdleMap<C>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `authority` that is still open, if any (the most recently used one).
    pub fn checkout(&self, authority: &str) -> Option<Box<Upstream<C>>> {
        let now = Instant::now();
        let mut idle = self.lock();
        let list = idle.get_mut(authority)?;
        // Bounded by the list: each iteration removes one entry.
        while let Some((mut up, since)) = list.pop() {
            if now.duration_since(since) < IDLE && up.still_open() {
                return Some(up);
            }
        }
        None
    }

    /// Keeps `up` for the next request to `authority`, if there is room.
    pub fn checkin(&self, authority: &str, up: Box<Upstream<C>>) {
        let now = Instant::now();
        let mut idle = self.lock();
        if idle.len() >= MAX_AUTHORITIES && !idle.contains_key(authority) {
            idle.retain(|_, list| {
                list.retain(|(_, since)| now.duration_since(*since) < IDLE);
                !list.is_empty()
            });
            if idle.len() >= MAX_AUTHORITIES {
                return;
            }
        }
        // The key is copied only for an authority not kept yet, not at every check-in.
        match idle.get_mut(authority) {
            Some(list) => {
                list.retain(|(_, since)| now.duration_since(*since) < IDLE);
                if list.len() < MAX_IDLE_PER_AUTHORITY {
                    list.push((up, now));
                }
            }
            None => {
                idle.insert(authority.to_owned(), vec![(up, now)]);
            }
        }
    }

    /// Idle connections kept for `authority` (tests).
    pub fn idle_count(&self, authority: &str) -> usize {
        self.lock().get(authority).map_or(0, Vec::len)
    }
}

/// What sending on one connection gave.
enum Sent {
    /// The exchange ended (answered, relayed, or cancelled).
    Done(Outcome),
    /// The connection turned the request away before any of it was written.
    Unsent(Box<Request<RequestBody>>),
}

async fn exchange(
    send: &mut http1::SendRequest<RequestBody>,
    request: Request<RequestBody>,
    ex: &mut Exchange,
) -> Sent {
    match ex.guard(send.try_send_request(request)).await {
        Guarded::Done(Ok(response)) => Sent::Done(relay(response, ex).await),
        Guarded::Done(Err(mut e)) => match e.take_message() {
            Some(request) => Sent::Unsent(Box::new(request)),
            None => Sent::Done(upstream_failed(classify(e.error()), ex).await),
        },
        Guarded::Cancelled(error) => Sent::Done(Outcome::Cancelled {
            status: None,
            error,
        }),
        Guarded::TimedOut => Sent::Done(ex.answer_timeout().await),
    }
}

/// Answers 502 for an upstream failure ([`classify`]'d).
pub async fn upstream_failed(
    (kind, message): (&'static str, String),
    ex: &mut Exchange,
) -> Outcome {
    tracing::debug!(kind, %message, "upstream request failed");
    let reason = if kind == "upstream" {
        "InternalError"
    } else {
        "ServiceUnavailable"
    };
    ex.answer_status(
        502,
        reason,
        &format!("agentk cannot reach the upstream: {message}"),
        Some(kind),
    )
    .await
}

/// Sends `request` (origin-form, with its `Host`) to `authority` on a pooled connection (or a new
/// one) and streams the response back on the exchange; the connection goes back to the pool if the
/// exchange left it ready for another request. A small complete body is read first, so that it
/// leaves with the head.
pub async fn forward<C: Connect>(
    pool: &ServicePool<C>,
    authority: &str,
    request: Request<RequestBody>,
    ex: &mut Exchange,
) -> Outcome {
    let (parts, body) = request.into_parts();
    let body = match ex.guard(body.buffer_small(&parts.headers)).await {
        Guarded::Done(Ok(body)) => body,
        Guarded::Done(Err(error)) | Guarded::Cancelled(error) => {
            return Outcome::Cancelled {
                status: None,
                error,
            };
        }
        Guarded::TimedOut => return ex.answer_timeout().await,
    };
    let mut request = Request::from_parts(parts, body);
    // Bounded: every round takes a connection out of the pool for good, and a fresh connection
    // ends the loop.
    loop {
        let (mut up, fresh) = match pool.checkout(authority) {
            Some(up) => (up, false),
            None => match ex
                .guard(Upstream::connect(&pool.connector, authority))
                .await
            {
                Guarded::Done(Ok(up)) => (up, true),
                Guarded::Done(Err(e)) => return upstream_failed(classify(e.as_ref()), ex).await,
                Guarded::Cancelled(error) => {
                    return Outcome::Cancelled {
                        status: None,
                        error,
                    };
                }
                Guarded::TimedOut => return ex.answer_timeout().await,
            },
        };
        match up.drive(|send| exchange(send, request, ex)).await {
            Sent::Done(outcome) => {
                if matches!(outcome, Outcome::Done { .. }) && up.ready_for_next().await {
                    pool.checkin(authority, up);
                }
                return outcome;
            }
            Sent::Unsent(back) if !fresh => request = *back,
            Sent::Unsent(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the connection to {authority} closed before the request was sent"),
                );
                return upstream_failed(classify(&e), ex).await;
            }
        }
    }
}
