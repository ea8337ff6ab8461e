//! A raw WebSocket `v5.channel.k8s.io` exec client for the upgrade tests and benchmark: opens
//! `kubectl exec`-style sessions of `cat` through kas's `/k8s-proxy` (HTTPS, bearer) or directly on
//! the simulated API server, and times stdin → stdout round trips, without kubectl's process cost.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The pod every session runs in.
pub const POD: &str = "box";

/// Where exec requests go: kas's `/k8s-proxy` over HTTPS with a bearer, or the API server.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
    pub prefix: &'static str,
    pub authorization: Option<String>,
}

/// A client connection, plain or TLS.
pub enum Conn {
    Plain(smol::net::TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<smol::net::TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// An exec session of `cat` over WebSocket `v5.channel.k8s.io`, after its `101`.
pub struct ExecSession {
    pub conn: Conn,
    /// Octets read past the last frame.
    buf: Vec<u8>,
}

pub async fn open_exec(t: &Target) -> Result<ExecSession, String> {
    let tcp = smol::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let mut conn = match &t.tls {
        None => Conn::Plain(tcp),
        Some(cfg) => {
            let name = tunnel_tls::server_name("localhost").map_err(|e| e.to_string())?;
            let s = futures_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            Conn::Tls(Box::new(s))
        }
    };
    let mut req = format!(
        "GET {}/api/v1/namespaces/default/pods/{POD}/exec?command=cat&stdin=true&stdout=true \
         HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n",
        t.prefix
    );
    if let Some(a) = &t.authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: a head larger than 64 KiB is an error.
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65536 {
            return Err("response head too large".into());
        }
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the head: {}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no 101: {}", head.lines().next().unwrap_or("")));
    }
    buf.drain(..end);
    Ok(ExecSession { conn, buf })
}

impl ExecSession {
    /// Writes `data` to stdin as one masked binary frame (at most 65,000 octets).
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        let mut payload = vec![0u8]; // channel 0: stdin
        payload.extend_from_slice(data);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x82u8];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n => {
                let n = u16::try_from(n).map_err(|_| "stdin chunk too large".to_owned())?;
                frame.push(0x80 | 126);
                frame.extend_from_slice(&n.to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.conn
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.conn.flush().await.map_err(|e| format!("flush: {e}"))
    }

    /// Writes `data` to stdin and reads until as many octets came back on stdout.
    pub async fn round_trip(&mut self, data: &[u8]) -> Result<(), String> {
        self.write_stdin(data).await?;
        let mut got = 0;
        // Bounded by the connection: each iteration consumes a frame or more input.
        while got < data.len() {
            match self.next_frame()? {
                Some((channel, len)) => {
                    if channel == 1 {
                        got += len;
                    }
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let n = self
                        .conn
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("session closed".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(())
    }

    /// Takes one complete server frame from the buffer: (channel, data length).
    pub fn next_frame(&mut self) -> Result<Option<(u8, usize)>, String> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        if opcode == 8 {
            return Err("server closed the session".into());
        }
        let channel = if len > 0 { b[at] } else { 255 };
        self.buf.drain(..at + len);
        Ok(Some((channel, len.saturating_sub(1))))
    }
}

/// Sessions through kas's `/k8s-proxy` of `s` (HTTPS with the stack's CA, admin's bearer for agent 1).
pub fn via_kas(s: &crate::e2e::Stack) -> Target {
    let mut tls =
        (*tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(s.ca_file.clone()), None).unwrap())
            .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Target {
        addr: s.kas().api_addr(),
        tls: Some(Arc::new(tls)),
        prefix: "/k8s-proxy",
        authorization: Some(s.admin(1)),
    }
}
