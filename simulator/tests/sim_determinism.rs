//! Same scenario and seed ⇒ the same trace, byte for byte; another seed ⇒ another trace.

mod sim_common;

use sim_common::{SMALL, run_with_trace, scenario};

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let a = run_with_trace(scenario(SMALL, 7));
    let b = run_with_trace(scenario(SMALL, 7));
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert!(
        a.events > 10_000,
        "the world did something: {} events",
        a.events
    );
    assert!(!a.trace_lines.is_empty());
    assert_eq!(a.trace_lines.len(), b.trace_lines.len());
    if let Some((i, (x, y))) = a
        .trace_lines
        .iter()
        .zip(&b.trace_lines)
        .enumerate()
        .find(|(_, (x, y))| x != y)
    {
        panic!("traces diverge at line {i}:\n  {x}\n  {y}");
    }
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);

    let c = run_with_trace(scenario(SMALL, 8));
    assert_ne!(a.trace_hash, c.trace_hash);
    assert_ne!(a.trace_lines, c.trace_lines);
}

#[test]
fn the_hash_does_not_depend_on_keeping_the_lines() {
    let kept = run_with_trace(scenario(SMALL, 3));
    let hashed = sim_common::run_plain(scenario(SMALL, 3));
    assert_eq!(kept.trace_hash, hashed.trace_hash);
    assert!(hashed.trace_lines.is_empty());
}
