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
