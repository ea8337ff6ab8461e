//! Benchmark: what a request pays for landing on a replica that does not hold its agent. Two kas
//! replicas on one `redis-server`; agent 2 is connected to replica 2 only. The same small request
//! (`GET /k8s-proxy/version`, answered by the simulated API server behind agentk) goes in turn
//! straight to replica 2, to replica 1 which forwards it over the private API to replica 2 on a
//! pooled connection, and to replica 1 with its pool turned off (`PeerClient::set_pooling`: a new
//! connection and a Redis read per request, as before the pool).
//!
//! `cargo run --release -p kas-demo --example replica_hop [N]` prints p50/p99/mean for the three,
//! same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kas_demo::{Demo, DemoOptions};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .clamp(10, 100_000);
    let dir = tempfile::tempdir()?;
    let mut opts = DemoOptions::new(2, dir.path().join("state"));
    opts.agent_listen = "127.0.0.1:0".parse()?;
    opts.api_listen = "127.0.0.1:0".parse()?;
    opts.churn = 0.0;
    opts.pods = 3;
    opts.replicas = 2;
    let demo = Demo::start(&opts)?;
    let ca = std::fs::read(demo.ca_file())?;
    let ca = ureq::tls::Certificate::from_pem(&ca)?.to_owned();
    let http = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let bearer = format!("Bearer {}", demo.bearer(2));
    let replicas = demo.replicas();
    let direct_url = format!("{}/version", replicas[1].k8s_proxy_url());
    let hop_url = format!("{}/version", replicas[0].k8s_proxy_url());
    let call = |url: &str| -> Result<Duration, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let mut resp = http.get(url).header("Authorization", &bearer).call()?;
        let _ = resp.body_mut().read_to_string()?;
        if resp.status() != 200 {
            return Err(format!("{url}: {}", resp.status()).into());
        }
        Ok(t.elapsed())
    };
    let peers = replicas[0]
        .peer_client()
        .ok_or("replica 1 has no private API client")?;
    let unpooled = |url: &str| {
        peers.set_pooling(false);
        let t = call(url);
        peers.set_pooling(true);
        t
    };
    // Warm up the paths (TLS sessions to kas, discovery in agentk's client).
    for _ in 0..50 {
        call(&direct_url)?;
        call(&hop_url)?;
        unpooled(&hop_url)?;
    }
    let (mut direct, mut hop, mut hop_unpooled) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Bounded: N rounds, each request bounded by the client's 30 s timeout.
    for _ in 0..n {
        direct.push(call(&direct_url)?);
        hop.push(call(&hop_url)?);
        hop_unpooled.push(unpooled(&hop_url)?);
    }
    direct.sort();
    hop.sort();
    hop_unpooled.sort();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    println!("{n} requests each, GET /k8s-proxy/version for agent 2 (held by replica 2)");
    println!("| path | p50 ms | p99 ms | mean ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("direct (replica 2, holds the agent)", &direct),
        ("via replica 1 → private API → replica 2 (pooled)", &hop),
        (
            "via replica 1 → private API → replica 2 (pool off)",
            &hop_unpooled,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(mean(v))
        );
    }
    for (name, v) in [("pooled", &hop), ("pool off", &hop_unpooled)] {
        println!(
            "hop overhead ({name}): p50 +{} ms, p99 +{} ms",
            ms(percentile(v, 0.5).saturating_sub(percentile(&direct, 0.5))),
            ms(percentile(v, 0.99).saturating_sub(percentile(&direct, 0.99)))
        );
    }
    demo.shutdown();
    Ok(())
}
