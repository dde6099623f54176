//! The migration step machine: which step of `spec.migration` is in force, what that step means
//! (strategy, providers written, provider read), and the automatic fallback from FailFast to
//! BestEffort while a provider is down. Plain data in, plain data out, no I/O; tested with tables
//! of cases. The reconciler feeds it the previous status, the aggregated provider rows and `now`.
//!
//! ```text
//!   first reconcile ──▶ step = targetStep or 0                               (Started)
//!   step index gone ──▶ last step                                            (StepsChanged)
//!   targetStep ≠ cur ─▶ targetStep, no gates                                 (Promoted / RolledBack)
//!   targetStep = cur ─▶ stay                                                 (Pinned)
//!   paused ──────────▶ stay                                                  (Paused)
//!   last step ───────▶ stay                                                  (Completed)
//!   gates of cur ────▶ manual? minDuration? healthy? backlog? consistent?    (stay, naming the gate)
//!                   └▶ cur + 1                                               (GatesPassed)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    parse_duration, ConsistencyStatus, FallbackStatus, MigrationSpec, MigrationStatus,
    MigrationStep, ProviderStatus, StepRecord,
};
use crate::composite::Strategy;

/// How many step records `status.migration.history` keeps (the newest).
pub const HISTORY_LIMIT: usize = 20;

/// Reasons of step decisions and fallback flips (CamelCase, as Kubernetes reasons are).
pub mod reason {
    /// The first reconcile of a migration entered its first (or target) step.
    pub const STARTED: &str = "Started";
    /// The current step no longer exists (steps were removed): moved to the last step.
    pub const STEPS_CHANGED: &str = "StepsChanged";
    /// `targetStep` moved the migration forward, past any gates.
    pub const PROMOTED: &str = "Promoted";
    /// `targetStep` moved the migration back.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// `targetStep` equals the current step: the gates do not advance it.
    pub const PINNED: &str = "Pinned";
    /// `paused` holds the current step.
    pub const PAUSED: &str = "Paused";
    /// The last step is in force.
    pub const COMPLETED: &str = "Completed";
    /// The step's gates say `manual`: only `targetStep` moves on.
    pub const AWAITING_PROMOTION: &str = "AwaitingPromotion";
    /// The step has not lasted its `minDuration` yet.
    pub const MIN_DURATION_NOT_REACHED: &str = "MinDurationNotReached";
    pub const WAITING_FOR_RELAYS: &str = "WaitingForRelays";
    /// A provider written in this step is not ready (`allHealthy`).
    pub const PROVIDERS_NOT_READY: &str = "ProvidersNotReady";
    /// A provider still has a backlog to replay (`backlogEmpty`).
    pub const BACKLOG_NOT_EMPTY: &str = "BacklogNotEmpty";
    /// No consistency check since the step started found every provider complete (`consistent`).
    pub const CONSISTENCY_NOT_CONFIRMED: &str = "ConsistencyNotConfirmed";
    /// A gate cannot be read (e.g. a `minDuration` that is no duration); the step stays.
    pub const INVALID_GATE: &str = "InvalidGate";
    /// The migration lists no step at all (the schema forbids it; kept total for safety).
    pub const NO_STEPS: &str = "NoSteps";
    /// Every gate of the previous step was open: advanced one step.
    pub const GATES_PASSED: &str = "GatesPassed";

    /// Fallback to BestEffort: a provider was down longer than `fallbackAfter`.
    pub const PROVIDER_DOWN: &str = "ProviderDown";
    /// Fallback ended: every provider is ready and caught up.
    pub const RECOVERED: &str = "Recovered";
    /// Fallback ended because it no longer applies (no `fallbackAfter`, or not FailFast).
    pub const DISABLED: &str = "Disabled";
}

/// What [`decide_step`] looks at.
#[derive(Clone, Debug)]
pub struct StepInput<'a> {
    pub migration: &'a MigrationSpec,
    /// The previous status (None: the first reconcile of this migration).
    pub current: Option<&'a MigrationStatus>,
    /// The aggregated rows, one per provider in spec order (ready "True"/"False"/"Unknown").
    pub providers: &'a [ProviderStatus],
    pub consistency: Option<&'a ConsistencyStatus>,
    /// Ok when every fresh relay has reported since the step began, running its strategy; else
    /// why not. The gates judge the step by what the relays did in it, not by older reports.
    pub relays_in_step: Result<(), String>,
    pub now: Timestamp,
}

/// The step in force after this reconcile, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDecision {
    /// 0-based index into `spec.migration.steps`.
    pub step: u32,
    /// One of the constants in [`reason`].
    pub reason: &'static str,
    /// For people (`kubectl describe`).
    pub message: String,
    /// The step changed (or the migration started): record it and emit an Event.
    pub moved: bool,
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
pub fn gates(step: &MigrationStep) -> Result<Gates, String> {
    let g = step.gates.clone().unwrap_or_default();
    let min_duration = match &g.min_duration {
        None => SignedDuration::ZERO,
        Some(text) => {
            let d = parse_duration("gates.minDuration", text)?;
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
    let stay = |step: u32, reason: &'static str, message: String| StepDecision {
        step,
        reason,
        message,
        moved: false,
    };
    let go = |step: u32, reason: &'static str, message: String| StepDecision {
        step,
        reason,
        message,
        moved: true,
    };

    if m.steps.is_empty() {
        return stay(
            0,
            reason::NO_STEPS,
            "spec.migration lists no steps: add at least one".into(),
        );
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
        return go(
            step,
            reason::STARTED,
            format!("migration started at step {} ({how})", label(m, step)),
        );
    };
    let cur = current.current_step;

    if cur > last {
        return go(
            last,
            reason::STEPS_CHANGED,
            format!(
                "step {cur} ({}) no longer exists: the migration lists {} step(s); moved to the last step, {}",
                current.step_name,
                m.steps.len(),
                label(m, last)
            ),
        );
    }

    match target {
        Some(t) if t > cur => {
            return go(
                t,
                reason::PROMOTED,
                format!(
                    "promoted by targetStep from step {} to step {}",
                    label(m, cur),
                    label(m, t)
                ),
            );
        }
        Some(t) if t < cur => {
            return go(
                t,
                reason::ROLLED_BACK,
                format!(
                    "rolled back by targetStep from step {} to step {}",
                    label(m, cur),
                    label(m, t)
                ),
            );
        }
        Some(_) => {
            return stay(
                cur,
                reason::PINNED,
                format!("held at step {} by spec.migration.targetStep; unset targetStep to let the gates advance the migration", label(m, cur)),
            );
        }
        None => {}
    }

    if m.paused {
        return stay(
            cur,
            reason::PAUSED,
            format!(
                "spec.migration.paused is true: step {} stays in force",
                label(m, cur)
            ),
        );
    }
    if cur == last {
        return stay(
            cur,
            reason::COMPLETED,
            format!(
                "step {} is the last step: the migration is complete",
                label(m, cur)
            ),
        );
    }

    let step = &m.steps[cur as usize];
    let gates = match gates(step) {
        Ok(g) => g,
        Err(e) => {
            return stay(
                cur,
                reason::INVALID_GATE,
                format!("step {} stays: {e}", label(m, cur)),
            )
        }
    };
    let next = cur + 1;

    if gates.manual {
        return stay(
            cur,
            reason::AWAITING_PROMOTION,
            format!(
                "step {} is manual: set spec.migration.targetStep to {next} to continue",
                label(m, cur)
            ),
        );
    }

    let started = current.step_started_at.0;
    // A clock that went backwards counts as no time spent, never as a negative one.
    let spent = input.now.duration_since(started).max(SignedDuration::ZERO);
    if spent < gates.min_duration {
        let remaining = gates.min_duration - spent;
        let at = started
            .checked_add(gates.min_duration)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| "never".into());
        return stay(
            cur,
            reason::MIN_DURATION_NOT_REACHED,
            format!(
                "step {} has run {} of its minDuration {}: {} remain (until {at})",
                label(m, cur),
                human(spent),
                human(gates.min_duration),
                human(remaining)
            ),
        );
    }

    if let Err(why) = &input.relays_in_step {
        return stay(
            cur,
            reason::WAITING_FOR_RELAYS,
            format!(
                "step {} stays until the relays run it: {why}",
                label(m, cur)
            ),
        );
    }

    if gates.all_healthy {
        let active = step_providers(step, input.providers.iter().map(|p| p.name.as_str()));
        let not_ready: Vec<String> = active
            .iter()
            .filter_map(
                |name| match input.providers.iter().find(|p| p.name == *name) {
                    Some(p) if p.ready == "True" => None,
                    Some(p) if p.message.is_empty() => Some(format!("{} ({})", p.name, p.ready)),
                    Some(p) => Some(format!("{} ({}: {})", p.name, p.ready, p.message)),
                    None => Some(format!("{name} (Unknown: no status row)")),
                },
            )
            .collect();
        if !not_ready.is_empty() {
            return stay(
                cur,
                reason::PROVIDERS_NOT_READY,
                format!(
                    "step {} waits for its providers to be ready: {}",
                    label(m, cur),
                    not_ready.join("; ")
                ),
            );
        }
    }

    if gates.backlog_empty {
        // Every backlog, not only the step's providers': a provider this step stopped writing may
        // still be replaying what it missed, and the next step may read from it.
        let backlogs: Vec<String> = input
            .providers
            .iter()
            .filter(|p| p.backlog > 0)
            .map(|p| format!("{}={}", p.name, p.backlog))
            .collect();
        if !backlogs.is_empty() {
            return stay(
                cur,
                reason::BACKLOG_NOT_EMPTY,
                format!(
                    "step {} waits for backlogs to drain: {}",
                    label(m, cur),
                    backlogs.join(", ")
                ),
            );
        }
    }

    if gates.consistent {
        let why = match input.consistency {
            None => Some("no consistency check has run yet".to_string()),
            Some(c) if c.checked_at.0 < started => Some(format!(
                "the last consistency check ({}) ran before the step started ({started})",
                c.checked_at.0
            )),
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
                Some(format!(
                    "the consistency check at {} found differences{detail}",
                    c.checked_at.0
                ))
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            return stay(
                cur,
                reason::CONSISTENCY_NOT_CONFIRMED,
                format!(
                    "step {} waits for a clean consistency check: {why}",
                    label(m, cur)
                ),
            );
        }
    }

    go(
        next,
        reason::GATES_PASSED,
        format!(
            "the gates of step {} passed: advanced to step {}",
            label(m, cur),
            label(m, next)
        ),
    )
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

/// What a step means: (strategy, providers written in spec order, provider consumers read from).
pub type StepView = (Strategy, Vec<String>, Option<String>);

/// What step `step` means: its strategy, the providers it writes (default all, in spec order)
/// and the provider consumers read from (default the first written). A step past the end means
/// the last step; a migration without steps means FailFast over all providers.
pub fn step_view(migration: &MigrationSpec, step: u32, all_providers: &[String]) -> StepView {
    let Some(s) = migration
        .steps
        .get((step as usize).min(migration.steps.len().saturating_sub(1)))
    else {
        return (
            Strategy::default(),
            all_providers.to_vec(),
            all_providers.first().cloned(),
        );
    };
    let active = step_providers(s, all_providers.iter().map(String::as_str));
    let read_from = s.read_from.clone().or_else(|| active.first().cloned());
    (s.strategy, active, read_from)
}

/// `prev` with a record of entering `decision.step` appended when the decision moved, trimmed
/// to the newest [`HISTORY_LIMIT`] records.
pub fn record_history(
    prev: &[StepRecord],
    decision: &StepDecision,
    migration: &MigrationSpec,
    now: Timestamp,
) -> Vec<StepRecord> {
    let mut history = prev.to_vec();
    if decision.moved {
        let step = migration.steps.get(decision.step as usize);
        history.push(StepRecord {
            step: decision.step,
            name: step.map(|s| s.name.clone()).unwrap_or_default(),
            strategy: step.map(|s| s.strategy).unwrap_or_default(),
            reason: decision.reason.to_string(),
            entered_at: Time(now),
        });
    }
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..excess);
    history
}

/// `status.migration` after `decision`: the step, its name, why, since when (now if the step
/// moved, else the previous start) and the history.
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
    }
}

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

/// The active providers that have been ready "False" for at least `fallback_after`, with the
/// time they went down. Unknown rows never count: no report is no proof of an outage.
fn down_too_long<'a>(
    input: &FallbackInput<'a>,
    after: SignedDuration,
) -> Vec<(&'a ProviderStatus, Timestamp)> {
    input
        .providers
        .iter()
        .filter(|p| input.active.contains(&p.name) && p.ready == "False")
        .filter_map(|p| {
            let since = p.last_transition_time.as_ref()?.0;
            (input.now.duration_since(since) >= after).then_some((p, since))
        })
        .collect()
}

/// The active providers that keep a fallback in force: not ready "True", or a backlog left.
fn not_caught_up(input: &FallbackInput<'_>) -> Vec<String> {
    input
        .active
        .iter()
        .filter_map(
            |name| match input.providers.iter().find(|p| p.name == *name) {
                None => Some(format!("{name} has no status row")),
                Some(p) if p.ready != "True" => Some(format!("{name} is not ready ({})", p.ready)),
                Some(p) if p.backlog > 0 => Some(format!("{name} has a backlog of {}", p.backlog)),
                Some(_) => None,
            },
        )
        .collect()
}

/// The strategy in force and `status.fallback`. Under FailFast with `fallback_after` set, an
/// active provider ready "False" for at least that long flips to BestEffort (`ProviderDown`,
/// since now); the flip holds until every active provider is ready "True" with an empty backlog
/// (then FailFast, `Recovered`, since now). Otherwise the strategy stands and no fallback
/// applies; a fallback that was in force ends with `Disabled`. An inactive record (Recovered,
/// Disabled) is kept while nothing changes, so `kubectl describe` shows the last flip.
pub fn decide_fallback(input: &FallbackInput<'_>) -> (Strategy, Option<FallbackStatus>) {
    let was_active = input.previous.is_some_and(|p| p.active);
    let after = match input.fallback_after {
        Some(after) if input.strategy == Strategy::FailFast => after,
        _ => {
            let status = was_active.then(|| FallbackStatus {
                active: false,
                reason: reason::DISABLED.into(),
                since: Some(Time(input.now)),
            });
            return (input.strategy, status);
        }
    };
    if was_active {
        if not_caught_up(input).is_empty() {
            let status = FallbackStatus {
                active: false,
                reason: reason::RECOVERED.into(),
                since: Some(Time(input.now)),
            };
            return (Strategy::FailFast, Some(status));
        }
        let mut status = input.previous.cloned().unwrap_or_default();
        status.since = status.since.or(Some(Time(input.now)));
        return (Strategy::BestEffort, Some(status));
    }
    if !down_too_long(input, after).is_empty() {
        let status = FallbackStatus {
            active: true,
            reason: reason::PROVIDER_DOWN.into(),
            since: Some(Time(input.now)),
        };
        return (Strategy::BestEffort, Some(status));
    }
    (input.strategy, input.previous.cloned())
}

/// The Event for a fallback flip (reason, note), or None when `next` does not flip it. The note
/// names the providers: down since when, or what kept the fallback until now.
pub fn fallback_event(
    input: &FallbackInput<'_>,
    next: Option<&FallbackStatus>,
) -> Option<(&'static str, String)> {
    let was_active = input.previous.is_some_and(|p| p.active);
    let is_active = next.is_some_and(|n| n.active);
    match (was_active, is_active) {
        (false, true) => {
            let after = input.fallback_after.unwrap_or(SignedDuration::ZERO);
            let down: Vec<String> = down_too_long(input, after)
                .iter()
                .map(|(p, since)| {
                    let why = if p.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", p.message)
                    };
                    format!("{} down since {since}{why}", p.name)
                })
                .collect();
            Some((
                reason::PROVIDER_DOWN,
                format!(
                    "FailFast → BestEffort: {} (longer than fallbackAfter {}); missed writes go to the backlog",
                    down.join("; "),
                    human(after)
                ),
            ))
        }
        (true, false) => {
            let reason = if next.is_some_and(|n| n.reason == reason::RECOVERED) {
                reason::RECOVERED
            } else {
                reason::DISABLED
            };
            let since = input
                .previous
                .and_then(|p| p.since.as_ref())
                .map(|t| format!(" (in force since {})", t.0))
                .unwrap_or_default();
            let why = if reason == reason::RECOVERED {
                "every provider is ready and its backlog replayed".to_string()
            } else {
                format!("automatic fallback no longer applies to {}", input.strategy)
            };
            Some((
                reason,
                format!("fallback ended{since}: {why}; strategy {}", input.strategy),
            ))
        }
        _ => None,
    }
}

/// `1h5m`, `4m30s`, `45s`: a duration as people write it (whole seconds).
fn human(d: SignedDuration) -> String {
    let total = d.as_secs().max(0);
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// Three steps over nats and kafka: dual-write FailFast (gates from `gates0`), kafka-only
    /// BestEffort, and a final FailFast step.
    fn migration(gates0: &str, extra: &str) -> MigrationSpec {
        let steps = [
            format!("{{name: dual, strategy: FailFast, gates: {gates0}}}"),
            "{name: kafka-first, strategy: BestEffort, providers: [kafka], readFrom: kafka}".into(),
            "{name: done, strategy: FailFast, providers: [kafka]}".into(),
        ];
        serde_yaml::from_str(&format!("{{steps: [{}]{extra}}}", steps.join(", "))).unwrap()
    }

    fn row(name: &str, ready: &str, backlog: u64) -> ProviderStatus {
        ProviderStatus {
            name: name.into(),
            kind: "nats".into(),
            ready: ready.into(),
            reason: String::new(),
            message: if ready == "False" {
                "connection refused".into()
            } else {
                String::new()
            },
            backlog,
            ..ProviderStatus::default()
        }
    }

    fn status(step: u32, started: i64) -> MigrationStatus {
        MigrationStatus {
            current_step: step,
            step_name: format!("step-{step}"),
            reason: reason::STARTED.into(),
            message: String::new(),
            step_started_at: Time(t(started)),
            history: Vec::new(),
        }
    }

    fn consistency(checked: i64, ok: bool) -> ConsistencyStatus {
        ConsistencyStatus {
            checked_at: Time(t(checked)),
            seen: BTreeMap::new(),
            missing: if ok {
                BTreeMap::new()
            } else {
                BTreeMap::from([("kafka".to_string(), 3)])
            },
            duplicates: BTreeMap::new(),
            consistent: ok,
        }
    }

    const OPEN: &str = "{}";

    struct Case {
        name: &'static str,
        gates0: &'static str,
        extra: &'static str,
        current: Option<(u32, i64)>,
        rows: Vec<ProviderStatus>,
        consistency: Option<ConsistencyStatus>,
        now: i64,
        want: (u32, &'static str, bool),
        /// Words the message must hold.
        says: &'static [&'static str],
    }

    fn healthy() -> Vec<ProviderStatus> {
        vec![row("nats", "True", 0), row("kafka", "True", 0)]
    }

    #[test]
    fn decide_step_table() {
        let cases = vec![
            Case {
                name: "first reconcile starts at step 0",
                gates0: OPEN,
                extra: "",
                current: None,
                rows: healthy(),
                consistency: None,
                now: 0,
                want: (0, reason::STARTED, true),
                says: &["step 0 (dual)"],
            },
            Case {
                name: "first reconcile starts at targetStep",
                gates0: OPEN,
                extra: ", targetStep: 1",
                current: None,
                rows: healthy(),
                consistency: None,
                now: 0,
                want: (1, reason::STARTED, true),
                says: &["targetStep"],
            },
            Case {
                name: "first reconcile clamps a target past the end",
                gates0: OPEN,
                extra: ", targetStep: 9",
                current: None,
                rows: healthy(),
                consistency: None,
                now: 0,
                want: (2, reason::STARTED, true),
                says: &[],
            },
            Case {
                name: "targetStep higher promotes past closed gates",
                gates0: "{manual: true}",
                extra: ", targetStep: 2",
                current: Some((0, 0)),
                rows: vec![row("nats", "False", 5)],
                consistency: None,
                now: 1,
                want: (2, reason::PROMOTED, true),
                says: &["from step 0 (dual) to step 2 (done)"],
            },
            Case {
                name: "targetStep lower rolls back",
                gates0: OPEN,
                extra: ", targetStep: 0",
                current: Some((2, 0)),
                rows: healthy(),
                consistency: None,
                now: 1,
                want: (0, reason::ROLLED_BACK, true),
                says: &["rolled back"],
            },
            Case {
                name: "targetStep equal pins even with open gates",
                gates0: OPEN,
                extra: ", targetStep: 0",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1000,
                want: (0, reason::PINNED, false),
                says: &["unset targetStep"],
            },
            Case {
                name: "paused holds open gates",
                gates0: OPEN,
                extra: ", paused: true",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1000,
                want: (0, reason::PAUSED, false),
                says: &["paused"],
            },
            Case {
                name: "paused with a target still moves",
                gates0: OPEN,
                extra: ", paused: true, targetStep: 1",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1,
                want: (1, reason::PROMOTED, true),
                says: &[],
            },
            Case {
                name: "last step is completed",
                gates0: OPEN,
                extra: "",
                current: Some((2, 0)),
                rows: healthy(),
                consistency: None,
                now: 1000,
                want: (2, reason::COMPLETED, false),
                says: &["complete"],
            },
            Case {
                name: "manual gate awaits promotion",
                gates0: "{manual: true}",
                extra: "",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1000,
                want: (0, reason::AWAITING_PROMOTION, false),
                says: &["targetStep to 1"],
            },
            Case {
                name: "minDuration not reached",
                gates0: "{minDuration: 10m}",
                extra: "",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 270,
                want: (0, reason::MIN_DURATION_NOT_REACHED, false),
                says: &["5m30s remain", "of its minDuration 10m"],
            },
            Case {
                name: "minDuration reached",
                gates0: "{minDuration: 10m}",
                extra: "",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 600,
                want: (1, reason::GATES_PASSED, true),
                says: &["advanced to step 1 (kafka-first)"],
            },
            Case {
                name: "clock behind the step start waits the full minDuration",
                gates0: "{minDuration: 1m}",
                extra: "",
                current: Some((0, 100)),
                rows: healthy(),
                consistency: None,
                now: 50,
                want: (0, reason::MIN_DURATION_NOT_REACHED, false),
                says: &["1m remain"],
            },
            Case {
                name: "provider down blocks",
                gates0: OPEN,
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "True", 0), row("kafka", "False", 0)],
                consistency: None,
                now: 1,
                want: (0, reason::PROVIDERS_NOT_READY, false),
                says: &["kafka (False: connection refused)"],
            },
            Case {
                name: "unknown provider blocks",
                gates0: OPEN,
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "Unknown", 0), row("kafka", "True", 0)],
                consistency: None,
                now: 1,
                want: (0, reason::PROVIDERS_NOT_READY, false),
                says: &["nats (Unknown)"],
            },
            Case {
                name: "provider not in the step does not block",
                gates0: OPEN,
                extra: "",
                current: Some((1, 0)),
                rows: vec![row("nats", "False", 0), row("kafka", "True", 0)],
                consistency: None,
                now: 1,
                want: (2, reason::GATES_PASSED, true),
                says: &[],
            },
            Case {
                name: "allHealthy off lets a down provider pass",
                gates0: "{allHealthy: false}",
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "True", 0), row("kafka", "False", 0)],
                consistency: None,
                now: 1,
                want: (1, reason::GATES_PASSED, true),
                says: &[],
            },
            Case {
                name: "backlog blocks",
                gates0: OPEN,
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "True", 0), row("kafka", "True", 42)],
                consistency: None,
                now: 1,
                want: (0, reason::BACKLOG_NOT_EMPTY, false),
                says: &["kafka=42"],
            },
            Case {
                name: "backlog of a provider outside the step still blocks",
                gates0: OPEN,
                extra: "",
                current: Some((1, 0)),
                rows: vec![row("nats", "True", 7), row("kafka", "True", 0)],
                consistency: None,
                now: 1,
                want: (1, reason::BACKLOG_NOT_EMPTY, false),
                says: &["nats=7"],
            },
            Case {
                name: "backlog gate disabled",
                gates0: "{backlogEmpty: false}",
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "True", 0), row("kafka", "True", 42)],
                consistency: None,
                now: 1,
                want: (1, reason::GATES_PASSED, true),
                says: &[],
            },
            Case {
                name: "consistency required and missing",
                gates0: "{consistent: true}",
                extra: "",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1,
                want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
                says: &["no consistency check"],
            },
            Case {
                name: "consistency checked before the step started",
                gates0: "{consistent: true}",
                extra: "",
                current: Some((0, 100)),
                rows: healthy(),
                consistency: Some(consistency(50, true)),
                now: 200,
                want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
                says: &["before the step started"],
            },
            Case {
                name: "consistency check found differences",
                gates0: "{consistent: true}",
                extra: "",
                current: Some((0, 100)),
                rows: healthy(),
                consistency: Some(consistency(150, false)),
                now: 200,
                want: (0, reason::CONSISTENCY_NOT_CONFIRMED, false),
                says: &["missing: kafka=3"],
            },
            Case {
                name: "consistency ok",
                gates0: "{consistent: true}",
                extra: "",
                current: Some((0, 100)),
                rows: healthy(),
                consistency: Some(consistency(150, true)),
                now: 200,
                want: (1, reason::GATES_PASSED, true),
                says: &[],
            },
            Case {
                name: "consistency not required ignores a bad check",
                gates0: OPEN,
                extra: "",
                current: Some((0, 100)),
                rows: healthy(),
                consistency: Some(consistency(150, false)),
                now: 200,
                want: (1, reason::GATES_PASSED, true),
                says: &[],
            },
            Case {
                name: "manual wins over every other gate",
                gates0: "{manual: true, minDuration: 1h}",
                extra: "",
                current: Some((0, 0)),
                rows: vec![row("nats", "False", 3)],
                consistency: None,
                now: 1,
                want: (0, reason::AWAITING_PROMOTION, false),
                says: &[],
            },
            Case {
                name: "steps removed: clamp to the last",
                gates0: OPEN,
                extra: "",
                current: Some((7, 0)),
                rows: healthy(),
                consistency: None,
                now: 1,
                want: (2, reason::STEPS_CHANGED, true),
                says: &["step 7 (step-7) no longer exists", "last step, 2 (done)"],
            },
            Case {
                name: "steps removed beats targetStep",
                gates0: OPEN,
                extra: ", targetStep: 0",
                current: Some((7, 0)),
                rows: healthy(),
                consistency: None,
                now: 1,
                want: (2, reason::STEPS_CHANGED, true),
                says: &[],
            },
            Case {
                name: "unreadable minDuration holds the step",
                gates0: "{minDuration: soon}",
                extra: "",
                current: Some((0, 0)),
                rows: healthy(),
                consistency: None,
                now: 1000,
                want: (0, reason::INVALID_GATE, false),
                says: &["soon"],
            },
        ];
        assert!(cases.len() >= 20);
        for c in cases {
            let m = migration(c.gates0, c.extra);
            let current = c.current.map(|(step, started)| status(step, started));
            let input = StepInput {
                migration: &m,
                current: current.as_ref(),
                providers: &c.rows,
                consistency: c.consistency.as_ref(),
                relays_in_step: Ok(()),
                now: t(c.now),
            };
            let d = decide_step(&input);
            assert_eq!(
                (d.step, d.reason, d.moved),
                c.want,
                "{}: {}",
                c.name,
                d.message
            );
            assert!(!d.message.is_empty(), "{}", c.name);
            for word in c.says {
                assert!(
                    d.message.contains(word),
                    "{}: {:?} lacks {word:?}",
                    c.name,
                    d.message
                );
            }
        }
    }

    #[test]
    fn no_steps_does_not_panic() {
        let m = MigrationSpec {
            steps: vec![],
            paused: false,
            target_step: Some(3),
            fallback_after: None,
        };
        let input = StepInput {
            migration: &m,
            current: None,
            providers: &[],
            consistency: None,
            relays_in_step: Ok(()),
            now: t(0),
        };
        let d = decide_step(&input);
        assert_eq!((d.step, d.reason, d.moved), (0, reason::NO_STEPS, false));
        let all = vec!["a".to_string()];
        assert_eq!(
            step_view(&m, 0, &all),
            (Strategy::FailFast, all.clone(), Some("a".into()))
        );
    }

    #[test]
    fn step_view_defaults() {
        let m: MigrationSpec = serde_yaml::from_str(
            "steps:
               - {name: all, strategy: FailFast}
               - {name: some, strategy: BestEffort, providers: [kafka, nats]}
               - {name: read-b, strategy: BestEffort, providers: [kafka, nats], readFrom: kafka}
               - {name: one, strategy: FailFast, providers: [kafka]}",
        )
        .unwrap();
        let all: Vec<String> = ["nats", "kafka", "memory"].map(String::from).to_vec();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(u32, StepView)> = vec![
            (
                0,
                (
                    Strategy::FailFast,
                    s(&["nats", "kafka", "memory"]),
                    Some("nats".into()),
                ),
            ),
            // Spec order, not the step's order; readFrom defaults to the first written.
            (
                1,
                (
                    Strategy::BestEffort,
                    s(&["nats", "kafka"]),
                    Some("nats".into()),
                ),
            ),
            (
                2,
                (
                    Strategy::BestEffort,
                    s(&["nats", "kafka"]),
                    Some("kafka".into()),
                ),
            ),
            (3, (Strategy::FailFast, s(&["kafka"]), Some("kafka".into()))),
            // Past the end: the last step.
            (9, (Strategy::FailFast, s(&["kafka"]), Some("kafka".into()))),
        ];
        for (step, want) in cases {
            assert_eq!(step_view(&m, step, &all), want, "step {step}");
        }
    }

    #[test]
    fn gates_defaults() {
        let m = migration(OPEN, "");
        let g = gates(&m.steps[1]).unwrap();
        assert_eq!(
            g,
            Gates {
                all_healthy: true,
                backlog_empty: true,
                consistent: false,
                manual: false,
                min_duration: SignedDuration::ZERO
            }
        );
        let m = migration(
            "{minDuration: 1h30m, allHealthy: false, consistent: true}",
            "",
        );
        let g = gates(&m.steps[0]).unwrap();
        assert_eq!(g.min_duration, SignedDuration::from_secs(5400));
        assert!(!g.all_healthy && g.consistent && g.backlog_empty);
    }

    fn record(step: u32) -> StepRecord {
        StepRecord {
            step,
            name: format!("s{step}"),
            strategy: Strategy::FailFast,
            reason: "x".into(),
            entered_at: Time(t(step as i64)),
        }
    }

    #[test]
    fn history_appends_on_move_and_keeps_the_newest_twenty() {
        let m = migration(OPEN, "");
        let moved = StepDecision {
            step: 1,
            reason: reason::GATES_PASSED,
            message: String::new(),
            moved: true,
        };
        let stayed = StepDecision {
            step: 1,
            reason: reason::PAUSED,
            message: String::new(),
            moved: false,
        };

        let h = record_history(&[], &moved, &m, t(99));
        assert_eq!(h.len(), 1);
        assert_eq!(
            (
                h[0].step,
                h[0].name.as_str(),
                h[0].strategy,
                h[0].reason.as_str()
            ),
            (1, "kafka-first", Strategy::BestEffort, "GatesPassed")
        );
        assert_eq!(h[0].entered_at, Time(t(99)));

        let full: Vec<StepRecord> = (0..HISTORY_LIMIT as u32).map(record).collect();
        assert_eq!(record_history(&full, &stayed, &m, t(99)), full);
        let h = record_history(&full, &moved, &m, t(99));
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].step, 1, "the oldest record went");
        assert_eq!(h.last().unwrap().entered_at, Time(t(99)));

        // An over-long history (e.g. written by an older operator) is trimmed too.
        let long: Vec<StepRecord> = (0..25).map(record).collect();
        let h = record_history(&long, &stayed, &m, t(99));
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].step, 5);
    }

    #[test]
    fn next_migration_status_keeps_the_start_unless_moved() {
        let m = migration("{minDuration: 10m}", "");
        let rows = healthy();
        let prev = status(0, 0);

        let waiting = StepInput {
            migration: &m,
            current: Some(&prev),
            providers: &rows,
            consistency: None,
            relays_in_step: Ok(()),
            now: t(60),
        };
        let d = decide_step(&waiting);
        let s = next_migration_status(&waiting, &d);
        assert_eq!(
            (s.current_step, s.step_name.as_str(), s.reason.as_str()),
            (0, "dual", reason::MIN_DURATION_NOT_REACHED)
        );
        assert_eq!(s.step_started_at, Time(t(0)));
        assert!(s.history.is_empty());

        let passing = StepInput {
            relays_in_step: Ok(()),
            now: t(600),
            ..waiting
        };
        let d = decide_step(&passing);
        let s = next_migration_status(&passing, &d);
        assert_eq!(
            (s.current_step, s.step_name.as_str(), s.reason.as_str()),
            (1, "kafka-first", reason::GATES_PASSED)
        );
        assert_eq!(s.step_started_at, Time(t(600)));
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.message, d.message);

        let first = StepInput {
            current: None,
            relays_in_step: Ok(()),
            now: t(5),
            ..waiting
        };
        let s = next_migration_status(&first, &decide_step(&first));
        assert_eq!(
            (s.current_step, s.reason.as_str(), s.step_started_at.clone()),
            (0, reason::STARTED, Time(t(5)))
        );
        assert_eq!(s.history.len(), 1);
    }

    fn down_row(name: &str, ready: &str, since: i64, backlog: u64) -> ProviderStatus {
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", NOW - 60, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", NOW - 120, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", NOW - 600, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", 0, 9),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "True", 900, 17),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "Unknown", 900, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "True", 900, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "True", 900, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", 0, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", 0, 0),
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
                    down_row("nats", "False", 0, 0),
                    down_row("kafka", "True", 0, 0),
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
                    down_row("nats", "False", 0, 50),
                    down_row("kafka", "True", 0, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", 0, 0),
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
                    down_row("nats", "True", 0, 0),
                    down_row("kafka", "False", 0, 0),
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
                    down_row("nats", "Unknown", 0, 0),
                    down_row("kafka", "Unknown", 0, 0),
                ],
                previous: None,
                want: (FailFast, None),
            },
            Case {
                name: "False without a transition time does not trigger",
                strategy: FailFast,
                after: Some(120),
                active: both,
                rows: vec![down_row("nats", "True", 0, 0), row("kafka", "False", 0)],
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
            assert_eq!(decide_fallback(&input), c.want, "{}", c.name);
        }
    }

    #[test]
    fn fallback_events_name_the_provider_on_flips_only() {
        let active = vec!["nats".to_string(), "kafka".to_string()];
        let rows = vec![
            down_row("nats", "True", 0, 0),
            down_row("kafka", "False", 100, 0),
        ];
        let mut input = FallbackInput {
            strategy: Strategy::FailFast,
            fallback_after: Some(SignedDuration::from_secs(120)),
            active: &active,
            providers: &rows,
            previous: None,
            now: t(400),
        };
        let (_, next) = decide_fallback(&input);
        let (reason, note) = fallback_event(&input, next.as_ref()).expect("a flip");
        assert_eq!(reason, reason::PROVIDER_DOWN);
        assert!(
            note.contains("kafka down since")
                && note.contains("connection refused")
                && note.contains("fallbackAfter 2m"),
            "{note}"
        );

        // Still down: no new Event.
        input.previous = next.as_ref();
        let (_, again) = decide_fallback(&input);
        assert_eq!(fallback_event(&input, again.as_ref()), None);

        let healed = vec![
            down_row("nats", "True", 0, 0),
            down_row("kafka", "True", 500, 0),
        ];
        let back = FallbackInput {
            providers: &healed,
            now: t(600),
            ..input
        };
        let (strategy, recovered) = decide_fallback(&back);
        assert_eq!(strategy, Strategy::FailFast);
        let (reason, note) = fallback_event(&back, recovered.as_ref()).expect("a flip back");
        assert_eq!(reason, reason::RECOVERED);
        assert!(note.contains("in force since"), "{note}");
    }

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (270, "4m30s"),
            (3600, "1h"),
            (3900, "1h5m"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(human(SignedDuration::from_secs(secs)), want);
        }
    }
}
