//! Properties of agentk's reconnect policy (`protocol::tunnel::reconnect`): back-off bounded and
//! growing, jitter within bounds, handover only after the minimum lifetime, reset after a healthy
//! connection, one decision per connection.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::tunnel::reconnect::{
    BackoffPolicy, Decision, DialFailure, MIN_LIFETIME_FOR_HANDOVER, Next, Reconnect, Why,
};
use protocol::{CloseReason, ErrorCode, RejectCode};

fn policy() -> impl Strategy<Value = BackoffPolicy> {
    (1u64..2_000, 1u64..120_000, 1u64..60_000).prop_map(|(initial, max, stable)| BackoffPolicy {
        initial: Duration::from_millis(initial),
        max: Duration::from_millis(max),
        stable_after: Duration::from_millis(stable),
    })
}

fn dial_failure() -> impl Strategy<Value = DialFailure> {
    prop_oneof![
        Just(DialFailure::Network),
        Just(DialFailure::Tls),
        Just(DialFailure::Timeout),
        (0i32..9, prop::option::of(0u64..120_000)).prop_map(|(code, retry)| {
            DialFailure::Refused {
                code: RejectCode::from_wire(code),
                retry_after: retry.map(Duration::from_millis),
            }
        }),
    ]
}

/// One step of an agent's life, as the driver reports it.
#[derive(Debug, Clone)]
enum Step {
    DialFailed(DialFailure, f64),
    /// Connects, lives `lived_ms`, then drains (`true`) or closes with the reason.
    Connection {
        lived_ms: u64,
        drains: bool,
        graceful: bool,
        unit: f64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (dial_failure(), 0.0f64..1.0).prop_map(|(f, u)| Step::DialFailed(f, u)),
        (0u64..30_000, any::<bool>(), any::<bool>(), 0.0f64..1.0).prop_map(
            |(lived_ms, drains, graceful, unit)| Step::Connection {
                lived_ms,
                drains,
                graceful,
                unit
            }
        ),
    ]
}

fn retry_after(f: &DialFailure) -> Duration {
    match f {
        DialFailure::Refused { retry_after, .. } => retry_after.unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

proptest! {
    /// Every delay lies in `[retry_after, max(policy.max, retry_after)]`, and within the jittered
    /// ceiling of the failure count: `unit × ceiling(failures)` (or `retry_after` if larger).
    #[test]
    fn delay_is_bounded_jittered_and_honours_retry_after(
        p in policy(),
        failures in prop::collection::vec((dial_failure(), 0.0f64..1.0), 1..40),
    ) {
        let t0 = Instant::now();
        let mut r: Reconnect<u32> = Reconnect::new(p);
        for (f, unit) in failures {
            let d = r.handle_dial_failed(f, t0, unit);
            let Next::WaitUntil(at) = d.next else { panic!("a failure must wait") };
            let delay = at - t0;
            let floor = retry_after(&f);
            prop_assert!(delay >= floor);
            prop_assert!(delay <= p.max.max(floor));
            let jittered = p.ceiling(r.failures()).mul_f64(unit);
            // Duration::mul_f64 rounds to the nanosecond.
            prop_assert!(delay <= jittered.max(floor) + Duration::from_nanos(1));
            prop_assert!(delay + Duration::from_nanos(1) >= jittered.max(floor));
            prop_assert_eq!(
                d.reload_credentials,
                matches!(f, DialFailure::Refused { code, .. } if code.is_credential_problem())
            );
        }
    }

    /// The ceiling never shrinks as failures accumulate, doubles until the cap, and stays within
    /// `[min(initial, max), max]`.
    #[test]
    fn ceiling_grows_to_the_cap(p in policy(), n in 1u32..200) {
        let (a, b) = (p.ceiling(n), p.ceiling(n + 1));
        prop_assert!(a <= b);
        prop_assert!(b <= p.max);
        prop_assert!(a >= p.initial.min(p.max));
        if b < p.max {
            prop_assert_eq!(b, a * 2);
        }
    }

    /// Over any life: a handover only for a drain or graceful close after the minimum lifetime; at
    /// most one decision per connection; the failure count restarts after a stable connection and
    /// otherwise counts every failure.
    #[test]
    fn handover_and_reset_follow_the_rules(p in policy(), steps in prop::collection::vec(step(), 1..40)) {
        let mut now = Instant::now();
        let mut r: Reconnect<u64> = Reconnect::new(p);
        let mut model_failures = 0u32;
        // Handshake time of the last connection, until a failure consumed it (the reset rule).
        let mut connected_at: Option<Instant> = None;
        for (conn, s) in (0u64..).zip(steps) {
            match s {
                Step::DialFailed(f, unit) => {
                    let d = r.handle_dial_failed(f, now, unit);
                    if connected_at.take().is_some_and(|at| now - at >= p.stable_after) {
                        model_failures = 0;
                    }
                    model_failures += 1;
                    prop_assert_eq!(r.failures(), model_failures);
                    prop_assert_ne!(d.why, Why::Handover);
                }
                Step::Connection { lived_ms, drains, graceful, unit } => {
                    r.handle_connected(conn, now);
                    connected_at = Some(now);
                    prop_assert_eq!(r.current(), Some(&conn));
                    let lived = Duration::from_millis(lived_ms);
                    now += lived;
                    let reason = if graceful {
                        CloseReason::Graceful
                    } else {
                        CloseReason::Remote { code: ErrorCode::Internal, message: String::new() }
                    };
                    let first: Decision = if drains {
                        let d = r.handle_draining(&conn, now, unit);
                        // The close after a drain is no news.
                        prop_assert_eq!(r.handle_closed(&conn, &reason, now, unit), None);
                        d.expect("the current connection decides its drain")
                    } else {
                        r.handle_closed(&conn, &reason, now, unit)
                            .expect("the current connection decides its close")
                    };
                    prop_assert_eq!(r.handle_draining(&conn, now, unit), None);
                    prop_assert_eq!(r.handle_closed(&conn, &reason, now, unit), None);
                    prop_assert_eq!(r.current(), None);
                    let going_away = drains || graceful;
                    let handover = going_away && lived >= MIN_LIFETIME_FOR_HANDOVER;
                    prop_assert_eq!(first.why == Why::Handover, handover);
                    prop_assert_eq!(first.next == Next::Connect, handover);
                    prop_assert!(!first.reload_credentials);
                    if !handover {
                        // A healthy life resets the count (after a handover: at the next failure).
                        if connected_at.take().is_some_and(|at| now - at >= p.stable_after) {
                            model_failures = 0;
                        }
                        model_failures += 1;
                        let why_ok = if going_away {
                            first.why == Why::EarlyGoaway { lived }
                        } else {
                            first.why == Why::Lost
                        };
                        prop_assert!(why_ok, "{:?}", first.why);
                    }
                    prop_assert_eq!(r.failures(), model_failures);
                }
            }
            now += Duration::from_millis(1);
        }
    }

    /// A connection that is not the current one (a draining predecessor, or unknown) gets no decision.
    #[test]
    fn only_the_current_connection_decides(lived_ms in 0u64..5_000, unit in 0.0f64..1.0) {
        let t0 = Instant::now();
        let mut r: Reconnect<u64> = Reconnect::new(BackoffPolicy::default());
        r.handle_connected(1, t0);
        r.handle_connected(2, t0);
        let now = t0 + Duration::from_millis(lived_ms);
        prop_assert_eq!(r.handle_draining(&1, now, unit), None);
        prop_assert_eq!(r.handle_closed(&1, &CloseReason::TransportClosed, now, unit), None);
        prop_assert_eq!(r.handle_closed(&3, &CloseReason::TransportClosed, now, unit), None);
        prop_assert!(r.handle_closed(&2, &CloseReason::TransportClosed, now, unit).is_some());
    }
}
