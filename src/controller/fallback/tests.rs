//! The automatic fallback's table and its Events.

use super::*;
use crate::api::Readiness;
use crate::controller::testing::{row, t};

fn down_row(name: &str, ready: Readiness, since: i64, backlog: u64) -> ProviderStatus {
    ProviderStatus {
        last_transition_time: Some(Time(t(since))),
        ..row(name, ready, backlog)
    }
}

fn fb(active: bool, reason: &str, since: i64) -> FallbackStatus {
    FallbackStatus {
        active,
        reason: reason.into(),
        since: Some(Time(t(since))),
    }
}

#[test]
fn decide_fallback_table() {
    struct Case {
        name: &'static str,
        strategy: Strategy,
        after: Option<i64>,
        active: &'static [&'static str],
        rows: Vec<ProviderStatus>,
        previous: Option<FallbackStatus>,
        want: (Strategy, Option<FallbackStatus>),
    }
    use Strategy::{BestEffort, FailFast};
    const NOW: i64 = 1000;
    let both: &[&str] = &["nats", "kafka"];
    let cases = vec![
        Case {
            name: "down shorter than fallbackAfter",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, NOW - 60, 0),
            ],
            previous: None,
            want: (FailFast, None),
        },
        Case {
            name: "down exactly fallbackAfter",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, NOW - 120, 0),
            ],
            previous: None,
            want: (BestEffort, Some(fb(true, reason::PROVIDER_DOWN, NOW))),
        },
        Case {
            name: "down longer than fallbackAfter",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, NOW - 600, 0),
            ],
            previous: None,
            want: (BestEffort, Some(fb(true, reason::PROVIDER_DOWN, NOW))),
        },
        Case {
            name: "still down keeps the first since",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, 0, 9),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (BestEffort, Some(fb(true, reason::PROVIDER_DOWN, 300))),
        },
        Case {
            name: "back but backlog left: stay",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::True, 900, 17),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (BestEffort, Some(fb(true, reason::PROVIDER_DOWN, 300))),
        },
        Case {
            name: "back, Unknown: stay",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::Unknown, 900, 0),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (BestEffort, Some(fb(true, reason::PROVIDER_DOWN, 300))),
        },
        Case {
            name: "back and caught up: recover",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::True, 900, 0),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (FailFast, Some(fb(false, reason::RECOVERED, NOW))),
        },
        Case {
            name: "recovered record is kept while healthy",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::True, 900, 0),
            ],
            previous: Some(fb(false, reason::RECOVERED, 950)),
            want: (FailFast, Some(fb(false, reason::RECOVERED, 950))),
        },
        Case {
            name: "BestEffort strategy: no fallback",
            strategy: BestEffort,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, 0, 0),
            ],
            previous: None,
            want: (BestEffort, None),
        },
        Case {
            name: "no fallbackAfter: no fallback",
            strategy: FailFast,
            after: None,
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, 0, 0),
            ],
            previous: None,
            want: (FailFast, None),
        },
        Case {
            name: "inactive provider down: no fallback",
            strategy: FailFast,
            after: Some(120),
            active: &["kafka"],
            rows: vec![
                down_row("nats", Readiness::False, 0, 0),
                down_row("kafka", Readiness::True, 0, 0),
            ],
            previous: None,
            want: (FailFast, None),
        },
        Case {
            name: "inactive provider with backlog does not hold a fallback",
            strategy: FailFast,
            after: Some(120),
            active: &["kafka"],
            rows: vec![
                down_row("nats", Readiness::False, 0, 50),
                down_row("kafka", Readiness::True, 0, 0),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (FailFast, Some(fb(false, reason::RECOVERED, NOW))),
        },
        Case {
            name: "fallback disabled while active",
            strategy: FailFast,
            after: None,
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, 0, 0),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (FailFast, Some(fb(false, reason::DISABLED, NOW))),
        },
        Case {
            name: "step turned BestEffort while active",
            strategy: BestEffort,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                down_row("kafka", Readiness::False, 0, 0),
            ],
            previous: Some(fb(true, reason::PROVIDER_DOWN, 300)),
            want: (BestEffort, Some(fb(false, reason::DISABLED, NOW))),
        },
        Case {
            name: "Unknown rows do not trigger",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::Unknown, 0, 0),
                down_row("kafka", Readiness::Unknown, 0, 0),
            ],
            previous: None,
            want: (FailFast, None),
        },
        Case {
            name: "False without a transition time does not trigger",
            strategy: FailFast,
            after: Some(120),
            active: both,
            rows: vec![
                down_row("nats", Readiness::True, 0, 0),
                row("kafka", Readiness::False, 0),
            ],
            previous: None,
            want: (FailFast, None),
        },
    ];
    for c in cases {
        let active: Vec<String> = c.active.iter().map(|s| s.to_string()).collect();
        let input = FallbackInput {
            strategy: c.strategy,
            fallback_after: c.after.map(SignedDuration::from_secs),
            active: &active,
            providers: &c.rows,
            previous: c.previous.as_ref(),
            now: t(NOW),
        };
        let got = decide_fallback(&input);
        assert_eq!((got.strategy, got.status), c.want, "{}", c.name);
    }
}

#[test]
fn fallback_events_name_the_provider_on_flips_only() {
    let active = vec!["nats".to_string(), "kafka".to_string()];
    let rows = vec![
        down_row("nats", Readiness::True, 0, 0),
        down_row("kafka", Readiness::False, 100, 0),
    ];
    let mut input = FallbackInput {
        strategy: Strategy::FailFast,
        fallback_after: Some(SignedDuration::from_secs(120)),
        active: &active,
        providers: &rows,
        previous: None,
        now: t(400),
    };
    let next = decide_fallback(&input).status;
    let PipelineEvent {
        type_,
        reason,
        note,
    } = fallback_event(&input, next.as_ref()).expect("a flip");
    // A Warning: from now on a provider misses writes (they wait in the backlog).
    assert_eq!(type_, kube::runtime::events::EventType::Warning);
    assert_eq!(reason, reason::PROVIDER_DOWN);
    assert!(
        note.contains("kafka down since")
            && note.contains("connection refused")
            && note.contains("fallbackAfter 2m"),
        "{note}"
    );

    // Still down: no new Event.
    input.previous = next.as_ref();
    let again = decide_fallback(&input).status;
    assert_eq!(fallback_event(&input, again.as_ref()), None);

    let healed = vec![
        down_row("nats", Readiness::True, 0, 0),
        down_row("kafka", Readiness::True, 500, 0),
    ];
    let back = FallbackInput {
        providers: &healed,
        now: t(600),
        ..input
    };
    let FallbackDecision {
        strategy,
        status: recovered,
    } = decide_fallback(&back);
    assert_eq!(strategy, Strategy::FailFast);
    let PipelineEvent {
        type_,
        reason,
        note,
    } = fallback_event(&back, recovered.as_ref()).expect("a flip back");
    assert_eq!(type_, kube::runtime::events::EventType::Normal);
    assert_eq!(reason, reason::RECOVERED);
    assert!(note.contains("in force since"), "{note}");
}
