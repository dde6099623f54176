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
            says: &["targetStep to 1"],
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
    };
    let stayed = StepDecision {
        step: 1,
        reason: reason::PAUSED,
        message: String::new(),
        moved: false,
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
