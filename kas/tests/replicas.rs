//! Several kas replicas on one real Redis (`redis-server` on a free loopback port): any replica
//! reaches any agent through the private kas-to-kas API; a holder killed mid-request ends the request
//! with a typed 502 and new requests reach the agent where it reconnected; a stale Redis entry
//! pointing to a dead replica is skipped; Redis restarted: each replica keeps serving its own agents,
//! says so, and re-publishes; replicas with different secrets refuse each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kas::config::ReplicasConfig;
use kas::{Kas, Running, StartOptions};
use support::{Env, FakeAgent, Script, eventually, free_port, get, post};

/// A `redis-server` on a loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let r = Redis { port, child };
        eventually("redis-server answers PING", || {
            let mut c = r.client().get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let mut c = self.client().get_connection().unwrap();
        redis::cmd("HGETALL").arg(key).query(&mut c).unwrap()
    }

    fn hset(&self, key: &str, field: &str, value: &str) {
        let mut c = self.client().get_connection().unwrap();
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query::<()>(&mut c)
            .unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PREFIX: &str = "kas-test";

fn replicas_config(env: &Env, redis: &Redis, id: u32, secret_file: &str) -> ReplicasConfig {
    ReplicasConfig {
        redis_url: redis.url(),
        key_prefix: PREFIX.into(),
        replica_id: id,
        private_address: "127.0.0.1:0".parse().unwrap(),
        advertise_host: "127.0.0.1".into(),
        tls: None,
        ca_file: env.dir.path().join("ca.pem"),
        server_name: "localhost".into(),
        shared_secret_file: env.dir.path().join(secret_file),
        find_timeout: Duration::from_millis(500),
        refresh_period: Duration::from_millis(300),
        entry_ttl: Duration::from_millis(1500),
        // The fake agents are placed on replicas by the tests and never reconnect: no shedding.
        balance: kas::config::BalanceConfig {
            enabled: false,
            ..Default::default()
        },
    }
}

fn write_secrets(dir: &Path) {
    std::fs::write(
        dir.join("replicas.secret"),
        "a-shared-secret-of-the-replicas\n",
    )
    .unwrap();
    std::fs::write(dir.join("other.secret"), "another-secret-entirely-0123\n").unwrap();
}

fn start_replica(env: &Env, redis: &Redis, id: u32, secret_file: &str) -> Running {
    start_with_replicas(env, replicas_config(env, redis, id, secret_file))
}

fn start_with_replicas(env: &Env, replicas: ReplicasConfig) -> Running {
    let mut config = env.config.clone();
    config.replicas = Some(replicas);
    Kas::start_with(
        config,
        StartOptions {
            threads: 2,
            shutdown_grace: Duration::from_secs(5),
            api_tls: None,
        },
    )
    .unwrap()
}

fn setup() -> (Env, Redis) {
    let env = Env::new();
    write_secrets(env.dir.path());
    std::fs::write(env.dir.path().join("ca.pem"), env.pki.ca_pem()).unwrap();
    (env, Redis::start())
}

fn pods(env: &Env, kas: &Running, agent: u64) -> support::Reply {
    get(
        &format!("{}/api/v1/pods", kas.k8s_proxy_url()),
        Some(&env.admin_bearer(agent)),
    )
}

fn holders_key(agent: u64) -> String {
    format!("{PREFIX}:tunnel_tracker2:kas_by_agent_id:{agent}")
}

#[test]
fn any_replica_reaches_any_agent() {
    let (env, redis) = setup();
    let kas: Vec<Running> = (1..=3)
        .map(|id| start_replica(&env, &redis, id, "replicas.secret"))
        .collect();
    let scripts: Vec<Script> = (1..=3)
        .map(|i| Script::new(&format!("agent-{i}")))
        .collect();
    // Agent i connects to replica i only.
    let agents: Vec<FakeAgent> = (0..3)
        .map(|i| FakeAgent::connect(&env, &kas[i], i as u64 + 1, &scripts[i]))
        .collect();
    for agent in 1..=3u64 {
        eventually("the agent's holder is published", || {
            let h = redis.hgetall(&holders_key(agent));
            (h.len() == 1 && h[0].0 == agent.to_string()).then_some(())
        });
    }
    for (r, k) in kas.iter().enumerate() {
        for agent in 1..=3u64 {
            let reply = pods(&env, k, agent);
            assert_eq!(
                reply.status,
                200,
                "replica {} agent {agent}: {}",
                r + 1,
                reply.body
            );
            assert_eq!(reply.json()["agent"], format!("agent-{agent}"));
            assert_eq!(reply.json()["path"], "/api/v1/pods");
        }
    }
    // A body streams through the hop both ways.
    let body = vec![b'x'; 300_000];
    let echo = post(
        &format!("{}/api/v1/namespaces/default/echo", kas[0].k8s_proxy_url()),
        &env.admin_bearer(3),
        &body,
    );
    assert_eq!(echo.status, 201, "{}", echo.body);
    assert_eq!(echo.body.len(), body.len());
    assert_eq!(echo.header("x-agent"), Some("agent-3"));
    // The user's credentials never cross the hop; the forwarding rule applies as for a local request.
    let seen = scripts[1].wait_for("request");
    assert!(seen.head.headers.iter().all(|h| !h.name.starts_with("x-kas-")
        && !h.name.eq_ignore_ascii_case("authorization")));
    // Loads are visible to every replica; the metrics say Redis is up.
    let text = support::metrics(&kas[0]);
    assert_eq!(support::metric(&text, "kas_redis_up"), Some(1.0));
    // Connections to the other replicas are pooled: five more requests from kas[0] to agent 2,
    // one after the other, reuse its connection to replica 2 (a new connection, if the pool had
    // not got it back in time, resumes the TLS session: one full handshake per replica).
    for _ in 0..5 {
        assert_eq!(pods(&env, &kas[0], 2).status, 200);
    }
    let text = support::metrics(&kas[0]);
    let reused = support::metric(&text, "kas_peer_requests_reused_total").unwrap();
    let full = support::metric(&text, "kas_peer_connections_total{tls=\"full\"}").unwrap();
    assert!(reused >= 3.0, "{text}");
    assert_eq!(full, 2.0, "{text}");
    // Two requests at once need a second connection to replica 2: it resumes the TLS session.
    while scripts[1].seen.try_recv().is_ok() {}
    let url = format!(
        "{}/api/v1/namespaces/default/after-release",
        kas[0].k8s_proxy_url()
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (url, bearer) = (url.clone(), env.admin_bearer(2));
            std::thread::spawn(move || get(&url, Some(&bearer)))
        })
        .collect();
    scripts[1].wait_for("request");
    scripts[1].wait_for("request");
    scripts[1].release();
    scripts[1].release();
    for h in held {
        let reply = h.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "released");
    }
    let text = support::metrics(&kas[0]);
    let resumed = support::metric(&text, "kas_peer_connections_total{tls=\"resumed\"}").unwrap();
    let full = support::metric(&text, "kas_peer_connections_total{tls=\"full\"}").unwrap();
    assert!(resumed >= 1.0, "{text}");
    assert_eq!(full, 2.0, "{text}");
    eventually("every replica's load is read", || {
        let text = support::metrics(&kas[0]);
        (1..=3)
            .all(|r| {
                support::metric(
                    &text,
                    &format!("kas_replica_connections{{replica=\"{r}\"}}"),
                ) == Some(1.0)
            })
            .then_some(())
    });
    // Every replica lists every agent, with the replicas holding it.
    for k in &kas {
        eventually("the listing is cluster-wide", || {
            let list = get(
                &format!("{}/api/v1/agents", k.api_url()),
                Some(&env.admin_bearer(1)),
            )
            .json();
            (1..=3u64)
                .all(|a| {
                    list.as_array().unwrap().iter().any(|v| {
                        v["id"] == a
                            && v["connected"] == true
                            && v["replicas"] == serde_json::json!([a])
                    })
                })
                .then_some(())
        });
    }
    // Events of an agent held elsewhere reach a subscriber on any replica (served by the holder).
    let (head, mut sse) = support::raw_get(
        kas[0].api_addr(),
        "/api/v1/agents/2/events",
        &env.admin_bearer(2),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let mut seen = String::new();
    for _ in 0..100 {
        if seen.contains(": connected") {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(
            &support::read_chunk(&mut sse).unwrap(),
        ));
    }
    // An agent that disconnects is removed from its holder's entry.
    drop(agents);
    for _ in 0..100 {
        if seen.contains("\"agent_id\":2,\"connected\":false") {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(
            &support::read_chunk(&mut sse).unwrap(),
        ));
    }
    assert!(
        seen.contains("\"agent_id\":2,\"connected\":false"),
        "{seen}"
    );
    eventually("entries removed on disconnect", || {
        (1..=3u64)
            .all(|a| redis.hgetall(&holders_key(a)).is_empty())
            .then_some(())
    });
    // Not connected anywhere: 503 from any replica, after the routing deadline (short here).
    for k in kas {
        k.shutdown();
    }
}

#[test]
fn holder_killed_mid_request_then_agent_reconnects_elsewhere() {
    let (mut env, redis) = setup();
    env.config.routing.pending_request_deadline = Duration::from_secs(5);
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let r3 = start_replica(&env, &redis, 3, "replicas.secret");
    let script = Script::new("agent-1");
    let agent = FakeAgent::connect(&env, &r2, 1, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(1)).is_empty()).then_some(())
    });
    // In flight through r1 to r2, where the agent holds its answer.
    let url = format!("{}/api/v1/namespaces/default/slow", r1.k8s_proxy_url());
    let bearer = env.admin_bearer(1);
    let in_flight = std::thread::spawn(move || get(&url, Some(&bearer)));
    script.wait_for("request");
    // r2 dies (dropped: its tasks and sockets are gone at once, no withdrawal).
    drop(r2);
    drop(agent);
    let failed = in_flight.join().unwrap();
    // A typed failure, never a hang. Either the dying holder still answered that its tunnel died,
    // or the gateway saw the hop die: mid-answer that is a 502, before any answer this idempotent
    // GET without a body is tried on another holder (RFC 9110 §9.2.2) — none holds the agent any
    // more, so it waits for one until the routing deadline (503). Which one depends on how fast
    // the dropped replica's tasks end.
    match failed.status {
        502 => assert!(
            failed.body.contains("via replica-2") || failed.body.contains("kas stopped"),
            "{}",
            failed.body
        ),
        503 => assert!(failed.body.contains("not connected"), "{}", failed.body),
        s => panic!("{s}: {}", failed.body),
    }
    // r2's entry is stale now; the agent reconnects to r3; r1 skips the dead replica and reaches it.
    let script3 = Script::new("agent-1-again");
    let _agent = FakeAgent::connect(&env, &r3, 1, &script3);
    let reply = pods(&env, &r1, 1);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["agent"], "agent-1-again");
    // The stale field is garbage-collected by the live replicas once it expired.
    eventually("r2's stale entry collected", || {
        let h = redis.hgetall(&holders_key(1));
        h.iter().all(|(f, _)| f != "2").then_some(())
    });
    r1.shutdown();
    r3.shutdown();
}

/// A holder restarted on the same private address: the gateway's pooled connections to the old
/// process are dead; requests after the restart reach the new one (a dead pooled connection is
/// left, or hands the request back unsent and it goes on a new connection), none fails.
#[test]
fn a_holder_restarted_behind_pooled_connections_is_reached() {
    let (env, redis) = setup();
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let private = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let start_r2 = || {
        let mut replicas = replicas_config(&env, &redis, 2, "replicas.secret");
        replicas.private_address = private;
        start_with_replicas(&env, replicas)
    };
    let r2 = start_r2();
    let script = Script::new("agent-1");
    let agent = FakeAgent::connect(&env, &r2, 1, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(1)).is_empty()).then_some(())
    });
    for _ in 0..3 {
        assert_eq!(pods(&env, &r1, 1).status, 200);
    }
    eventually("a pooled connection to replica 2", || {
        (support::metric(&support::metrics(&r1), "kas_peer_pool_idle") >= Some(1.0)).then_some(())
    });
    drop(agent);
    drop(r2);
    let r2 = start_r2();
    let script = Script::new("agent-1-again");
    let _agent = FakeAgent::connect(&env, &r2, 1, &script);
    for _ in 0..3 {
        let reply = pods(&env, &r1, 1);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["agent"], "agent-1-again");
    }
    r1.shutdown();
    r2.shutdown();
}

#[test]
fn stale_entry_to_a_dead_replica_is_skipped() {
    let (env, redis) = setup();
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r3 = start_replica(&env, &redis, 3, "replicas.secret");
    let script = Script::new("agent-2");
    let _agent = FakeAgent::connect(&env, &r3, 2, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(2)).is_empty()).then_some(())
    });
    // Replica 0 (picked first: the lowest id) "holds" agent 2 for another minute: one entry points
    // to a closed port, then one to a black hole that accepts and never answers TLS.
    let expires = std::time::SystemTime::now() + Duration::from_secs(60);
    let ms = expires
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let closed = free_port();
    redis.hset(
        &holders_key(2),
        "0",
        &format!("{ms} https://127.0.0.1:{closed}"),
    );
    let reply = pods(&env, &r1, 2);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["agent"], "agent-2");
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr: SocketAddr = hole.local_addr().unwrap();
    redis.hset(&holders_key(2), "0", &format!("{ms} https://{hole_addr}"));
    let reply = pods(&env, &r1, 2);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["agent"], "agent-2");
    drop(hole);
    r1.shutdown();
    r3.shutdown();
}

#[test]
fn redis_restarted_replicas_serve_their_own_agents_and_republish() {
    let (env, mut redis) = setup();
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let s1 = Script::new("agent-1");
    let _a1 = FakeAgent::connect(&env, &r1, 1, &s1);
    let s2 = Script::new("agent-2");
    let _a2 = FakeAgent::connect(&env, &r2, 2, &s2);
    eventually("published", || {
        (!redis.hgetall(&holders_key(2)).is_empty()).then_some(())
    });
    assert_eq!(pods(&env, &r1, 2).status, 200);
    let port = redis.port;
    drop(redis);
    eventually("r1 says redis is down", || {
        let ready = get(&format!("{}/readyz", r1.api_url()), None);
        (ready.status == 200 && ready.body.contains("redis unreachable")).then_some(())
    });
    assert_eq!(
        support::metric(&support::metrics(&r1), "kas_redis_up"),
        Some(0.0)
    );
    // Its own agent still works.
    let own = pods(&env, &r1, 1);
    assert_eq!(own.status, 200, "{}", own.body);
    // Redis comes back empty: both replicas publish again and cross-replica routing works.
    redis = Redis::start_on(port);
    eventually("re-published", || {
        (!redis.hgetall(&holders_key(1)).is_empty() && !redis.hgetall(&holders_key(2)).is_empty())
            .then_some(())
    });
    let reply = pods(&env, &r1, 2);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ready = get(&format!("{}/readyz", r1.api_url()), None);
    assert!(!ready.body.contains("redis"), "{}", ready.body);
    r1.shutdown();
    r2.shutdown();
}

#[test]
fn replicas_with_different_secrets_refuse_each_other() {
    let (env, redis) = setup();
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "other.secret");
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &r1, 1, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(1)).is_empty()).then_some(())
    });
    let reply = pods(&env, &r2, 1);
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("shared secret"), "{}", reply.body);
    assert!(!reply.body.contains("another-secret"), "{}", reply.body);
    assert!(!reply.body.contains("a-shared-secret"), "{}", reply.body);
    // The agent was never asked.
    assert!(script.seen.try_recv().is_err());
    r1.shutdown();
    r2.shutdown();
}

#[test]
fn auth_failures_are_limited_cluster_wide() {
    let (mut env, redis) = setup();
    env.config.rate_limits.user_auth_failures.max_failures = 4;
    env.config.rate_limits.user_auth_failures.window = Duration::from_secs(60);
    env.config.routing.pending_request_deadline = Duration::from_secs(1);
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let bad = "Bearer pat:1:not-the-token";
    let url = |k: &Running| format!("{}/api/v1/pods", k.k8s_proxy_url());
    let count = || -> Option<u64> {
        let mut c = redis.client().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}:rate_limit:user_auth:*"))
            .query(&mut c)
            .unwrap();
        keys.first()
            .and_then(|k| redis::cmd("GET").arg(k).query(&mut c).ok())
    };
    // Two failures on each replica, four in the cluster: refused although neither replica reached
    // the limit alone. A replica learns the cluster-wide count with its own failure (the count is
    // updated off the request path), so each failure waits until Redis counted it: then r2 made
    // the fourth (not whichever replica's update happened to land last), and r1 learns with its
    // third.
    for (i, k) in [&r1, &r1, &r2, &r2].into_iter().enumerate() {
        assert_eq!(get(&url(k), Some(bad)).status, 401);
        let want = i as u64 + 1;
        eventually("the cluster-wide count is in Redis", || {
            (count() == Some(want)).then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let refused = get(&url(&r2), Some(bad));
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(!refused.body.contains("not-the-token"));
    assert_eq!(get(&url(&r1), Some(bad)).status, 401);
    std::thread::sleep(Duration::from_millis(300));
    // Three failures here, below the limit of 4: refused for the cluster's.
    assert_eq!(get(&url(&r1), Some(bad)).status, 429);
    // The valid token is not affected.
    assert_eq!(pods_status(&env, &r1), 503);
    r1.shutdown();
    r2.shutdown();
}

/// The status of a request with a valid token for agent 1 that is connected nowhere (waits for the
/// routing deadline).
fn pods_status(env: &Env, kas: &Running) -> u16 {
    pods(env, kas, 1).status
}

/// Reads an event stream until `needle` shows (bounded: 200 chunks, each within the read timeout);
/// everything read.
fn read_until(sse: &mut std::io::BufReader<std::net::TcpStream>, seen: &mut String, needle: &str) {
    for _ in 0..200 {
        if seen.contains(needle) {
            return;
        }
        match support::read_chunk(sse) {
            Some(c) => seen.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    assert!(seen.contains(needle), "{needle} not in {seen}");
}

/// `/api/v1/events` (every agent) is cluster-wide: a subscriber on replica 1 sees the events of
/// agents held by replica 2 (relayed over the private API while someone subscribes), each event
/// once (a relayed event is never relayed back), and nothing is relayed without subscribers.
#[test]
fn the_event_stream_is_cluster_wide() {
    let (env, redis) = setup();
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let relays = |k: &Running| support::metric(&support::metrics(k), "kas_peer_event_relays");
    eventually("both replicas in the directory", || {
        let text = support::metrics(&r1);
        (support::metric(&text, "kas_replica_connections{replica=\"2\"}").is_some()).then_some(())
    });
    // Nobody subscribes: nothing is relayed.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(relays(&r1), Some(0.0));
    let (head, mut sse1) = support::raw_get(r1.api_addr(), "/api/v1/events", &env.admin_bearer(1));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, mut sse2) = support::raw_get(r2.api_addr(), "/api/v1/events", &env.admin_bearer(1));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    eventually("each replica relays the other's events", || {
        (relays(&r1) == Some(1.0) && relays(&r2) == Some(1.0)).then_some(())
    });
    // Agent 2 on replica 2, agent 3 on replica 1: both streams see both, once each.
    let s2 = Script::new("agent-2");
    let a2 = FakeAgent::connect(&env, &r2, 2, &s2);
    let s3 = Script::new("agent-3");
    let _a3 = FakeAgent::connect(&env, &r1, 3, &s3);
    let (mut seen1, mut seen2) = (String::new(), String::new());
    for (sse, seen) in [(&mut sse1, &mut seen1), (&mut sse2, &mut seen2)] {
        read_until(sse, seen, "\"agent_id\":2,\"connected\":true");
        read_until(sse, seen, "\"agent_id\":3,\"connected\":true");
    }
    drop(a2);
    read_until(&mut sse1, &mut seen1, "\"agent_id\":2,\"connected\":false");
    read_until(&mut sse2, &mut seen2, "\"agent_id\":2,\"connected\":false");
    for seen in [&seen1, &seen2] {
        for needle in [
            "\"agent_id\":2,\"connected\":true",
            "\"agent_id\":3,\"connected\":true",
            "\"agent_id\":2,\"connected\":false",
        ] {
            assert_eq!(seen.matches(needle).count(), 1, "{needle} in {seen}");
        }
    }
    // The subscribers leave: the relays end.
    drop((sse1, sse2));
    eventually("relays end without subscribers", || {
        (relays(&r1) == Some(0.0) && relays(&r2) == Some(0.0)).then_some(())
    });
    r1.shutdown();
    r2.shutdown();
}

/// An upgraded session (`kubectl exec`, `port-forward`) through a replica that does not hold the
/// agent is carried over the private API to the holder: the 101 comes back, bytes flow both ways,
/// the client's half-close reaches the agent and the agent's answer after it still comes back; the
/// gateway writes the session's one audit record, the holder counts it in its session limit.
#[test]
fn upgrades_are_carried_to_the_replica_holding_the_agent() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (mut env, redis) = setup();
    env.config.routing.pending_request_deadline = Duration::from_secs(5);
    env.config.upgrades.max_sessions_per_agent = 1;
    env.config.audit.path = Some(env.dir.path().join("audit-r1.log"));
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    env.config.audit.path = Some(env.dir.path().join("audit-r2.log"));
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &r2, 1, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(1)).is_empty()).then_some(())
    });
    let exec = |kas: &Running| {
        let mut tcp = std::net::TcpStream::connect(kas.api_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            tcp,
            "GET /k8s-proxy/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\n\
             Host: kas\r\nAuthorization: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n",
            env.admin_bearer(1)
        )
        .unwrap();
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        // Bounded: a head of at most 50 lines.
        for _ in 0..50 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        (head, reader)
    };
    let (head, mut reader) = exec(&r1);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains("sec-websocket-protocol: v5.channel.k8s.io"),
        "{head}"
    );
    assert!(!lower.contains("x-kas-"), "{head}");
    // The session reached the agent on replica 2 without the user's credentials.
    let seen = script.wait_for("request");
    assert!(seen.head.headers.iter().all(|h| !h.name.starts_with("x-kas-")
        && !h.name.eq_ignore_ascii_case("authorization")));
    // The holder counts it: a second session of the agent, straight on the holder, is over its
    // limit of one.
    let (second, _) = exec(&r2);
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    // Bytes both ways, then the client's half-close: the agent's last words still arrive, then EOF.
    let mut tcp = reader.get_ref().try_clone().unwrap();
    tcp.write_all(b"hello through two replicas\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello through two replicas\n");
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    // One audit record of the session, on the gateway; none on the holder.
    let sessions = |file: &str| {
        std::fs::read_to_string(env.dir.path().join(file))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"upgrade\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let records = eventually("the gateway's session record", || {
        let r = sessions("audit-r1.log");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].contains("websocket"), "{}", records[0]);
    assert!(sessions("audit-r2.log").is_empty());
    // The holder's slot is free again: a new session through replica 1 is switched.
    let (again, _) = eventually("the holder's session ended", || {
        let (h, r) = exec(&r1);
        h.starts_with("HTTP/1.1 101").then_some((h, r))
    });
    assert!(again.starts_with("HTTP/1.1 101"));
    r1.shutdown();
    r2.shutdown();
}
