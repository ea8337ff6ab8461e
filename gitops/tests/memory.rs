//! Memory stays bounded on a hostile commit: the process's peak resident size (Linux `VmHWM`) grows by
//! less than a fixed cap while parsing YAML bombs, alias-amplified strings and deep nesting that
//! would need gigabytes if expanded. One test in its own binary, so nothing else moves the peak.

use gitops::WellKnownScopes;
use gitops::manifest::{self, ManifestLimits};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn hostile_commits_stay_within_a_memory_cap() {
    let Some(before) = peak_rss_kib() else {
        eprintln!("no /proc/self/status: skipping the memory measurement");
        return;
    };
    let mut laughs = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\nx0: &x0 [lololololololololololol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..15 {
        let refs = vec![format!("*x{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("x{i}: &x{i} [{refs}]\n"));
    }
    let amplified = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata:\n  a: &a {}\n  l: [{}]\n",
        "x".repeat(1 << 20),
        vec!["*a"; 5000].join(",")
    );
    let deep = "[".repeat(4 << 20);
    let files: Vec<(&str, &[u8])> = vec![
        ("laughs.yaml", laughs.as_bytes()),
        ("amplified.yaml", amplified.as_bytes()),
        ("deep.yaml", deep.as_bytes()),
    ];
    for _ in 0..5 {
        let p = manifest::parse(
            files.clone(),
            "default",
            &WellKnownScopes,
            &ManifestLimits::default(),
        );
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
    }
    let after = peak_rss_kib().expect("read again");
    let grew_mib = after.saturating_sub(before) / 1024;
    println!("peak RSS grew by {grew_mib} MiB while parsing hostile manifests");
    assert!(grew_mib < 96, "peak RSS grew by {grew_mib} MiB");
}
