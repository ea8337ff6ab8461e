//! An agent that sends what needs answers (PINGs) and never reads them, against a real kas on
//! 127.0.0.1, alone in this test binary so that the process's memory is kas's: kas stops reading
//! from it (back-pressure) instead of buffering the answers, its memory stays bounded, and another
//! agent keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/rogue.rs"]
mod rogue;
mod support;

use std::time::Duration;

use rogue::{agent_2_answers, ping, rogue, rss_kib};
use support::{Env, FakeAgent, Script, eventually};

#[test]
fn an_agent_that_never_reads_is_paused_and_kas_memory_stays_bounded() {
    let mut env = Env::new();
    // No PING limit here: only back-pressure stands between the abuser and kas's memory.
    env.config.limits.flood.pings = 0;
    let kas = env.start();
    let script = Script::new("agent-2");
    let _good = FakeAgent::connect(&env, &kas, 2, &script);
    let mut peer = rogue(&env, &kas, 1);
    peer.tls()
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    agent_2_answers(&env, &kas);
    let before = rss_kib();

    // PINGs, 64 KiB at a time, never reading the acknowledgements, until a write blocks (kas
    // stopped reading) or 64 MiB went out (it did not).
    let batch: Vec<u8> = (0..64 * 1024 / 17).flat_map(ping).collect();
    let mut written = 0usize;
    let blocked = loop {
        if written >= 64 << 20 {
            break false;
        }
        match peer.send_raw(&batch) {
            Ok(()) => written += batch.len(),
            Err(_) => break true,
        }
    };
    let grown = rss_kib().saturating_sub(before);
    eprintln!(
        "abuser wrote {} KiB before kas paused it; kas's process grew {grown} KiB",
        written / 1024
    );
    assert!(
        blocked,
        "kas kept reading {written} octets of PINGs whose answers nobody read"
    );
    assert!(
        grown < 32 * 1024,
        "kas grew by {grown} KiB while the abuser did not read"
    );
    // The abuser is still connected (paused, not dropped) and another agent is unaffected.
    assert!(kas.connected_agents().contains(&1));
    agent_2_answers(&env, &kas);
    drop(peer);
    eventually("kas to drop the abuser once it is gone", || {
        (!kas.connected_agents().contains(&1)).then_some(())
    });
    kas.shutdown();
}
