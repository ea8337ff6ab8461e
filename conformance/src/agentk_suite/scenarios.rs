//! The agentk scenarios. Each starts its own agent process (see [`Session`]) and checks protocol rules
//! on what the agent sends; the section of PROTOCOL.md each checks is in its doc comment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Frame, StreamId};
use protocol::{ErrorCode, PROTOCOL_VERSION, Settings, proto};
use sha2::{Digest, Sha256};

use super::{CONNECT, KasConn, Session, Shared, after, kas_settings};
use crate::apiserver::{ApiEvent, pattern};
use crate::vectors::generate::{header, raw};
use crate::wire::{SendCredit, summary};

type Scenario = fn(&Shared) -> Result<(), String>;

/// Every scenario, in the order they run.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("handshake-accepted", handshake_accepted),
    (
        "handshake-refused-retry-after",
        handshake_refused_retry_after,
    ),
    ("backoff-after-refusal", backoff_after_refusal),
    ("version-negotiated", version_negotiated),
    ("version-accept-out-of-range", version_accept_out_of_range),
    ("version-reject-handled", version_reject_handled),
    (
        "stream-limit-respected-by-agent",
        stream_limit_respected_by_agent,
    ),
    (
        "stream-limit-enforced-by-agent",
        stream_limit_enforced_by_agent,
    ),
    (
        "flow-control-windows-respected",
        flow_control_windows_respected,
    ),
    ("flow-control-request-body", flow_control_request_body),
    ("ping-answered", ping_answered),
    ("goaway-then-reconnect", goaway_then_reconnect),
    ("reset-stream", reset_stream),
    (
        "reset-cancels-upstream-request",
        reset_cancels_upstream_request,
    ),
    ("unknown-service-refused", unknown_service_refused),
    ("config-commit-resumed", config_commit_resumed),
    ("gitops-set-reported", gitops_set_reported),
    ("k8s-api-uses-own-credentials", k8s_api_uses_own_credentials),
    (
        "k8s-api-applies-kas-impersonation",
        k8s_api_applies_kas_impersonation,
    ),
    ("upgrade-101-then-duplex", upgrade_101_then_duplex),
    (
        "upgrade-refused-is-a-response",
        upgrade_refused_is_a_response,
    ),
    (
        "upgrade-half-close-from-upstream",
        upgrade_half_close_from_upstream,
    ),
    ("upgrade-reset-mid-session", upgrade_reset_mid_session),
    ("unknown-frame-types-ignored", unknown_frame_types_ignored),
    ("malformed-data-on-stream-0", |s| {
        malformed(s, "malformed-data-on-stream-0")
    }),
    ("malformed-frame-too-large", |s| {
        malformed(s, "malformed-frame-too-large")
    }),
    ("malformed-reserved-bit", |s| {
        malformed(s, "malformed-reserved-bit")
    }),
    ("malformed-undefined-flag", |s| {
        malformed(s, "malformed-undefined-flag")
    }),
    ("malformed-ping-length", |s| {
        malformed(s, "malformed-ping-length")
    }),
    ("malformed-window-update-zero", |s| {
        malformed(s, "malformed-window-update-zero")
    }),
    ("malformed-undecodable-payload", |s| {
        malformed(s, "malformed-undecodable-payload")
    }),
    ("malformed-request-wrong-parity", |s| {
        malformed(s, "malformed-request-wrong-parity")
    }),
    ("malformed-data-on-idle-stream", |s| {
        malformed(s, "malformed-data-on-idle-stream")
    }),
    ("malformed-hello-after-handshake", |s| {
        malformed(s, "malformed-hello-after-handshake")
    }),
];

/// How long the agent has to answer something simple.
const ANSWER: Duration = Duration::from_secs(20);

fn k8s(method: &str, path: &str) -> proto::RequestHead {
    proto::RequestHead {
        service: protocol::service::K8S_API.into(),
        method: method.into(),
        path: path.into(),
        headers: vec![proto::Header {
            name: "accept".into(),
            value: Bytes::from_static(b"application/json"),
        }],
        timeout_ms: 0,
        impersonation: None,
    }
}

fn io(e: std::io::Error) -> String {
    format!("write failed: {e}")
}

/// Connects and accepts with the default kas settings.
fn established(s: &mut Session<'_>) -> Result<KasConn, String> {
    let mut c = s.accept(CONNECT)?;
    c.check_hello(s.shared)?;
    c.accept(kas_settings())?;
    Ok(c)
}

/// §3, §7.1, §7.4: the preface, then HELLO with a version range containing 1, the token of the token
/// file and the k8s-api capability; nothing more before ACCEPT; after ACCEPT the connection serves a
/// k8s-api request.
fn handshake_accepted(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "handshake-accepted")?;
    let mut c = s.accept(CONNECT)?;
    c.check_hello(sh)?;
    if c.peer.tls().alpn().as_deref() != Some(tunnel_tls::ALPN_PROTOCOL) {
        eprintln!("  note: the agent did not negotiate ALPN agent-tunnel/1 (SHOULD, §2)");
    }
    if let Some(f) = c
        .peer
        .recv(after(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?
    {
        return Err(format!(
            "sent {} after HELLO before ACCEPT (§7.1: nothing until ACCEPT or REJECT)",
            summary(&f)
        ));
    }
    c.accept(kas_settings())?;
    let id = c.open(k8s("GET", "/version"), true)?;
    c.until_done(&[id], after(ANSWER))?;
    c.answered(id)?;
    Ok(())
}

/// Refuses every attempt; returns the instants of the attempts (TCP accepted) until `window` after the
/// first refusal, checking each HELLO's token and that nothing follows a REJECT.
fn refuse_attempts(
    s: &mut Session<'_>,
    code: proto::RejectCode,
    retry_after_ms: u32,
    window: Duration,
) -> Result<(Vec<Instant>, Vec<Duration>), String> {
    let mut c = s.accept(CONNECT)?;
    c.check_hello(s.shared)?;
    let mut attempts = vec![c.tcp_at];
    let mut gaps = Vec::new();
    c.reject(code, retry_after_ms, (1, 1))?;
    let mut refused_at = Instant::now();
    let end = refused_at + window;
    let closed = c.peer.wait_eof(after(Duration::from_secs(10)))?;
    if let Some(f) = closed.first() {
        return Err(format!("sent {} after REJECT", summary(f)));
    }
    // Bounded: one iteration per connection, until `end`.
    while let Some(mut c) = s.try_accept(end)? {
        gaps.push(c.tcp_at.saturating_duration_since(refused_at));
        attempts.push(c.tcp_at);
        c.check_hello(s.shared)?;
        c.reject(code, retry_after_ms, (1, 1))?;
        refused_at = Instant::now();
        let closed = c.peer.wait_eof(after(Duration::from_secs(10)))?;
        if let Some(f) = closed.first() {
            return Err(format!("sent {} after REJECT", summary(f)));
        }
        if attempts.len() > 200 {
            break;
        }
    }
    Ok((attempts, gaps))
}

/// The gaps in milliseconds (the first 20).
fn ms(gaps: &[Duration]) -> String {
    let v: Vec<String> = gaps
        .iter()
        .take(20)
        .map(|g| g.as_millis().to_string())
        .collect();
    let more = if gaps.len() > 20 { ", ..." } else { "" };
    format!("[{}{more}] ms", v.join(", "))
}

/// §7.4: REJECT UNAUTHENTICATED with retry_after_ms 1000 — the agent closes, reconnects, and never
/// sooner than 1 s after a refusal (every attempt in an 8 s window is refused and timed).
fn handshake_refused_retry_after(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "handshake-refused-retry-after")?;
    let (attempts, gaps) = refuse_attempts(
        &mut s,
        proto::RejectCode::Unauthenticated,
        1000,
        Duration::from_secs(8),
    )?;
    if let Some(g) = gaps.iter().find(|g| **g < Duration::from_millis(1000)) {
        return Err(format!(
            "reconnected {} ms after a REJECT with retry_after_ms 1000 (gaps {})",
            g.as_millis(),
            ms(&gaps)
        ));
    }
    if attempts.len() < 2 {
        return Err("no reconnection within 8 s of a refusal with retry_after_ms 1000".into());
    }
    eprintln!("  note: reconnection gaps {}", ms(&gaps));
    s.not_crashed()
}

/// §7.4 (retry_after_ms 0: the agent's own back-off): refused over and over, the agent keeps trying
/// but backs off: at least 2 and at most 10 attempts in 12 s (a fixed 1 s retry would make 12, a
/// tight loop hundreds).
fn backoff_after_refusal(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "backoff-after-refusal")?;
    let (attempts, gaps) = refuse_attempts(
        &mut s,
        proto::RejectCode::Unavailable,
        0,
        Duration::from_secs(12),
    )?;
    eprintln!("  note: back-off gaps {}", ms(&gaps));
    if attempts.len() < 2 {
        return Err("the agent did not retry within 12 s of a refusal".into());
    }
    if attempts.len() > 10 {
        return Err(format!(
            "{} attempts within 12 s: no back-off (gaps {})",
            attempts.len(),
            ms(&gaps)
        ));
    }
    s.not_crashed()
}

/// §7.2: ACCEPT with version 1 from the agent's range; the connection then works (PING answered).
fn version_negotiated(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "version-negotiated")?;
    let mut c = s.accept(CONNECT)?;
    c.check_hello(sh)?;
    c.accept_version(kas_settings(), PROTOCOL_VERSION)?;
    c.ping(*b"version1", ANSWER)
}

/// §7.2: an ACCEPT whose version lies outside the agent's range is a connection error PROTOCOL_ERROR.
fn version_accept_out_of_range(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "version-accept-out-of-range")?;
    let mut c = s.accept(CONNECT)?;
    let version = c.hello.max_version.saturating_add(1);
    c.accept_version(kas_settings(), version)?;
    c.expect_goaway_and_close(ErrorCode::Protocol, ANSWER)
}

/// §7.2, §7.4: REJECT VERSION_UNSUPPORTED (server range 99..=99): the agent closes and does not
/// crash (it may retry or exit cleanly).
fn version_reject_handled(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "version-reject-handled")?;
    let mut c = s.accept(CONNECT)?;
    c.reject(proto::RejectCode::VersionUnsupported, 0, (99, 99))?;
    let after_reject = c.peer.wait_eof(after(ANSWER))?;
    if let Some(f) = after_reject.first() {
        return Err(format!("sent {} after REJECT", summary(f)));
    }
    // Either a new attempt or a clean exit (or simply staying alive) is fine; a crash is not.
    let _ = s.try_accept(after(Duration::from_secs(3)))?;
    s.not_crashed()
}

/// §9.6: kas announces max_concurrent_streams 1; the agent never has more than one stream open
/// towards kas (its streams are held open, never answered, for 4 s).
fn stream_limit_respected_by_agent(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "stream-limit-respected-by-agent")?;
    let mut c = s.accept(CONNECT)?;
    c.check_hello(sh)?;
    c.agent_streams.hold = true;
    let settings = Settings {
        max_concurrent_streams: 1,
        ..kas_settings()
    };
    c.accept(settings)?;
    c.idle(Duration::from_secs(4))?;
    let a = &c.agent_streams;
    if a.max_open > 1 {
        return Err(format!(
            "the agent had {} streams open at once; kas allowed 1",
            a.max_open
        ));
    }
    eprintln!(
        "  note: the agent opened {} stream(s) towards kas",
        a.opened
    );
    c.ping(*b"limit-ok", ANSWER)
}

/// §9.6: two concurrent k8s-api requests are both answered (or the second refused if the agent
/// allows one stream); with every allowed stream held open, one more is refused with RESET
/// REFUSED_STREAM.
fn stream_limit_enforced_by_agent(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "stream-limit-enforced-by-agent")?;
    let mut c = established(&mut s)?;
    let n = c.agent_settings.max_concurrent_streams;
    // Two at once.
    let a = c.open(k8s("GET", "/version"), true)?;
    let b = c.open(k8s("GET", "/version"), true)?;
    c.until_done(&[a, b], after(ANSWER))?;
    c.answered(a)?;
    if n >= 2 {
        c.answered(b)?;
    } else if c.exchanges.get(&b.0).and_then(|e| e.reset) != Some(ErrorCode::RefusedStream) {
        return Err("the agent allows 1 stream but did not refuse a second concurrent one".into());
    }
    if n > 4096 {
        eprintln!("  note: the agent allows {n} concurrent streams; not filling them");
        return Ok(());
    }
    // Fill every allowed stream with requests the API server holds (never answers).
    let hang = k8s("GET", "/conformance/hang");
    let before = sh.api.requests_to("/conformance/hang").len();
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = c.open_later();
        ids.push(id);
        frames.push(Frame::Request {
            stream: id,
            head: hang.clone(),
            end_stream: true,
        });
    }
    for chunk in frames.chunks(256) {
        c.peer.send_all(chunk).map_err(io)?;
    }
    // Wait until the agent forwarded them all (or stopped making progress for 5 s).
    let end = after(Duration::from_secs(60));
    let (mut seen, mut progress_at) = (0, Instant::now());
    // Bounded by `end`.
    while seen < n as usize
        && Instant::now() < end
        && progress_at.elapsed() < Duration::from_secs(5)
    {
        c.next(after(Duration::from_millis(100)))?;
        let now_seen = sh.api.requests_to("/conformance/hang").len() - before;
        if now_seen > seen {
            seen = now_seen;
            progress_at = Instant::now();
        }
    }
    c.idle(Duration::from_millis(300))?;
    let still_open = ids
        .iter()
        .filter(|id| c.exchanges.get(&id.0).is_some_and(|e| !e.done))
        .count();
    eprintln!(
        "  note: {still_open} of the agent's {n} allowed streams held open ({seen} reached the API server); opening one more"
    );
    let head = k8s("GET", "/version");
    let extra = c.open(head, true)?;
    c.until_done(&[extra], after(ANSWER))?;
    let ex = &c.exchanges[&extra.0];
    if still_open as u32 >= n {
        if ex.reset != Some(ErrorCode::RefusedStream) {
            return Err(format!(
                "stream {extra} exceeds the agent's max_concurrent_streams {n} but was {}",
                match ex.reset {
                    Some(code) => format!("reset with {code}"),
                    None => format!("answered with status {:?}", ex.status),
                }
            ));
        }
    } else if ex.reset == Some(ErrorCode::RefusedStream) {
        return Err(format!(
            "stream {extra} was refused although only {still_open} of {n} streams were open"
        ));
    }
    Ok(())
}

/// §10: kas announces a 10,000-octet stream window and a 25,000-octet connection window and asks
/// for three 100,000-octet bodies: the agent never sends DATA beyond the credit granted, nor frames
/// above max_frame_size, and completes all three as credit is returned.
fn flow_control_windows_respected(sh: &Shared) -> Result<(), String> {
    const SIZE: usize = 100_000;
    let mut s = Session::start(sh, "flow-control-windows-respected")?;
    let mut c = s.accept(CONNECT)?;
    c.check_hello(sh)?;
    let settings = Settings {
        initial_stream_window: 10_000,
        initial_connection_window: 25_000,
        ..kas_settings()
    };
    c.accept(settings)?;
    c.release = false;
    let path = format!("/conformance/large?bytes={SIZE}");
    let ids = [
        c.open(k8s("GET", &path), true)?,
        c.open(k8s("GET", &path), true)?,
        c.open(k8s("GET", &path), true)?,
    ];
    // Phase 1: no credit returned; wait until the agent used the connection window, or sent
    // something and then nothing for 1 s (or all three ended).
    let phase1 = after(Duration::from_secs(30));
    let mut last_data: Option<Instant> = None;
    let received =
        |c: &KasConn| -> usize { ids.iter().map(|id| c.exchanges[&id.0].body.len()).sum() };
    // Bounded by `phase1`.
    while Instant::now() < phase1
        && received(&c) < 25_000
        && !ids.iter().all(|id| c.exchanges[&id.0].done)
        && last_data.is_none_or(|t| t.elapsed() < Duration::from_secs(1))
    {
        if let Some(Frame::Data { .. }) = c.next(after(Duration::from_millis(200)))? {
            last_data = Some(Instant::now());
        }
    }
    c.idle(Duration::from_millis(300))?;
    c.peer.check_flow()?;
    for id in ids {
        if let Some(status) = c.exchanges[&id.0].status
            && status != 200
        {
            return Err(format!(
                "the agent answered {status} for its API server's /conformance/large ({}); is the \
                 kubeconfig used?",
                c.exchanges[&id.0].body_text()
            ));
        }
    }
    let sent: usize = ids.iter().map(|id| c.exchanges[&id.0].body.len()).sum();
    if sent == 0 {
        return Err("no DATA at all within the initial windows".into());
    }
    // Phase 2: return credit as we "consume", in 3,000-octet steps.
    let mut released: BTreeMap<u32, usize> = BTreeMap::new();
    let mut conn_released = 0usize;
    let end = after(Duration::from_secs(60));
    // Bounded by `end`.
    while !ids.iter().all(|id| c.exchanges[&id.0].done) {
        let mut updates = Vec::new();
        for id in ids {
            let ex = &c.exchanges[&id.0];
            let r = released.entry(id.0).or_default();
            let step = (ex.body.len() - *r).min(3_000);
            if step > 0 {
                *r += step;
                conn_released += step;
                let inc = u32::try_from(step).unwrap_or(u32::MAX);
                updates.push(Frame::WindowUpdate {
                    stream: StreamId(0),
                    increment: inc,
                });
                if !ex.done {
                    updates.push(Frame::WindowUpdate {
                        stream: id,
                        increment: inc,
                    });
                }
            }
        }
        if !updates.is_empty() {
            c.peer.send_all(&updates).map_err(io)?;
        }
        if Instant::now() > end {
            return Err(format!(
                "bodies incomplete after 60 s: {:?} octets (credit returned: {conn_released})",
                ids.iter()
                    .map(|id| c.exchanges[&id.0].body.len())
                    .collect::<Vec<_>>()
            ));
        }
        c.next(after(Duration::from_millis(100)))?;
        c.peer.check_flow()?;
    }
    for id in ids {
        let ex = c.answered(id)?;
        if ex.status != Some(200) {
            return Err(format!("stream {id}: status {:?}", ex.status));
        }
        if ex.body.len() != SIZE || ex.body.iter().enumerate().any(|(i, b)| *b != pattern(i)) {
            return Err(format!(
                "stream {id}: body of {} octets differs from the API server's",
                ex.body.len()
            ));
        }
    }
    c.peer.check_flow()
}

/// §10: kas sends a request body larger than the agent's stream window, respecting the agent's
/// windows; the agent returns credit as it consumes (no deadlock), its WINDOW_UPDATEs never take a
/// window above 2^31-1, and the whole body reaches the API server.
fn flow_control_request_body(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "flow-control-request-body")?;
    let mut c = established(&mut s)?;
    let theirs = c.agent_settings;
    let size = (theirs.initial_stream_window as usize)
        .saturating_mul(2)
        .saturating_add(12_345)
        .min(8 * 1024 * 1024);
    let body: Vec<u8> = (0..size).map(|i| pattern(i * 7)).collect();
    let digest = hex::encode(Sha256::digest(&body));
    let mut head = k8s("POST", "/conformance/echo");
    head.headers.push(proto::Header {
        name: "content-type".into(),
        value: Bytes::from_static(b"application/octet-stream"),
    });
    let id = c.open(head, false)?;
    let mut credit = SendCredit::new(&theirs);
    credit.open(id);
    let mut sent = 0;
    let end = after(Duration::from_secs(60));
    // Bounded by `end`: each round sends or waits for a frame.
    while sent < size {
        let n = credit.available(id).min(size - sent);
        if n == 0 {
            if Instant::now() > end {
                return Err(format!(
                    "stuck after {sent} of {size} octets: the agent returned no credit"
                ));
            }
            if let Some(f) = c.next(after(Duration::from_millis(200)))? {
                credit.on_frame(&f);
                if let Frame::Reset { stream, reset } = &f
                    && *stream == id
                {
                    return Err(format!(
                        "the agent reset the upload with {}",
                        ErrorCode::from_u32(reset.code)
                    ));
                }
            }
            continue;
        }
        let chunk = Bytes::copy_from_slice(&body[sent..sent + n]);
        sent += n;
        credit.consume(id, n);
        c.peer
            .send(&Frame::Data {
                stream: id,
                data: chunk,
                end_stream: sent == size,
            })
            .map_err(io)?;
    }
    // Bounded by the deadline.
    while !c.exchanges[&id.0].done {
        match c.next(after(ANSWER))? {
            Some(f) => credit.on_frame(&f),
            None => return Err("no complete response to the upload".into()),
        }
    }
    if let Some(o) = credit.overflows.first() {
        return Err(o.clone());
    }
    let ex = c.answered(id)?;
    let v: serde_json::Value = serde_json::from_slice(&ex.body)
        .map_err(|_| format!("status {:?}, body {:?}", ex.status, ex.body_text()))?;
    if v["bytes"] != serde_json::json!(size) || v["sha256"] != serde_json::json!(digest) {
        return Err(format!(
            "the API server received {} octets (sha256 {}), kas sent {size} ({digest})",
            v["bytes"], v["sha256"]
        ));
    }
    Ok(())
}

/// §11: a PING is answered with a PING ACK carrying the same 8 octets.
fn ping_answered(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "ping-answered")?;
    let mut c = established(&mut s)?;
    c.ping(*b"conf\x00\xffpn", ANSWER)?;
    c.ping(*b"twice!!!", ANSWER)
}

/// §12: after GOAWAY NO_ERROR the agent answers with its own GOAWAY, finishes the in-flight stream
/// on the old connection, opens a new connection and completes its handshake while the old one
/// drains, and closes the old one once drained; the new connection serves requests.
fn goaway_then_reconnect(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "goaway-then-reconnect")?;
    let mut old = established(&mut s)?;
    // Let the connection live a while (an agent may treat an instant GOAWAY as a failure).
    old.idle(Duration::from_secs(2))?;
    let slow = old.open(k8s("GET", "/conformance/slow?ms=5000"), true)?;
    old.idle(Duration::from_millis(300))?;
    let last = old.agent_streams.highest;
    old.peer
        .send(&Frame::GoAway(proto::GoAway {
            last_stream_id: last,
            code: 0,
            message: "conformance: going away".into(),
        }))
        .map_err(io)?;
    let goaway_at = Instant::now();
    let end = after(Duration::from_secs(30));
    let mut agent_goaway = false;
    let mut new: Option<KasConn> = None;
    let mut old_closed_at: Option<Instant> = None;
    let mut slow_done_at: Option<Instant> = None;
    // Bounded by `end`: each round polls both connections briefly.
    while Instant::now() < end && (old_closed_at.is_none() || new.is_none()) {
        if new.is_none()
            && let Some(mut c) = s.try_accept(after(Duration::from_millis(50)))?
        {
            c.check_hello(sh)?;
            c.accept(kas_settings())?;
            if old_closed_at.is_some() {
                return Err(
                    "the agent connected again only after the old connection closed".into(),
                );
            }
            new = Some(c);
        }
        if old_closed_at.is_none() {
            match old.peer.recv(after(Duration::from_millis(50))) {
                Ok(Some(f)) => {
                    match &f {
                        Frame::GoAway(g) if g.code == 0 => agent_goaway = true,
                        Frame::GoAway(g) => {
                            return Err(format!(
                                "the agent answered with GOAWAY {}",
                                ErrorCode::from_u32(g.code)
                            ));
                        }
                        Frame::Request { stream, .. } if stream.0 > last => {
                            // Opened before it saw our GOAWAY: refused, as §12 says.
                            old.peer
                                .send(&Frame::Reset {
                                    stream: *stream,
                                    reset: proto::Reset {
                                        code: ErrorCode::RefusedStream.to_u32(),
                                        message: "after GOAWAY".into(),
                                    },
                                })
                                .map_err(io)?;
                        }
                        Frame::Data {
                            stream, end_stream, ..
                        } if *stream == slow && *end_stream => {
                            slow_done_at = Some(Instant::now());
                        }
                        Frame::Trailer { stream, .. } if *stream == slow => {
                            slow_done_at = Some(Instant::now());
                        }
                        Frame::Reset { stream, reset } if *stream == slow => {
                            return Err(format!(
                                "the in-flight stream was reset with {} after GOAWAY",
                                ErrorCode::from_u32(reset.code)
                            ));
                        }
                        _ => {}
                    }
                    if let Frame::Data { data, .. } = &f
                        && !data.is_empty()
                    {
                        // Best effort: a drained connection may already be closed, and then needs
                        // no credit (a failed write here is not the agent's fault).
                        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        let _ = old.peer.send(&Frame::WindowUpdate {
                            stream: StreamId(0),
                            increment: n,
                        });
                    }
                }
                Ok(None) => {}
                Err(crate::wire::WireError::Eof) => old_closed_at = Some(Instant::now()),
                Err(e) => return Err(format!("old connection: {e}")),
            }
        }
    }
    let Some(mut new) = new else {
        return Err(format!(
            "no new connection within {:?} of GOAWAY",
            goaway_at.elapsed()
        ));
    };
    if !agent_goaway {
        return Err("the agent did not answer GOAWAY with its own GOAWAY (§12 step 3)".into());
    }
    if slow_done_at.is_none() {
        return Err("the in-flight stream did not finish on the old connection".into());
    }
    if old_closed_at.is_none() {
        return Err("the old connection was not closed after it drained (§12 step 5)".into());
    }
    let id = new.open(k8s("GET", "/version"), true)?;
    new.until_done(&[id], after(ANSWER))?;
    new.answered(id)?;
    Ok(())
}

/// Opens a k8s-api request that the API server holds, and waits until the agent forwarded it.
fn open_hanging(sh: &Shared, c: &mut KasConn) -> Result<StreamId, String> {
    let before = sh.api.requests_to("/conformance/hang").len();
    let id = c.open(k8s("GET", "/conformance/hang"), true)?;
    let end = after(ANSWER);
    // Bounded by `end`.
    while sh.api.requests_to("/conformance/hang").len() == before {
        if Instant::now() > end {
            return Err(
                "the agent did not forward the k8s-api request to the API server of its \
                        kubeconfig"
                    .into(),
            );
        }
        c.next(after(Duration::from_millis(50)))?;
    }
    Ok(id)
}

/// §9.4: after RESET CANCEL the agent sends nothing more on the stream (frames already in flight
/// excepted: anything after a PING fence is a violation) and the connection stays usable.
fn reset_stream(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "reset-stream")?;
    let mut c = established(&mut s)?;
    let id = open_hanging(sh, &mut c)?;
    c.peer
        .send(&Frame::Reset {
            stream: id,
            reset: proto::Reset {
                code: ErrorCode::Cancel.to_u32(),
                message: "conformance: cancelled".into(),
            },
        })
        .map_err(io)?;
    c.exchanges.remove(&id.0);
    c.peer
        .send(&Frame::Ping {
            ack: false,
            payload: *b"fence-01",
        })
        .map_err(io)?;
    let fence = after(ANSWER);
    // Bounded by `fence`.
    loop {
        match c.next(fence)? {
            Some(Frame::Ping { ack: true, payload }) if payload == *b"fence-01" => break,
            Some(_) => {}
            None => return Err("no PING ACK after the RESET".into()),
        }
    }
    let second = c.open(k8s("GET", "/version"), true)?;
    let end = after(Duration::from_secs(2));
    let mut late = None;
    // Bounded: until the second stream is answered and 2 s have passed (or the answer deadline).
    let answer_by = after(ANSWER);
    while Instant::now() < end || !c.exchanges[&second.0].done {
        if Instant::now() > answer_by {
            return Err("the connection no longer answers after the RESET".into());
        }
        if let Some(f) = c.next(after(Duration::from_millis(100)))?
            && f.stream() == id
            && late.is_none()
        {
            late = Some(summary(&f));
        }
    }
    if let Some(f) = late {
        return Err(format!(
            "sent {f} on the reset stream after the RESET was processed"
        ));
    }
    c.answered(second)?;
    Ok(())
}

/// protocol/SERVICES.md §2.5, §3 (k8s-api): when kas resets a stream with CANCEL, agentk drops
/// the upstream request (the API server sees the request's connection close).
fn reset_cancels_upstream_request(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "reset-cancels-upstream-request")?;
    let mut c = established(&mut s)?;
    let before = sh.api.hang_cancellations();
    let id = open_hanging(sh, &mut c)?;
    c.peer
        .send(&Frame::Reset {
            stream: id,
            reset: proto::Reset {
                code: ErrorCode::Cancel.to_u32(),
                message: "conformance: cancelled".into(),
            },
        })
        .map_err(io)?;
    let end = after(ANSWER);
    // Bounded by `end`.
    while sh.api.hang_cancellations() == before {
        if Instant::now() > end {
            return Err("the upstream request was not cancelled within 20 s of the RESET".into());
        }
        c.next(after(Duration::from_millis(100)))?;
    }
    Ok(())
}

/// §9.4: a REQUEST for a service the agent does not serve is answered with RESET UNKNOWN_SERVICE or
/// an error RESPONSE (4xx/5xx), and the connection continues.
fn unknown_service_refused(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "unknown-service-refused")?;
    let mut c = established(&mut s)?;
    let head = proto::RequestHead {
        service: "conformance.invalid".into(),
        method: "GET".into(),
        path: "/".into(),
        ..Default::default()
    };
    let id = c.open(head, true)?;
    c.until_done(&[id], after(ANSWER))?;
    let ex = &c.exchanges[&id.0];
    match (ex.reset, ex.status) {
        (Some(ErrorCode::UnknownService), _) => {}
        (None, Some(status)) if status >= 400 => {}
        (reset, status) => {
            return Err(format!(
                "unknown service answered with reset {reset:?}, status {status:?}"
            ));
        }
    }
    c.ping(*b"still-up", ANSWER)
}

/// protocol/SERVICES.md §2.2, §3 (k8s-api): the agent forwards with its own credentials (the
/// kubeconfig's token), never with the Authorization header received through the tunnel, and
/// passes the API server's response back.
fn k8s_api_uses_own_credentials(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "k8s-api-uses-own-credentials")?;
    let mut c = established(&mut s)?;
    let mut head = k8s("GET", "/version?conformance=credentials");
    head.headers.push(proto::Header {
        name: "authorization".into(),
        value: Bytes::from_static(b"Bearer credentials-from-the-tunnel"),
    });
    let id = c.open(head, true)?;
    c.until_done(&[id], after(ANSWER))?;
    let ex = c.answered(id)?;
    if ex.status != Some(200) || !ex.body_text().contains("v1.33.0-conformance") {
        return Err(format!(
            "expected the API server's 200 /version answer, got {:?} {:?}",
            ex.status,
            ex.body_text()
        ));
    }
    let seen = sh.api.requests_to("/version?conformance=credentials");
    let want = format!("Bearer {}", sh.upstream_token);
    match seen.last() {
        Some(ApiEvent::Request { authorization, .. })
            if authorization.as_deref() == Some(&want) =>
        {
            Ok(())
        }
        Some(ApiEvent::Request { authorization, .. }) => Err(format!(
            "the API server saw authorization {:?}, not the kubeconfig's token",
            authorization
                .as_deref()
                .map(|a| a.chars().take(40).collect::<String>())
        )),
        _ => Err("the request did not reach the API server".into()),
    }
}

/// protocol/SERVICES.md §3 (identity), PROTOCOL.md §9.4 (`impersonation`): the agent sends exactly
/// the impersonation of the request head as `Impersonate-*` headers (user, groups in order, each
/// extra value under its escaped key), never a client's `Impersonate-*` header from the tunnel; a
/// head without `impersonation` reaches the API server with no `Impersonate-*` header at all.
fn k8s_api_applies_kas_impersonation(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "k8s-api-applies-kas-impersonation")?;
    let mut c = established(&mut s)?;
    let hostile = |head: &mut proto::RequestHead| {
        for (name, value) in [
            ("Impersonate-User", "system:admin"),
            ("impersonate-group", "system:masters"),
            ("Impersonate-Extra-Scopes", "everything"),
        ] {
            head.headers.push(proto::Header {
                name: name.into(),
                value: Bytes::from(value),
            });
        }
    };
    let mut decided = k8s("GET", "/version?conformance=impersonation");
    hostile(&mut decided);
    decided.impersonation = Some(proto::Impersonation {
        user: "gitlab:ci_job:42".into(),
        uid: String::new(),
        groups: vec!["gitlab:ci_job".into(), "gitlab:project:5".into()],
        extra: vec![proto::ImpersonationExtra {
            key: "agent.gitlab.com/ci_job_id".into(),
            values: vec!["42".into()],
        }],
    });
    let mut plain = k8s("GET", "/version?conformance=no-impersonation");
    hostile(&mut plain);
    let want: &[(&str, &str)] = &[
        ("impersonate-user", "gitlab:ci_job:42"),
        ("impersonate-group", "gitlab:ci_job"),
        ("impersonate-group", "gitlab:project:5"),
        ("impersonate-extra-agent.gitlab.com%2fci_job_id", "42"),
    ];
    for (head, want) in [(decided, want), (plain, &[][..])] {
        let target = head.path.clone();
        let id = c.open(head, true)?;
        c.until_done(&[id], after(ANSWER))?;
        let ex = c.answered(id)?;
        if ex.status != Some(200) {
            return Err(format!("{target}: expected 200, got {:?}", ex.status));
        }
        let seen = sh.api.requests_to(&target);
        let Some(ApiEvent::Request { impersonation, .. }) = seen.last() else {
            return Err(format!(
                "{target}: the request did not reach the API server"
            ));
        };
        let got: Vec<(String, String)> = impersonation
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        if got != want {
            return Err(format!(
                "{target}: the API server saw impersonation {got:?}, expected exactly {want:?}"
            ));
        }
    }
    Ok(())
}

/// §16: frames of unknown types are ignored after the handshake, on stream 0 and on idle streams,
/// whatever their flags; the connection continues.
fn unknown_frame_types_ignored(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "unknown-frame-types-ignored")?;
    let mut c = established(&mut s)?;
    let mut octets = raw(0x0B, 0, 0, b"extension");
    octets.extend(raw(0xFF, 0xFF, 99, b""));
    octets.extend(raw(0x42, 0x01, 2, &[0u8; 100]));
    c.peer.send_raw(&octets).map_err(io)?;
    c.ping(*b"ignored!", ANSWER)?;
    let id = c.open(k8s("GET", "/version"), true)?;
    c.until_done(&[id], after(ANSWER))?;
    c.answered(id)?;
    Ok(())
}

/// §13: malformed input is a connection error: GOAWAY with the right code, then the agent closes.
fn malformed(sh: &Shared, name: &'static str) -> Result<(), String> {
    let mut s = Session::start(sh, name)?;
    let mut c = established(&mut s)?;
    // Let the agent settle (streams it opens after the handshake are refused by `idle`).
    c.idle(Duration::from_millis(300))?;
    let max_frame = c.agent_settings.max_frame_size;
    let data_t = 0x0;
    let (octets, code): (Vec<u8>, ErrorCode) = match name {
        "malformed-data-on-stream-0" => (raw(data_t, 0, 0, b"x"), ErrorCode::Protocol),
        "malformed-frame-too-large" => {
            let mut o = header(data_t, 0, 2, max_frame + 1);
            o.extend(vec![0u8; max_frame as usize + 1]);
            (o, ErrorCode::FrameSize)
        }
        "malformed-reserved-bit" => (raw(data_t, 0, 0x8000_0002, b"x"), ErrorCode::Protocol),
        "malformed-undefined-flag" => (raw(0x4, 0x1, 2, b""), ErrorCode::Protocol),
        "malformed-ping-length" => (raw(0x6, 0, 0, &[0u8; 7]), ErrorCode::FrameSize),
        "malformed-window-update-zero" => {
            (raw(0x5, 0, 0, &0u32.to_be_bytes()), ErrorCode::FlowControl)
        }
        "malformed-undecodable-payload" => (
            raw(0x1, 0, 2, &[0x0a, 0x05, b'a', b'b']),
            ErrorCode::Protocol,
        ),
        "malformed-request-wrong-parity" => {
            let f = Frame::Request {
                stream: StreamId(1),
                head: k8s("GET", "/version"),
                end_stream: true,
            };
            (f.to_bytes().to_vec(), ErrorCode::Protocol)
        }
        "malformed-data-on-idle-stream" => (raw(data_t, 0, 8, b"x"), ErrorCode::Protocol),
        "malformed-hello-after-handshake" => {
            let f = Frame::Hello(proto::Hello {
                min_version: 1,
                max_version: 1,
                ..Default::default()
            });
            (f.to_bytes().to_vec(), ErrorCode::Protocol)
        }
        other => return Err(format!("no such malformed scenario {other}")),
    };
    // The agent may close before it has read everything (oversized frames): ignore write errors.
    let _ = c.peer.send_raw(&octets);
    c.expect_goaway_and_close(code, ANSWER)?;
    s.not_crashed()
}

/// The scripted kas's configuration for [`config_commit_resumed`].
fn scripted_config() -> Result<agent_config::ConfigUpdate, String> {
    let file = agent_config::ConfigFile::parse("observability:\n  logging:\n    level: debug\n")
        .map_err(|e| e.to_string())?;
    let project = agent_config::ProjectId::new("conformance/config").map_err(|e| e.to_string())?;
    Ok(agent_config::ConfigUpdate::new(
        &"c0f1".repeat(10),
        &file,
        &project,
    ))
}

/// Waits on `c` for the agent's `config` stream (other streams the agent opens are refused with
/// `UNKNOWN_SERVICE`; PINGs are answered); returns its id and head.
fn await_config_stream(c: &mut KasConn) -> Result<(StreamId, proto::RequestHead), String> {
    await_agent_stream(c, protocol::service::CONFIG)
}

/// Waits on `c` for a stream of `service` opened by the agent (others are refused with
/// `UNKNOWN_SERVICE`; PINGs are answered); returns its id and head.
fn await_agent_stream(
    c: &mut KasConn,
    service: &str,
) -> Result<(StreamId, proto::RequestHead), String> {
    let end = after(Duration::from_secs(15));
    // Bounded by `end`.
    while Instant::now() < end {
        let Some(f) = c.peer.recv(end).map_err(|e| e.to_string())? else {
            break;
        };
        match f {
            Frame::Request { stream, head, .. } if stream.0 % 2 == 1 && head.service == service => {
                return Ok((stream, head));
            }
            other => answer_routine(c, other)?,
        }
    }
    Err(format!(
        "the agent opened no {service} stream within 15 s of ACCEPT"
    ))
}

/// What the scripted kas does with a frame a scenario does not look at: an agent stream is refused
/// with `UNKNOWN_SERVICE`, a PING answered, anything else ignored.
fn answer_routine(c: &mut KasConn, f: Frame) -> Result<(), String> {
    match f {
        Frame::Request { stream, .. } if stream.0 % 2 == 1 => c
            .peer
            .send(&Frame::Reset {
                stream,
                reset: proto::Reset {
                    code: ErrorCode::UnknownService.to_u32(),
                    message: "not this one".into(),
                },
            })
            .map_err(io),
        Frame::Ping {
            ack: false,
            payload,
        } => c.peer.send(&Frame::Ping { ack: true, payload }).map_err(io),
        _ => Ok(()),
    }
}

/// Answers the agent's `config` stream 200 and sends `update` on it.
fn send_config(
    c: &mut KasConn,
    stream: StreamId,
    update: &agent_config::ConfigUpdate,
) -> Result<(), String> {
    c.peer
        .send_all(&[
            Frame::Response {
                stream,
                head: proto::ResponseHead {
                    status: 200,
                    headers: vec![],
                },
                end_stream: false,
            },
            Frame::Data {
                stream,
                data: Bytes::from(update.encode_frame()),
                end_stream: false,
            },
        ])
        .map_err(io)
}

fn header_value(head: &proto::RequestHead, name: &str) -> Option<String> {
    head.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .filter(|v| !v.is_empty())
}

/// SERVICES.md §8: after the handshake the agent opens a `config` stream (`WATCH /`) naming no
/// commit; kas answers 200 and sends a configuration; the agent's next connection opens its
/// `config` stream naming that commit (`x-config-commit`) and, if it sends one, its fingerprint, so
/// kas need not send it again.
fn config_commit_resumed(sh: &Shared) -> Result<(), String> {
    let update = scripted_config()?;
    let mut s = Session::start(sh, "config-commit-resumed")?;
    let mut c = established(&mut s)?;
    let (stream, head) = await_config_stream(&mut c)?;
    if head.method != protocol::service::CONFIG_METHOD || head.path != "/" {
        return Err(format!(
            "config stream opened with {} {}, expected WATCH /",
            head.method, head.path
        ));
    }
    if let Some(commit) = header_value(&head, protocol::service::CONFIG_COMMIT_HEADER) {
        return Err(format!(
            "a fresh agent named commit {commit:?} on its first config stream"
        ));
    }
    send_config(&mut c, stream, &update)?;
    // Time to apply it; then the connection goes away without notice.
    c.idle(Duration::from_secs(1))?;
    s.not_crashed()?;
    drop(c);
    let mut c = s.accept(Duration::from_secs(30))?;
    c.check_hello(sh)?;
    c.accept(kas_settings())?;
    let (_, head) = await_config_stream(&mut c)?;
    let commit = header_value(&head, protocol::service::CONFIG_COMMIT_HEADER);
    if commit.as_deref() != Some(update.commit.as_str()) {
        return Err(format!(
            "after reconnecting the agent named commit {commit:?}, expected {:?}",
            update.commit
        ));
    }
    if let Some(f) = header_value(&head, protocol::service::CONFIG_FINGERPRINT_HEADER)
        && f != update.fingerprint.0
    {
        return Err(format!(
            "the agent named fingerprint {f:?}, expected {:?}",
            update.fingerprint.0
        ));
    }
    s.not_crashed()
}

/// The manifest project and the commit [`gitops_set_reported`] uses.
const GITOPS_PROJECT: &str = "conformance/manifests";

/// The scripted kas's configuration for [`gitops_set_reported`]: one manifest project.
fn scripted_gitops_config() -> Result<agent_config::ConfigUpdate, String> {
    let file = agent_config::ConfigFile::parse(&format!(
        "gitops:\n  manifest_projects:\n  - id: {GITOPS_PROJECT}\n"
    ))
    .map_err(|e| e.to_string())?;
    let project = agent_config::ProjectId::new("conformance/config").map_err(|e| e.to_string())?;
    Ok(agent_config::ConfigUpdate::new(
        &"c0f2".repeat(10),
        &file,
        &project,
    ))
}

/// The set [`gitops_set_reported`] sends: one ConfigMap at commit `9a17…`.
fn scripted_gitops_set() -> Result<gitops::DesiredSet, String> {
    let yaml =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conformance-gitops\ndata:\n  k: v\n";
    gitops::manifest::parse(
        [("manifests/cm.yaml", &yaml[..])],
        "default",
        &gitops::WellKnownScopes,
        &gitops::manifest::ManifestLimits::default(),
    )
    .into_desired("9a17".repeat(10))
    .map_err(|e| format!("the scripted set does not parse: {e:?}"))
}

/// Receives on `c` until the agent sends, on its stream `stream`, a `Report` whose `commit` is
/// `commit` (other agent streams are refused, PINGs answered); returns the reported status.
fn await_gitops_report(
    c: &mut KasConn,
    stream: StreamId,
    commit: &str,
    within: Duration,
) -> Result<gitops::ProjectStatus<u64>, String> {
    use gitops::wire::{AgentMessage, decode_report};
    use prost::Message as _;
    let end = after(within);
    let mut decoder = protocol::cache::MessageDecoder::default();
    let mut reports = Vec::new();
    // Bounded by `end`.
    while Instant::now() < end {
        let Some(f) = c.peer.recv(end).map_err(|e| e.to_string())? else {
            break;
        };
        match f {
            Frame::Data {
                stream: s, data, ..
            } if s == stream => {
                decoder.push(&data);
                // Bounded by the buffered octets.
                while let Some(bytes) = decoder
                    .next_message()
                    .map_err(|e| format!("the agent's gitops message: {e}"))?
                {
                    let m = AgentMessage::decode(bytes.as_ref())
                        .map_err(|e| format!("the agent's gitops message does not decode: {e}"))?;
                    let Some(status) = decode_report(&m)? else {
                        continue;
                    };
                    if status.commit.as_deref() == Some(commit) {
                        return Ok(status);
                    }
                    reports.push(status.commit);
                }
            }
            Frame::Reset { stream: s, reset } if s == stream => {
                return Err(format!(
                    "the agent reset its gitops stream ({:?}: {})",
                    ErrorCode::from_u32(reset.code),
                    reset.message
                ));
            }
            other => answer_routine(c, other)?,
        }
    }
    Err(format!(
        "the agent reported no status naming commit {commit} within {within:?} (reports named {reports:?})"
    ))
}

/// SERVICES.md §9 (agentk's side), for an agent announcing the `gitops` capability (others pass
/// with a note): once the scripted kas's configuration names a manifest project, the agent opens a
/// `gitops` stream (`WATCH /`, `gitops-project` the project's id, no `gitops-commit` when it has no
/// set); the scripted kas sends a one-object set (Begin, Objects, End); the agent answers with a
/// `Report` whose `commit` is the set's (applying fails against the suite's fake API server, which
/// the report may say; the suite checks only that the set was taken); on its next connection the
/// agent's `gitops` stream names that commit in `gitops-commit`, so kas need not resend it.
fn gitops_set_reported(sh: &Shared) -> Result<(), String> {
    use gitops::wire::{self, PROJECT_HEADER};
    let update = scripted_gitops_config()?;
    let set = scripted_gitops_set()?;
    let project = update
        .config
        .gitops
        .manifest_projects
        .first()
        .and_then(|p| p.id.as_ref())
        .map(|p| p.as_str().to_string())
        .ok_or("the scripted configuration has no manifest project id")?;
    let mut s = Session::start(sh, "gitops-set-reported")?;
    let mut c = established(&mut s)?;
    let caps = c
        .hello
        .meta
        .as_ref()
        .map(|m| m.capabilities.clone())
        .unwrap_or_default();
    if !caps.iter().any(|c| c == protocol::service::GITOPS) {
        eprintln!("  note: the agent does not announce the gitops capability; nothing to check");
        return s.not_crashed();
    }
    let (stream, _) = await_config_stream(&mut c)?;
    send_config(&mut c, stream, &update)?;
    let (stream, head) = await_agent_stream(&mut c, protocol::service::GITOPS)?;
    if head.method != wire::METHOD || head.path != "/" {
        return Err(format!(
            "gitops stream opened with {} {}, expected WATCH /",
            head.method, head.path
        ));
    }
    let named = header_value(&head, PROJECT_HEADER);
    if named.as_deref() != Some(project.as_str()) {
        return Err(format!(
            "the gitops stream names project {named:?}, expected {project:?} (the configuration's id)"
        ));
    }
    if let Some(commit) = header_value(&head, wire::COMMIT_HEADER) {
        return Err(format!(
            "a fresh agent named commit {commit:?} on its first gitops stream"
        ));
    }
    let mut frames = vec![Frame::Response {
        stream,
        head: proto::ResponseHead {
            status: 200,
            headers: vec![],
        },
        end_stream: false,
    }];
    for m in wire::encode_set(&set, wire::MAX_CHUNK_BYTES)? {
        frames.push(Frame::Data {
            stream,
            data: protocol::cache::encode_message(&m),
            end_stream: false,
        });
    }
    c.peer.send_all(&frames).map_err(io)?;
    await_gitops_report(&mut c, stream, &set.commit, Duration::from_secs(20))?;
    s.not_crashed()?;
    // The connection goes away without notice.
    drop(c);
    let mut c = s.accept(Duration::from_secs(30))?;
    c.check_hello(sh)?;
    c.accept(kas_settings())?;
    let (_, head) = await_agent_stream(&mut c, protocol::service::GITOPS)?;
    let commit = header_value(&head, wire::COMMIT_HEADER);
    if commit.as_deref() != Some(set.commit.as_str()) {
        return Err(format!(
            "after reconnecting the agent's gitops stream named commit {commit:?}, expected {:?}",
            set.commit
        ));
    }
    s.not_crashed()
}

/// A `k8s-api` upgrade request for `/conformance/upgrade` in `mode` (SERVICES.md §3.1).
fn upgrade_head(mode: &str) -> proto::RequestHead {
    let mut head = k8s("GET", &format!("/conformance/upgrade?mode={mode}"));
    head.headers.push(proto::Header {
        name: "upgrade".into(),
        value: Bytes::from_static(crate::apiserver::UPGRADE_PROTOCOL.as_bytes()),
    });
    head
}

/// Sends `data` on our stream `id`, with END_STREAM if `fin`.
fn send_data(c: &mut KasConn, id: StreamId, data: &'static [u8], fin: bool) -> Result<(), String> {
    c.peer
        .send(&Frame::Data {
            stream: id,
            data: Bytes::from_static(data),
            end_stream: fin,
        })
        .map_err(io)
}

/// Receives until `what` holds for the exchange of `id` (or the deadline).
fn until(
    c: &mut KasConn,
    id: StreamId,
    what: &str,
    ok: impl Fn(&super::Exchange) -> bool,
) -> Result<(), String> {
    let end = after(ANSWER);
    // Bounded by `end`.
    while !ok(&c.exchanges[&id.0]) {
        let ex = &c.exchanges[&id.0];
        if let Some(code) = ex.reset {
            return Err(format!("{what}: the agent reset the stream with {code}"));
        }
        if c.next(end)?.is_none() {
            let ex = &c.exchanges[&id.0];
            return Err(format!(
                "{what}: not within {ANSWER:?} (status {:?}, body {:?}, done {})",
                ex.status,
                ex.body_text(),
                ex.done
            ));
        }
    }
    Ok(())
}

/// Waits for the API server to report `n` upgraded sessions ended.
fn upgrades_ended(sh: &Shared, c: &mut KasConn, n: usize) -> Result<(Vec<u8>, bool), String> {
    let end = after(ANSWER);
    // Bounded by `end`.
    loop {
        let ended = sh.api.upgrades_ended();
        if ended.len() >= n {
            return Ok(ended[n - 1].clone());
        }
        if Instant::now() > end {
            return Err("the API server's upgraded connection did not end".into());
        }
        c.next(after(Duration::from_millis(50)))?;
    }
}

/// protocol/SERVICES.md §3.1: an upgrade request reaches the API server as an HTTP/1.1 upgrade; its
/// `101` comes back as the response head (with its `Upgrade` header, no END_STREAM), then the stream
/// carries raw bytes both ways; kas's END_STREAM half-closes the upstream connection (the API server
/// still answers after it), and the upstream's end becomes the agent's END_STREAM, without a RESET.
fn upgrade_101_then_duplex(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "upgrade-101-then-duplex")?;
    let mut c = established(&mut s)?;
    let before = sh.api.upgrades_ended().len();
    let id = c.open(upgrade_head("echo"), false)?;
    until(&mut c, id, "the 101", |ex| ex.status.is_some())?;
    let ex = &c.exchanges[&id.0];
    if ex.status != Some(101) {
        return Err(format!(
            "expected 101 Switching Protocols, got {:?} {:?}",
            ex.status,
            ex.body_text()
        ));
    }
    if ex.done {
        return Err("the 101 ended the agent's direction (END_STREAM)".into());
    }
    let upgrade = ex
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned());
    if !upgrade
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(crate::apiserver::UPGRADE_PROTOCOL))
    {
        return Err(format!("the 101 carries Upgrade {upgrade:?}"));
    }
    send_data(&mut c, id, b"ping", false)?;
    until(&mut c, id, "the echo of ping", |ex| {
        ex.body.ends_with(b"ping")
    })?;
    send_data(&mut c, id, b"pong", true)?;
    until(
        &mut c,
        id,
        "the agent's END_STREAM after the upstream's bye",
        |ex| ex.done,
    )?;
    let ex = &c.exchanges[&id.0];
    if ex.reset.is_some() || ex.body != b"pingpongbye" {
        return Err(format!(
            "expected pingpongbye then END_STREAM, got {:?} (reset {:?})",
            ex.body_text(),
            ex.reset
        ));
    }
    let (received, clean) = upgrades_ended(sh, &mut c, before + 1)?;
    if received != b"pingpong" || !clean {
        return Err(format!(
            "the API server received {:?} (clean end: {clean})",
            String::from_utf8_lossy(&received)
        ));
    }
    c.ping(*b"upgraded", ANSWER)
}

/// protocol/SERVICES.md §3.1: a refused upgrade (not `101`) is an ordinary response: status, body,
/// END_STREAM, no RESET.
fn upgrade_refused_is_a_response(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "upgrade-refused-is-a-response")?;
    let mut c = established(&mut s)?;
    let id = c.open(upgrade_head("refuse"), false)?;
    until(&mut c, id, "the refusal", |ex| ex.done)?;
    let ex = c.answered(id)?;
    if ex.status != Some(403) || !ex.body_text().contains("upgrade refused") {
        return Err(format!(
            "expected the API server's 403, got {:?} {:?}",
            ex.status,
            ex.body_text()
        ));
    }
    Ok(())
}

/// protocol/SERVICES.md §3.1: the upstream half-closing after the `101` ends the agent's direction
/// with END_STREAM, while kas's direction stays open: what kas sends afterwards still reaches the
/// API server, and kas's END_STREAM ends it cleanly.
fn upgrade_half_close_from_upstream(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "upgrade-half-close-from-upstream")?;
    let mut c = established(&mut s)?;
    let before = sh.api.upgrades_ended().len();
    let id = c.open(upgrade_head("server-first"), false)?;
    until(&mut c, id, "hello and END_STREAM", |ex| ex.done)?;
    let ex = c.answered(id)?;
    if ex.status != Some(101) || ex.body != b"hello" {
        return Err(format!(
            "expected 101, hello, END_STREAM; got {:?} {:?}",
            ex.status,
            ex.body_text()
        ));
    }
    send_data(&mut c, id, b"after-half-close", true)?;
    let (received, clean) = upgrades_ended(sh, &mut c, before + 1)?;
    if received != b"after-half-close" || !clean {
        return Err(format!(
            "after the upstream's half-close the API server received {:?} (clean end: {clean})",
            String::from_utf8_lossy(&received)
        ));
    }
    if let Some(code) = c.exchanges[&id.0].reset {
        return Err(format!(
            "the agent reset the half-closed session with {code}"
        ));
    }
    c.ping(*b"halfdone", ANSWER)
}

/// protocol/SERVICES.md §3.1: a RESET from kas mid-session makes the agent drop the upstream
/// connection at once; the connection stays usable.
fn upgrade_reset_mid_session(sh: &Shared) -> Result<(), String> {
    let mut s = Session::start(sh, "upgrade-reset-mid-session")?;
    let mut c = established(&mut s)?;
    let before = sh.api.upgrades_ended().len();
    let id = c.open(upgrade_head("hold"), false)?;
    until(&mut c, id, "the 101", |ex| ex.status.is_some())?;
    if c.exchanges[&id.0].status != Some(101) {
        return Err(format!("expected 101, got {:?}", c.exchanges[&id.0].status));
    }
    send_data(&mut c, id, b"mid", false)?;
    c.peer
        .send(&Frame::Reset {
            stream: id,
            reset: proto::Reset {
                code: ErrorCode::Cancel.to_u32(),
                message: "conformance: session cancelled".into(),
            },
        })
        .map_err(io)?;
    c.exchanges.remove(&id.0);
    upgrades_ended(sh, &mut c, before + 1)?;
    c.ping(*b"reset-up", ANSWER)
}
