//! The status' provider rows: one per provider in spec order, aggregated over the relays'
//! reports, and the `kubectl get` summary of them. Plain data in, plain data out; tested with
//! tables of cases (`rows/tests.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::reason;
use crate::api::{DualWritePipelineSpec, ProviderSpec, ProviderStatus, Readiness, RelayReport};

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
