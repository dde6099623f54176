//! Scale-down that hands the removed relays' backlog over before their pods go. A StatefulSet
//! removes the highest ordinals when `replicas` drops; a relay so removed stops, drains for at
//! most its shutdown deadline, and whatever its broker did not take by then stays on its
//! retained claim, which no relay replays until the relays scale back up to that ordinal: the
//! messages accepted with 202 miss a broker. So the operator keeps the StatefulSet at the
//! higher count while a relay to be removed (ordinal ≥ `spec.relay.replicas`) reports a
//! backlog, or has not reported since the scale-down was requested (unknown is not empty: a
//! report from before the request may predate a backlog), for at most
//! [`DRAIN_LIMIT`]; then it scales down anyway, and the claim in `status.retainedClaims` and a
//! Warning Event say that a backlog stays on it and how to get it back (scale up again).
//!
//! ```text
//!   StatefulSet replicas ≤ spec ─────────────────────────────▶ apply spec (a hold ends: Cancelled)
//!   StatefulSet replicas > spec:
//!     every relay to remove reports backlog 0 (or has no claim) ▶ apply spec (a hold ends: Drained)
//!     some relay holds a backlog or is unknown:
//!       held for less than DRAIN_LIMIT ──────▶ keep up to the highest such ordinal (Started, or still held)
//!       held for DRAIN_LIMIT or more ────────▶ apply spec (TimedOut: Warning, claim retained)
//! ```
//!
//! The hold only keeps the relays running; they drain when their broker takes writes again
//! (a relay replays its backlog as soon as the provider is healthy), and their next report
//! (within `REPORT_INTERVAL`) lets the scale-down proceed. A held relay stays behind the
//! ingest Service meanwhile, as any relay does. The start of a hold is kept in the annotation
//! [`HELD_SINCE_ANNOTATION`] on the StatefulSet (which only the operator writes), so an
//! operator restart neither restarts the clock nor repeats the Events. [`decide_scale`] is
//! pure and table-tested (`scale/tests.rs`); the reconciler applies its `replicas` and
//! annotation with the rest of the StatefulSet.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use super::{human, reason, resources, rows, PipelineEvent};
use crate::api::RelayReport;

#[cfg(test)]
mod tests;

/// How long a scale-down waits for the relays it removes to replay their backlog. Long enough
/// for a broker restart or a short outage (the usual reason for a backlog), short enough that
/// a scale-down a person or an HPA asked for is not blocked by an outage of hours; past it the
/// backlog stays on the retained claim, which the status and a Warning Event name.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10 * 60);

/// The annotation on the relay StatefulSet that holds when the current hold began (RFC 3339).
pub const HELD_SINCE_ANNOTATION: &str = "dualwrite.io/scale-down-held-since";

/// A relay a scale-down to the spec's count would remove, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingRelay {
    pub ordinal: i32,
    /// Its pod name, `<pipeline>-relay-<ordinal>`.
    pub name: String,
    /// Its backlog summed over providers from its fresh report; `Some(0)` too when it has no
    /// claim (a relay without one never held a backlog); `None` when unknown (no fresh report).
    pub backlog: Option<u64>,
}

/// What a scale decision is made from.
#[derive(Clone, Debug)]
pub struct ScaleInput<'a> {
    /// `spec.relay.replicas`.
    pub desired: i32,
    /// The StatefulSet's `spec.replicas` now (`None`: no StatefulSet yet).
    pub running: Option<i32>,
    /// One entry per ordinal in `desired..running` ([`leaving_relays`]); an ordinal missing
    /// here counts as unknown.
    pub leaving: &'a [LeavingRelay],
    /// When the hold in force began ([`HELD_SINCE_ANNOTATION`]), if one is.
    pub held_since: Option<Timestamp>,
    pub now: Timestamp,
    pub limit: SignedDuration,
}

/// How a hold changed on this reconcile (each calls for one Event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A hold began.
    Started,
    /// Every relay to remove has drained: the scale-down proceeds.
    Drained,
    /// The spec asks for the held relays again: nothing to remove any more.
    Cancelled,
    /// The hold lasted its limit: the scale-down proceeds, leaving `waiting`'s backlog behind.
    TimedOut,
}

/// What to apply to the StatefulSet, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleDecision {
    /// `spec.relay.replicas`.
    pub desired: i32,
    /// The StatefulSet's `replicas` to apply.
    pub replicas: i32,
    /// Start of the hold in force (kept in [`HELD_SINCE_ANNOTATION`]); `None`: no hold.
    pub held_since: Option<Timestamp>,
    /// The relays that hold the scale-down (or, on `TimedOut`, those left with a backlog).
    pub waiting: Vec<LeavingRelay>,
    pub transition: Option<Transition>,
}

impl ScaleDecision {
    /// A hold is in force after this reconcile.
    pub fn holding(&self) -> bool {
        self.held_since.is_some()
    }
}

/// The replicas to apply: the spec's, unless relays that a scale-down would remove still hold
/// a backlog (or have not said), in which case the count that keeps the highest of them, for
/// at most `limit` from the hold's start.
pub fn decide_scale(input: &ScaleInput<'_>) -> ScaleDecision {
    let desired = input.desired;
    let running = input.running.unwrap_or(desired);
    let decided = |replicas, held_since, waiting, transition| ScaleDecision {
        desired,
        replicas,
        held_since,
        waiting,
        transition,
    };
    let was_held = input.held_since.is_some();
    if running <= desired {
        let ended = was_held.then_some(Transition::Cancelled);
        return decided(desired, None, Vec::new(), ended);
    }
    let waiting: Vec<LeavingRelay> = (desired..running)
        .map(|ordinal| {
            input
                .leaving
                .iter()
                .find(|r| r.ordinal == ordinal)
                .cloned()
                .unwrap_or(LeavingRelay {
                    ordinal,
                    name: format!("relay {ordinal}"),
                    backlog: None,
                })
        })
        .filter(|r| r.backlog != Some(0))
        .collect();
    let Some(highest) = waiting.iter().map(|r| r.ordinal).max() else {
        return decided(
            desired,
            None,
            Vec::new(),
            was_held.then_some(Transition::Drained),
        );
    };
    let since = input.held_since.unwrap_or(input.now);
    if input.now.duration_since(since) >= input.limit {
        return decided(desired, None, waiting, Some(Transition::TimedOut));
    }
    let started = (!was_held).then_some(Transition::Started);
    decided(highest + 1, Some(since), waiting, started)
}

/// The relays a scale-down from `running` to `desired` would remove (ordinals
/// `desired..running`), each with its backlog from its fresh report made after the scale-down
/// was requested (`requested_at`: the start of the hold, or now when the operator first sees
/// the request); one with no such report is unknown, unless it has no claim among `claims`
/// (then it never held a backlog). A report from before the request may predate a backlog the
/// relay took since, so it is never trusted to let a relay go.
#[allow(clippy::too_many_arguments)]
pub fn leaving_relays(
    pipeline: &str,
    desired: i32,
    running: i32,
    reports: &[RelayReport],
    claims: &[String],
    requested_at: Timestamp,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Vec<LeavingRelay> {
    let since_request: Vec<RelayReport> = reports
        .iter()
        .filter(|r| r.reported_at.0 > requested_at)
        .cloned()
        .collect();
    (desired..running)
        .map(|ordinal| {
            let name = resources::relay_pod_name(pipeline, ordinal);
            let backlog = relay_backlog(&name, &since_request, now, stale_after).or_else(|| {
                let claim = resources::claim_name(pipeline, ordinal);
                (!claims.contains(&claim)).then_some(0)
            });
            LeavingRelay {
                ordinal,
                name,
                backlog,
            }
        })
        .collect()
}

/// The backlog of relay pod `name` summed over its providers, from its fresh report.
pub fn relay_backlog(
    name: &str,
    reports: &[RelayReport],
    now: Timestamp,
    stale_after: SignedDuration,
) -> Option<u64> {
    let report = reports
        .iter()
        .find(|r| r.name == name && rows::is_fresh(r, now, stale_after))?;
    Some(report.providers.iter().map(|p| p.backlog).sum())
}

/// The StatefulSet's `spec.replicas` (1 when unset, as the API server defaults it).
pub fn running_replicas(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The start of the hold recorded on the StatefulSet, if any (an unreadable one reads as none:
/// the hold then starts again, which only delays the scale-down).
pub fn held_since(sts: &StatefulSet) -> Option<Timestamp> {
    sts.metadata
        .annotations
        .as_ref()?
        .get(HELD_SINCE_ANNOTATION)?
        .parse()
        .ok()
}

/// Puts the decision on the StatefulSet the operator applies: its replicas and, while a hold is
/// in force, its start (omitted otherwise, which server-side apply turns into a removal).
pub fn apply_to(sts: &mut StatefulSet, decision: &ScaleDecision) {
    if let Some(spec) = sts.spec.as_mut() {
        spec.replicas = Some(decision.replicas);
    }
    if let Some(since) = decision.held_since {
        sts.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(HELD_SINCE_ANNOTATION.into(), since.to_string());
    }
}

/// `name (backlog N)` or `name (backlog unknown: no fresh report)` for each relay.
fn describe(relays: &[LeavingRelay]) -> String {
    relays
        .iter()
        .map(|r| match r.backlog {
            Some(n) => format!("{} (backlog {n})", r.name),
            None => format!("{} (backlog unknown: no fresh report)", r.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `Reconciling` message while a hold is in force.
pub fn holding_message(d: &ScaleDecision, limit: SignedDuration) -> Option<String> {
    let since = d.held_since?;
    Some(format!(
        "scale-down to {} relay(s) waits for {} to replay its backlog (a relay drains once its broker takes writes again); held since {since}, at most {}, then the backlog stays on the relay's claim",
        d.desired,
        describe(&d.waiting),
        human(limit),
    ))
}

/// The Event of a hold's transition, if it had one.
pub fn scale_event(
    pipeline: &str,
    d: &ScaleDecision,
    limit: SignedDuration,
) -> Option<PipelineEvent> {
    let (type_, reason, note) = match d.transition? {
        Transition::Started => (
            EventType::Normal,
            reason::SCALE_DOWN_DRAINING,
            format!(
                "holding the scale-down to {} relay(s) while {} replay(s) its backlog, at most {}",
                d.desired,
                describe(&d.waiting),
                human(limit)
            ),
        ),
        Transition::Drained => (
            EventType::Normal,
            reason::SCALE_DOWN_DRAINED,
            format!(
                "the relays to remove have no backlog left: scaling down to {} relay(s)",
                d.desired
            ),
        ),
        Transition::Cancelled => (
            EventType::Normal,
            reason::SCALE_DOWN_CANCELLED,
            format!(
                "the spec asks for {} relay(s) again: no scale-down to hold",
                d.desired
            ),
        ),
        Transition::TimedOut => {
            let back_to = d
                .waiting
                .iter()
                .map(|r| r.ordinal + 1)
                .max()
                .unwrap_or(d.desired);
            (
                EventType::Warning,
                reason::SCALE_DOWN_DRAIN_TIMED_OUT,
                format!(
                    "scaled down to {} relay(s) after waiting {} for {}: that backlog stays on the relay's claim (status.retainedClaims) and is not on every broker; to replay it, scale back up once the broker is back (kubectl scale dwp/{pipeline} --replicas={back_to}), then down again when BACKLOG is 0",
                    d.desired,
                    human(limit),
                    describe(&d.waiting),
                ),
            )
        }
    };
    Some(PipelineEvent {
        type_,
        reason,
        note,
    })
}
