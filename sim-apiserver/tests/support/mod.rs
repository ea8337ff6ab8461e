//! The kubectl harness of the end-to-end tests: a simulated API server, a kubeconfig for it in
//! a temporary directory, and the real `kubectl` run against it. Tests fail (never skip) when
//! kubectl is missing: install it with `apt-get install -y kubernetes-client`.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

/// Hang guard for waiting on kubectl output.
pub const GUARD: Duration = Duration::from_secs(60);

pub struct Env {
    pub server: RunningApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

pub fn env(config: ApiServerConfig) -> Env {
    let server = ApiServer::start(config).expect("server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig, "sim")
        .expect("write kubeconfig");
    Env {
        server,
        dir,
        kubeconfig,
    }
}

impl Env {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        match self.command(args).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "kubectl is not installed (or not on PATH); these end-to-end tests need the real client: \
                 install it with `apt-get install -y kubernetes-client`"
            ),
            Err(e) => panic!("cannot run kubectl: {e}"),
        }
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn spawn(&self, args: &[&str]) -> Streaming {
        let mut child = match self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "kubectl is not installed: install it with `apt-get install -y kubernetes-client`"
            ),
            Err(e) => panic!("cannot run kubectl: {e}"),
        };
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines: rx }
    }
}

/// A running kubectl whose stdout lines arrive on a channel; killed on drop.
pub struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    /// Waits for a line satisfying `pred`; returns it.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + GUARD;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("kubectl never printed {what}; output so far: {seen:#?}; stderr: {err}")
                }
            }
        }
    }

    /// Waits for kubectl to exit by itself (stdout closed), returning the remaining lines.
    pub fn wait_for_end(&mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + GUARD;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("kubectl did not finish; printed {rest:#?}")
                }
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Env {
    /// Runs kubectl, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Runs kubectl with `-o json`, asserting success; returns the document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// Writes `contents` to `name` in the temporary directory; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write manifest");
        p.to_string_lossy().into_owned()
    }
}
