//! The real `kubectl` through kas: a plain kubeconfig pointing at `http://127.0.0.1:PORT/k8s-proxy`
//! with the token `pat:1:<token>`, and a forwarding fake agent that sends `k8s-api` streams to the
//! simulated Kubernetes API server (a minimal stand-in for agentk, so this test needs only kas).
//!
//! `kubectl` is required: without it these tests fail with a message saying how to install it
//! (`apt-get install kubernetes-client`); they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures_lite::AsyncWriteExt as _;
use http_body_util::{BodyExt as _, Full};
use protocol::proto::{Header, RequestHead, ResponseHead};
use protocol::service::is_forwarded;
use runtime_smol::{Connection, Stream};
use sim_apiserver::{ApiServer, ApiServerConfig};
use support::{Env, GUARD, agent_meta, try_connect};

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails the test, saying how to install kubectl, when it is missing: a skipped test would pass.
fn require_kubectl() {
    assert!(
        kubectl_available(),
        "kubectl is not installed or does not run (`kubectl version --client` failed): these tests \
         drive the real kubectl and do not skip. Install it (Debian/Ubuntu: `apt-get install \
         kubernetes-client`) and run again."
    );
}

/// Serves one k8s-api stream by sending it to the API server at `upstream` over HTTP/1.1.
async fn forward(upstream: std::net::SocketAddr, head: RequestHead, stream: Stream) {
    let mut body = Vec::new();
    while let Some(Ok(chunk)) = stream.read_chunk(64 * 1024).await {
        body.extend_from_slice(&chunk);
    }
    let Ok(tcp) = smol::net::TcpStream::connect(upstream).await else {
        let _ = stream.respond(
            ResponseHead {
                status: 502,
                headers: vec![],
            },
            true,
        );
        return;
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(kas::api::http_io::HttpIo::new(tcp)).await
    else {
        let _ = stream.respond(
            ResponseHead {
                status: 502,
                headers: vec![],
            },
            true,
        );
        return;
    };
    smol::spawn(async move {
        let _ = conn.await;
    })
    .detach();
    let mut req = http::Request::builder()
        .method(head.method.as_str())
        .uri(head.path.as_str())
        .header("host", upstream.to_string());
    for h in &head.headers {
        req = req.header(h.name.as_str(), &h.value[..]);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let Ok(resp) = sender.send_request(req).await else {
        let _ = stream.respond(
            ResponseHead {
                status: 502,
                headers: vec![],
            },
            true,
        );
        return;
    };
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| is_forwarded(n.as_str()))
        .map(|(n, v)| Header {
            name: n.as_str().to_owned(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect();
    let status = u32::from(resp.status().as_u16());
    if stream
        .respond(ResponseHead { status, headers }, false)
        .is_err()
    {
        return;
    }
    let mut body = resp.into_body();
    let mut w: &Stream = &stream;
    // Bounded by the upstream body (a watch ends when kas resets the stream: the write fails).
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data()
            && w.write_all(&data).await.is_err()
        {
            return;
        }
    }
    let _ = stream.finish();
}

fn serve(conn: Connection, upstream: std::net::SocketAddr) -> smol::Task<()> {
    smol::spawn(async move {
        while let Some((head, stream)) = conn.accept_stream().await {
            smol::spawn(forward(upstream, head, stream)).detach();
        }
    })
}

/// A plain kubeconfig: `server`, optionally a CA file, optionally a bearer token.
fn kubeconfig(path: &Path, server: &str, ca: Option<&Path>, token: Option<&str>) {
    let ca = ca.map_or(String::new(), |ca| {
        format!("    certificate-authority: {}\n", ca.display())
    });
    let user = token.map_or("  user: {}\n".to_owned(), |t| {
        format!("  user:\n    token: {t}\n")
    });
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kas\n  cluster:\n    server: {server}\n{ca}\
         users:\n- name: me\n{user}contexts:\n- name: agent-1\n  context:\n    \
         cluster: kas\n    user: me\ncurrent-context: agent-1\n"
    );
    std::fs::write(path, text).unwrap();
}

fn kubectl(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(config)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .unwrap()
}

struct Cluster {
    apiserver: sim_apiserver::RunningApiServer,
    env: Env,
    _serving: smol::Task<()>,
}

/// A simulated cluster behind agent 1 of a kas started by `start`.
fn cluster(start: impl FnOnce(&Env) -> kas::Running) -> (Cluster, kas::Running) {
    let apiserver = ApiServer::start_with_own_runtime(ApiServerConfig {
        nodes: 2,
        pods: 4,
        ..ApiServerConfig::default()
    })
    .unwrap();
    let env = Env::new();
    let kas = start(&env);
    let conn = try_connect(&env, kas.agent_addr(), env.token(1), agent_meta("1.0.0")).unwrap();
    let serving = serve(conn, apiserver.addr());
    assert!(kas.wait_for_agents(&[1], GUARD));
    (
        Cluster {
            apiserver,
            env,
            _serving: serving,
        },
        kas,
    )
}

#[test]
fn kubectl_works_through_kas_over_https_with_a_bearer_token() {
    require_kubectl();
    let (c, kas) = cluster(Env::start_https);
    assert!(kas.k8s_proxy_url().starts_with("https://127.0.0.1:"));
    let ca = c.env.dir.path().join("ca.pem");
    let config = c.env.dir.path().join("kubeconfig");
    let token = format!("pat:1:{}", c.env.admin_token);
    kubeconfig(&config, &kas.k8s_proxy_url(), Some(&ca), Some(&token));

    let out = kubectl(&config, &["get", "pods", "-A", "-o", "name"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get pods failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("pod/")).count() >= 4,
        "{stdout}"
    );

    let out = kubectl(&config, &["get", "nodes", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2));

    // A watch: the initial list arrives while the watch stays open; a new pod shows up live.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&config)
        .args(["get", "pods", "-n", "default", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    assert!(first.starts_with("pod/"), "{first}");
    c.apiserver
        .store()
        .add_pod("default", "created-while-watching")
        .unwrap();
    let mut found = false;
    for line in lines.by_ref().take(200) {
        if line.unwrap().contains("created-while-watching") {
            found = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "the watch did not show the new pod");

    // A wrong token: kubectl reports the 401.
    let bad = c.env.dir.path().join("bad-kubeconfig");
    kubeconfig(&bad, &kas.k8s_proxy_url(), Some(&ca), Some("pat:1:wrong"));
    let out = kubectl(&bad, &["get", "pods"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unauthorized") || stderr.contains("logged in"),
        "{stderr}"
    );
    kas.shutdown();
    c.apiserver.shutdown();
}

#[test]
fn kubectl_works_over_plain_http_with_credentials_in_the_url() {
    require_kubectl();
    let (c, kas) = cluster(Env::start);
    let config = c.env.dir.path().join("kubeconfig");
    // kubectl sends no bearer token over plain HTTP; credentials in the URL become Basic auth.
    let server = format!(
        "http://pat:1:{}@{}/k8s-proxy",
        c.env.admin_token,
        kas.api_addr()
    );
    kubeconfig(&config, &server, None, None);
    let out = kubectl(&config, &["get", "pods", "-n", "default", "-o", "name"]);
    assert!(
        out.status.success(),
        "kubectl get pods failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/"));
    kas.shutdown();
    c.apiserver.shutdown();
}
