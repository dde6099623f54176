//! Pure decisions of the control plane: a row per provider aggregated over relay reports, and
//! the kstatus-style conditions computed from those rows. Plain data in, plain data out; tested
//! with tables of cases.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{DualWritePipelineSpec, ProviderStatus, RelayReport};
use crate::composite::Strategy;

/// Condition types (kstatus reads Ready, Reconciling and Stalled without configuration).
pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const DEGRADED: &str = "Degraded";

/// Condition reasons, in one place.
pub mod reason {
    pub const ALL_PROVIDERS_READY: &str = "AllProvidersReady";
    pub const PROVIDERS_NOT_READY: &str = "ProvidersNotReady";
    pub const PROVIDER_DOWN: &str = "ProviderDown";
    pub const WAITING_FOR_RELAYS: &str = "WaitingForRelays";
    pub const RELAYS_UPDATING: &str = "RelaysUpdating";
    pub const RECONCILED: &str = "Reconciled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const FAIL_FAST_BLOCKED: &str = "FailFastBlocked";
    pub const PROGRESSING: &str = "Progressing";
    pub const NO_REPORT: &str = "NoReport";
    pub const REPORTED_DOWN: &str = "ReportedDown";
    pub const REPORTED_UP: &str = "ReportedUp";
}

/// A relay report older than this many heartbeats is stale: its pod is gone or cut off.
pub fn is_fresh(report: &RelayReport, now: Timestamp, stale_after: SignedDuration) -> bool {
    now.duration_since(report.reported_at.0) <= stale_after
}

/// One row per provider in spec order, from the relays' reports. Published and failed are summed
/// over every report (each relay counts what it wrote); backlog and health come from fresh
/// reports only: a provider is
/// ready when every fresh relay finds it healthy, not ready when any finds it down, and Unknown
/// when no fresh relay has reported it. `lastTransitionTime` moves only when `ready` changes.
pub fn aggregate_providers(
    spec: &DualWritePipelineSpec,
    reports: &[RelayReport],
    previous: &[ProviderStatus],
    now: Timestamp,
    stale_after: SignedDuration,
) -> Vec<ProviderStatus> {
    spec.providers
        .iter()
        .map(|p| {
            let mut row = ProviderStatus {
                name: p.name.clone(),
                kind: p.kind.to_string(),
                ready: "Unknown".into(),
                reason: reason::NO_REPORT.into(),
                message: "no fresh relay report names this provider yet".into(),
                ..ProviderStatus::default()
            };
            let mut fresh_seen = false;
            let mut down: Option<String> = None;
            for report in reports {
                let Some(r) = report.providers.iter().find(|r| r.name == p.name) else {
                    continue;
                };
                row.published += r.published;
                row.failed += r.failed;
                if !is_fresh(report, now, stale_after) {
                    continue;
                }
                // A gone relay's backlog is gone with it (or waits on its volume for its
                // return): it must not hold gates or the fallback forever.
                row.backlog += r.backlog;
                row.needs_reconciliation |= r.needs_reconciliation;
                fresh_seen = true;
                row.latency_p99_ms = match (row.latency_p99_ms, r.latency_p99_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if !r.healthy && down.is_none() {
                    down = Some(format!("relay {}: {}", report.name, r.message));
                }
            }
            if fresh_seen {
                match down {
                    Some(msg) => {
                        row.ready = "False".into();
                        row.reason = reason::REPORTED_DOWN.into();
                        row.message = msg;
                    }
                    None => {
                        row.ready = "True".into();
                        row.reason = reason::REPORTED_UP.into();
                        row.message = "healthy on every relay".into();
                    }
                }
            }
            let prev = previous.iter().find(|x| x.name == p.name);
            row.last_transition_time = match prev {
                Some(prev) if prev.ready == row.ready => prev.last_transition_time.clone(),
                _ => Some(Time(now)),
            };
            row
        })
        .collect()
}

/// What the conditions are computed from.
#[derive(Clone, Debug)]
pub struct ConditionInput<'a> {
    pub generation: i64,
    /// Problems with the spec, if any.
    pub invalid: Option<String>,
    pub strategy: Strategy,
    /// Providers written now (all, or the migration step's).
    pub active: &'a [String],
    pub providers: &'a [ProviderStatus],
    /// Relays with a fresh report, and how many run the current generation.
    pub fresh_relays: i32,
    pub relays_on_generation: i32,
    pub desired_relays: i32,
    /// Since when FailFast has been blocked by a provider down (from the previous status).
    pub blocked_since: Option<Timestamp>,
    pub now: Timestamp,
    pub stall_after: SignedDuration,
    /// A migration step change is under way.
    pub migrating: bool,
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: i64,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(now),
    }
}

/// Ready, Reconciling, Stalled and Degraded, every one always present (Unknown where not known).
pub fn compute_conditions(input: &ConditionInput<'_>, previous: &[Condition]) -> Vec<Condition> {
    let g = input.generation;
    let now = input.now;
    let active: Vec<&ProviderStatus> = input
        .providers
        .iter()
        .filter(|p| input.active.contains(&p.name))
        .collect();
    let down: Vec<String> = active
        .iter()
        .filter(|p| p.ready == "False")
        .map(|p| format!("{}: {}", p.name, p.message))
        .collect();
    let up = active.iter().filter(|p| p.ready == "True").count();
    let unknown = active.iter().filter(|p| p.ready == "Unknown").count();
    let satisfied = match input.strategy {
        Strategy::FailFast => !active.is_empty() && up == active.len(),
        Strategy::BestEffort => up > 0,
    };

    let ready = if let Some(why) = &input.invalid {
        condition(READY, "False", reason::INVALID_SPEC, why.clone(), g, now)
    } else if input.fresh_relays == 0 || (unknown > 0 && down.is_empty() && up == 0) {
        condition(
            READY,
            "Unknown",
            reason::WAITING_FOR_RELAYS,
            "no relay has reported its providers yet".into(),
            g,
            now,
        )
    } else if satisfied && down.is_empty() && unknown == 0 {
        condition(
            READY,
            "True",
            reason::ALL_PROVIDERS_READY,
            format!(
                "{} over {} provider(s), all healthy",
                input.strategy,
                active.len()
            ),
            g,
            now,
        )
    } else if satisfied {
        condition(
            READY,
            "True",
            reason::PROVIDER_DOWN,
            format!("{} is satisfied; down: {}", input.strategy, down.join("; ")),
            g,
            now,
        )
    } else {
        let detail = if down.is_empty() {
            "waiting for reports".to_string()
        } else {
            down.join("; ")
        };
        condition(
            READY,
            "False",
            reason::PROVIDERS_NOT_READY,
            format!("{} needs more providers: {detail}", input.strategy),
            g,
            now,
        )
    };

    let degraded = if input.invalid.is_none() && satisfied && !down.is_empty() {
        condition(
            DEGRADED,
            "True",
            reason::PROVIDER_DOWN,
            format!(
                "running on the remaining providers; down: {}",
                down.join("; ")
            ),
            g,
            now,
        )
    } else if input.fresh_relays == 0 {
        condition(
            DEGRADED,
            "Unknown",
            reason::WAITING_FOR_RELAYS,
            "no relay has reported yet".into(),
            g,
            now,
        )
    } else {
        condition(
            DEGRADED,
            "False",
            reason::ALL_PROVIDERS_READY,
            "no provider is down while the pipeline runs on the rest".into(),
            g,
            now,
        )
    };

    let blocked_too_long = input.strategy == Strategy::FailFast
        && !down.is_empty()
        && input
            .blocked_since
            .is_some_and(|since| now.duration_since(since) >= input.stall_after);
    let stalled = if let Some(why) = &input.invalid {
        condition(STALLED, "True", reason::INVALID_SPEC, why.clone(), g, now)
    } else if blocked_too_long {
        condition(
            STALLED,
            "True",
            reason::FAIL_FAST_BLOCKED,
            format!(
                "FailFast has refused every message for over {}: {}",
                humanize(input.stall_after),
                down.join("; ")
            ),
            g,
            now,
        )
    } else {
        condition(
            STALLED,
            "False",
            reason::RECONCILED,
            "nothing blocks progress".into(),
            g,
            now,
        )
    };

    let reconciling = if input.invalid.is_some() {
        condition(
            RECONCILING,
            "False",
            reason::INVALID_SPEC,
            "fix the spec to continue".into(),
            g,
            now,
        )
    } else if input.migrating {
        condition(
            RECONCILING,
            "True",
            reason::PROGRESSING,
            "a migration step change is under way".into(),
            g,
            now,
        )
    } else if input.fresh_relays < input.desired_relays
        || input.relays_on_generation < input.fresh_relays
    {
        condition(
            RECONCILING,
            "True",
            reason::RELAYS_UPDATING,
            format!(
                "{} of {} relay(s) reporting, {} on generation {g}",
                input.fresh_relays, input.desired_relays, input.relays_on_generation
            ),
            g,
            now,
        )
    } else {
        condition(
            RECONCILING,
            "False",
            reason::RECONCILED,
            format!("{} relay(s) run generation {g}", input.fresh_relays),
            g,
            now,
        )
    };

    [ready, reconciling, stalled, degraded]
        .into_iter()
        .map(|mut c| {
            if let Some(prev) = previous.iter().find(|p| p.type_ == c.type_) {
                if prev.status == c.status {
                    c.last_transition_time = prev.last_transition_time.clone();
                }
            }
            c
        })
        .collect()
}

fn humanize(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// `name=published` per provider, for the `kubectl get` column.
pub fn summary(rows: &[ProviderStatus]) -> String {
    rows.iter()
        .map(|r| {
            let mark = match r.ready.as_str() {
                "True" => "",
                "False" => "(down)",
                _ => "(?)",
            };
            format!("{}{mark}={}", r.name, r.published)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProviderReport;

    fn spec() -> DualWritePipelineSpec {
        serde_yaml::from_str(
            "providers: [{name: nats, type: nats, nats: {url: u, subject: s}}, {name: kafka, type: kafka, kafka: {brokers: [b], topic: t}}]",
        )
        .unwrap()
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn report(name: &str, at: i64, rows: &[(&str, bool, u64)]) -> RelayReport {
        RelayReport {
            name: name.into(),
            reported_at: Time(t(at)),
            strategy: Strategy::FailFast,
            generation: Some(1),
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

    fn row(name: &str, ready: &str) -> ProviderStatus {
        ProviderStatus {
            name: name.into(),
            kind: "nats".into(),
            ready: ready.into(),
            message: if ready == "False" {
                "refused".into()
            } else {
                String::new()
            },
            ..ProviderStatus::default()
        }
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
            want: [&'static str; 4], // Ready, Reconciling, Stalled, Degraded
        }
        let cases = vec![
            Case {
                name: "first reconcile, no reports",
                strategy: Strategy::FailFast,
                rows: vec![row("nats", "Unknown"), row("kafka", "Unknown")],
                fresh: 0,
                on_gen: 0,
                invalid: None,
                blocked_for: None,
                want: ["Unknown", "True", "False", "Unknown"],
            },
            Case {
                name: "all healthy",
                strategy: Strategy::FailFast,
                rows: vec![row("nats", "True"), row("kafka", "True")],
                fresh: 1,
                on_gen: 1,
                invalid: None,
                blocked_for: None,
                want: ["True", "False", "False", "False"],
            },
            Case {
                name: "fail-fast, kafka down",
                strategy: Strategy::FailFast,
                rows: vec![row("nats", "True"), row("kafka", "False")],
                fresh: 1,
                on_gen: 1,
                invalid: None,
                blocked_for: Some(10),
                want: ["False", "False", "False", "False"],
            },
            Case {
                name: "fail-fast, kafka down too long",
                strategy: Strategy::FailFast,
                rows: vec![row("nats", "True"), row("kafka", "False")],
                fresh: 1,
                on_gen: 1,
                invalid: None,
                blocked_for: Some(600),
                want: ["False", "False", "True", "False"],
            },
            Case {
                name: "best-effort, kafka down",
                strategy: Strategy::BestEffort,
                rows: vec![row("nats", "True"), row("kafka", "False")],
                fresh: 1,
                on_gen: 1,
                invalid: None,
                blocked_for: None,
                want: ["True", "False", "False", "True"],
            },
            Case {
                name: "best-effort, all down",
                strategy: Strategy::BestEffort,
                rows: vec![row("nats", "False"), row("kafka", "False")],
                fresh: 1,
                on_gen: 1,
                invalid: None,
                blocked_for: None,
                want: ["False", "False", "False", "False"],
            },
            Case {
                name: "relay on old generation",
                strategy: Strategy::FailFast,
                rows: vec![row("nats", "True"), row("kafka", "True")],
                fresh: 1,
                on_gen: 0,
                invalid: None,
                blocked_for: None,
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
                migrating: false,
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
        let rows = vec![row("nats", "True")];
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
            migrating: false,
        };
        let first = compute_conditions(&input, &[]);
        input.now = t(100);
        let second = compute_conditions(&input, &first);
        assert_eq!(second[0].last_transition_time, Time(t(0)));
    }
}
