//! Scenario results: one line per scenario (`PASS name` or `FAIL name: reason`) as each finishes, and
//! the summary line `N passed, M failed`.

use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use crate::process::Registry;

/// The outcome of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioResult {
    pub name: String,
    pub outcome: Result<(), String>,
}

impl ScenarioResult {
    /// The output line (a failure reason is kept on one line).
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(()) => format!("PASS {}", self.name),
            Err(reason) => format!(
                "FAIL {}: {}",
                self.name,
                reason.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        }
    }
}

/// All results of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub results: Vec<ScenarioResult>,
}

impl Report {
    /// Records a result and prints its line at once.
    pub fn push(&mut self, r: ScenarioResult) {
        println!("{}", r.line());
        let _ = std::io::stdout().flush();
        self.results.push(r);
    }

    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Runs `f` on its own thread with a hang guard: if it has not finished after `guard`, every process
/// group in `registry` is killed and the scenario fails (the thread is abandoned; its sockets close
/// with the killed processes or at exit).
pub fn run_guarded<F>(name: &str, guard: Duration, registry: &Registry, f: F) -> ScenarioResult
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("scenario {name}"))
        .spawn(move || {
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    Err(format!("the scenario panicked: {msg}"))
                });
            let _ = tx.send(outcome);
        });
    let outcome = match spawned {
        Err(e) => Err(format!("cannot start the scenario thread: {e}")),
        Ok(_) => match rx.recv_timeout(guard) {
            Ok(outcome) => outcome,
            Err(_) => {
                registry.kill_all();
                Err(format!(
                    "hang guard: the scenario did not finish within {guard:?}"
                ))
            }
        },
    };
    ScenarioResult {
        name: name.to_owned(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_summary() {
        let mut r = Report::default();
        r.push(ScenarioResult {
            name: "a".into(),
            outcome: Ok(()),
        });
        r.push(ScenarioResult {
            name: "b".into(),
            outcome: Err("two\nlines".into()),
        });
        assert_eq!(r.results[1].line(), "FAIL b: two lines");
        assert_eq!(r.summary(), "1 passed, 1 failed");
    }

    #[test]
    fn hangs_and_panics_fail() {
        let reg = Registry::default();
        let r = run_guarded("slow", Duration::from_millis(50), &reg, || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        });
        assert!(r.outcome.is_err());
        let r = run_guarded("panics", Duration::from_secs(5), &reg, || panic!("boom"));
        assert_eq!(r.outcome, Err("the scenario panicked: boom".into()));
    }
}
