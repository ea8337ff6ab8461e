//! Port-forward over the kubelet's WebSocket channel protocol (`v4.channel.k8s.io`), as
//! clients other than kubectl speak it: port prefixes first, then data/error channel pairs.

use std::io::Read as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use sim_apiserver::{ApiServer, ApiServerConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Message, client, http::HeaderValue};

#[test]
fn channel_pairs_per_port() {
    let server = ApiServer::start(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..ApiServerConfig::default()
    })
    .expect("server starts");
    server.store().add_pod("default", "box").expect("pod");
    let echo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    server
        .pod_network()
        .register("default", "box", 9001, echo.local_addr().expect("addr"));
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let url = format!(
        "ws://{}/api/v1/namespaces/default/pods/box/portforward?ports=8080,9001&ports=7777",
        server.addr()
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (mut ws, _) = client(req, tcp).expect("handshake");
    let mut next = || loop {
        match ws.read().expect("read") {
            Message::Binary(b) => return b.to_vec(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    };
    // Each channel first carries its port, little-endian; the refused port's error follows.
    let mut prefixes = Vec::new();
    let mut refused = None;
    while prefixes.len() < 6 || refused.is_none() {
        let m = next();
        if m.len() == 3 && prefixes.len() < 6 {
            prefixes.push((m[0], u16::from_le_bytes([m[1], m[2]])));
        } else if m[0] == 5 {
            refused = Some(String::from_utf8_lossy(&m[1..]).into_owned());
        } else {
            panic!("unexpected {m:?}");
        }
    }
    assert_eq!(
        prefixes,
        vec![
            (0, 8080),
            (1, 8080),
            (2, 9001),
            (3, 9001),
            (4, 7777),
            (5, 7777)
        ]
    );
    assert!(refused.unwrap_or_default().contains("connection refused"));
    let mut send = |ch: u8, data: &[u8]| {
        let mut m = vec![ch];
        m.extend_from_slice(data);
        ws.send(Message::Binary(m.into())).expect("send");
    };
    send(2, b"ping");
    send(
        0,
        b"GET / HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n",
    );
    let (mut http, mut echoed) = (Vec::new(), Vec::new());
    while !(String::from_utf8_lossy(&http).contains("hello from default/box port 8080")
        && echoed == b"ping")
    {
        match ws.read().expect("read") {
            Message::Binary(b) if b.first() == Some(&0) => http.extend_from_slice(&b[1..]),
            Message::Binary(b) if b.first() == Some(&2) => echoed.extend_from_slice(&b[1..]),
            Message::Close(c) => panic!("closed early: {c:?}"),
            _ => {}
        }
    }
    let _ = ws.close(None);
}
