//! The dashboard end to end in headless Chromium: the demo deployment (kas, two simulated clusters,
//! two agentk) is started in-process, Chromium loads `/`, the test changes cluster 1 (a node and a pod
//! are added) and polls the page's DOM over the DevTools protocol until the new counts and the events
//! appear — in the same page (a marker set on `window` before the change is still there, so nothing
//! reloaded). A screenshot is saved as `target/artifacts/dashboard.png`.
//!
//! The latency of a change reaching the page is measured, not assumed: a `MutationObserver` in the
//! page records when the node count it shows changes (the page's clock and the test's are the same
//! machine's wall clock), the test records when it made the change, and every one of three changes
//! must be on the page within [`MAX_LATENCY`] (the README's "within a second" plus a generous margin
//! for a loaded 2-core machine; the measured values are printed).
//!
//! A second test reads the Configuration and GitOps panels: the demo's config commit (read from its
//! Git repository) and its manifests project synced by agentk at the manifests' commit; then a broken
//! config is pushed, with an HTML payload as the unknown key, and the page shows the rejected commit
//! and its error with the line, as text, without a reload.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`, or the path in `$CHROMIUM`) and `git`; the tests
//! fail with a clear message when they are missing. They run one at a time (two demos and two
//! browsers at once would distort the measured latencies on a small machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

// kas's test support (HTTP helpers, the hang guard), shared rather than copied.
#[path = "../../kas/tests/support/mod.rs"]
mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use git_mirror::testing::git;
use kas_demo::git::{CONFIG_REPO, HookClient, MANIFESTS_REPO};
use kas_demo::{Demo, DemoOptions};
use serde_json::{Value, json};
use support::GUARD;

/// How long Chromium may take to start (a hang guard; it is slow on a busy machine).
const BROWSER_START: Duration = Duration::from_secs(60);
/// The most a cluster change may take to show on the page.
const MAX_LATENCY: Duration = Duration::from_secs(3);

/// Records, in the page, when the node count shown for agent 1 changes: `[[ms since the epoch,
/// text], ...]` in `window.__kasNodeCounts` (the card may be re-rendered, so the whole document is
/// watched and the count read again on every mutation).
const WATCH_NODE_COUNT: &str = r#"(() => {
  const read = () => {
    const el = document.querySelector('.agent[data-agent="1"] [data-field="nodes-count"]');
    return el ? el.textContent : null;
  };
  window.__kasNodeCounts = [[Date.now(), read()]];
  new MutationObserver(() => {
    const now = read();
    const seen = window.__kasNodeCounts;
    if (seen[seen.length - 1][1] !== now) seen.push([Date.now(), now]);
  }).observe(document.body, {childList: true, characterData: true, subtree: true, attributes: true});
  return true;
})()"#;

/// Milliseconds since the epoch, the clock the page's `Date.now()` reads.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When the page first showed `count` nodes (ms since the epoch), from the observer's record.
fn shown_at(page: &mut Cdp, count: usize) -> Option<u64> {
    let seen = page.eval("window.__kasNodeCounts");
    seen.as_array()?.iter().find_map(|e| {
        (e[1].as_str()? == count.to_string()).then(|| e[0].as_f64().map(|t| t as u64))?
    })
}

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is needed for the dashboard test and was not found at {} \
         (install Debian's `chromium` package, or set CHROMIUM to its path)",
        path.display()
    );
    path
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("artifacts")
}

/// A headless Chromium with remote debugging; killed when dropped.
struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(chromium_path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // The demo's HTTPS API uses the demo's own throw-away CA.
                "--ignore-certificate-errors",
                "--window-size=1400,640",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        let mut browser = Browser {
            child,
            port: 0,
            _profile: profile,
        };
        // Chromium writes the port it chose to DevToolsActivePort in the profile directory.
        let port_file = browser._profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_START;
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                browser.port = port;
                break;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before it listened: {}",
                    browser.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start remote debugging: {}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        browser
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// A DevTools connection to the browser's first page.
    fn page(&self) -> Cdp {
        let list = support::get(&format!("http://127.0.0.1:{}/json/list", self.port), None);
        assert_eq!(list.status, 200, "{}", list.body);
        let targets = list.json();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"))
            .to_owned();
        Cdp::connect(&url)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal Chrome DevTools Protocol client: one request at a time, events skipped.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let addr = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools URL {url}"));
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(GUARD)).unwrap();
        let (ws, _) = tungstenite::client(url, tcp).unwrap();
        Cdp { ws, next_id: 1 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(request.to_string()))
            .unwrap();
        // Bounded: events in between are skipped; the socket's read timeout is the hang guard.
        for _ in 0..100_000 {
            let message = self.ws.read().unwrap();
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(reply) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if reply["id"] == id {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
        }
        panic!("no answer to {method}");
    }

    /// Evaluates `expression` in the page: its value (JSON-serialisable), or the exception.
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// [`Cdp::try_eval`], panicking on an exception.
    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }
}

/// What the page shows for agent 1, read from the DOM.
const READ_PAGE: &str = r#"(() => {
  const card = document.querySelector('.agent[data-agent="1"]');
  const f = (n) => { const el = card && card.querySelector('[data-field="' + n + '"]'); return el ? el.textContent : null; };
  return {
    agents: document.querySelectorAll('.agent[data-agent]').length,
    status: f('status'),
    nodes: f('nodes-count'),
    ready: f('nodes-ready'),
    pods: f('pods-total'),
    desired: f('deployments-desired'),
    events: [...document.querySelectorAll('#events li:not([hidden])')].map((li) => li.textContent),
    marker: window.__kasTestMarker || null,
    login_shown: document.getElementById('login') ? getComputedStyle(document.getElementById('login')).display !== 'none' : null,
    opens: (window.kasDashboard || {}).streamOpens || 0,
  };
})()"#;

/// What agent 1's Configuration and GitOps panels show, read from the DOM; `injected` counts elements
/// and globals an HTML payload in Git content would have created.
const READ_GIT: &str = r#"(() => {
  const card = document.querySelector('.agent[data-agent="1"]');
  const field = (root, n) => root && root.querySelector('[data-field="' + n + '"]');
  const text = (root, n) => { const el = field(root, n); return el ? el.textContent : null; };
  const shown = (root, n) => { const el = field(root, n); return el && !el.hidden ? el.textContent : null; };
  return {
    config_commit: text(card, 'config-commit'),
    config_status: text(card, 'config-status'),
    config_error: shown(card, 'config-error'),
    projects: card ? [...card.querySelectorAll('[data-field="gitops-projects"] > li')].map((li) => ({
      project: text(li, 'gitops-project'), phase: text(li, 'gitops-phase'),
      desired: text(li, 'gitops-desired'), synced: text(li, 'gitops-synced'),
      applied: text(li, 'gitops-applied'), unchanged: text(li, 'gitops-unchanged'),
      failed: text(li, 'gitops-failed'), pruned: text(li, 'gitops-pruned'), error: shown(li, 'gitops-error'),
    })) : [],
    events: [...document.querySelectorAll('#events li:not([hidden])')].map((li) => li.textContent),
    injected: document.querySelectorAll('.agent img, #events img').length + (window.__kasXss ? 1 : 0),
    marker: window.__kasTestMarker || null,
  };
})()"#;

/// Polls the page until `f` accepts what it shows (hang guard [`GUARD`]).
fn wait_page(cdp: &mut Cdp, what: &str, f: impl FnMut(&Value) -> bool) -> Value {
    wait_read(cdp, READ_PAGE, what, f)
}

/// Polls the page until `f` accepts what `read` evaluates to (hang guard [`GUARD`]).
fn wait_read(cdp: &mut Cdp, read: &str, what: &str, mut f: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + GUARD;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        // While the page is still loading the expression may throw: try again.
        last = cdp.try_eval(read).unwrap_or_else(|e| e);
        if f(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for the page to show {what}; it shows {last:#}");
}

fn count(v: &Value, field: &str) -> Option<usize> {
    v[field].as_str().and_then(|s| s.parse().ok())
}

/// One test at a time (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

/// The demo with `agents` agents on loopback ports, its Git side on, pushes reaching kas's webhook.
fn start_demo(state: &Path, agents: usize) -> Demo {
    git(Path::new("."), &["--version"]).expect("`git` is required (Debian package `git`)");
    let mut opts = DemoOptions::new(agents, state.join("demo"));
    opts.agent_listen = "127.0.0.1:0".parse().unwrap();
    opts.api_listen = "127.0.0.1:0".parse().unwrap();
    opts.nodes = 3;
    opts.pods = 8;
    opts.churn = 0.0;
    opts.hooks = Some(HookClient::KasDemo(PathBuf::from(env!(
        "CARGO_BIN_EXE_kas-demo"
    ))));
    Demo::start(&opts).unwrap()
}

/// A browser showing the demo's dashboard (1400×640).
fn open_dashboard(demo: &Demo) -> (Browser, Cdp) {
    let url = format!("{}/", demo.kas().api_url());
    let browser = Browser::launch();
    let mut page = browser.page();
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 640, "deviceScaleFactor": 1, "mobile": false}),
    );
    page.call("Page.enable", json!({}));
    page.call("Page.navigate", json!({"url": url}));
    (browser, page)
}

/// Saves a screenshot of the page (the whole page with `full`) as `target/artifacts/<name>`.
fn screenshot(page: &mut Cdp, name: &str, full: bool) -> PathBuf {
    let shot = page.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": full}),
    );
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &png).unwrap();
    path
}

/// The first 8 hex digits of a commit, as the page shows it.
fn short(commit: &str) -> &str {
    &commit[..8]
}

#[test]
fn the_dashboard_updates_in_place_when_the_cluster_changes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let chromium = chromium_path();
    let state = tempfile::tempdir().unwrap();
    let demo = start_demo(state.path(), 2);
    let cluster = demo.cluster(1).unwrap();
    let (browser, mut page) = open_dashboard(&demo);

    let store = cluster.store();
    let nodes_now = || store.list("v1", "Node", None).len();
    let pods_now = || store.list("v1", "Pod", None).len();
    let shown = wait_page(&mut page, "both agents with the cluster's counts", |v| {
        v["agents"] == 2
            && v["status"] == "connected"
            && v["opens"].as_u64() >= Some(1)
            && count(v, "nodes") == Some(nodes_now())
            && count(v, "pods") == Some(pods_now())
    });
    let (nodes, pods) = (nodes_now(), pods_now());
    assert_eq!(
        shown["login_shown"], false,
        "the demo's API is public: no token is asked for"
    );
    assert_eq!(nodes, 3, "{shown}");
    assert!(pods >= 8, "{shown}");

    // Marks this page: a reload would lose it.
    page.eval("window.__kasTestMarker = 'same-page'; true");
    page.eval(WATCH_NODE_COUNT);

    // Three changes, one at a time: how long each takes to reach the page.
    let mut latencies = Vec::new();
    for (n, name) in ["e2e-node-a", "e2e-node-b", "e2e-node"]
        .into_iter()
        .enumerate()
    {
        let want = nodes + n + 1;
        let changed_at = epoch_ms();
        store.add_node(name).unwrap();
        if name == "e2e-node" {
            store.add_pod("default", "e2e-pod").unwrap();
        }
        wait_page(&mut page, &format!("{want} nodes"), |v| {
            count(v, "nodes") == Some(want)
        });
        let shown = shown_at(&mut page, want)
            .unwrap_or_else(|| panic!("the observer did not see {want} nodes"));
        latencies.push(Duration::from_millis(shown.saturating_sub(changed_at)));
    }
    println!("change -> page latencies: {latencies:?}");
    for l in &latencies {
        assert!(
            *l < MAX_LATENCY,
            "a change took {l:?} to reach the page (all: {latencies:?})"
        );
    }

    let shown = wait_page(&mut page, "the new node, pod and their events", |v| {
        let events: Vec<&str> = v["events"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        count(v, "nodes") == Some(nodes + 3)
            && count(v, "ready") == Some(nodes + 3)
            && count(v, "pods") == Some(pods + 1)
            && events
                .iter()
                .any(|e| e.contains("Added") && e.contains("Pod default/e2e-pod"))
            && events
                .iter()
                .any(|e| e.contains("Added") && e.contains("Node e2e-node"))
    });
    assert_eq!(
        shown["marker"], "same-page",
        "the page must update in place, without a reload: {shown}"
    );

    // The screenshot, as a test artefact (and for the README).
    let path = screenshot(&mut page, "dashboard.png", false);
    println!("screenshot: {} ({})", path.display(), chromium.display());

    drop(page);
    drop(browser);
    demo.shutdown();
}

#[test]
fn the_dashboard_shows_the_configuration_and_gitops_status_of_each_agent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    chromium_path();
    let state = tempfile::tempdir().unwrap();
    let demo = start_demo(state.path(), 1);
    let head = |repo: &str| {
        let bare = demo
            .git_repo_path(repo)
            .unwrap_or_else(|| panic!("the demo runs without Git: {:?}", demo.git_url(repo)));
        git(&bare, &["rev-parse", "HEAD"]).unwrap()
    };
    let (config_head, manifests_head) = (head(CONFIG_REPO), head(MANIFESTS_REPO));
    let manifests_url = demo.git_url(MANIFESTS_REPO).unwrap();
    let (browser, mut page) = open_dashboard(&demo);

    // The demo's config commit, and its manifests project synced by agentk at the manifests' commit.
    let shown = wait_read(
        &mut page,
        READ_GIT,
        "the config commit and the synced manifests project",
        |v| {
            v["config_commit"] == short(&config_head)
                && v["config_status"] == "ok"
                && v["projects"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["project"] == manifests_url.as_str()
                            && p["phase"] == "synced"
                            && p["desired"] == short(&manifests_head)
                            && p["synced"] == short(&manifests_head)
                    })
                })
        },
    );
    assert_eq!(shown["config_error"], Value::Null, "{shown:#}");
    let project = &shown["projects"][0];
    assert_eq!(
        shown["projects"].as_array().map(Vec::len),
        Some(1),
        "{shown:#}"
    );
    let applied: usize = project["applied"].as_str().unwrap().parse().unwrap();
    let unchanged: usize = project["unchanged"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        applied + unchanged,
        2,
        "the example manifest is two objects: {shown:#}"
    );
    assert_eq!(project["failed"], "0", "{shown:#}");
    assert_eq!(project["pruned"], "0", "{shown:#}");
    assert_eq!(project["error"], Value::Null, "{shown:#}");
    let cluster = demo.cluster(1).unwrap();
    assert_eq!(
        cluster.store().list("v1", "ConfigMap", Some("demo")).len(),
        1,
        "agentk applied the manifests"
    );

    // A broken config pushed (its unknown key is an HTML payload): the page shows the rejected commit
    // and its error with the line, as text, in place.
    page.eval("window.__kasTestMarker = 'same-page'; true");
    let work = state.path().join("config-work");
    git(
        state.path(),
        &[
            "clone",
            "-q",
            &demo.git_url(CONFIG_REPO).unwrap(),
            &work.to_string_lossy(),
        ],
    )
    .unwrap();
    let file = work.join(".gitlab/agents/agent-1/config.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    let payload = "<img src=x onerror=window.__kasXss=1>";
    text.push_str(&format!("{payload}: true\n"));
    let line = text.lines().count();
    std::fs::write(&file, text).unwrap();
    git(&work, &["commit", "-q", "-am", "broken"]).unwrap();
    let broken = git(&work, &["rev-parse", "HEAD"]).unwrap();
    git(&work, &["push", "-q", "origin", "HEAD:main"]).unwrap();
    let shown = wait_read(&mut page, READ_GIT, "the rejected config commit", |v| {
        v["config_commit"] == short(&broken)
            && v["config_status"] == "error"
            && v["config_error"].is_string()
            && v["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e.as_str().is_some_and(|e| e.contains("rejected")))
            })
    });
    let error = shown["config_error"].as_str().unwrap();
    assert!(error.contains(&format!("line {line}")), "{shown:#}");
    assert!(
        error.contains(payload),
        "the key is shown as text: {shown:#}"
    );
    assert_eq!(
        shown["injected"], 0,
        "Git content must never become markup: {shown:#}"
    );
    assert_eq!(shown["marker"], "same-page", "no reload: {shown:#}");
    // The previous good config stays in force: GitOps goes on unchanged.
    assert_eq!(shown["projects"][0]["phase"], "synced", "{shown:#}");

    // A manifests push with an object whose name is an HTML payload: kas rejects the commit, the
    // `gitops` event brings its error (with the line) as text, the previous commit stays in force.
    let work = state.path().join("manifests-work");
    git(
        state.path(),
        &["clone", "-q", &manifests_url, &work.to_string_lossy()],
    )
    .unwrap();
    let configmap = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: '{name}'\n  namespace: demo\n")
    };
    let bad_name = "<img src=x onerror=window.__kasXss=2>";
    let more = format!("{}---\n{}", configmap("second"), configmap(bad_name));
    std::fs::write(work.join("more.yaml"), more).unwrap();
    git(&work, &["add", "more.yaml"]).unwrap();
    git(&work, &["commit", "-q", "-m", "more"]).unwrap();
    let rejected = git(&work, &["rev-parse", "HEAD"]).unwrap();
    git(&work, &["push", "-q", "origin", "HEAD:main"]).unwrap();
    let shown = wait_read(&mut page, READ_GIT, "the rejected manifests commit", |v| {
        v["projects"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(short(&rejected)))
    });
    let project = &shown["projects"][0];
    let error = project["error"].as_str().unwrap();
    assert!(
        error.contains("rejected") && error.contains("line 7"),
        "{shown:#}"
    );
    assert!(
        error.contains(bad_name),
        "the name is shown as text: {shown:#}"
    );
    assert_eq!(
        shown["injected"], 0,
        "Git content must never become markup: {shown:#}"
    );
    assert_eq!(project["desired"], short(&manifests_head), "{shown:#}");
    assert_eq!(project["synced"], short(&manifests_head), "{shown:#}");

    // The fix: the new object is applied, the panel shows the new commit synced and no error.
    std::fs::write(work.join("more.yaml"), configmap("second")).unwrap();
    git(&work, &["commit", "-q", "-am", "fixed"]).unwrap();
    let fixed = git(&work, &["rev-parse", "HEAD"]).unwrap();
    git(&work, &["push", "-q", "origin", "HEAD:main"]).unwrap();
    let shown = wait_read(
        &mut page,
        READ_GIT,
        "the fixed manifests commit synced",
        |v| {
            let p = &v["projects"][0];
            p["desired"] == short(&fixed) && p["synced"] == short(&fixed) && p["phase"] == "synced"
        },
    );
    let project = &shown["projects"][0];
    let applied: usize = project["applied"].as_str().unwrap().parse().unwrap();
    let unchanged: usize = project["unchanged"].as_str().unwrap().parse().unwrap();
    assert_eq!(applied + unchanged, 3, "{shown:#}");
    assert_eq!(project["failed"], "0", "{shown:#}");
    assert_eq!(project["error"], Value::Null, "{shown:#}");
    assert_eq!(
        cluster.store().list("v1", "ConfigMap", Some("demo")).len(),
        2,
        "agentk applied the new object"
    );
    assert_eq!(shown["marker"], "same-page", "no reload: {shown:#}");
    println!("panels: {shown:#}");
    let path = screenshot(&mut page, "dashboard-git.png", true);
    println!("screenshot: {}", path.display());

    drop(page);
    drop(browser);
    demo.shutdown();
}
