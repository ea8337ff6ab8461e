//! The built-in command set of a simulated container and the shell that runs scripts of them:
//! `echo`, `cat`, `env`/`printenv`, `ls`, `pwd`, `hostname`, `mkdir`, `rm`, `touch`, `sleep`,
//! `exit`, `true`, `false`, `test`/`[`, `tar` (create, extract, list; what `kubectl cp` runs)
//! and `sh` (`-c SCRIPT`, or reading commands from stdin line by line).
//!
//! Commands stream: stdin arrives in chunks ([`Input`]) and output leaves in chunks
//! ([`Out`]), so `kubectl exec -i … -- cat` echoes as it reads.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::Container;
use super::script::{self, Join, Part, Script, Simple, Word};
use crate::container_fs::{ContainerFs, Entry, FsError, normalize};

/// Most bytes `tar x` (or `sh` reading a line) buffers from stdin.
pub const MAX_STDIN_BUFFER: usize = 64 * 1024 * 1024;

/// A command's standard input: a stream of chunks ending when the sender is dropped.
#[derive(Debug, Default)]
pub struct Input {
    rx: Option<mpsc::Receiver<Bytes>>,
    pending: BytesMut,
}

impl Input {
    /// No input (immediate end of file).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Input fed by `rx`.
    pub fn stream(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx: Some(rx),
            pending: BytesMut::new(),
        }
    }

    /// The next chunk, or `None` at end of file.
    pub async fn read(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(self.pending.split().freeze());
        }
        self.rx.as_mut()?.recv().await
    }

    /// The next line with its `\n` (the last line may lack it), or `None` at end of file.
    pub async fn read_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                return Some(self.pending.split_to(i + 1).freeze());
            }
            let more = match self.rx.as_mut() {
                Some(rx) if self.pending.len() < MAX_STDIN_BUFFER => rx.recv().await,
                _ => None,
            };
            match more {
                Some(b) => self.pending.extend_from_slice(&b),
                None if self.pending.is_empty() => return None,
                None => return Some(self.pending.split().freeze()),
            }
        }
    }

    /// Everything up to end of file, at most `limit` bytes (`None` when more arrived).
    pub async fn read_all(&mut self, limit: usize) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(b) = self.read().await {
            if all.len() + b.len() > limit {
                return None;
            }
            all.extend_from_slice(&b);
        }
        Some(all)
    }
}

/// The reader of an output went away (the pipe or the session is closed).
#[derive(Debug, Clone, Copy)]
pub struct Broken;

/// Where a command's output goes.
#[derive(Debug, Clone)]
pub enum Out {
    /// Chunks to a stream (the session, or the next command of a pipeline).
    Chan(mpsc::Sender<Bytes>),
    /// Collected for a redirection to a file.
    Buf(Arc<Mutex<Vec<u8>>>),
    /// `/dev/null`.
    Null,
}

impl Out {
    /// Writes `data`.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), Broken> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Out::Chan(tx) => tx.send(data).await.map_err(|_| Broken),
            Out::Buf(b) => {
                b.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&data);
                Ok(())
            }
            Out::Null => Ok(()),
        }
    }
}

/// The result of a command: its exit status, and whether it ends the shell (`exit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Exit status (0 success).
    pub code: i32,
    /// `exit` was run: the shell stops.
    pub exit: bool,
}

impl Status {
    fn of(code: i32) -> Self {
        Self { code, exit: false }
    }
}

/// Exit status of a command killed by a broken pipe (128 + SIGPIPE).
const BROKEN_PIPE: i32 = 141;

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every command of one shell sees: the container, the variables, the working directory.
#[derive(Clone)]
pub struct Shell {
    ctr: Arc<Container>,
    vars: BTreeMap<String, String>,
    cwd: String,
    last: i32,
    tty: bool,
}

impl Shell {
    /// A shell in `ctr` with its environment, in `/`.
    pub fn new(ctr: Arc<Container>) -> Self {
        let vars = ctr.env.iter().cloned().collect();
        Self {
            ctr,
            vars,
            cwd: "/".to_string(),
            last: 0,
            tty: false,
        }
    }

    /// Whether the shell talks to a terminal (an interactive `sh` then prints a prompt).
    pub fn with_tty(mut self, tty: bool) -> Self {
        self.tty = tty;
        self
    }

    fn fs(&self) -> std::sync::MutexGuard<'_, ContainerFs> {
        self.ctr.fs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expand(&self, w: &Word) -> String {
        w.iter()
            .map(|p| match p {
                Part::Lit(s) => s.clone(),
                Part::Var(v) if v == "?" => self.last.to_string(),
                Part::Var(v) => self.vars.get(v).cloned().unwrap_or_default(),
            })
            .collect()
    }

    fn path(&self, p: &str) -> String {
        normalize(&self.cwd, p)
    }

    /// Runs `argv` directly (what `kubectl exec pod -- ARGV…` asks for).
    pub async fn run_argv(
        &mut self,
        argv: Vec<String>,
        stdin: &mut Input,
        stdout: Out,
        stderr: Out,
    ) -> i32 {
        self.command(argv, stdin, stdout, stderr).await.code
    }

    /// Runs a parsed script; returns the status of the last command run.
    pub fn run_script<'a>(
        &'a mut self,
        script: &'a Script,
        stdin: &'a mut Input,
        stdout: Out,
        stderr: Out,
    ) -> BoxFut<'a, Status> {
        Box::pin(async move {
            for (join, pipeline) in script {
                let skip = match join {
                    Join::Always => false,
                    Join::And => self.last != 0,
                    Join::Or => self.last == 0,
                };
                if skip {
                    continue;
                }
                let st = self
                    .pipeline(pipeline, stdin, stdout.clone(), stderr.clone())
                    .await;
                self.last = st.code;
                if st.exit {
                    return st;
                }
            }
            Status::of(self.last)
        })
    }

    async fn pipeline(
        &mut self,
        cmds: &[Simple],
        stdin: &mut Input,
        stdout: Out,
        stderr: Out,
    ) -> Status {
        if let [only] = cmds {
            return self.simple(only, stdin, stdout, stderr).await;
        }
        // Each stage runs in a subshell; they run concurrently, joined by pipes.
        let mut futs: Vec<BoxFut<'_, Status>> = Vec::new();
        let mut next_in: Option<Input> = None;
        let n = cmds.len();
        let mut first_stdin = Some(stdin);
        for (i, cmd) in cmds.iter().enumerate() {
            let (out, rx) = if i + 1 == n {
                (stdout.clone(), None)
            } else {
                let (tx, rx) = mpsc::channel(8);
                (Out::Chan(tx), Some(rx))
            };
            let mut sub = self.clone();
            let err = stderr.clone();
            match (i, first_stdin.take()) {
                (0, Some(shared)) => {
                    futs.push(Box::pin(
                        async move { sub.simple(cmd, shared, out, err).await },
                    ))
                }
                _ => {
                    let mut input = next_in.take().unwrap_or_default();
                    futs.push(Box::pin(async move {
                        sub.simple(cmd, &mut input, out, err).await
                    }));
                }
            }
            next_in = rx.map(Input::stream);
        }
        let results = futures::future::join_all(futs).await;
        Status::of(results.last().map_or(0, |s| s.code))
    }

    async fn simple(
        &mut self,
        cmd: &Simple,
        stdin: &mut Input,
        stdout: Out,
        stderr: Out,
    ) -> Status {
        let argv: Vec<String> = cmd.argv.iter().map(|w| self.expand(w)).collect();
        let (mut out, mut err) = (stdout, stderr);
        let mut files = Vec::new();
        for r in &cmd.redirects {
            let target = self.expand(&r.target);
            let sink = if target == "/dev/null" {
                Out::Null
            } else {
                let buf = Arc::new(Mutex::new(Vec::new()));
                files.push((self.path(&target), r.append, buf.clone()));
                Out::Buf(buf)
            };
            if r.fd == 2 {
                err = sink;
            } else {
                out = sink;
            }
        }
        // Like a shell, create (or truncate) the targets before running the command.
        for (path, append, _) in &files {
            let r = if *append {
                self.fs().append(path, b"")
            } else {
                self.fs().write(path, Vec::new(), 0o644)
            };
            if let Err(e) = r {
                let _ = err.write(format!("sh: cannot create {path}: {e}\n")).await;
                return Status::of(1);
            }
        }
        let st = self.command(argv, stdin, out, err.clone()).await;
        for (path, _, buf) in files {
            let data = std::mem::take(&mut *buf.lock().unwrap_or_else(PoisonError::into_inner));
            let r = self.fs().append(&path, &data);
            if let Err(e) = r {
                let _ = err.write(format!("sh: write error: {path}: {e}\n")).await;
                return Status::of(1);
            }
        }
        st
    }

    /// Runs one command with expanded arguments.
    fn command<'a>(
        &'a mut self,
        argv: Vec<String>,
        stdin: &'a mut Input,
        out: Out,
        err: Out,
    ) -> BoxFut<'a, Status> {
        Box::pin(async move {
            let Some((name, args)) = argv.split_first() else {
                return Status::of(0);
            };
            let name = name.rsplit('/').next().unwrap_or(name).to_string();
            let args: Vec<String> = args.to_vec();
            let r: Result<i32, Broken> = match name.as_str() {
                "true" | ":" => Ok(0),
                "false" => Ok(1),
                "exit" => {
                    let code = match args.first() {
                        None => self.last,
                        Some(a) => match a.parse::<i32>() {
                            Ok(c) => c & 0xff,
                            Err(_) => {
                                let _ = err.write(format!("sh: exit: Illegal number: {a}\n")).await;
                                2
                            }
                        },
                    };
                    return Status { code, exit: true };
                }
                "echo" => {
                    let (newline, words) = match args.first().map(String::as_str) {
                        Some("-n") => (false, &args[1..]),
                        _ => (true, &args[..]),
                    };
                    let mut s = words.join(" ");
                    if newline {
                        s.push('\n');
                    }
                    out.write(s).await.map(|()| 0)
                }
                "cat" => self.cat(&args, stdin, &out, &err).await,
                "env" | "printenv" => {
                    let s: String = self
                        .vars
                        .iter()
                        .map(|(k, v)| format!("{k}={v}\n"))
                        .collect();
                    out.write(s).await.map(|()| 0)
                }
                "pwd" => out.write(format!("{}\n", self.cwd)).await.map(|()| 0),
                "hostname" => out
                    .write(format!("{}\n", self.ctr.hostname))
                    .await
                    .map(|()| 0),
                "cd" => {
                    let to = self.path(args.first().map_or("/root", String::as_str));
                    if self.fs().is_dir(&to) {
                        self.cwd = to;
                        Ok(0)
                    } else {
                        err.write(format!("sh: cd: can't cd to {to}\n"))
                            .await
                            .map(|()| 2)
                    }
                }
                "ls" => self.ls(&args, &out, &err).await,
                "mkdir" | "rm" | "touch" => self.modify(&name, &args, &err).await,
                "sleep" => {
                    let secs = args
                        .first()
                        .and_then(|a| a.trim_end_matches('s').parse::<f64>().ok());
                    match secs {
                        Some(s) if s.is_finite() && s >= 0.0 => {
                            tokio::time::sleep(Duration::from_secs_f64(s.min(86_400.0))).await;
                            Ok(0)
                        }
                        _ => err
                            .write("sleep: invalid time interval\n")
                            .await
                            .map(|()| 1),
                    }
                }
                "test" | "[" => {
                    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
                    if name == "[" && a.last() == Some(&"]") {
                        a.pop();
                    }
                    Ok(self.test(&a))
                }
                "tar" => self.tar(&args, stdin, &out, &err).await,
                "sh" | "bash" | "ash" => return self.sh(&args, stdin, out, err).await,
                _ => err
                    .write(format!("sh: {name}: not found\n"))
                    .await
                    .map(|()| 127),
            };
            Status::of(r.unwrap_or(BROKEN_PIPE))
        })
    }

    async fn sh(&mut self, args: &[String], stdin: &mut Input, out: Out, err: Out) -> Status {
        let mut sub = self.clone();
        if let [flag, script_src, rest @ ..] = args
            && flag == "-c"
        {
            for (i, a) in rest.iter().skip(1).enumerate() {
                sub.vars.insert((i + 1).to_string(), a.clone());
            }
            return match script::parse(script_src) {
                Ok(s) => {
                    let st = sub.run_script(&s, stdin, out, err).await;
                    Status::of(st.code)
                }
                Err(e) => {
                    let _ = err.write(format!("sh: {e}\n")).await;
                    Status::of(2)
                }
            };
        }
        // Interactive: one line at a time from stdin; commands get no stdin of their own.
        loop {
            if sub.tty && out.write(format!("{} # ", sub.cwd)).await.is_err() {
                return Status::of(BROKEN_PIPE);
            }
            let Some(line) = stdin.read_line().await else {
                break;
            };
            let text = String::from_utf8_lossy(&line).into_owned();
            match script::parse(&text) {
                Ok(s) => {
                    let st = sub
                        .run_script(&s, &mut Input::empty(), out.clone(), err.clone())
                        .await;
                    if st.exit {
                        return Status::of(st.code);
                    }
                }
                Err(e) => {
                    if err.write(format!("sh: {e}\n")).await.is_err() {
                        return Status::of(BROKEN_PIPE);
                    }
                    sub.last = 2;
                }
            }
        }
        Status::of(sub.last)
    }

    async fn cat(
        &self,
        args: &[String],
        stdin: &mut Input,
        out: &Out,
        err: &Out,
    ) -> Result<i32, Broken> {
        let files: Vec<&String> = args
            .iter()
            .filter(|a| !a.starts_with('-') || *a == "-")
            .collect();
        if files.is_empty() || files.iter().all(|f| *f == "-") {
            while let Some(chunk) = stdin.read().await {
                out.write(chunk).await?;
            }
            return Ok(0);
        }
        let mut code = 0;
        for f in files {
            let p = self.path(f);
            let data = self.fs().read(&p).map(<[u8]>::to_vec);
            match data {
                Ok(d) => out.write(d).await?,
                Err(e) => {
                    err.write(format!("cat: {f}: {e}\n")).await?;
                    code = 1;
                }
            }
        }
        Ok(code)
    }

    async fn ls(&self, args: &[String], out: &Out, err: &Out) -> Result<i32, Broken> {
        let mut paths: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let cwd = self.cwd.clone();
        if paths.is_empty() {
            paths.push(&cwd);
        }
        let mut code = 0;
        let many = paths.len() > 1;
        for p in paths {
            let abs = self.path(p);
            let listing = {
                let fs = self.fs();
                match fs.get(&abs) {
                    Some(Entry::Dir) => fs.list(&abs),
                    Some(Entry::File { .. }) => Ok(vec![p.clone()]),
                    None => Err(FsError::NotFound),
                }
            };
            match listing {
                Ok(names) => {
                    let mut s = if many {
                        format!("{p}:\n")
                    } else {
                        String::new()
                    };
                    for n in names {
                        s.push_str(&n);
                        s.push('\n');
                    }
                    out.write(s).await?;
                }
                Err(e) => {
                    err.write(format!("ls: cannot access '{p}': {e}\n")).await?;
                    code = 2;
                }
            }
        }
        Ok(code)
    }

    async fn modify(&self, name: &str, args: &[String], err: &Out) -> Result<i32, Broken> {
        let flags: String = args
            .iter()
            .filter(|a| a.starts_with('-'))
            .flat_map(|a| a.chars().skip(1))
            .collect();
        let mut code = 0;
        for a in args.iter().filter(|a| !a.starts_with('-')) {
            let p = self.path(a);
            let r = {
                let mut fs = self.fs();
                match name {
                    "mkdir" if flags.contains('p') => fs.mkdir_all(&p),
                    "mkdir" => fs.mkdir(&p),
                    "touch" => fs.append(&p, b""),
                    _ => match fs.remove(&p, flags.contains('r') || flags.contains('R')) {
                        Err(FsError::NotFound) if flags.contains('f') => Ok(()),
                        r => r,
                    },
                }
            };
            if let Err(e) = r {
                err.write(format!("{name}: {a}: {e}\n")).await?;
                code = 1;
            }
        }
        Ok(code)
    }

    fn test(&self, a: &[&str]) -> i32 {
        let t = match a {
            [] => false,
            ["!", rest @ ..] => return i32::from(self.test(rest) == 0),
            [s] => !s.is_empty(),
            ["-n", s] => !s.is_empty(),
            ["-z", s] => s.is_empty(),
            ["-e", p] => self.fs().get(&self.path(p)).is_some(),
            ["-d", p] => self.fs().is_dir(&self.path(p)),
            ["-f", p] => matches!(self.fs().get(&self.path(p)), Some(Entry::File { .. })),
            ["-s", p] => {
                matches!(self.fs().get(&self.path(p)), Some(Entry::File { data, .. }) if !data.is_empty())
            }
            [x, "=" | "==", y] => x == y,
            [x, "!=", y] => x != y,
            [x, op @ ("-eq" | "-ne" | "-lt" | "-gt" | "-le" | "-ge"), y] => {
                match (x.parse::<i64>(), y.parse::<i64>()) {
                    (Ok(x), Ok(y)) => match *op {
                        "-eq" => x == y,
                        "-ne" => x != y,
                        "-lt" => x < y,
                        "-gt" => x > y,
                        "-le" => x <= y,
                        _ => x >= y,
                    },
                    _ => return 2,
                }
            }
            _ => return 2,
        };
        i32::from(!t)
    }

    async fn tar(
        &self,
        args: &[String],
        stdin: &mut Input,
        out: &Out,
        err: &Out,
    ) -> Result<i32, Broken> {
        let opts = match super::tar::TarArgs::parse(args) {
            Ok(o) => o,
            Err(e) => {
                err.write(format!("tar: {e}\n")).await?;
                return Ok(2);
            }
        };
        let dir = self.path(opts.directory.as_deref().unwrap_or(&self.cwd));
        match opts.mode {
            super::tar::Mode::Create => {
                let made = super::tar::create(&self.fs(), &dir, &opts.paths);
                match made {
                    Ok((archive, warnings)) => {
                        for w in warnings {
                            err.write(format!("tar: {w}\n")).await?;
                        }
                        for chunk in archive.chunks(32 * 1024) {
                            out.write(Bytes::copy_from_slice(chunk)).await?;
                        }
                        Ok(0)
                    }
                    Err(e) => {
                        err.write(format!("tar: {e}\n")).await?;
                        Ok(2)
                    }
                }
            }
            super::tar::Mode::Extract | super::tar::Mode::List => {
                let limit = self.ctr.fs_capacity();
                let Some(data) = stdin.read_all(limit).await else {
                    err.write("tar: archive too large: No space left on device\n")
                        .await?;
                    return Ok(2);
                };
                let listing = opts.mode == super::tar::Mode::List;
                let r = if listing {
                    super::tar::list(&data)
                } else {
                    super::tar::extract(&mut self.fs(), &dir, &data)
                };
                match r {
                    Ok(names) => {
                        if listing || opts.verbose {
                            let s: String = names.iter().map(|n| format!("{n}\n")).collect();
                            out.write(s).await?;
                        }
                        Ok(0)
                    }
                    Err(e) => {
                        err.write(format!("tar: {e}\n")).await?;
                        Ok(2)
                    }
                }
            }
        }
    }
}
