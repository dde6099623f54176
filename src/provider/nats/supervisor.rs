//! The NATS provider's supervisor rounds (the loop around them is
//! [`run_probe_loop`](crate::provider::supervise::run_probe_loop)): make the first connection
//! when `connect` could not, and keep health honest while it is down. Once connected, a round
//! checks that JetStream answers and the stream exists (creating it when it could not be created
//! before), then marks the provider healthy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use async_nats::connection::State;
use tokio::sync::Notify;

use super::connection::{Conn, Dialer, Shared};
use super::{PROBE_TIMEOUT, REASON_CONNECTED, REASON_DISCONNECTED, REASON_STREAM};
use crate::provider::supervise::Probe;

/// What the NATS supervisor owns.
pub(super) struct NatsProbe {
    pub(super) shared: Arc<Shared>,
    /// Empty until the first connection succeeded; only this task sets it after `connect`.
    pub(super) conn: Arc<OnceLock<Conn>>,
    pub(super) dialer: Dialer,
}

impl Probe for NatsProbe {
    fn kick(&self) -> &Notify {
        &self.shared.kick
    }

    fn closed(&self) -> bool {
        self.shared.health.is_closed()
    }

    async fn round(&mut self) {
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
    /// The connection, dialing it first when there is none yet; `None` (and health says why)
    /// when the server still does not answer.
    async fn connection(&self) -> Option<&Conn> {
        if let Some(c) = self.conn.get() {
            return Some(c);
        }
        match self.dialer.dial().await {
            Ok(c) => {
                let shared = &self.shared;
                tracing::info!(provider = %shared.name, url = %shared.url, "nats: first connection made");
                // Only this task sets it after `connect`, so this cannot be taken.
                Some(self.conn.get_or_init(|| c))
            }
            Err(e) => {
                self.shared.health.set(
                    false,
                    REASON_DISCONNECTED,
                    format!("cannot connect to {}: {}", self.shared.url, e.reason()),
                );
                None
            }
        }
    }
}
