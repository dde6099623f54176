//! The migration step machine: which step of `spec.migration` is in force and what that step
//! means (strategy, providers written, provider read). Plain data in, plain data out, no I/O;
//! tested with a table of cases (`step/tests.rs`). The reconciler feeds it the previous status,
//! the aggregated provider rows and `now`; [`super::fallback`] may then relax the step's
//! strategy while a provider is down.
//!
//! ```text
//!   verify request ──▶ the rest of the diagram decides, as without it; the request is
//!                      accepted (the reconciler starts the check's Job)      (VerifyRequested)
//!   first reconcile ──▶ step = targetStep or 0                               (Started)
//!   step index gone ──▶ last step                                            (StepsChanged)
//!   targetStep ≠ cur ─▶ targetStep, no gates                                 (Promoted / RolledBack)
//!   targetStep = cur ─▶ stay                                                 (Pinned)
//!   request ─────────▶ promote: cur + 1 (gates passed once) / toStep / last  (Promoted)
//!                      pause: stay, held                                     (Paused)
//!                      resume: stay, hold lifted                             (Resumed)
//!                      rollback: cur − 1 or toStep, held                     (RolledBack)
//!                      abort: step 0, held                                   (Aborted)
//!   paused ──────────▶ stay                                                  (Paused)
//!   held ────────────▶ stay                                                  (Held)
//!   last step ───────▶ stay                                                  (Completed)
//!   gates of cur ────▶ manual? minDuration? healthy? backlog? consistent?    (stay, naming the gate)
//!                   └▶ cur + 1                                               (GatesPassed)
//! ```
//!
//! [`decide_step`] reads top to bottom as this diagram does (first match wins); the gates are
//! one function each, tried in the diagram's order by `first_closed_gate`.
//!
//! A request (`status.migration.request`, written by `kubectl dualwrite` or an Argo CD action
//! through the status subresource) is acted on once: the decision carries its outcome
//! ([`StepDecision::handled`]), the status records it as `lastRequest` (a request equal to it is
//! never acted on again, should removing it fail) and the reconciler then removes it. When the
//! spec pins the migration (`targetStep` or `paused`), the spec wins: the request is refused
//! and the message names the field to change in Git (but for Verify, which moves no step).
//! Requests are told apart by all their fields, the `nonce` included (`requestedAt` has whole
//! seconds: two equal clicks within one second differ by their nonce).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{human, reason};
use crate::api::{
    ConsistencyStatus, MigrationAction, MigrationHold, MigrationRequest, MigrationSpec,
    MigrationStatus, MigrationStep, ProviderStatus, Readiness, RequestOutcome, StepRecord,
};
use crate::composite::Strategy;
use crate::duration::DurationError;

#[cfg(test)]
mod tests;

/// How many step records `status.migration.history` keeps (the newest).
pub const HISTORY_LIMIT: usize = 20;

/// Why the relays do not run the current step yet: the gates judge a step by what the relays
/// did in it, not by reports from before it began.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelaysNotInStep {
    #[error("no relay has reported recently")]
    NoFreshReport,
    #[error("relay {relay} has not reported since the step began")]
    NoReportSinceStepBegan { relay: String },
    #[error("relay {relay} still runs {strategy}")]
    OtherStrategy { relay: String, strategy: Strategy },
}

/// What [`decide_step`] looks at.
#[derive(Clone, Debug)]
pub struct StepInput<'a> {
    pub migration: &'a MigrationSpec,
    /// The previous status (None: the first reconcile of this migration).
    pub current: Option<&'a MigrationStatus>,
    /// The aggregated rows, one per provider in spec order.
    pub providers: &'a [ProviderStatus],
    pub consistency: Option<&'a ConsistencyStatus>,
    /// Ok when every fresh relay has reported since the step began, running its strategy.
    pub relays_in_step: Result<(), RelaysNotInStep>,
    /// Relays whose report went stale: their backlog is not in `providers`, yet may be on
    /// their disk (see [`StaleBacklog`]).
    pub stale: &'a [StaleBacklog],
    pub now: Timestamp,
}

/// A relay whose report went stale, and what is known of its backlog now: `Some(n)` when its
/// last report was the one it wrote on stopping (its disk holds what that report said), `None`
/// when unknown (it stopped reporting without saying: unknown is not empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleBacklog {
    pub relay: String,
    pub backlog: Option<u64>,
}

/// The step in force after this reconcile, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepDecision {
    /// 0-based index into `spec.migration.steps`.
    pub step: u32,
    /// One of the step constants in [`reason`].
    pub reason: &'static str,
    /// For people (`kubectl describe`).
    pub message: String,
    /// The step changed (or the migration started): record it and emit an Event.
    pub moved: bool,
    /// The hold on the step after this decision (a pause, rollback or abort request's).
    pub held: Option<MigrationHold>,
    /// The request acted on in this decision, carried out or refused.
    pub handled: Option<RequestOutcome>,
}

impl StepDecision {
    fn stay(step: u32, reason: &'static str, message: String) -> Self {
        Self {
            step,
            reason,
            message,
            ..Self::default()
        }
    }

    fn go(step: u32, reason: &'static str, message: String) -> Self {
        Self {
            step,
            reason,
            message,
            moved: true,
            ..Self::default()
        }
    }

    fn held(mut self, held: Option<MigrationHold>) -> Self {
        self.held = held;
        self
    }

    /// A request carried out: the decision records it (history, Event) as accepted.
    fn accepting(mut self, request: &MigrationRequest, now: Timestamp) -> Self {
        self.handled = Some(RequestOutcome {
            request: request.clone(),
            accepted: true,
            message: self.message.clone(),
            handled_at: Time(now),
            job: None,
        });
        self
    }

    /// A request refused: this decision stays what it would have been without it.
    fn refusing(mut self, request: &MigrationRequest, why: String, now: Timestamp) -> Self {
        self.handled = Some(RequestOutcome {
            request: request.clone(),
            accepted: false,
            message: why,
            handled_at: Time(now),
            job: None,
        });
        self
    }

    /// Whether a request was carried out in this decision (its record goes into the history
    /// even when the step stayed, as a pause does).
    pub fn accepted_request(&self) -> Option<&MigrationRequest> {
        self.handled
            .as_ref()
            .filter(|h| h.accepted)
            .map(|h| &h.request)
    }
}

/// The request in `current` not yet acted on: none when it equals the last one acted on (the
/// reconcile that acted on it could not remove it).
pub fn pending_request(current: &MigrationStatus) -> Option<&MigrationRequest> {
    let request = current.request.as_ref()?;
    let done = current
        .last_request
        .as_ref()
        .is_some_and(|l| &l.request == request);
    (!done).then_some(request)
}

/// The JSON patch that removes `request` from `status.migration` only while it is still exactly
/// that request (a `test` op first): a request written meanwhile makes the patch fail (422)
/// and survives for the next reconcile.
pub fn clear_request_patch(request: &MigrationRequest) -> serde_json::Value {
    serde_json::json!([
        {"op": "test", "path": "/status/migration/request", "value": request},
        {"op": "remove", "path": "/status/migration/request"},
    ])
}

/// Who asked, as the history and Events say it.
pub fn requester(request: &MigrationRequest) -> &str {
    request.requested_by.as_deref().unwrap_or("unknown")
}

/// A closed gate: the reason and message of staying in the current step.
struct Hold {
    reason: &'static str,
    message: String,
}

/// The gates of a step with their defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gates {
    pub all_healthy: bool,
    pub backlog_empty: bool,
    pub consistent: bool,
    pub manual: bool,
    pub min_duration: SignedDuration,
}

/// The gates of `step`: allHealthy true, backlogEmpty true, consistent false, manual false,
/// minDuration 0. Err when `minDuration` is not a duration (the schema and `validate` reject
/// that, so it only happens to a manifest that bypassed both).
pub fn gates(step: &MigrationStep) -> Result<Gates, DurationError> {
    let g = step.gates.clone().unwrap_or_default();
    let min_duration = match &g.min_duration {
        None => SignedDuration::ZERO,
        Some(text) => {
            let d = crate::duration::parse(text)?;
            SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
        }
    };
    Ok(Gates {
        all_healthy: g.all_healthy.unwrap_or(true),
        backlog_empty: g.backlog_empty.unwrap_or(true),
        consistent: g.consistent.unwrap_or(false),
        manual: g.manual.unwrap_or(false),
        min_duration,
    })
}

fn last_index(m: &MigrationSpec) -> u32 {
    m.steps.len().saturating_sub(1) as u32
}

/// `2 (kafka-only)`: a step as people read it.
fn label(m: &MigrationSpec, step: u32) -> String {
    match m.steps.get(step as usize) {
        Some(s) => format!("{step} ({})", s.name),
        None => step.to_string(),
    }
}

/// Decides the step in force. Rules, first match wins: first reconcile → `targetStep` or 0;
/// current step gone → last step; `targetStep` differs → go there, no gates; `targetStep` equals
/// → stay (pinned); paused → stay; last step → stay (completed); else the current step's gates
/// (manual, minDuration, allHealthy over the providers written in the step, backlogEmpty over
/// every provider, consistent since the step started) either name what holds it or advance one.
pub fn decide_step(input: &StepInput<'_>) -> StepDecision {
    let m = input.migration;
    let pending = input.current.and_then(pending_request);
    if let (Some(r), Some(current)) = (pending, input.current) {
        if r.action == MigrationAction::Verify {
            // Not a step action: the step is decided as without it, whatever pins the spec;
            // the reconcile starts the check's Job and names it in the outcome.
            let without = MigrationStatus {
                request: None,
                ..current.clone()
            };
            let d = decide_step(&StepInput {
                current: Some(&without),
                ..input.clone()
            });
            let mut d = d.accepting(r, input.now);
            if let Some(h) = d.handled.as_mut() {
                h.message = format!(
                    "consistency check requested by {}: the operator starts its Job",
                    requester(r)
                );
            }
            return d;
        }
    }
    if m.steps.is_empty() {
        let d = StepDecision::stay(
            0,
            reason::NO_STEPS,
            "spec.migration lists no steps: add at least one".into(),
        );
        return match pending {
            Some(r) => d.refusing(r, "spec.migration lists no steps".into(), input.now),
            None => d,
        };
    }
    let last = last_index(m);
    // A target past the end is rejected by validation; clamp it rather than index out of range.
    let target = m.target_step.map(|t| t.min(last));

    let Some(current) = input.current else {
        let step = target.unwrap_or(0);
        let how = if target.is_some() {
            "spec.migration.targetStep"
        } else {
            "the first step"
        };
        return StepDecision::go(
            step,
            reason::STARTED,
            format!("migration started at step {} ({how})", label(m, step)),
        );
    };
    let cur = current.current_step;

    let held = current.held.clone();
    if cur > last {
        // A pending request waits for the next reconcile, which judges it against the steps
        // that exist.
        return StepDecision::go(
            last,
            reason::STEPS_CHANGED,
            format!(
                "step {cur} ({}) no longer exists: the migration lists {} step(s); moved to the last step, {}",
                current.step_name,
                m.steps.len(),
                label(m, last)
            ),
        )
        .held(held);
    }
    if let Some(t) = target {
        // Git took over: the spec's target replaces any hold a request made.
        let d = follow_target(m, cur, t);
        return match pending {
            Some(r) => d.refusing(
                r,
                format!("spec.migration.targetStep={t} pins this migration: change it in Git"),
                input.now,
            ),
            None => d,
        };
    }
    if let Some(r) = pending {
        return match decide_request(input, current, r) {
            Ok(d) => d.accepting(r, input.now),
            Err(why) => without_request(input, current).refusing(r, why, input.now),
        };
    }
    without_request(input, current)
}

/// The rules after the spec's target and a request: paused, held, completed, the gates.
fn without_request(input: &StepInput<'_>, current: &MigrationStatus) -> StepDecision {
    let m = input.migration;
    let cur = current.current_step;
    let last = last_index(m);
    let held = current.held.clone();
    if m.paused {
        return StepDecision::stay(
            cur,
            reason::PAUSED,
            format!(
                "spec.migration.paused is true: step {} stays in force",
                label(m, cur)
            ),
        )
        .held(held);
    }
    if let Some(h) = &held {
        return StepDecision::stay(
            cur,
            reason::HELD,
            format!(
                "step {} is held since {} ({}): a resume or promote request lifts the hold",
                label(m, cur),
                h.since.0,
                h.reason
            ),
        )
        .held(held);
    }
    if cur == last {
        return StepDecision::stay(
            cur,
            reason::COMPLETED,
            format!(
                "step {} is the last step: the migration is complete",
                label(m, cur)
            ),
        );
    }

    match first_closed_gate(input, current) {
        Some(hold) => StepDecision::stay(cur, hold.reason, hold.message),
        None => StepDecision::go(
            cur + 1,
            reason::GATES_PASSED,
            format!(
                "the gates of step {} passed: advanced to step {}",
                label(m, cur),
                label(m, cur + 1)
            ),
        ),
    }
}

/// Carries out `request` (the spec pins nothing here), or says why it cannot be.
fn decide_request(
    input: &StepInput<'_>,
    current: &MigrationStatus,
    request: &MigrationRequest,
) -> Result<StepDecision, String> {
    let m = input.migration;
    let cur = current.current_step;
    let last = last_index(m);
    let by = requester(request);
    if input.migration.paused {
        return Err("spec.migration.paused=true pins this migration: change it in Git".to_string());
    }
    if let Some(to) = request.to_step.filter(|to| *to > last) {
        return Err(format!(
            "step {to} does not exist: the migration has {} steps (0 to {last})",
            m.steps.len()
        ));
    }
    let hold = |reason: &str| {
        Some(MigrationHold {
            reason: reason.to_string(),
            since: Time(input.now),
        })
    };
    let from = label(m, cur);
    match request.action {
        MigrationAction::Promote | MigrationAction::PromoteFull => {
            let to = match request.action {
                MigrationAction::PromoteFull => last,
                _ => request.to_step.unwrap_or(cur + 1),
            };
            if cur == last {
                return Err(format!(
                    "step {from} is the last step: there is nothing to promote to"
                ));
            }
            if to <= cur {
                return Err(format!(
                    "promote goes forward: step {to} is not after the current step {from} (use rollback)"
                ));
            }
            let how = if request.to_step.is_none() && request.action == MigrationAction::Promote {
                format!(": the gates of step {from} were passed once")
            } else {
                ", past any gates".to_string()
            };
            Ok(StepDecision::go(
                to,
                reason::PROMOTED,
                format!(
                    "promoted by request of {by} from step {from} to step {}{how}",
                    label(m, to)
                ),
            ))
        }
        MigrationAction::Pause => Ok(StepDecision::stay(
            cur,
            reason::PAUSED,
            format!("paused by request of {by}: step {from} is held; a resume request lifts the hold"),
        )
        .held(current.held.clone().or_else(|| hold(reason::PAUSED)))),
        MigrationAction::Resume => match &current.held {
            None => Err(format!(
                "step {from} is not held by a request: nothing to resume"
            )),
            Some(h) => Ok(StepDecision::stay(
                cur,
                reason::RESUMED,
                format!(
                    "resumed by request of {by}: the hold on step {from} ({}) is lifted; the gates decide again",
                    h.reason
                ),
            )),
        },
        MigrationAction::Rollback => {
            let to = match request.to_step {
                Some(to) => to,
                None if cur == 0 => {
                    return Err(format!(
                        "step {from} is the first step: there is nothing to roll back to"
                    ))
                }
                None => cur - 1,
            };
            if to >= cur {
                return Err(format!(
                    "rollback goes back: step {to} is not before the current step {from} (use promote)"
                ));
            }
            Ok(StepDecision::go(
                to,
                reason::ROLLED_BACK,
                format!(
                    "rolled back by request of {by} from step {from} to step {}, held there; a resume request lets the gates advance it",
                    label(m, to)
                ),
            )
            .held(hold(reason::ROLLED_BACK)))
        }
        // Handled in `decide_step` before the spec's pins (it does not move the step).
        MigrationAction::Verify => Err("verify does not move the step".to_string()),
        MigrationAction::Abort => {
            let message = format!(
                "aborted by request of {by}: back to the first step {}, held there; a resume request lets the gates advance it",
                label(m, 0)
            );
            let d = if cur == 0 {
                StepDecision::stay(0, reason::ABORTED, message)
            } else {
                StepDecision::go(0, reason::ABORTED, message)
            };
            Ok(d.held(hold(reason::ABORTED)))
        }
    }
}

/// `targetStep` is set: go there past any gates, or stay pinned when it is the current step.
fn follow_target(m: &MigrationSpec, cur: u32, target: u32) -> StepDecision {
    let (from, to) = (label(m, cur), label(m, target));
    if target > cur {
        StepDecision::go(
            target,
            reason::PROMOTED,
            format!("promoted by targetStep from step {from} to step {to}"),
        )
    } else if target < cur {
        StepDecision::go(
            target,
            reason::ROLLED_BACK,
            format!("rolled back by targetStep from step {from} to step {to}"),
        )
    } else {
        StepDecision::stay(
            cur,
            reason::PINNED,
            format!("held at step {from} by spec.migration.targetStep; unset targetStep to let the gates advance the migration"),
        )
    }
}

/// The first gate of the current (not the last) step that holds it, in the diagram's order:
/// readable gates, manual, minDuration, relays in the step, allHealthy, backlogEmpty, consistent.
fn first_closed_gate(input: &StepInput<'_>, current: &MigrationStatus) -> Option<Hold> {
    let m = input.migration;
    let cur = current.current_step;
    let step = &m.steps[cur as usize];
    let gates = match gates(step) {
        Ok(g) => g,
        Err(e) => {
            return Some(Hold {
                reason: reason::INVALID_GATE,
                message: format!("step {} stays: gates.minDuration: {e}", label(m, cur)),
            })
        }
    };
    if gates.manual {
        return Some(Hold {
            reason: reason::AWAITING_PROMOTION,
            message: format!(
                "step {} is manual: promote it (`kubectl dualwrite promote`, the Argo CD action promote, or spec.migration.targetStep: {} in Git) to continue",
                label(m, cur),
                cur + 1
            ),
        });
    }
    let started = current.step_started_at.0;
    // Each gate is cheap to evaluate; one the step turned off never holds it.
    min_duration_gate(input, cur, started, gates.min_duration)
        .or_else(|| relays_gate(input, cur))
        .or_else(|| health_gate(input, step, cur).filter(|_| gates.all_healthy))
        .or_else(|| backlog_gate(input, cur).filter(|_| gates.backlog_empty))
        .or_else(|| consistency_gate(input, cur, started).filter(|_| gates.consistent))
}

/// `minDuration`: the step has not lasted long enough.
fn min_duration_gate(
    input: &StepInput<'_>,
    cur: u32,
    started: Timestamp,
    min_duration: SignedDuration,
) -> Option<Hold> {
    // A clock that went backwards counts as no time spent, never as a negative one.
    let spent = input.now.duration_since(started).max(SignedDuration::ZERO);
    if spent >= min_duration {
        return None;
    }
    let remaining = min_duration - spent;
    let at = started
        .checked_add(min_duration)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "never".into());
    Some(Hold {
        reason: reason::MIN_DURATION_NOT_REACHED,
        message: format!(
            "step {} has run {} of its minDuration {}: {} remain (until {at})",
            label(input.migration, cur),
            human(spent),
            human(min_duration),
            human(remaining)
        ),
    })
}

/// The relays must run the step before the remaining gates judge it.
fn relays_gate(input: &StepInput<'_>, cur: u32) -> Option<Hold> {
    let why = input.relays_in_step.as_ref().err()?;
    Some(Hold {
        reason: reason::WAITING_FOR_RELAYS,
        message: format!(
            "step {} stays until the relays run it: {why}",
            label(input.migration, cur)
        ),
    })
}

/// `allHealthy`: every provider written in the step is ready.
fn health_gate(input: &StepInput<'_>, step: &MigrationStep, cur: u32) -> Option<Hold> {
    let active = step_providers(step, input.providers.iter().map(|p| p.name.as_str()));
    let not_ready: Vec<String> = active
        .iter()
        .filter_map(
            |name| match input.providers.iter().find(|p| p.name == *name) {
                Some(p) if p.ready == Readiness::True => None,
                Some(p) if p.message.is_empty() => Some(format!("{} ({})", p.name, p.ready)),
                Some(p) => Some(format!("{} ({}: {})", p.name, p.ready, p.message)),
                None => Some(format!("{name} (Unknown: no status row)")),
            },
        )
        .collect();
    (!not_ready.is_empty()).then(|| Hold {
        reason: reason::PROVIDERS_NOT_READY,
        message: format!(
            "step {} waits for its providers to be ready: {}",
            label(input.migration, cur),
            not_ready.join("; ")
        ),
    })
}

/// `backlogEmpty`: every backlog, not only the step's providers' (a provider this step stopped
/// writing keeps its backlog on the relays' disks, reported as orphaned, and the next step may
/// read from it), and the backlog of every relay whose report went stale: a stopped relay's
/// last known backlog, or unknown, which is not empty.
fn backlog_gate(input: &StepInput<'_>, cur: u32) -> Option<Hold> {
    let mut backlogs: Vec<String> = input
        .providers
        .iter()
        .filter(|p| p.backlog > 0)
        .map(|p| format!("{}={}", p.name, p.backlog))
        .collect();
    backlogs.extend(input.stale.iter().filter_map(|s| match s.backlog {
        Some(0) => None,
        Some(n) => Some(format!("relay {} (stopped, on its disk)={n}", s.relay)),
        None => Some(format!("relay {} (no fresh report: unknown)", s.relay)),
    }));
    (!backlogs.is_empty()).then(|| Hold {
        reason: reason::BACKLOG_NOT_EMPTY,
        message: format!(
            "step {} waits for backlogs to drain: {}",
            label(input.migration, cur),
            backlogs.join(", ")
        ),
    })
}

/// `consistent`: a consistency check since the step started found every provider complete.
fn consistency_gate(input: &StepInput<'_>, cur: u32, started: Timestamp) -> Option<Hold> {
    let why = match input.consistency {
        None => "no consistency check has run yet".to_string(),
        Some(c) if c.checked_at.0 < started => format!(
            "the last consistency check ({}) ran before the step started ({started})",
            c.checked_at.0
        ),
        Some(c) if !c.consistent => {
            let missing: Vec<String> = c
                .missing
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(p, n)| format!("{p}={n}"))
                .collect();
            let detail = if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            };
            format!(
                "the consistency check at {} found differences{detail}",
                c.checked_at.0
            )
        }
        Some(_) => return None,
    };
    Some(Hold {
        reason: reason::CONSISTENCY_NOT_CONFIRMED,
        message: format!(
            "step {} waits for a clean consistency check: {why}",
            label(input.migration, cur)
        ),
    })
}

/// The providers written in `step`: its `providers` in the order of `all` (the spec's order), or
/// all of them. Names not in `all` are left out (validation reports them).
fn step_providers<'a>(step: &MigrationStep, all: impl Iterator<Item = &'a str>) -> Vec<String> {
    all.filter(|name| {
        step.providers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == name))
    })
    .map(String::from)
    .collect()
}

/// What a step means for the relays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepView {
    pub strategy: Strategy,
    /// The providers written, in spec order.
    pub active: Vec<String>,
    /// The provider consumers read from.
    pub read_from: Option<String>,
}

/// What step `step` means: its strategy, the providers it writes (default all, in spec order)
/// and the provider consumers read from (default the first written). A step past the end means
/// the last step; a migration without steps means FailFast over all providers.
pub fn step_view(migration: &MigrationSpec, step: u32, all_providers: &[String]) -> StepView {
    let Some(s) = migration
        .steps
        .get((step as usize).min(migration.steps.len().saturating_sub(1)))
    else {
        return StepView {
            strategy: Strategy::default(),
            active: all_providers.to_vec(),
            read_from: all_providers.first().cloned(),
        };
    };
    let active = step_providers(s, all_providers.iter().map(String::as_str));
    let read_from = s.read_from.clone().or_else(|| active.first().cloned());
    StepView {
        strategy: s.strategy,
        active,
        read_from,
    }
}

/// `prev` with a record of entering `decision.step` appended when the decision moved or carried
/// out a request (a pause is recorded though the step stays), trimmed
/// to the newest [`HISTORY_LIMIT`] records.
pub fn record_history(
    prev: &[StepRecord],
    decision: &StepDecision,
    migration: &MigrationSpec,
    now: Timestamp,
) -> Vec<StepRecord> {
    let mut history = prev.to_vec();
    // A Verify request leaves the step as it is: no record.
    let request = decision
        .accepted_request()
        .filter(|r| r.action != MigrationAction::Verify);
    if decision.moved || request.is_some() {
        let step = migration.steps.get(decision.step as usize);
        history.push(StepRecord {
            step: decision.step,
            name: step.map(|s| s.name.clone()).unwrap_or_default(),
            strategy: step.map(|s| s.strategy).unwrap_or_default(),
            reason: decision.reason.to_string(),
            entered_at: Time(now),
            requested_by: request.map(|r| requester(r).to_string()),
        });
    }
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..excess);
    history
}

/// `status.migration` after `decision`: the step, its name, why, since when (now if the step
/// moved, else the previous start), the history, the hold and the last request acted on.
pub fn next_migration_status(input: &StepInput<'_>, decision: &StepDecision) -> MigrationStatus {
    let prev = input.current;
    let step_started_at = match prev {
        Some(p) if !decision.moved => p.step_started_at.clone(),
        _ => Time(input.now),
    };
    MigrationStatus {
        current_step: decision.step,
        step_name: input
            .migration
            .steps
            .get(decision.step as usize)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        reason: decision.reason.to_string(),
        message: decision.message.clone(),
        step_started_at,
        history: record_history(
            prev.map(|p| p.history.as_slice()).unwrap_or_default(),
            decision,
            input.migration,
            input.now,
        ),
        // Never sent by the operator: a requester's field (see `MigrationStatus::request`).
        request: None,
        held: decision.held.clone(),
        last_request: decision
            .handled
            .clone()
            .or_else(|| prev.and_then(|p| p.last_request.clone())),
    }
}
