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
use support::{Env, FakeAgent, Script, eventually, get, post};

/// A `redis-server` on a loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let mut config = env.config.clone();
    config.replicas = Some(replicas_config(env, redis, id, secret_file));
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
    assert_eq!(failed.status, 502, "{}", failed.body);
    // Either the gateway saw the hop die, or the dying holder still answered that its tunnel did.
    assert!(
        failed.body.contains("via replica-2") || failed.body.contains("kas stopped"),
        "{}",
        failed.body
    );
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
    for k in [&r1, &r1, &r2, &r2] {
        assert_eq!(get(&url(k), Some(bad)).status, 401);
    }
    // Two failures on each replica, four in the cluster: refused although neither replica reached
    // the limit alone. A replica learns the cluster-wide count with its own next failure (the count
    // is updated off the request path): r2 made the fourth, r1 learns with its third.
    eventually("the cluster-wide count is in Redis", || {
        let mut c = redis.client().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}:rate_limit:user_auth:*"))
            .query(&mut c)
            .unwrap();
        let n: Option<u64> = keys
            .first()
            .and_then(|k| redis::cmd("GET").arg(k).query(&mut c).ok());
        (n == Some(4)).then_some(())
    });
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

/// An upgraded session (`kubectl exec`, `port-forward`) is served only by a replica holding the
/// agent's tunnel: the private API carries no upgraded bytes, so a replica without the agent answers
/// 503 at the routing deadline instead of forwarding (never a hang, never a half-working session),
/// while an ordinary request to the same replica is forwarded.
#[test]
fn upgrades_are_served_only_where_the_agent_is() {
    use std::io::{BufRead, BufReader, Write};
    let (mut env, redis) = setup();
    env.config.routing.pending_request_deadline = Duration::from_secs(1);
    let r1 = start_replica(&env, &redis, 1, "replicas.secret");
    let r2 = start_replica(&env, &redis, 2, "replicas.secret");
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &r2, 1, &script);
    eventually("published", || {
        (!redis.hgetall(&holders_key(1)).is_empty()).then_some(())
    });
    assert_eq!(
        pods(&env, &r1, 1).status,
        200,
        "ordinary requests are forwarded"
    );
    let mut tcp = std::net::TcpStream::connect(r1.api_addr()).unwrap();
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
    let mut status = String::new();
    BufReader::new(tcp).read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 503"), "{status:?}");
}
