//! The open-file limit (`RLIMIT_NOFILE`) of test and bench processes that hold thousands of sockets:
//! one place that reads and raises it, for every such binary (the calibration, the idle-agents
//! bench, the simulated API server's session test). Child processes started afterwards (a kas under
//! test, client processes) inherit the raised limit.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-file limit; `u64::MAX` stands for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The limit in force.
    pub soft: u64,
    /// What an unprivileged process may raise the soft limit to.
    pub hard: u64,
}

/// The open-file limit could not be raised as far as asked.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit is {} (hard {}) and cannot be raised to {want}: {source}",
    limit.soft,
    limit.hard
)]
pub struct NofileError {
    /// The limit as it stays.
    pub limit: Limit,
    /// What was asked.
    pub want: u64,
    /// Why `setrlimit` refused (above the hard limit without `CAP_SYS_RESOURCE`, above
    /// `fs.nr_open`).
    pub source: std::io::Error,
}

/// This process's open-file limit.
pub fn limit() -> Limit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    Limit {
        soft: current.unwrap_or(u64::MAX),
        hard: maximum.unwrap_or(u64::MAX),
    }
}

/// Raises the soft open-file limit to at least `want`; never lowers a limit. Within the hard limit
/// only the soft one moves; above it both are raised to `want`, which takes `CAP_SYS_RESOURCE`.
/// Returns the limit now in force.
pub fn raise(want: u64) -> Result<Limit, NofileError> {
    let now = limit();
    if now.soft >= want {
        return Ok(now);
    }
    let next = Rlimit {
        current: Some(want),
        maximum: if now.hard < want {
            Some(want)
        } else {
            getrlimit(Resource::Nofile).maximum
        },
    };
    setrlimit(Resource::Nofile, next).map_err(|e| NofileError {
        limit: now,
        want,
        source: e.into(),
    })?;
    Ok(limit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_and_reaches_what_the_hard_limit_allows() {
        let before = limit();
        assert!(before.soft <= before.hard);
        // Asking for less than the soft limit changes nothing.
        assert_eq!(raise(before.soft.min(16)).ok(), Some(before));
        // Asking for the hard limit (if finite and not absurd) is always permitted.
        if before.hard <= 1 << 20 {
            let raised = raise(before.hard).expect("up to the hard limit");
            assert_eq!(raised.soft, before.hard);
            assert_eq!(raised.hard, before.hard);
        }
    }
}
