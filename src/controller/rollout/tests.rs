//! The rollout bound: template changes classified, and slots admitted, held and released.

use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::controller::testing::t;

#[test]
fn template_changes_are_classified_by_hash_and_generation() {
    // (annotation on the StatefulSet, the one wanted now, change)
    let cases = [
        (None, "h1@1", TemplateChange::Created),
        (Some(Some("h1@1")), "h1@1", TemplateChange::Unchanged),
        (Some(Some("h1@1")), "h1@2", TemplateChange::Unchanged),
        (Some(Some("h1@1")), "h2@2", TemplateChange::BySpec),
        (Some(Some("h1@2")), "h2@2", TemplateChange::ByOperator),
        (Some(None), "h2@2", TemplateChange::ByOperator),
        (Some(Some("garbage")), "h2@2", TemplateChange::ByOperator),
    ];
    for (existing, desired, want) in cases {
        assert_eq!(
            classify(existing, desired),
            want,
            "{existing:?} → {desired}"
        );
    }
}

const LIMIT: usize = 2;
const EXPIRE: SignedDuration = SignedDuration::from_secs(90);

fn slots(held: &[(&str, i64)]) -> Slots {
    Slots {
        held: held.iter().map(|(k, at)| (k.to_string(), t(*at))).collect(),
    }
}

/// (slots before, pipeline, change, its StatefulSet still rolling, applies, slots after)
type Case = (
    Slots,
    &'static str,
    TemplateChange,
    bool,
    bool,
    Vec<&'static str>,
);

#[test]
fn at_most_limit_pipelines_roll_out_of_the_operator_s_own_at_a_time() {
    use TemplateChange::*;
    let cases: Vec<Case> = vec![
        (slots(&[]), "a", ByOperator, false, true, vec!["a"]),
        (
            slots(&[("a", 0)]),
            "b",
            ByOperator,
            false,
            true,
            vec!["a", "b"],
        ),
        // Full: a third waits, and nothing changes.
        (
            slots(&[("a", 0), ("b", 0)]),
            "c",
            ByOperator,
            false,
            false,
            vec!["a", "b"],
        ),
        // A holder applying again (another change of the operator's) keeps its slot.
        (
            slots(&[("a", 0), ("b", 0)]),
            "a",
            ByOperator,
            true,
            true,
            vec!["a", "b"],
        ),
        // A change the user asked for, or a first creation, is never held.
        (
            slots(&[("a", 0), ("b", 0)]),
            "c",
            BySpec,
            false,
            true,
            vec!["a", "b"],
        ),
        (
            slots(&[("a", 0), ("b", 0)]),
            "c",
            Created,
            false,
            true,
            vec!["a", "b"],
        ),
        // A holder still rolling keeps its slot; one rolled out frees it.
        (
            slots(&[("a", 0), ("b", 0)]),
            "a",
            Unchanged,
            true,
            true,
            vec!["a", "b"],
        ),
        (
            slots(&[("a", 0), ("b", 0)]),
            "a",
            Unchanged,
            false,
            true,
            vec!["b"],
        ),
        // A slot not refreshed within the expiry (pipeline deleted) is released.
        (
            slots(&[("a", -100), ("b", 0)]),
            "c",
            ByOperator,
            false,
            true,
            vec!["b", "c"],
        ),
        // Rolling but not a holder (a user's rollout): takes no slot.
        (slots(&[]), "a", Unchanged, true, true, vec![]),
    ];
    for (i, (mut s, me, change, rolling, applies, after)) in cases.into_iter().enumerate() {
        let got = s.admit(me, change, rolling, t(0), EXPIRE, LIMIT);
        assert_eq!(got == Admission::Apply, applies, "case {i}: {got:?}");
        if let Admission::Hold { rolling } = &got {
            assert_eq!(rolling.len(), LIMIT, "case {i}: names the holders");
        }
        assert_eq!(s.held(), after, "case {i}");
    }
}

#[test]
fn an_upgrade_over_many_pipelines_goes_limit_at_a_time() {
    let pipelines = ["p1", "p2", "p3", "p4", "p5"];
    let mut s = Slots::default();
    let mut admitted: std::collections::BTreeMap<&str, i64> = Default::default();
    let mut done: Vec<&str> = Vec::new();
    let mut most = 0;
    for round in 0..20 {
        let pending: Vec<&str> = pipelines
            .into_iter()
            .filter(|p| !done.contains(p))
            .collect();
        for p in pending {
            // Not yet admitted: the new template is the operator's change. Admitted: its
            // StatefulSet takes two rounds to roll out.
            let (change, rolling) = match admitted.get(p) {
                None => (TemplateChange::ByOperator, false),
                Some(r) => (TemplateChange::Unchanged, round < r + 2),
            };
            let a = s.admit(p, change, rolling, t(round), EXPIRE, LIMIT);
            if change == TemplateChange::ByOperator && a == Admission::Apply {
                admitted.insert(p, round);
            }
            if change == TemplateChange::Unchanged && !rolling {
                done.push(p);
            }
            most = most.max(s.held().len());
        }
    }
    assert_eq!(done, pipelines, "every pipeline rolled, in order");
    assert_eq!(most, LIMIT, "never more than the limit at once");
    assert!(s.held().is_empty());
}

#[test]
fn rolled_out_reads_the_statefulset_status() {
    let sts = |generation: i64, status: &str| -> StatefulSet {
        serde_yaml::from_str(&format!(
            "metadata: {{name: s, generation: {generation}}}\nspec: {{replicas: 2, serviceName: s, selector: {{}}, template: {{}}}}\n{status}"
        ))
        .unwrap()
    };
    let cases = [
        ("", false),
        ("status: {replicas: 2, observedGeneration: 3, currentRevision: r1, updateRevision: r1, updatedReplicas: 2}", true),
        ("status: {replicas: 2, observedGeneration: 2, currentRevision: r1, updateRevision: r1, updatedReplicas: 2}", false),
        ("status: {replicas: 2, observedGeneration: 3, currentRevision: r1, updateRevision: r2, updatedReplicas: 1}", false),
        ("status: {replicas: 2, observedGeneration: 3, currentRevision: r2, updateRevision: r2, updatedReplicas: 1}", false),
    ];
    for (status, want) in cases {
        assert_eq!(rolled_out(&sts(3, status)), want, "{status}");
    }
}
