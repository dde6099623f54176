//! The pipeline objects `hack/check-kstatus` hands to kstatus (`status.Compute` of
//! sigs.k8s.io/cli-utils, what Flux's health check runs): one per state of the table in
//! [`super`]'s docs, each with the kstatus result it must read as in the annotation
//! `dualwrite.io/kstatus-expected`. The fixtures are committed under `hack/kstatus/testdata/`;
//! this test fails when the conditions computed now differ from them, so they cannot drift.
//! `DUALWRITE_WRITE_FIXTURES=1 cargo test --lib kstatus_fixtures` rewrites them.

use std::path::PathBuf;

use super::*;
use crate::controller::pods::RelayFailure;
use crate::controller::testing::{row, t};

/// The annotation that carries the expected kstatus result (kstatus reads no annotation).
const EXPECTED: &str = "dualwrite.io/kstatus-expected";

struct State {
    file: &'static str,
    expect: &'static str,
    /// metadata.generation (the status observed generation 1).
    generation: i64,
    input: ConditionInput<'static>,
}

fn states() -> Vec<State> {
    let active: &'static [String] = Box::leak(Box::new(["nats".to_string(), "kafka".to_string()]));
    let rows = |nats: Readiness, kafka: Readiness| -> &'static [ProviderStatus] {
        Box::leak(Box::new([row("nats", nats, 0), row("kafka", kafka, 0)]))
    };
    let failure = |reason: &'static str, what: &str| -> &'static RelayFailure {
        Box::leak(Box::new(RelayFailure {
            reason,
            pod: "shop-relay-0".into(),
            message: format!("pod shop-relay-0: {what}"),
        }))
    };
    use Readiness::{False, True, Unknown};
    let base = ConditionInput {
        generation: 1,
        invalid: None,
        strategy: Strategy::FailFast,
        active,
        providers: rows(True, True),
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
    let state = |file, expect, input| State {
        file,
        expect,
        generation: 1,
        input,
    };
    let kafka_down = rows(True, False);
    vec![
        state("ready.json", "Current", base.clone()),
        state(
            "best-effort-provider-down.json",
            "Current",
            ConditionInput {
                strategy: Strategy::BestEffort,
                providers: kafka_down,
                ..base.clone()
            },
        ),
        state(
            "fail-fast-provider-down.json",
            "Failed",
            ConditionInput {
                providers: kafka_down,
                blocked_since: Some(t(-10)),
                ..base.clone()
            },
        ),
        state(
            "fail-fast-provider-down-fallback-coming.json",
            "InProgress",
            ConditionInput {
                providers: kafka_down,
                blocked_since: Some(t(-10)),
                fallback_after: Some(SignedDuration::from_secs(60)),
                ..base.clone()
            },
        ),
        state(
            "fail-fast-blocked-past-stall-limit.json",
            "Failed",
            ConditionInput {
                providers: kafka_down,
                blocked_since: Some(t(-600)),
                fallback_after: Some(SignedDuration::from_secs(900)),
                ..base.clone()
            },
        ),
        state(
            "best-effort-all-down.json",
            "Failed",
            ConditionInput {
                strategy: Strategy::BestEffort,
                providers: rows(False, False),
                ..base.clone()
            },
        ),
        state(
            "no-relay-reported.json",
            "InProgress",
            ConditionInput {
                providers: rows(Unknown, Unknown),
                fresh_relays: 0,
                relays_on_generation: 0,
                ..base.clone()
            },
        ),
        state(
            "providers-not-reported.json",
            "InProgress",
            ConditionInput {
                providers: rows(Unknown, Unknown),
                ..base.clone()
            },
        ),
        state(
            "relay-crash-looping.json",
            "Failed",
            ConditionInput {
                relay_failure: Some(failure(
                    reason::RELAY_CRASH_LOOPING,
                    "container relay is in CrashLoopBackOff",
                )),
                ..base.clone()
            },
        ),
        state(
            "relay-image-pull-failed.json",
            "Failed",
            ConditionInput {
                fresh_relays: 0,
                relays_on_generation: 0,
                providers: rows(Unknown, Unknown),
                relay_failure: Some(failure(
                    reason::RELAY_IMAGE_PULL_FAILED,
                    "image example.com/dualwrite:nope cannot be pulled",
                )),
                ..base.clone()
            },
        ),
        state(
            "apply-failed.json",
            "Failed",
            ConditionInput {
                apply_failed: Some("StatefulSet shop-relay: exceeded quota"),
                ..base.clone()
            },
        ),
        state(
            "invalid-spec.json",
            "Failed",
            ConditionInput {
                invalid: Some("spec.providers: duplicate name nats".into()),
                ..base.clone()
            },
        ),
        state(
            "migration-step-change.json",
            "InProgress",
            ConditionInput {
                migrating: true,
                ..base.clone()
            },
        ),
        state(
            "scaled-to-zero.json",
            // Reconciling and Stalled are False, but kstatus falls back to Ready, and Ready
            // False reads InProgress: a pipeline that takes no message is not Current.
            "InProgress",
            ConditionInput {
                desired_relays: 0,
                fresh_relays: 0,
                relays_on_generation: 0,
                providers: rows(Unknown, Unknown),
                ..base.clone()
            },
        ),
        State {
            file: "generation-not-observed.json",
            expect: "InProgress",
            generation: 2,
            input: base.clone(),
        },
    ]
}

/// The object kstatus is given: what `kubectl get dwp -o json` shows of the state.
fn object(s: &State) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "dualwrite.io/v1alpha1",
        "kind": "DualWritePipeline",
        "metadata": {
            "name": "shop",
            "namespace": "default",
            "generation": s.generation,
            "annotations": { EXPECTED: s.expect },
        },
        "status": {
            "observedGeneration": s.input.generation,
            "strategy": s.input.strategy,
            "conditions": compute_conditions(&s.input, &[]),
        },
    })
}

#[test]
fn kstatus_fixtures_match_the_conditions() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/kstatus/testdata");
    let write = std::env::var_os("DUALWRITE_WRITE_FIXTURES").is_some();
    let mut stale = Vec::new();
    for s in states() {
        let want = serde_json::to_string_pretty(&object(&s)).unwrap() + "\n";
        let path = dir.join(s.file);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(s.file);
        }
    }
    assert!(
        stale.is_empty(),
        "hack/kstatus/testdata differs from the conditions computed now: {stale:?}; \
         rewrite with DUALWRITE_WRITE_FIXTURES=1 cargo test --lib kstatus_fixtures, then run hack/check-kstatus"
    );
}
