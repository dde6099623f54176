//! Every reason the operator writes, in one place: the reasons of conditions, of provider rows,
//! of migration step decisions and fallback flips, and of Events. CamelCase, as Kubernetes
//! reasons are; people and tools (kstatus, Argo CD's health check, alerts) match on them, so a
//! reason is a published name: change one only as an API change.
//!
//! Where two of those vocabularies mean the same thing, they share one constant (e.g.
//! [`PROVIDER_DOWN`] is a Ready/Degraded reason and the fallback's).

// Conditions (Ready, Reconciling, Stalled, Degraded).

/// Every provider the strategy writes is ready.
pub const ALL_PROVIDERS_READY: &str = "AllProvidersReady";
/// The strategy needs more providers than are ready (also a step gate that holds: `allHealthy`).
/// Ready's reason; also Reconciling's while FailFast waits for the automatic fallback, and
/// Stalled's when BestEffort has no provider up.
pub const PROVIDERS_NOT_READY: &str = "ProvidersNotReady";
/// A provider is down while the pipeline runs on the rest (also: fallback to BestEffort began,
/// a provider was down longer than `fallbackAfter`).
pub const PROVIDER_DOWN: &str = "ProviderDown";
/// No relay has reported yet (also a step gate that holds: the relays do not run the step yet).
pub const WAITING_FOR_RELAYS: &str = "WaitingForRelays";
/// Relays are missing, or run an older generation of the spec.
pub const RELAYS_UPDATING: &str = "RelaysUpdating";
/// Nothing is under way and nothing blocks.
pub const RECONCILED: &str = "Reconciled";
/// The spec breaks a rule (also the Warning Event that says which).
pub const INVALID_SPEC: &str = "InvalidSpec";
/// FailFast refuses every message: at once without an automatic fallback, else once the stall
/// limit has passed (Stalled's reason).
pub const FAIL_FAST_BLOCKED: &str = "FailFastBlocked";
/// A migration step change is under way.
pub const PROGRESSING: &str = "Progressing";
/// The API server refused an owned object the operator applied (a quota, an admission webhook,
/// a policy): Stalled and Ready say which object and what the API server said, and a Warning
/// Event of this reason records it. Retried with backoff.
pub const APPLY_FAILED: &str = "ApplyFailed";
/// `spec.relay.replicas` is 0: no relay runs and nothing is ingested, by request (Ready False,
/// Reconciling False: nothing is under way).
pub const SCALED_TO_ZERO: &str = "ScaledToZero";

/// A relay stopped on a configuration error and said why in its termination message (exit
/// code 2); also its Warning Event.
pub const RELAY_CONFIG_ERROR: &str = "RelayConfigError";
/// A relay's image cannot be pulled (ErrImagePull, ImagePullBackOff, InvalidImageName).
pub const RELAY_IMAGE_PULL_FAILED: &str = "RelayImagePullFailed";
/// A relay keeps crashing (CrashLoopBackOff).
pub const RELAY_CRASH_LOOPING: &str = "RelayCrashLooping";
/// No node can run a relay (PodScheduled=False, Unschedulable).
pub const RELAY_UNSCHEDULABLE: &str = "RelayUnschedulable";
/// A new pod template the operator made of its own (a new operator version, a new default
/// image) waits until fewer pipelines are rolling out (Reconciling's reason meanwhile).
pub const ROLLOUT_QUEUED: &str = "RolloutQueued";
/// Relays were scaled away and their claims are kept (Event: Warning when one may hold a
/// backlog, Normal when every one was reported empty).
pub const CLAIMS_RETAINED: &str = "ClaimsRetained";
/// A scale-down waits while a relay it removes holds a backlog (Reconciling's reason
/// meanwhile, and the Normal Event when the hold begins).
pub const SCALE_DOWN_DRAINING: &str = "ScaleDownDraining";
/// The relays a held scale-down removes have replayed their backlog: it proceeds (Event).
pub const SCALE_DOWN_DRAINED: &str = "ScaleDownDrained";
/// The spec asks for the held relays again: the hold ends with nothing removed (Event).
pub const SCALE_DOWN_CANCELLED: &str = "ScaleDownCancelled";
/// A held scale-down waited its limit and proceeded, leaving a backlog on a retained claim
/// (Warning Event).
pub const SCALE_DOWN_DRAIN_TIMED_OUT: &str = "ScaleDownDrainTimedOut";

// Provider rows.

/// No fresh relay report names the provider.
pub const NO_REPORT: &str = "NoReport";
/// A fresh relay report finds the provider down and gives no reason of its own (a relay's reason,
/// such as `AuthenticationFailed` or `SecretMissing`, is shown instead when it has one).
pub const REPORTED_DOWN: &str = "ReportedDown";
/// Every fresh relay report finds the provider healthy.
pub const REPORTED_UP: &str = "ReportedUp";

// Migration steps (status.migration.reason, the history, StepChanged notes).

/// The first reconcile of a migration entered its first (or target) step.
pub const STARTED: &str = "Started";
/// The current step no longer exists (steps were removed): moved to the last step.
pub const STEPS_CHANGED: &str = "StepsChanged";
/// `targetStep` or a promote request moved the migration forward, past any gates.
pub const PROMOTED: &str = "Promoted";
/// `targetStep` or a rollback request moved the migration back.
pub const ROLLED_BACK: &str = "RolledBack";
/// `targetStep` equals the current step: the gates do not advance it.
pub const PINNED: &str = "Pinned";
/// `paused` holds the current step (also a pause request's record and hold).
pub const PAUSED: &str = "Paused";
/// The last step is in force.
pub const COMPLETED: &str = "Completed";
/// The step's gates say `manual`: only a promote request or `targetStep` moves on.
pub const AWAITING_PROMOTION: &str = "AwaitingPromotion";
/// The step has not lasted its `minDuration` yet.
pub const MIN_DURATION_NOT_REACHED: &str = "MinDurationNotReached";
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
/// A request (`kubectl dualwrite abort`, an Argo CD action) moved the migration back to its
/// first step and holds it there (also `status.migration.held.reason`).
pub const ABORTED: &str = "Aborted";
/// A `resume` request lifted the hold a pause, rollback or abort request had put on the step.
pub const RESUMED: &str = "Resumed";
/// A pause, rollback or abort request holds the current step: the gates do not advance it.
pub const HELD: &str = "Held";
/// A request could not be carried out (the spec pins the migration, no such step, ...): a
/// Warning Event and `status.migration.lastRequest` say why.
pub const REQUEST_REFUSED: &str = "RequestRefused";
/// A verify request: the operator starts a consistency check Job (`lastRequest.job`).
pub const VERIFY_REQUESTED: &str = "VerifyRequested";

// Automatic fallback (status.fallback.reason and its Events; it begins with PROVIDER_DOWN).

/// Fallback ended: every provider is ready and caught up.
pub const RECOVERED: &str = "Recovered";
/// Fallback ended because it no longer applies (no `fallbackAfter`, or not FailFast).
pub const DISABLED: &str = "Disabled";

// Events of the reconciler.

/// An owned object (StatefulSet, Service, PodDisruptionBudget, RBAC) was created.
pub const CREATED: &str = "Created";
/// An owned object was changed.
pub const UPDATED: &str = "Updated";
/// An owned object was deleted (the PodDisruptionBudget when replicas drop to one, the relay
/// Deployment of an operator before StatefulSets).
pub const DELETED: &str = "Deleted";
/// A provider the relays write turned not ready (Warning Event, once per transition; the
/// fallback's own flip is a separate `ProviderDown` Warning).
pub const PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";
/// A provider that was not ready is ready again (Normal Event).
pub const PROVIDER_AVAILABLE: &str = "ProviderAvailable";
/// A provider's backlog reached 80% of `spec.handoff.maxMessages` (Warning Event, once per
/// crossing): past the limit the relays refuse to keep more and the provider needs
/// reconciliation.
pub const BACKLOG_NEAR_LIMIT: &str = "BacklogNearLimit";
/// A provider turned needs-reconciliation (its backlog passed `maxMessages` or `maxAge`, or it
/// missed an accepted message): replay cannot make it complete (Warning Event).
pub const NEEDS_RECONCILIATION: &str = "NeedsReconciliation";
/// The migration entered another step.
pub const STEP_CHANGED: &str = "StepChanged";
/// The effective strategy changed (a step, a fallback flip, or the spec).
pub const STRATEGY_CHANGED: &str = "StrategyChanged";
