//! The kas scenarios. Each uses its own agent id (see [`super::AGENTS`]) so they do not interfere;
//! the section of PROTOCOL.md (or the API contract) each checks is in its doc comment.

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Frame, StreamId};
use protocol::{ErrorCode, Settings, proto};
use sha2::{Digest, Sha256};

use super::{
    ANSWER, AgentConn, PENDING_DEADLINE, Shared, after, api_request, connect, dial,
    expect_goaway_and_close, handshake, hello, join,
};
use crate::http;
use crate::vectors::generate::{header, raw};
use crate::wire::summary;

type Scenario = fn(&Shared) -> Result<(), String>;

/// Every scenario, in the order they run.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("handshake-accepted", handshake_accepted),
    ("handshake-refused-bad-token", handshake_refused_bad_token),
    ("handshake-bad-preface", handshake_bad_preface),
    ("handshake-frame-before-hello", handshake_frame_before_hello),
    ("version-negotiated", version_negotiated),
    ("version-unsupported", version_unsupported),
    ("hello-settings-out-of-range", hello_settings_out_of_range),
    (
        "stream-limit-respected-by-kas",
        stream_limit_respected_by_kas,
    ),
    (
        "flow-control-windows-respected",
        flow_control_windows_respected,
    ),
    ("flow-control-large-response", flow_control_large_response),
    ("ping-answered", ping_answered),
    ("config-stream-answered", config_stream_answered),
    ("gitops-stream-answered", gitops_stream_answered),
    ("goaway-then-reconnect", goaway_then_reconnect),
    ("reset-on-client-disconnect", reset_on_client_disconnect),
    ("reset-by-agent", reset_by_agent),
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
    ("agent-never-connects-503", agent_never_connects_503),
    ("unknown-agent-404", unknown_agent_404),
    ("bad-user-token-401", bad_user_token_401),
    (
        "flood-pings-enhance-your-calm",
        super::abuse::flood_pings_enhance_your_calm,
    ),
    (
        "flood-rapid-reset-enhance-your-calm",
        super::abuse::flood_rapid_reset_enhance_your_calm,
    ),
    ("output-backpressure", super::abuse::output_backpressure),
];

fn io(e: std::io::Error) -> String {
    format!("write failed: {e}")
}

/// Checks a finished HTTP exchange.
fn expect_status(r: &http::Response, status: u16, what: &str) -> Result<(), String> {
    if r.status == status {
        Ok(())
    } else {
        Err(format!(
            "{what}: HTTP {} instead of {status} ({})",
            r.status,
            r.text().chars().take(200).collect::<String>()
        ))
    }
}

/// §7.1, §7.4, §15: a valid HELLO is accepted (version 1, the agent id of the agents file, valid
/// settings); an API request for the agent arrives as a k8s-api REQUEST on an even stream with the
/// Kubernetes path, without the user's credentials, and the agent's answer reaches the client.
fn handshake_accepted(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 1, Settings::default())?;
    if c.accept.version != 1 {
        return Err(format!("ACCEPT version {}", c.accept.version));
    }
    if c.accept.agent_id != 1 {
        return Err(format!(
            "ACCEPT agent_id {}, but agents.yaml gives this token id 1",
            c.accept.agent_id
        ));
    }
    if c.peer.tls().alpn().as_deref() != Some(tunnel_tls::ALPN_PROTOCOL) {
        eprintln!("  note: kas did not negotiate ALPN agent-tunnel/1 (SHOULD, §2)");
    }
    let client = api_request(
        sh,
        "GET",
        "/k8s-proxy/version?conformance=1",
        Some(sh.bearer(1)),
        None,
    );
    let id = c.wait_request(ANSWER)?;
    let s = c.streams[&id.0].clone();
    if id.0 % 2 != 0 {
        return Err(format!(
            "kas opened odd stream {id} (server streams are even)"
        ));
    }
    if s.head.service != "k8s-api"
        || s.head.method != "GET"
        || s.head.path != "/version?conformance=1"
    {
        return Err(format!(
            "REQUEST head {} {} {}, expected k8s-api GET /version?conformance=1",
            s.head.service, s.head.method, s.head.path
        ));
    }
    if s.head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("authorization"))
    {
        return Err("the user's Authorization header crossed the tunnel".into());
    }
    if !s.ended {
        return Err("a GET without body must carry END_STREAM on its REQUEST".into());
    }
    let body = br#"{"major":"1","minor":"33","gitVersion":"conformance"}"#;
    c.respond(id, 200, body)?;
    let r = join(client)?;
    expect_status(&r, 200, "GET /k8s-proxy/version")?;
    if r.body != body {
        return Err(format!("the client got {:?}", r.text()));
    }
    Ok(())
}

/// Expects REJECT with `code` and then the close, nothing else.
fn expect_reject(
    peer: &mut crate::wire::Peer,
    first: Frame,
    code: proto::RejectCode,
) -> Result<proto::Reject, String> {
    let Frame::Reject(r) = first else {
        return Err(format!("kas answered with {}, not REJECT", summary(&first)));
    };
    if r.code != code as i32 {
        return Err(format!(
            "REJECT code {}, expected {}",
            r.code,
            code.as_str_name()
        ));
    }
    let rest = peer.wait_eof(after(ANSWER))?;
    if let Some(f) = rest.first() {
        return Err(format!("kas sent {} after REJECT", summary(f)));
    }
    Ok(r)
}

/// §7.4: a token the agents file does not know is refused with REJECT UNAUTHENTICATED, then the
/// connection closes (no GOAWAY after REJECT).
fn handshake_refused_bad_token(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    let mut h = hello(sh, 1, (1, 1), &Settings::default());
    h.token = "not-a-known-token".into();
    let first = handshake(&mut peer, h)?;
    expect_reject(&mut peer, first, proto::RejectCode::Unauthenticated)?;
    Ok(())
}

/// §3: octets that are not the preface are a connection error PROTOCOL_ERROR (GOAWAY, close).
fn handshake_bad_preface(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    peer.send_raw(b"GET / HTTP/1.1\r\nHost: kas\r\n\r\n")
        .map_err(io)?;
    expect_goaway_and_close(&mut peer, ErrorCode::Protocol, ANSWER)
}

/// §7.6: a frame other than HELLO first is a connection error PROTOCOL_ERROR.
fn handshake_frame_before_hello(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    let mut octets = protocol::tunnel::frame::PREFACE.to_vec();
    octets.extend_from_slice(
        &Frame::Ping {
            ack: false,
            payload: [1; 8],
        }
        .to_bytes(),
    );
    let _ = peer.send_raw(&octets);
    expect_goaway_and_close(&mut peer, ErrorCode::Protocol, ANSWER)
}

/// §7.2: an agent speaking 1..=3 is accepted with the highest common version, 1.
fn version_negotiated(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    match handshake(&mut peer, hello(sh, 2, (1, 3), &Settings::default()))? {
        Frame::Accept(a) if a.version == 1 => Ok(()),
        Frame::Accept(a) => Err(format!(
            "ACCEPT version {} for an agent speaking 1..=3",
            a.version
        )),
        other => Err(format!("kas answered {}", summary(&other))),
    }
}

/// §7.2: an agent speaking only 2..=3 gets REJECT VERSION_UNSUPPORTED with kas's own range (which
/// does not reach 2) and retry_after_ms 0.
fn version_unsupported(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    let first = handshake(&mut peer, hello(sh, 2, (2, 3), &Settings::default()))?;
    let r = expect_reject(&mut peer, first, proto::RejectCode::VersionUnsupported)?;
    if r.min_version == 0 || r.min_version > r.max_version || r.max_version >= 2 {
        return Err(format!(
            "REJECT announces versions {}..={}",
            r.min_version, r.max_version
        ));
    }
    if r.retry_after_ms != 0 {
        return Err(format!(
            "REJECT retry_after_ms {}, must be 0",
            r.retry_after_ms
        ));
    }
    Ok(())
}

/// §7.3: HELLO settings out of range (max_frame_size 1000) are refused with REJECT BAD_HELLO.
fn hello_settings_out_of_range(sh: &Shared) -> Result<(), String> {
    let mut peer = dial(sh)?;
    let mut h = hello(sh, 2, (1, 1), &Settings::default());
    if let Some(s) = &mut h.settings {
        s.max_frame_size = 1000;
    }
    let first = handshake(&mut peer, h)?;
    expect_reject(&mut peer, first, proto::RejectCode::BadHello)?;
    Ok(())
}

/// §9.6: the agent announces max_concurrent_streams 1 and holds one k8s-api stream open; a second
/// concurrent API request must wait or fail cleanly (an HTTP error), never be opened as a second
/// stream; after the first finishes, the connection serves again.
fn stream_limit_respected_by_kas(sh: &Shared) -> Result<(), String> {
    let settings = Settings {
        max_concurrent_streams: 1,
        ..Settings::default()
    };
    let mut c = connect(sh, 3, settings)?;
    let first = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/pods?watch=true",
        Some(sh.bearer(3)),
        None,
    );
    let a = c.wait_request(ANSWER)?;
    c.respond_head(a, 200, false)?;
    c.send_body(a, b"{\"type\":\"ADDED\"}\n", false, ANSWER)?;
    let second = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/namespaces",
        Some(sh.bearer(3)),
        None,
    );
    let hold_until = after(PENDING_DEADLINE + Duration::from_secs(2));
    // Bounded by `hold_until`.
    while Instant::now() < hold_until {
        if let Some(Frame::Request { stream, .. }) = c.next(after(Duration::from_millis(100)))? {
            return Err(format!(
                "kas opened stream {stream} while stream {a} was open and the agent allows 1"
            ));
        }
    }
    c.send_body(a, b"", true, ANSWER)?;
    // The second request either failed cleanly meanwhile or is opened now.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(join(second));
    });
    let end = after(ANSWER + PENDING_DEADLINE);
    let second = loop {
        if let Ok(r) = rx.try_recv() {
            break r?;
        }
        if Instant::now() > end {
            return Err("the second request neither failed nor was served".into());
        }
        if let Some(Frame::Request {
            stream, end_stream, ..
        }) = c.next(after(Duration::from_millis(100)))?
        {
            if !end_stream {
                c.wait_ended(stream, ANSWER)?;
            }
            c.respond(stream, 200, b"{}")?;
        }
    };
    if second.status != 200 && !(second.status == 429 || second.status >= 500) {
        return Err(format!("the second request got HTTP {}", second.status));
    }
    let first = join(first)?;
    expect_status(&first, 200, "the first (held) request")?;
    if !first.text().contains("ADDED") {
        return Err(format!("the first request's body is {:?}", first.text()));
    }
    Ok(())
}

/// §10: the agent announces an 8,192-octet stream window and a 20,000-octet connection window; kas
/// forwards a 100,000-octet request body without ever exceeding the credit granted, nor the agent's
/// max_frame_size, and completes it as credit is returned.
fn flow_control_windows_respected(sh: &Shared) -> Result<(), String> {
    const SIZE: usize = 100_000;
    let settings = Settings {
        initial_stream_window: 8_192,
        initial_connection_window: 20_000,
        ..Settings::default()
    };
    let mut c = connect(sh, 4, settings)?;
    c.release = false;
    let body: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    let digest = hex::encode(Sha256::digest(&body));
    let client = api_request(
        sh,
        "POST",
        "/k8s-proxy/api/v1/namespaces/default/configmaps",
        Some(sh.bearer(4)),
        Some(body.clone()),
    );
    let id = c.wait_request(ANSWER)?;
    // Phase 1: no credit returned; wait until kas used the stream window, or sent something and
    // then nothing for 1 s.
    let phase1 = after(Duration::from_secs(30));
    let mut last_data: Option<Instant> = None;
    // Bounded by `phase1`.
    while Instant::now() < phase1
        && c.streams[&id.0].body.len() < 8_192
        && !c.streams[&id.0].ended
        && last_data.is_none_or(|t| t.elapsed() < Duration::from_secs(1))
    {
        if let Some(Frame::Data { .. }) = c.next(after(Duration::from_millis(200)))? {
            last_data = Some(Instant::now());
        }
    }
    // Anything beyond the window would arrive now.
    let settle = after(Duration::from_millis(300));
    while c.next(settle)?.is_some() {}
    c.peer.check_flow()?;
    if c.streams[&id.0].body.is_empty() {
        return Err("kas sent no DATA within the initial windows".into());
    }
    // Phase 2: return credit in 5,000-octet steps.
    let mut released = 0usize;
    let end = after(Duration::from_secs(60));
    // Bounded by `end`.
    while !c.streams[&id.0].ended {
        if let Some(code) = c.streams[&id.0].reset {
            return Err(format!("kas reset the stream with {code}"));
        }
        let got = c.streams[&id.0].body.len();
        let step = (got - released).min(5_000);
        if step > 0 {
            released += step;
            let inc = u32::try_from(step).unwrap_or(u32::MAX);
            c.peer
                .send_all(&[
                    Frame::WindowUpdate {
                        stream: StreamId(0),
                        increment: inc,
                    },
                    Frame::WindowUpdate {
                        stream: id,
                        increment: inc,
                    },
                ])
                .map_err(io)?;
        }
        if Instant::now() > end {
            return Err(format!(
                "the body is incomplete after 60 s: {got} of {SIZE} octets"
            ));
        }
        c.next(after(Duration::from_millis(100)))?;
        c.peer.check_flow()?;
    }
    let got = &c.streams[&id.0].body;
    if got.len() != SIZE || hex::encode(Sha256::digest(got)) != digest {
        return Err(format!(
            "the agent received {} octets that differ from the client's",
            got.len()
        ));
    }
    c.respond(id, 201, digest.as_bytes())?;
    let r = join(client)?;
    expect_status(&r, 201, "POST with a large body")?;
    if r.text() != digest {
        return Err(format!("the client got {:?}", r.text()));
    }
    c.peer.check_flow()
}

/// §10: the agent answers with a body larger than kas's windows, sending only within kas's credit;
/// kas returns credit as its client consumes it, its WINDOW_UPDATEs never take a window above
/// 2^31-1, and the client receives the whole body.
fn flow_control_large_response(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 5, Settings::default())?;
    let size = (c.kas_settings.initial_stream_window as usize)
        .saturating_mul(2)
        .saturating_add(777)
        .min(16 * 1024 * 1024);
    let body: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
    let client = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/pods",
        Some(sh.bearer(5)),
        None,
    );
    let id = c.wait_request(ANSWER)?;
    c.respond_head(id, 200, false)?;
    c.send_body(id, &body, true, Duration::from_secs(60))?;
    let r = join(client)?;
    expect_status(&r, 200, "a large response")?;
    if r.body != body {
        return Err(format!(
            "the client got {} octets instead of {size}",
            r.body.len()
        ));
    }
    Ok(())
}

/// §11: a PING is answered with a PING ACK carrying the same 8 octets.
fn ping_answered(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 6, Settings::default())?;
    c.ping(*b"kas\x00ping", ANSWER)?;
    c.ping(*b"\xff\xfe\xfd\xfcagai", ANSWER)
}

/// §12: the agent sends GOAWAY NO_ERROR naming its in-flight stream: kas answers with its own
/// GOAWAY, opens no more streams on that connection, lets the in-flight request complete, routes the
/// next request to the agent's new connection, and closes the old one once drained.
fn goaway_then_reconnect(sh: &Shared) -> Result<(), String> {
    let mut old = connect(sh, 7, Settings::default())?;
    let first = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/namespaces/first",
        Some(sh.bearer(7)),
        None,
    );
    let s1 = old.wait_request(ANSWER)?;
    old.peer
        .send(&Frame::GoAway(proto::GoAway {
            last_stream_id: s1.0,
            code: 0,
            message: "conformance agent restarting".into(),
        }))
        .map_err(io)?;
    let deadline = after(ANSWER);
    // Bounded by the deadline.
    loop {
        match old.next(deadline)? {
            Some(Frame::GoAway(g)) if g.code == 0 => break,
            Some(Frame::Request { stream, .. }) => {
                return Err(format!(
                    "kas opened stream {stream} after the agent's GOAWAY"
                ));
            }
            Some(_) => {}
            None => return Err("kas did not answer GOAWAY with its own (§12 step 3)".into()),
        }
    }
    let mut new = connect(sh, 7, Settings::default())?;
    let second = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/namespaces/second",
        Some(sh.bearer(7)),
        None,
    );
    let s2 = new.wait_request(ANSWER)?;
    if !new.streams[&s2.0].head.path.ends_with("/second") {
        return Err(format!(
            "unexpected request {}",
            new.streams[&s2.0].head.path
        ));
    }
    if let Some(f) = old.idle_for_request(Duration::from_millis(200))? {
        return Err(format!("kas opened {f} on the draining connection"));
    }
    new.respond(s2, 200, b"{\"which\":\"second\"}")?;
    old.respond(s1, 200, b"{\"which\":\"first\"}")?;
    let second = join(second)?;
    expect_status(&second, 200, "the request after GOAWAY")?;
    let first = join(first)?;
    expect_status(&first, 200, "the in-flight request")?;
    if !first.text().contains("first") || !second.text().contains("second") {
        return Err(format!(
            "bodies mixed up: {:?} / {:?}",
            first.text(),
            second.text()
        ));
    }
    // Both GOAWAYs sent, no stream left: kas closes the old connection (§12 step 5).
    let rest = old.peer.wait_eof(after(ANSWER))?;
    if let Some(f) = rest
        .iter()
        .find(|f| !matches!(f, Frame::WindowUpdate { .. } | Frame::Ping { .. }))
    {
        return Err(format!("kas sent {} on the drained connection", summary(f)));
    }
    new.ping(*b"new-conn", ANSWER)
}

impl AgentConn {
    /// Receives for `d`; returns the first REQUEST seen, if any.
    fn idle_for_request(&mut self, d: Duration) -> Result<Option<String>, String> {
        let deadline = after(d);
        // Bounded by the deadline.
        while let Some(f) = self.next(deadline)? {
            if let Frame::Request { .. } = f {
                return Ok(Some(summary(&f)));
            }
        }
        Ok(None)
    }
}

/// protocol/SERVICES.md §2.5: when the HTTP client goes away, kas resets the stream with CANCEL.
fn reset_on_client_disconnect(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 8, Settings::default())?;
    let (addr, bearer) = (sh.api_addr, sh.bearer(8));
    let (tx, rx) = mpsc::channel::<Result<u16, String>>();
    let client = std::thread::spawn(move || {
        let run = || -> Result<u16, String> {
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            http::write_request(
                &mut s,
                "GET",
                "/k8s-proxy/api/v1/pods?watch=true",
                &[("Authorization", bearer.as_str())],
                None,
            )
            .map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let (status, _) = http::read_response_head(&mut r).map_err(|e| e.to_string())?;
            let s = r.into_inner();
            let _ = s.shutdown(std::net::Shutdown::Both);
            Ok(status)
        };
        let _ = tx.send(run());
    });
    let id = c.wait_request(ANSWER)?;
    c.respond_head(id, 200, false)?;
    c.send_body(id, b"{\"type\":\"ADDED\"}\n", false, ANSWER)?;
    let status = rx
        .recv_timeout(ANSWER)
        .map_err(|_| "the client got no response head".to_string())??;
    let _ = client.join();
    if status != 200 {
        return Err(format!("the client got HTTP {status}"));
    }
    let end = after(ANSWER);
    // Bounded by `end`: keep the body flowing so kas notices the client is gone.
    loop {
        if let Some(code) = c.streams[&id.0].reset {
            if code != ErrorCode::Cancel {
                return Err(format!("kas reset the stream with {code}, expected CANCEL"));
            }
            return Ok(());
        }
        if Instant::now() > end {
            return Err("kas did not reset the stream within 20 s of the client leaving".into());
        }
        if c.credit.available(id) > 64 {
            c.peer
                .send(&Frame::Data {
                    stream: id,
                    data: Bytes::from_static(b"{\"type\":\"MODIFIED\"}\n"),
                    end_stream: false,
                })
                .map_err(io)?;
            c.credit.consume(id, 20);
        }
        c.next(after(Duration::from_millis(200)))?;
    }
}

/// §9.4: the agent resets a stream before answering: the client gets an error (5xx), kas sends
/// nothing more on the stream, and the connection serves the next request.
fn reset_by_agent(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 8, Settings::default())?;
    let client = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/nodes",
        Some(sh.bearer(8)),
        None,
    );
    let id = c.wait_request(ANSWER)?;
    c.peer
        .send(&Frame::Reset {
            stream: id,
            reset: proto::Reset {
                code: ErrorCode::Internal.to_u32(),
                message: "conformance agent failed".into(),
            },
        })
        .map_err(io)?;
    c.peer
        .send(&Frame::Ping {
            ack: false,
            payload: *b"fence-ks",
        })
        .map_err(io)?;
    let fence = after(ANSWER);
    // Bounded by `fence`.
    loop {
        match c.next(fence)? {
            Some(Frame::Ping { ack: true, payload }) if payload == *b"fence-ks" => break,
            Some(_) => {}
            None => return Err("no PING ACK after the RESET".into()),
        }
    }
    let fenced = c.log.len();
    let r = join(client)?;
    if r.status < 500 {
        return Err(format!(
            "the client got HTTP {} for a reset stream",
            r.status
        ));
    }
    let again = api_request(
        sh,
        "GET",
        "/k8s-proxy/api/v1/nodes",
        Some(sh.bearer(8)),
        None,
    );
    let id2 = c.wait_request(ANSWER)?;
    c.respond(id2, 200, b"{\"kind\":\"NodeList\"}")?;
    expect_status(&join(again)?, 200, "the request after the reset")?;
    if let Some((_, f)) = c.log[fenced..].iter().find(|(s, _)| *s == id.0) {
        return Err(format!("kas sent {f} on the stream the agent reset"));
    }
    Ok(())
}

/// §16: frames of unknown types are ignored after the handshake, on any stream.
fn unknown_frame_types_ignored(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 9, Settings::default())?;
    let mut octets = raw(0x0B, 0, 0, b"extension");
    octets.extend(raw(0xFF, 0xFF, 99, b""));
    octets.extend(raw(0x42, 0x01, 1, &[0u8; 100]));
    c.peer.send_raw(&octets).map_err(io)?;
    c.ping(*b"ignored!", ANSWER)
}

/// §13: malformed input from an agent is a connection error: GOAWAY with the right code, close.
fn malformed(sh: &Shared, name: &'static str) -> Result<(), String> {
    let mut c = connect(sh, 9, Settings::default())?;
    let max_frame = c.kas_settings.max_frame_size;
    let (octets, code): (Vec<u8>, ErrorCode) = match name {
        "malformed-data-on-stream-0" => (raw(0x0, 0, 0, b"x"), ErrorCode::Protocol),
        "malformed-frame-too-large" => {
            let mut o = header(0x0, 0, 1, max_frame + 1);
            o.extend(vec![0u8; max_frame as usize + 1]);
            (o, ErrorCode::FrameSize)
        }
        "malformed-reserved-bit" => (raw(0x0, 0, 0x8000_0001, b"x"), ErrorCode::Protocol),
        "malformed-undefined-flag" => (raw(0x4, 0x1, 1, b""), ErrorCode::Protocol),
        "malformed-ping-length" => (raw(0x6, 0, 0, &[0u8; 7]), ErrorCode::FrameSize),
        "malformed-window-update-zero" => {
            (raw(0x5, 0, 0, &0u32.to_be_bytes()), ErrorCode::FlowControl)
        }
        "malformed-undecodable-payload" => (
            raw(0x1, 0, 1, &[0x0a, 0x05, b'a', b'b']),
            ErrorCode::Protocol,
        ),
        "malformed-request-wrong-parity" => {
            let f = Frame::Request {
                stream: StreamId(2),
                head: proto::RequestHead {
                    service: "k8s-api".into(),
                    method: "GET".into(),
                    path: "/".into(),
                    ..Default::default()
                },
                end_stream: true,
            };
            (f.to_bytes().to_vec(), ErrorCode::Protocol)
        }
        "malformed-data-on-idle-stream" => (raw(0x0, 0, 5, b"x"), ErrorCode::Protocol),
        "malformed-hello-after-handshake" => {
            let f = Frame::Hello(hello(sh, 9, (1, 1), &Settings::default()));
            (f.to_bytes().to_vec(), ErrorCode::Protocol)
        }
        other => return Err(format!("no such malformed scenario {other}")),
    };
    let _ = c.peer.send_raw(&octets);
    expect_goaway_and_close(&mut c.peer, code, ANSWER)
}

/// API contract: a request for a known agent that never connects fails with 503 once the routing
/// deadline (2 s in kas.yaml) has passed, not before.
fn agent_never_connects_503(sh: &Shared) -> Result<(), String> {
    let started = Instant::now();
    let r = join(api_request(
        sh,
        "GET",
        "/k8s-proxy/version",
        Some(sh.bearer(10)),
        None,
    ))?;
    let took = started.elapsed();
    expect_status(&r, 503, "a request for an agent that is not connected")?;
    if took + Duration::from_millis(100) < PENDING_DEADLINE {
        return Err(format!(
            "503 after {} ms, before the {} ms routing deadline",
            took.as_millis(),
            PENDING_DEADLINE.as_millis()
        ));
    }
    Ok(())
}

/// API contract: an agent id not in the agents file is 404.
fn unknown_agent_404(sh: &Shared) -> Result<(), String> {
    let r = join(api_request(
        sh,
        "GET",
        "/k8s-proxy/version",
        Some(sh.bearer(999)),
        None,
    ))?;
    expect_status(&r, 404, "a request for agent 999")
}

/// API contract: a bad or missing user token is 401.
fn bad_user_token_401(sh: &Shared) -> Result<(), String> {
    let r = join(api_request(
        sh,
        "GET",
        "/k8s-proxy/version",
        Some("Bearer pat:1:not-the-user-token".into()),
        None,
    ))?;
    expect_status(&r, 401, "a wrong user token")?;
    let r = join(api_request(sh, "GET", "/k8s-proxy/version", None, None))?;
    expect_status(&r, 401, "no Authorization header")
}

/// Waits for kas's RESPONSE on the agent-opened stream `id`.
fn agent_stream_response(
    c: &mut AgentConn,
    id: StreamId,
) -> Result<(proto::ResponseHead, bool), String> {
    let end = after(ANSWER);
    // Bounded by `end`.
    while let Some(f) = c.next(end)? {
        if let Frame::Response {
            stream,
            head,
            end_stream,
        } = f
            && stream == id
        {
            return Ok((head, end_stream));
        }
    }
    Err(format!("kas did not answer stream {} in time", id.0))
}

fn tunnel_error(head: &proto::ResponseHead) -> Option<String> {
    head.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-tunnel-error"))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
}

/// SERVICES.md §8: kas answers the `config` stream of an agent without a config project (the suite's
/// agents have none) with 404, `x-tunnel-error: no-config` and END_STREAM; a kas that has a
/// configuration for it may answer 200 instead. A method other than `WATCH` gets 400 `bad-method`
/// with END_STREAM, on the same connection.
fn config_stream_answered(sh: &Shared) -> Result<(), String> {
    use protocol::service::{ConfigHead, config_request_head};
    let mut c = connect(sh, 15, Settings::default())?;
    c.peer
        .send(&Frame::Request {
            stream: StreamId(1),
            head: config_request_head(&ConfigHead::default()),
            end_stream: false,
        })
        .map_err(io)?;
    let (head, ended) = agent_stream_response(&mut c, StreamId(1))?;
    match head.status {
        404 if ended && tunnel_error(&head).as_deref() == Some("no-config") => {}
        200 if !ended => {}
        s => {
            return Err(format!(
                "config stream answered {s} (END_STREAM {ended}, x-tunnel-error {:?}); expected 404 no-config or 200",
                tunnel_error(&head)
            ));
        }
    }
    let mut bad = config_request_head(&ConfigHead::default());
    bad.method = "SYNC".into();
    c.peer
        .send(&Frame::Request {
            stream: StreamId(3),
            head: bad,
            end_stream: false,
        })
        .map_err(io)?;
    let (head, ended) = agent_stream_response(&mut c, StreamId(3))?;
    if head.status != 400 || !ended || tunnel_error(&head).as_deref() != Some("bad-method") {
        return Err(format!(
            "config stream with method SYNC answered {} (END_STREAM {ended}, x-tunnel-error {:?}); expected 400 bad-method",
            head.status,
            tunnel_error(&head)
        ));
    }
    Ok(())
}

/// A `gitops` request head (SERVICES.md §9) with these headers.
fn gitops_head(method: &str, headers: &[(&str, &str)]) -> proto::RequestHead {
    proto::RequestHead {
        service: protocol::service::GITOPS.into(),
        method: method.into(),
        path: "/".into(),
        headers: headers
            .iter()
            .map(|(n, v)| proto::Header {
                name: (*n).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
        ..Default::default()
    }
}

/// Opens `head` as stream `id` on `c` and expects 400 with `x-tunnel-error: reason` and END_STREAM.
fn expect_gitops_400(
    c: &mut AgentConn,
    id: StreamId,
    head: proto::RequestHead,
    what: &str,
    reason: &str,
) -> Result<(), String> {
    c.peer
        .send(&Frame::Request {
            stream: id,
            head,
            end_stream: false,
        })
        .map_err(io)?;
    let (head, ended) = agent_stream_response(c, id)?;
    if head.status != 400 || !ended || tunnel_error(&head).as_deref() != Some(reason) {
        return Err(format!(
            "a gitops stream {what} answered {} (END_STREAM {ended}, x-tunnel-error {:?}); expected 400 {reason}",
            head.status,
            tunnel_error(&head)
        ));
    }
    Ok(())
}

/// SERVICES.md §9: kas answers a `gitops` stream whose method is not `WATCH` with 400 `bad-method`,
/// one without a `gitops-project` header with 400 `bad-head` (both with END_STREAM), and a good head
/// naming a project the agent's configuration lacks (the suite's agents have no configuration) with
/// 200, no END_STREAM, and a `Status` `UNKNOWN_PROJECT` message, never a set; all on one connection.
fn gitops_stream_answered(sh: &Shared) -> Result<(), String> {
    use gitops::wire::{self, ServerMessage, StatusCode, server_message::Kind};
    use prost::Message as _;
    let mut c = connect(sh, 16, Settings::default())?;
    let project = (wire::PROJECT_HEADER, "conformance/no-such-manifests");
    expect_gitops_400(
        &mut c,
        StreamId(1),
        gitops_head("SYNC", &[project]),
        "with method SYNC",
        "bad-method",
    )?;
    expect_gitops_400(
        &mut c,
        StreamId(3),
        gitops_head(wire::METHOD, &[]),
        "without gitops-project",
        "bad-head",
    )?;
    c.peer
        .send(&Frame::Request {
            stream: StreamId(5),
            head: gitops_head(wire::METHOD, &[project]),
            end_stream: false,
        })
        .map_err(io)?;
    let (head, ended) = agent_stream_response(&mut c, StreamId(5))?;
    if head.status != 200 || ended {
        return Err(format!(
            "a gitops stream for an unknown project answered {} (END_STREAM {ended}, x-tunnel-error {:?}); \
             expected 200, stream open",
            head.status,
            tunnel_error(&head)
        ));
    }
    let mut decoder = protocol::cache::MessageDecoder::default();
    let mut seen = 0;
    let end = after(ANSWER);
    // Bounded by `end`.
    while let Some(f) = c.next(end)? {
        let Frame::Data { stream, data, .. } = f else {
            continue;
        };
        if stream != StreamId(5) {
            continue;
        }
        seen += data.len();
        decoder.push(&data);
        let Some(bytes) = decoder
            .next_message()
            .map_err(|e| format!("kas's gitops message: {e}"))?
        else {
            continue;
        };
        let m = ServerMessage::decode(bytes.as_ref())
            .map_err(|e| format!("kas's first gitops message does not decode: {e}"))?;
        return match m.kind {
            Some(Kind::Status(s)) if s.code == StatusCode::UnknownProject as i32 => Ok(()),
            Some(Kind::Status(s)) => Err(format!(
                "kas's status for an unknown project has code {} ({:?}), expected UNKNOWN_PROJECT",
                s.code, s.message
            )),
            other => Err(format!(
                "kas's first gitops message for an unknown project is {other:?}, expected Status UNKNOWN_PROJECT"
            )),
        };
    }
    Err(format!(
        "kas sent no complete gitops message for an unknown project within {ANSWER:?} ({seen} octets)"
    ))
}
