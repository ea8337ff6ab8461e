//! The demo's Git side: a config repository and a manifests repository, bare, in `DIR/git/`, made with
//! the `git` CLI and served on loopback by Debian's `git daemon` (with `--enable=receive-pack`), so a
//! person can `git clone`, edit and `git push`.
//!
//! - **Repositories.** `config.git` holds `.gitlab/agents/agent-N/config.yaml` for every agent, each
//!   enabling GitOps on `manifests.git` (all its `*.yaml` files); `manifests.git` starts with a
//!   Namespace and a ConfigMap. Both are created once; a state directory that already has them keeps
//!   them (and everything pushed to them).
//! - **Serving.** The demo accepts TCP connections itself and hands each one to `git daemon --inetd`
//!   (stdin/stdout are the socket), so the port can be chosen by the OS and no daemon outlives the demo.
//!   [`GitServer::daemon_command`] is the equivalent stand-alone `git daemon` for `manual-commands.sh`.
//! - **Push → kas at once.** Each bare repository gets a `post-receive` hook, rewritten at every start,
//!   that posts a GitLab-shaped push event to kas's `POST /api/v1/webhooks/git` with the shared secret
//!   (`DIR/webhook.secret`): preferably `kas-demo webhook` ([`crate::webhook`]), else `curl`.
//! - **No Git installed.** [`find_git`] says so and the demo runs without these repositories.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The config repository's name (`DIR/git/config.git`, `git://…/config.git`).
pub const CONFIG_REPO: &str = "config";
/// The manifests repository's name.
pub const MANIFESTS_REPO: &str = "manifests";
/// Connections served at once, at most; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Why the Git side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` is not installed (or does not run).
    #[error("`git` not found ({0}); install Debian's `git` package (apt-get install git)")]
    NotInstalled(String),
    /// A `git` command failed.
    #[error("`git {args}` failed: {detail}")]
    Command { args: String, detail: String },
    /// A file or directory could not be written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr} for git://: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The `git` program and its version, if it runs.
pub fn find_git() -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GitError::NotInstalled(e.to_string()))?;
    if !out.status.success() {
        return Err(GitError::NotInstalled(format!(
            "`git --version` exited with {}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `git` in `dir` with a fixed identity and no signing, so the user's global Git configuration
/// cannot make the demo's own commits fail.
fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=kas-demo",
            "-c",
            "user.email=kas-demo@localhost",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GitError::Command {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GitError::Command {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `.gitlab/agents/<agent>/config.yaml` as the demo writes it: GitOps on the manifests repository.
pub fn agent_config_yaml(agent: &str, manifests_url: &str) -> String {
    format!(
        "# {agent}'s configuration, read by kas from this repository's default branch.\n\
         # Edit, commit and `git push`: the push webhook makes kas read it at once.\n\
         observability:\n  logging:\n    level: info\n\
         gitops:\n  manifest_projects:\n  - id: {manifests_url}\n    default_namespace: default\n    paths:\n    - glob: '**/*.yaml'\n"
    )
}

/// The manifests repository's first file.
pub const EXAMPLE_MANIFEST: &str = "\
# Applied to every demo cluster by GitOps (server-side apply). Add, change or delete objects and push.
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: greeting
  namespace: demo
data:
  message: hello from Git
";

/// How the `post-receive` hooks reach kas's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookClient {
    /// `kas-demo webhook …` (this binary).
    KasDemo(PathBuf),
    /// `curl`, reading the secret header from a file.
    Curl,
    /// Neither: pushes reach kas at its next poll.
    None,
}

impl HookClient {
    /// `kas-demo` if `binary` (or a `kas-demo` next to it or one directory up, as for test and
    /// example binaries in `target/*/deps`) is it; else `curl` if it runs; else none.
    pub fn find(binary: Option<&Path>) -> HookClient {
        let exe = binary
            .map(Path::to_owned)
            .or_else(|| std::env::current_exe().ok());
        if let Some(exe) = exe {
            let name = format!("kas-demo{}", std::env::consts::EXE_SUFFIX);
            let candidates = [
                Some(exe.clone()),
                exe.parent().map(|d| d.join(&name)),
                exe.parent().and_then(Path::parent).map(|d| d.join(&name)),
            ];
            for c in candidates.into_iter().flatten() {
                if c.file_name().is_some_and(|n| n == name.as_str()) && c.is_file() {
                    return HookClient::KasDemo(c);
                }
            }
        }
        let curl = Command::new("curl")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if curl.is_ok_and(|s| s.success()) {
            HookClient::Curl
        } else {
            HookClient::None
        }
    }
}

/// What the hooks need to call kas.
#[derive(Debug, Clone)]
pub struct HookTarget {
    /// `https://…/api/v1/webhooks/git`.
    pub url: String,
    /// The CA that signs kas's API certificate.
    pub ca_file: PathBuf,
    /// The shared secret (`X-Gitlab-Token`).
    pub secret_file: PathBuf,
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `post-receive` hook of repository `project`.
fn hook_script(client: &HookClient, target: &HookTarget, project: &str, header: &Path) -> String {
    let head = "#!/bin/sh\n# Written by kas-demo at every start: tells kas about each push at once \
                (POST /api/v1/webhooks/git).\n";
    let url = sh_quote(&target.url);
    let ca = sh_quote(&target.ca_file.to_string_lossy());
    match client {
        HookClient::KasDemo(bin) => format!(
            "{head}exec {} webhook --url {url} --ca-file {ca} --secret-file {} --project {}\n",
            sh_quote(&bin.to_string_lossy()),
            sh_quote(&target.secret_file.to_string_lossy()),
            sh_quote(project),
        ),
        // The secret travels in a header file (`-H @file`), never on a command line.
        HookClient::Curl => format!(
            "{head}while read old new ref; do\n  \
             curl -sS --max-time 5 --cacert {ca} -H @{} -H 'Content-Type: application/json' \
             --data \"{{\\\"object_kind\\\":\\\"push\\\",\\\"before\\\":\\\"$old\\\",\\\"after\\\":\\\"$new\\\",\\\"ref\\\":\\\"$ref\\\",\\\"project\\\":{{\\\"path_with_namespace\\\":\\\"{project}\\\"}}}}\" {url} || true\n  \
             echo\ndone\n",
            sh_quote(&header.to_string_lossy()),
        ),
        HookClient::None => format!(
            "{head}# neither kas-demo nor curl was found: kas sees pushes at its next poll\n"
        ),
    }
}

/// The demo's two bare repositories under `root` (`DIR/git`).
#[derive(Debug, Clone)]
pub struct Repos {
    root: PathBuf,
}

impl Repos {
    /// Creates `root/config.git` (one config file per agent name) and `root/manifests.git` unless
    /// they exist; existing repositories are kept as they are. `manifests_url` is what the agents'
    /// configs name as their manifest project.
    pub fn create(root: &Path, agents: &[String], manifests_url: &str) -> Result<Repos, GitError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let repos = Repos {
            root: root.to_owned(),
        };
        let configs: Vec<(String, String)> = agents
            .iter()
            .map(|a| {
                (
                    format!(".gitlab/agents/{a}/config.yaml"),
                    agent_config_yaml(a, manifests_url),
                )
            })
            .collect();
        repos.create_one(
            CONFIG_REPO,
            &configs,
            "Agent configurations for the kas demo",
        )?;
        repos.create_one(
            MANIFESTS_REPO,
            &[("demo.yaml".to_owned(), EXAMPLE_MANIFEST.to_owned())],
            "Example manifests for the kas demo",
        )?;
        Ok(repos)
    }

    /// `DIR/git`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/git/<name>.git`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// Builds the repository in a scratch directory and renames it into place, so an interrupted
    /// start never leaves a half-made repository that later starts would keep.
    fn create_one(
        &self,
        name: &str,
        files: &[(String, String)],
        message: &str,
    ) -> Result<(), GitError> {
        let bare = self.path(name);
        if bare.join("HEAD").is_file() {
            return Ok(());
        }
        let scratch = self.root.join(format!(".new-{name}"));
        let _ = std::fs::remove_dir_all(&scratch);
        let work = scratch.join("work");
        let tmp_bare = scratch.join(format!("{name}.git"));
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        for (path, text) in files {
            let file = work.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::write(&file, text).map_err(io_err(&file))?;
        }
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", message])?;
        let tmp = tmp_bare.to_string_lossy();
        git(&scratch, &["init", "-q", "--bare", "-b", "main", &tmp])?;
        git(&work, &["push", "-q", &tmp, "main"])?;
        std::fs::rename(&tmp_bare, &bare).map_err(io_err(&bare))?;
        let _ = std::fs::remove_dir_all(&scratch);
        tracing::info!(repository = %bare.display(), "created demo repository");
        Ok(())
    }

    /// (Re)writes both repositories' `post-receive` hooks for `client`.
    pub fn write_hooks(&self, client: &HookClient, target: &HookTarget) -> Result<(), GitError> {
        let header = self.root.join("webhook.header");
        if *client == HookClient::Curl {
            let secret = std::fs::read_to_string(&target.secret_file)
                .map_err(io_err(&target.secret_file))?;
            std::fs::write(&header, format!("X-Gitlab-Token: {}\n", secret.trim()))
                .map_err(io_err(&header))?;
            crate::set_owner_only(&header);
        } else {
            let _ = std::fs::remove_file(&header);
        }
        for name in [CONFIG_REPO, MANIFESTS_REPO] {
            let hooks = self.path(name).join("hooks");
            std::fs::create_dir_all(&hooks).map_err(io_err(&hooks))?;
            let hook = hooks.join("post-receive");
            std::fs::write(&hook, hook_script(client, target, name, &header))
                .map_err(io_err(&hook))?;
            set_executable(&hook);
        }
        Ok(())
    }
}

#[cfg(unix)]
fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
}

#[cfg(not(unix))]
fn set_executable(_: &Path) {}

/// `git://` on loopback: every accepted connection is served by its own `git daemon --inetd`.
pub struct GitServer {
    addr: SocketAddr,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitServer")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The `git daemon` options shared by the in-process server and the stand-alone command.
fn daemon_options(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy();
    vec![
        format!("--base-path={root}"),
        "--export-all".into(),
        "--enable=receive-pack".into(),
        "--init-timeout=10".into(),
        "--timeout=300".into(),
    ]
}

impl GitServer {
    /// Listens on `addr` (port 0: the OS chooses) and serves the repositories under `root`.
    pub fn start(addr: SocketAddr, root: &Path) -> Result<GitServer, GitError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| GitError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| GitError::Listen { addr, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let root = root.to_owned();
            std::thread::Builder::new()
                .name("demo-git".into())
                .spawn(move || accept_loop(&listener, &root, &stop))
                .map_err(|source| GitError::Listen { addr, source })?
        };
        Ok(GitServer {
            addr,
            root: root.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `git://<addr>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("git://{}/{name}.git", self.addr)
    }

    /// The stand-alone `git daemon` serving the same repositories on the same address.
    pub fn daemon_command(&self) -> String {
        let root = self.root.to_string_lossy();
        format!(
            "git daemon --listen={} --port={} --reuseaddr {} {root}",
            self.addr.ip(),
            self.addr.port(),
            daemon_options(&self.root).join(" "),
        )
    }

    /// Stops accepting and ends the connections still served.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(listener: &TcpListener, root: &Path, stop: &AtomicBool) {
    let mut children: Vec<Child> = Vec::new();
    let mut logged_full = false;
    for conn in listener.incoming() {
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(tcp) = conn else { continue };
        if children.len() >= MAX_CONNECTIONS {
            if !logged_full {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "demo git server busy; closing new connections"
                );
                logged_full = true;
            }
            continue;
        }
        logged_full = false;
        match serve(tcp, root) {
            Ok(child) => children.push(child),
            Err(e) => tracing::warn!(error = %e, "cannot start git daemon --inetd"),
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Hands one connection to `git daemon --inetd`.
fn serve(tcp: TcpStream, root: &Path) -> io::Result<Child> {
    let out = tcp.try_clone()?;
    Command::new("git")
        .arg("daemon")
        .arg("--inetd")
        .arg("--log-destination=none")
        .args(daemon_options(root))
        .arg(root)
        .env_remove("GIT_DIR")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(tcp)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
        .stderr(Stdio::null())
        .spawn()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_demo_config_is_valid_and_enables_gitops_on_the_manifests() {
        let text = agent_config_yaml("agent-1", "git://127.0.0.1:9418/manifests.git");
        let file = agent_config::ConfigFile::parse_bytes(
            text.as_bytes(),
            &agent_config::yaml::Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let config = file.agent_config(&agent_config::ProjectId::new("config").unwrap());
        let v = serde_json::to_value(&config).unwrap();
        let projects = &v["gitops"]["manifest_projects"];
        assert_eq!(projects.as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(projects[0]["id"], "git://127.0.0.1:9418/manifests.git");
        assert_eq!(projects[0]["paths"][0], "**/*.yaml", "{v}");
    }

    #[test]
    fn the_example_manifest_is_two_objects() {
        let docs: Vec<&str> = EXAMPLE_MANIFEST.split("\n---\n").collect();
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("kind: Namespace") && docs[1].contains("kind: ConfigMap"));
    }
}
