//! Memory stays bounded on hostile configuration files: the process's peak resident size (Linux
//! `VmHWM`) grows by less than a fixed cap while parsing YAML bombs. One test in its own binary, so
//! nothing else moves the peak.

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn yaml_bombs_stay_within_a_memory_cap() {
    let Some(before) = peak_rss_kib() else {
        eprintln!("no /proc/self/status: skipping the memory measurement");
        return;
    };
    // Inputs first, so their own size is not counted as parser memory.
    let laughs = {
        let items = ["lolololololololololololololololol"; 10].join(", ");
        let mut src = format!("a0: &a0 [{items}]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            src.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        src
    };
    let big = format!(
        "s: &s {}\nl: [{}]\n",
        "x".repeat(512 << 10),
        vec!["*s"; 900].join(",")
    );
    let deep = "[".repeat(1 << 20);
    let inputs = [laughs, big, deep];
    for _ in 0..20 {
        for src in &inputs {
            assert!(agent_config::ConfigFile::parse(src).is_err());
        }
    }
    let after = peak_rss_kib().expect("read again");
    let grew_mib = after.saturating_sub(before) / 1024;
    println!("peak RSS grew by {grew_mib} MiB while parsing YAML bombs");
    // Expanded, these would need gigabytes; the loader's limits keep them to a few MiB.
    assert!(grew_mib < 64, "peak RSS grew by {grew_mib} MiB");
}
