//! `next_status` over whole pipelines: the decisions chained as the reconciler chains them.

use std::time::Duration;

use super::*;
use crate::controller::testing::t;

fn settings() -> Settings {
    Settings {
        relay_image: "img".into(),
        resync: Duration::from_secs(30),
        stale_after: Duration::from_secs(150),
        stall_after: Duration::from_secs(300),
        instance: None,
    }
}

fn pipeline(yaml: &str) -> DualWritePipeline {
    let mut p: DualWritePipeline = serde_yaml::from_str(yaml).unwrap();
    p.metadata.generation = Some(1);
    p
}

const MIGRATION: &str = "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: p, namespace: n}\nspec:\n  providers: [{name: a, type: memory}, {name: b, type: memory}]\n  migration:\n    steps:\n    - {name: only-a, strategy: FailFast, providers: [a]}\n    - {name: both, strategy: BestEffort}\n";

#[test]
fn first_status_enters_step_zero_with_its_strategy_and_providers() {
    let p = pipeline(MIGRATION);
    let NextStatus { status: st, events } = next_status(
        &p,
        &settings(),
        &RelayObservation::default(),
        Timestamp::from_second(1_800_000_000).unwrap(),
    );
    assert_eq!(st.strategy, Some(Strategy::FailFast));
    assert_eq!(st.active_providers.as_deref(), Some(&["a".to_string()][..]));
    assert_eq!(st.migration.as_ref().unwrap().current_step, 0);
    assert!(
        events.iter().any(|e| e.reason == "StepChanged"),
        "{events:?}"
    );
    assert_eq!(st.conditions.len(), 4);
}

#[test]
fn an_invalid_spec_keeps_what_runs_and_stalls() {
    let mut p = pipeline(MIGRATION);
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let mut st = next_status(&p, &settings(), &RelayObservation::default(), now).status;
    // Move to step 1, then make the spec invalid (a target past the last step).
    p.spec.migration.as_mut().unwrap().target_step = Some(1);
    p.status = Some(st.clone());
    st = next_status(&p, &settings(), &RelayObservation::default(), now).status;
    assert_eq!(st.migration.as_ref().unwrap().current_step, 1);
    p.spec.migration.as_mut().unwrap().target_step = Some(7);
    p.status = Some(st.clone());
    let next = next_status(&p, &settings(), &RelayObservation::default(), now).status;
    assert_eq!(next.strategy, st.strategy, "strategy kept");
    assert_eq!(next.active_providers, st.active_providers, "providers kept");
    assert_eq!(
        next.migration, st.migration,
        "migration step and history kept"
    );
    let stalled = next
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::STALLED)
        .unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reason::INVALID_SPEC)
    );
    assert!(
        stalled.message.contains("targetStep"),
        "{}",
        stalled.message
    );
}

#[test]
fn gates_wait_for_relays_to_report_from_inside_the_step() {
    use crate::api::{ProviderReport, RelayReport};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut p = pipeline(MIGRATION);
    let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
    let st = next_status(&p, &settings(), &RelayObservation::default(), t(0)).status;
    p.status = Some(st);
    let report = |at: i64| RelayReport {
        name: "relay-0".into(),
        reported_at: Time(t(at)),
        strategy: Strategy::FailFast,
        generation: Some(1),
        stopped: false,
        started_at: None,
        accepted: None,
        providers: ["a", "b"]
            .iter()
            .map(|n| ProviderReport {
                name: n.to_string(),
                healthy: true,
                ..Default::default()
            })
            .collect(),
    };
    // A report from before the step began does not open its gates.
    p.status.as_mut().unwrap().relays = vec![report(-1)];
    let st = next_status(&p, &settings(), &RelayObservation::default(), t(5)).status;
    let m = st.migration.as_ref().unwrap();
    assert_eq!(
        (m.current_step, m.reason.as_str()),
        (0, reason::WAITING_FOR_RELAYS),
        "{}",
        m.message
    );
    // A healthy report from inside the step does.
    let mut prev = st;
    prev.relays = vec![report(4)];
    p.status = Some(prev);
    let st = next_status(&p, &settings(), &RelayObservation::default(), t(6)).status;
    assert_eq!(st.migration.as_ref().unwrap().current_step, 1);
    assert_eq!(st.strategy, Some(Strategy::BestEffort));
}

#[test]
fn relay_failures_and_retained_claims_show_with_a_warning_once() {
    use crate::controller::pods::{RelayFailure, RelayObservation};
    let p = pipeline(MIGRATION);
    let failure = RelayFailure {
        reason: reason::RELAY_CRASH_LOOPING,
        pod: "p-relay-0".into(),
        message: "pod p-relay-0: the relay keeps crashing (3 restarts)".into(),
    };
    let observed = RelayObservation {
        failure: Some(failure.clone()),
        retained_claims: vec!["state-p-relay-2".into()],
        rollout_queued: None,
        scale: None,
        apply_failed: None,
    };
    let warnings = |events: &[PipelineEvent]| -> Vec<&'static str> {
        events
            .iter()
            .filter(|e| e.type_ == EventType::Warning)
            .map(|e| e.reason)
            .collect()
    };
    let first = next_status(&p, &settings(), &observed, t(0));
    assert_eq!(
        warnings(&first.events),
        [reason::RELAY_CRASH_LOOPING, reason::CLAIMS_RETAINED]
    );
    let ready = &first.status.conditions[0];
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        (
            "False",
            reason::RELAY_CRASH_LOOPING,
            failure.message.as_str()
        )
    );
    assert_eq!(first.status.retained_claims, ["state-p-relay-2"]);
    // The same again: no new Warning. Another message (one restart more): a new one.
    let mut p = p;
    p.status = Some(first.status);
    assert_eq!(
        warnings(&next_status(&p, &settings(), &observed, t(5)).events),
        [] as [&str; 0]
    );
    let worse = RelayObservation {
        failure: Some(RelayFailure {
            message: "pod p-relay-0: the relay keeps crashing (4 restarts)".into(),
            ..failure
        }),
        ..observed
    };
    assert_eq!(
        warnings(&next_status(&p, &settings(), &worse, t(10)).events),
        [reason::RELAY_CRASH_LOOPING]
    );
}

/// Relay `name`'s report at `at` with `backlog` on provider `a` (down while it has one).
fn relay_report(name: &str, at: i64, backlog: u64) -> RelayReport {
    RelayReport {
        name: name.into(),
        reported_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(at)),
        strategy: Strategy::BestEffort,
        generation: Some(1),
        stopped: false,
        started_at: None,
        accepted: None,
        providers: vec![crate::api::ProviderReport {
            name: "a".into(),
            healthy: backlog == 0,
            backlog,
            ..Default::default()
        }],
    }
}

const SCALED: &str = "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: p, namespace: n}\nspec:\n  strategy: BestEffort\n  providers: [{name: a, type: memory}, {name: b, type: memory}]\n  relay: {replicas: 1}\n";

#[test]
fn a_held_scale_down_is_reconciling_with_events_at_its_start_and_end() {
    use crate::controller::scale::{LeavingRelay, ScaleDecision, Transition};
    let mut p = pipeline(SCALED);
    p.status = Some(DualWritePipelineStatus {
        relays: vec![
            relay_report("p-relay-0", -5, 0),
            relay_report("p-relay-1", -5, 7),
        ],
        ..Default::default()
    });
    let holding = ScaleDecision {
        desired: 1,
        replicas: 2,
        held_since: Some(t(0)),
        waiting: vec![LeavingRelay {
            ordinal: 1,
            name: "p-relay-1".into(),
            backlog: Some(7),
        }],
        transition: Some(Transition::Started),
    };
    let observed = |scale: ScaleDecision, retained: &[&str]| RelayObservation {
        retained_claims: retained.iter().map(|c| c.to_string()).collect(),
        scale: Some(scale),
        ..RelayObservation::default()
    };
    let reconciling = |st: &DualWritePipelineStatus| {
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::RECONCILING)
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let events = |e: &[PipelineEvent]| -> Vec<(EventType, &'static str)> {
        e.iter().map(|e| (e.type_, e.reason)).collect()
    };

    // The hold starts: Reconciling names the relay and its backlog; no claim is retained yet
    // (the held relay still uses its own); both relays count in status.replicas.
    let first = next_status(&p, &settings(), &observed(holding.clone(), &[]), t(0));
    let (status, why, message) = reconciling(&first.status);
    assert_eq!(
        (status.as_str(), why.as_str()),
        ("True", reason::SCALE_DOWN_DRAINING)
    );
    assert!(message.contains("p-relay-1 (backlog 7)"), "{message}");
    // (Provider a, with a backlog on p-relay-1, is reported down: its own transition.)
    assert_eq!(
        events(&first.events),
        [
            (EventType::Warning, reason::PROVIDER_UNAVAILABLE),
            (EventType::Normal, reason::SCALE_DOWN_DRAINING)
        ]
    );
    assert_eq!(first.status.replicas, 2);
    assert!(first.status.retained_claims.is_empty());

    // Still held: no new Event, still Reconciling.
    let mut prev = first.status.clone();
    prev.relays = p.status.as_ref().unwrap().relays.clone();
    p.status = Some(prev);
    let still = ScaleDecision {
        transition: None,
        ..holding.clone()
    };
    let second = next_status(&p, &settings(), &observed(still, &[]), t(30));
    assert_eq!(reconciling(&second.status).1, reason::SCALE_DOWN_DRAINING);
    assert!(second.events.is_empty(), "{:?}", second.events);

    // Drained (relay-1 reports 0): the scale-down proceeds with a Normal Event, the claim is
    // retained with a Normal Event (empty), and Reconciling no longer holds.
    let mut prev = second.status.clone();
    prev.relays = vec![
        relay_report("p-relay-0", 35, 0),
        relay_report("p-relay-1", 35, 0),
    ];
    p.status = Some(prev);
    let drained = ScaleDecision {
        replicas: 1,
        held_since: None,
        waiting: vec![],
        transition: Some(Transition::Drained),
        ..holding.clone()
    };
    let third = next_status(
        &p,
        &settings(),
        &observed(drained, &["state-p-relay-1"]),
        t(40),
    );
    assert_ne!(reconciling(&third.status).1, reason::SCALE_DOWN_DRAINING);
    assert_eq!(
        events(&third.events),
        [
            // Provider a's backlog drained: p-relay-1 reports it healthy again.
            (EventType::Normal, reason::PROVIDER_AVAILABLE),
            (EventType::Normal, reason::CLAIMS_RETAINED),
            (EventType::Normal, reason::SCALE_DOWN_DRAINED)
        ]
    );

    // Timed out instead: a Warning for the hold and one for the claim with its backlog.
    let mut prev = second.status;
    prev.relays = vec![
        relay_report("p-relay-0", 35, 0),
        relay_report("p-relay-1", 35, 7),
    ];
    p.status = Some(prev);
    let timed_out = ScaleDecision {
        replicas: 1,
        held_since: None,
        transition: Some(Transition::TimedOut),
        ..holding
    };
    let fourth = next_status(
        &p,
        &settings(),
        &observed(timed_out, &["state-p-relay-1"]),
        t(40),
    );
    assert_eq!(
        events(&fourth.events),
        [
            (EventType::Warning, reason::CLAIMS_RETAINED),
            (EventType::Warning, reason::SCALE_DOWN_DRAIN_TIMED_OUT)
        ]
    );
    let claim_note = &fourth.events[0].note;
    for w in [
        "state-p-relay-1 (backlog 7)",
        "kubectl scale dwp/p --replicas=2",
    ] {
        assert!(claim_note.contains(w), "{w:?} in {claim_note}");
    }
    assert_eq!(fourth.status.retained_claims, ["state-p-relay-1"]);
}

#[test]
fn zero_replicas_read_as_scaled_to_zero() {
    let p = pipeline(
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: p, namespace: n}\nspec:\n  providers: [{name: a, type: memory}]\n  relay: {replicas: 0}\n",
    );
    let st = next_status(&p, &settings(), &RelayObservation::default(), t(0)).status;
    let ready = &st.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::SCALED_TO_ZERO)
    );
    let reconciling = &st.conditions[1];
    assert_eq!(reconciling.status, "False", "nothing is under way");
    assert_eq!(st.summary.as_deref(), Some("scaled to zero: a(?)=0"));
}

#[test]
fn a_refused_apply_stalls_with_a_warning_once_per_refusal() {
    let p = pipeline(MIGRATION);
    let refused = |why: &str| RelayObservation {
        apply_failed: Some(why.into()),
        ..RelayObservation::default()
    };
    let warnings = |events: &[PipelineEvent]| -> Vec<(&'static str, String)> {
        events
            .iter()
            .filter(|e| e.type_ == EventType::Warning)
            .map(|e| (e.reason, e.note.clone()))
            .collect()
    };
    let quota =
        "Service p-relay not applied: the API server refused it (403 Forbidden): exceeded quota";
    let first = next_status(&p, &settings(), &refused(quota), t(0));
    assert_eq!(
        warnings(&first.events),
        [(reason::APPLY_FAILED, quota.to_string())]
    );
    let stalled = &first.status.conditions[2];
    assert_eq!(
        (
            stalled.type_.as_str(),
            stalled.status.as_str(),
            stalled.reason.as_str(),
            stalled.message.as_str()
        ),
        ("Stalled", "True", reason::APPLY_FAILED, quota)
    );
    // Not an empty status: the strategy and providers in force are there.
    assert!(first.status.strategy.is_some() && first.status.active_providers.is_some());
    let mut p = p;
    p.status = Some(first.status);
    assert!(warnings(&next_status(&p, &settings(), &refused(quota), t(5)).events).is_empty());
    let webhook = "StatefulSet p-relay not applied: the API server refused it (400 BadRequest): denied by policy";
    assert_eq!(
        warnings(&next_status(&p, &settings(), &refused(webhook), t(10)).events),
        [(reason::APPLY_FAILED, webhook.to_string())]
    );
    // Fixed: Stalled clears.
    let fixed = next_status(&p, &settings(), &RelayObservation::default(), t(15)).status;
    assert_eq!(fixed.conditions[2].status, "False");
}
