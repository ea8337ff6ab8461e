//! A TCP relay on 127.0.0.1 in front of a plain-HTTP upstream (the simulated API server, an
//! in-cluster service) that records every line the clients send, so a test can see exactly which
//! request headers reached the upstream. The relay forwards octets unchanged both ways.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The relay; it stops with the runtime it runs on.
pub struct WireTap {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl WireTap {
    /// Relays connections to `upstream`, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, upstream: SocketAddr) -> WireTap {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = lines.clone();
        runtime.spawn(async move {
            // Ends with the runtime.
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut line = Vec::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            for &b in &buf[..n] {
                                if b == b'\n' {
                                    let text = String::from_utf8_lossy(&line);
                                    log.lock().unwrap().push(text.trim_end().to_owned());
                                    line.clear();
                                } else if line.len() < 64 * 1024 {
                                    line.push(b);
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        WireTap { addr, lines }
    }

    /// Every line sent through the relay so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The header lines (lower-cased) of the first request whose request line contains `marker`.
    pub fn request_headers(&self, marker: &str) -> Option<Vec<String>> {
        let lines = self.lines();
        let start = lines
            .iter()
            .position(|l| l.contains(" HTTP/1.") && l.contains(marker))?;
        Some(
            lines[start + 1..]
                .iter()
                .take_while(|l| !l.is_empty())
                .map(|l| l.to_ascii_lowercase())
                .collect(),
        )
    }
}
