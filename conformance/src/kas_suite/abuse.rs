//! Scenarios of PROTOCOL.md §17 ("Floods", "Unread answers"): a valid agent that abuses its
//! connection. Each uses agents of its own (11 to 14, see [`super::AGENTS`]).

use std::time::{Duration, Instant};

use protocol::tunnel::frame::{Frame, StreamId};
use protocol::{ErrorCode, Settings, proto};

use super::{ANSWER, Shared, after, api_request, connect, expect_goaway_and_close, join};

/// The §17 limits kas documents; the scenarios send ten times as much.
const DOCUMENTED_PINGS_PER_WINDOW: usize = 100;
const DOCUMENTED_RAPID_RESETS_PER_WINDOW: usize = 1000;

/// Unread input the back-pressure scenario offers at most beyond what the kernel's socket buffers
/// can hold ([`socket_buffers`]).
const ABUSE_BYTES: usize = 64 << 20;

/// What loopback TCP buffers can hold before a writer that kas stopped reading blocks: requests in
/// the agent's send and kas's receive buffer, and as much again of answers (about as large as the
/// requests) in kas's send and the agent's receive buffer, each at most its autotuning maximum
/// (`tcp_rmem`/`tcp_wmem`; 6 and 4 MiB by default before Linux 6.14, whose receive maximum is
/// 32 MiB). Without this allowance a kas that stops reading as it should can take the whole
/// scenario's input into the kernel's buffers on a machine with large ones.
fn socket_buffers() -> usize {
    let max = |path: &str, default: usize| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(default)
    };
    let rmem = max("/proc/sys/net/ipv4/tcp_rmem", 6 << 20);
    let wmem = max("/proc/sys/net/ipv4/tcp_wmem", 4 << 20);
    2 * (rmem + wmem)
}
/// Growth of the kas process allowed meanwhile (its answers would be larger than the input).
const MAX_GROWTH_KIB: u64 = 32 * 1024;

fn ping(n: u64) -> Frame {
    Frame::Ping {
        ack: false,
        payload: n.to_be_bytes(),
    }
}

/// A request through kas for agent 14, answered by a well-behaved scripted agent: kas still serves
/// other agents.
fn another_agent_works(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 14, Settings::default())?;
    let client = api_request(
        sh,
        "GET",
        "/k8s-proxy/version?abuse=1",
        Some(sh.bearer(14)),
        None,
    );
    let id = c.wait_request(ANSWER)?;
    c.respond(id, 200, b"{}")?;
    let r = join(client)?;
    if r.status != 200 {
        return Err(format!(
            "another agent's request got HTTP {} while one agent abused its connection",
            r.status
        ));
    }
    Ok(())
}

/// §17: ten times the documented PING limit at once is answered with GOAWAY ENHANCE_YOUR_CALM and
/// the close; other agents are unaffected.
pub fn flood_pings_enhance_your_calm(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 11, Settings::default())?;
    c.peer.auto_pong = false;
    let frames: Vec<Frame> = (0..10 * DOCUMENTED_PINGS_PER_WINDOW as u64)
        .map(ping)
        .collect();
    // kas may close while the burst is still being written.
    let _ = c.peer.send_all(&frames);
    expect_goaway_and_close(&mut c.peer, ErrorCode::EnhanceYourCalm, ANSWER)?;
    another_agent_works(sh)
}

/// §17: streams opened and reset at once ("rapid reset"), ten times the documented limit, are
/// answered with GOAWAY ENHANCE_YOUR_CALM and the close.
pub fn flood_rapid_reset_enhance_your_calm(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 12, Settings::default())?;
    let frames = crate::wire::rapid_resets(
        10 * DOCUMENTED_RAPID_RESETS_PER_WINDOW as u32,
        "conformance-nothing",
    );
    for chunk in frames.chunks(1000) {
        if c.peer.send_all(chunk).is_err() {
            break;
        }
    }
    expect_goaway_and_close(&mut c.peer, ErrorCode::EnhanceYourCalm, ANSWER)?;
    another_agent_works(sh)
}

/// §17, unread answers: an agent opens stream after stream (each needs an answer) and never reads.
/// kas must not buffer the answers without bound: it stops reading (the agent's writes block) or
/// closes the connection with GOAWAY ENHANCE_YOUR_CALM; either way its memory grows by far less
/// than what the agent sent, and other agents keep working.
pub fn output_backpressure(sh: &Shared) -> Result<(), String> {
    let mut c = connect(sh, 13, Settings::default())?;
    let _ = c
        .peer
        .tls()
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(3)));
    let before = sh.kas_rss_kib();
    let mut next = 1u32;
    let mut written = 0usize;
    let mut outcome = "";
    let started = Instant::now();
    let limit = ABUSE_BYTES + socket_buffers();
    // Bounded by the limit and the write timeout.
    while written < limit {
        let batch: Vec<Frame> = (0..500)
            .map(|_| {
                let stream = StreamId(next);
                next += 2;
                Frame::Request {
                    stream,
                    head: proto::RequestHead {
                        service: "conformance-unknown".into(),
                        method: "GET".into(),
                        path: "/".into(),
                        ..Default::default()
                    },
                    end_stream: true,
                }
            })
            .collect();
        let size: usize = batch.iter().map(|f| f.to_bytes().len()).sum();
        match c.peer.send_all(&batch) {
            Ok(()) => written += size,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                outcome = "paused";
                break;
            }
            Err(_) => {
                outcome = "closed";
                break;
            }
        }
    }
    let grown = match (before, sh.kas_rss_kib()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    eprintln!(
        "  note: kas took {} KiB of unread requests in {:?} ({}), and grew {} KiB",
        written / 1024,
        started.elapsed(),
        if outcome.is_empty() {
            "never stopped"
        } else {
            outcome
        },
        grown.map_or("?".into(), |g| g.to_string())
    );
    if outcome.is_empty() {
        return Err(format!(
            "kas read {} MiB of requests whose answers were never read, without stopping or closing",
            written >> 20
        ));
    }
    if let Some(g) = grown
        && g > MAX_GROWTH_KIB
    {
        return Err(format!(
            "kas grew by {g} KiB while an agent did not read its answers"
        ));
    }
    if outcome == "closed" {
        // Whatever GOAWAY kas sent must say ENHANCE_YOUR_CALM. (An agent that never reads may not
        // get to see it: once kas drops the connection, the reset destroys what was not read.)
        let mut codes = Vec::new();
        loop {
            match c.peer.recv(after(ANSWER)) {
                Ok(Some(Frame::GoAway(g))) => codes.push(g.code),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(code) = codes
            .iter()
            .find(|c| **c != ErrorCode::EnhanceYourCalm.to_u32())
        {
            return Err(format!(
                "kas closed the abuser with GOAWAY {}, not ENHANCE_YOUR_CALM",
                ErrorCode::from_u32(*code)
            ));
        }
    }
    c.peer.close();
    another_agent_works(sh).map_err(|e| format!("after the abuse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_traffic_is_ten_times_the_documented_limits() {
        let d = protocol::tunnel::config::FloodLimits::default();
        assert_eq!(d.pings as usize, DOCUMENTED_PINGS_PER_WINDOW);
        assert_eq!(d.rapid_resets as usize, DOCUMENTED_RAPID_RESETS_PER_WINDOW);
    }
}
