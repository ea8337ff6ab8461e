//! `kas demo --replicas 3`: three kas replicas on one `redis-server` the demo starts; the real
//! `kubectl` reaches every agent through every replica (contexts `agent-N` for replica 1,
//! `agent-N@kas-R` for the others). Without `redis-server` the demo names the Debian package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kas/tests/support/e2e.rs"]
mod e2e;
#[path = "../../kas/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use e2e::{Kubectl, pod_names};
use kas_demo::{Demo, DemoOptions};

#[test]
fn kubectl_reaches_every_agent_through_every_replica() {
    e2e::kubectl_path();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DemoOptions::new(2, dir.path().join("state"));
    opts.agent_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.pods = 5;
    opts.churn = 0.0;
    opts.replicas = 3;
    let demo = Demo::start(&opts).unwrap();
    assert_eq!(demo.replicas().len(), 3);
    assert!(demo.redis_addr().is_some());
    // Agent 1 dials replica 1, agent 2 replica 2.
    assert_eq!(demo.replicas()[0].connected_agents(), vec![1]);
    assert_eq!(demo.replicas()[1].connected_agents(), vec![2]);
    assert!(demo.replicas()[2].connected_agents().is_empty());
    let banner = demo.banner();
    assert!(banner.contains("kas replica 3:"), "{banner}");
    for agent in [1u64, 2] {
        let expected = pod_names(demo.cluster(agent).unwrap(), Some("default"));
        for context in [
            format!("agent-{agent}"),
            format!("agent-{agent}@kas-2"),
            format!("agent-{agent}@kas-3"),
        ] {
            let k = Kubectl::new(
                &demo.kubeconfig_path(),
                &context,
                &dir.path().join("kube-cache"),
            );
            let out = support::eventually(&format!("kubectl --context {context}"), || {
                let out = k.run(&["get", "pods", "-o", "name"]);
                out.status.success().then_some(out)
            });
            let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim_start_matches("pod/").to_owned())
                .collect();
            got.sort();
            let mut want = expected.clone();
            want.sort();
            assert_eq!(got, want, "{context}");
        }
    }
    demo.shutdown();
}

#[test]
fn without_redis_server_the_demo_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kas-demo"))
        .env("PATH", &empty)
        .args([
            "--agents",
            "1",
            "--churn",
            "0",
            "--replicas",
            "3",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .args([
            "--agent-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--git-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("ready"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install redis-server"), "{stderr}");
}
