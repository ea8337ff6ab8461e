//! The checker catches deliberate bugs, and reports them with the seed and the event index.

mod sim_common;

use sim_common::{SMALL, run_with_trace, scenario};

/// The trace line of the event during which the violation was detected.
fn violation_line(out: &simulator::sim::Outcome) -> &str {
    let v = out.violation.as_ref().expect("a violation");
    out.trace_lines
        .iter()
        .find(|l| l.contains("VIOLATION"))
        .filter(|l| l.starts_with(&format!("{} ", v.event_index)))
        .map(String::as_str)
        .expect("the violation is in the trace at its event index")
}

#[test]
fn a_misrouted_request_is_caught_at_the_agent() {
    let mut s = scenario(SMALL, 11);
    s.inject.misroute_request = Some(40);
    let out = run_with_trace(s);
    let v = out.violation.clone().expect("misrouting must be detected");
    assert_eq!(v.invariant, "misdelivered-request");
    assert_eq!(v.seed, 11);
    assert!(v.detail.contains("request 40"), "{}", v.detail);
    let line = violation_line(&out);
    assert!(line.contains("misdelivered-request"), "{line}");
    // The run stopped there, and replaying finds the same violation at the same event.
    assert_eq!(out.events, v.event_index + 1);
    let mut again = scenario(SMALL, 11);
    again.inject.misroute_request = Some(40);
    let replay = sim_common::run_plain(again);
    assert_eq!(replay.violation, Some(v));
}

#[test]
fn a_lost_request_is_a_leak_at_the_end() {
    let mut s = scenario(SMALL, 12);
    s.inject.lose_request = Some(25);
    let out = run_with_trace(s);
    let v = out
        .violation
        .clone()
        .expect("a lost request must be detected");
    assert_eq!(v.invariant, "request-leak");
    assert!(v.detail.contains("25"), "{}", v.detail);
    violation_line(&out);
}

#[test]
fn a_double_completion_is_caught_at_once() {
    let mut s = scenario(SMALL, 13);
    s.inject.duplicate_completion = Some(30);
    let out = run_with_trace(s);
    let v = out
        .violation
        .clone()
        .expect("a double completion must be detected");
    assert_eq!(v.invariant, "request-ended-twice");
    assert!(v.detail.contains("request 30"), "{}", v.detail);
    violation_line(&out);
}

#[test]
fn a_clean_run_has_no_violation() {
    let out = run_with_trace(scenario(SMALL, 11));
    assert!(out.violation.is_none(), "{:?}", out.violation);
    assert!(!out.trace_lines.iter().any(|l| l.contains("VIOLATION")));
}
