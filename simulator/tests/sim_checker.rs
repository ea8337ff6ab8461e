//! Every invariant's check can fire: for each one a deliberate bug is injected (see
//! `simulator::sim::scenario::Injection`) and the run must stop with exactly that invariant violated,
//! reported with the seed and the index of the event during which it was detected. Invariants checked
//! continuously must fire during the run, not only at its end.

mod sim_common;

use sim_common::{SMALL, run_with_trace, scenario};
use simulator::sim::invariants::INVARIANTS;
use simulator::sim::scenario::Injection;
use simulator::sim::{Outcome, Scenario};

/// The trace line of the event during which the violation was detected.
fn violation_line(out: &Outcome) -> &str {
    let v = out.violation.as_ref().expect("a violation");
    out.trace_lines
        .iter()
        .find(|l| l.contains("VIOLATION"))
        .filter(|l| l.starts_with(&format!("{} ", v.event_index)))
        .map(String::as_str)
        .expect("the violation is in the trace at its event index")
}

/// When a check is expected to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// During the event that broke it, before the end of the run.
    During,
    /// At the end-of-run checks.
    AtTheEnd,
}

struct Case {
    invariant: &'static str,
    inject: fn(&mut Injection),
    /// Adjusts the scenario (small windows for flow control, ...).
    tune: fn(&mut Scenario),
    /// Part of the violation's detail.
    detail: &'static str,
    when: When,
}

fn same(_: &mut Scenario) {}

/// Both replicas down for 20 s (killed, so connections reset at once): agents fail to connect
/// several times in a row.
fn both_replicas_down(s: &mut Scenario) {
    use simulator::sim::scenario::{Fault, KasCrashFault};
    use std::time::Duration;
    for kas in 0..2 {
        s.faults.push(Fault::KasCrash(KasCrashFault {
            at: Duration::from_secs(120),
            kas,
            down_for: Duration::from_secs(20),
            silent: false,
        }));
    }
}

/// A small connection window under large stream windows and large bodies, so that the connection's
/// window and its WINDOW_UPDATEs are busy.
fn small_windows(s: &mut Scenario) {
    s.protocol.initial_stream_window = 256 * 1024;
    s.protocol.initial_connection_window = 32 * 1024;
    for k in &mut s.clients.mix {
        if k.service != "cache" {
            k.response_bytes = 100_000;
        }
    }
}

const CASES: &[Case] = &[
    Case {
        invariant: "request-ended-twice",
        inject: |i| i.duplicate_completion = Some(30),
        tune: same,
        detail: "request 30 ended again",
        when: When::During,
    },
    Case {
        invariant: "misdelivered-request",
        inject: |i| i.misroute_request = Some(40),
        tune: same,
        detail: "request 40",
        when: When::During,
    },
    Case {
        invariant: "misdelivered-response",
        inject: |i| i.wrong_responder = Some(40),
        tune: same,
        detail: "came from agent",
        when: When::During,
    },
    Case {
        invariant: "protocol-error",
        inject: |i| i.corrupt_transmit = Some(2100),
        tune: same,
        detail: "failed",
        when: When::During,
    },
    Case {
        invariant: "stream-error",
        inject: |i| i.reset_request = Some(40),
        tune: same,
        detail: "FLOW_CONTROL_ERROR",
        when: When::During,
    },
    Case {
        invariant: "body-corrupted",
        inject: |i| i.corrupt_body = Some(40),
        tune: same,
        detail: "were declared",
        when: When::During,
    },
    Case {
        invariant: "backoff-bound",
        inject: |i| i.stretch_backoff = Some(100.0),
        tune: same,
        detail: "beyond the bound",
        when: When::During,
    },
    Case {
        invariant: "backoff-too-short",
        inject: |i| i.forget_backoff = true,
        tune: both_replicas_down,
        detail: "the policy says at least",
        when: When::During,
    },
    Case {
        invariant: "flow-control",
        inject: |i| i.double_credit = true,
        tune: small_windows,
        detail: "flow",
        when: When::During,
    },
    Case {
        invariant: "views-diverged",
        inject: |i| i.skip_watch_event = Some(3),
        tune: same,
        detail: "incremental views differ",
        when: When::During,
    },
    Case {
        // A bug in the production view evaluator itself (which `ViewSet::recompute` shares): the
        // naive oracle sees it.
        invariant: "views-diverged",
        inject: |i| i.view_fault = true,
        tune: same,
        detail: "incremental views differ",
        when: When::During,
    },
    Case {
        invariant: "mirror-diverged",
        inject: |i| i.corrupt_view_value = Some(0),
        tune: same,
        detail: "mirror of agent 0",
        when: When::During,
    },
    Case {
        invariant: "tracking-leak",
        inject: |i| i.keep_tracking = Some(30),
        tune: same,
        detail: "still tracks it",
        when: When::During,
    },
    Case {
        invariant: "connection-leak",
        inject: |i| i.keep_closed_connection = true,
        tune: same,
        detail: "router still lists it",
        when: When::During,
    },
    Case {
        invariant: "router",
        inject: |i| i.double_finish = Some(20),
        tune: same,
        detail: "request_finished",
        when: When::During,
    },
    Case {
        invariant: "views-messages",
        inject: |i| i.garble_views_frame = Some(0),
        tune: same,
        detail: "varint",
        when: When::During,
    },
    Case {
        invariant: "views-wire",
        inject: |i| i.malformed_view = Some(0),
        tune: same,
        detail: "agent 1",
        when: When::During,
    },
    Case {
        invariant: "agent-cache",
        inject: |i| i.malformed_watch_event = Some(3),
        tune: same,
        detail: "rejected a watch event",
        when: When::During,
    },
    Case {
        invariant: "views-stream",
        inject: |i| i.close_before_views = Some(0),
        tune: same,
        detail: "cannot open its views stream",
        when: When::During,
    },
    Case {
        invariant: "identity",
        inject: |i| i.accept_as_other = Some(0),
        tune: same,
        detail: "was accepted as agent 1001",
        when: When::During,
    },
    Case {
        invariant: "request-leak",
        inject: |i| i.lose_request = Some(25),
        tune: same,
        detail: "25",
        when: When::AtTheEnd,
    },
    Case {
        invariant: "reconnect-bound",
        inject: |i| i.never_redial = Some(0),
        tune: same,
        detail: "agent 0 is not connected",
        when: When::AtTheEnd,
    },
    Case {
        invariant: "stream-leak",
        inject: |i| i.abandon_request = Some(1500),
        tune: same,
        detail: "want only the views stream",
        when: When::AtTheEnd,
    },
];

fn run_case(c: &Case, seed: u64) -> Outcome {
    let mut s = scenario(SMALL, seed);
    (c.tune)(&mut s);
    (c.inject)(&mut s.inject);
    run_with_trace(s)
}

#[test]
fn every_invariant_has_a_self_test() {
    let tested: Vec<&str> = CASES.iter().map(|c| c.invariant).collect();
    for (name, _) in INVARIANTS {
        assert!(tested.contains(name), "invariant {name} has no self-test");
    }
    for name in &tested {
        assert!(
            INVARIANTS.iter().any(|(n, _)| n == name),
            "{name} is not in INVARIANTS"
        );
    }
}

#[test]
fn every_injected_bug_is_caught_by_its_invariant() {
    let clean = run_with_trace(scenario(SMALL, 11));
    assert!(clean.violation.is_none(), "{:?}", clean.violation);
    let mut failures = Vec::new();
    for c in CASES {
        // The same world without the bug is clean: what fires is the bug, not the tuning.
        let mut tuned = scenario(SMALL, 11);
        (c.tune)(&mut tuned);
        let control = sim_common::run_plain(tuned);
        if let Some(v) = control.violation {
            failures.push(format!(
                "{}: the control run without the bug failed: {v}",
                c.invariant
            ));
            continue;
        }
        let out = run_case(c, 11);
        let Some(v) = out.violation.clone() else {
            failures.push(format!("{}: no violation", c.invariant));
            continue;
        };
        if v.invariant != c.invariant || !v.detail.contains(c.detail) {
            failures.push(format!(
                "{}: expected a violation mentioning {:?}, got {v}",
                c.invariant, c.detail
            ));
            continue;
        }
        assert_eq!(v.seed, 11);
        let line = violation_line(&out);
        assert!(line.contains(c.invariant), "{line}");
        // The run stopped at the detecting event.
        assert_eq!(out.events, v.event_index + 1, "{}", c.invariant);
        let at_end = v.event_index + 1 == clean.events;
        match c.when {
            When::During => assert!(
                v.event_index + 1 < clean.events,
                "{} fired only at the end (event {} of {})",
                c.invariant,
                v.event_index,
                clean.events
            ),
            When::AtTheEnd => assert!(
                line.contains(" end") || at_end || v.time.as_secs_f64() >= 239.0,
                "{}: {line}",
                c.invariant
            ),
        }
        println!(
            "{:<22} caught at event {:>7} (t={:>8.3}s): {}",
            v.invariant,
            v.event_index,
            v.time.as_secs_f64(),
            v.detail.chars().take(140).collect::<String>()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_violation_replays_identically() {
    let c = &CASES[1];
    let first = run_case(c, 11);
    let again = sim_common::run_plain({
        let mut s = scenario(SMALL, 11);
        (c.inject)(&mut s.inject);
        s
    });
    assert!(first.violation.is_some());
    assert_eq!(first.violation, again.violation);
    assert_eq!(first.trace_hash, again.trace_hash);
}

#[test]
fn a_clean_run_has_no_violation() {
    let out = run_with_trace(scenario(SMALL, 11));
    assert!(out.violation.is_none(), "{:?}", out.violation);
    assert!(!out.trace_lines.iter().any(|l| l.contains("VIOLATION")));
}
