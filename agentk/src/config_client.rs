//! The `config` stream (protocol/SERVICES.md §8): after each handshake agentk opens one stream to kas
//! naming the commit (and content fingerprint) of the configuration it applied last, and applies
//! every configuration kas sends, live, without a restart.
//!
//! ```text
//!  agentk ──WATCH / (x-config-commit, x-config-fingerprint)──▶ kas: 200 (404: no config project)
//!  agentk ◀──ConfigUpdate (length-delimited JSON)─────────── on open if agentk's is outdated, then
//!        │                                                   on every new commit with new content
//!        ▼ ConfigHandle::apply
//!  log level (LogLevelControl) ── watch channel: Option<Arc<AppliedConfig>> ──▶ GitOps workers, …
//! ```
//!
//! **Applying.** `observability.logging` goes to the [`LogLevelControl`] the program gave
//! ([`crate::Config::log_level`]; the binary's is a `tracing-subscriber` reload handle); then the
//! whole configuration is published on a `tokio::sync::watch` channel ([`ConfigHandle::subscribe`],
//! [`crate::Agent::applied_config`]): the commit, the fingerprint, the typed [`AgentConfig`]
//! (`gitops.manifest_projects` for the sync workers) and the access grants (`ci_access`,
//! `user_access`, for issue 14). A configuration with the fingerprint already applied is not
//! applied again. The last applied configuration outlives connections: the next stream names it,
//! so kas resends nothing.
//!
//! **Ending.** The stream ends when the connection drains (GOAWAY either way) or closes: agentk
//! finishes its direction and waits up to 2 s for kas's. If kas ends its direction first, agentk
//! finishes its own and opens a new stream on the next connection. A non-200 answer (404 `no-config`:
//! the agent has no config project; or a RESET from a kas without the service) is logged and tried
//! again on the next connection. A message that does not frame or decode, whose fingerprint does not
//! match its content or whose commit is not a Git object id is kas's protocol violation: the stream
//! is reset with `ErrorCode::Protocol`, the violation logged, and the configuration in force stays.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_config::{AgentConfig, CiAccess, ConfigUpdate, Fingerprint, Logging, UserAccess};
use protocol::ErrorCode;
use protocol::service::{self, ConfigHead};
use runtime_tokio::{Connection, RecvStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use protocol::cache::MessageDecoder;

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// After agentk finished its direction, how long kas may take to finish its own.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The configuration agentk applied last, as published on the watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedConfig {
    /// The config project's commit it was read at.
    pub commit: String,
    /// Its content fingerprint (what kas compares).
    pub fingerprint: Fingerprint,
    /// What agentk acts on: `observability.logging` and `gitops.manifest_projects`.
    pub config: AgentConfig,
    /// `ci_access` of the file (kept for the authorisation work of issue 14).
    pub ci_access: CiAccess,
    /// `user_access` of the file (kept for the authorisation work of issue 14).
    pub user_access: UserAccess,
    /// When agentk applied it.
    pub applied_at: SystemTime,
}

/// The receiving end of the applied configuration: `None` until kas sent one.
pub type AppliedConfigReceiver = watch::Receiver<Option<Arc<AppliedConfig>>>;

/// Sets agentk's log levels from `observability.logging`; an error is logged and the configuration
/// is still applied otherwise.
pub type LogLevelControl = Arc<dyn Fn(&Logging) -> Result<(), String> + Send + Sync>;

/// The `tracing` filter for `logging`: agentk's level, and `grpc_level` for the transport libraries
/// (hyper, h2, rustls, tower).
pub fn filter_directives(logging: &Logging) -> String {
    let level = logging.level.as_filter();
    let transport = logging.grpc_level.as_filter();
    format!(
        "{level},hyper={transport},hyper_util={transport},h2={transport},rustls={transport},tower={transport}"
    )
}

/// Where configurations are applied; cheap to clone (one per connection).
#[derive(Clone)]
pub struct ConfigHandle {
    tx: Arc<watch::Sender<Option<Arc<AppliedConfig>>>>,
    log: Option<LogLevelControl>,
}

impl std::fmt::Debug for ConfigHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigHandle")
            .field(
                "applied",
                &self.tx.borrow().as_ref().map(|a| a.commit.clone()),
            )
            .field("log_level_control", &self.log.is_some())
            .finish()
    }
}

impl ConfigHandle {
    /// Nothing applied yet; `log` sets the log level (none: the level is not changed).
    pub fn new(log: Option<LogLevelControl>) -> ConfigHandle {
        ConfigHandle {
            tx: Arc::new(watch::channel(None).0),
            log,
        }
    }

    /// A receiver of every applied configuration (it sees the current one at once).
    pub fn subscribe(&self) -> AppliedConfigReceiver {
        self.tx.subscribe()
    }

    /// What agentk has, for the request head.
    pub fn have(&self) -> ConfigHead {
        match self.tx.borrow().as_ref() {
            Some(a) => ConfigHead {
                commit: Some(a.commit.clone()),
                fingerprint: Some(a.fingerprint.0.clone()),
            },
            None => ConfigHead::default(),
        }
    }

    /// Applies `update` unless its content is applied already; returns whether it did.
    pub fn apply(&self, update: ConfigUpdate) -> bool {
        // Under the channel's lock: two streams (a GOAWAY handover) never apply concurrently.
        self.tx.send_if_modified(|current| {
            if current
                .as_ref()
                .is_some_and(|c| c.fingerprint == update.fingerprint)
            {
                return false;
            }
            let logging = update.config.observability.logging;
            if let Some(log) = &self.log
                && let Err(error) = log(&logging)
            {
                tracing::warn!(%error, "cannot change the log level");
            }
            tracing::info!(
                commit = %update.commit,
                fingerprint = %update.fingerprint,
                log_level = logging.level.as_filter(),
                manifest_projects = update.config.gitops.manifest_projects.len(),
                "configuration applied"
            );
            *current = Some(Arc::new(AppliedConfig {
                commit: update.commit,
                fingerprint: update.fingerprint,
                config: update.config,
                ci_access: update.ci_access,
                user_access: update.user_access,
                applied_at: SystemTime::now(),
            }));
            true
        })
    }
}

/// Why the stream ended.
#[derive(Debug)]
enum End {
    Draining,
    KasFinished,
    Protocol(String),
    Failed(String),
}

/// Runs the config stream of `conn` until it ends (see the module documentation).
pub async fn run(conn: Connection, handle: ConfigHandle) {
    if conn.is_draining() || conn.is_closed() {
        return;
    }
    let stream = match conn.open(service::config_request_head(&handle.have()), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open the config stream");
            return;
        }
    };
    let answered = tokio::select! {
        r = stream.response() => r,
        () = draining(&conn) => {
            let _ = stream.finish();
            return;
        }
    };
    match answered {
        Ok(h) if h.status == 200 => {}
        Ok(h) if h.status == 404 => {
            tracing::info!("kas has no configuration for this agent; running with the current one");
            let _ = stream.finish();
            return;
        }
        Ok(h) => {
            tracing::warn!(
                status = h.status,
                "kas refused the config stream; retrying on the next connection"
            );
            let _ = stream.finish();
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "the config stream failed before kas answered");
            return;
        }
    }
    let (recv, mut send) = stream.split();
    let end = tokio::select! {
        e = read_loop(&recv, &handle) => e,
        () = draining(&conn) => End::Draining,
    };
    match end {
        End::Protocol(error) => {
            tracing::warn!(%error, "kas sent a bad message on the config stream; resetting it");
            send.reset(ErrorCode::Protocol);
        }
        End::Failed(error) => tracing::debug!(%error, "config stream ended"),
        End::KasFinished => {
            tracing::info!("kas ended the config stream; reopening on the next connection");
            let _ = send.shutdown().await;
        }
        End::Draining => {
            if send.shutdown().await.is_ok() {
                let _ = tokio::time::timeout(FINISH_WAIT, drain(&recv)).await;
            }
        }
    }
}

/// Decodes kas's messages and applies them.
async fn read_loop(recv: &RecvStream, handle: &ConfigHandle) -> End {
    let mut decoder = MessageDecoder::default();
    // Bounded by the stream: every iteration consumes a chunk or ends.
    loop {
        let chunk = match recv.read_chunk(READ_CHUNK).await {
            None => {
                return match decoder.finish() {
                    Ok(()) => End::KasFinished,
                    Err(e) => End::Protocol(e.to_string()),
                };
            }
            Some(Err(e)) => return End::Failed(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        decoder.push(&chunk);
        // Bounded by the buffered octets.
        loop {
            let bytes = match decoder.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return End::Protocol(e.to_string()),
            };
            let update = match decode(&bytes) {
                Ok(u) => u,
                Err(e) => return End::Protocol(e),
            };
            handle.apply(update);
        }
    }
}

/// One message from kas, checked.
pub fn decode(bytes: &[u8]) -> Result<ConfigUpdate, String> {
    let update = ConfigUpdate::from_json(bytes).map_err(|e| e.to_string())?;
    if !service::is_commit_id(&update.commit) {
        return Err(format!(
            "the commit {:?} is not a Git object id",
            update.commit.chars().take(80).collect::<String>()
        ));
    }
    Ok(update)
}

/// Resolves once the connection drains (GOAWAY either way) or closes.
async fn draining(conn: &Connection) {
    tokio::select! {
        () = crate::agent::draining(conn) => {}
        _ = conn.closed() => {}
    }
}

/// Reads and discards until kas ends its direction.
async fn drain(recv: &RecvStream) {
    // Bounded by the stream (and by FINISH_WAIT at the caller).
    while let Some(Ok(_)) = recv.read_chunk(READ_CHUNK).await {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent_config::{ConfigFile, LogLevel, ProjectId};
    use std::sync::Mutex;

    fn update(commit: &str, level: &str) -> ConfigUpdate {
        let file = ConfigFile::parse(&format!("observability: {{logging: {{level: {level}}}}}\n"))
            .unwrap();
        ConfigUpdate::new(commit, &file, &ProjectId::new("group/config").unwrap())
    }

    #[test]
    fn applying_sets_the_log_level_and_publishes_once_per_content() {
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        let handle = ConfigHandle::new(Some(Arc::new(move |l: &Logging| {
            seen.lock().unwrap().push(l.level);
            Ok(())
        })));
        let mut rx = handle.subscribe();
        assert!(rx.borrow_and_update().is_none());
        assert_eq!(handle.have(), ConfigHead::default());
        let c1 = "1".repeat(40);
        assert!(handle.apply(update(&c1, "debug")));
        assert!(rx.has_changed().unwrap());
        let applied = rx.borrow_and_update().clone().unwrap();
        assert_eq!(applied.commit, c1);
        assert_eq!(applied.config.observability.logging.level, LogLevel::Debug);
        assert_eq!(handle.have().commit.as_deref(), Some(c1.as_str()));
        // The same content under another commit is not applied again.
        assert!(!handle.apply(update(&"2".repeat(40), "debug")));
        assert!(!rx.has_changed().unwrap());
        assert!(handle.apply(update(&"3".repeat(40), "error")));
        assert_eq!(
            *levels.lock().unwrap(),
            vec![LogLevel::Debug, LogLevel::Error]
        );
    }

    #[test]
    fn messages_with_bad_commits_or_fingerprints_are_refused() {
        let good = update(&"a".repeat(40), "info");
        assert!(decode(&good.to_json()).is_ok());
        assert!(decode(&update("main", "info").to_json()).is_err());
        let mut forged = good.clone();
        forged.config.observability.logging.level = LogLevel::Off;
        assert!(decode(&forged.to_json()).is_err());
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn filters_name_both_levels() {
        let f = filter_directives(&Logging {
            level: LogLevel::Debug,
            grpc_level: LogLevel::Warning,
        });
        assert!(f.starts_with("debug,"));
        assert!(f.contains("h2=warn"));
        assert!(f.parse::<tracing_subscriber::EnvFilter>().is_ok());
    }
}
