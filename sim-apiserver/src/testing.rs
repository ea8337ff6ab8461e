//! Drivers for the real `kubectl` in tests (feature `testing`): a bounded run with stdin fed and
//! both outputs collected, an interactive session through a real pseudo-terminal, and the small
//! socket helpers port-forward tests need. Shared by this crate's `kubectl_exec` tests and kas's
//! end-to-end `kubectl_upgrade` tests, which run the same kubectl commands directly against the
//! simulated API server and through kas and a tunnel.
//!
//! Every wait is bounded by the caller's guard; a hang is a test failure that says what hung,
//! never a stuck test binary.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which transport kubectl is forced to for exec/attach/cp and port-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// WebSocket (kubectl 1.32's default).
    WebSocket,
    /// SPDY/3.1 (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`, `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
    Spdy,
}

impl Via {
    /// The environment that forces this transport on kubectl, as `NAME=value` pairs.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Via::WebSocket => &[],
            Via::Spdy => &[
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
            ],
        }
    }

    /// Sets [`Via::env`] on `cmd`.
    pub fn apply(self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }
}

/// Kills and reaps the child when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with `stdin` fed, bounded by `guard`: (exit code, stdout, stderr). Panics, naming
/// `what`, if it cannot start or does not finish in time (the child is killed).
pub fn run_bounded(
    mut cmd: Command,
    what: &str,
    stdin: &[u8],
    guard: Duration,
) -> (i32, Vec<u8>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {what} (kubectl: apt-get install kubernetes-client): {e}")
        });
    let mut input = child.stdin.take().expect("stdin piped");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let (tx, rx) = mpsc::channel();
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = String::new();
        let _ = out.read_to_end(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let Ok((o, e)) = rx.recv_timeout(guard) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {guard:?}");
    };
    let _ = feeder.join();
    let status = child.wait().expect("exit status");
    (status.code().unwrap_or(-1), o, e)
}

/// Waits (bounded by `guard`) for the child to exit; its code. Panics, naming `what`, on a hang.
pub fn wait_exit(child: &mut Child, what: &str, guard: Duration) -> Option<i32> {
    let deadline = Instant::now() + guard;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "{what} did not exit (hang)");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An interactive command (e.g. `kubectl exec -it … -- sh`) on a real pseudo-terminal that
/// util-linux `script` provides.
#[derive(Debug)]
pub struct Terminal {
    child: Killed,
    input: ChildStdin,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    guard: Duration,
}

impl Terminal {
    /// Runs the shell command line `command` under `script -qec … /dev/null` with `env` set.
    pub fn spawn(command: &str, env: &[(&str, &std::ffi::OsStr)], guard: Duration) -> Terminal {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", command, "/dev/null"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux `script` runs");
        let input = child.stdin.take().expect("stdin piped");
        let mut stdout = child.stdout.take().expect("stdout piped");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child: Killed(child),
            input,
            output,
            seen: Vec::new(),
            guard,
        }
    }

    /// Waits (bounded) until the terminal's output so far contains `needle`.
    pub fn wait_for(&mut self, needle: &[u8]) {
        let deadline = Instant::now() + self.guard;
        while !self.seen.windows(needle.len()).any(|w| w == needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(b) => self.seen.extend_from_slice(&b),
                Err(_) => panic!(
                    "never saw {:?}; terminal output: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Types `keys` (a line ends with `\r`, as a terminal sends Enter).
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.input.write_all(keys).expect("type");
        self.input.flush().expect("flush");
    }

    /// Waits (bounded) for the command to exit; its code.
    pub fn wait_exit(mut self, what: &str) -> Option<i32> {
        wait_exit(&mut self.child.0, what, self.guard)
    }
}

/// `exec -it … -- sh` in the simulated container, as both test suites run it: the prompt, a typed
/// line echoed with CRLF and answered, then `exit 5` reported as kubectl's exit code.
pub fn check_terminal_session(mut t: Terminal) {
    t.wait_for(b"/ # ");
    t.type_keys(b"echo tty-ok\r");
    // The typed line echoed, then the output with CRLF, then the next prompt.
    t.wait_for(b"echo tty-ok\r\ntty-ok\r\n/ # ");
    t.type_keys(b"exit 5\r");
    assert_eq!(t.wait_exit("kubectl exec -it after `exit 5`"), Some(5));
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` over plain HTTP/1.1 to 127.0.0.1:`port` with `Connection: close`; the whole answer
/// (head and body) as text, reading for at most `guard`.
pub fn http_get(port: u16, path: &str, guard: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    s.set_read_timeout(Some(guard)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}
