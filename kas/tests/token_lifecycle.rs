//! Agent token lifecycle through the `kas token` command against a running kas:
//!
//! - rotation without downtime: agent 1 is connected with its first token A; `kas token create`
//!   makes a second token B (printed once, only its digest stored); a second connection of agent 1
//!   authenticates with B; `kas token revoke` removes A. A bounded request loop through
//!   `/k8s-proxy` runs the whole time and must see no failure; after the revocation every request
//!   is served by B's connection;
//! - revocation cuts the connection A authenticated (GOAWAY from kas, then closed) within
//!   `connection_tokens::REVOCATION_BOUND` (one reload interval plus the grace); A no longer
//!   authenticates;
//! - the CLI: `list` shows ids and metadata only (no token material), errors are clear and exit
//!   non-zero, `--token-file` writes an owner-only file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kas::auth::TokenDigest;
use kas::connection_tokens::REVOCATION_BOUND;
use support::{Env, FakeAgent, GUARD, Script, agent_meta, eventually, get, try_connect};

fn kas_token(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kas"))
        .arg("token")
        .args(args)
        .arg("--state-dir")
        .arg(env.dir.path())
        .env_remove("KAS_CONFIG")
        .env_remove("KAS_AGENTS_FILE")
        .output()
        .expect("run kas token")
}

fn ok(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kas token failed: {stderr}");
    (stdout, stderr)
}

fn list(env: &Env) -> Vec<serde_json::Value> {
    let (stdout, _) = ok(kas_token(
        env,
        &["list", "--agent", "1", "--output", "json"],
    ));
    serde_json::from_str(&stdout).expect("json list")
}

#[test]
fn rotation_with_two_tokens_has_no_downtime_and_revocation_cuts_the_old_connection() {
    let env = Env::new();
    let kas = env.start();
    let token_a = env.token(1).to_owned();
    let agents_file = env.dir.path().join("agents.yaml");

    let script_a = Script::new("conn-a");
    let a = FakeAgent::connect(&env, &kas, 1, &script_a);

    // A second token, printed once on stdout; the file keeps only its digest.
    let (stdout, stderr) = ok(kas_token(
        &env,
        &["create", "--agent", "1", "--description", "rotation"],
    ));
    let token_b = stdout.trim().to_owned();
    assert!(token_b.len() >= 32, "{stdout:?}");
    assert!(!stderr.contains(&token_b), "token echoed on stderr");
    let text = std::fs::read_to_string(&agents_file).unwrap();
    assert!(!text.contains(&token_b), "clear token stored");
    assert!(text.contains(&TokenDigest::of(&token_b).to_hex()));

    let tokens = list(&env);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let listed = serde_json::to_string(&tokens).unwrap();
    for secret in [&token_a, &token_b] {
        assert!(!listed.contains(secret.as_str()), "token in list");
        assert!(
            !listed.contains(&TokenDigest::of(secret).to_hex()[..12]),
            "digest in list"
        );
    }
    let id_b = tokens[1]["token_id"].as_str().unwrap().to_owned();
    let id_a = tokens[0]["token_id"].as_str().unwrap().to_owned();
    assert_eq!(tokens[1]["description"], "rotation");
    assert!(stderr.contains(&id_b), "{stderr}");

    let connections = || {
        get(
            &format!("{}/api/v1/agents/1", kas.api_url()),
            Some(&env.admin_bearer(1)),
        )
        .json()["connections"]
            .as_u64()
    };

    // The request loop: bounded in count and time, stopped by the test.
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/k8s-proxy/api/v1/pods", kas.api_url());
    let bearer = env.admin_bearer(1);
    let looping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let http = support::http();
            let started = Instant::now();
            let mut served: Vec<(Instant, String)> = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                match http.get(&url).header("Authorization", &bearer).call() {
                    Ok(mut resp) if resp.status() == 200 => {
                        let agent = resp
                            .headers()
                            .get("x-agent")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_owned();
                        let _ = resp.body_mut().read_to_string();
                        served.push((Instant::now(), agent));
                    }
                    Ok(mut resp) => failures.push(format!(
                        "{}: {}",
                        resp.status(),
                        resp.body_mut().read_to_string().unwrap_or_default()
                    )),
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (served, failures)
        })
    };

    // kas accepts B once it re-read the file (within one reload interval). Probed every 1.5 s, so
    // the refusals before stay under the failure rate limit (10 a minute).
    let probe_deadline = Instant::now() + REVOCATION_BOUND + GUARD;
    loop {
        if let Ok(c) = try_connect(&env, kas.agent_addr(), &token_b, agent_meta("probe")) {
            smol::block_on(c.close(Duration::from_secs(1)));
            break;
        }
        assert!(
            Instant::now() < probe_deadline,
            "kas never accepted token B"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    eventually("the probe connection gone", || {
        (connections() == Some(1)).then_some(())
    });

    // The agent's new instance connects with token B: two connections, both tokens valid.
    let script_b = Script::new("conn-b");
    let _b = FakeAgent::connect_with_token(&env, &kas, 1, &token_b, &script_b, agent_meta("9.9.9"));
    eventually("both connections registered", || {
        (connections() == Some(2)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));

    // Revoke A: kas notices the file change and closes A's connection within the bound.
    let (_, stderr) = ok(kas_token(&env, &["revoke", "--agent", "1", &id_a]));
    assert!(stderr.contains("1 token(s) left"), "{stderr}");
    let revoked_at = Instant::now();
    let closed = smol::block_on(futures_lite::future::or(
        async { Some(a.conn.closed().await) },
        async {
            smol::Timer::after(REVOCATION_BOUND + GUARD).await;
            None
        },
    ));
    let took = revoked_at.elapsed();
    assert!(
        closed.is_some(),
        "the revoked token's connection stayed open"
    );
    // A functional bound (reload interval + grace), with slack for a loaded machine.
    assert!(
        took <= REVOCATION_BOUND + Duration::from_secs(5),
        "closed after {took:?}, bound {REVOCATION_BOUND:?}"
    );
    eventually("one connection left", || {
        (connections() == Some(1)).then_some(())
    });
    let after_close = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (served, failures) = looping.join().unwrap();

    assert!(
        failures.is_empty(),
        "requests failed during rotation: {failures:?}"
    );
    assert!(served.len() >= 20, "only {} requests", served.len());
    let late: Vec<&String> = served
        .iter()
        .filter(|(at, _)| *at > after_close)
        .map(|(_, agent)| agent)
        .collect();
    assert!(!late.is_empty(), "no request after the revocation");
    assert!(
        late.iter().all(|a| *a == "conn-b"),
        "served by a revoked connection: {late:?}"
    );

    // A no longer authenticates; B does.
    assert!(try_connect(&env, kas.agent_addr(), &token_a, agent_meta("9.9.9")).is_err());
    let b2 = try_connect(&env, kas.agent_addr(), &token_b, agent_meta("9.9.9"));
    assert!(b2.is_ok(), "B refused");
}

#[test]
fn the_token_command_reports_errors_and_writes_token_files_owner_only() {
    let env = Env::new();
    let out = kas_token(&env, &["revoke", "--agent", "1", "no-such-token"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-token") && stderr.contains("agent 1"),
        "{stderr}"
    );

    let out = kas_token(&env, &["create", "--agent", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));

    let token_file = env.dir.path().join("agent-9.token");
    let (stdout, stderr) = ok(kas_token(
        &env,
        &[
            "create",
            "--agent",
            "9",
            "--name",
            "nine",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    ));
    assert!(stdout.is_empty(), "token on stdout with --token-file");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!stderr.contains(token.trim()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // An existing token file is never overwritten (and no token is created then).
    let before = std::fs::read_to_string(env.dir.path().join("agents.yaml")).unwrap();
    let out = kas_token(
        &env,
        &[
            "create",
            "--agent",
            "9",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("agents.yaml")).unwrap(),
        before
    );

    let (text, _) = ok(kas_token(&env, &["list"]));
    assert!(text.starts_with("AGENT\tNAME\tTOKEN ID\tCREATED"), "{text}");
    assert_eq!(text.lines().count(), 1 + 4, "{text}");
    assert!(text.contains("\tnine\t"), "{text}");
    assert!(!text.contains(token.trim()));
    // The new agent's token authenticates against a kas started on this file.
    let kas = env.start();
    assert!(try_connect(&env, kas.agent_addr(), token.trim(), agent_meta("1")).is_ok());
}
