//! The step machine's table and the helpers around it.

use std::collections::BTreeMap;

use super::*;
use crate::controller::testing::{row, t};

/// Three steps over nats and kafka: dual-write FailFast (gates from `gates0`), kafka-only
/// BestEffort, and a final FailFast step.
fn migration(gates0: &str, extra: &str) -> MigrationSpec {
    let steps = [
        format!("{{name: dual, strategy: FailFast, gates: {gates0}}}"),
        "{name: kafka-first, strategy: BestEffort, providers: [kafka], readFrom: kafka}".into(),
        "{name: done, strategy: FailFast, providers: [kafka]}".into(),
    ];
    serde_yaml::from_str(&format!("{{steps: [{}]{extra}}}", steps.join(", "))).unwrap()
}

fn status(step: u32, started: i64) -> MigrationStatus {
    MigrationStatus {
        current_step: step,
        step_name: format!("step-{step}"),
        reason: reason::STARTED.into(),
        message: String::new(),
        step_started_at: Time(t(started)),
        history: Vec::new(),
        request: None,
        held: None,
        last_request: None,
    }
}

fn consistency(checked: i64, ok: bool) -> ConsistencyStatus {
    ConsistencyStatus {
        checked_at: Time(t(checked)),
        seen: BTreeMap::new(),
        missing: if ok {
            BTreeMap::new()
        } else {
            BTreeMap::from([("kafka".to_string(), 3)])
        },
        duplicates: BTreeMap::new(),
        conflicting: BTreeMap::new(),
        consistent: ok,
        window_start: None,
        window_end: None,
    }
}

const OPEN: &str = "{}";

struct Case {
    name: &'static str,
    gates0: &'static str,
    extra: &'static str,
    current: Option<(u32, i64)>,
    rows: Vec<ProviderStatus>,
    consistency: Option<ConsistencyStatus>,
    now: i64,
    want: (u32, &'static str, bool),
    /// Words the message must hold.
    says: &'static [&'static str],
}

fn healthy() -> Vec<ProviderStatus> {
    vec![
        row("nats", Readiness::True, 0),
        row("kafka", Readiness::True, 0),
    ]
}

#[test]
fn decide_step_table() {
    let cases = vec![
        Case {
            name: "first reconcile starts at step 0",
            gates0: OPEN,
            extra: "",
            current: None,
            rows: healthy(),
            consistency: None,
            now: 0,
            want: (0, reason::STARTED, true),
            says: &["step 0 (dual)"],
        },
        Case {
            name: "first reconcile starts at targetStep",
            gates0: OPEN,
            extra: ", targetStep: 1",
            current: None,
            rows: healthy(),
            consistency: None,
            now: 0,
            want: (1, reason::STARTED, true),
            says: &["targetStep"],
        },
        Case {
            name: "first reconcile clamps a target past the end",
            gates0: OPEN,
            extra: ", targetStep: 9",
            current: None,
            rows: healthy(),
            consistency: None,
            now: 0,
            want: (2, reason::STARTED, true),
            says: &[],
        },
        Case {
            name: "targetStep higher promotes past closed gates",
            gates0: "{manual: true}",
            extra: ", targetStep: 2",
            current: Some((0, 0)),
            rows: vec![row("nats", Readiness::False, 5)],
            consistency: None,
            now: 1,
            want: (2, reason::PROMOTED, true),
            says: &["from step 0 (dual) to step 2 (done)"],
        },
        Case {
            name: "targetStep lower rolls back",
            gates0: OPEN,
            extra: ", targetStep: 0",
            current: Some((2, 0)),
            rows: healthy(),
            consistency: None,
            now: 1,
            want: (0, reason::ROLLED_BACK, true),
            says: &["rolled back"],
        },
        Case {
            name: "targetStep equal pins even with open gates",
            gates0: OPEN,
            extra: ", targetStep: 0",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1000,
            want: (0, reason::PINNED, false),
            says: &["unset targetStep"],
        },
        Case {
            name: "paused holds open gates",
            gates0: OPEN,
            extra: ", paused: true",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1000,
            want: (0, reason::PAUSED, false),
            says: &["paused"],
        },
        Case {
            name: "paused with a target still moves",
            gates0: OPEN,
            extra: ", paused: true, targetStep: 1",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1,
            want: (1, reason::PROMOTED, true),
            says: &[],
        },
        Case {
            name: "last step is completed",
            gates0: OPEN,
            extra: "",
            current: Some((2, 0)),
            rows: healthy(),
            consistency: None,
            now: 1000,
            want: (2, reason::COMPLETED, false),
            says: &["complete"],
        },
        Case {
            name: "manual gate awaits promotion",
            gates0: "{manual: true}",
            extra: "",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1000,
            want: (0, reason::AWAITING_PROMOTION, false),
            says: &["kubectl dualwrite promote", "targetStep: 1"],
        },
        Case {
            name: "minDuration not reached",
            gates0: "{minDuration: 10m}",
            extra: "",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 270,
            want: (0, reason::MIN_DURATION_NOT_REACHED, false),
            says: &["5m30s remain", "of its minDuration 10m"],
        },
        Case {
            name: "minDuration reached",
            gates0: "{minDuration: 10m}",
            extra: "",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 600,
            want: (1, reason::GATES_PASSED, true),
            says: &["advanced to step 1 (kafka-first)"],
        },
        Case {
            name: "clock behind the step start waits the full minDuration",
            gates0: "{minDuration: 1m}",
            extra: "",
            current: Some((0, 100)),
            rows: healthy(),
            consistency: None,
            now: 50,
            want: (0, reason::MIN_DURATION_NOT_REACHED, false),
            says: &["1m remain"],
        },
        Case {
            name: "provider down blocks",
            gates0: OPEN,
            extra: "",
            current: Some((0, 0)),
            rows: vec![
                row("nats", Readiness::True, 0),
                row("kafka", Readiness::False, 0),
            ],
            consistency: None,
            now: 1,
            want: (0, reason::PROVIDERS_NOT_READY, false),
            says: &["kafka (False: connection refused)"],
        },
        Case {
            name: "unknown provider blocks",
            gates0: OPEN,
            extra: "",
            current: Some((0, 0)),
            rows: vec![
                row("nats", Readiness::Unknown, 0),
                row("kafka", Readiness::True, 0),
            ],
            consistency: None,
            now: 1,
            want: (0, reason::PROVIDERS_NOT_READY, false),
            says: &["nats (Unknown)"],
        },
        Case {
            name: "provider not in the step does not block",
            gates0: OPEN,
            extra: "",
            current: Some((1, 0)),
            rows: vec![
                row("nats", Readiness::False, 0),
                row("kafka", Readiness::True, 0),
            ],
            consistency: None,
            now: 1,
            want: (2, reason::GATES_PASSED, true),
            says: &[],
        },
        Case {
            name: "allHealthy off lets a down provider pass",
            gates0: "{allHealthy: false}",
            extra: "",
            current: Some((0, 0)),
            rows: vec![
                row("nats", Readiness::True, 0),
                row("kafka", Readiness::False, 0),
            ],
            consistency: None,
            now: 1,
            want: (1, reason::GATES_PASSED, true),
            says: &[],
        },
        Case {
            name: "backlog blocks",
            gates0: OPEN,
            extra: "",
            current: Some((0, 0)),
            rows: vec![
                row("nats", Readiness::True, 0),
                row("kafka", Readiness::True, 42),
            ],
            consistency: None,
            now: 1,
            want: (0, reason::BACKLOG_NOT_EMPTY, false),
            says: &["kafka=42"],
        },
        Case {
            name: "backlog of a provider outside the step still blocks",
            gates0: OPEN,
            extra: "",
            current: Some((1, 0)),
            rows: vec![
                row("nats", Readiness::True, 7),
                row("kafka", Readiness::True, 0),
            ],
            consistency: None,
            now: 1,
            want: (1, reason::BACKLOG_NOT_EMPTY, false),
            says: &["nats=7"],
        },
        Case {
            name: "backlog gate disabled",
            gates0: "{backlogEmpty: false}",
            extra: "",
            current: Some((0, 0)),
            rows: vec![
                row("nats", Readiness::True, 0),
                row("kafka", Readiness::True, 42),
            ],
            consistency: None,
            now: 1,
            want: (1, reason::GATES_PASSED, true),
            says: &[],
        },
        Case {
            name: "consistency required and missing",
            gates0: "{consistent: true}",
            extra: "",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1,
            want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
            says: &["no consistency check"],
        },
        Case {
            name: "consistency checked before the step started",
            gates0: "{consistent: true}",
            extra: "",
            current: Some((0, 100)),
            rows: healthy(),
            consistency: Some(consistency(50, true)),
            now: 200,
            want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
            says: &["before the step started"],
        },
        Case {
            name: "consistency check found differences",
            gates0: "{consistent: true}",
            extra: "",
            current: Some((0, 100)),
            rows: healthy(),
            consistency: Some(consistency(150, false)),
            now: 200,
            want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
            says: &["missing: kafka=3"],
        },
        Case {
            name: "consistency ok",
            gates0: "{consistent: true}",
            extra: "",
            current: Some((0, 100)),
            rows: healthy(),
            consistency: Some(consistency(150, true)),
            now: 200,
            want: (1, reason::GATES_PASSED, true),
            says: &[],
        },
        Case {
            name: "consistency not required ignores a bad check",
            gates0: OPEN,
            extra: "",
            current: Some((0, 100)),
            rows: healthy(),
            consistency: Some(consistency(150, false)),
            now: 200,
            want: (1, reason::GATES_PASSED, true),
            says: &[],
        },
        Case {
            name: "manual wins over every other gate",
            gates0: "{manual: true, minDuration: 1h}",
            extra: "",
            current: Some((0, 0)),
            rows: vec![row("nats", Readiness::False, 3)],
            consistency: None,
            now: 1,
            want: (0, reason::AWAITING_PROMOTION, false),
            says: &[],
        },
        Case {
            name: "steps removed: clamp to the last",
            gates0: OPEN,
            extra: "",
            current: Some((7, 0)),
            rows: healthy(),
            consistency: None,
            now: 1,
            want: (2, reason::STEPS_CHANGED, true),
            says: &["step 7 (step-7) no longer exists", "last step, 2 (done)"],
        },
        Case {
            name: "steps removed beats targetStep",
            gates0: OPEN,
            extra: ", targetStep: 0",
            current: Some((7, 0)),
            rows: healthy(),
            consistency: None,
            now: 1,
            want: (2, reason::STEPS_CHANGED, true),
            says: &[],
        },
        Case {
            name: "unreadable minDuration holds the step",
            gates0: "{minDuration: soon}",
            extra: "",
            current: Some((0, 0)),
            rows: healthy(),
            consistency: None,
            now: 1000,
            want: (0, reason::INVALID_GATE, false),
            says: &["soon"],
        },
    ];
    assert!(cases.len() >= 20);
    for c in cases {
        let m = migration(c.gates0, c.extra);
        let current = c.current.map(|(step, started)| status(step, started));
        let input = StepInput {
            migration: &m,
            current: current.as_ref(),
            providers: &c.rows,
            consistency: c.consistency.as_ref(),
            relays_in_step: Ok(()),
            stale: &[],
            now: t(c.now),
        };
        let d = decide_step(&input);
        assert_eq!(
            (d.step, d.reason, d.moved),
            c.want,
            "{}: {}",
            c.name,
            d.message
        );
        assert!(!d.message.is_empty(), "{}", c.name);
        for word in c.says {
            assert!(
                d.message.contains(word),
                "{}: {:?} lacks {word:?}",
                c.name,
                d.message
            );
        }
    }
}

#[test]
fn no_steps_does_not_panic() {
    let m = MigrationSpec {
        steps: vec![],
        paused: false,
        target_step: Some(3),
        fallback_after: None,
    };
    let input = StepInput {
        migration: &m,
        current: None,
        providers: &[],
        consistency: None,
        relays_in_step: Ok(()),
        stale: &[],
        now: t(0),
    };
    let d = decide_step(&input);
    assert_eq!((d.step, d.reason, d.moved), (0, reason::NO_STEPS, false));
    let all = vec!["a".to_string()];
    assert_eq!(
        step_view(&m, 0, &all),
        StepView {
            strategy: Strategy::FailFast,
            active: all.clone(),
            read_from: Some("a".into())
        }
    );
}

#[test]
fn step_view_defaults() {
    let m: MigrationSpec = serde_yaml::from_str(
        "steps:
           - {name: all, strategy: FailFast}
           - {name: some, strategy: BestEffort, providers: [kafka, nats]}
           - {name: read-b, strategy: BestEffort, providers: [kafka, nats], readFrom: kafka}
           - {name: one, strategy: FailFast, providers: [kafka]}",
    )
    .unwrap();
    let all: Vec<String> = ["nats", "kafka", "memory"].map(String::from).to_vec();
    let view = |strategy: Strategy, active: &[&str], read_from: &str| StepView {
        strategy,
        active: active.iter().map(|x| x.to_string()).collect(),
        read_from: Some(read_from.into()),
    };
    use Strategy::{BestEffort, FailFast};
    let cases: Vec<(u32, StepView)> = vec![
        (0, view(FailFast, &["nats", "kafka", "memory"], "nats")),
        // Spec order, not the step's order; readFrom defaults to the first written.
        (1, view(BestEffort, &["nats", "kafka"], "nats")),
        (2, view(BestEffort, &["nats", "kafka"], "kafka")),
        (3, view(FailFast, &["kafka"], "kafka")),
        // Past the end: the last step.
        (9, view(FailFast, &["kafka"], "kafka")),
    ];
    for (step, want) in cases {
        assert_eq!(step_view(&m, step, &all), want, "step {step}");
    }
}

#[test]
fn gates_defaults() {
    let m = migration(OPEN, "");
    let g = gates(&m.steps[1]).unwrap();
    assert_eq!(
        g,
        Gates {
            all_healthy: true,
            backlog_empty: true,
            consistent: false,
            manual: false,
            min_duration: SignedDuration::ZERO
        }
    );
    let m = migration(
        "{minDuration: 1h30m, allHealthy: false, consistent: true}",
        "",
    );
    let g = gates(&m.steps[0]).unwrap();
    assert_eq!(g.min_duration, SignedDuration::from_secs(5400));
    assert!(!g.all_healthy && g.consistent && g.backlog_empty);
}

fn record(step: u32) -> StepRecord {
    StepRecord {
        step,
        name: format!("s{step}"),
        strategy: Strategy::FailFast,
        reason: "x".into(),
        entered_at: Time(t(step as i64)),
        requested_by: None,
    }
}

#[test]
fn history_appends_on_move_and_keeps_the_newest_twenty() {
    let m = migration(OPEN, "");
    let moved = StepDecision {
        step: 1,
        reason: reason::GATES_PASSED,
        message: String::new(),
        moved: true,
        ..StepDecision::default()
    };
    let stayed = StepDecision {
        step: 1,
        reason: reason::PAUSED,
        message: String::new(),
        moved: false,
        ..StepDecision::default()
    };

    let h = record_history(&[], &moved, &m, t(99));
    assert_eq!(h.len(), 1);
    assert_eq!(
        (
            h[0].step,
            h[0].name.as_str(),
            h[0].strategy,
            h[0].reason.as_str()
        ),
        (1, "kafka-first", Strategy::BestEffort, "GatesPassed")
    );
    assert_eq!(h[0].entered_at, Time(t(99)));

    let full: Vec<StepRecord> = (0..HISTORY_LIMIT as u32).map(record).collect();
    assert_eq!(record_history(&full, &stayed, &m, t(99)), full);
    let h = record_history(&full, &moved, &m, t(99));
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h[0].step, 1, "the oldest record went");
    assert_eq!(h.last().unwrap().entered_at, Time(t(99)));

    // An over-long history (e.g. written by an older operator) is trimmed too.
    let long: Vec<StepRecord> = (0..25).map(record).collect();
    let h = record_history(&long, &stayed, &m, t(99));
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h[0].step, 5);
}

#[test]
fn next_migration_status_keeps_the_start_unless_moved() {
    let m = migration("{minDuration: 10m}", "");
    let rows = healthy();
    let prev = status(0, 0);

    let waiting = StepInput {
        migration: &m,
        current: Some(&prev),
        providers: &rows,
        consistency: None,
        relays_in_step: Ok(()),
        stale: &[],
        now: t(60),
    };
    let d = decide_step(&waiting);
    let s = next_migration_status(&waiting, &d);
    assert_eq!(
        (s.current_step, s.step_name.as_str(), s.reason.as_str()),
        (0, "dual", reason::MIN_DURATION_NOT_REACHED)
    );
    assert_eq!(s.step_started_at, Time(t(0)));
    assert!(s.history.is_empty());

    let passing = StepInput {
        relays_in_step: Ok(()),
        now: t(600),
        ..waiting
    };
    let d = decide_step(&passing);
    let s = next_migration_status(&passing, &d);
    assert_eq!(
        (s.current_step, s.step_name.as_str(), s.reason.as_str()),
        (1, "kafka-first", reason::GATES_PASSED)
    );
    assert_eq!(s.step_started_at, Time(t(600)));
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.message, d.message);

    let first = StepInput {
        current: None,
        relays_in_step: Ok(()),
        now: t(5),
        ..waiting
    };
    let s = next_migration_status(&first, &decide_step(&first));
    assert_eq!(
        (s.current_step, s.reason.as_str(), s.step_started_at.clone()),
        (0, reason::STARTED, Time(t(5)))
    );
    assert_eq!(s.history.len(), 1);
}

/// `backlogEmpty` counts what the provider rows do not show: the backlog of a relay whose
/// report went stale (the one it wrote on stopping says what its disk holds; otherwise it is
/// unknown, which is not empty). Cases: (stale relays, gate passes, words the hold names).
#[test]
fn backlog_gate_counts_stale_relays() {
    let stale = |relay: &str, backlog: Option<u64>| StaleBacklog {
        relay: relay.into(),
        backlog,
    };
    let cases: Vec<(&str, Vec<StaleBacklog>, bool, &[&str])> = vec![
        ("no stale relay", vec![], true, &[]),
        (
            "a stale relay that stopped with an empty backlog",
            vec![stale("p-relay-1", Some(0))],
            true,
            &[],
        ),
        (
            "a stale relay that stopped with a backlog on its disk",
            vec![stale("p-relay-1", Some(9))],
            false,
            &["relay p-relay-1 (stopped, on its disk)=9"],
        ),
        (
            "a relay that stopped reporting without saying: unknown is not empty",
            vec![stale("p-relay-2", None)],
            false,
            &["relay p-relay-2 (no fresh report: unknown)"],
        ),
    ];
    let m = migration(OPEN, "");
    let current = status(0, 0);
    for (name, stale, passes, says) in cases {
        let input = StepInput {
            migration: &m,
            current: Some(&current),
            providers: &healthy(),
            consistency: None,
            relays_in_step: Ok(()),
            stale: &stale,
            now: t(1),
        };
        let d = decide_step(&input);
        let want = if passes {
            reason::GATES_PASSED
        } else {
            reason::BACKLOG_NOT_EMPTY
        };
        assert_eq!(d.reason, want, "{name}: {}", d.message);
        for w in says {
            assert!(d.message.contains(w), "{name}: {:?} lacks {w:?}", d.message);
        }
    }
}

/// A relay reports the backlog left on its disk for a provider its step no longer writes (an
/// orphaned backlog): the provider's row counts it (its health is not judged by that report),
/// and the gate stays closed while it is there.
#[test]
fn an_orphaned_backlog_holds_the_gate_and_not_the_health() {
    use crate::api::{ProviderReport, RelayReport};
    let spec: crate::api::DualWritePipelineSpec = serde_yaml::from_str(
        "providers: [{name: nats, type: nats, nats: {url: 'nats://n:4222', subject: s}}, {name: kafka, type: kafka, kafka: {brokers: ['k:9092'], topic: t}}]",
    )
    .unwrap();
    let provider = |name: &str, orphaned: bool, backlog: u64| ProviderReport {
        name: name.into(),
        healthy: !orphaned,
        backlog,
        orphaned,
        ..ProviderReport::default()
    };
    let report = RelayReport {
        name: "p-relay-0".into(),
        reported_at: Time(t(1)),
        strategy: Strategy::BestEffort,
        generation: Some(1),
        stopped: false,
        started_at: None,
        accepted: None,
        providers: vec![provider("kafka", false, 0), provider("nats", true, 5)],
    };
    let rows = crate::controller::rows::aggregate_providers(
        &spec,
        &[report],
        &[],
        t(2),
        SignedDuration::from_secs(60),
    );
    let nats = rows.iter().find(|r| r.name == "nats").unwrap();
    assert_eq!(nats.backlog, 5);
    assert_eq!(
        nats.ready,
        Readiness::Unknown,
        "an orphaned backlog says nothing of health"
    );
    let m = migration(OPEN, "");
    let current = status(1, 0);
    let input = StepInput {
        migration: &m,
        current: Some(&current),
        providers: &rows,
        consistency: None,
        relays_in_step: Ok(()),
        stale: &[],
        now: t(2),
    };
    let d = decide_step(&input);
    assert_eq!(d.reason, reason::BACKLOG_NOT_EMPTY, "{}", d.message);
    assert!(d.message.contains("nats=5"), "{}", d.message);
}

fn request(action: MigrationAction, to_step: Option<u32>) -> MigrationRequest {
    MigrationRequest {
        action,
        to_step,
        requested_at: "2026-11-27T12:00:00Z".into(),
        requested_by: Some("alice".into()),
        nonce: None,
    }
}

fn hold(reason: &str) -> MigrationHold {
    MigrationHold {
        reason: reason.into(),
        since: Time(t(5)),
    }
}

struct RequestCase {
    name: &'static str,
    gates0: &'static str,
    extra: &'static str,
    step: u32,
    held: Option<&'static str>,
    request: MigrationRequest,
    /// (step, reason, moved, accepted)
    want: (u32, &'static str, bool, bool),
    /// The hold's reason afterwards.
    held_after: Option<&'static str>,
    /// Words the outcome's message must hold.
    says: &'static [&'static str],
}

/// Each request, carried out or refused, over the three-step migration with closed gates on
/// step 0 unless a case opens them.
#[test]
fn requests_table() {
    use MigrationAction::*;
    let cases = vec![
        RequestCase {
            name: "promote passes a manual gate once",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(Promote, None),
            want: (1, reason::PROMOTED, true, true),
            held_after: None,
            says: &[
                "by request of alice",
                "gates of step 0 (dual) were passed once",
            ],
        },
        RequestCase {
            name: "promote lifts a hold",
            gates0: OPEN,
            extra: "",
            step: 0,
            held: Some(reason::PAUSED),
            request: request(Promote, None),
            want: (1, reason::PROMOTED, true, true),
            held_after: None,
            says: &[],
        },
        RequestCase {
            name: "promote --to jumps past gates",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(Promote, Some(2)),
            want: (2, reason::PROMOTED, true, true),
            held_after: None,
            says: &["past any gates"],
        },
        RequestCase {
            name: "promote --full goes to the last step",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(PromoteFull, None),
            want: (2, reason::PROMOTED, true, true),
            held_after: None,
            says: &["step 2 (done)"],
        },
        RequestCase {
            name: "promote at the last step is refused",
            gates0: OPEN,
            extra: "",
            step: 2,
            held: None,
            request: request(Promote, None),
            want: (2, reason::COMPLETED, false, false),
            held_after: None,
            says: &["last step"],
        },
        RequestCase {
            name: "promote --to a step that does not exist is refused",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(Promote, Some(7)),
            want: (0, reason::AWAITING_PROMOTION, false, false),
            held_after: None,
            says: &["step 7 does not exist", "0 to 2"],
        },
        RequestCase {
            name: "promote --to backwards is refused",
            gates0: OPEN,
            extra: "",
            step: 1,
            held: None,
            request: request(Promote, Some(1)),
            want: (2, reason::GATES_PASSED, true, false),
            held_after: None,
            says: &["use rollback"],
        },
        RequestCase {
            name: "spec targetStep wins over a request",
            gates0: "{manual: true}",
            extra: ", targetStep: 0",
            step: 0,
            held: None,
            request: request(Promote, None),
            want: (0, reason::PINNED, false, false),
            held_after: None,
            says: &["spec.migration.targetStep=0 pins this migration: change it in Git"],
        },
        RequestCase {
            name: "spec paused wins over a request",
            gates0: OPEN,
            extra: ", paused: true",
            step: 0,
            held: None,
            request: request(Resume, None),
            want: (0, reason::PAUSED, false, false),
            held_after: None,
            says: &["spec.migration.paused=true pins this migration: change it in Git"],
        },
        RequestCase {
            name: "pause holds open gates",
            gates0: OPEN,
            extra: "",
            step: 0,
            held: None,
            request: request(Pause, None),
            want: (0, reason::PAUSED, false, true),
            held_after: Some(reason::PAUSED),
            says: &["paused by request of alice"],
        },
        RequestCase {
            name: "resume lifts a pause",
            gates0: OPEN,
            extra: "",
            step: 0,
            held: Some(reason::PAUSED),
            request: request(Resume, None),
            want: (0, reason::RESUMED, false, true),
            held_after: None,
            says: &["the gates decide again"],
        },
        RequestCase {
            name: "resume without a hold is refused",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(Resume, None),
            want: (0, reason::AWAITING_PROMOTION, false, false),
            held_after: None,
            says: &["nothing to resume"],
        },
        RequestCase {
            name: "rollback goes to the previous step and holds",
            gates0: OPEN,
            extra: "",
            step: 2,
            held: None,
            request: request(Rollback, None),
            want: (1, reason::ROLLED_BACK, true, true),
            held_after: Some(reason::ROLLED_BACK),
            says: &["from step 2 (done) to step 1 (kafka-first)", "held"],
        },
        RequestCase {
            name: "rollback --to goes to that step",
            gates0: OPEN,
            extra: "",
            step: 2,
            held: None,
            request: request(Rollback, Some(0)),
            want: (0, reason::ROLLED_BACK, true, true),
            held_after: Some(reason::ROLLED_BACK),
            says: &["to step 0 (dual)"],
        },
        RequestCase {
            name: "rollback at the first step is refused",
            gates0: OPEN,
            extra: "",
            step: 0,
            held: None,
            request: request(Rollback, None),
            want: (1, reason::GATES_PASSED, true, false),
            held_after: None,
            says: &["first step"],
        },
        RequestCase {
            name: "rollback --to forwards is refused",
            gates0: "{manual: true}",
            extra: "",
            step: 0,
            held: None,
            request: request(Rollback, Some(1)),
            want: (0, reason::AWAITING_PROMOTION, false, false),
            held_after: None,
            says: &["use promote"],
        },
        RequestCase {
            name: "abort goes to step 0 and holds",
            gates0: OPEN,
            extra: "",
            step: 2,
            held: None,
            request: request(Abort, None),
            want: (0, reason::ABORTED, true, true),
            held_after: Some(reason::ABORTED),
            says: &["aborted by request of alice", "first step 0 (dual)"],
        },
        RequestCase {
            name: "abort at step 0 holds without moving",
            gates0: OPEN,
            extra: "",
            step: 0,
            held: None,
            request: request(Abort, None),
            want: (0, reason::ABORTED, false, true),
            held_after: Some(reason::ABORTED),
            says: &[],
        },
    ];
    let rows = healthy();
    for c in cases {
        let m = migration(c.gates0, c.extra);
        let mut current = status(c.step, 0);
        current.held = c.held.map(hold);
        current.request = Some(c.request.clone());
        let input = StepInput {
            migration: &m,
            current: Some(&current),
            providers: &rows,
            consistency: None,
            relays_in_step: Ok(()),
            stale: &[],
            now: t(1000),
        };
        let d = decide_step(&input);
        let handled = d
            .handled
            .clone()
            .unwrap_or_else(|| panic!("{}: not handled", c.name));
        assert_eq!(
            (d.step, d.reason, d.moved, handled.accepted),
            c.want,
            "{}: {}",
            c.name,
            handled.message
        );
        assert_eq!(
            d.held.as_ref().map(|h| h.reason.as_str()),
            c.held_after,
            "{}",
            c.name
        );
        for word in c.says {
            assert!(
                handled.message.contains(word),
                "{}: {:?} lacks {word:?}",
                c.name,
                handled.message
            );
        }
        let next = next_migration_status(&input, &d);
        assert_eq!(
            next.request, None,
            "{}: the operator never sends the request",
            c.name
        );
        assert_eq!(next.last_request.as_ref(), Some(&handled), "{}", c.name);
        let recorded = next.history.last().and_then(|r| r.requested_by.as_deref());
        assert_eq!(
            recorded,
            handled.accepted.then_some("alice"),
            "{}: a carried-out request is in the history, a refused one is not",
            c.name
        );
    }
}

/// A held step stays though its gates are open, and a request already acted on (its removal
/// failed) is not acted on again.
#[test]
fn a_hold_keeps_the_step_and_a_request_acts_once() {
    let m = migration(OPEN, "");
    let rows = healthy();
    let mut current = status(0, 0);
    current.held = Some(hold(reason::ROLLED_BACK));
    let input = StepInput {
        migration: &m,
        current: Some(&current),
        providers: &rows,
        consistency: None,
        relays_in_step: Ok(()),
        stale: &[],
        now: t(1000),
    };
    let d = decide_step(&input);
    assert_eq!((d.step, d.reason, d.moved), (0, reason::HELD, false));
    assert!(d.message.contains("resume"), "{}", d.message);
    assert_eq!(next_migration_status(&input, &d).held, current.held);

    // The promote was acted on (lastRequest) but is still there: not acted on again.
    let mut promoted = status(1, 900);
    promoted.held = Some(hold(reason::PAUSED));
    let r = request(MigrationAction::Promote, None);
    promoted.request = Some(r.clone());
    promoted.last_request = Some(RequestOutcome {
        request: r.clone(),
        accepted: true,
        message: "promoted".into(),
        handled_at: Time(t(900)),
        job: None,
    });
    let m = migration("{manual: true}", "");
    let again = StepInput {
        migration: &m,
        current: Some(&promoted),
        ..input
    };
    let d = decide_step(&again);
    assert_eq!(d.handled, None);
    assert_eq!(d.step, 1, "still step 1, not promoted again");
    assert_eq!(
        next_migration_status(&again, &d).last_request,
        promoted.last_request,
        "the last request is kept"
    );

    // A new request (another time) is acted on.
    let mut newer = promoted.clone();
    newer.request = Some(MigrationRequest {
        requested_at: "2026-11-27T12:00:01Z".into(),
        ..r.clone()
    });
    let fresh = StepInput {
        current: Some(&newer),
        ..again.clone()
    };
    let d = decide_step(&fresh);
    assert_eq!(
        (d.step, d.held.as_ref()),
        (2, None),
        "promoted, the hold lifted"
    );

    // The same request again within the same second (as two clicks of an Argo CD action):
    // another nonce makes it another request, acted on.
    let mut twice = promoted.clone();
    twice.request = Some(MigrationRequest {
        nonce: Some("2".into()),
        ..r.clone()
    });
    twice.last_request.as_mut().unwrap().request.nonce = Some("1".into());
    let d = decide_step(&StepInput {
        current: Some(&twice),
        ..again.clone()
    });
    assert!(
        d.accepted_request().is_some(),
        "a request with another nonce is acted on: {d:?}"
    );
    assert_eq!(d.step, 2);
}

/// A Verify request does not move the step, whatever pins the spec, and leaves no history
/// record; it is recorded as acted on, once.
#[test]
fn a_verify_request_moves_nothing_even_when_pinned() {
    let rows = healthy();
    for extra in ["", ", targetStep: 1", ", paused: true"] {
        let m = migration(OPEN, extra);
        let mut current = status(1, 0);
        current.held = Some(hold(reason::PAUSED));
        let mut without = current.clone();
        let r = MigrationRequest {
            nonce: Some("42".into()),
            ..request(MigrationAction::Verify, None)
        };
        current.request = Some(r.clone());
        let input = StepInput {
            migration: &m,
            current: Some(&current),
            providers: &rows,
            consistency: None,
            relays_in_step: Ok(()),
            stale: &[],
            now: t(1000),
        };
        let d = decide_step(&input);
        without.request = None;
        let plain = decide_step(&StepInput {
            current: Some(&without),
            ..input.clone()
        });
        assert_eq!(
            (d.step, d.reason, d.moved, &d.held),
            (plain.step, plain.reason, plain.moved, &plain.held),
            "{extra}: the step is decided as without the request"
        );
        let handled = d.handled.clone().expect("handled");
        assert!(handled.accepted, "{extra}: {}", handled.message);
        assert!(
            handled.message.contains("consistency check"),
            "{}",
            handled.message
        );
        let next = next_migration_status(&input, &d);
        assert_eq!(next.history, current.history, "{extra}: no history record");
        assert_eq!(next.last_request.as_ref().map(|l| &l.request), Some(&r));
        // Acted on once.
        let mut after = next.clone();
        after.request = Some(r.clone());
        let d = decide_step(&StepInput {
            current: Some(&after),
            ..input.clone()
        });
        assert_eq!(d.handled, None, "{extra}");
    }
}
