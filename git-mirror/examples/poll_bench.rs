//! Benchmark: how many "did the ref move?" polls per second one process makes over N distinct
//! repositories that do not change, for each kind of source, against `git ls-remote` of the same
//! repositories in the same run as the baseline.
//!
//! ```text
//! cargo run --release -p git-mirror --example poll_bench -- [N,N,...] [seconds]
//! ```
//!
//! Defaults: N = 1,100,1000 and at most 3 s of measuring per cell (every loop is bounded in count and
//! time). Repositories are served from a temporary directory on 127.0.0.1: local paths, `git daemon`,
//! and `git http-backend` behind nginx (no TLS, no auth).
//!
//! Measured on the 2-core CI machine (release build, shared with other builds; the servers run on the
//! same cores, and for `git://` and HTTP each poll forks `git upload-pack` on the server side, which
//! dominates):
//!
//! | source | N repos | probe/s, 1 thread | probe/s, 4 threads | unchanged update/s | `git ls-remote`/s | probe vs ls-remote |
//! |---|---:|---:|---:|---:|---:|---:|
//! | local | 1 | 7398 | 5915 | 5168 | 313 | 23.6× |
//! | local | 100 | 3666 | 4189 | 2988 | 225 | 16.3× |
//! | local | 1000 | 2940 | 3084 | 2115 | 187 | 15.7× |
//! | git:// | 1 | 156 | 300 | 205 | 23 | 6.9× |
//! | git:// | 100 | 174 | 403 | 227 | 20 | 8.8× |
//! | git:// | 1000 | 245 | 422 | 179 | 20 | 12.4× |
//! | http:// | 1 | 56 | 264 | 91 | 37 | 1.5× |
//! | http:// | 100 | 105 | 223 | 97 | 41 | 2.5× |
//! | http:// | 1000 | 171 | 202 | 88 | 46 | 3.7× |

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use git_mirror::testing::{GitDaemon, HttpAuth, HttpGitServer, TestRepo};
use git_mirror::{Limits, Mirror, MirrorSet, Remote, RepoUrl, Want};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ns: Vec<usize> = args
        .first()
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    let budget = Duration::from_secs_f64(args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3.0));
    let max_n = ns.iter().copied().max().unwrap_or(1);

    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let template = TestRepo::create(&srv, "template").unwrap();
    for i in 0..20 {
        template
            .write(&format!("manifests/m{i}.yaml"), format!("i: {i}\n"))
            .unwrap();
    }
    template.commit("initial").unwrap();
    eprintln!("creating {max_n} repositories…");
    for i in 0..max_n {
        let status = Command::new("cp")
            .args(["-a"])
            .arg(&template.served)
            .arg(srv.join(format!("r{i}.git")))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let daemon = GitDaemon::start(&srv).unwrap();
    let http = HttpGitServer::start(&srv, HttpAuth::None, false).unwrap();

    println!(
        "| source | N repos | probe/s, 1 thread | probe/s, 4 threads | unchanged update/s, 1 thread | `git ls-remote`/s, 1 process at a time | probe vs ls-remote |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for source in ["local", "git://", "http://"] {
        for &n in &ns {
            let url = |i: usize| -> String {
                match source {
                    "local" => srv.join(format!("r{i}.git")).to_string_lossy().into_owned(),
                    "git://" => daemon.url(&format!("r{i}")),
                    _ => http.url(&format!("r{i}")),
                }
            };
            let state = dir
                .path()
                .join(format!("state-{}-{n}", source.trim_end_matches("://")));
            let set = MirrorSet::open(&state, Limits::default()).unwrap();
            let mirrors: Vec<Arc<Mirror>> = (0..n)
                .map(|i| {
                    let remote = if source == "local" {
                        Remote::new(RepoUrl::file(Path::new(&url(i))).unwrap())
                    } else {
                        Remote::parse(&url(i)).unwrap()
                    };
                    let m = set.mirror(&remote).unwrap();
                    m.update(&Want::DefaultBranch).unwrap();
                    m
                })
                .collect();

            let probe_1 = rate(budget, n, 1, &mirrors, |m| {
                assert!(!m.probe(&Want::DefaultBranch).unwrap().moved());
            });
            let probe_4 = rate(budget, n, 4, &mirrors, |m| {
                assert!(!m.probe(&Want::DefaultBranch).unwrap().moved());
            });
            let update_1 = rate(budget, n, 1, &mirrors, |m| {
                let u = m.update(&Want::DefaultBranch).unwrap();
                assert_eq!(u.change, git_mirror::Change::Unchanged);
            });
            let ls_remote = ls_remote_rate(budget, n, &url);
            println!(
                "| {source} | {n} | {probe_1:.0} | {probe_4:.0} | {update_1:.0} | {ls_remote:.0} | {:.1}× |",
                probe_1 / ls_remote
            );
        }
    }
}

/// Polls the mirrors round-robin from `threads` threads until `budget` elapsed (at least one full
/// round, at most 1000 rounds); returns polls per second.
fn rate(
    budget: Duration,
    n: usize,
    threads: usize,
    mirrors: &[Arc<Mirror>],
    poll: impl Fn(&Mirror) + Sync,
) -> f64 {
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let done = &done;
            let poll = &poll;
            s.spawn(move || {
                let mut k = 0usize;
                loop {
                    poll(&mirrors[(t + k * threads) % n]);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    k += 1;
                    let covered = k * threads >= n;
                    if covered && (started.elapsed() >= budget || k * threads >= 1000 * n) {
                        break;
                    }
                }
            });
        }
    });
    done.into_inner() as f64 / started.elapsed().as_secs_f64()
}

/// `git ls-remote <url> HEAD` over the repositories until `budget` elapsed (at most one round).
fn ls_remote_rate(budget: Duration, n: usize, url: &dyn Fn(usize) -> String) -> f64 {
    let started = Instant::now();
    let mut done = 0usize;
    for i in 0..n.max(1) {
        let out = Command::new("git")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["ls-remote", &url(i), "HEAD"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        done += 1;
        if started.elapsed() >= budget {
            break;
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}
