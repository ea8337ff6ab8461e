//! Many concurrent exec sessions on one simulated API server (the load kas's tunnel puts on
//! it: one WebSocket session per `kubectl exec`), each round-tripping stdin through `cat`;
//! bounded in count and time. Prints the memory the open sessions hold (a figure, not an
//! assertion).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use runtime_core::testing::nofile;
use sim_apiserver::{ApiServer, ApiServerConfig};
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Sessions opened (fewer when the open-file limit cannot be raised to two sockets each).
const MOST_SESSIONS: usize = 1000;
const GUARD: Duration = Duration::from_secs(120);

/// The open-file limit, raised for every session where permitted.
fn open_file_limit() -> usize {
    let want = 2 * MOST_SESSIONS as u64 + 256;
    let soft = nofile::raise(want).map_or_else(|_| nofile::limit().soft, |l| l.soft);
    usize::try_from(soft).unwrap_or(usize::MAX)
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_exec_sessions() {
    let limit = open_file_limit();
    let sessions = MOST_SESSIONS.min(limit.saturating_sub(256) / 2).max(10);
    let server = ApiServer::start(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..ApiServerConfig::default()
    })
    .expect("server starts");
    server.store().add_pod("default", "box").expect("pod");
    let addr = server.addr();
    let url = format!(
        "ws://{addr}/api/v1/namespaces/default/pods/box/exec?command=cat&stdin=true&stdout=true"
    );
    let before = rss_kib();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(sessions);
    let release = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let url = url.clone();
        let opened = opened_tx.clone();
        let mut go = release.1.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = url.as_str().into_client_request().expect("request");
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("v5.channel.k8s.io"),
            );
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // Small client buffers, so the figure is mostly the server's.
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (mut ws, _) = client_async_with_config(req, tcp, Some(config))
                .await
                .expect("handshake");
            let payload = format!("session {i}\n");
            let mut msg = vec![0u8];
            msg.extend_from_slice(payload.as_bytes());
            ws.send(Message::Binary(msg.into())).await.expect("stdin");
            let mut echoed = Vec::new();
            while echoed.len() < payload.len() {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&1) => {
                        echoed.extend_from_slice(&b[1..]);
                    }
                    Some(Ok(_)) => {}
                    other => panic!("session {i}: {other:?}"),
                }
            }
            assert_eq!(echoed, payload.as_bytes());
            let _ = opened.send(()).await;
            // Hold the session open until all are open, then end stdin (v5 close) and read
            // the exit status.
            let _ = go.wait_for(|v| *v).await;
            ws.send(Message::Binary(vec![255u8, 0].into()))
                .await
                .expect("close stdin");
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&3) => {
                        assert!(String::from_utf8_lossy(&b[1..]).contains("Success"));
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("session {i}: {e}"),
                }
            }
        }));
    }
    drop(opened_tx);
    let all_open = tokio::time::timeout(GUARD, async {
        for _ in 0..sessions {
            opened_rx.recv().await.expect("a session opened");
        }
    })
    .await;
    assert!(all_open.is_ok(), "not all sessions opened within {GUARD:?}");
    let stats = server.streaming_sessions();
    assert_eq!(stats.active, sessions);
    let during = rss_kib();
    release.0.send_replace(true);
    for t in tasks {
        tokio::time::timeout(GUARD, t)
            .await
            .expect("session ended in time")
            .expect("session task");
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while server.streaming_sessions().active > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.streaming_sessions();
    assert_eq!(
        (stats.active, stats.started, stats.failed),
        (0, sessions as u64, 0)
    );
    if let (Some(b), Some(d)) = (before, during) {
        println!(
            "{sessions} open exec sessions (server and clients in one process): RSS +{} MiB, {:.1} KiB per session",
            d.saturating_sub(b) / 1024,
            d.saturating_sub(b) as f64 / sessions as f64
        );
    }
}
