//! The aggregation table and the transition times of provider rows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::ProviderReport;
use crate::composite::Strategy;
use crate::controller::testing::t;

fn spec() -> DualWritePipelineSpec {
    serde_yaml::from_str(
        "providers: [{name: nats, type: nats, nats: {url: u, subject: s}}, {name: kafka, type: kafka, kafka: {brokers: [b], topic: t}}]",
    )
    .unwrap()
}

fn report(name: &str, at: i64, rows: &[(&str, bool, u64)]) -> RelayReport {
    RelayReport {
        name: name.into(),
        reported_at: Time(t(at)),
        strategy: Strategy::FailFast,
        generation: Some(1),
        stopped: false,
        started_at: None,
        accepted: None,
        providers: rows
            .iter()
            .map(|(n, healthy, published)| ProviderReport {
                name: n.to_string(),
                healthy: *healthy,
                reason: String::new(),
                message: if *healthy {
                    "ok".into()
                } else {
                    "connection refused".into()
                },
                published: *published,
                latency_p99_ms: Some(*published as f64),
                ..ProviderReport::default()
            })
            .collect(),
    }
}

const STALE: SignedDuration = SignedDuration::from_secs(60);

#[test]
fn aggregation_table() {
    // (reports, now, expected (nats ready, kafka ready, nats published, kafka published))
    // (reports, now, (nats ready, kafka ready, nats published, kafka published))
    type Case = (
        Vec<RelayReport>,
        i64,
        (&'static str, &'static str, u64, u64),
    );
    let cases: Vec<Case> = vec![
        (vec![], 0, ("Unknown", "Unknown", 0, 0)),
        (
            vec![report("r1", 0, &[("nats", true, 5), ("kafka", true, 5)])],
            10,
            ("True", "True", 5, 5),
        ),
        (
            vec![
                report("r1", 0, &[("nats", true, 5), ("kafka", true, 5)]),
                report("r2", 0, &[("nats", true, 3), ("kafka", false, 1)]),
            ],
            10,
            ("True", "False", 8, 6),
        ),
        // A stale report counts toward totals but not toward health.
        (
            vec![
                report("old", -500, &[("nats", false, 7), ("kafka", false, 7)]),
                report("r1", 0, &[("nats", true, 1), ("kafka", true, 1)]),
            ],
            10,
            ("True", "True", 8, 8),
        ),
        (
            vec![report("old", -500, &[("nats", true, 2)])],
            10,
            ("Unknown", "Unknown", 2, 0),
        ),
    ];
    for (i, (reports, now, want)) in cases.into_iter().enumerate() {
        let rows = aggregate_providers(&spec(), &reports, &[], t(now), STALE);
        let got = (
            rows[0].ready.as_str(),
            rows[1].ready.as_str(),
            rows[0].published,
            rows[1].published,
        );
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn down_rows_name_the_relay_and_keep_transition_time_while_unchanged() {
    let reports = vec![report(
        "relay-a",
        0,
        &[("nats", true, 1), ("kafka", false, 1)],
    )];
    let first = aggregate_providers(&spec(), &reports, &[], t(1), STALE);
    assert_eq!(first[1].reason, reason::REPORTED_DOWN);
    assert!(first[1].message.contains("relay-a: connection refused"));
    let second = aggregate_providers(&spec(), &reports, &first, t(30), STALE);
    assert_eq!(second[1].last_transition_time, Some(Time(t(1))));
    let healed = vec![report(
        "relay-a",
        40,
        &[("nats", true, 1), ("kafka", true, 1)],
    )];
    let third = aggregate_providers(&spec(), &healed, &second, t(41), STALE);
    assert_eq!(third[1].last_transition_time, Some(Time(t(41))));
    assert_eq!(summary(&third), "nats=1 kafka=1");
    assert_eq!(summary(&second), "nats=1 kafka(down)=1");
}

#[test]
fn a_down_row_carries_the_relays_reason_when_it_is_a_reason() {
    for (relay, row) in [
        ("AuthenticationFailed", "AuthenticationFailed"),
        ("SecretMissing", "SecretMissing"),
        ("Disconnected", "Disconnected"),
        ("", reason::REPORTED_DOWN),
        ("not a reason", reason::REPORTED_DOWN),
        ("password=hunter2", reason::REPORTED_DOWN),
        ("lowerCase", reason::REPORTED_DOWN),
        (&"A".repeat(65), reason::REPORTED_DOWN),
    ] {
        assert_eq!(down_reason(relay), row, "{relay:?}");
    }
    let mut reports = vec![report(
        "relay-a",
        0,
        &[("nats", true, 1), ("kafka", false, 1)],
    )];
    reports[0].providers[1].reason = "AuthenticationFailed".into();
    let rows = aggregate_providers(&spec(), &reports, &[], t(1), STALE);
    assert_eq!(
        (rows[1].ready.as_str(), rows[1].reason.as_str()),
        ("False", "AuthenticationFailed")
    );
}

/// Which row transitions yield which Event: one per transition, none while a row stays as it
/// was.
#[test]
fn row_event_table() {
    use crate::controller::testing::row;
    use kube::runtime::events::EventType::{Normal, Warning};
    let flagged = |mut r: ProviderStatus| {
        r.needs_reconciliation = true;
        r.reconciliation_reason = Some("backlog passed maxAge 24h".into());
        r
    };
    type Want = &'static [(EventType, &'static str)];
    type Case = (
        &'static str,
        Vec<ProviderStatus>,
        Vec<ProviderStatus>,
        Option<u64>,
        Want,
    );
    // (case, previous rows, rows now, maxMessages, events)
    let cases: Vec<Case> = vec![
        (
            "up to down",
            vec![row("kafka", Readiness::True, 0)],
            vec![row("kafka", Readiness::False, 0)],
            None,
            &[(Warning, reason::PROVIDER_UNAVAILABLE)],
        ),
        (
            "first report finds it down",
            vec![],
            vec![row("kafka", Readiness::False, 0)],
            None,
            &[(Warning, reason::PROVIDER_UNAVAILABLE)],
        ),
        (
            "unknown to down",
            vec![row("kafka", Readiness::Unknown, 0)],
            vec![row("kafka", Readiness::False, 0)],
            None,
            &[(Warning, reason::PROVIDER_UNAVAILABLE)],
        ),
        (
            "still down: nothing",
            vec![row("kafka", Readiness::False, 0)],
            vec![row("kafka", Readiness::False, 0)],
            None,
            &[],
        ),
        (
            "down to up",
            vec![row("kafka", Readiness::False, 0)],
            vec![row("kafka", Readiness::True, 0)],
            None,
            &[(Normal, reason::PROVIDER_AVAILABLE)],
        ),
        (
            "unknown to up: nothing",
            vec![row("kafka", Readiness::Unknown, 0)],
            vec![row("kafka", Readiness::True, 0)],
            None,
            &[],
        ),
        (
            "down to unknown (reports went stale): nothing",
            vec![row("kafka", Readiness::False, 0)],
            vec![row("kafka", Readiness::Unknown, 0)],
            None,
            &[],
        ),
        (
            "backlog crosses 80% of maxMessages",
            vec![row("kafka", Readiness::True, 79)],
            vec![row("kafka", Readiness::True, 80)],
            Some(100),
            &[(Warning, reason::BACKLOG_NEAR_LIMIT)],
        ),
        (
            "backlog stays over 80%: nothing",
            vec![row("kafka", Readiness::True, 85)],
            vec![row("kafka", Readiness::True, 99)],
            Some(100),
            &[],
        ),
        (
            "backlog under 80%: nothing",
            vec![row("kafka", Readiness::True, 0)],
            vec![row("kafka", Readiness::True, 79)],
            Some(100),
            &[],
        ),
        (
            "a backlog without maxMessages: nothing",
            vec![row("kafka", Readiness::True, 0)],
            vec![row("kafka", Readiness::True, 1_000_000)],
            None,
            &[],
        ),
        (
            "turns needs-reconciliation",
            vec![row("kafka", Readiness::True, 0)],
            vec![flagged(row("kafka", Readiness::True, 0))],
            None,
            &[(Warning, reason::NEEDS_RECONCILIATION)],
        ),
        (
            "stays needs-reconciliation: nothing",
            vec![flagged(row("kafka", Readiness::True, 0))],
            vec![flagged(row("kafka", Readiness::True, 0))],
            None,
            &[],
        ),
        (
            "down, backlog over the mark and flagged at once: three, per provider",
            vec![
                row("kafka", Readiness::True, 0),
                row("nats", Readiness::True, 0),
            ],
            vec![
                flagged(row("kafka", Readiness::False, 9)),
                row("nats", Readiness::True, 0),
            ],
            Some(10),
            &[
                (Warning, reason::PROVIDER_UNAVAILABLE),
                (Warning, reason::BACKLOG_NEAR_LIMIT),
                (Warning, reason::NEEDS_RECONCILIATION),
            ],
        ),
    ];
    for (name, previous, now, max, want) in cases {
        let got: Vec<(EventType, &str)> = row_events(&previous, &now, max)
            .iter()
            .map(|e| (e.type_, e.reason))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let down = row_events(&[], &[row("kafka", Readiness::False, 0)], None);
    assert_eq!(down[0].note, "provider kafka is down: connection refused");
}

/// `status.published` counts each accepted message once and never goes backwards: across a
/// relay restart (a new `startedAt` under the same pod name), a relay scaled away, and a
/// report from a relay that does not say what it accepted.
#[test]
fn published_counts_accepted_messages_once_across_relay_restarts() {
    let at = |s: i64| Some(Time(t(s)));
    let rep = |name: &str, started: i64, accepted: Option<u64>, per_provider: &[u64]| RelayReport {
        started_at: at(started),
        accepted,
        providers: per_provider
            .iter()
            .enumerate()
            .map(|(i, p)| ProviderReport {
                name: format!("p{i}"),
                healthy: true,
                published: *p,
                ..ProviderReport::default()
            })
            .collect(),
        ..report(name, 0, &[])
    };
    // Two relays, each message written to three providers: 10 + 5 accepted, not 45.
    let r0 = rep("r-0", -100, Some(10), &[10, 10, 10]);
    let r1 = rep("r-1", -100, Some(5), &[5, 5, 5]);
    let first = published(0, &[], &[r0.clone(), r1.clone()]);
    assert_eq!((first.total, first.retired), (15, 0));

    // r-0 accepts 2 more, then restarts: its new incarnation reports 1. 12 + 5 + 1 = 18.
    let r0_more = rep("r-0", -100, Some(12), &[12, 12, 12]);
    let second = published(first.retired, &first.by_relay, &[r0_more, r1.clone()]);
    assert_eq!(second.total, 17);
    let r0_new = rep("r-0", -10, Some(1), &[1, 1, 1]);
    let third = published(
        second.retired,
        &second.by_relay,
        &[r0_new.clone(), r1.clone()],
    );
    assert_eq!((third.total, third.retired), (18, 12));
    assert!(third.total >= second.total);

    // The same reports again: nothing moves (the retired count is not added twice).
    let again = published(
        third.retired,
        &third.by_relay,
        &[r0_new.clone(), r1.clone()],
    );
    assert_eq!(again, third);

    // r-1 is scaled away (its report pruned): its 5 stay counted.
    let fourth = published(
        again.retired,
        &again.by_relay,
        std::slice::from_ref(&r0_new),
    );
    assert_eq!((fourth.total, fourth.retired), (18, 17));

    // A report read out of order (a lower count of the same incarnation) does not go back.
    let older = rep("r-0", -10, Some(0), &[0, 0, 0]);
    assert_eq!(
        published(fourth.retired, &fourth.by_relay, &[older]).total,
        18
    );

    // A relay of an earlier version says nothing of `accepted`: the most one provider
    // acknowledged stands for it, never the sum over providers.
    let legacy = rep("r-2", -5, None, &[7, 4, 7]);
    assert_eq!(published(0, &[], &[legacy]).total, 7);
}
