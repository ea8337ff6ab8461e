//! Real Git servers and repositories for tests (feature `testing`): repositories made with the `git`
//! CLI, `git daemon` for `git://`, and `git http-backend` behind a real nginx (with fcgiwrap) for smart
//! HTTP, with basic auth or a required `Authorization` header, optionally over TLS with a throw-away CA.
//! Servers listen on 127.0.0.1 on a free port and are killed when dropped.
//!
//! Test helpers, not production code: failures are returned as `io::Error`s with the command's output.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gix::ObjectId;

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Runs `git` in `dir` with a configuration isolated from the machine's (no global or system config)
/// and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> io::Result<String> {
    git_with_input(dir, args, None)
}

/// Like [`git`], feeding `input` on standard input.
pub fn git_with_input(dir: &Path, args: &[&str], input: Option<&[u8]>) -> io::Result<String> {
    use std::io::Write;
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "user.name=git-mirror test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(other(format!(
            "git {} in {} failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn oid(hex: &str) -> io::Result<ObjectId> {
    ObjectId::from_hex(hex.trim().as_bytes())
        .map_err(|e| other(format!("not an object id {hex:?}: {e}")))
}

/// A repository served from `<root>/<name>.git` (bare), with a work tree at `<root>/work/<name>` that
/// commits and pushes to it, as a developer would.
#[derive(Debug, Clone)]
pub struct TestRepo {
    pub name: String,
    /// The bare repository the servers serve.
    pub served: PathBuf,
    /// The developer's clone.
    pub work: PathBuf,
    branch: String,
}

impl TestRepo {
    /// Creates an empty served repository (default branch `main`) and a work tree for it.
    pub fn create(root: &Path, name: &str) -> io::Result<Self> {
        let served = root.join(format!("{name}.git"));
        let work = root.join("work").join(name);
        std::fs::create_dir_all(&served)?;
        std::fs::create_dir_all(&work)?;
        git(&served, &["init", "--bare", "-q", "-b", "main"])?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(
            &work,
            &["remote", "add", "origin", &served.to_string_lossy()],
        )?;
        Ok(TestRepo {
            name: name.to_owned(),
            served,
            work,
            branch: "main".into(),
        })
    }

    /// Runs `git` in the work tree.
    pub fn git(&self, args: &[&str]) -> io::Result<String> {
        git(&self.work, args)
    }

    /// Runs `git` in the served bare repository.
    pub fn git_served(&self, args: &[&str]) -> io::Result<String> {
        git(&self.served, args)
    }

    /// Writes a file in the work tree (creating directories).
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>) -> io::Result<()> {
        let p = self.work.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, contents)
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        std::fs::remove_file(self.work.join(path))
    }

    /// Creates a symbolic link in the work tree.
    pub fn symlink(&self, path: &str, target: &str) -> io::Result<()> {
        let p = self.work.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, p)
    }

    /// Switches the work tree to `branch` (creating it from the current commit if new); later commits
    /// are pushed there.
    pub fn checkout(&mut self, branch: &str) -> io::Result<()> {
        if self.git(&["checkout", "-q", branch]).is_err() {
            self.git(&["checkout", "-q", "-b", branch])?;
        }
        self.branch = branch.to_owned();
        Ok(())
    }

    /// Commits everything in the work tree and pushes the branch (forced) to the served repository.
    pub fn commit(&self, message: &str) -> io::Result<ObjectId> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])?;
        self.push()?;
        oid(&self.git(&["rev-parse", "HEAD"])?)
    }

    /// Pushes the current branch (forced).
    pub fn push(&self) -> io::Result<()> {
        self.git(&[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("HEAD:refs/heads/{}", self.branch),
        ])
        .map(|_| ())
    }

    /// Replaces the branch's history with a single new root commit of the current work tree
    /// (a rewritten history, force-pushed).
    pub fn rewrite_history(&self, message: &str) -> io::Result<ObjectId> {
        self.git(&["checkout", "-q", "--orphan", "kas-rewrite-tmp"])?;
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])?;
        self.git(&["branch", "-M", &self.branch])?;
        self.push()?;
        oid(&self.git(&["rev-parse", "HEAD"])?)
    }

    /// Tags the current commit (annotated if `message` is given) and pushes the tag (forced).
    pub fn tag(&self, name: &str, message: Option<&str>) -> io::Result<ObjectId> {
        match message {
            Some(m) => self.git(&["tag", "-f", "-a", name, "-m", m])?,
            None => self.git(&["tag", "-f", name])?,
        };
        self.git(&[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("refs/tags/{name}"),
        ])?;
        oid(&self.git(&["rev-parse", &format!("refs/tags/{name}")])?)
    }

    /// Points the served repository's `HEAD` (its default branch) at `branch`.
    pub fn set_default_branch(&self, branch: &str) -> io::Result<()> {
        self.git_served(&["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")])
            .map(|_| ())
    }

    /// Writes a raw object into the served repository without any validation (`hash-object
    /// --literally`): for hostile content that `git` itself would never create.
    pub fn write_raw_object(&self, kind: &str, data: &[u8]) -> io::Result<ObjectId> {
        oid(&git_with_input(
            &self.served,
            &["hash-object", "-w", "--literally", "--stdin", "-t", kind],
            Some(data),
        )?)
    }

    /// Creates a commit of `tree` (with no parent) in the served repository and points `branch` at it.
    pub fn commit_tree_on_server(&self, tree: ObjectId, branch: &str) -> io::Result<ObjectId> {
        let c = oid(&self.git_served(&["commit-tree", &tree.to_string(), "-m", "raw"])?)?;
        self.git_served(&[
            "update-ref",
            &format!("refs/heads/{branch}"),
            &c.to_string(),
        ])?;
        Ok(c)
    }

    /// Deletes the served repository (the work tree stays).
    pub fn delete_on_server(&self) -> io::Result<()> {
        std::fs::remove_dir_all(&self.served)
    }
}

/// A raw tree object: entries `(mode, name, id)` in the order given (callers sort them when they want
/// a valid tree).
pub fn raw_tree(entries: &[(&str, &[u8], ObjectId)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (mode, name, id) in entries {
        out.extend_from_slice(mode.as_bytes());
        out.push(b' ');
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on loopback).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: Option<&Path>) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            return Err(other(format!("{what} exited with {status}: {log}")));
        }
        if Instant::now() > deadline {
            return Err(other(format!(
                "{what} did not listen on port {port} within 15 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the process group the child leads (servers fork workers and per-connection processes),
/// then reaps the child.
fn stop(child: &mut Child) {
    // By absolute path when there is one: the caller may have changed PATH.
    let kill = if Path::new("/bin/kill").exists() {
        "/bin/kill"
    } else {
        "kill"
    };
    let _ = Command::new(kill)
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A command in its own process group, so that [`stop`] ends it and everything it forked.
fn server_command(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    // nginx and fcgiwrap live in /usr/sbin, which a non-login PATH may lack.
    let sbin = Path::new("/usr/sbin").join(program);
    let mut cmd = if sbin.exists() {
        Command::new(sbin)
    } else {
        Command::new(program)
    };
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `git daemon --export-all` serving `<base>/<name>.git` as `git://127.0.0.1:<port>/<name>.git`.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> io::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = server_command("git")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .args([
                    "daemon",
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    &format!("--base-path={}", base.display()),
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                ])
                .spawn()?;
            match wait_for_port(port, &mut child, "git daemon", None) {
                Ok(()) => return Ok(GitDaemon { child, port }),
                Err(e) => {
                    stop(&mut child);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| other("git daemon did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of repository `name` (served from `<base>/<name>.git`).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// How the HTTP server authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAuth {
    None,
    /// nginx `auth_basic` with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Requests must carry exactly this `Authorization` header value.
    Header(String),
}

/// `git http-backend` behind nginx (fcgiwrap in between), serving `<root>/<name>.git`.
pub struct HttpGitServer {
    nginx: Child,
    fcgiwrap: Child,
    port: u16,
    tls: bool,
    /// For TLS: the CA certificate (PEM) that issued the server certificate (for 127.0.0.1 and
    /// localhost).
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl HttpGitServer {
    pub fn start(root: &Path, auth: HttpAuth, tls: bool) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let exec_path = git(root, &["--exec-path"])?;
        let backend = Path::new(&exec_path).join("git-http-backend");
        if !backend.exists() {
            return Err(other(format!("{} not found", backend.display())));
        }
        let fcgi_port = free_port()?;
        let mut fcgiwrap = server_command("fcgiwrap")
            .args(["-c", "4", "-s", &format!("tcp:127.0.0.1:{fcgi_port}")])
            .spawn()
            .map_err(|e| other(format!("fcgiwrap (apt-get install fcgiwrap): {e}")))?;
        if let Err(e) = wait_for_port(fcgi_port, &mut fcgiwrap, "fcgiwrap", None) {
            stop(&mut fcgiwrap);
            return Err(e);
        }

        let mut ca_file = None;
        let mut ssl = String::new();
        if tls {
            let pki = tunnel_tls::ThrowawayPki::generate().map_err(|e| other(e.to_string()))?;
            let files = pki
                .write_pem_files(dir.path())
                .map_err(|e| other(e.to_string()))?;
            ssl = format!(
                "ssl_certificate {};\n ssl_certificate_key {};\n ssl_protocols TLSv1.2 TLSv1.3;\n",
                files.server_cert.display(),
                files.server_key.display()
            );
            ca_file = Some(files.ca);
        }
        let (auth_server, auth_location) = match &auth {
            HttpAuth::None => (String::new(), String::new()),
            HttpAuth::Basic { user, password } => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{{PLAIN}}{password}\n"))?;
                (
                    format!(
                        "auth_basic \"git\";\n auth_basic_user_file {};\n",
                        file.display()
                    ),
                    String::new(),
                )
            }
            HttpAuth::Header(value) => (
                String::new(),
                format!(
                    "if ($http_authorization != \"{}\") {{ return 401; }}\n",
                    value.replace('"', "")
                ),
            ),
        };
        let user = if is_root() { "user root;" } else { "" };
        let d = dir.path().display();
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let listen = if tls {
                format!("127.0.0.1:{port} ssl")
            } else {
                format!("127.0.0.1:{port}")
            };
            let conf = format!(
                r#"{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  fastcgi_temp_path {d}/fastcgi;
  proxy_temp_path {d}/proxy;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_max_body_size 0;
  server {{
    listen {listen};
    {ssl}
    {auth_server}
    location / {{
      {auth_location}
      fastcgi_pass 127.0.0.1:{fcgi_port};
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {root};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_CONFIG_NOSYSTEM 1;
      fastcgi_param HOME {d};
      fastcgi_param PATH /usr/local/bin:/usr/bin:/bin;
      fastcgi_param PATH_INFO $uri;
      fastcgi_param QUERY_STRING $query_string;
      fastcgi_param REQUEST_METHOD $request_method;
      fastcgi_param CONTENT_TYPE $content_type;
      fastcgi_param CONTENT_LENGTH $content_length;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param REMOTE_ADDR $remote_addr;
      fastcgi_param SERVER_PROTOCOL $server_protocol;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_read_timeout 60s;
    }}
  }}
}}
"#,
                backend = backend.display(),
                root = root.display(),
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let mut nginx = server_command("nginx")
                .args([
                    "-p",
                    &d.to_string(),
                    "-c",
                    &conf_path.to_string_lossy(),
                    "-g",
                    "daemon off;",
                ])
                .spawn()
                .map_err(|e| other(format!("nginx (apt-get install nginx): {e}")))?;
            let log = dir.path().join("error.log");
            match wait_for_port(port, &mut nginx, "nginx", Some(&log)) {
                Ok(()) => {
                    return Ok(HttpGitServer {
                        nginx,
                        fcgiwrap,
                        port,
                        tls,
                        ca_file,
                        dir,
                    });
                }
                Err(e) => {
                    stop(&mut nginx);
                    last = Some(e);
                }
            }
        }
        stop(&mut fcgiwrap);
        Err(last.unwrap_or_else(|| other("nginx did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of repository `name` (served from `<root>/<name>.git`).
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{name}.git", self.port)
    }

    /// nginx's access log so far (request lines with status codes), for assertions and debugging.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        stop(&mut self.nginx);
        stop(&mut self.fcgiwrap);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
