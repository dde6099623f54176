//! The scale decision as a table; the relays a scale-down removes, from reports and claims; the
//! hold's start on the StatefulSet; and the Events of its transitions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{ProviderReport, Strategy};
use crate::controller::testing::t;

const LIMIT: SignedDuration = SignedDuration::from_secs(600);

/// Relays `p-relay-<ordinal>` with their backlog (`None`: unknown).
fn leaving(relays: &[(i32, Option<u64>)]) -> Vec<LeavingRelay> {
    relays
        .iter()
        .map(|(ordinal, backlog)| LeavingRelay {
            ordinal: *ordinal,
            name: format!("p-relay-{ordinal}"),
            backlog: *backlog,
        })
        .collect()
}

#[test]
fn scale_decision_table() {
    struct Case {
        name: &'static str,
        desired: i32,
        running: Option<i32>,
        leaving: Vec<LeavingRelay>,
        /// Seconds before now the hold began.
        held_for: Option<i64>,
        /// (replicas, hold start in seconds before now, waiting ordinals, transition)
        want: (i32, Option<i64>, Vec<i32>, Option<Transition>),
    }
    let cases = vec![
        Case {
            name: "no StatefulSet yet",
            desired: 2,
            running: None,
            leaving: vec![],
            held_for: None,
            want: (2, None, vec![], None),
        },
        Case {
            name: "steady",
            desired: 2,
            running: Some(2),
            leaving: vec![],
            held_for: None,
            want: (2, None, vec![], None),
        },
        Case {
            name: "scale-up",
            desired: 3,
            running: Some(1),
            leaving: vec![],
            held_for: None,
            want: (3, None, vec![], None),
        },
        Case {
            name: "scale-down, the leaving relay reports an empty backlog",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(0))]),
            held_for: None,
            want: (1, None, vec![], None),
        },
        Case {
            name: "scale-down, the leaving relay holds a backlog: the hold starts",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(12))]),
            held_for: None,
            want: (2, Some(0), vec![1], Some(Transition::Started)),
        },
        Case {
            name: "unknown is not empty: no fresh report holds too",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, None)]),
            held_for: None,
            want: (2, Some(0), vec![1], Some(Transition::Started)),
        },
        Case {
            name: "a relay missing from the list counts as unknown",
            desired: 1,
            running: Some(3),
            leaving: leaving(&[(1, Some(0))]),
            held_for: None,
            want: (3, Some(0), vec![2], Some(Transition::Started)),
        },
        Case {
            name: "the hold goes on, keeping its start (an operator restart reads it back)",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(3))]),
            held_for: Some(120),
            want: (2, Some(120), vec![1], None),
        },
        Case {
            name: "the backlog is replayed: the scale-down proceeds",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(0))]),
            held_for: Some(120),
            want: (1, None, vec![], Some(Transition::Drained)),
        },
        Case {
            name: "3 → 1: the drained highest relay goes, the hold keeps the one with a backlog",
            desired: 1,
            running: Some(3),
            leaving: leaving(&[(1, Some(5)), (2, Some(0))]),
            held_for: Some(30),
            want: (2, Some(30), vec![1], None),
        },
        Case {
            name: "3 → 1: the highest relay holds a backlog, so both stay",
            desired: 1,
            running: Some(3),
            leaving: leaving(&[(1, Some(0)), (2, Some(5))]),
            held_for: None,
            want: (3, Some(0), vec![2], Some(Transition::Started)),
        },
        Case {
            name: "just before the limit: still held",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(3))]),
            held_for: Some(599),
            want: (2, Some(599), vec![1], None),
        },
        Case {
            name: "at the limit: scaled down anyway, the backlog named",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(3))]),
            held_for: Some(600),
            want: (1, None, vec![1], Some(Transition::TimedOut)),
        },
        Case {
            name: "past the limit, unknown backlog: scaled down anyway",
            desired: 0,
            running: Some(2),
            leaving: leaving(&[(0, Some(0)), (1, None)]),
            held_for: Some(3600),
            want: (0, None, vec![1], Some(Transition::TimedOut)),
        },
        Case {
            name: "the spec asks for the held relays again",
            desired: 2,
            running: Some(2),
            leaving: vec![],
            held_for: Some(60),
            want: (2, None, vec![], Some(Transition::Cancelled)),
        },
        Case {
            name: "the spec asks for more than ever while held",
            desired: 4,
            running: Some(2),
            leaving: vec![],
            held_for: Some(60),
            want: (4, None, vec![], Some(Transition::Cancelled)),
        },
        Case {
            name: "a hold start in the future (clock skew) holds on",
            desired: 1,
            running: Some(2),
            leaving: leaving(&[(1, Some(3))]),
            held_for: Some(-30),
            want: (2, Some(-30), vec![1], None),
        },
    ];
    for c in cases {
        let now = t(0);
        let d = decide_scale(&ScaleInput {
            desired: c.desired,
            running: c.running,
            leaving: &c.leaving,
            held_since: c.held_for.map(|s| t(-s)),
            now,
            limit: LIMIT,
        });
        let got = (
            d.replicas,
            d.held_since.map(|s| now.duration_since(s).as_secs()),
            d.waiting.iter().map(|r| r.ordinal).collect::<Vec<_>>(),
            d.transition,
        );
        assert_eq!(got, c.want, "{}", c.name);
        assert_eq!(d.desired, c.desired, "{}", c.name);
        assert_eq!(d.holding(), c.want.1.is_some(), "{}", c.name);
    }
}

fn report(name: &str, at: i64, backlogs: &[u64]) -> RelayReport {
    RelayReport {
        name: name.into(),
        reported_at: Time(t(at)),
        strategy: Strategy::BestEffort,
        generation: Some(1),
        stopped: false,
        started_at: None,
        accepted: None,
        providers: backlogs
            .iter()
            .enumerate()
            .map(|(i, b)| ProviderReport {
                orphaned: false,
                name: format!("prov{i}"),
                healthy: *b == 0,
                reason: String::new(),
                message: String::new(),
                since: None,
                published: 10,
                failed: 0,
                backlog: *b,
                latency_p99_ms: None,
                needs_reconciliation: false,
                ..Default::default()
            })
            .collect(),
    }
}

#[test]
fn leaving_relays_from_fresh_reports_and_claims() {
    let stale_after = SignedDuration::from_secs(150);
    let reports = vec![
        report("p-relay-0", -10, &[9]),
        report("p-relay-1", -10, &[0, 4]),
        report("p-relay-2", -10, &[0, 0]),
        report("p-relay-3", -200, &[0]), // stale: unknown
        report("other-relay-4", -10, &[0]),
    ];
    let claims: Vec<String> = (0..5).map(|o| format!("state-p-relay-{o}")).collect();
    let got = leaving_relays("p", 1, 6, &reports, &claims[..5], t(-60), t(0), stale_after);
    let want = vec![
        (1, "p-relay-1", Some(4)),
        (2, "p-relay-2", Some(0)),
        (3, "p-relay-3", None),
        // No fresh report of its own (another pipeline's relay does not count), but a claim.
        (4, "p-relay-4", None),
        // Neither a report nor a claim: it never held a backlog.
        (5, "p-relay-5", Some(0)),
    ];
    let got: Vec<(i32, &str, Option<u64>)> = got
        .iter()
        .map(|r| (r.ordinal, r.name.as_str(), r.backlog))
        .collect();
    assert_eq!(got, want);
    assert!(leaving_relays("p", 2, 2, &reports, &claims, t(-60), t(0), stale_after).is_empty());
    assert!(leaving_relays("p", 3, 1, &reports, &claims, t(-60), t(0), stale_after).is_empty());
}

/// A report from before the scale-down was requested is fresh, but may predate a backlog the
/// relay took since: it counts as unknown, and so holds the scale-down until the relay reports
/// again. Cases: (seconds of the report, seconds of the request, backlog reported, want).
#[test]
fn reports_older_than_the_scale_down_request_are_unknown() {
    let stale_after = SignedDuration::from_secs(150);
    let claims = vec!["state-p-relay-1".to_string()];
    let cases = [
        (
            "reported 10 s before the request: unknown",
            -20,
            -10,
            0,
            None,
        ),
        ("reported at the request itself: unknown", -10, -10, 0, None),
        ("reported after the request: trusted", -5, -10, 0, Some(0)),
        (
            "reported after the request, with a backlog",
            -5,
            -10,
            7,
            Some(7),
        ),
        (
            "first seen now (no hold yet): any report is older",
            -1,
            0,
            0,
            None,
        ),
    ];
    for (name, reported, requested, backlog, want) in cases {
        let reports = vec![report("p-relay-1", reported, &[backlog])];
        let got = leaving_relays(
            "p",
            1,
            2,
            &reports,
            &claims,
            t(requested),
            t(0),
            stale_after,
        );
        assert_eq!(got[0].backlog, want, "{name}");
        let decision = decide_scale(&ScaleInput {
            desired: 1,
            running: Some(2),
            leaving: &got,
            held_since: None,
            now: t(0),
            limit: LIMIT,
        });
        assert_eq!(
            decision.replicas,
            if want == Some(0) { 1 } else { 2 },
            "{name}"
        );
    }
}

#[test]
fn the_hold_start_is_kept_on_the_statefulset_and_removed_with_the_hold() {
    let sts = |annotations: &[(&str, &str)]| -> StatefulSet {
        let mut s: StatefulSet = serde_yaml::from_str(
            "metadata: {name: p-relay}\nspec: {replicas: 2, selector: {}, template: {}}",
        )
        .unwrap();
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    };
    let held = ScaleDecision {
        desired: 1,
        replicas: 2,
        held_since: Some(t(-60)),
        waiting: leaving(&[(1, Some(3))]),
        transition: None,
    };
    let mut s = sts(&[("dualwrite.io/pod-template", "h@1")]);
    apply_to(&mut s, &held);
    assert_eq!(running_replicas(&s), 2);
    assert_eq!(held_since(&s), Some(t(-60)), "read back as written");
    let ann = s.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        ann["dualwrite.io/pod-template"], "h@1",
        "other annotations stay"
    );

    let proceeds = ScaleDecision {
        replicas: 1,
        held_since: None,
        waiting: vec![],
        transition: Some(Transition::Drained),
        ..held
    };
    let mut s = sts(&[]);
    apply_to(&mut s, &proceeds);
    assert_eq!(running_replicas(&s), 1);
    assert_eq!(
        held_since(&s),
        None,
        "omitted: server-side apply removes it"
    );

    assert_eq!(
        held_since(&sts(&[(HELD_SINCE_ANNOTATION, "yesterday")])),
        None
    );
}

#[test]
fn every_transition_has_its_event_and_a_hold_its_message() {
    let base = ScaleDecision {
        desired: 1,
        replicas: 2,
        held_since: Some(t(0)),
        waiting: leaving(&[(1, Some(12)), (2, None)]),
        transition: None,
    };
    let with = |transition| ScaleDecision {
        transition: Some(transition),
        ..base.clone()
    };
    assert_eq!(scale_event("p", &base, LIMIT), None);
    // (transition, type, reason, words in the note)
    let cases = [
        (
            Transition::Started,
            EventType::Normal,
            reason::SCALE_DOWN_DRAINING,
            &[
                "p-relay-1 (backlog 12)",
                "p-relay-2 (backlog unknown",
                "10m",
            ][..],
        ),
        (
            Transition::Drained,
            EventType::Normal,
            reason::SCALE_DOWN_DRAINED,
            &["scaling down to 1"][..],
        ),
        (
            Transition::Cancelled,
            EventType::Normal,
            reason::SCALE_DOWN_CANCELLED,
            &["asks for 1 relay(s) again"][..],
        ),
        (
            Transition::TimedOut,
            EventType::Warning,
            reason::SCALE_DOWN_DRAIN_TIMED_OUT,
            &[
                "p-relay-1 (backlog 12)",
                "retainedClaims",
                "kubectl scale dwp/p --replicas=3",
            ][..],
        ),
    ];
    for (transition, type_, reason, words) in cases {
        let e = scale_event("p", &with(transition), LIMIT).unwrap();
        assert_eq!((e.type_, e.reason), (type_, reason), "{transition:?}");
        for w in words {
            assert!(e.note.contains(w), "{transition:?}: {w:?} in {}", e.note);
        }
    }
    let message = holding_message(&base, LIMIT).unwrap();
    for w in [
        "scale-down to 1",
        "p-relay-1 (backlog 12)",
        "at most 10m",
        &t(0).to_string(),
    ] {
        assert!(message.contains(w), "{w:?} in {message}");
    }
    let not_held = ScaleDecision {
        held_since: None,
        ..base
    };
    assert_eq!(holding_message(&not_held, LIMIT), None);
}
