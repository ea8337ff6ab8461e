use std::io;
use std::thread;
use std::time::Duration;

use easy_parallel::Parallel;
use polling::Events;
use polling::Poller;

#[test]
fn simple() -> io::Result<()> {
    let poller = Poller::new()?;
    let mut events = Events::new();

    for _ in 0..10 {
        poller.notify()?;
        poller.wait(&mut events, None)?;
        assert!(events.is_empty());
    }

    Ok(())
}

#[test]
fn concurrent() -> io::Result<()> {
    let poller = Poller::new()?;
    let mut events = Events::new();

    for _ in 0..2 {
        Parallel::new()
            .add(|| {
                thread::sleep(Duration::from_secs(0));
                poller.notify().unwrap();
            })
            .finish(|| poller.wait(&mut events, None).unwrap());
    }

    Ok(())
}

// Vendored change (kas issue 15): the notifier is level-triggered and read only after a wait that
// reported it. A notification must wake one wait, and be consumed by it: the following wait
// sleeps its whole timeout (a lower bound, not a speed assertion).
#[test]
fn consumed_by_the_wait_it_wakes() -> io::Result<()> {
    let poller = Poller::new()?;
    let mut events = Events::new();

    for _ in 0..3 {
        poller.notify()?;
        poller.wait(&mut events, None)?;
        assert!(events.is_empty());

        let timeout = Duration::from_millis(50);
        let start = std::time::Instant::now();
        poller.wait(&mut events, Some(timeout))?;
        assert!(events.is_empty());
        assert!(
            start.elapsed() >= timeout,
            "{:?} < {timeout:?}",
            start.elapsed()
        );
    }

    Ok(())
}
