//! Interop: a smol server with a tokio agent, and a tokio server with a smol agent, over real TCP +
//! TLS on 127.0.0.1. Both directions of stream opening, bodies, trailers and a graceful close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::proto::{AgentMeta, RequestHead, ResponseHead, Trailer};
use protocol::{CloseReason, Config, HelloInfo};
use runtime_core::{Accepted, AgentOptions};
use tunnel_tls::ThrowawayPki;

const GUARD: Duration = Duration::from_secs(120);

fn head(path: &str) -> RequestHead {
    RequestHead {
        service: "interop".into(),
        method: "POST".into(),
        path: path.into(),
        ..RequestHead::default()
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn opts() -> AgentOptions {
    AgentOptions {
        token: "interop-token".into(),
        meta: AgentMeta {
            version: "test".into(),
            pod_name: "agentk-0".into(),
            ..AgentMeta::default()
        },
        config: Config::default(),
    }
}

async fn authenticate(
    hello: HelloInfo,
    _peer: SocketAddr,
) -> Result<Accepted, protocol::proto::Reject> {
    assert_eq!(hello.token, "interop-token");
    Ok(Accepted {
        agent_id: 7,
        connection_id: format!("interop-{}", hello.meta.pod_name),
    })
}

fn tls() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let pki = ThrowawayPki::generate().expect("pki");
    let server = tunnel_tls::server_config_with(pki.server.identity().expect("identity"), None)
        .expect("server tls");
    let client = tunnel_tls::client_config(&pki.roots(), None).expect("client tls");
    (server, client)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn trailer(msg: &str) -> Trailer {
    Trailer {
        code: 0,
        message: msg.into(),
        headers: vec![],
    }
}

#[test]
fn smol_server_tokio_agent() {
    runtime().block_on(async {
        tokio::time::timeout(GUARD, async {
            let (server_tls, client_tls) = tls();
            let server = runtime_smol::Server::bind(
                "127.0.0.1:0",
                Some(server_tls),
                Config::default(),
                authenticate,
            )
            .await
            .expect("smol server");
            let addr = server.local_addr();
            let agent_side = tokio::spawn(async move {
                runtime_tokio::connect_agent(
                    addr,
                    client_tls,
                    tunnel_tls::server_name("127.0.0.1").expect("name"),
                    opts(),
                )
                .await
            });
            let accepted = server.accept().await.expect("accepted");
            let (agent, est) = agent_side
                .await
                .expect("agent task")
                .expect("agent connects");
            assert_eq!(est.agent_id, 7);
            assert_eq!(accepted.agent_id, 7);
            assert_eq!(accepted.connection_id, "interop-agentk-0");
            assert_eq!(accepted.meta.pod_name, "agentk-0");
            let kas = accepted.connection;

            // kas (smol) opens a request into the cluster; agentk (tokio) serves it.
            let serve = {
                let agent = agent.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (h, mut s) = agent.accept_stream().await.expect("stream from kas");
                    assert_eq!(h.path, "/api/v1/pods");
                    let mut req = Vec::new();
                    s.read_to_end(&mut req).await.expect("request");
                    s.respond(
                        ResponseHead {
                            status: 200,
                            headers: vec![],
                        },
                        false,
                    )
                    .expect("respond");
                    s.write_all(&body(3 << 20, 1)).await.expect("response body");
                    s.send_trailer(trailer("ok")).expect("trailer");
                    req
                })
            };
            let s = kas.open(head("/api/v1/pods"), false).expect("kas opens");
            {
                use smol::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = s;
                s.write_all(&body(500_000, 2))
                    .await
                    .expect("kas request body");
                s.close().await.expect("finish");
                assert_eq!(s.response().await.expect("response").status, 200);
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.expect("response body");
                assert!(got == body(3 << 20, 1));
                assert_eq!(s.trailer().await.expect("trailer"), Some(trailer("ok")));
            }
            assert!(serve.await.expect("serve task") == body(500_000, 2));

            // agentk (tokio) pushes a stream to kas (smol).
            let push = {
                let kas = kas.clone();
                tokio::spawn(async move {
                    use smol::io::AsyncReadExt;
                    let (h, mut s) = kas.accept_stream().await.expect("stream from agentk");
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.expect("push body");
                    s.respond(
                        ResponseHead {
                            status: 204,
                            headers: vec![],
                        },
                        true,
                    )
                    .expect("respond");
                    (h.path, got)
                })
            };
            {
                use tokio::io::AsyncWriteExt;
                let mut s = agent.open(head("/events"), false).expect("agent opens");
                s.write_all(&body(100_000, 3)).await.expect("push");
                s.shutdown().await.expect("finish");
                assert_eq!(s.response().await.expect("response").status, 204);
            }
            let (path, got) = push.await.expect("push task");
            assert_eq!(path, "/events");
            assert!(got == body(100_000, 3));

            assert_eq!(
                kas.close(Duration::from_secs(10)).await,
                CloseReason::Graceful
            );
            assert_eq!(agent.closed().await, CloseReason::Graceful);
        })
        .await
        .expect("hang guard");
    });
}

#[test]
fn tokio_server_smol_agent() {
    runtime().block_on(async {
        tokio::time::timeout(GUARD, async {
            let (server_tls, client_tls) = tls();
            let server = runtime_tokio::Server::bind(
                "127.0.0.1:0",
                Some(server_tls),
                Config::default(),
                authenticate,
            )
            .await
            .expect("tokio server");
            let addr = server.local_addr();
            let agent_side = tokio::spawn(async move {
                runtime_smol::connect_agent(
                    addr,
                    client_tls,
                    tunnel_tls::server_name("localhost").expect("name"),
                    opts(),
                )
                .await
            });
            let accepted = server.accept().await.expect("accepted");
            let (agent, est) = agent_side
                .await
                .expect("agent task")
                .expect("agent connects");
            assert_eq!(est.agent_id, 7);
            assert_eq!(est.connection_id, "interop-agentk-0");
            let kas = accepted.connection;

            // kas (tokio) opens; agentk (smol) echoes.
            let serve = {
                let agent = agent.clone();
                tokio::spawn(async move {
                    use smol::io::{AsyncReadExt, AsyncWriteExt};
                    let (_, mut s) = agent.accept_stream().await.expect("stream from kas");
                    s.respond(
                        ResponseHead {
                            status: 200,
                            headers: vec![],
                        },
                        false,
                    )
                    .expect("respond");
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        let n = s.read(&mut buf).await.expect("read");
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await.expect("echo");
                    }
                    s.close().await.expect("finish");
                })
            };
            let data = body(2 << 20, 4);
            let s = kas.open(head("/echo"), false).expect("kas opens");
            let (mut rx, mut tx) = s.split();
            let writer = {
                let data = data.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    tx.write_all(&data).await.expect("write");
                    tx.shutdown().await.expect("finish");
                })
            };
            assert_eq!(rx.response().await.expect("response").status, 200);
            let mut got = Vec::new();
            {
                use tokio::io::AsyncReadExt;
                rx.read_to_end(&mut got).await.expect("echo body");
            }
            assert!(got == data);
            writer.await.expect("writer");
            serve.await.expect("serve");

            // agentk (smol) closes gracefully; kas sees it.
            assert_eq!(
                agent.close(Duration::from_secs(10)).await,
                CloseReason::Graceful
            );
            assert_eq!(kas.closed().await, CloseReason::Graceful);
        })
        .await
        .expect("hang guard");
    });
}
