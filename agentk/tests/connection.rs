//! The connection lifecycle against a fake kas: reconnect after a kas restart, back-off after
//! REJECT, GOAWAY handover without dropping in-flight requests, graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use protocol::proto::RejectCode;
use protocol::service::{K8S_API, SERVICE_PROXY};
use protocol::{CloseReason, ErrorCode};
use tunnel_tls::ThrowawayPki;

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A k8s-api GET of the API root works over `conn`.
async fn api_works(conn: &runtime_tokio::Connection) {
    let a = request(conn, head(K8S_API, "GET", "/api", vec![]), &[]).await;
    assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["kind"], "APIVersions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_by_itself_after_kas_restarts() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, any_port(), Verdict::Accept).await;
    let addr = kas.addr;
    let agent = spawn_agent(agent_config(&pki, addr, &c.kubeconfig));
    let first = kas.next_connection().await;
    api_works(&first.connection).await;

    // kas goes down hard: the listener is closed and the connection dropped without GOAWAY.
    kas.stop_listening();
    first.connection.abort(ErrorCode::Internal, "kas crashed");
    drop(first);
    // ... and comes back on the same port.
    let mut kas = FakeKas::start(&pki, addr, Verdict::Accept).await;
    let second = kas.next_connection().await;
    assert_eq!(
        second.connection_id, "conn-1",
        "a fresh kas saw a fresh HELLO"
    );
    api_works(&second.connection).await;

    agent.shutdown().await.expect("clean shutdown");
    let reason = guard(
        "the connection closes on shutdown",
        second.connection.closed(),
    )
    .await;
    assert_eq!(reason, CloseReason::Graceful);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_is_retried_with_backoff_not_in_a_tight_loop() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let kas = FakeKas::start(
        &pki,
        any_port(),
        Verdict::Reject {
            code: RejectCode::Unauthenticated,
            retry_after_ms: 0,
        },
    )
    .await;
    let mut config = agent_config(&pki, kas.addr, &c.kubeconfig);
    config.backoff = agentk::BackoffPolicy::default();
    assert_eq!(config.backoff.initial, Duration::from_millis(500));
    let policy = config.backoff;
    let _agent = spawn_agent(config);
    // The first six attempts, timed where they arrive (not counted in a fixed window: a slow
    // machine only stretches the gaps). After the n-th refusal the agent waits a random share of
    // min(30 s, 500 ms × 2^(n-1)): each gap is at most that ceiling plus the time a connection
    // takes (generous here), and together they are far from a tight loop.
    let gaps = kas.hello_gaps(6).await;
    let slack = Duration::from_secs(5);
    for (n, gap) in gaps.iter().enumerate() {
        let ceiling = policy.ceiling(n as u32 + 1);
        assert!(
            *gap <= ceiling + slack,
            "gap {} is {gap:?}, beyond the back-off ceiling {ceiling:?}: {gaps:?}",
            n + 1
        );
    }
    // Full jitter makes any single gap possibly tiny, but five of them under 200 ms in total has a
    // probability below 10^-7 unless the agent does not back off at all (a tight loop is a few ms
    // per attempt).
    let total: Duration = gaps.iter().sum();
    assert!(
        total >= Duration::from_millis(200),
        "five retries within {total:?}: no back-off ({gaps:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connects_once_the_token_is_accepted() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(
        &pki,
        any_port(),
        Verdict::Reject {
            code: RejectCode::Unauthenticated,
            retry_after_ms: 0,
        },
    )
    .await;
    let _agent = spawn_agent(agent_config(&pki, kas.addr, &c.kubeconfig));
    eventually("a refused attempt", || {
        kas.hellos.load(Ordering::SeqCst) >= 2
    })
    .await;
    kas.set_verdict(Verdict::Accept);
    let conn = kas.next_connection().await;
    api_works(&conn.connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_retry_after_is_honoured() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(
        &pki,
        any_port(),
        Verdict::Reject {
            code: RejectCode::RateLimited,
            retry_after_ms: 1000,
        },
    )
    .await;
    let mut config = agent_config(&pki, kas.addr, &c.kubeconfig);
    // Without retry_after this policy would retry every few milliseconds.
    config.backoff = agentk::BackoffPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        stable_after: Duration::from_secs(10),
    };
    let _agent = spawn_agent(config);
    // Timed where they arrive: every retry comes at least 1 s (retry_after) after the previous
    // attempt — the refusal follows its HELLO, and the wait starts once the refusal arrived — and
    // not much later (the policy alone would retry after 20 ms at most).
    let gaps = kas.hello_gaps(4).await;
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(1000),
            "retried {gap:?} after a refusal with retry_after_ms 1000: {gaps:?}"
        );
        assert!(
            *gap <= Duration::from_secs(4),
            "waited {gap:?} after a refusal with retry_after_ms 1000: {gaps:?}"
        );
    }
    kas.set_verdict(Verdict::Accept);
    let conn = kas.next_connection().await;
    api_works(&conn.connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_opens_a_new_connection_while_the_old_one_finishes_its_request() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let web = TestHttpServer::start().await;
    c.api
        .store()
        .create(loopback_service("default", "slow", web.addr.port()))
        .expect("create service");
    let mut kas = FakeKas::start(&pki, any_port(), Verdict::Accept).await;
    let agent = spawn_agent(agent_config(&pki, kas.addr, &c.kubeconfig));
    let old = kas.next_connection().await;
    // A GOAWAY right after the handshake counts as a failure (back-off); this is a handover.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A request in flight on the old connection: the upstream holds its answer back.
    let in_flight = old
        .connection
        .open(
            head(SERVICE_PROXY, "GET", "/default/slow:http/slow", vec![]),
            true,
        )
        .expect("open");
    eventually("the request reaches the upstream", || {
        web.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;

    // kas restarts gracefully: GOAWAY, in-flight streams may finish.
    old.connection.start_close(Duration::from_secs(60));
    let new = kas.next_connection().await;
    assert_eq!(new.connection_id, "conn-2");
    api_works(&new.connection).await;
    assert!(!old.connection.is_closed(), "the old connection drains");

    let _ = web.release.send(true);
    let a = read_answer(&in_flight).await;
    assert_eq!(a.head.status, 200);
    assert_eq!(String::from_utf8_lossy(&a.body), "slow response done");
    assert!(a.trailer.is_none());
    drop(in_flight);
    let reason = guard(
        "the old connection closes once drained",
        old.connection.closed(),
    )
    .await;
    assert_eq!(reason, CloseReason::Graceful);
    assert_eq!(
        kas.hellos.load(Ordering::SeqCst),
        2,
        "exactly one replacement"
    );

    api_works(&new.connection).await;
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_picked_up_after_a_refusal() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, any_port(), Verdict::Accept).await;
    let token_file = c.dir.path().join("token");
    std::fs::write(&token_file, "an-old-revoked-token\n").expect("write token");
    let mut config = agent_config(&pki, kas.addr, &c.kubeconfig);
    config.token = agentk::read_token_file(&token_file).expect("token");
    config.token_file = Some(token_file.clone());
    let _agent = spawn_agent(config);
    // The fake kas knows only TOKEN: the old one is refused (UNAUTHENTICATED) ...
    eventually("a refused attempt", || {
        kas.hellos.load(Ordering::SeqCst) >= 1
    })
    .await;
    // ... until the Secret is updated.
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("rotate token");
    let conn = kas.next_connection().await;
    api_works(&conn.connection).await;
}
