//! Real, unmodified `kubectl` against the simulated API server, using the kubeconfig the server
//! writes. These tests fail (never skip) when kubectl is missing: install it with
//! `apt-get install -y kubernetes-client`.

mod support;

use std::time::Duration;

use serde_json::Value;
use sim_apiserver::{ApiServerConfig, PodPhase};
use support::{Env, env};

fn pod_names(e: &Env) -> Vec<String> {
    e.server
        .store()
        .list("v1", "Pod", Some("default"))
        .iter()
        .filter_map(|p| {
            p.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn get_pods_and_nodes() {
    let e = env(ApiServerConfig {
        nodes: 3,
        pods: 6,
        ..Default::default()
    });
    let out = e.ok(&["get", "pods"]);
    let header = out.lines().next().unwrap_or("");
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] {
        assert!(header.contains(col), "header {header:?} lacks {col}");
    }
    let names = pod_names(&e);
    assert!(!names.is_empty());
    for n in &names {
        let row = out
            .lines()
            .find(|l| l.starts_with(n.as_str()))
            .unwrap_or_else(|| panic!("{n} missing from:\n{out}"));
        assert!(row.contains("Running") && row.contains("1/1"), "{row}");
    }

    let nodes: Value =
        serde_json::from_str(&e.ok(&["get", "nodes", "-o", "json"])).expect("kubectl prints JSON");
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["kind"], "Node");
    assert_eq!(items[0]["metadata"]["name"], "sim-node-1");
    let ready = items[0]["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned();
    assert_eq!(
        ready.map(|c| c["status"].clone()),
        Some(Value::from("True"))
    );

    let wide = e.ok(&["get", "nodes"]);
    assert!(
        wide.lines().any(|l| l.starts_with("sim-node-1")
            && l.contains("Ready")
            && l.contains("control-plane")),
        "{wide}"
    );
    let all = e.ok(&["get", "deploy,svc", "-A"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/kubernetes"),
        "{all}"
    );
}

#[test]
fn get_pods_watch_sees_live_changes() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 2,
        ..Default::default()
    });
    let first = pod_names(&e).into_iter().next().expect("a pod");
    let mut w = e.spawn(&["get", "pods", "--watch"]);
    w.wait_for("the initial pod list", |l| l.starts_with(&first));
    e.server
        .store()
        .add_pod("default", "watched-pod")
        .expect("add pod");
    w.wait_for("the new pod", |l| {
        l.starts_with("watched-pod") && l.contains("Running")
    });
    e.server
        .store()
        .set_pod_phase("default", "watched-pod", PodPhase::Failed)
        .expect("fail pod");
    w.wait_for("the pod failing", |l| {
        l.starts_with("watched-pod") && l.contains("Error")
    });
}

#[test]
fn logs_follow_streams_lines() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        log_interval: Duration::from_millis(50),
        ..Default::default()
    });
    e.server
        .store()
        .add_pod("default", "talker")
        .expect("add pod");
    let mut f = e.spawn(&["logs", "-f", "--tail=1", "talker"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let line = f.wait_for("a log line", |l| l.contains("handled request"));
        ids.push(line);
    }
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "lines keep coming: {ids:?}"
    );
    // When the container stops, following ends and kubectl exits.
    e.server
        .store()
        .set_pod_phase("default", "talker", PodPhase::Succeeded)
        .expect("finish pod");
    f.wait_for_end();
    let tail = e.ok(&["logs", "talker", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
}

const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  labels:
    app: demo
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: hello
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector:
    app: hello
  ports:
  - port: 80
    targetPort: 80
";

#[test]
fn apply_get_and_delete() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    });
    let file = e.dir.path().join("manifest.yaml");
    std::fs::write(&file, MANIFEST).expect("write manifest");
    let f = file.to_string_lossy().to_string();
    let out = e.ok(&["apply", "-f", &f]);
    for what in [
        "configmap/demo created",
        "deployment.apps/hello created",
        "service/hello created",
    ] {
        assert!(out.contains(what), "{out}");
    }
    let cm: Value =
        serde_json::from_str(&e.ok(&["get", "configmap", "demo", "-o", "json"])).expect("json");
    assert_eq!(cm["data"]["greeting"], "hello");
    assert!(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert_eq!(
        e.ok(&["get", "deploy", "hello", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );

    // Changing the manifest patches the live objects (strategic merge patch).
    std::fs::write(
        &file,
        MANIFEST
            .replace("greeting: hello", "greeting: bonjour")
            .replace("replicas: 2", "replicas: 3"),
    )
    .expect("write manifest");
    let out = e.ok(&["apply", "-f", &f]);
    assert!(
        out.contains("configmap/demo configured")
            && out.contains("deployment.apps/hello configured"),
        "{out}"
    );
    assert!(out.contains("service/hello unchanged"), "{out}");
    assert_eq!(
        e.ok(&["get", "cm", "demo", "-o", "jsonpath={.data.greeting}"]),
        "bonjour"
    );
    assert_eq!(
        e.ok(&["get", "deploy", "hello", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    let deploy = e
        .server
        .store()
        .get("apps/v1", "Deployment", Some("default"), "hello")
        .expect("stored");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(
        !deploy.to_string().contains("$setElementOrder"),
        "patch directives are not stored"
    );

    let out = e.ok(&["delete", "-f", &f]);
    assert!(out.contains("configmap \"demo\" deleted"), "{out}");
    let gone = e.run(&["get", "cm", "demo"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(
        e.server
            .store()
            .get("apps/v1", "Deployment", Some("default"), "hello")
            .is_none()
    );
}

#[test]
fn apply_server_side() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    });
    let file = e.dir.path().join("cm.yaml");
    let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  level: one\n";
    std::fs::write(&file, doc).expect("write");
    let f = file.to_string_lossy().to_string();
    let out = e.ok(&["apply", "--server-side", "-f", &f]);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    std::fs::write(&file, doc.replace("level: one", "level: two")).expect("write");
    e.ok(&["apply", "--server-side", "-f", &f]);
    assert_eq!(
        e.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.level}"]),
        "two"
    );
    let stored = e
        .server
        .store()
        .get("v1", "ConfigMap", Some("default"), "ssa")
        .expect("stored");
    assert_eq!(stored["data"]["level"], "two");
}

#[test]
fn delete_pod_and_labels() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 3,
        ..Default::default()
    });
    let victim = pod_names(&e).into_iter().next().expect("a pod");
    let out = e.ok(&["delete", "pod", &victim]);
    assert!(out.contains(&format!("pod \"{victim}\" deleted")), "{out}");
    assert!(!pod_names(&e).contains(&victim));
    let gone = e.run(&["get", "pod", &victim]);
    assert!(!gone.status.success());

    e.ok(&["label", "deploy", "web", "tier=frontend"]);
    let selected = e.ok(&["get", "deploy", "-l", "tier in (frontend)", "-o", "name"]);
    assert_eq!(selected.trim(), "deployment.apps/web");
    let running = e.ok(&[
        "get",
        "pods",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    assert_eq!(running.lines().count(), 2, "{running}");
    e.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert_eq!(
        e.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
}

/// kubectl never sends bearer tokens over plain HTTP, so against a token-protected server it
/// is refused; the 401 `Status` must reach the user as kubectl's "provide credentials" error.
#[test]
fn unauthorized_is_reported() {
    let e = env(ApiServerConfig {
        bearer_token: Some("tok-123".into()),
        ..Default::default()
    });
    let o = e.run(&["get", "namespaces"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("provide credentials"), "{err}");
}

/// `kubectl create <kind>` sends protobuf bodies for these kinds.
#[test]
fn create_typed_objects() {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    });
    assert!(
        e.ok(&["create", "namespace", "team-a"])
            .contains("namespace/team-a created")
    );
    e.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team-a",
        "--from-literal=mode=fast",
    ]);
    e.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "team-a",
        "--from-literal=password=hunter2",
    ]);
    e.ok(&[
        "create",
        "deployment",
        "shop",
        "-n",
        "team-a",
        "--image=shop:1",
        "--replicas=2",
    ]);
    let store = e.server.store();
    let cm = store
        .get("v1", "ConfigMap", Some("team-a"), "cfg")
        .expect("configmap stored");
    assert_eq!(cm["data"]["mode"], "fast");
    let secret = store
        .get("v1", "Secret", Some("team-a"), "pw")
        .expect("secret stored");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    let d = store
        .get("apps/v1", "Deployment", Some("team-a"), "shop")
        .expect("deployment stored");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:1"
    );
    e.ok(&["create", "serviceaccount", "bot", "-n", "team-a"]);
    e.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "team-a",
        "--verb=get,list",
        "--resource=pods",
    ]);
    e.ok(&[
        "create",
        "rolebinding",
        "reader",
        "-n",
        "team-a",
        "--role=reader",
        "--serviceaccount=team-a:bot",
    ]);
    e.ok(&[
        "create",
        "clusterrole",
        "viewer",
        "--verb=get",
        "--resource=nodes",
    ]);
    e.ok(&[
        "create",
        "clusterrolebinding",
        "viewer",
        "--clusterrole=viewer",
        "--user=ann",
    ]);
    assert!(
        store
            .get("v1", "ServiceAccount", Some("team-a"), "bot")
            .is_some()
    );
    let role = store
        .get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            Some("team-a"),
            "reader",
        )
        .expect("role stored");
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"])
    );
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
    let rb = store
        .get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            Some("team-a"),
            "reader",
        )
        .expect("role binding stored");
    assert_eq!(rb["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(rb["subjects"][0]["namespace"], "team-a");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    let crb = store
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            None,
            "viewer",
        )
        .expect("cluster role binding stored");
    assert_eq!(crb["subjects"][0]["name"], "ann");
    let out = e.ok(&["delete", "namespace", "team-a"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        store
            .get("v1", "ConfigMap", Some("team-a"), "cfg")
            .is_none()
    );
}
