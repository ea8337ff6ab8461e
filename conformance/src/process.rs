//! The implementation under test as a child process: the command template with its `{placeholders}`
//! filled in, run with `sh -c` in a process group of its own (so everything it starts can be killed
//! together), output appended to a log file, and killed with bounded waits.

use std::fs::File;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process group gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Why the command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `sh -c {command:?}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// Replaces every `{name}` of `vars` in `template`; other braces are left alone (shell syntax).
pub fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Process groups still running, so a hang guard can kill them from another thread.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<u32>>>);

impl Registry {
    fn add(&self, pgid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.push(pgid);
        }
    }

    fn remove(&self, pgid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|p| *p != pgid);
        }
    }

    /// Kills every registered group (SIGKILL at once).
    pub fn kill_all(&self) {
        let groups: Vec<u32> = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        for pgid in groups {
            signal_group(pgid, "KILL");
            self.remove(pgid);
        }
    }
}

/// The running command.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    pgid: u32,
    log: PathBuf,
    registry: Registry,
    status: Option<ExitStatus>,
    killed: bool,
}

/// Sends a signal to a process group through the shell's `kill` builtin; `true` if any process got it.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Child {
    /// Starts `sh -c command` in a new process group, stdout and stderr appended to `log`.
    pub fn spawn(command: &str, log: &Path, registry: &Registry) -> Result<Child, SpawnError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SpawnError::Log {
                path: log.to_path_buf(),
                source,
            })?;
        let err = file.try_clone().map_err(|source| SpawnError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| SpawnError::Spawn {
                command: command.to_owned(),
                source,
            })?;
        let pgid = child.id();
        registry.add(pgid);
        Ok(Child {
            child,
            pgid,
            log: log.to_path_buf(),
            registry: registry.clone(),
            status: None,
            killed: false,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The resident memory of every process in the command's process group, in KiB (Linux
    /// `/proc`; `None` where it cannot be read).
    pub fn group_rss_kib(&self) -> Option<u64> {
        let mut total = 0;
        let mut found = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            // `pid (comm) state ppid pgrp ...`: the group is the third field after the command.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|g| g.parse::<u32>().ok());
            if pgrp != Some(self.pgid) {
                continue;
            }
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                });
            if let Some(kib) = rss {
                total += kib;
                found = true;
            }
        }
        found.then_some(total)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status, if the shell has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the exit looks like a crash: killed by a signal we did not send, or a Rust panic (101).
    pub fn crashed(&mut self) -> Option<String> {
        let status = self.exited()?;
        if let Some(sig) = status.signal() {
            return Some(format!("killed by signal {sig}"));
        }
        match status.code() {
            Some(101) => Some("exited with status 101 (a panic)".into()),
            _ => None,
        }
    }

    /// SIGTERM to the group, then SIGKILL after a grace period; reaps the shell. Idempotent.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        signal_group(self.pgid, "TERM");
        let deadline = Instant::now() + TERM_GRACE;
        // Bounded by the deadline.
        while Instant::now() < deadline {
            let _ = self.exited();
            if !signal_group(self.pgid, "0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.pgid, "KILL");
        let deadline = Instant::now() + TERM_GRACE;
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.registry.remove(self.pgid);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_shell_braces_kept() {
        let s = fill(
            "agentk --kas-address {kas_address} --x ${HOME} {unknown}",
            &[("kas_address", "127.0.0.1:9".into())],
        );
        assert_eq!(s, "agentk --kas-address 127.0.0.1:9 --x ${HOME} {unknown}");
    }

    #[test]
    fn the_whole_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::default();
        let pid_file = dir.path().join("pid");
        let cmd = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let mut child = Child::spawn(&cmd, &dir.path().join("log"), &registry).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned();
        child.kill();
        assert!(child.exited().is_some());
        let alive = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -0 {pid} 2>/dev/null"))
            .status()
            .unwrap()
            .success();
        assert!(!alive, "the grandchild survived");
        assert!(registry.0.lock().unwrap().is_empty());
    }
}
