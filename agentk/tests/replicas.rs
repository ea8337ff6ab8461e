//! agentk holding connections to several kas replicas through one load-balanced address: two tunnel
//! servers (runtime-tokio's, each announcing its `replica_id` and `connections_wanted = 2` in ACCEPT)
//! behind a small round-robin TCP balancer written here. The agent ends with one connection to each
//! replica (closing a duplicate the balancer gave it), keeps serving on one when the other replica
//! dies (its TCP connections cut, no GOAWAY), and dials back to two once the replica returns.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use protocol::service::K8S_API;
use protocol::tunnel::ReplicaInfo;
use runtime_tokio::{Accepted, Connection, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tunnel_tls::ThrowawayPki;

/// A kas replica: a tunnel server whose ACCEPT names it, keeping every accepted connection.
struct Replica {
    name: &'static str,
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Connection>>>,
    task: JoinHandle<()>,
}

impl Replica {
    async fn start(pki: &ThrowawayPki, name: &'static str) -> Replica {
        let tls = tunnel_tls::server_config_with(pki.server.identity().expect("identity"), None)
            .expect("server tls config");
        let serial = Arc::new(AtomicUsize::new(0));
        let auth = move |hello: protocol::HelloInfo, _peer: SocketAddr| {
            let n = serial.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if hello.token != TOKEN {
                    return Err(protocol::proto::Reject::default());
                }
                Ok(Accepted {
                    agent_id: 42,
                    connection_id: format!("{name}-{n}"),
                })
            }
        };
        let config = protocol::Config {
            replica: ReplicaInfo {
                replica_id: name.into(),
                connections_wanted: 2,
            },
            ..protocol::Config::default()
        };
        let server = Server::bind("127.0.0.1:0", Some(tls), config, auth)
            .await
            .expect("bind replica");
        let addr = server.local_addr();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok(accepted) = server.accept().await {
                c.lock().expect("conns lock").push(accepted.connection);
            }
        });
        Replica {
            name,
            addr,
            conns,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.conns.lock().expect("conns lock").len()
    }

    /// Connections neither closed nor draining.
    fn serving(&self) -> Vec<Connection> {
        self.conns
            .lock()
            .expect("conns lock")
            .iter()
            .filter(|c| !c.is_closed() && !c.is_draining())
            .cloned()
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A round-robin TCP balancer over a fixed rotation of upstreams (an upstream may appear twice, to
/// send consecutive dials to the same replica). An upstream marked down gets no new connections
/// (the next in the rotation is tried, as a health-checking balancer does), and marking it down
/// cuts its relayed connections at once: to the agent, that replica crashed.
struct Balancer {
    addr: SocketAddr,
    down: Arc<Vec<AtomicBool>>,
    relays: Arc<Mutex<Vec<(usize, AbortHandle)>>>,
    task: JoinHandle<()>,
}

impl Balancer {
    async fn start(rotation: Vec<(usize, SocketAddr)>, upstreams: usize) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind balancer");
        let addr = listener.local_addr().expect("balancer addr");
        let down: Arc<Vec<AtomicBool>> =
            Arc::new((0..upstreams).map(|_| AtomicBool::new(false)).collect());
        let relays = Arc::new(Mutex::new(Vec::new()));
        let (d, r) = (down.clone(), relays.clone());
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let mut server = None;
                for _ in 0..rotation.len() {
                    let (i, to) = rotation[next % rotation.len()];
                    next += 1;
                    if d[i].load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Ok(s) = TcpStream::connect(to).await {
                        server = Some((i, s));
                        break;
                    }
                }
                let Some((i, mut server)) = server else {
                    continue;
                };
                let relay = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                r.lock()
                    .expect("relays lock")
                    .push((i, relay.abort_handle()));
            }
        });
        Balancer {
            addr,
            down,
            relays,
            task,
        }
    }

    /// Upstream `i` crashes: its relayed connections are cut, new ones go elsewhere.
    fn kill(&self, i: usize) {
        self.down[i].store(true, Ordering::SeqCst);
        for (j, relay) in self.relays.lock().expect("relays lock").iter() {
            if *j == i {
                relay.abort();
            }
        }
    }

    fn revive(&self, i: usize) {
        self.down[i].store(false, Ordering::SeqCst);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
        for (_, relay) in self.relays.lock().expect("relays lock").iter() {
            relay.abort();
        }
    }
}

/// A k8s-api GET of `/version` over `conn` answers 200.
async fn version_works(conn: &Connection, replica: &str) {
    let a = request(conn, head(K8S_API, "GET", "/version", vec![]), &[]).await;
    assert_eq!(
        a.head.status,
        200,
        "through {replica}: {}",
        String::from_utf8_lossy(&a.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_holds_two_replicas_and_survives_one_dying() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let a = Replica::start(&pki, "kas-a").await;
    let b = Replica::start(&pki, "kas-b").await;
    // The first two dials land on kas-a: the second is a duplicate the agent must close.
    let lb = Balancer::start(vec![(0, a.addr), (0, a.addr), (1, b.addr)], 2).await;
    let agent = spawn_agent(agent_config(&pki, lb.addr, &c.kubeconfig));

    eventually("one serving connection on each replica", || {
        a.serving().len() == 1 && b.serving().len() == 1
    })
    .await;
    assert!(
        a.accepted() >= 2,
        "the balancer's second dial to kas-a was accepted (then closed as a duplicate)"
    );
    eventually("the duplicate on kas-a is closed", || {
        a.conns
            .lock()
            .expect("conns lock")
            .iter()
            .filter(|c| !c.is_closed())
            .count()
            == 1
    })
    .await;
    let on_a = a.serving().remove(0);
    let on_b = b.serving().remove(0);
    version_works(&on_a, a.name).await;
    version_works(&on_b, b.name).await;

    // kas-b crashes: its TCP connections are cut, no GOAWAY. kas-a serves at once.
    lb.kill(1);
    version_works(&on_a, a.name).await;
    for _ in 0..5 {
        version_works(&on_a, a.name).await;
    }
    // While kas-b is down, every dial lands on kas-a: duplicates, closed, never kept.
    let before = a.accepted();
    eventually("the agent dials again (a duplicate on kas-a)", || {
        a.accepted() > before
    })
    .await;
    // The agent lets the duplicate go at once (GOAWAY); kas-a sees that a moment later.
    eventually("the duplicate on kas-a is let go", || {
        a.serving().len() == 1
    })
    .await;
    assert_eq!(a.serving().len(), 1, "two connections kept to kas-a");
    assert!(!on_a.is_closed() && !on_a.is_draining());

    // kas-b returns: the agent holds both again.
    let b_before = b.accepted();
    lb.revive(1);
    eventually("a new serving connection on kas-b", || {
        b.accepted() > b_before && b.serving().len() == 1
    })
    .await;
    version_works(&b.serving().remove(0), b.name).await;
    assert_eq!(a.serving().len(), 1);
    version_works(&on_a, a.name).await;

    agent.shutdown().await.expect("clean shutdown");
}
