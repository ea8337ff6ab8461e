//! When kas's Git pollers poll: the one scheduling loop both the agent-configuration poller
//! ([`crate::agent_config`]) and the manifest poller ([`crate::gitops_poller`]) run.
//!
//! A full poll at start and then every `period`; between them, a wake-up (the push webhook, or a
//! request for a full poll) polls at once: the repositories queued in `pending`, or everything when
//! `full_requested` was set. Ends when `stop` closes or the wake-up channel's senders are gone.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use git_mirror::RepoId;

/// What a poller hands to [`run`].
pub struct Schedule<'a> {
    /// Time between full polls.
    pub period: Duration,
    /// Wake-ups between full polls.
    pub wake: &'a async_channel::Receiver<()>,
    /// Repositories to poll at the next wake-up (taken, so each is polled once per wake-up).
    pub pending: &'a Mutex<BTreeSet<RepoId>>,
    /// Set to ask for a full poll at the next wake-up (the manifest poller's `request_poll`).
    pub full_requested: Option<&'a AtomicBool>,
}

/// Runs `poll` on `schedule` until `stop` closes: `poll(None)` is a full poll, `poll(Some(repos))`
/// polls only `repos`.
pub async fn run<F, Fut>(schedule: Schedule<'_>, stop: async_channel::Receiver<()>, mut poll: F)
where
    F: FnMut(Option<BTreeSet<RepoId>>) -> Fut,
    Fut: Future<Output = ()>,
{
    enum Next {
        Stop,
        Wake,
        Full,
    }
    let full_requested = || {
        schedule
            .full_requested
            .is_some_and(|f| f.swap(false, Ordering::Relaxed))
    };
    let mut next_full = Instant::now();
    loop {
        if Instant::now() >= next_full || full_requested() {
            poll(None).await;
            next_full = Instant::now() + schedule.period;
            continue;
        }
        let next = futures_lite::future::or(
            async {
                let _ = stop.recv().await;
                Next::Stop
            },
            futures_lite::future::or(
                async {
                    match schedule.wake.recv().await {
                        Ok(()) => Next::Wake,
                        Err(_) => Next::Stop,
                    }
                },
                async {
                    smol::Timer::at(next_full).await;
                    Next::Full
                },
            ),
        )
        .await;
        match next {
            Next::Stop => return,
            Next::Full => {}
            Next::Wake => {
                let repos = std::mem::take(
                    &mut *schedule.pending.lock().unwrap_or_else(|p| p.into_inner()),
                );
                if !repos.is_empty() {
                    poll(Some(repos)).await;
                }
            }
        }
    }
}
