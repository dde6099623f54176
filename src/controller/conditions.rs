//! The kstatus-style conditions of a pipeline, computed from its provider rows: Ready (the
//! summary), Reconciling and Stalled (the pair Flux reads without configuration) and Degraded.
//! Plain data in, plain data out; tested with a table of cases (`conditions/tests.rs`), and the
//! kstatus reading of each state with kstatus itself (`hack/check-kstatus`, fixtures in
//! `hack/kstatus/testdata/`, which `kstatus_fixtures_match_the_conditions` keeps in step).
//!
//! # What kstatus (Flux, `kubectl wait`, cli-utils) reads
//!
//! kstatus computes Current, InProgress or Failed from `observedGeneration`, then from
//! `Reconciling=True` (InProgress) and `Stalled=True` (Failed); Flux's health check waits while
//! InProgress and fails at once on Failed. The rule here: **a pipeline reads Current only when
//! Ready is True** (or it is scaled to zero, by request). Whenever Ready is not True, exactly one
//! of the pair is True:
//!
//! | state | reads | why |
//! |---|---|---|
//! | invalid spec, an owned object refused (ApplyFailed) | Stalled (Failed) | only a person can fix it |
//! | a relay pod cannot run: image pull, crash loop, configuration error, unschedulable | Stalled (Failed) | the operator retries nothing that would fix it; kstatus reads a crash-looping or unschedulable Pod as Failed too (an image pull it reads as Pending, InProgress, as it cannot tell a slow pull from a wrong image: the operator can, from the reason) |
//! | FailFast with an active provider down, no `fallbackAfter` | Stalled (Failed), at once | every message is refused until a broker comes back: nothing is under way |
//! | FailFast with an active provider down, `fallbackAfter` set | Reconciling (InProgress), then Stalled after the stall limit (`--stall-after`, 5 min) | the operator will relax to BestEffort by itself; if that has not helped within the limit, it is stuck |
//! | BestEffort with no provider up | Stalled (Failed), at once | no strategy change can help |
//! | no relay has reported yet, relays rolling out, a step change, a scale-down draining | Reconciling (InProgress) | the operator and the relays are getting there |
//! | providers not yet reported (Ready Unknown) | Reconciling (InProgress) | reports arrive within a heartbeat |
//! | Ready True (BestEffort or a fallback running on the rest: Degraded True) | Current | messages are accepted |
//! | scaled to zero (`spec.relay.replicas: 0`) | InProgress | Reconciling and Stalled are False (nothing is under way, nothing is wrong); kstatus then reads Ready, False: no message is taken. Leave such a pipeline out of a Flux health check while it is parked |
//!
//! Stalled and Reconciling are never True together: kstatus reads the first True one in list
//! order, so a stuck pipeline must not read as merely in progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::pods::RelayFailure;
use super::{human, reason};
use crate::api::{ProviderStatus, Readiness};
use crate::composite::{strategy_satisfied, Strategy};

#[cfg(test)]
mod kstatus_fixtures;
#[cfg(test)]
mod tests;

/// Condition types (kstatus reads Ready, Reconciling and Stalled without configuration).
pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const DEGRADED: &str = "Degraded";

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
    /// `spec.migration.fallbackAfter` of the step in force, when the automatic fallback may
    /// relax it (None: no automatic fallback will come).
    pub fallback_after: Option<SignedDuration>,
    /// A migration step change is under way.
    pub migrating: bool,
    /// A relay pod cannot run (image, crash loop, no node, configuration error).
    pub relay_failure: Option<&'a RelayFailure>,
    /// A new pod template waits for a rollout slot: why.
    pub rollout_queued: Option<&'a str>,
    /// A scale-down waits for the relays it removes to replay their backlog: which, and
    /// their backlog ([`super::scale::holding_message`]).
    pub scale_down_held: Option<&'a str>,
    /// The API server refused an owned object in this reconcile: which, and what it said.
    pub apply_failed: Option<&'a str>,
}

impl ConditionInput<'_> {
    /// The spec asks for no relay and none is held back for a backlog: nothing runs, by request.
    pub fn scaled_to_zero(&self) -> bool {
        self.desired_relays == 0 && self.scale_down_held.is_none()
    }
}

/// What Ready, Degraded and Reconciling say about a pipeline scaled to zero.
const SCALED_TO_ZERO_MESSAGE: &str =
    "spec.relay.replicas is 0: no relay runs and nothing is ingested; scale up (kubectl scale dwp NAME --replicas=1) to resume";

/// The active providers counted by readiness, once for all four conditions.
struct Tally {
    active: usize,
    up: usize,
    unknown: usize,
    /// `name: message` of each active provider that is down.
    down: Vec<String>,
    /// The strategy is satisfied by the providers that are up.
    satisfied: bool,
}

impl Tally {
    fn new(input: &ConditionInput<'_>) -> Self {
        let active: Vec<&ProviderStatus> = input
            .providers
            .iter()
            .filter(|p| input.active.contains(&p.name))
            .collect();
        let healthy: Vec<bool> = active.iter().map(|p| p.ready == Readiness::True).collect();
        Tally {
            active: active.len(),
            up: healthy.iter().filter(|h| **h).count(),
            unknown: active
                .iter()
                .filter(|p| p.ready == Readiness::Unknown)
                .count(),
            down: active
                .iter()
                .filter(|p| p.ready == Readiness::False)
                .map(|p| format!("{}: {}", p.name, p.message))
                .collect(),
            satisfied: strategy_satisfied(input.strategy, &healthy),
        }
    }
}

/// One condition of this reconcile (its transition time is settled against the previous one).
struct Verdict {
    status: Readiness,
    reason: &'static str,
    message: String,
}

fn verdict(status: Readiness, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason,
        message: message.into(),
    }
}

/// Ready, Reconciling, Stalled and Degraded, every one always present (Unknown where not known).
/// `lastTransitionTime` is kept from `previous` while a condition's status is unchanged.
pub fn compute_conditions(input: &ConditionInput<'_>, previous: &[Condition]) -> Vec<Condition> {
    let tally = Tally::new(input);
    let ready = ready(input, &tally);
    let stalled = stalled(input, &tally);
    let reconciling = reconciling(input, &ready, &stalled);
    [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
        (DEGRADED, degraded(input, &tally)),
    ]
    .into_iter()
    .map(|(type_, v)| {
        let status = v.status.as_str();
        let last_transition_time = previous
            .iter()
            .find(|p| p.type_ == type_ && p.status == status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or(Time(input.now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: v.reason.into(),
            message: v.message,
            observed_generation: Some(input.generation),
            last_transition_time,
        }
    })
    .collect()
}

/// True only when the strategy is satisfied by providers reported healthy and no relay pod is
/// failing.
fn ready(input: &ConditionInput<'_>, t: &Tally) -> Verdict {
    if let Some(why) = &input.invalid {
        verdict(Readiness::False, reason::INVALID_SPEC, why)
    } else if let Some(why) = input.apply_failed {
        verdict(Readiness::False, reason::APPLY_FAILED, why)
    } else if input.scaled_to_zero() {
        // Not Ready: a pipeline with no relay takes no message (an Argo CD check reads the
        // reason as Suspended; kstatus, with Reconciling and Stalled both False, falls back to
        // Ready and reads InProgress).
        verdict(
            Readiness::False,
            reason::SCALED_TO_ZERO,
            SCALED_TO_ZERO_MESSAGE,
        )
    } else if let Some(f) = input.relay_failure {
        // A relay that cannot run is the first thing to fix, whatever the others report.
        verdict(Readiness::False, f.reason, f.message.clone())
    } else if input.fresh_relays == 0 || (t.unknown > 0 && t.down.is_empty() && t.up == 0) {
        verdict(
            Readiness::Unknown,
            reason::WAITING_FOR_RELAYS,
            "no relay has reported its providers yet",
        )
    } else if t.satisfied && t.down.is_empty() && t.unknown == 0 {
        verdict(
            Readiness::True,
            reason::ALL_PROVIDERS_READY,
            format!(
                "{} over {} provider(s), all healthy",
                input.strategy, t.active
            ),
        )
    } else if t.satisfied {
        verdict(
            Readiness::True,
            reason::PROVIDER_DOWN,
            format!(
                "{} is satisfied; down: {}",
                input.strategy,
                t.down.join("; ")
            ),
        )
    } else {
        let detail = if t.down.is_empty() {
            "waiting for reports".to_string()
        } else {
            t.down.join("; ")
        };
        verdict(
            Readiness::False,
            reason::PROVIDERS_NOT_READY,
            format!("{} needs more providers: {detail}", input.strategy),
        )
    }
}

/// True when the pipeline runs on the remaining providers while one is down.
fn degraded(input: &ConditionInput<'_>, t: &Tally) -> Verdict {
    if input.invalid.is_none() && input.scaled_to_zero() {
        verdict(
            Readiness::False,
            reason::SCALED_TO_ZERO,
            SCALED_TO_ZERO_MESSAGE,
        )
    } else if input.invalid.is_none() && t.satisfied && !t.down.is_empty() {
        verdict(
            Readiness::True,
            reason::PROVIDER_DOWN,
            format!(
                "running on the remaining providers; down: {}",
                t.down.join("; ")
            ),
        )
    } else if input.fresh_relays == 0 {
        verdict(
            Readiness::Unknown,
            reason::WAITING_FOR_RELAYS,
            "no relay has reported yet",
        )
    } else {
        verdict(
            Readiness::False,
            reason::ALL_PROVIDERS_READY,
            "no provider is down while the pipeline runs on the rest",
        )
    }
}

/// True when the pipeline cannot progress by itself: an invalid spec, an owned object the API
/// server refused, a relay pod that cannot run, or no message accepted with nothing under way
/// that would change it (FailFast with a provider down and no automatic fallback, or past the
/// stall limit; BestEffort with no provider up). See the module's table.
fn stalled(input: &ConditionInput<'_>, t: &Tally) -> Verdict {
    // The strategy refuses messages because providers the relays report on are down (for
    // BestEffort: every one of them, none merely unknown).
    let refusing = input.fresh_relays > 0
        && !t.satisfied
        && !t.down.is_empty()
        && (input.strategy == Strategy::FailFast || t.down.len() == t.active);
    let blocked_too_long = input
        .blocked_since
        .is_some_and(|since| input.now.duration_since(since) >= input.stall_after);
    let fallback_coming = input.strategy == Strategy::FailFast && input.fallback_after.is_some();
    if let Some(why) = &input.invalid {
        verdict(Readiness::True, reason::INVALID_SPEC, why)
    } else if let Some(why) = input.apply_failed {
        verdict(Readiness::True, reason::APPLY_FAILED, why)
    } else if let Some(f) = input.relay_failure.filter(|_| !input.scaled_to_zero()) {
        verdict(Readiness::True, f.reason, f.message.clone())
    } else if refusing
        && input.strategy == Strategy::FailFast
        && (blocked_too_long || !fallback_coming)
    {
        let how_long = if blocked_too_long {
            format!(" for over {}", human(input.stall_after))
        } else {
            String::new()
        };
        let fix = if fallback_coming {
            "and the automatic fallback has not helped"
        } else {
            "and no automatic fallback is set (spec.migration.fallbackAfter)"
        };
        verdict(
            Readiness::True,
            reason::FAIL_FAST_BLOCKED,
            format!(
                "FailFast has refused every message{how_long}, {fix}: {}",
                t.down.join("; ")
            ),
        )
    } else if refusing && input.strategy != Strategy::FailFast {
        verdict(
            Readiness::True,
            reason::PROVIDERS_NOT_READY,
            format!(
                "{} cannot accept messages, no provider is up: {}",
                input.strategy,
                t.down.join("; ")
            ),
        )
    } else {
        verdict(
            Readiness::False,
            reason::RECONCILED,
            "nothing blocks progress",
        )
    }
}

/// True while a migration step change is under way, relays still roll out the generation, an
/// operator-made rollout waits for its turn, a scale-down waits for a backlog, or Ready is not
/// True for a reason that is expected to pass (not stalled): a pipeline that takes no message
/// never reads Current. False whenever Stalled is True (kstatus reads the first True of the pair).
fn reconciling(input: &ConditionInput<'_>, ready: &Verdict, stalled: &Verdict) -> Verdict {
    let g = input.generation;
    if input.invalid.is_some() {
        verdict(
            Readiness::False,
            reason::INVALID_SPEC,
            "fix the spec to continue",
        )
    } else if input.apply_failed.is_some() {
        // Stalled says what was refused; the operator retries with backoff meanwhile.
        verdict(
            Readiness::False,
            reason::APPLY_FAILED,
            "the API server refused an owned object (see Stalled); retrying with backoff",
        )
    } else if stalled.status == Readiness::True {
        verdict(
            Readiness::False,
            stalled.reason,
            "stalled: nothing is under way that would fix it (see Stalled)",
        )
    } else if input.migrating {
        verdict(
            Readiness::True,
            reason::PROGRESSING,
            "a migration step change is under way",
        )
    } else if let Some(why) = input.rollout_queued {
        verdict(Readiness::True, reason::ROLLOUT_QUEUED, why)
    } else if let Some(why) = input.scale_down_held {
        // More relays run than the spec asks for: that is the change under way.
        verdict(Readiness::True, reason::SCALE_DOWN_DRAINING, why)
    } else if input.scaled_to_zero() {
        // Reports of the relays just removed stay fresh for a while: nothing waits for them.
        verdict(
            Readiness::False,
            reason::SCALED_TO_ZERO,
            SCALED_TO_ZERO_MESSAGE,
        )
    } else if input.fresh_relays < input.desired_relays
        || input.relays_on_generation < input.fresh_relays
    {
        verdict(
            Readiness::True,
            reason::RELAYS_UPDATING,
            format!(
                "{} of {} relay(s) reporting, {} on generation {g}",
                input.fresh_relays, input.desired_relays, input.relays_on_generation
            ),
        )
    } else if ready.status != Readiness::True && !input.scaled_to_zero() {
        // Not stalled, not ready: waiting for reports, or for the automatic fallback.
        let message = if ready.reason == reason::PROVIDERS_NOT_READY
            && input.strategy == Strategy::FailFast
        {
            let after = input.fallback_after.map(human).unwrap_or_default();
            format!(
                "{}; the automatic fallback to BestEffort begins once a provider is down for {after}",
                ready.message
            )
        } else {
            ready.message.clone()
        };
        verdict(Readiness::True, ready.reason, message)
    } else {
        verdict(
            Readiness::False,
            reason::RECONCILED,
            format!("{} relay(s) run generation {g}", input.fresh_relays),
        )
    }
}
