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
        Box::pin(LazySleep {
            deadline,
            armed: deadline,
            timer: smol::Timer::at(deadline),
        })
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
            let fired = futures_lite::future::or(
                async {
                    sleep.as_mut().await;
                    true
                },
                async {
                    smol::Timer::after(Duration::from_secs(60)).await;
                    false
                },
            )
            .await;
            assert!(fired);
        });
    }
}
