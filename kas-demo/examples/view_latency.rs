//! Benchmark: latency from a change in a (simulated) cluster's API server to the updated view in kas's
//! memory — API server watch → agentk informer → incremental view → tunnel → kas mirror.
//!
//! `cargo run --release -p kas-demo --example view_latency [N]` prints p50/p99 over N pod creations.

use std::time::{Duration, Instant};

use kas_demo::{Demo, DemoOptions};

/// Sums every `count` under the `pods_by_phase` view.
fn pod_count(v: &serde_json::Value) -> u64 {
    fn sum(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, x)| {
                    if k == "count" {
                        x.as_u64().unwrap_or(0)
                    } else {
                        sum(x)
                    }
                })
                .sum(),
            serde_json::Value::Array(a) => a.iter().map(sum).sum(),
            _ => 0,
        }
    }
    fn find(v: &serde_json::Value) -> Option<&serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => {
                m.get("pods_by_phase").or_else(|| m.values().find_map(find))
            }
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(v).map(sum).unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("kas-view-latency-{}", std::process::id()));
    let mut opts = DemoOptions::new(1, dir.clone());
    opts.agent_listen = "127.0.0.1:0".parse()?;
    opts.api_listen = "127.0.0.1:0".parse()?;
    opts.churn = 0.0;
    let demo = Demo::start(&opts)?;
    let views = |d: &Demo| {
        d.kas()
            .mirrors()
            .views(1)
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    // Wait for the first snapshot.
    let start = Instant::now();
    while pod_count(&views(&demo)) == 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let before = pod_count(&views(&demo));
        let cluster = demo.cluster(1).ok_or("no cluster")?;
        let t0 = Instant::now();
        cluster
            .store()
            .add_pod("default", &format!("latency-{i}"))?;
        loop {
            if pod_count(&views(&demo)) > before {
                lat.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("view did not change within 10 s (pod {i})").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "change in API server -> updated view at kas ({n} pod creations, coalescing window 100 ms)"
    );
    println!(
        "{:<10}{:>12}",
        "p50",
        format!("{:.1} ms", pct(0.5).as_secs_f64() * 1e3)
    );
    println!(
        "{:<10}{:>12}",
        "p99",
        format!("{:.1} ms", pct(0.99).as_secs_f64() * 1e3)
    );
    println!(
        "{:<10}{:>12}",
        "max",
        format!("{:.1} ms", pct(1.0).as_secs_f64() * 1e3)
    );
    demo.shutdown();
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
