//! The status' provider rows: one per provider in spec order, aggregated over the relays'
//! reports, and the `kubectl get` summary of them. Plain data in, plain data out; tested with
//! tables of cases (`rows/tests.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use super::{reason, PipelineEvent};
use crate::api::{
    DualWritePipelineSpec, ProviderSpec, ProviderStatus, Readiness, RelayCount, RelayReport,
};

#[cfg(test)]
mod tests;

/// A relay report older than this many heartbeats is stale: its pod is gone or cut off.
pub fn is_fresh(report: &RelayReport, now: Timestamp, stale_after: SignedDuration) -> bool {
    now.duration_since(report.reported_at.0) <= stale_after
}

/// One row per provider in spec order, from the relays' reports. Published and failed are summed
/// over every report (each relay counts what it wrote); backlog and health come from fresh
/// reports only: a provider is ready when every fresh relay finds it healthy, not ready when any
/// finds it down, and Unknown when no fresh relay has reported it. `lastTransitionTime` moves
/// only when `ready` changes.
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
            let mut row = aggregate_one(p, reports, now, stale_after);
            let prev = previous.iter().find(|x| x.name == p.name);
            row.last_transition_time = match prev {
                Some(prev) if prev.ready == row.ready => prev.last_transition_time.clone(),
                _ => Some(Time(now)),
            };
            row
        })
        .collect()
}

/// The reason of a row whose provider a relay finds down: the relay's own reason (e.g.
/// `AuthenticationFailed`, `SecretMissing`, `Disconnected`: what a person needs to act on) when
/// it is a CamelCase word as Kubernetes reasons are, else `ReportedDown`. A relay's report
/// cannot put free text (or a credential) into the reason field this way.
pub fn down_reason(relay_reason: &str) -> String {
    let mut chars = relay_reason.chars();
    let camel = chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && relay_reason.len() <= 64;
    if camel {
        relay_reason.to_string()
    } else {
        reason::REPORTED_DOWN.to_string()
    }
}

/// The row of provider `p` from every report that names it (without its transition time).
fn aggregate_one(
    p: &ProviderSpec,
    reports: &[RelayReport],
    now: Timestamp,
    stale_after: SignedDuration,
) -> ProviderStatus {
    let mut row = ProviderStatus {
        reason: reason::NO_REPORT.into(),
        message: "no fresh relay report names this provider yet".into(),
        ..ProviderStatus::new(&p.name, p.kind)
    };
    let mut fresh_seen = false;
    // The reason and message of the first fresh report that finds the provider down.
    let mut down: Option<(String, String)> = None;
    for report in reports {
        let Some(r) = report.providers.iter().find(|r| r.name == p.name) else {
            continue;
        };
        row.add_totals(r);
        if !is_fresh(report, now, stale_after) {
            continue;
        }
        if r.orphaned {
            // A backlog on disk for a provider this relay no longer writes: it counts as
            // backlog (and needs reconciliation), but says nothing of the provider's health.
            row.add_current(r);
            continue;
        }
        // A gone relay's backlog is gone with it (or waits on its volume for its return): it
        // must not hold gates or the fallback forever.
        row.add_current(r);
        fresh_seen = true;
        if !r.healthy && down.is_none() {
            down = Some((
                down_reason(&r.reason),
                format!("relay {}: {}", report.name, r.message),
            ));
        }
    }
    if fresh_seen {
        (row.ready, row.reason, row.message) = match down {
            Some((why, msg)) => (Readiness::False, why, msg),
            None => (
                Readiness::True,
                reason::REPORTED_UP.into(),
                "healthy on every relay".into(),
            ),
        };
    }
    row
}

/// `name=published` per provider, for the `kubectl get` column.
pub fn summary(rows: &[ProviderStatus]) -> String {
    rows.iter()
        .map(|r| {
            let mark = match r.ready {
                Readiness::True => "",
                Readiness::False => "(down)",
                Readiness::Unknown => "(?)",
            };
            format!("{}{mark}={}", r.name, r.published)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A backlog at this share of `spec.handoff.maxMessages` (in per cent) is near its limit.
pub const BACKLOG_WARN_PERCENT: u64 = 80;

/// The Events of what changed between the previous provider rows and these: one per
/// transition, never one per reconcile (an unchanged row yields nothing).
///
/// - ready turned False (from True or Unknown): Warning `ProviderUnavailable`, with the relay's
///   message; ready False turned True: Normal `ProviderAvailable`. Unknown (no fresh report)
///   says nothing either way.
/// - the backlog crossed [`BACKLOG_WARN_PERCENT`] of `max_messages` upward: Warning
///   `BacklogNearLimit` (the relays still keep messages: there is time to act). The backlog is
///   summed over the relays while the limit holds per relay, so with several relays this warns
///   early, never late. Reaching a limit (`maxMessages`, or `maxAge`, which the rows carry no
///   age for) is what turns the provider needs-reconciliation, the next Event.
/// - needsReconciliation turned true: Warning `NeedsReconciliation`, with the relay's reason.
///
/// Notes carry provider names, counts and the relays' messages, which never hold a credential
/// (the relays' reports are written for the status).
pub fn row_events(
    previous: &[ProviderStatus],
    rows: &[ProviderStatus],
    max_messages: Option<u64>,
) -> Vec<PipelineEvent> {
    let mut events = Vec::new();
    let warn_at = max_messages.map(|m| (m * BACKLOG_WARN_PERCENT).div_ceil(100).max(1));
    for row in rows {
        let prev = previous.iter().find(|p| p.name == row.name);
        let was = prev.map_or(Readiness::Unknown, |p| p.ready);
        match (was, row.ready) {
            (Readiness::True | Readiness::Unknown, Readiness::False) => {
                events.push(PipelineEvent {
                    type_: EventType::Warning,
                    reason: reason::PROVIDER_UNAVAILABLE,
                    note: match row.reason.as_str() {
                        "" => format!("provider {} is down: {}", row.name, row.message),
                        why => format!("provider {} is down ({why}): {}", row.name, row.message),
                    },
                })
            }
            (Readiness::False, Readiness::True) => events.push(PipelineEvent {
                type_: EventType::Normal,
                reason: reason::PROVIDER_AVAILABLE,
                note: format!("provider {} is ready again", row.name),
            }),
            _ => {}
        }
        if let (Some(warn_at), Some(max)) = (warn_at, max_messages) {
            let before = prev.map_or(0, |p| p.backlog);
            if before < warn_at && row.backlog >= warn_at {
                events.push(PipelineEvent {
                    type_: EventType::Warning,
                    reason: reason::BACKLOG_NEAR_LIMIT,
                    note: format!(
                        "the backlog of provider {} reached {BACKLOG_WARN_PERCENT}% of spec.handoff.maxMessages ({max} per relay); past it the relays keep no more for it and it needs reconciliation: bring the provider back or raise the limit",
                        row.name
                    ),
                });
            }
        }
        if row.needs_reconciliation && !prev.is_some_and(|p| p.needs_reconciliation) {
            let why = row
                .reconciliation_reason
                .as_deref()
                .unwrap_or("a relay reported it");
            events.push(PipelineEvent {
                type_: EventType::Warning,
                reason: reason::NEEDS_RECONCILIATION,
                note: format!(
                    "provider {} needs reconciliation, replay cannot make it complete: {why}; copy what it missed (dualwrite verify finds it), then annotate dualwrite.io/reconciled",
                    row.name
                ),
            });
        }
    }
    events
}

/// `status.published` and the operator's memory behind it: messages the pipeline accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub total: u64,
    pub retired: u64,
    pub by_relay: Vec<RelayCount>,
}

/// What a report counts as accepted: its `accepted`, or, from a relay that does not report it
/// (an earlier version), the most any one provider acknowledged (each accepted message went to
/// at least one provider; never the sum, which counts a message once per provider).
fn accepted_of(report: &RelayReport) -> u64 {
    report.accepted.unwrap_or_else(|| {
        report
            .providers
            .iter()
            .filter(|p| !p.orphaned)
            .map(|p| p.published)
            .max()
            .unwrap_or(0)
    })
}

/// Messages accepted over every relay and across restarts, counted once each. Each relay
/// incarnation (pod name and `startedAt`) counts from zero; the operator keeps the last count
/// it saw of each (`by_relay`). When a pod's `startedAt` changes (it restarted) or its report
/// is gone (scaled away, pruned), its last count moves into `retired`. The total is `retired`
/// plus what the running incarnations report, so it never goes backwards: a restart loses at
/// most what the old incarnation accepted after its last report.
pub fn published(prev_retired: u64, prev: &[RelayCount], reports: &[RelayReport]) -> Published {
    let mut retired = prev_retired;
    for old in prev {
        let same = reports
            .iter()
            .any(|r| r.name == old.name && r.started_at == old.started_at);
        if !same {
            retired += old.accepted;
        }
    }
    let by_relay: Vec<RelayCount> = reports
        .iter()
        .map(|r| {
            let now = accepted_of(r);
            // A counter of one incarnation only grows; a lower number (a report read out of
            // order) keeps the higher one seen.
            let seen = prev
                .iter()
                .find(|p| p.name == r.name && p.started_at == r.started_at)
                .map_or(0, |p| p.accepted);
            RelayCount {
                name: r.name.clone(),
                started_at: r.started_at.clone(),
                accepted: now.max(seen),
            }
        })
        .collect();
    Published {
        total: retired + by_relay.iter().map(|c| c.accepted).sum::<u64>(),
        retired,
        by_relay,
    }
}
