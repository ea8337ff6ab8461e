//! What runs inside a simulated container when `kubectl exec`, `attach` or `cp` reach it: the
//! per-container state ([`Containers`], [`Container`]: an in-memory filesystem, environment,
//! and a "main process" that echoes its stdin for `attach`), the built-in commands
//! ([`shell`], [`script`], [`tar`]), and [`Process`], the running command a transport
//! (WebSocket channels in [`websocket`], SPDY streams in [`spdy`]) connects to the client.
//!
//! Exit statuses travel as the `Status` kubectl expects on the error channel
//! ([`exit_status`]): `Success`, or `Failure` with reason `NonZeroExitCode` and an `ExitCode`
//! cause, which `kubectl exec` turns into its own exit code.

pub mod script;
pub mod shell;
pub mod spdy;
pub mod tar;
pub mod terminal;
pub mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::container_fs::ContainerFs;
use crate::objects::PodPhase;
use crate::status::ApiError;
use crate::store::Store;
use shell::{Input, Out, Shell};

/// Chunks buffered between a command and its transport in each direction.
const CHANNEL_DEPTH: usize = 16;

/// One simulated container's state, shared by every session into it.
pub struct Container {
    /// Container name.
    pub name: String,
    /// The pod's name (the container's hostname).
    pub hostname: String,
    /// Environment of new processes.
    pub env: Vec<(String, String)>,
    /// The filesystem.
    pub fs: Mutex<ContainerFs>,
    main: OnceLock<MainProcess>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// The container's main process, what `kubectl attach` connects to: it echoes what arrives on
/// its stdin to its stdout, which every attached session sees.
struct MainProcess {
    stdin: mpsc::Sender<Bytes>,
    stdout: broadcast::Sender<Bytes>,
}

impl Container {
    /// A container of pod `hostname` with environment `env`.
    pub fn new(name: &str, hostname: &str, env: Vec<(String, String)>) -> Self {
        Self {
            name: name.to_string(),
            hostname: hostname.to_string(),
            env,
            fs: Mutex::new(ContainerFs::initial(hostname)),
            main: OnceLock::new(),
        }
    }

    /// Most bytes its filesystem holds.
    pub fn fs_capacity(&self) -> usize {
        self.fs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity()
    }

    /// The main process, started on first use (needs a tokio runtime).
    fn main(&self) -> &MainProcess {
        self.main.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
            let (out, _) = broadcast::channel(256);
            let echo = out.clone();
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    // No attached reader: the output is lost, as on a real terminal.
                    let _ = echo.send(b);
                }
            });
            MainProcess {
                stdin: tx,
                stdout: out,
            }
        })
    }
}

/// Containers of the simulated pods, created on first use and keyed by pod UID, so that a
/// recreated pod starts with fresh containers.
#[derive(Debug, Default)]
pub struct Containers {
    map: Mutex<HashMap<(String, String), Arc<Container>>>,
}

impl Containers {
    /// The container `container` (or the pod's only container) of running pod `ns/pod`.
    pub fn resolve(
        &self,
        store: &Store,
        ns: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<Arc<Container>, ApiError> {
        let obj = store.get("v1", "Pod", Some(ns), pod).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{pod}\" not found"),
            )
        })?;
        let containers: Vec<&Value> = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let names: Vec<&str> = containers
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let name = match container {
            Some(c) if !c.is_empty() => c,
            _ if names.len() == 1 => names[0],
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
        };
        let Some(spec) = containers.iter().find(|c| c["name"] == name) else {
            return Err(ApiError::bad_request(format!(
                "container {name} is not valid for pod {pod}"
            )));
        };
        if PodPhase::of(&obj) != PodPhase::Running {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: container not found (\"{name}\"): pod {pod} is not running"
            )));
        }
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOSTNAME".to_string(), pod.to_string()),
            ("HOME".to_string(), "/root".to_string()),
            (
                "KUBERNETES_SERVICE_HOST".to_string(),
                "10.96.0.1".to_string(),
            ),
            ("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()),
        ];
        for e in spec["env"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (uid, name.to_string());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        // Forget containers of pods that are gone before adding one.
        let live: std::collections::HashSet<String> = store
            .list("v1", "Pod", None)
            .iter()
            .filter_map(|p| p.pointer("/metadata/uid").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        map.retain(|(u, _), _| live.contains(u));
        let c = Arc::new(Container::new(name, pod, env));
        map.insert(key, c.clone());
        Ok(c)
    }
}

/// The options of an exec or attach request (its query string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `command` (repeated): the command and its arguments (exec only).
    pub command: Vec<String>,
    /// `container`.
    pub container: Option<String>,
    /// `stdin`.
    pub stdin: bool,
    /// `stdout`.
    pub stdout: bool,
    /// `stderr`.
    pub stderr: bool,
    /// `tty`: stderr is merged into stdout.
    pub tty: bool,
}

impl StreamOptions {
    /// Parses the query string; `exec` requires a command.
    pub fn parse(query: Option<&str>, exec: bool) -> Result<Self, ApiError> {
        let mut o = Self::default();
        let flag = |v: &str| matches!(v, "true" | "1" | "True");
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "container" => o.container = Some(v.into_owned()),
                "stdin" => o.stdin = flag(&v),
                "stdout" => o.stdout = flag(&v),
                "stderr" => o.stderr = flag(&v),
                "tty" => o.tty = flag(&v),
                _ => {}
            }
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        if exec && o.command.is_empty() {
            return Err(ApiError::bad_request("you must specify a command"));
        }
        if o.tty {
            o.stderr = false;
        }
        Ok(o)
    }
}

/// What a session runs: a command (exec) or a connection to the main process (attach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `exec`: run this command.
    Exec(Vec<String>),
    /// `attach` to the main process.
    Attach,
}

/// A running command, connected to its transport by channels.
pub struct Process {
    /// Its stdin (`None` when not requested); dropping it is end of file.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    /// Its stdout chunks; closed when the command ends.
    pub stdout: mpsc::Receiver<Bytes>,
    /// Its stderr chunks (nothing with a tty); closed when the command ends.
    pub stderr: mpsc::Receiver<Bytes>,
    /// The command; yields the exit status.
    pub task: JoinHandle<i32>,
}

impl Process {
    /// Starts `program` in `ctr`.
    pub fn start(ctr: Arc<Container>, program: Program, opts: &StreamOptions) -> Self {
        let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (err_tx, err_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (in_rx, stdout, stderr) = if opts.tty {
            // A terminal between the session and the program: echo, line editing, CRLF.
            drop(err_tx);
            let (prog_in_tx, prog_in_rx) = mpsc::channel(CHANNEL_DEPTH);
            let (prog_out_tx, prog_out_rx) = mpsc::channel(CHANNEL_DEPTH);
            tokio::spawn(terminal::run(in_rx, prog_in_tx, prog_out_rx, out_tx));
            let out = Out::Chan(prog_out_tx);
            (prog_in_rx, out.clone(), out)
        } else {
            (in_rx, Out::Chan(out_tx), Out::Chan(err_tx))
        };
        let tty = opts.tty;
        let task = match program {
            Program::Exec(argv) => tokio::spawn(async move {
                let mut input = Input::stream(in_rx);
                Shell::new(ctr)
                    .with_tty(tty)
                    .run_argv(argv, &mut input, stdout, stderr)
                    .await
            }),
            Program::Attach => {
                let main = ctr.main();
                let to_main = main.stdin.clone();
                let mut from_main = main.stdout.subscribe();
                tokio::spawn(async move {
                    let _stderr = stderr;
                    let mut input = Input::stream(in_rx);
                    let mut input_open = true;
                    loop {
                        tokio::select! {
                            chunk = input.read(), if input_open => match chunk {
                                Some(c) => {
                                    if to_main.send(c).await.is_err() {
                                        return 0;
                                    }
                                }
                                None => input_open = false,
                            },
                            out = from_main.recv() => match out {
                                Ok(b) => {
                                    if stdout.write(b).await.is_err() {
                                        return 0;
                                    }
                                }
                                Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return 0,
                            },
                        }
                    }
                })
            }
        };
        Self {
            stdin: opts.stdin.then_some(in_tx),
            stdout: out_rx,
            stderr: err_rx,
            task,
        }
    }
}

/// The `Status` kubectl expects on the error channel for exit status `code`.
pub fn exit_status(code: i32, argv: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            argv.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The `Status` for a session that failed before or while running (`reason` e.g.
/// `InternalError`, `Timeout`).
pub fn failure_status(reason: &str, message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctr: &Arc<Container>, argv: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let opts = StreamOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let mut p = Process::start(ctr.clone(), Program::Exec(argv), &opts);
        if let Some(tx) = p.stdin.take()
            && !stdin.is_empty()
        {
            let _ = tx.send(Bytes::copy_from_slice(stdin)).await;
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut o_open, mut e_open) = (true, true);
        while o_open || e_open {
            tokio::select! {
                o = p.stdout.recv(), if o_open => match o { Some(b) => out.extend_from_slice(&b), None => o_open = false },
                e = p.stderr.recv(), if e_open => match e { Some(b) => err.extend_from_slice(&b), None => e_open = false },
            }
        }
        let code = p.task.await.unwrap_or(-1);
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[tokio::test]
    async fn builtin_commands() {
        let c = Arc::new(Container::new(
            "main",
            "pod-1",
            vec![("A".into(), "1".into())],
        ));
        assert_eq!(run(&c, &["echo", "hi", "there"], b"").await.1, "hi there\n");
        assert_eq!(run(&c, &["cat"], b"abc").await.1, "abc");
        assert_eq!(run(&c, &["sh", "-c", "exit 3"], b"").await.0, 3);
        assert_eq!(run(&c, &["false"], b"").await.0, 1);
        let (code, out, _) = run(
            &c,
            &[
                "sh",
                "-c",
                "echo $A > /tmp/f; cat /tmp/f | cat && false || echo $?",
            ],
            b"",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "1\n1\n"));
        let (code, _, err) = run(&c, &["nope"], b"").await;
        assert_eq!(code, 127);
        assert!(err.contains("not found"), "{err}");
        assert_eq!(run(&c, &["ls", "/tmp"], b"").await.1, "f\n");
        assert!(run(&c, &["env"], b"").await.1.contains("A=1\n"));
        assert_eq!(run(&c, &["test", "-d", "/tmp"], b"").await.0, 0);
        assert_eq!(run(&c, &["test", "-d", "/tmp/f"], b"").await.0, 1);
        let (code, out, _) = run(&c, &["sh"], b"echo one\nexit 4\necho never\n").await;
        assert_eq!((code, out.as_str()), (4, "one\n"));
    }
}
