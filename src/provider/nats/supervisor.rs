//! The NATS provider's supervisor rounds (the loop around them is
//! [`run_probe_loop`](crate::provider::supervise::run_probe_loop)): make the first connection
//! when `connect` could not, dial a fresh one when a Secret file changed, and keep health honest
//! while it is down. Once connected, a round checks that JetStream answers and the stream exists
//! (creating it when it could not be created before), then marks the provider healthy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use tokio::sync::Notify;

use super::connection::{Conn, ConnSlot, DialError, Dialer, Shared};
use super::{record_dial_failure, CLOSE_TIMEOUT, PROBE_TIMEOUT, REASON_CONNECTED, REASON_STREAM};
use crate::provider::secret::{SecretCheck, SecretWatch};
use crate::provider::supervise::Probe;

/// How often a replaced connection is checked for publishes still running on it.
const RETIRE_POLL: Duration = Duration::from_millis(10);

/// What the NATS supervisor owns.
pub(super) struct NatsProbe {
    pub(super) shared: Arc<Shared>,
    /// Empty until the first connection succeeded; only this task sets it after `connect`.
    pub(super) conn: Arc<ConnSlot>,
    pub(super) dialer: Dialer,
    /// The Secret files the connection in force was made from.
    pub(super) secrets: SecretWatch,
    /// The fingerprint of changed Secret values the server refused (logged once, retried each
    /// round: the server may be updated after the Secret).
    pub(super) refused: Option<u64>,
}

impl Probe for NatsProbe {
    fn kick(&self) -> &Notify {
        &self.shared.kick
    }

    fn closed(&self) -> bool {
        self.shared.health.is_closed()
    }

    async fn round(&mut self) {
        // Reading a few small files each round is cheap next to the JetStream request a round
        // may make, and lets a rotated Secret take effect within a round of the kubelet's write.
        self.follow_secrets().await;
        let Some(c) = self.connection().await else {
            return;
        };
        let shared = &self.shared;
        let ready = shared.stream_ready.load(Ordering::Acquire);
        if ready && shared.health.get().healthy {
            return;
        }
        if c.client.connection_state() != State::Connected {
            // The event callback already reports why; nothing to probe.
            return;
        }
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, c.setup.ensure()).await;
        if shared.health.is_closed() {
            return;
        }
        let stream = &c.setup.config.name;
        match outcome {
            Ok(Ok(())) => {
                shared.stream_ready.store(true, Ordering::Release);
                if !shared.health.get().healthy {
                    tracing::info!(provider = %shared.name, %stream, "nats: healthy again");
                }
                shared.health.set(
                    true,
                    REASON_CONNECTED,
                    format!("connected to {}; stream {stream} ready", shared.url),
                );
            }
            Ok(Err(e)) => shared
                .health
                .set(false, REASON_STREAM, e.reason().to_string()),
            Err(_) => shared.health.set(
                false,
                REASON_STREAM,
                format!(
                    "JetStream did not answer within {}ms when checking stream {stream}",
                    PROBE_TIMEOUT.as_millis()
                ),
            ),
        }
    }
}

impl NatsProbe {
    /// The connection, dialing it first when there is none yet (with the Secret files read
    /// now); `None` (and health says why) when there is still none.
    async fn connection(&mut self) -> Option<Arc<Conn>> {
        if let Some(c) = self.conn.get() {
            return Some(c);
        }
        let fingerprint = self.secrets.fingerprint();
        let generation = self.shared.generation.load(Ordering::Acquire);
        match self.dialer.dial(generation).await {
            Ok(c) => {
                let shared = &self.shared;
                tracing::info!(provider = %shared.name, url = %shared.url, "nats: first connection made");
                self.conn.replace(c);
                if let Ok(f) = fingerprint {
                    self.secrets.built(f);
                }
                self.conn.get()
            }
            Err(e) => {
                record_dial_failure(&self.shared, &e);
                None
            }
        }
    }

    /// When the Secret files changed since the connection in force was made, dials a fresh one
    /// with the new values, swaps it in and drains the old one once the publishes running on it
    /// are done. A changed value the server refuses keeps the connection in force.
    async fn follow_secrets(&mut self) {
        let Some(old) = self.conn.get() else {
            return; // `connection` dials with the current values anyway
        };
        let fingerprint = match self.secrets.check() {
            SecretCheck::Changed(f) => f,
            SecretCheck::Unchanged => return,
            SecretCheck::Missing(missing) => {
                tracing::debug!(provider = %self.shared.name, error = %missing, "nats: a Secret key cannot be read; keeping the connection in force");
                return;
            }
        };
        let shared = &self.shared;
        // Events of the new connection count from its first one; the old one's stop counting.
        let previous = shared.generation.fetch_add(1, Ordering::AcqRel);
        match self.dialer.dial(previous + 1).await {
            Ok(fresh) => {
                tracing::info!(provider = %shared.name, url = %shared.url, "nats: a Secret changed; reconnected with the new value");
                self.conn.replace(fresh);
                self.secrets.built(fingerprint);
                self.refused = None;
                if !shared.health.get().healthy {
                    shared.kick.notify_one();
                }
                retire(old, self.dialer.publish_timeout).await;
            }
            Err(e) => {
                shared.generation.store(previous, Ordering::Release);
                if self.refused != Some(fingerprint) {
                    let reason = match &e {
                        DialError::Setup(s) => s.to_string(),
                        DialError::Auth(s) | DialError::Config(s) | DialError::Transient(s) => {
                            s.clone()
                        }
                    };
                    tracing::warn!(provider = %shared.name, url = %shared.url, %reason, "nats: cannot connect with the changed Secret values; keeping the connection in force and trying again every round");
                    self.refused = Some(fingerprint);
                }
            }
        }
    }
}

/// Drains a replaced connection once no publish holds it any more (bounded by the publish
/// deadline, which bounds every publish), so every publish that started on it gets its PubAck.
async fn retire(old: Arc<Conn>, publish_timeout: Duration) {
    // Polled: a publish holds its own `Arc` and there is no event for the last one dropping;
    // a few checks are nothing next to a rotation.
    let wait = async {
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(RETIRE_POLL).await;
        }
    };
    let _ = tokio::time::timeout(publish_timeout, wait).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.client.drain()).await;
}
