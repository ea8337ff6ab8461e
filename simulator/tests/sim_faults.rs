//! A 1,000-agent fault campaign over several seeds: drops, partitions, NAT timeouts, kas crashes, a
//! rolling restart and agent restarts — and every invariant holds.

mod sim_common;

use sim_common::{CAMPAIGN, run_plain, scenario};

#[test]
fn thousand_agent_fault_campaign_keeps_every_invariant() {
    for seed in 1..=3 {
        let out = run_plain(scenario(CAMPAIGN, seed));
        let r = &out.report;
        if let Some(v) = &out.violation {
            panic!("seed {seed}: {v}");
        }
        // The faults really happened (otherwise the campaign proves nothing).
        assert!(r.connection_drops > 0, "seed {seed}: no drops");
        assert!(r.agent_restarts > 0, "seed {seed}: no agent restarts");
        assert!(
            r.reconnect_storms.len() >= 5,
            "seed {seed}: storms {:?}",
            r.reconnect_storms
        );
        assert!(
            r.kas.iter().all(|k| k.restarts >= 1),
            "seed {seed}: every replica restarted"
        );
        assert!(
            r.agent_connects > r.agents as u64,
            "seed {seed}: agents reconnected"
        );
        // And the world still did its work.
        let ok = r.requests.outcomes.get("ok").copied().unwrap_or(0);
        assert!(
            ok * 10 > r.requests.issued * 8,
            "seed {seed}: {:?}",
            r.requests
        );
        assert!(r.cluster_changes > 1000 && r.view_messages > 1000);
    }
}
