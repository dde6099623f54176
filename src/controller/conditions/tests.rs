//! The conditions' table and their transition times.

use super::*;
use crate::api::Readiness;
use crate::controller::testing::t;

fn row(name: &str, ready: Readiness) -> ProviderStatus {
    crate::controller::testing::row(name, ready, 0)
}

#[test]
fn condition_table() {
    let active = vec!["nats".to_string(), "kafka".to_string()];
    struct Case {
        name: &'static str,
        strategy: Strategy,
        rows: Vec<ProviderStatus>,
        fresh: i32,
        on_gen: i32,
        invalid: Option<&'static str>,
        blocked_for: Option<i64>,
        /// `fallbackAfter`, seconds.
        fallback: Option<i64>,
        want: [&'static str; 4], // Ready, Reconciling, Stalled, Degraded
    }
    let cases = vec![
        Case {
            name: "first reconcile, no reports",
            strategy: Strategy::FailFast,
            rows: vec![
                row("nats", Readiness::Unknown),
                row("kafka", Readiness::Unknown),
            ],
            fresh: 0,
            on_gen: 0,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["Unknown", "True", "False", "Unknown"],
        },
        Case {
            name: "all healthy",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::True)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["True", "False", "False", "False"],
        },
        Case {
            name: "fail-fast, kafka down",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::False)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: Some(10),
            fallback: None,
            // No fallback will come: every message is refused until kafka is back.
            want: ["False", "False", "True", "False"],
        },
        Case {
            name: "fail-fast, kafka down, the fallback will come",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::False)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: Some(10),
            fallback: Some(60),
            want: ["False", "True", "False", "False"],
        },
        Case {
            name: "fail-fast, kafka down too long although the fallback was due",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::False)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: Some(600),
            fallback: Some(900),
            want: ["False", "False", "True", "False"],
        },
        Case {
            name: "relays report, providers not yet known",
            strategy: Strategy::FailFast,
            rows: vec![
                row("nats", Readiness::Unknown),
                row("kafka", Readiness::Unknown),
            ],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["Unknown", "True", "False", "False"],
        },
        Case {
            name: "fail-fast, kafka down too long",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::False)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: Some(600),
            fallback: None,
            want: ["False", "False", "True", "False"],
        },
        Case {
            name: "best-effort, kafka down",
            strategy: Strategy::BestEffort,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::False)],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["True", "False", "False", "True"],
        },
        Case {
            name: "best-effort, all down",
            strategy: Strategy::BestEffort,
            rows: vec![
                row("nats", Readiness::False),
                row("kafka", Readiness::False),
            ],
            fresh: 1,
            on_gen: 1,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["False", "False", "True", "False"],
        },
        Case {
            name: "relay on old generation",
            strategy: Strategy::FailFast,
            rows: vec![row("nats", Readiness::True), row("kafka", Readiness::True)],
            fresh: 1,
            on_gen: 0,
            invalid: None,
            blocked_for: None,
            fallback: None,
            want: ["True", "True", "False", "False"],
        },
        Case {
            name: "invalid spec",
            strategy: Strategy::FailFast,
            rows: vec![],
            fresh: 0,
            on_gen: 0,
            invalid: Some("bad"),
            blocked_for: None,
            fallback: None,
            want: ["False", "False", "True", "Unknown"],
        },
    ];
    for c in cases {
        let input = ConditionInput {
            generation: 1,
            invalid: c.invalid.map(String::from),
            strategy: c.strategy,
            active: &active,
            providers: &c.rows,
            fresh_relays: c.fresh,
            relays_on_generation: c.on_gen,
            desired_relays: 1,
            blocked_since: c.blocked_for.map(|s| t(-s)),
            now: t(0),
            stall_after: SignedDuration::from_secs(300),
            fallback_after: c.fallback.map(SignedDuration::from_secs),
            migrating: false,
            relay_failure: None,
            rollout_queued: None,
            scale_down_held: None,
            apply_failed: None,
        };
        let conds = compute_conditions(&input, &[]);
        let got: Vec<&str> = conds.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(got, c.want, "{}", c.name);
        assert_eq!(
            conds.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            [READY, RECONCILING, STALLED, DEGRADED]
        );
        assert!(
            conds
                .iter()
                .all(|c| c.observed_generation == Some(1) && !c.reason.is_empty()),
            "{}",
            c.name
        );
    }
}

#[test]
fn transition_time_is_kept_while_status_is_unchanged() {
    let active = vec!["nats".to_string()];
    let rows = vec![row("nats", Readiness::True)];
    let mut input = ConditionInput {
        generation: 1,
        invalid: None,
        strategy: Strategy::FailFast,
        active: &active,
        providers: &rows,
        fresh_relays: 1,
        relays_on_generation: 1,
        desired_relays: 1,
        blocked_since: None,
        now: t(0),
        stall_after: SignedDuration::from_secs(300),
        fallback_after: None,
        migrating: false,
        relay_failure: None,
        rollout_queued: None,
        scale_down_held: None,
        apply_failed: None,
    };
    let first = compute_conditions(&input, &[]);
    input.now = t(100);
    let second = compute_conditions(&input, &first);
    assert_eq!(second[0].last_transition_time, Time(t(0)));
}

#[test]
fn a_failing_relay_pod_makes_ready_false_with_its_reason_and_a_queued_rollout_is_reconciling() {
    use crate::controller::pods::RelayFailure;
    let active = vec!["nats".to_string()];
    let rows = vec![row("nats", Readiness::True)];
    let failure = RelayFailure {
        reason: reason::RELAY_IMAGE_PULL_FAILED,
        pod: "p-relay-0".into(),
        message: "pod p-relay-0: image x cannot be pulled".into(),
    };
    let base = ConditionInput {
        generation: 1,
        invalid: None,
        strategy: Strategy::FailFast,
        active: &active,
        providers: &rows,
        fresh_relays: 0,
        relays_on_generation: 0,
        desired_relays: 1,
        blocked_since: None,
        now: t(0),
        stall_after: SignedDuration::from_secs(300),
        fallback_after: None,
        migrating: false,
        relay_failure: Some(&failure),
        rollout_queued: None,
        scale_down_held: None,
        apply_failed: None,
    };
    // (input, Ready status and reason, Reconciling status and reason)
    let invalid = ConditionInput {
        invalid: Some("spec.x: bad".into()),
        ..base.clone()
    };
    let healthy_but_one_pod_fails = ConditionInput {
        fresh_relays: 1,
        relays_on_generation: 1,
        ..base.clone()
    };
    let queued = ConditionInput {
        fresh_relays: 1,
        relays_on_generation: 1,
        relay_failure: None,
        rollout_queued: Some("waits"),
        ..base.clone()
    };
    let cases = [
        (&base, ("False", reason::RELAY_IMAGE_PULL_FAILED)),
        (&invalid, ("False", reason::INVALID_SPEC)),
        (
            &healthy_but_one_pod_fails,
            ("False", reason::RELAY_IMAGE_PULL_FAILED),
        ),
        (&queued, ("True", reason::ALL_PROVIDERS_READY)),
    ];
    for (input, want) in cases {
        let c = compute_conditions(input, &[]);
        assert_eq!((c[0].status.as_str(), c[0].reason.as_str()), want);
    }
    assert_eq!(
        compute_conditions(&base, &[])[0].message,
        "pod p-relay-0: image x cannot be pulled"
    );
    let r = &compute_conditions(&queued, &[])[1];
    assert_eq!(
        (r.status.as_str(), r.reason.as_str(), r.message.as_str()),
        ("True", reason::ROLLOUT_QUEUED, "waits")
    );
}

#[test]
fn a_held_scale_down_is_reconciling_and_leaves_ready_alone() {
    let active = vec!["nats".to_string()];
    let rows = vec![row("nats", Readiness::True)];
    // Two relays run and report, the spec asks for one: without a hold that reads as done.
    let base = ConditionInput {
        generation: 2,
        invalid: None,
        strategy: Strategy::BestEffort,
        active: &active,
        providers: &rows,
        fresh_relays: 2,
        relays_on_generation: 2,
        desired_relays: 1,
        blocked_since: None,
        now: t(0),
        stall_after: SignedDuration::from_secs(300),
        fallback_after: None,
        migrating: false,
        relay_failure: None,
        rollout_queued: None,
        scale_down_held: None,
        apply_failed: None,
    };
    let held = ConditionInput {
        scale_down_held: Some("scale-down to 1 relay(s) waits for p-relay-1 (backlog 7)"),
        ..base.clone()
    };
    let migrating_too = ConditionInput {
        migrating: true,
        ..held.clone()
    };
    // (input, Ready, Reconciling, Stalled)
    let cases = [
        (&base, ["True", "False", "False"], reason::RECONCILED),
        (
            &held,
            ["True", "True", "False"],
            reason::SCALE_DOWN_DRAINING,
        ),
        (
            &migrating_too,
            ["True", "True", "False"],
            reason::PROGRESSING,
        ),
    ];
    for (input, want, reconciling_reason) in cases {
        let c = compute_conditions(input, &[]);
        let got: Vec<&str> = c[..3].iter().map(|c| c.status.as_str()).collect();
        assert_eq!(got, want, "{:?}", input.scale_down_held);
        assert_eq!(c[1].reason, reconciling_reason);
    }
    assert_eq!(
        compute_conditions(&held, &[])[1].message,
        "scale-down to 1 relay(s) waits for p-relay-1 (backlog 7)"
    );
}

#[test]
fn scaled_to_zero_and_a_refused_apply_table() {
    let active = vec!["nats".to_string()];
    let unknown = vec![row("nats", Readiness::Unknown)];
    let up = vec![row("nats", Readiness::True)];
    let base = ConditionInput {
        generation: 2,
        invalid: None,
        strategy: Strategy::FailFast,
        active: &active,
        providers: &unknown,
        fresh_relays: 0,
        relays_on_generation: 0,
        desired_relays: 0,
        blocked_since: None,
        now: t(0),
        stall_after: SignedDuration::from_secs(300),
        fallback_after: None,
        migrating: false,
        relay_failure: None,
        rollout_queued: None,
        scale_down_held: None,
        apply_failed: None,
    };
    // The relay just removed still has a fresh report, of the previous generation.
    let just_scaled = ConditionInput {
        providers: &up,
        fresh_relays: 1,
        relays_on_generation: 0,
        ..base.clone()
    };
    let held = ConditionInput {
        scale_down_held: Some("scale-down to 0 relay(s) waits for p-relay-0 (backlog 3)"),
        ..just_scaled.clone()
    };
    let refused = ConditionInput {
        desired_relays: 1,
        fresh_relays: 1,
        relays_on_generation: 1,
        providers: &up,
        apply_failed: Some("Service p-relay not applied: exceeded quota"),
        ..base.clone()
    };
    let refused_and_invalid = ConditionInput {
        invalid: Some("spec.x: bad".into()),
        ..refused.clone()
    };
    let zero = reason::SCALED_TO_ZERO;
    let apply = reason::APPLY_FAILED;
    // (name, input, [(status, reason)] of Ready, Reconciling, Stalled, Degraded)
    let cases = [
        (
            "scaled to zero, no report",
            &base,
            [
                ("False", zero),
                ("False", zero),
                ("False", reason::RECONCILED),
                ("False", zero),
            ],
        ),
        (
            "scaled to zero, a stale-to-be report of the old generation",
            &just_scaled,
            [
                ("False", zero),
                ("False", zero),
                ("False", reason::RECONCILED),
                ("False", zero),
            ],
        ),
        (
            "scale-down to zero held for a backlog: still running",
            &held,
            [
                ("True", reason::ALL_PROVIDERS_READY),
                ("True", reason::SCALE_DOWN_DRAINING),
                ("False", reason::RECONCILED),
                ("False", reason::ALL_PROVIDERS_READY),
            ],
        ),
        (
            "an owned object refused",
            &refused,
            [
                ("False", apply),
                ("False", apply),
                ("True", apply),
                ("False", reason::ALL_PROVIDERS_READY),
            ],
        ),
        (
            "an invalid spec says so first",
            &refused_and_invalid,
            [
                ("False", reason::INVALID_SPEC),
                ("False", reason::INVALID_SPEC),
                ("True", reason::INVALID_SPEC),
                ("False", reason::ALL_PROVIDERS_READY),
            ],
        ),
    ];
    for (name, input, want) in cases {
        let got: Vec<(String, String)> = compute_conditions(input, &[])
            .into_iter()
            .map(|c| (c.status, c.reason))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(s, r)| (s.to_string(), r.to_string()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let c = compute_conditions(&refused, &[]);
    assert_eq!(c[2].message, "Service p-relay not applied: exceeded quota");
    assert!(
        compute_conditions(&base, &[])[0]
            .message
            .contains("spec.relay.replicas is 0"),
        "Ready says why nothing runs"
    );
}
