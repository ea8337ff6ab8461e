//! A progress line on stderr for long runs: simulated time, events and events per second. It reads
//! the wall clock, which is why it lives outside the simulation proper and never affects it.

use std::io::Write as _;
use std::time::{Duration, Instant};

use super::clock::SimTime;
use super::units::format_duration;

/// Prints at most twice a second.
#[derive(Debug)]
pub struct Progress {
    end: SimTime,
    last: Option<Instant>,
    printed: bool,
}

impl Progress {
    pub fn new(end: SimTime) -> Progress {
        Progress {
            end,
            last: None,
            printed: false,
        }
    }

    pub fn tick(&mut self, now: SimTime, events: u64, started: Instant) {
        let wall = Instant::now();
        if self
            .last
            .is_some_and(|l| wall.duration_since(l) < Duration::from_millis(500))
        {
            return;
        }
        self.last = Some(wall);
        let frac = (now.as_secs_f64() / self.end.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
        let filled = (frac * 30.0) as usize;
        let elapsed = wall.duration_since(started).as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:5.1}%  sim {} / {}  {:.1}M events  {:.2}M ev/s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0,
            format_duration(now.as_duration()),
            format_duration(self.end.as_duration()),
            events as f64 / 1e6,
            events as f64 / elapsed / 1e6
        );
        let _ = err.flush();
        self.printed = true;
    }

    pub fn finish(&mut self) {
        if self.printed {
            eprintln!();
        }
    }
}
