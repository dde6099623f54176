//! The automatic fallback: while a provider the strategy writes has been down longer than
//! `spec.migration.fallbackAfter`, FailFast (which would refuse every message) is relaxed to
//! BestEffort, whose hinted-handoff backlog keeps what the provider missed; once every provider
//! is ready again with its backlog replayed, FailFast returns. Plain data in, plain data out, no
//! I/O; tested with a table of cases (`fallback/tests.rs`).
//!
//! ```text
//!   FailFast ──(an active provider False ≥ fallbackAfter)──▶ BestEffort   (ProviderDown)
//!   BestEffort ──(every active provider True, backlog 0)───▶ FailFast     (Recovered)
//!   BestEffort ──(no fallbackAfter, or the step not FailFast)▶ the step's (Disabled)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use super::{human, reason, PipelineEvent};
use crate::api::{FallbackStatus, ProviderStatus, Readiness};
use crate::composite::Strategy;

#[cfg(test)]
mod tests;

/// What [`decide_fallback`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct FallbackInput<'a> {
    /// The strategy of the current step (or the spec's without a migration).
    pub strategy: Strategy,
    /// `spec.migration.fallbackAfter`, parsed (None: no automatic fallback).
    pub fallback_after: Option<SignedDuration>,
    /// The providers written now.
    pub active: &'a [String],
    pub providers: &'a [ProviderStatus],
    pub previous: Option<&'a FallbackStatus>,
    pub now: Timestamp,
}

/// The strategy in force and what `status.fallback` says of it.
#[derive(Clone, Debug, PartialEq)]
pub struct FallbackDecision {
    pub strategy: Strategy,
    pub status: Option<FallbackStatus>,
}

/// An active provider down for at least `fallbackAfter`, and since when.
struct Outage<'a> {
    provider: &'a ProviderStatus,
    since: Timestamp,
}

/// The active providers that have been ready False for at least `after`. Unknown rows never
/// count: no report is no proof of an outage.
fn down_too_long<'a>(input: &FallbackInput<'a>, after: SignedDuration) -> Vec<Outage<'a>> {
    input
        .providers
        .iter()
        .filter(|p| input.active.contains(&p.name) && p.ready == Readiness::False)
        .filter_map(|p| {
            let since = p.last_transition_time.as_ref()?.0;
            (input.now.duration_since(since) >= after).then_some(Outage { provider: p, since })
        })
        .collect()
}

/// The active providers that keep a fallback in force: not ready True, or a backlog left.
fn not_caught_up(input: &FallbackInput<'_>) -> Vec<String> {
    input
        .active
        .iter()
        .filter_map(
            |name| match input.providers.iter().find(|p| p.name == *name) {
                None => Some(format!("{name} has no status row")),
                Some(p) if p.ready != Readiness::True => {
                    Some(format!("{name} is not ready ({})", p.ready))
                }
                Some(p) if p.backlog > 0 => Some(format!("{name} has a backlog of {}", p.backlog)),
                Some(_) => None,
            },
        )
        .collect()
}

/// The strategy in force and `status.fallback`. Under FailFast with `fallback_after` set, an
/// active provider ready False for at least that long flips to BestEffort (`ProviderDown`,
/// since now); the flip holds until every active provider is ready True with an empty backlog
/// (then FailFast, `Recovered`, since now). Otherwise the strategy stands and no fallback
/// applies; a fallback that was in force ends with `Disabled`. An inactive record (Recovered,
/// Disabled) is kept while nothing changes, so `kubectl describe` shows the last flip.
pub fn decide_fallback(input: &FallbackInput<'_>) -> FallbackDecision {
    let was_active = input.previous.is_some_and(|p| p.active);
    let flip = |strategy: Strategy, active: bool, reason: &str| FallbackDecision {
        strategy,
        status: Some(FallbackStatus {
            active,
            reason: reason.into(),
            since: Some(Time(input.now)),
        }),
    };
    let after = match input.fallback_after {
        Some(after) if input.strategy == Strategy::FailFast => after,
        _ if was_active => return flip(input.strategy, false, reason::DISABLED),
        _ => {
            return FallbackDecision {
                strategy: input.strategy,
                status: None,
            }
        }
    };
    if was_active {
        if not_caught_up(input).is_empty() {
            return flip(Strategy::FailFast, false, reason::RECOVERED);
        }
        let mut status = input.previous.cloned().unwrap_or_default();
        status.since = status.since.or(Some(Time(input.now)));
        return FallbackDecision {
            strategy: Strategy::BestEffort,
            status: Some(status),
        };
    }
    if !down_too_long(input, after).is_empty() {
        return flip(Strategy::BestEffort, true, reason::PROVIDER_DOWN);
    }
    FallbackDecision {
        strategy: input.strategy,
        status: input.previous.cloned(),
    }
}

/// The Event for a fallback flip, or None when `next` does not flip it. The note names the
/// providers: down since when, or what kept the fallback until now.
pub fn fallback_event(
    input: &FallbackInput<'_>,
    next: Option<&FallbackStatus>,
) -> Option<PipelineEvent> {
    let was_active = input.previous.is_some_and(|p| p.active);
    let is_active = next.is_some_and(|n| n.active);
    match (was_active, is_active) {
        (false, true) => {
            let after = input.fallback_after.unwrap_or(SignedDuration::ZERO);
            let down: Vec<String> = down_too_long(input, after)
                .iter()
                .map(|Outage { provider: p, since }| {
                    let why = if p.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", p.message)
                    };
                    format!("{} down since {since}{why}", p.name)
                })
                .collect();
            // Warning: messages a provider misses now wait in the backlog.
            Some(PipelineEvent {
                type_: EventType::Warning,
                reason: reason::PROVIDER_DOWN,
                note: format!(
                    "FailFast → BestEffort: {} (longer than fallbackAfter {}); missed writes go to the backlog",
                    down.join("; "),
                    human(after)
                ),
            })
        }
        (true, false) => {
            let recovered = next.is_some_and(|n| n.reason == reason::RECOVERED);
            let since = input
                .previous
                .and_then(|p| p.since.as_ref())
                .map(|t| format!(" (in force since {})", t.0))
                .unwrap_or_default();
            let (reason, why) = if recovered {
                (
                    reason::RECOVERED,
                    "every provider is ready and its backlog replayed".to_string(),
                )
            } else {
                (
                    reason::DISABLED,
                    format!("automatic fallback no longer applies to {}", input.strategy),
                )
            };
            Some(PipelineEvent {
                type_: EventType::Normal,
                reason,
                note: format!("fallback ended{since}: {why}; strategy {}", input.strategy),
            })
        }
        _ => None,
    }
}
