//! Waiting for SIGINT or SIGTERM, for the `kas` binary and the demo; SIGHUP reopens log files.

/// Blocks until the process receives SIGINT or SIGTERM; returns the signal's name.
pub fn wait_for_termination() -> std::io::Result<&'static str> {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt as _;
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    let received = smol::block_on(signals.next());
    Ok(match received {
        Some(Ok(Signal::Term)) => "SIGTERM",
        Some(Ok(Signal::Int)) => "SIGINT",
        Some(Ok(_)) => "signal",
        Some(Err(e)) => return Err(e),
        None => "end of signal stream",
    })
}

/// Blocks until the process receives SIGINT or SIGTERM, calling `on_hangup` on every SIGHUP
/// meanwhile (the `kas` binary reopens its audit log); returns the terminating signal's name.
pub fn wait_for_termination_with_hangup(on_hangup: impl Fn()) -> std::io::Result<&'static str> {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt as _;
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])?;
    // Bounded by the process's signals: every iteration consumes one.
    loop {
        let received = smol::block_on(signals.next());
        return Ok(match received {
            Some(Ok(Signal::Hup)) => {
                on_hangup();
                continue;
            }
            Some(Ok(Signal::Term)) => "SIGTERM",
            Some(Ok(Signal::Int)) => "SIGINT",
            Some(Ok(_)) => "signal",
            Some(Err(e)) => return Err(e),
            None => "end of signal stream",
        });
    }
}
