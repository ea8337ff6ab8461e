//! hyper's timer for the HTTP API, on smol's timers, with deadlines that move later for free and one
//! timer per connection.
//!
//! hyper arms a connection's header read timeout for every request it waits for (a deadline a few
//! seconds later than the last one), and drops it once the head is read. With `smol-hyper`'s timer
//! each of these registers an `async-io` timer, and every registration wakes the reactor (an
//! `eventfd` write, and often another thread) — once per request. Here a connection keeps one
//! [`LazySleep`] in its [`ConnectionSleep`] slot: a sleep hyper (or the proxy's response timeout)
//! drops before it fired goes back to the slot still registered, and the next one takes it and only
//! remembers its new deadline; when the registered timer fires before the current deadline it is
//! re-armed once. A busy keep-alive connection so touches the reactor about once per timeout period
//! instead of once per request. A sleep still never resolves before its deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::Sleep;

/// hyper's [`hyper::rt::Timer`] with lazily re-armed sleeps, kept in a connection's slot between
/// uses ([`LazyTimer::for_connection`]; `default()`: a slot of its own).
#[derive(Debug, Clone, Default)]
pub struct LazyTimer {
    slot: ConnectionSleep,
}

impl LazyTimer {
    /// The timer of the connection whose requests use `sleep` for their response timeout: both
    /// take the same registered timer in turn.
    pub fn for_connection(sleep: &ConnectionSleep) -> LazyTimer {
        LazyTimer {
            slot: sleep.clone(),
        }
    }
}

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.slot.take(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<SlotSleep>() {
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

/// The one timer of an HTTP connection, which hyper's header read timeout and the proxied
/// requests' response timeouts (kas's proxy waits at most the routing's response timeout for the
/// agent's answer) take in turn: it stays registered (at the earliest deadline it was given), each
/// use moves its deadline later for free, and it re-arms about once per timeout period. A use that
/// finds it taken gets a timer of its own, which goes back to the slot if that is empty then.
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

    /// A sleep until `deadline` on the slot's timer (or a new one if it is taken), which goes back
    /// to the slot if dropped before it fired.
    fn take(&self, deadline: Instant) -> SlotSleep {
        let sleep = match self.slot().take() {
            Some(mut s) => {
                s.move_to(deadline);
                s
            }
            None => LazySleep::at(deadline),
        };
        SlotSleep {
            owner: self.clone(),
            deadline,
            sleep: Some(sleep),
        }
    }

    /// Resolves at `deadline` (never before). Dropping it before then returns the timer to the
    /// connection for its next use.
    pub async fn until(&self, deadline: Instant) {
        self.take(deadline).await;
    }

    /// Whether a timer waits in the slot for the next use (tests).
    #[cfg(test)]
    fn holds_timer(&self) -> bool {
        self.slot().is_some()
    }
}

/// A sleep on a connection's timer: gives the timer back to the connection when dropped unfired.
struct SlotSleep {
    owner: ConnectionSleep,
    /// The deadline, also once fired (a fired sleep holds no timer).
    deadline: Instant,
    sleep: Option<LazySleep>,
}

impl SlotSleep {
    fn move_to(&mut self, deadline: Instant) {
        self.deadline = deadline;
        match self.sleep.as_mut() {
            Some(s) => s.move_to(deadline),
            // Fired: its smol timer was spent; take the connection's (or a new one).
            None => self.sleep = Some(self.owner.take(deadline).into_sleep()),
        }
    }

    /// The timer, no longer given back on drop.
    fn into_sleep(mut self) -> LazySleep {
        self.sleep
            .take()
            .unwrap_or_else(|| LazySleep::at(self.deadline))
    }
}

impl Future for SlotSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(sleep) = this.sleep.as_mut() else {
            return Poll::Ready(());
        };
        if Pin::new(sleep).poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Fired: a one-shot smol timer does not fire again after `set_at` unless polled anew, so
        // it is not kept; the next use makes a fresh one.
        this.sleep = None;
        Poll::Ready(())
    }
}

impl Sleep for SlotSleep {}

impl Drop for SlotSleep {
    fn drop(&mut self) {
        if let Some(s) = self.sleep.take() {
            let mut slot = self.owner.slot();
            if slot.is_none() {
                *slot = Some(s);
            }
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
            let timer = LazyTimer::default();
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
    fn hyper_sleeps_dropped_unfired_go_back_to_the_connection_and_are_shared_with_requests() {
        smol::block_on(async {
            let conn = ConnectionSleep::default();
            let timer = LazyTimer::for_connection(&conn);
            // hyper arms the header read timeout while it waits for a head, then drops it.
            let mut header = timer.sleep(Duration::from_secs(30));
            assert!(!fires_within(header.as_mut(), Duration::from_millis(1)).await);
            assert!(!conn.holds_timer(), "taken while in use");
            drop(header);
            assert!(
                conn.holds_timer(),
                "the header timer went back to the connection"
            );
            // The request's response timeout takes the same timer, then gives it back.
            let far = Instant::now() + Duration::from_secs(60);
            assert!(!fires_within(conn.until(far), Duration::from_millis(1)).await);
            assert!(conn.holds_timer());
            // The next head's timer, with an earlier deadline than the registered one, still fires
            // at its own deadline, and a fired timer is not kept.
            let start = Instant::now();
            let mut header = timer.sleep(Duration::from_millis(20));
            assert!(!conn.holds_timer());
            assert!(fires_within(header.as_mut(), Duration::from_secs(60)).await);
            assert!(start.elapsed() >= Duration::from_millis(20));
            drop(header);
            assert!(!conn.holds_timer());
            // A reset of a fired sleep waits again until its new deadline.
            let mut header = timer.sleep(Duration::from_millis(1));
            header.as_mut().await;
            let start = Instant::now();
            timer.reset(&mut header, start + Duration::from_millis(20));
            assert!(fires_within(header.as_mut(), Duration::from_secs(60)).await);
            assert!(start.elapsed() >= Duration::from_millis(20));
        });
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
