//! The deployment artefacts in `deploy/`: the agentk kustomization (base and overlays) rendered by
//! the real `kubectl kustomize`, checked (security context, probes without ports, RBAC derived from
//! what agentk watches and does, nothing more) and applied to the simulated API server (the base for
//! real, the overlays with `--dry-run=server`); the kas systemd unit checked by `systemd-analyze`;
//! the Containerfile's stages. Fails (never skips) when kubectl or systemd-analyze is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sim_apiserver::{ApiServer, ApiServerConfig};

const OVERLAYS: [&str; 3] = ["base", "overlays/https-proxy", "overlays/wss"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output();
    match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?} ({e}); install kubectl / systemd (scripts/test.sh)"),
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl kustomize deploy/agentk/<dir>`: the YAML text and its objects.
fn render(dir: &str) -> (String, Vec<Value>) {
    let path = repo().join("deploy/agentk").join(dir);
    let text = ok(Command::new("kubectl").arg("kustomize").arg(&path));
    let objects = text
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("<from>").to_owned(),
            )
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The Deployment: non-root, read-only root filesystem, no privilege escalation, no capabilities,
/// RuntimeDefault seccomp, resources, exec probes only (no port), the status file in an emptyDir.
fn check_deployment(objects: &[Value]) -> Value {
    let d = find(objects, "Deployment", "agentk");
    assert_eq!(d["metadata"]["namespace"], "gitlab-agent");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "agentk");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null(), "capabilities added");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["ports"].is_null(), "agentk must not expose a port");
    for r in ["cpu", "memory"] {
        assert!(c["resources"]["requests"][r].is_string(), "no {r} request");
    }
    assert!(c["resources"]["limits"]["memory"].is_string());
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        let cmd = strings(&p["exec"]["command"]);
        assert_eq!(cmd[..2], ["/agentk", "health"], "{probe}: {cmd:?}");
        assert!(p["httpGet"].is_null() && p["tcpSocket"].is_null() && p["grpc"].is_null());
    }
    let env = env_of(c);
    let get = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    let status_file = get("AGENTK_STATUS_FILE");
    let token_file = get("AGENTK_TOKEN_FILE");
    assert_eq!(get("AGENTK_IN_CLUSTER"), "true");
    assert!(get("AGENTK_LOG_LEVEL").len() > 1);
    // Both files are under volume mounts: the status file in an emptyDir, the token from the Secret.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounted = |file: &str| {
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{file} is not on a volume"));
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap()
            .clone()
    };
    assert!(mounted(&status_file)["emptyDir"].is_object());
    let secret = mounted(&token_file)["secret"]["secretName"].clone();
    find(objects, "Secret", secret.as_str().unwrap());
    d.clone()
}

/// RBAC: no wildcard; read-only on what agentk's informers watch (derived from agentk's default
/// watch kinds) and on Services (service-proxy); impersonation of users, groups and GitLab's
/// extras only; writes only to ConfigMaps in agentk's namespace (GitOps inventories); no Secrets.
fn check_rbac(objects: &[Value]) {
    let cluster_role = find(objects, "ClusterRole", "gitlab-agent-agentk");
    let binding = find(objects, "ClusterRoleBinding", "gitlab-agent-agentk");
    assert_eq!(binding["roleRef"]["name"], "gitlab-agent-agentk");
    assert_eq!(binding["subjects"][0]["name"], "agentk");
    assert_eq!(binding["subjects"][0]["namespace"], "gitlab-agent");
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in cluster_role["rules"].as_array().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    assert!(!g.contains('*') && !r.contains('*') && !v.contains('*'));
                    granted.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    // Derived from what agentk watches.
    for kind in agentk::default_watch_kinds() {
        let plural = format!("{}s", kind.kind.to_lowercase());
        for verb in ["get", "list", "watch"] {
            assert!(
                granted.contains(&(kind.group.clone(), plural.clone(), verb.to_owned())),
                "agentk watches {kind:?} but may not {verb} {plural}"
            );
        }
    }
    // The service proxy resolves each target Service from a watch (list + watch).
    for verb in ["list", "watch"] {
        assert!(
            granted.contains(&(String::new(), "services".to_owned(), verb.to_owned())),
            "the service proxy watches Services but may not {verb} them"
        );
    }
    for (g, r, v) in &granted {
        let allowed = match v.as_str() {
            "get" | "list" | "watch" => r != "secrets",
            "impersonate" => {
                (g.is_empty() && (r == "users" || r == "groups"))
                    || (g == "authentication.k8s.io"
                        && r.starts_with("userextras/agent.gitlab.com/"))
            }
            _ => false,
        };
        assert!(allowed, "ClusterRole grants {v} on {g}/{r}");
    }
    let role = find(objects, "Role", "agentk-inventory");
    assert_eq!(role["metadata"]["namespace"], "gitlab-agent");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["resources"]), ["configmaps"]);
        assert_eq!(strings(&rule["apiGroups"]), [""]);
    }
    let rb = find(objects, "RoleBinding", "agentk-inventory");
    assert_eq!(rb["roleRef"]["name"], "agentk-inventory");
}

#[test]
fn the_agentk_kustomization_renders_is_locked_down_and_applies() {
    let server = ApiServer::start(ApiServerConfig::default()).expect("simulated API server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, "sim").unwrap();
    let kubectl = |args: &[&str]| {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .env("KUBECACHEDIR", dir.path().join("cache"));
        c
    };

    for overlay in OVERLAYS {
        let (text, objects) = render(overlay);
        let kinds: BTreeSet<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Namespace",
                "Role",
                "RoleBinding",
                "Secret",
                "ServiceAccount"
            ]),
            "{overlay}"
        );
        let d = check_deployment(&objects);
        check_rbac(&objects);
        let env = env_of(&d["spec"]["template"]["spec"]["containers"][0]);
        let address = env
            .iter()
            .find(|(n, _)| n == "AGENTK_KAS_ADDRESS")
            .map(|(_, v)| v.as_str())
            .unwrap();
        let proxy = env.iter().find(|(n, _)| n == "HTTPS_PROXY");
        match overlay {
            "overlays/wss" => assert!(address.starts_with("wss://"), "{address}"),
            _ => assert!(address.starts_with("tls://"), "{address}"),
        }
        assert_eq!(
            proxy.is_some(),
            overlay == "overlays/https-proxy",
            "{overlay}"
        );

        let file = dir
            .path()
            .join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        let file = file.to_str().unwrap();
        if overlay == "base" {
            // For real: later dry runs need the namespace.
            ok(&mut kubectl(&["apply", "-f", file]));
            let stored: Value = serde_json::from_str(&ok(&mut kubectl(&[
                "get",
                "deployment",
                "agentk",
                "-n",
                "gitlab-agent",
                "-o",
                "json",
            ])))
            .unwrap();
            let sc = &stored["spec"]["template"]["spec"]["containers"][0]["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{stored}");
            assert_eq!(sc["allowPrivilegeEscalation"], false);
        } else {
            let out = ok(&mut kubectl(&["apply", "--dry-run=server", "-f", file]));
            assert!(
                out.contains("deployment.apps/agentk configured (server dry run)")
                    || out.contains("deployment.apps/agentk unchanged (server dry run)"),
                "{out}"
            );
        }
    }
    // The dry runs changed nothing: the stored Deployment still dials tls:// without a proxy.
    let stored = ok(&mut kubectl(&[
        "get",
        "deployment",
        "agentk",
        "-n",
        "gitlab-agent",
        "-o",
        "json",
    ]));
    assert!(
        !stored.contains("HTTPS_PROXY") && !stored.contains("wss://"),
        "dry run applied"
    );
}

#[test]
fn the_kas_systemd_unit_is_valid_and_hardened() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/kas.service")).unwrap();
    for option in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "DynamicUser=yes",
        "StateDirectory=kas",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(option), "kas.service lacks {option:?}");
    }
    // systemd-analyze needs an executable ExecStart: check a copy pointing at /bin/true.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kas.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/kas", "/bin/true")).unwrap();
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Exposure at most 2.0 of 10 (systemd's scale; 1.x is "OK").
    let security = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&copy));
    assert!(security.contains("Overall exposure level"), "{security}");
}

#[test]
fn the_containerfile_builds_both_binaries_static_on_an_empty_base() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 3, "{stages:?}");
    assert!(
        stages[0].contains("alpine") && stages[0].ends_with("AS build"),
        "musl build stage"
    );
    assert_eq!(stages[1], "FROM scratch AS agentk");
    assert_eq!(stages[2], "FROM scratch AS kas");
    assert!(text.contains("cargo build --release --locked -p kas -p agentk"));
    assert_eq!(
        text.matches("USER 65532:65532").count(),
        2,
        "non-root in both images"
    );
    // The stages' entry points are the binaries the kustomization's probes call.
    assert!(text.contains("ENTRYPOINT [\"/agentk\"]") && text.contains("ENTRYPOINT [\"/kas\"]"));
    // The packages it builds exist in the workspace.
    for krate in ["kas", "agentk"] {
        assert!(repo().join(krate).join("Cargo.toml").is_file());
    }
}

/// A free loopback port (bound and released: a race with other tests is unlikely and only fails).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the process group `pgid` (the script's session, which this test started).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status();
}

#[test]
fn the_manual_commands_reproduce_the_demo() {
    use std::io::{BufRead as _, BufReader};
    // The script runs kas, simulator (→ sim-apiserver) and agentk from the build directory.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kas-demo"))
        .parent()
        .unwrap()
        .to_owned();
    let mut build = Command::new(env!("CARGO"));
    build.args([
        "build",
        "--bins",
        "-p",
        "kas",
        "-p",
        "agentk",
        "-p",
        "simulator",
        "-p",
        "sim-apiserver",
    ]);
    if bin_dir.ends_with("release") {
        build.arg("--release");
    }
    ok(build.current_dir(repo()));

    let state = tempfile::tempdir().unwrap();
    let (agent_port, api_port, git_port) = (free_port(), free_port(), free_port());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kas-demo"))
        .arg("--agents")
        .arg("2")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--git-listen")
        .arg(format!("127.0.0.1:{git_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .take(200)
        .map_while(Result::ok)
        .any(|l| l == "ready");
    // The demo wrote the script; it is stopped so the script can take its ports.
    let _ = Command::new("kill").arg(demo.id().to_string()).status();
    let _ = demo.wait();
    assert!(ready, "the demo never printed ready");
    let script = state.path().join("manual-commands.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        text.contains("--prometheus cluster-1") && text.contains("--log-level info"),
        "{text}"
    );

    // The script in its own session, with the workspace's binaries first on PATH.
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut run = Command::new("setsid")
        .arg("sh")
        .arg(&script)
        .env("PATH", path)
        .env("HOME", state.path())
        .stdin(Stdio::null())
        // Files, not pipes: the servers the script starts keep its output open.
        .stdout(std::fs::File::create(state.path().join("script.out")).unwrap())
        .stderr(std::fs::File::create(state.path().join("script.err")).unwrap())
        .spawn()
        .unwrap();
    let pgid = run.id();
    // The script ends after its (bounded, 60 s) retry of `kubectl get pods`; its servers keep running.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let check = || -> Result<(), String> {
        let status = status.ok_or("the script did not finish")?;
        let out = std::fs::read_to_string(state.path().join("script.out")).unwrap();
        if !status.success() || !out.contains("Running") {
            return Err(format!(
                "kubectl through the manual deployment: {status:?}\n{out}"
            ));
        }
        // The demo's Prometheus query, as the demo prints it, reaches cluster-1's fake Prometheus.
        let bearer = format!(
            "Authorization: Bearer pat:1:{}",
            std::fs::read_to_string(state.path().join("user-demo.token"))
                .unwrap()
                .trim()
        );
        let curl = run_out(Command::new("curl").args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            state.path().join("ca.pem").to_str().unwrap(),
            "-H",
            &bearer,
            &format!("https://127.0.0.1:{api_port}/api/v1/agents/1/proxy/monitoring/prometheus:web/api/v1/query?query=up"),
        ]));
        if !curl.contains("\"cluster\":\"cluster-1\"") {
            return Err(format!("prometheus through kas: {curl}"));
        }
        Ok(())
    };
    let result = check();
    kill_group(pgid);
    let _ = run.wait();
    if let Err(e) = result {
        let err = std::fs::read_to_string(state.path().join("script.err")).unwrap_or_default();
        panic!(
            "{e}\nscript stderr (tail):\n{}",
            err.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }
}

fn run_out(cmd: &mut Command) -> String {
    let out = run(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
