//! End to end with the real `kubectl`: `kas-demo` started in-process (kas with its HTTPS API, two
//! simulated clusters, one real agentk per cluster, all on 127.0.0.1 ports chosen by the OS), and
//! `kubectl` using the kubeconfig the demo writes (`agent-1` / `agent-2` contexts pointing at kas's
//! `/k8s-proxy` with `pat:<agent>:<token>`). Every request goes kubectl → kas → tunnel → agentk →
//! simulated API server and back.
//!
//! kubectl is required (the test command installs it); without it these tests fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// kas's test support (the kubectl runner and HTTP helpers), shared rather than copied.
#[path = "../../kas/tests/support/e2e.rs"]
mod e2e;
#[path = "../../kas/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;

use e2e::{Kubectl, names, pod_names};
use kas_demo::{Demo, DemoOptions};
use sim_apiserver::objects::PodPhase;

/// The demo on ephemeral ports, without churn (the clusters change only when a test changes them).
struct Setup {
    demo: Option<Demo>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        // Fail (not skip) right away when kubectl is missing.
        e2e::kubectl_path();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DemoOptions::new(2, dir.path().join("state"));
        opts.agent_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.nodes = 3;
        opts.pods = 8;
        opts.churn = 0.0;
        let demo = Demo::start(&opts).unwrap();
        Setup {
            demo: Some(demo),
            dir,
        }
    }

    fn demo(&self) -> &Demo {
        self.demo.as_ref().unwrap()
    }

    fn kubectl(&self, context: &str) -> Kubectl {
        Kubectl::new(
            &self.demo().kubeconfig_path(),
            context,
            &self.dir.path().join("kube-cache"),
        )
    }

    fn cluster(&self, id: u64) -> &sim_apiserver::RunningApiServer {
        self.demo().cluster(id).unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(demo) = self.demo.take() {
            demo.shutdown();
        }
    }
}

#[test]
fn kubectl_get_pods_and_nodes_reach_each_agents_own_cluster() {
    let s = Setup::start();
    let server = s.demo().kas().k8s_proxy_url();
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");
    let kubeconfig = std::fs::read_to_string(s.demo().kubeconfig_path()).unwrap();
    assert!(kubeconfig.contains(&server), "{kubeconfig}");

    let pods1 = pod_names(s.cluster(1), None);
    let pods2 = pod_names(s.cluster(2), None);
    assert!(pods1.len() >= 8 && pods2.len() >= 8, "{pods1:?} {pods2:?}");
    // The clusters are seeded differently: no pod name is shared (what the checks below rely on).
    assert!(
        pods1.iter().all(|p| !pods2.contains(p)),
        "{pods1:?} {pods2:?}"
    );

    for (ctx, mine, theirs) in [("agent-1", &pods1, &pods2), ("agent-2", &pods2, &pods1)] {
        // The plain table kubectl prints (kas passes the Table content negotiation through).
        let out = s.kubectl(ctx).ok(&["get", "pods", "--all-namespaces"]);
        let header = out.lines().next().unwrap_or_default();
        assert!(
            header.contains("NAMESPACE") && header.contains("NAME") && header.contains("STATUS"),
            "{out}"
        );
        for pod in mine.iter() {
            assert!(
                out.contains(pod.as_str()),
                "{ctx}: {pod} missing from\n{out}"
            );
        }
        for pod in theirs.iter() {
            assert!(
                !out.contains(pod.as_str()),
                "{ctx}: {pod} of the other cluster in\n{out}"
            );
        }
        assert_eq!(out.lines().count(), mine.len() + 1, "{out}");
    }

    // Nodes as JSON, compared with each simulated cluster's own nodes (names and uids).
    for id in [1u64, 2] {
        let list = s
            .kubectl(&format!("agent-{id}"))
            .json(&["get", "nodes", "-o", "json"]);
        assert_eq!(list["kind"], "List", "{list}");
        let items = list["items"].as_array().unwrap();
        let expected = s.cluster(id).store().list("v1", "Node", None);
        assert_eq!(names(items), names(&expected));
        let uids = |v: &[serde_json::Value]| {
            let mut u: Vec<String> = v
                .iter()
                .map(|n| n["metadata"]["uid"].as_str().unwrap().to_owned())
                .collect();
            u.sort();
            u
        };
        assert_eq!(uids(items), uids(&expected), "agent-{id}");
        for node in items {
            assert_eq!(node["kind"], "Node");
            assert!(node["status"]["conditions"].is_array(), "{node}");
        }
    }
}

/// `EVENT NAME ...` lines of `kubectl get --watch --output-watch-events` (table output).
fn event(line: &str) -> (String, String) {
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or_default().to_owned();
    let name = words.next().unwrap_or_default().to_owned();
    (kind, name)
}

/// Reads watch lines until every name in `names` was ADDED (the initial list); returns the names
/// seen. Panics on a line for `forbidden`.
fn read_initial_list(watch: &mut e2e::KubectlStream, names: &[String], forbidden: &str) {
    let mut missing: Vec<&String> = names.iter().collect();
    for _ in 0..10_000 {
        if missing.is_empty() {
            return;
        }
        let line = watch
            .next_line()
            .expect("the watch ended during the initial list");
        assert!(!line.contains(forbidden), "{line}");
        let (kind, name) = event(&line);
        if kind == "ADDED" {
            missing.retain(|n| **n != name);
        }
    }
    panic!("the initial list never completed: {missing:?}");
}

#[test]
fn kubectl_get_pods_watch_shows_changes_as_they_happen() {
    let s = Setup::start();
    let store = s.cluster(1).store();
    let existing = pod_names(s.cluster(1), Some("default"));
    assert!(!existing.is_empty());
    let args = [
        "get",
        "pods",
        "--namespace",
        "default",
        "--watch",
        "--output-watch-events",
    ];
    let mut watch = s.kubectl("agent-1").spawn(&args);
    let header = watch.next_line().expect("a header");
    assert!(
        header.starts_with("EVENT") && header.contains("NAME"),
        "{header}"
    );
    // The initial list arrives first (as ADDED events); the watch then stays open from the list's
    // resourceVersion, so every change made from now on must show up.
    read_initial_list(&mut watch, &existing, "created-while-watching");
    assert!(watch.is_running(), "{}", watch.stderr());

    let name = "created-while-watching";
    store.add_pod("default", name).unwrap();
    let line = watch.wait_for("the new pod", |l| l.contains(name));
    assert_eq!(event(&line), ("ADDED".into(), name.into()), "{line}");
    store
        .set_pod_phase("default", name, PodPhase::Failed)
        .unwrap();
    let line = watch.wait_for("the pod's change", |l| l.contains(name));
    assert_eq!(event(&line), ("MODIFIED".into(), name.into()), "{line}");
    store.delete_pod("default", name).unwrap();
    watch.wait_for("the pod's deletion", |l| {
        event(l) == ("DELETED".into(), name.into())
    });
    assert!(watch.is_running(), "the watch ended: {}", watch.stderr());
    drop(watch);

    // Agent 2's watch sees agent 2's cluster only: a pod added to cluster 1 first never shows up,
    // the one added to cluster 2 next does.
    let existing2 = pod_names(s.cluster(2), Some("default"));
    let mut watch2 = s.kubectl("agent-2").spawn(&args);
    read_initial_list(&mut watch2, &existing2, "only-in-cluster-1");
    s.cluster(1)
        .store()
        .add_pod("default", "only-in-cluster-1")
        .unwrap();
    s.cluster(2)
        .store()
        .add_pod("default", "only-in-cluster-2")
        .unwrap();
    let line = watch2.wait_for("cluster 2's new pod", |l| {
        assert!(!l.contains("only-in-cluster-1"), "{l}");
        l.contains("only-in-cluster-2")
    });
    assert_eq!(event(&line), ("ADDED".into(), "only-in-cluster-2".into()));
}

#[test]
fn kubectl_logs_follow_streams_lines_as_they_are_written() {
    let s = Setup::start();
    s.cluster(1).store().add_pod("default", "logger").unwrap();
    // The pod does not exist in cluster 2.
    let err = s.kubectl("agent-2").fails(&["logs", "logger"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    let mut logs = s
        .kubectl("agent-1")
        .spawn(&["logs", "--follow", "--tail=1", "logger"]);
    let id = |line: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("id="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a simulated log line: {line:?}"))
    };
    // The last line written so far, then lines written after kubectl started following: each one
    // arrives while kubectl still runs (the follow stream is not buffered until its end).
    let first = logs.next_line().expect("a first log line");
    let mut previous = id(&first);
    for _ in 0..2 {
        let line = logs.next_line().expect("a followed log line");
        let n = id(&line);
        assert_eq!(n, previous + 1, "{line}");
        assert!(line.contains("handled request"), "{line}");
        previous = n;
        assert!(
            logs.is_running(),
            "kubectl logs -f ended: {}",
            logs.stderr()
        );
    }
}

#[test]
fn kubectl_apply_get_delete_a_configmap_in_the_chosen_cluster() {
    let s = Setup::start();
    let k1 = s.kubectl("agent-1");
    let k2 = s.kubectl("agent-2");
    let manifest = s.dir.path().join("settings.yaml");
    let write = |greeting: &str| {
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: e2e-settings\n  namespace: default\n  \
                 labels:\n    app: e2e\ndata:\n  greeting: {greeting}\n"
            ),
        )
        .unwrap();
    };
    let path = manifest.to_str().unwrap();

    // Create (client-side apply: GET 404, then POST).
    write("hello");
    let out = k1.ok(&["apply", "-f", path]);
    assert!(out.contains("configmap/e2e-settings created"), "{out}");
    let cm = k1.json(&["get", "configmap", "e2e-settings", "-o", "json"]);
    assert_eq!(cm["data"]["greeting"], "hello", "{cm}");
    assert_eq!(cm["metadata"]["labels"]["app"], "e2e", "{cm}");
    let stored = s
        .cluster(1)
        .store()
        .get("v1", "ConfigMap", Some("default"), "e2e-settings")
        .expect("the ConfigMap is in cluster 1");
    assert_eq!(stored["metadata"]["uid"], cm["metadata"]["uid"]);
    // Only in cluster 1.
    assert!(
        s.cluster(2)
            .store()
            .get("v1", "ConfigMap", Some("default"), "e2e-settings")
            .is_none()
    );
    let err = k2.fails(&["get", "configmap", "e2e-settings"]);
    assert!(err.contains("NotFound"), "{err}");

    // Update (client-side apply of a changed manifest: a strategic merge PATCH).
    write("bonjour");
    let out = k1.ok(&["apply", "-f", path]);
    assert!(out.contains("configmap/e2e-settings configured"), "{out}");
    let out = k1.ok(&[
        "get",
        "configmap",
        "e2e-settings",
        "-o",
        "jsonpath={.data.greeting}",
    ]);
    assert_eq!(out, "bonjour");

    // Server-side apply of the same manifest into cluster 2.
    let out = k2.ok(&["apply", "--server-side", "-f", path]);
    assert!(
        out.contains("configmap/e2e-settings serverside-applied"),
        "{out}"
    );
    let stored2 = s
        .cluster(2)
        .store()
        .get("v1", "ConfigMap", Some("default"), "e2e-settings")
        .expect("the ConfigMap is in cluster 2 now");
    assert_eq!(stored2["data"]["greeting"], "bonjour");
    assert_ne!(stored2["metadata"]["uid"], cm["metadata"]["uid"]);

    // An object made in cluster 2 only is invisible through agent 1.
    let out = k2.ok(&["create", "configmap", "only-in-2", "--from-literal=k=v"]);
    assert!(out.contains("configmap/only-in-2 created"), "{out}");
    let err = k1.fails(&["get", "configmap", "only-in-2"]);
    assert!(err.contains("NotFound"), "{err}");
    let listed = k1.ok(&["get", "configmaps", "-o", "name"]);
    assert!(!listed.contains("only-in-2"), "{listed}");
    let listed = k2.ok(&["get", "configmaps", "-o", "name"]);
    assert!(listed.contains("configmap/only-in-2"), "{listed}");

    // Delete in cluster 1: NotFound there afterwards; cluster 2's copy stays.
    let out = k1.ok(&["delete", "configmap", "e2e-settings"]);
    assert!(out.contains("deleted"), "{out}");
    let err = k1.fails(&["get", "configmap", "e2e-settings"]);
    assert!(
        err.contains("NotFound") && err.contains("e2e-settings"),
        "{err}"
    );
    assert!(
        s.cluster(1)
            .store()
            .get("v1", "ConfigMap", Some("default"), "e2e-settings")
            .is_none()
    );
    let out = k2.ok(&[
        "get",
        "configmap",
        "e2e-settings",
        "-o",
        "jsonpath={.data.greeting}",
    ]);
    assert_eq!(out, "bonjour");
    // Deleting what is not there: kubectl reports the API's NotFound.
    let err = k1.fails(&["delete", "configmap", "e2e-settings"]);
    assert!(err.contains("NotFound"), "{err}");

    // A large object both ways (512 KiB of data in the request and in the response bodies).
    let blob: String = (0..512 * 1024u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let blob_file = s.dir.path().join("blob.txt");
    std::fs::write(&blob_file, &blob).unwrap();
    let from_file = format!("--from-file=blob={}", blob_file.display());
    let out = k1.ok(&["create", "configmap", "big", &from_file]);
    assert!(out.contains("configmap/big created"), "{out}");
    let back = k1.ok(&["get", "configmap", "big", "-o", "jsonpath={.data.blob}"]);
    assert!(
        back == blob,
        "the large ConfigMap came back changed ({} bytes)",
        back.len()
    );

    // A list in pages of one (limit/continue through kas): every ConfigMap, once.
    for ns in [None, Some("default")] {
        let mut args = vec!["get", "configmaps", "--chunk-size=1", "-o", "name"];
        if ns.is_none() {
            args.push("--all-namespaces");
        }
        let out = k1.ok(&args);
        let mut listed: Vec<&str> = out
            .lines()
            .map(|l| l.trim_start_matches("configmap/"))
            .collect();
        listed.sort_unstable();
        let expected = names(&s.cluster(1).store().list("v1", "ConfigMap", ns));
        assert_eq!(listed, expected, "{ns:?}");
    }
}
