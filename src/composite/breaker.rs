//! A lane's circuit breaker: once a provider is known down, its writes are refused at once
//! instead of each waiting the publish timeout.
//!
//! ```text
//!            FAILURES_TO_OPEN timeouts/connection failures in a row,
//!            or health says the broker is unreachable
//!   Closed ──────────────────────────────────────────────► Open ──(refuse at once)
//!     ▲                                                     │ one write a BREAKER_PROBE_INTERVAL (or at
//!     │ the probe (or any write) is acknowledged            ▼ once when health says up again)
//!     └──────────────────────────────────────────────── HalfOpen: one probe write in flight
//!                                     probe failed: Open ◄──┘
//! ```
//!
//! - Closed: every write goes through; the publish timeout bounds the first failures.
//! - Open: writes are refused with `Unavailable`, naming the provider and since when; FailFast
//!   answers 503 at once and BestEffort defers the write to the backlog at once.
//! - HalfOpen: one probe write at a time goes through, at most one per [`BREAKER_PROBE_INTERVAL`] while
//!   health says down (immediately when health says up again); its acknowledgement closes the
//!   breaker, its failure keeps it open.
//! - The breaker does not close on health alone: only an acknowledged write shows that writes
//!   go through (a connection can be up while JetStream or a partition leader is not).
//!
//! Only failures that say the broker cannot be reached count (timeouts, `Unavailable`): a
//! message the broker rejects, or a full memory queue, says nothing about the connection.
//! Health is read at most every [`HEALTH_RECHECK`] (a publish costs an atomic load and a clock
//! read while closed). A std `Mutex` guards the open state: taken only while the breaker is
//! open or changing, never across an await.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::time::Instant;

use crate::provider::{Health, ProviderError};

/// Timeouts or connection failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// At most one probe write per interval while the breaker is open and health says down.
pub const BREAKER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a write looks at the provider's health (cached in between).
pub const HEALTH_RECHECK: Duration = Duration::from_millis(50);

/// The breaker's state as `/stats` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A provider's breaker in `/stats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerRow {
    pub state: BreakerState,
    /// When it opened (unset while closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Why it opened (unset while closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Timeouts and connection failures in a row.
    pub consecutive_failures: u32,
    /// Writes refused while open, since the relay started.
    pub refused: u64,
}

struct Opened {
    since: DateTime<Utc>,
    reason: String,
    probing: bool,
    next_probe: Instant,
}

/// What a write may do now.
pub(super) enum Admit<'a> {
    /// Closed: write.
    Write,
    /// Open: this write is the probe; its outcome goes to [`Probe::done`].
    Probe(Probe<'a>),
    /// Open: refused, with the error to answer.
    Refuse(ProviderError),
}

/// The one probe write in flight; dropped without [`Probe::done`] (its request was abandoned),
/// it frees the slot for the next probe.
pub(super) struct Probe<'a>(&'a Breaker);

impl Probe<'_> {
    pub(super) fn done(self, outcome: Result<(), &ProviderError>) {
        self.0.record(outcome);
        // Drop frees the probe slot.
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.0.lock().as_mut() {
            o.probing = false;
        }
    }
}

pub(super) struct Breaker {
    provider: String,
    /// Fast path: set while `opened` is `Some`.
    open: AtomicBool,
    opened: Mutex<Option<Opened>>,
    consecutive: AtomicU32,
    refused: AtomicU64,
    /// When health was last read, in ms since `epoch`.
    health_read_at: AtomicU64,
    /// What health said then: up (a flip to up lets a probe go at once).
    health_up: AtomicBool,
    epoch: Instant,
}

impl Breaker {
    pub(super) fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_string(),
            open: AtomicBool::new(false),
            opened: Mutex::new(None),
            consecutive: AtomicU32::new(0),
            refused: AtomicU64::new(0),
            health_read_at: AtomicU64::new(u64::MAX),
            health_up: AtomicBool::new(true),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Opened>> {
        self.opened.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides a write. `health` is read only when the cached reading is older than
    /// [`HEALTH_RECHECK`].
    pub(super) fn admit(&self, health: impl FnOnce() -> Health) -> Admit<'_> {
        let now = Instant::now();
        self.look_at_health(now, health);
        if !self.open.load(Ordering::Acquire) {
            return Admit::Write;
        }
        let mut opened = self.lock();
        let Some(o) = opened.as_mut() else {
            return Admit::Write;
        };
        if !o.probing && now >= o.next_probe {
            o.probing = true;
            o.next_probe = now + BREAKER_PROBE_INTERVAL;
            return Admit::Probe(Probe(self));
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Admit::Refuse(self.refusal(o))
    }

    /// The refusal a write would get now (open, and no probe due), without taking a probe
    /// slot: lets FailFast refuse a message before any provider is written, instead of writing
    /// the healthy ones and then answering 503 for a message they hold.
    pub(super) fn refusal_now(&self, health: impl FnOnce() -> Health) -> Option<ProviderError> {
        let now = Instant::now();
        self.look_at_health(now, health);
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let opened = self.lock();
        let o = opened.as_ref()?;
        if !o.probing && now >= o.next_probe {
            return None;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(self.refusal(o))
    }

    fn refusal(&self, o: &Opened) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.provider.clone(),
            reason: format!(
                "circuit breaker open since {} ({}); not written. One probe write a second \
                 goes through, and its success closes the breaker",
                o.since.to_rfc3339_opts(SecondsFormat::Millis, true),
                o.reason
            ),
        }
    }

    fn look_at_health(&self, now: Instant, health: impl FnOnce() -> Health) {
        let ms = now.duration_since(self.epoch).as_millis() as u64;
        let read_at = self.health_read_at.load(Ordering::Relaxed);
        let due =
            read_at == u64::MAX || ms.saturating_sub(read_at) >= HEALTH_RECHECK.as_millis() as u64;
        // One caller reads health per period; the others use the cached reading.
        if !due
            || self
                .health_read_at
                .compare_exchange(read_at, ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let h = health();
        let was_up = self.health_up.swap(h.healthy, Ordering::AcqRel);
        if !self.open.load(Ordering::Acquire) {
            if h.says_unreachable() {
                self.open_now(
                    h.since,
                    format!("its health says {}: {}", h.reason, h.message),
                    now,
                );
            }
        } else if h.healthy && !was_up {
            // Health says up again (reconnected): probe now rather than at the next interval.
            if let Some(o) = self.lock().as_mut() {
                o.next_probe = now;
            }
        }
    }

    fn open_now(&self, since: DateTime<Utc>, reason: String, now: Instant) {
        let mut opened = self.lock();
        if opened.is_some() {
            return;
        }
        tracing::warn!(provider = %self.provider, %reason, "circuit breaker open: writes to this provider are refused at once until a probe write succeeds");
        *opened = Some(Opened {
            since,
            reason,
            probing: false,
            next_probe: now + BREAKER_PROBE_INTERVAL,
        });
        self.open.store(true, Ordering::Release);
    }

    /// Records a write's outcome (a probe's or any other's).
    pub(super) fn record(&self, outcome: Result<(), &ProviderError>) {
        match outcome {
            Ok(()) => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if self.open.load(Ordering::Acquire) {
                    let mut opened = self.lock();
                    if opened.take().is_some() {
                        self.open.store(false, Ordering::Release);
                        // Health may still read down until the provider notices: look again.
                        self.health_read_at.store(u64::MAX, Ordering::Relaxed);
                        tracing::info!(provider = %self.provider, "circuit breaker closed: a write was acknowledged");
                    }
                }
            }
            Err(e @ (ProviderError::Timeout { .. } | ProviderError::Unavailable { .. })) => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= FAILURES_TO_OPEN && !self.open.load(Ordering::Acquire) {
                    self.open_now(
                        Utc::now(),
                        format!("{n} writes in a row failed, the last: {e}"),
                        Instant::now(),
                    );
                }
            }
            // About the message, or the relay's own queue: says nothing of the connection.
            Err(_) => {}
        }
    }

    pub(super) fn row(&self) -> BreakerRow {
        let opened = self.lock();
        let (state, since, reason) = match opened.as_ref() {
            None => (BreakerState::Closed, None, None),
            Some(o) => (
                if o.probing {
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Open
                },
                Some(o.since),
                Some(o.reason.clone()),
            ),
        };
        BreakerRow {
            state,
            since,
            reason,
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}
