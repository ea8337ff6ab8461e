use std::io;
use std::time::{Duration, Instant};

use polling::{Events, Poller};

#[test]
fn below_ms() -> io::Result<()> {
    let poller = Poller::new()?;
    let mut events = Events::new();

    let dur = Duration::from_micros(100);
    let margin = Duration::from_micros(500);
    let mut lowest = Duration::from_secs(1000);

    for _ in 0..1_000 {
        let now = Instant::now();
        let n = poller.wait(&mut events, Some(dur))?;
        let elapsed = now.elapsed();

        assert_eq!(n, 0);
        assert!(elapsed >= dur, "{elapsed:?} < {dur:?}");
        lowest = lowest.min(elapsed);
    }

    // Vendored change (kas issue 15, VENDORED.md): on Linux the epoll backend has no timerfd and
    // the wait's timeout is rounded up to whole milliseconds, so the bound is that rounding plus
    // the margin, not sub-millisecond precision.
    if cfg!(all(target_os = "linux", not(polling_test_poll_backend))) {
        assert!(lowest < ceil_ms(dur) + margin, "{lowest:?}");
        assert!(
            lowest >= ceil_ms(dur),
            "{lowest:?} woke before the rounded timeout"
        );
    } else if cfg!(all(
        any(
            target_os = "android",
            target_vendor = "apple",
            target_os = "freebsd",
        ),
        not(polling_test_poll_backend)
    )) {
        assert!(lowest < dur + margin);
    }
    Ok(())
}

#[test]
fn above_ms() -> io::Result<()> {
    let poller = Poller::new()?;
    let mut events = Events::new();

    let dur = Duration::from_micros(3_100);
    let margin = Duration::from_micros(500);
    let mut lowest = Duration::from_secs(1000);

    for _ in 0..1_000 {
        let now = Instant::now();
        let n = poller.wait(&mut events, Some(dur))?;
        let elapsed = now.elapsed();

        assert_eq!(n, 0);
        assert!(elapsed >= dur, "{elapsed:?} < {dur:?}");
        lowest = lowest.min(elapsed);
    }

    if cfg!(all(target_os = "linux", not(polling_test_poll_backend))) {
        assert!(lowest < ceil_ms(dur) + margin, "{lowest:?}");
        assert!(
            lowest >= ceil_ms(dur),
            "{lowest:?} woke before the rounded timeout"
        );
    } else if cfg!(all(
        any(
            target_os = "android",
            target_os = "illumos",
            target_os = "solaris",
            target_vendor = "apple",
            target_os = "freebsd",
        ),
        not(polling_test_poll_backend)
    )) {
        assert!(lowest < dur + margin);
    }
    Ok(())
}

/// `dur` rounded up to whole milliseconds, as rustix's `epoll_pwait` passes it.
fn ceil_ms(dur: Duration) -> Duration {
    Duration::from_millis(((dur.as_nanos() + 999_999) / 1_000_000) as u64)
}
