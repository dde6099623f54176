//! The whole next status of a pipeline, from its spec, its previous status and `now`, and the
//! Events its decisions call for. Pure: it chains the decisions ([`rows`], [`step`],
//! [`fallback`], [`conditions`]) in the order they depend on each other, and the reconciler
//! does the I/O.
//!
//! ```text
//!   relay reports ─▶ provider rows ─▶ migration step ─▶ fallback ─▶ (invalid spec? keep what runs)
//!                                                                  └▶ conditions ─▶ status
//! ```

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::fallback::{self, FallbackInput};
use super::pods::RelayObservation;
use super::step::{self, RelaysNotInStep, StepInput, StepView};
use super::{
    conditions, reason, reconciled, resources, rows, scale, signed, PipelineEvent, Settings,
};
use crate::api::{
    DualWritePipeline, DualWritePipelineStatus, FallbackStatus, MigrationAction, MigrationStatus,
    ProviderStatus, Readiness, RelayReport,
};
use crate::composite::Strategy;

#[cfg(test)]
mod tests;

/// The status the operator writes, and the Events that record its decisions.
#[derive(Clone, Debug)]
pub struct NextStatus {
    pub status: DualWritePipelineStatus,
    pub events: Vec<PipelineEvent>,
}

/// What the migration step decides for this reconcile.
struct StepOutcome {
    /// The step's strategy and providers (all providers and the spec's strategy without one).
    view: StepView,
    migration: Option<MigrationStatus>,
    /// The step changed in this reconcile.
    moved: bool,
    /// `spec.migration.fallbackAfter`, parsed.
    fallback_after: Option<SignedDuration>,
}

/// What the relays run after this reconcile.
struct InForce {
    strategy: Strategy,
    active: Vec<String>,
    read_from: Option<String>,
    migration: Option<MigrationStatus>,
    fallback: Option<FallbackStatus>,
}

/// Computes the whole status from the pipeline, its previous status and `now`, plus the Events
/// its decisions call for (in order: step, fallback, strategy change, invalid spec).
pub fn next_status(
    p: &DualWritePipeline,
    settings: &Settings,
    observed: &RelayObservation,
    now: Timestamp,
) -> NextStatus {
    let prev = p.status.clone().unwrap_or_default();
    let generation = p.metadata.generation.unwrap_or(0);
    let invalid = p.spec.validate().err().map(|e| e.join("; "));
    let stale_after = signed(settings.stale_after);
    let mut rows =
        rows::aggregate_providers(&p.spec, &prev.relays, &prev.providers, now, stale_after);
    let annotation = p
        .annotations()
        .get(reconciled::ANNOTATION)
        .map(String::as_str);
    for row in &mut rows {
        let previous = prev.providers.iter().find(|x| x.name == row.name);
        row.reconciled_through = reconciled::reconciled_through(
            &row.name,
            previous.and_then(|x| x.reconciled_through.as_ref()),
            annotation,
            prev.consistency.as_ref(),
        );
    }
    let mut events = Vec::new();

    // The migration step (if any) decides the strategy and the providers written; the automatic
    // fallback may then relax FailFast to BestEffort while a provider is down.
    let step = match &p.spec.migration {
        Some(m) if invalid.is_none() => {
            let input = StepInput {
                relays_in_step: relays_in_step(&prev, now, stale_after),
                stale: &stale_backlogs(&prev, now, stale_after),
                migration: m,
                current: prev.migration.as_ref(),
                providers: &rows,
                consistency: prev.consistency.as_ref(),
                now,
            };
            decide_migration(p, &input, &mut events)
        }
        _ => no_migration(p),
    };
    let migrating = step.moved;
    let fallback_after = step.fallback_after;
    let mut in_force = apply_fallback(step, &prev, &rows, now, &mut events);
    if invalid.is_some() && prev.strategy.is_some() {
        in_force = kept(&prev, in_force);
    }
    events.extend(strategy_changed(prev.strategy, in_force.strategy));
    events.extend(invalid.as_ref().map(|why| PipelineEvent {
        type_: EventType::Warning,
        reason: reason::INVALID_SPEC,
        note: why.clone(),
    }));

    events.extend(rows::row_events(
        &prev.providers,
        &rows,
        p.spec.handoff.as_ref().and_then(|h| h.max_messages),
    ));
    events.extend(relay_events(
        &p.name_any(),
        &prev,
        observed,
        now,
        stale_after,
    ));
    let drain_limit = signed(scale::DRAIN_LIMIT);
    let scale_down_held = observed
        .scale
        .as_ref()
        .and_then(|d| scale::holding_message(d, drain_limit));
    events.extend(
        observed
            .scale
            .as_ref()
            .and_then(|d| scale::scale_event(&p.name_any(), d, drain_limit)),
    );

    let fresh: Vec<&RelayReport> = prev
        .relays
        .iter()
        .filter(|r| rows::is_fresh(r, now, stale_after))
        .collect();
    let on_generation = fresh
        .iter()
        .filter(|r| r.generation == Some(generation))
        .count();
    let input = conditions::ConditionInput {
        generation,
        invalid,
        strategy: in_force.strategy,
        active: &in_force.active,
        providers: &rows,
        fresh_relays: fresh.len() as i32,
        relays_on_generation: on_generation as i32,
        desired_relays: p.spec.relay.as_ref().and_then(|r| r.replicas).unwrap_or(1),
        blocked_since: blocked_since(&prev),
        now,
        stall_after: signed(settings.stall_after),
        fallback_after,
        migrating,
        relay_failure: observed.failure.as_ref(),
        rollout_queued: observed.rollout_queued.as_deref(),
        scale_down_held: scale_down_held.as_deref(),
        apply_failed: observed.apply_failed.as_deref(),
    };
    let conditions = conditions::compute_conditions(&input, &prev.conditions);
    let published = rows::published(
        prev.published_retired,
        &prev.published_by_relay,
        &prev.relays,
    );
    let summary = if input.scaled_to_zero() {
        format!("scaled to zero: {}", rows::summary(&rows))
    } else {
        rows::summary(&rows)
    };
    let status = DualWritePipelineStatus {
        observed_generation: Some(generation),
        strategy: Some(in_force.strategy),
        acceptance: Some(
            p.spec
                .handoff
                .as_ref()
                .and_then(|h| h.acceptance)
                .unwrap_or_default(),
        ),
        active_providers: Some(in_force.active),
        read_from: in_force.read_from,
        replicas: fresh.len() as i32,
        selector: Some(format!("dualwrite.io/pipeline={}", p.name_any())),
        published: published.total,
        published_retired: published.retired,
        published_by_relay: published.by_relay,
        backlog: rows.iter().map(|r| r.backlog).sum(),
        summary: Some(summary),
        providers: rows,
        migration: in_force.migration,
        fallback: in_force.fallback,
        consistency: None, // the reconciler copies the checked `dualwrite verify` verdict here
        retained_claims: observed.retained_claims.clone(),
        relays: Vec::new(), // the reconciler puts its copy of the reports ConfigMap here
        conditions,
    };
    NextStatus { status, events }
}

fn all_providers(p: &DualWritePipeline) -> Vec<String> {
    p.spec.providers.iter().map(|x| x.name.clone()).collect()
}

/// Without a migration (or with an invalid spec): the spec's strategy over every provider.
fn no_migration(p: &DualWritePipeline) -> StepOutcome {
    let all = all_providers(p);
    StepOutcome {
        view: StepView {
            strategy: p.spec.strategy,
            read_from: all.first().cloned(),
            active: all,
        },
        migration: None,
        moved: false,
        fallback_after: None,
    }
}

/// The step in force, its record in the status, and a `StepChanged` Event when it moved.
fn decide_migration(
    p: &DualWritePipeline,
    input: &StepInput<'_>,
    events: &mut Vec<PipelineEvent>,
) -> StepOutcome {
    let m = input.migration;
    let decision = step::decide_step(input);
    let next = step::next_migration_status(input, &decision);
    let view = step::step_view(m, decision.step, &all_providers(p));
    // A request acted on: its own Event (Normal with what was done, Warning with why not).
    events.extend(decision.handled.as_ref().map(|h| PipelineEvent {
        type_: if h.accepted {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: if h.accepted && h.request.action == MigrationAction::Verify {
            reason::VERIFY_REQUESTED
        } else if h.accepted {
            decision.reason
        } else {
            reason::REQUEST_REFUSED
        },
        note: format!(
            "{:?} requested by {}: {}",
            h.request.action,
            step::requester(&h.request),
            h.message
        ),
    }));
    if decision.moved {
        events.push(PipelineEvent {
            type_: EventType::Normal,
            reason: reason::STEP_CHANGED,
            note: format!(
                "step {} ({}), {}: {} — {}",
                decision.step, next.step_name, view.strategy, decision.reason, decision.message
            ),
        });
    }
    // Only a valid spec reaches here, and the validator checked fallbackAfter: the parse
    // cannot fail (were it to, no automatic fallback is the safe reading).
    let fallback_after = m
        .fallback_after
        .as_deref()
        .and_then(|t| crate::duration::parse(t).ok())
        .map(signed);
    StepOutcome {
        view,
        migration: Some(next),
        moved: decision.moved,
        fallback_after,
    }
}

/// What runs once the automatic fallback has had its say over the step's strategy, and the
/// Event of its flip, if it flipped.
fn apply_fallback(
    step: StepOutcome,
    prev: &DualWritePipelineStatus,
    rows: &[ProviderStatus],
    now: Timestamp,
    events: &mut Vec<PipelineEvent>,
) -> InForce {
    let input = FallbackInput {
        strategy: step.view.strategy,
        fallback_after: step.fallback_after,
        active: &step.view.active,
        providers: rows,
        previous: prev.fallback.as_ref(),
        now,
    };
    let decision = fallback::decide_fallback(&input);
    events.extend(fallback::fallback_event(&input, decision.status.as_ref()));
    InForce {
        strategy: decision.strategy,
        active: step.view.active,
        read_from: step.view.read_from,
        migration: step.migration,
        fallback: decision.status,
    }
}

/// An invalid spec (one the CRD's rules let through) changes nothing that runs: the relays keep
/// the strategy, providers and migration step they had, and Stalled says why.
fn kept(prev: &DualWritePipelineStatus, decided: InForce) -> InForce {
    InForce {
        strategy: prev.strategy.unwrap_or(decided.strategy),
        active: prev.active_providers.clone().unwrap_or(decided.active),
        read_from: prev.read_from.clone(),
        migration: prev.migration.clone(),
        fallback: prev.fallback.clone(),
    }
}

/// The Events of what the reconcile and the relay pods and claims show: an owned object the API
/// server refused (Warning, once per distinct refusal), a relay failure when Ready did not
/// already say exactly that (Warning), and claims newly retained after a scale-down: a Warning
/// when one may hold a backlog (its relay's last fresh report had one, or there is none), with
/// how to get it back, else a Normal Event.
fn relay_events(
    pipeline: &str,
    prev: &DualWritePipelineStatus,
    observed: &RelayObservation,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Vec<PipelineEvent> {
    let mut events = Vec::new();
    if let Some(why) = &observed.apply_failed {
        // Once per distinct refusal: Stalled keeps saying it while the retries fail alike.
        let known = prev.conditions.iter().any(|c| {
            c.type_ == conditions::STALLED && c.reason == reason::APPLY_FAILED && c.message == *why
        });
        if !known {
            events.push(PipelineEvent {
                type_: EventType::Warning,
                reason: reason::APPLY_FAILED,
                note: why.clone(),
            });
        }
    }
    if let Some(f) = &observed.failure {
        let known = prev.conditions.iter().any(|c| {
            c.type_ == conditions::READY && c.reason == f.reason && c.message == f.message
        });
        if !known {
            events.push(PipelineEvent {
                type_: EventType::Warning,
                reason: f.reason,
                note: f.message.clone(),
            });
        }
    }
    let new: Vec<(&str, Option<i32>, Option<u64>)> = observed
        .retained_claims
        .iter()
        .filter(|c| !prev.retained_claims.contains(c))
        .map(|claim| {
            let ordinal = resources::claim_ordinal(pipeline, claim);
            let backlog = ordinal.and_then(|o| {
                let relay = resources::relay_pod_name(pipeline, o);
                scale::relay_backlog(&relay, &prev.relays, now, stale_after)
            });
            (claim.as_str(), ordinal, backlog)
        })
        .collect();
    if new.is_empty() {
        return events;
    }
    let listed = |with_backlog: bool| {
        new.iter()
            .map(|(claim, _, backlog)| match (with_backlog, backlog) {
                (false, _) => claim.to_string(),
                (true, Some(n)) => format!("{claim} (backlog {n})"),
                (true, None) => format!("{claim} (backlog unknown)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let event = if new.iter().all(|(_, _, backlog)| *backlog == Some(0)) {
        PipelineEvent {
            type_: EventType::Normal,
            reason: reason::CLAIMS_RETAINED,
            note: format!(
                "kept the claim(s) of relays scaled away, empty when their relays last reported: {}; a relay scaled back up to that ordinal reuses its claim, or delete it with kubectl delete pvc",
                listed(false)
            ),
        }
    } else {
        let back_to = new
            .iter()
            .filter_map(|(_, ordinal, _)| *ordinal)
            .max()
            .map_or(String::new(), |o| format!(" --replicas={}", o + 1));
        PipelineEvent {
            type_: EventType::Warning,
            reason: reason::CLAIMS_RETAINED,
            note: format!(
                "kept the claim(s) of relays scaled away, which may hold a backlog that is replayed only when the relays scale back up to them: {}; once the brokers are back, kubectl scale dwp/{pipeline}{back_to}, then scale down again when BACKLOG is 0",
                listed(true)
            ),
        }
    };
    events.push(event);
    events
}

/// The Event of a strategy flip (a step, the fallback, or the spec), if the strategy changed.
fn strategy_changed(before: Option<Strategy>, after: Strategy) -> Option<PipelineEvent> {
    let before = before.filter(|b| *b != after)?;
    Some(PipelineEvent {
        type_: EventType::Normal,
        reason: reason::STRATEGY_CHANGED,
        note: format!("strategy {before} → {after}"),
    })
}

/// Since when FailFast has been blocked: since Ready last turned False for want of providers.
fn blocked_since(prev: &DualWritePipelineStatus) -> Option<Timestamp> {
    prev.conditions
        .iter()
        .find(|c| {
            c.type_ == conditions::READY
                && c.status == Readiness::False.as_str()
                && c.reason == reason::PROVIDERS_NOT_READY
        })
        .map(|c| c.last_transition_time.0)
}

/// The relays whose report went stale, with their backlog when their last report was the one
/// they wrote on stopping (else unknown).
fn stale_backlogs(
    prev: &DualWritePipelineStatus,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Vec<step::StaleBacklog> {
    prev.relays
        .iter()
        .filter(|r| !rows::is_fresh(r, now, stale_after))
        .map(|r| step::StaleBacklog {
            relay: r.name.clone(),
            backlog: r
                .stopped
                .then(|| r.providers.iter().map(|p| p.backlog).sum()),
        })
        .collect()
}

/// Whether every fresh relay has reported since the current step began, running the strategy
/// the operator decided: only then do the step's gates judge what the relays did in it.
fn relays_in_step(
    prev: &DualWritePipelineStatus,
    now: Timestamp,
    stale_after: SignedDuration,
) -> Result<(), RelaysNotInStep> {
    let Some(current) = &prev.migration else {
        return Ok(());
    };
    let fresh: Vec<_> = prev
        .relays
        .iter()
        .filter(|r| rows::is_fresh(r, now, stale_after))
        .collect();
    if fresh.is_empty() {
        return Err(RelaysNotInStep::NoFreshReport);
    }
    for r in fresh {
        if r.reported_at.0 <= current.step_started_at.0 {
            return Err(RelaysNotInStep::NoReportSinceStepBegan {
                relay: r.name.clone(),
            });
        }
        if Some(r.strategy) != prev.strategy {
            return Err(RelaysNotInStep::OtherStrategy {
                relay: r.name.clone(),
                strategy: r.strategy,
            });
        }
    }
    Ok(())
}
