//! `GET /api/v1/events` (every agent) and `GET /api/v1/agents/{id}/events` (one agent): the event hub
//! ([`crate::events`]) as Server-Sent Events.
//!
//! ```text
//! retry: 2000
//! : connected
//!
//! id: 41
//! event: object
//! data: {"agent_id":1,"group":"","version":"v1","kind":"Pod","namespace":"default","name":"web-1","uid":"…","resource_version":"812","type":"Added"}
//!
//! id: 42
//! event: view
//! data: {"agent_id":1,"view":"pods_by_phase","changes":[{"key":{"namespace":"default","phase":"Running"},"values":{"count":4}}]}
//!
//! id: 43
//! event: agent
//! data: {"agent_id":2,"connected":false}
//!
//! id: 44
//! event: gitops
//! data: {"agent_id":1,"project":"group/manifests","type":"report","phase":"synced","commit":"1b2c3d4…","synced_commit":"1b2c3d4…","objects":3,"failed":0}
//!
//! : heartbeat
//! ```
//!
//! A comment line (`: heartbeat`) every [`HEARTBEAT`] keeps proxies from closing an idle stream.
//! Events are not replayed (`Last-Event-ID` is ignored): a client that reconnects re-reads the views.
//! A subscriber too slow to keep up with its bounded queue is dropped: its stream ends with
//! `: dropped: too slow` and the client reconnects (EventSource does so by itself after `retry`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::StreamExt as _;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};

use crate::events::{EventHub, Owner, Published, Scope, SubscribeError, Subscription};

use super::response::{ApiError, BodyError, ResponseBody};

/// How often an idle event stream gets a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The opening of every event stream: the reconnect delay for EventSource, and a comment so the
/// client sees the stream is live at once.
const PREAMBLE: &[u8] = b"retry: 2000\n: connected\n\n";

/// One event in the SSE wire format (`data` is a single JSON line, so one `data:` field).
pub fn format_event(p: &Published) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        p.id, p.kind, p.data
    ))
}

enum Step {
    Preamble,
    Live,
    Done,
}

struct SseState {
    sub: Subscription,
    heartbeat: smol::Timer,
    step: Step,
}

enum Next {
    Event(Option<Arc<Published>>),
    Heartbeat,
}

/// The response body of an event stream over `sub`, with a heartbeat every `heartbeat`.
pub fn sse_body(sub: Subscription, heartbeat: Duration) -> ResponseBody {
    let state = SseState {
        sub,
        heartbeat: smol::Timer::interval(heartbeat),
        step: Step::Preamble,
    };
    let frames = futures_lite::stream::unfold(state, |mut s| async move {
        match s.step {
            Step::Done => None,
            Step::Preamble => {
                s.step = Step::Live;
                Some((Ok(Frame::data(Bytes::from_static(PREAMBLE))), s))
            }
            Step::Live => {
                let next =
                    futures_lite::future::or(async { Next::Event(s.sub.recv().await) }, async {
                        s.heartbeat.next().await;
                        Next::Heartbeat
                    })
                    .await;
                let bytes = match next {
                    Next::Event(Some(p)) => format_event(&p),
                    Next::Heartbeat => Bytes::from_static(b": heartbeat\n\n"),
                    Next::Event(None) if s.sub.was_dropped() => {
                        s.step = Step::Done;
                        Bytes::from_static(b": dropped: too slow\n\n")
                    }
                    Next::Event(None) => return None,
                };
                Some((Ok::<_, BodyError>(Frame::data(bytes)), s))
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Subscribes `owner` to `scope` and answers with the event stream; 429 when the owner's address or
/// user holds as many streams as it may, 503 when the hub takes no more subscribers or kas is
/// shutting down.
pub fn stream(
    hub: &EventHub,
    scope: Scope,
    owner: Owner,
) -> Result<Response<ResponseBody>, ApiError> {
    let sub = hub.subscribe(scope, owner).map_err(|e: SubscribeError| {
        let status = match e {
            SubscribeError::TooManyFromSource(_) | SubscribeError::TooManyForUser(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            SubscribeError::TooMany(_) | SubscribeError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    })?;
    let mut resp = Response::new(sse_body(sub, HEARTBEAT));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::Event;

    async fn next_frame(body: &mut ResponseBody) -> Option<String> {
        let frame = body.frame().await?.ok()?;
        let data = frame.into_data().ok()?;
        Some(String::from_utf8(data.to_vec()).unwrap())
    }

    #[test]
    fn events_and_heartbeats_in_sse_format() {
        smol::block_on(async {
            let hub = EventHub::new(8, 4);
            let sub = hub.subscribe(Scope::Agent(2), "t").unwrap();
            let mut body = sse_body(sub, Duration::from_millis(50));
            assert_eq!(
                next_frame(&mut body).await.unwrap(),
                "retry: 2000\n: connected\n\n"
            );
            hub.publish(&Event::Agent {
                agent_id: 1,
                connected: true,
            });
            hub.publish(&Event::Agent {
                agent_id: 2,
                connected: true,
            });
            assert_eq!(
                next_frame(&mut body).await.unwrap(),
                "id: 2\nevent: agent\ndata: {\"agent_id\":2,\"connected\":true}\n\n"
            );
            // Nothing else is published: a heartbeat comes next.
            assert_eq!(next_frame(&mut body).await.unwrap(), ": heartbeat\n\n");
            hub.close();
            // Bounded: heartbeats may come before the end is seen.
            let mut ended = false;
            for _ in 0..10 {
                match next_frame(&mut body).await {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(f) => assert_eq!(f, ": heartbeat\n\n"),
                }
            }
            assert!(ended, "the stream ends when the hub closes");
        });
    }

    #[test]
    fn a_dropped_subscriber_is_told_why_its_stream_ends() {
        smol::block_on(async {
            let hub = EventHub::new(1, 4);
            let sub = hub.subscribe(Scope::All, "slow").unwrap();
            let mut body = sse_body(sub, Duration::from_secs(3600));
            for agent_id in 1..=3 {
                hub.publish(&Event::Agent {
                    agent_id,
                    connected: true,
                });
            }
            let mut frames = Vec::new();
            for _ in 0..10 {
                match next_frame(&mut body).await {
                    Some(f) => frames.push(f),
                    None => break,
                }
            }
            assert_eq!(frames.len(), 3, "{frames:?}");
            assert!(frames[1].starts_with("id: 1\n"));
            assert_eq!(frames[2], ": dropped: too slow\n\n");
        });
    }
}
