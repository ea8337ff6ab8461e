//! hyper's timer for the HTTP API, on smol's timers, with deadlines that move later for free.
//!
//! hyper re-arms a connection's header read timeout for every request it reads (a deadline a few
//! seconds later than the last one). With `smol-hyper`'s timer each re-arm deregisters and registers
//! an `async-io` timer, and every registration wakes the reactor (a system call, and often another
//! thread) — once per request. [`LazyTimer`]'s sleeps keep the timer registered at the earlier
//! deadline and only remember the later one: when the registered timer fires before the current
//! deadline it is re-armed once, so a busy keep-alive connection touches the reactor about once
//! per timeout period instead of once per request. A sleep still never resolves before its
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::Sleep;

/// hyper's [`hyper::rt::Timer`] with lazily re-armed sleeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct LazyTimer;

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(LazySleep::at(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LazySleep>() {
            Some(s) => s.get_mut().move_to(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A sleep until `deadline`, its timer registered at `armed` (≤ `deadline` while it waits).
struct LazySleep {
    deadline: Instant,
    armed: Instant,
    timer: smol::Timer,
}

impl LazySleep {
    /// A sleep until `deadline`, its timer registered there.
    fn at(deadline: Instant) -> LazySleep {
        LazySleep {
            deadline,
            armed: deadline,
            timer: smol::Timer::at(deadline),
        }
    }

    fn move_to(&mut self, deadline: Instant) {
        self.deadline = deadline;
        // Later: the registered timer fires first and re-arms (see poll). Earlier: re-arm now.
        if deadline < self.armed {
            self.armed = deadline;
            self.timer.set_at(deadline);
        }
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Bounded: after one re-arm the timer is registered at the deadline itself.
        for _ in 0..2 {
            if Pin::new(&mut this.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.armed >= this.deadline {
                return Poll::Ready(());
            }
            this.armed = this.deadline;
            this.timer.set_at(this.deadline);
        }
        Poll::Pending
    }
}

impl Sleep for LazySleep {}

/// One [`LazySleep`] the requests of one HTTP connection take in turn for their response
/// timeout (kas's proxy waits at most the routing's response timeout for the agent's answer).
/// A fresh `smol::Timer` per request registered a timer with the reactor and woke it, once per
/// request; this one stays registered (at the earliest deadline it was given), each request moves
/// its deadline later for free, and it re-arms about once per timeout period. A request that
/// finds it taken (never on HTTP/1.1, whose requests on one connection come one after another)
/// gets a sleep of its own.
#[derive(Clone, Default)]
pub struct ConnectionSleep(Arc<Mutex<Option<LazySleep>>>);

impl std::fmt::Debug for ConnectionSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSleep").finish_non_exhaustive()
    }
}

impl ConnectionSleep {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<LazySleep>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves at `deadline` (never before). Dropping it before then returns the timer to the
    /// connection for its next request.
    pub async fn until(&self, deadline: Instant) {
        let sleep = match self.slot().take() {
            Some(mut s) => {
                s.move_to(deadline);
                s
            }
            None => LazySleep::at(deadline),
        };
        let mut back = PutBack {
            owner: self,
            sleep: Some(sleep),
        };
        if let Some(sleep) = back.sleep.as_mut() {
            sleep.await;
        }
        // Fired: its smol timer is spent (a one-shot timer does not fire again after `set_at`
        // unless polled anew); the next request makes a fresh one.
        back.sleep = None;
    }

    /// Whether a timer waits in the slot for the next request (tests).
    #[cfg(test)]
    fn holds_timer(&self) -> bool {
        self.slot().is_some()
    }
}

/// Gives a sleep that did not fire back to its connection.
struct PutBack<'a> {
    owner: &'a ConnectionSleep,
    sleep: Option<LazySleep>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.sleep.take() {
            *self.owner.slot() = Some(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    #[test]
    fn a_moved_deadline_is_kept_and_an_earlier_one_fires() {
        smol::block_on(async {
            let timer = LazyTimer;
            let start = Instant::now();
            let mut sleep = timer.sleep(Duration::from_millis(20));
            // Later: the sleep outlasts its first deadline.
            timer.reset(&mut sleep, start + Duration::from_millis(60));
            sleep.as_mut().await;
            assert!(start.elapsed() >= Duration::from_millis(60));
            // Earlier than the registered timer: it fires at the earlier deadline, not later.
            let mut sleep = timer.sleep(Duration::from_secs(3600));
            timer.reset(&mut sleep, Instant::now() + Duration::from_millis(10));
            assert!(fires_within(sleep.as_mut(), Duration::from_secs(60)).await);
        });
    }

    /// Waits for `sleep` at most `limit`: whether it fired.
    async fn fires_within(sleep: impl Future<Output = ()>, limit: Duration) -> bool {
        futures_lite::future::or(
            async {
                sleep.await;
                true
            },
            async {
                smol::Timer::after(limit).await;
                false
            },
        )
        .await
    }

    #[test]
    fn a_connection_sleep_is_reused_by_the_next_request_and_still_fires() {
        smol::block_on(async {
            let conn = ConnectionSleep::default();
            // A request answered before its deadline returns the timer to the connection.
            let far = Instant::now() + Duration::from_secs(3600);
            assert!(!fires_within(conn.until(far), Duration::from_millis(5)).await);
            assert!(conn.holds_timer(), "the timer went back to the connection");
            // The next request reuses it with its own (here earlier) deadline, which still fires.
            let start = Instant::now();
            let near = start + Duration::from_millis(20);
            assert!(fires_within(conn.until(near), Duration::from_secs(60)).await);
            assert!(start.elapsed() >= Duration::from_millis(20));
            // A fired timer is not kept; the one after gets a fresh one that fires too.
            assert!(!conn.holds_timer());
            let near = Instant::now() + Duration::from_millis(10);
            assert!(fires_within(conn.until(near), Duration::from_secs(60)).await);
        });
    }

    #[test]
    fn a_reused_connection_sleep_with_a_later_deadline_does_not_fire_early() {
        smol::block_on(async {
            let conn = ConnectionSleep::default();
            let start = Instant::now();
            // Registered at +20 ms, then given back unfired.
            let first = start + Duration::from_millis(20);
            assert!(!fires_within(conn.until(first), Duration::from_millis(1)).await);
            // The next request's deadline is later: the registered timer fires first, and the
            // sleep waits on until its own deadline.
            let later = start + Duration::from_millis(80);
            conn.until(later).await;
            assert!(start.elapsed() >= Duration::from_millis(80));
        });
    }
}
