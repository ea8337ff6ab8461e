//! `--replicas N`: N kas replicas on one Redis (docs/replicas.md). The demo starts `redis-server`
//! itself on a free loopback port (no persistence), or says which Debian package to install.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kas::config::ReplicasConfig;

/// The Debian package that has `redis-server`.
pub const REDIS_PACKAGE: &str = "redis-server";

/// Why Redis could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `redis-server` is not installed.
    #[error(
        "--replicas needs Redis, and `redis-server` is not installed ({0}): install the Debian package {REDIS_PACKAGE} (apt-get install {REDIS_PACKAGE})"
    )]
    NotInstalled(String),
    /// It did not come up.
    #[error("redis-server did not accept connections on {0} within 10s")]
    NotReady(SocketAddr),
    /// No free port.
    #[error("no free loopback port for redis-server: {0}")]
    Port(std::io::Error),
}

/// A `redis-server` the demo started; killed when dropped.
#[derive(Debug)]
pub struct DemoRedis {
    addr: SocketAddr,
    child: Child,
}

impl DemoRedis {
    /// Starts `redis-server` on a free loopback port, without persistence.
    pub fn start() -> Result<DemoRedis, RedisError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(RedisError::Port)?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| RedisError::NotInstalled(e.to_string()))?;
        let mut redis = DemoRedis { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Bounded: 10 s of 50 ms attempts.
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline || matches!(redis.child.try_wait(), Ok(Some(_))) {
                return Err(RedisError::NotReady(addr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `replicas:` section of replica `id` of the demo.
pub fn config(redis: &DemoRedis, id: u32, ca_file: &Path, secret_file: PathBuf) -> ReplicasConfig {
    ReplicasConfig {
        redis_url: redis.url(),
        key_prefix: "kas-demo".into(),
        replica_id: id,
        private_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise_host: "127.0.0.1".into(),
        tls: None,
        ca_file: ca_file.to_owned(),
        server_name: "localhost".into(),
        shared_secret_file: secret_file,
        find_timeout: Duration::from_secs(1),
        refresh_period: Duration::from_secs(2),
        entry_ttl: Duration::from_secs(6),
        // Agent N dials replica (N - 1) % replicas + 1: even, so shedding never triggers here.
        balance: kas::config::BalanceConfig::default(),
    }
}
