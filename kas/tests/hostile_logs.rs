//! What kas writes to its log when agents and clients misbehave: an agent cannot flood it, and no
//! part of a credential ever appears in it (nor in the answer). kas runs in-process; the test binary
//! captures everything it logs ([`logcapture`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/logcapture.rs"]
mod logcapture;
mod support;

use protocol::proto::RequestHead;
use support::{Env, GUARD, agent_meta, eventually, metric, metrics, try_connect};

#[test]
fn twenty_thousand_bad_streams_log_a_bounded_number_of_lines() {
    let log = logcapture::capture();
    let env = Env::new();
    let kas = env.start();
    let conn = try_connect(&env, kas.agent_addr(), env.token(1), agent_meta("rogue")).unwrap();
    assert!(kas.wait_for_agents(&[1], GUARD));
    let service = "no-such-service-in-this-kas";
    smol::block_on(async {
        // 40 rounds of 500 concurrent streams (well under the concurrency limit, and each is
        // answered, so none is a rapid reset).
        for _ in 0..40 {
            let streams: Vec<_> = (0..500)
                .map(|_| {
                    conn.open(
                        RequestHead {
                            service: service.into(),
                            method: "GET".into(),
                            path: "/".into(),
                            ..Default::default()
                        },
                        true,
                    )
                    .unwrap()
                })
                .collect();
            for s in streams {
                let head = s.response().await.unwrap();
                assert_eq!(head.status, 404);
            }
        }
    });
    eventually("every stream counted", || {
        let text = metrics(&kas);
        (metric(
            &text,
            "kas_agent_misbehaviour_total{kind=\"unknown_service\"}",
        ) == Some(20_000.0))
        .then_some(())
    });
    let lines = log.lines_with(&[service]);
    eprintln!("{} log lines for 20000 bad streams", lines.len());
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "{} lines: {lines:?}",
        lines.len()
    );
    // When the agent goes, the count left out is summarised in one line.
    drop(conn);
    eventually("the summary line", || {
        log.lines_with(&[
            "agent misbehaved more often than logged",
            "suppressed=19999",
        ])
        .first()
        .cloned()
    });
    kas.shutdown();
}

#[test]
fn no_part_of_a_credential_reaches_the_answer_or_the_log() {
    let log = logcapture::capture();
    let env = Env::new();
    let kas = env.start();
    let token = env.admin_token.clone();
    let url = format!("{}/api/v1/namespaces/default/pods", kas.k8s_proxy_url());
    // Fields swapped or misplaced by a clumsy client: the token where the kind or the agent id goes.
    for bearer in [
        format!("Bearer {token}:1:pat"),
        format!("Bearer pat:{token}:1"),
        format!("Bearer 1:pat:{token}"),
        format!("Bearer {token}"),
        format!("Bearer pat:1:{token}x"),
    ] {
        let reply = support::get(&url, Some(&bearer));
        assert_eq!(reply.status, 401, "{}", reply.body);
        for piece in token.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(
                !reply.body.contains(piece),
                "the answer echoes part of the token: {}",
                reply.body
            );
        }
    }
    let text = log.text();
    assert!(text.contains("not authorised"), "the failures were logged");
    for piece in token.as_bytes().windows(8) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(!text.contains(piece), "the log holds part of the token");
    }
    kas.shutdown();
}
