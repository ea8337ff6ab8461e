//! Forwarding one HTTP exchange between a tunnel stream and an upstream, streaming both ways.
//!
//! The request (its body a [`RequestBody`] over the tunnel stream) goes to the upstream service; the
//! response head is answered on the stream and every body chunk is written to the stream as soon
//! as it arrives (watches and followed logs flow live). Whatever happens, exactly one of these ends
//! the stream: a response with its body and end of stream; a response followed by a TRAILER
//! (`UNAVAILABLE`, the upstream body broke; `DEADLINE_EXCEEDED`, kas's deadline passed); a
//! `Status` answer agentk makes itself (502/504 when the upstream could not be reached); or
//! nothing, because kas reset the stream, in which case the upstream request is dropped at once.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::proto::{ResponseHead, Trailer};
use protocol::service::status;
use runtime_tokio::{Error as TunnelError, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{RequestBody, ResetWatch};
use crate::head::{response_head, status_answer};
use crate::upstream::{HttpService, classify};

/// How a stream ended, for the request log.
#[derive(Debug)]
pub enum Outcome {
    /// Answered with this status and the body was complete.
    Done { status: u16 },
    /// Answered with this status, then the body stopped early (trailer sent, or the stream failed).
    Truncated { status: u16, reason: String },
    /// kas abandoned the stream (reset, or the connection ended) before it was answered completely.
    Cancelled {
        status: Option<u16>,
        error: TunnelError,
    },
    /// Answered `101 Switching Protocols`; the upgraded session then carried these octets and ended
    /// cleanly (`error: None`, both directions half-closed) or not.
    Upgraded {
        to_upstream: u64,
        to_kas: u64,
        error: Option<String>,
    },
}

/// One stream being served: where the answer goes, the reset watch, and kas's deadline.
pub struct Exchange {
    pub send: SendStream,
    pub reset: ResetWatch,
    pub deadline: Option<Instant>,
}

impl Exchange {
    pub fn new(send: SendStream, reset: ResetWatch, timeout_ms: u32) -> Exchange {
        let deadline =
            (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms.into()));
        Exchange {
            send,
            reset,
            deadline,
        }
    }

    /// Runs `f` unless kas abandons the stream or the deadline passes first.
    pub async fn guard<F: Future>(&mut self, f: F) -> Guarded<F::Output> {
        let deadline = self.deadline;
        let sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            e = self.reset.reset() => Guarded::Cancelled(e),
            () = sleep => Guarded::TimedOut,
            v = f => Guarded::Done(v),
        }
    }

    /// Answers with a complete response agentk made itself.
    pub async fn answer(&mut self, head: ResponseHead, body: Bytes) -> Outcome {
        let code = u16::try_from(head.status).unwrap_or(500);
        let sent = async {
            self.send.respond(head, body.is_empty())?;
            if !body.is_empty() {
                self.send
                    .write_all(&body)
                    .await
                    .map_err(TunnelError::from)?;
                self.send.shutdown().await.map_err(TunnelError::from)?;
            }
            Ok::<(), TunnelError>(())
        }
        .await;
        match sent {
            Ok(()) => Outcome::Done { status: code },
            Err(error) => Outcome::Cancelled {
                status: None,
                error,
            },
        }
    }

    /// Answers with a Kubernetes `Status`.
    pub async fn answer_status(
        &mut self,
        code: u16,
        reason: &str,
        message: &str,
        tunnel_error: Option<&str>,
    ) -> Outcome {
        let (head, body) = status_answer(code, reason, message, tunnel_error);
        self.answer(head, body).await
    }

    /// The answer for an exchange that passed kas's deadline before the response head.
    pub async fn answer_timeout(&mut self) -> Outcome {
        self.answer_status(
            504,
            "Timeout",
            "the request's deadline passed before the upstream answered",
            Some("timeout"),
        )
        .await
    }
}

/// The result of [`Exchange::guard`].
pub enum Guarded<T> {
    Done(T),
    Cancelled(TunnelError),
    TimedOut,
}

/// Sends `request` with `service` and waits for the response head, unless kas abandons the stream
/// or the deadline passes; `Err`: the exchange already ended (answered with a `Status`, or
/// cancelled), with this outcome.
pub async fn send_upstream(
    service: &HttpService,
    request: Request<RequestBody>,
    ex: &mut Exchange,
) -> Result<Response<Incoming>, Outcome> {
    let response = match ex.guard(service.clone().oneshot(request)).await {
        Guarded::Done(Ok(r)) => r,
        Guarded::Done(Err(e)) => {
            let (kind, message) = classify(e.as_ref());
            tracing::debug!(kind, %message, "upstream request failed");
            let reason = if kind == "upstream" {
                "InternalError"
            } else {
                "ServiceUnavailable"
            };
            return Err(ex
                .answer_status(
                    502,
                    reason,
                    &format!("agentk cannot reach the upstream: {message}"),
                    Some(kind),
                )
                .await);
        }
        Guarded::Cancelled(error) => {
            return Err(Outcome::Cancelled {
                status: None,
                error,
            });
        }
        Guarded::TimedOut => return Err(ex.answer_timeout().await),
    };
    Ok(response)
}

/// Answers the upstream's `response` on the exchange: its head, then its body as it arrives.
pub async fn relay(response: Response<Incoming>, ex: &mut Exchange) -> Outcome {
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let end = body.is_end_stream();
    if let Err(error) = ex
        .send
        .respond(response_head(parts.status, &parts.headers), end)
    {
        return Outcome::Cancelled {
            status: Some(status),
            error,
        };
    }
    if end {
        return Outcome::Done { status };
    }
    // Bounded by the upstream body: every iteration consumes one frame or ends the exchange.
    loop {
        let frame = match ex.guard(body.frame()).await {
            Guarded::Done(f) => f,
            Guarded::Cancelled(error) => {
                return Outcome::Cancelled {
                    status: Some(status),
                    error,
                };
            }
            Guarded::TimedOut => {
                let reason = "the request's deadline passed".to_owned();
                let _ = ex.send.send_trailer(Trailer {
                    code: status::DEADLINE_EXCEEDED,
                    message: reason.clone(),
                    headers: Vec::new(),
                });
                return Outcome::Truncated { status, reason };
            }
        };
        match frame {
            None => {
                return match ex.send.shutdown().await {
                    Ok(()) => Outcome::Done { status },
                    Err(e) => Outcome::Cancelled {
                        status: Some(status),
                        error: TunnelError::from(e),
                    },
                };
            }
            Some(Ok(frame)) => {
                // Trailers of the upstream response are not forwarded (HTTP/1.1 APIs send none).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                // Zero-copy: the upstream's buffer is framed as it is.
                if let Err(error) = ex.send.write_chunk(data).await {
                    return Outcome::Cancelled {
                        status: Some(status),
                        error,
                    };
                }
            }
            Some(Err(e)) => {
                let reason = format!("the upstream response body failed: {e}");
                let _ = ex.send.send_trailer(Trailer {
                    code: status::UNAVAILABLE,
                    message: reason.clone(),
                    headers: Vec::new(),
                });
                return Outcome::Truncated { status, reason };
            }
        }
    }
}
