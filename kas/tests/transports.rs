//! agentk ↔ kas over every transport, end to end with the real kas, agentk, `kubectl` and, in
//! between, the real network pieces agents meet in the field (started by the tests on loopback):
//! - `wss://` to kas's agent listener and to its API port (`/api/v1/tunnel`);
//! - through `tinyproxy` (HTTP CONNECT) for `wss://` and `tls://`, with basic auth right and wrong
//!   (wrong: a typed `407` error, and agentk backs off instead of looping);
//! - behind nginx: TLS terminated there for `wss://` (HTTP proxy with `Upgrade`), plain `ws://` in
//!   front of the TLS agent listener, TCP pass-through (`stream` module) for `tls://`; an nginx
//!   reload and an nginx restart are survived; kas's keepalive below nginx's idle timeout keeps an
//!   idle tunnel up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, pod_names};
use runtime_tokio::transport::{Endpoint, ProxyConfig, ProxyError, Scheme};
use support::{GUARD, eventually, free_port, metric};

// ---------------------------------------------------------------------------------------------
// agentk with a chosen address and proxy

/// One agentk for agent 1 of `stack`, on a runtime of its own (dropped: killed).
struct Agentk {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Agentk {
    /// Starts agentk for agent 1 (whose stack-started agentk must be stopped) dialing `address`.
    fn start(stack: &Stack, address: &str, proxy: agentk::ProxySetting) -> Agentk {
        let mut cfg = agentk::Config::new(address, stack.env.token(1).to_owned());
        cfg.proxy = proxy;
        cfg.ca = tunnel_tls::Roots::PemFile(stack.ca_file.clone());
        cfg.tls_server_name = Some("localhost".into());
        cfg.kube = agentk::KubeSource::Kubeconfig {
            path: stack.env.dir.path().join("cluster-1.kubeconfig"),
            context: None,
        };
        cfg.meta.pod_name = Some("agentk-transport".into());
        cfg.meta.pod_namespace = Some("gitlab-agent".into());
        cfg.shutdown_grace = Duration::from_secs(1);
        cfg.backoff.max = Duration::from_secs(2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("transport-agentk")
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = runtime.spawn(async move {
            let _ = agentk::run(cfg, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Agentk {
            stop: Some(stop),
            done: Some(done),
            runtime,
        }
    }
}

impl Drop for Agentk {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // agentk closes its connection gracefully (bounded by its 1 s shutdown grace).
        if let Some(done) = self.done.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(GUARD, done).await });
        }
    }
}

/// A stack whose agent 1 is stopped, ready for an [`Agentk`] of the test's choosing.
fn stack_without_agent() -> Stack {
    let mut s = Stack::start(StackOptions {
        agents: vec![1],
        ..StackOptions::default()
    });
    s.stop_agent(1);
    s
}

fn accepted(stack: &Stack) -> f64 {
    metric(&stack.metrics(), "kas_agent_connections_accepted_total").unwrap_or(0.0)
}

/// Waits until agent 1 is connected, then lists pods through kas with `kubectl`: the tunnel carries
/// requests.
fn requests_flow(stack: &Stack) {
    assert!(
        stack.kas().wait_for_agents(&[1], GUARD),
        "agent 1 did not connect"
    );
    let expected = pod_names(stack.cluster(1), Some("default"));
    assert!(!expected.is_empty());
    let out = stack.kubectl("agent-1").ok(&["get", "pods", "-o", "name"]);
    for pod in &expected {
        assert!(out.contains(pod.as_str()), "{pod} missing from {out}");
    }
}

fn wait_disconnected(stack: &Stack) {
    eventually("agent 1 to be disconnected", || {
        (!stack.kas().connected_agents().contains(&1)).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// Real proxies and load balancers on loopback

fn wait_listening(port: u16, what: &str) {
    eventually(&format!("{what} to listen on {port}"), || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

fn find_program(name: &str, dirs: &[&str]) -> PathBuf {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it)"))
}

/// tinyproxy's basic auth `agent:s3cret`.
const AUTH: &str = "BasicAuth agent s3cret\n";
/// tinyproxy lets CONNECT reach port 1 only (everything else: 403).
const ONLY_PORT_1: &str = "ConnectPort 1\n";

/// A `tinyproxy` in the foreground on 127.0.0.1, with the configuration lines `extra`.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path, extra: &str) -> Tinyproxy {
        let port = free_port();
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let conf = dir.join(format!("tinyproxy-{port}.conf"));
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 64\nLogLevel Info\n\
             LogFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display()
        );
        text.push_str(extra);
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(find_program(
            "tinyproxy",
            &["/usr/bin", "/usr/sbin", "/usr/local/bin"],
        ))
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        wait_listening(port, "tinyproxy");
        Tinyproxy { child, port, log }
    }

    fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}", self.port)
    }

    /// CONNECT requests the proxy logged. tinyproxy logs each attempt twice at its `CONNECT` level
    /// (`Connect (file descriptor N): …` for the TCP accept, `Request (file descriptor N): CONNECT
    /// host:port …` for the request); only the request line is an attempt.
    fn connects(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("]: Request (") && l.contains("): CONNECT "))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on 127.0.0.1 in front of kas: `wss` (TLS terminated, proxied to kas's API port
/// `/api/v1/tunnel`), `ws` (plain HTTP, proxied to the agent listener over TLS), `tls` (TCP
/// pass-through to the agent listener). Its idle timeout (`proxy_read_timeout`) is `idle`.
struct Nginx {
    child: Option<Child>,
    prefix: PathBuf,
    conf: PathBuf,
    wss: u16,
    ws: u16,
    tls: u16,
}

impl Nginx {
    fn start(stack: &Stack, idle: Duration) -> Nginx {
        let prefix = stack.env.dir.path().join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let (wss, ws, tls) = (free_port(), free_port(), free_port());
        let agent = stack.kas().agent_addr();
        let api = stack.kas().api_addr();
        let crt = stack.env.dir.path().join("kas.crt");
        let key = stack.env.dir.path().join("kas.key");
        let ca = &stack.ca_file;
        let idle = idle.as_secs().max(1);
        let p = prefix.display();
        let conf = prefix.join("nginx.conf");
        let upstream_tls = format!(
            "proxy_http_version 1.1;\n\
             proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection \"upgrade\";\n\
             proxy_ssl_server_name on;\n\
             proxy_ssl_protocols TLSv1.3;\n\
             proxy_ssl_name localhost;\n\
             proxy_ssl_verify on;\n\
             proxy_ssl_trusted_certificate {ca};\n\
             proxy_read_timeout {idle}s;\n\
             proxy_send_timeout {idle}s;\n",
            ca = ca.display()
        );
        let text = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nmaster_process on;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log info;\n\
             worker_shutdown_timeout 1s;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log {p}/logs/access.log;\n\
               client_body_temp_path {p}/body; proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{wss} ssl;\n\
                 ssl_protocols TLSv1.3;\n\
                 ssl_certificate {crt};\n\
                 ssl_certificate_key {key};\n\
                 location /api/v1/tunnel {{ proxy_pass https://{api}; {upstream_tls} }}\n\
               }}\n\
               server {{\n\
                 listen 127.0.0.1:{ws};\n\
                 location / {{ proxy_pass https://{agent}; {upstream_tls} }}\n\
               }}\n\
             }}\n\
             stream {{\n\
               server {{ listen 127.0.0.1:{tls}; proxy_pass {agent}; proxy_timeout {idle}s; }}\n\
             }}\n",
            crt = crt.display(),
            key = key.display(),
        );
        std::fs::write(&conf, text).unwrap();
        let mut n = Nginx {
            child: None,
            prefix,
            conf,
            wss,
            ws,
            tls,
        };
        n.spawn();
        n
    }

    /// `nginx` for this instance (prefix, configuration, error log).
    fn command(&self) -> Command {
        let mut c = Command::new(find_program(
            "nginx",
            &["/usr/sbin", "/usr/bin", "/usr/local/sbin"],
        ));
        c.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(self.prefix.join("logs/error.log"));
        c
    }

    fn spawn(&mut self) {
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for port in [self.wss, self.ws, self.tls] {
            wait_listening(port, "nginx");
        }
    }

    /// `nginx -s reload`: new workers with the configuration read again; the old ones close their
    /// connections after `worker_shutdown_timeout` (1 s).
    fn reload(&self) {
        assert!(self.signal("reload"), "nginx -s reload failed");
    }

    /// `nginx -s <signal>` for this instance; whether it worked.
    fn signal(&self, signal: &str) -> bool {
        self.command()
            .args(["-s", signal])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills nginx (every connection through it drops), then starts it again on the same ports.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `nginx -s stop` (the master ends its workers at once, dropping every connection), then
    /// waits for the process and its ports.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = self.signal("stop");
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
        eventually("nginx's ports to be free", || {
            [self.wss, self.ws, self.tls]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
                .then_some(())
        });
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default();
            eprintln!("nginx error log:\n{log}");
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket straight to kas

#[test]
fn wss_to_the_agent_listener_and_to_the_api_port() {
    let s = stack_without_agent();
    let agent = s.kas().agent_addr();
    let api = s.kas().api_addr();
    for address in [
        format!("wss://localhost:{}/", agent.port()),
        format!("wss://localhost:{}/api/v1/tunnel", api.port()),
    ] {
        let before = accepted(&s);
        let a = Agentk::start(&s, &address, agentk::ProxySetting::Direct);
        requests_flow(&s);
        assert!(accepted(&s) > before, "{address}: no new connection");
        drop(a);
        wait_disconnected(&s);
    }
}

/// A WebSocket upgrade without the tunnel's subprotocol is refused (400) on the API port, and
/// a plain GET there is not mistaken for one.
#[test]
fn api_port_refuses_upgrades_without_the_subprotocol() {
    let s = stack_without_agent();
    let url = format!("{}/api/v1/tunnel", s.kas().api_url());
    let reply = e2e::call(
        &s.https(),
        "GET",
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "chat"),
        ],
        Vec::new(),
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("agent-tunnel.v1"), "{}", reply.body);
    let reply = e2e::call(&s.https(), "GET", &url, &[], Vec::new());
    assert_eq!(reply.status, 400, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// HTTP CONNECT proxy

#[test]
fn through_tinyproxy_with_basic_auth_for_wss_and_tls() {
    let s = stack_without_agent();
    let proxy = Tinyproxy::start(s.env.dir.path(), AUTH);
    let agent = s.kas().agent_addr();
    for address in [
        format!("wss://localhost:{}", agent.port()),
        format!("tls://localhost:{}", agent.port()),
    ] {
        let connects = proxy.connects();
        let a = Agentk::start(
            &s,
            &address,
            agentk::ProxySetting::Url(proxy.url("agent:s3cret@")),
        );
        requests_flow(&s);
        assert!(
            proxy.connects() > connects,
            "{address}: the proxy saw no CONNECT"
        );
        drop(a);
        wait_disconnected(&s);
    }
}

/// The proxy's refusals are typed errors: wrong or missing credentials (407/401), a forbidden port
/// (403), an unreachable kas (5xx). With wrong credentials agentk keeps retrying with its back-off
/// (a handful of attempts in a few seconds, not a tight loop) and never connects.
#[test]
fn proxy_refusals_are_typed_errors_and_a_back_off() {
    let s = stack_without_agent();
    let proxy = Tinyproxy::start(s.env.dir.path(), AUTH);
    let agent = s.kas().agent_addr();
    let pki_roots = tunnel_tls::Roots::PemFile(s.ca_file.clone());
    let tls = tunnel_tls::client_config(&pki_roots, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let forbidding = Tinyproxy::start(s.env.dir.path(), ONLY_PORT_1);
    let closed_port = free_port();
    let dial = |scheme, proxy_url: String, port| {
        let endpoint = Endpoint {
            scheme,
            host: "localhost".into(),
            port,
            path: "/".into(),
            proxy: Some(ProxyConfig::parse(&proxy_url).unwrap()),
        };
        let opts = runtime_tokio::AgentOptions {
            token: s.env.token(1).to_owned(),
            ..Default::default()
        };
        match rt.block_on(runtime_tokio::connect_agent_to(
            &endpoint,
            tls.clone(),
            tunnel_tls::server_name("localhost").unwrap(),
            opts,
        )) {
            Err(runtime_tokio::Error::Proxy(e)) => e,
            Err(e) => panic!("{scheme:?} via {proxy_url}: expected a proxy error, got {e}"),
            Ok(_) => panic!("{scheme:?} via {proxy_url}: connected"),
        }
    };
    assert_eq!(
        dial(Scheme::Wss, proxy.url("agent:wrong@"), agent.port()),
        ProxyError::AuthenticationRequired {
            sent_credentials: true
        }
    );
    assert_eq!(
        dial(Scheme::Tls, proxy.url(""), agent.port()),
        ProxyError::AuthenticationRequired {
            sent_credentials: false
        }
    );
    let e = dial(Scheme::Tls, forbidding.url(""), agent.port());
    assert!(
        matches!(e, ProxyError::Forbidden { status: 403, .. }),
        "{e}"
    );
    let e = dial(Scheme::Wss, proxy.url("agent:s3cret@"), closed_port);
    assert!(matches!(e, ProxyError::Upstream { .. }), "{e}");
    let before = proxy.connects();
    let started = Instant::now();
    let a = Agentk::start(
        &s,
        &format!("wss://localhost:{}", agent.port()),
        agentk::ProxySetting::Url(proxy.url("agent:wrong@")),
    );
    std::thread::sleep(Duration::from_secs(4));
    drop(a);
    let attempts = proxy.connects() - before;
    let elapsed = started.elapsed();
    assert!(attempts >= 1, "agentk never tried the proxy");
    // agentk's policy here (first ceiling 0.5 s, doubling, capped at 2 s, full jitter) makes about six
    // attempts in 4 s; a back-off stuck at its floor makes ~15 (checked), a tight loop hundreds.
    assert!(
        attempts <= 10,
        "{attempts} attempts in {elapsed:?}: agentk does not back off"
    );
    assert!(!s.kas().connected_agents().contains(&1));
}

// ---------------------------------------------------------------------------------------------
// Behind nginx

#[test]
fn behind_nginx_wss_ws_and_tls_pass_through() {
    let s = stack_without_agent();
    let nginx = Nginx::start(&s, Duration::from_secs(60));
    for address in [
        format!("wss://localhost:{}/api/v1/tunnel", nginx.wss),
        format!("ws://127.0.0.1:{}/", nginx.ws),
        format!("tls://localhost:{}", nginx.tls),
    ] {
        let a = Agentk::start(&s, &address, agentk::ProxySetting::Direct);
        requests_flow(&s);
        drop(a);
        wait_disconnected(&s);
    }
}

/// An agent behind nginx survives `nginx -s reload` (the old worker closes its connections after
/// 1 s) and an nginx restart: it reconnects by itself and requests flow again.
#[test]
fn nginx_reload_and_restart_are_survived() {
    let s = stack_without_agent();
    let mut nginx = Nginx::start(&s, Duration::from_secs(60));
    for address in [
        format!("wss://localhost:{}/api/v1/tunnel", nginx.wss),
        format!("tls://localhost:{}", nginx.tls),
    ] {
        let a = Agentk::start(&s, &address, agentk::ProxySetting::Direct);
        requests_flow(&s);
        let before = accepted(&s);
        nginx.reload();
        eventually("a new connection after the reload", || {
            (accepted(&s) > before).then_some(())
        });
        requests_flow(&s);
        let before = accepted(&s);
        nginx.restart();
        eventually("a new connection after the restart", || {
            (accepted(&s) > before).then_some(())
        });
        requests_flow(&s);
        drop(a);
        wait_disconnected(&s);
    }
}

/// kas's keepalive (1 s) below nginx's idle timeout (3 s) keeps an idle tunnel through nginx up:
/// no new connection over 8 idle seconds.
#[test]
fn keepalive_below_the_idle_timeout_keeps_the_tunnel_through_nginx() {
    let mut s = Stack::start(StackOptions {
        agents: vec![1],
        keepalive: Some((Duration::from_secs(1), Duration::from_secs(5))),
        ..StackOptions::default()
    });
    s.stop_agent(1);
    let nginx = Nginx::start(&s, Duration::from_secs(3));
    let a = Agentk::start(
        &s,
        &format!("wss://localhost:{}/api/v1/tunnel", nginx.wss),
        agentk::ProxySetting::Direct,
    );
    requests_flow(&s);
    let before = accepted(&s);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        accepted(&s),
        before,
        "the idle tunnel through nginx was cut and re-dialled"
    );
    assert!(s.kas().connected_agents().contains(&1));
    requests_flow(&s);
    drop(a);
}
