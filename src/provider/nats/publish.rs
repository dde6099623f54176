//! One NATS publish, and an ordered batch of them pipelined on one connection: wait briefly for
//! a lost connection (at most [`RECONNECT_GRACE`]), make sure the stream exists, send with the
//! `Nats-Msg-Id` and `Dualwrite-Digest` headers, await the PubAck, and turn what async-nats
//! reports into a [`ProviderError`]. The overall deadline is the caller's
//! (`Provider::publish`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::{HeaderMap, HeaderName};

use super::connection::Conn;
use super::{NatsProvider, MSG_ID_HEADER, RECONNECT_GRACE};
use crate::message::{DataMessage, Outgoing, DIGEST_HEADER};
use crate::provider::ProviderError;

impl NatsProvider {
    pub(super) fn closed_error(&self) -> ProviderError {
        ProviderError::Closed {
            provider: self.name.clone(),
        }
    }

    pub(super) fn unavailable(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// `Unavailable`: not connected, and why (from health).
    pub(super) fn not_connected(&self) -> ProviderError {
        self.unavailable(format!(
            "not connected to {} ({})",
            self.shared.url,
            self.shared.health.get().message
        ))
    }

    /// The connection once it is up; waits at most [`RECONNECT_GRACE`] for a lost one to come
    /// back, then fails with `Unavailable`. The caller holds the returned `Arc` for as long as
    /// it uses the connection (a replaced one is drained only after that).
    pub(super) async fn connection(&self) -> Result<Arc<Conn>, ProviderError> {
        let not_connected = || self.not_connected();
        let conn = self.conn.get().ok_or_else(not_connected)?;
        if conn.client.connection_state() == State::Connected {
            return Ok(conn);
        }
        let mut link = self.shared.link.subscribe();
        let wait = async {
            // The event callback trails the client's own state a little; re-check the state on
            // every link change instead of trusting either alone.
            while conn.client.connection_state() != State::Connected {
                if link.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(RECONNECT_GRACE, wait).await;
        if conn.client.connection_state() == State::Connected {
            Ok(conn)
        } else {
            Err(not_connected())
        }
    }

    /// Publish and PubAck, without the overall deadline (the caller applies it).
    pub(super) async fn publish_acked(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        let conn = self.connection().await?;
        self.ensure_stream(&conn).await?;
        let ack = conn
            .setup
            .js
            .publish_with_headers(self.subject.clone(), headers(msg), msg.wire().clone())
            .await
            .map_err(|e| self.publish_error(e))?
            .await
            .map_err(|e| self.publish_error(e))?;
        if ack.duplicate {
            // A retry of a message the stream already holds: stored once, which is success.
            tracing::debug!(provider = %self.name, id = %msg.id, seq = ack.sequence, "nats: duplicate acknowledged");
        }
        Ok(())
    }

    /// Sends every message of `msgs` in order on one connection, then awaits the PubAcks in
    /// that order, counting each acknowledged message in `acked`; stops at the first failure.
    /// The connection and the stream are checked once, before the first send, so no send waits
    /// on anything another does not (which is what kept concurrent publishes from leaving in
    /// the order they started). Sending stops as soon as the connection is seen down, so a
    /// message is not queued in the client behind one the broken connection lost. The caller
    /// applies the deadline.
    pub(super) async fn publish_batch_acked(
        &self,
        msgs: &[DataMessage],
        acked: &mut usize,
    ) -> Result<(), ProviderError> {
        let conn = self.connection().await?;
        self.ensure_stream(&conn).await?;
        let mut acks = Vec::with_capacity(msgs.len());
        let mut stopped = None;
        for msg in msgs {
            let msg = msg.outgoing();
            if conn.client.connection_state() != State::Connected {
                stopped = Some(self.not_connected());
                break;
            }
            match conn
                .setup
                .js
                .publish_with_headers(self.subject.clone(), headers(&msg), msg.wire().clone())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    stopped = Some(self.publish_error(e));
                    break;
                }
            }
        }
        for ack in acks {
            ack.await.map_err(|e| self.publish_error(e))?;
            *acked += 1;
            self.shared.counters.published();
        }
        stopped.map_or(Ok(()), Err)
    }

    /// Checks (or creates) the stream when it is not known to be ready.
    async fn ensure_stream(&self, conn: &Conn) -> Result<(), ProviderError> {
        if !self.shared.stream_ready.load(Ordering::Acquire) {
            // Idempotent on the server, so concurrent publishes racing here are harmless.
            conn.setup
                .ensure()
                .await
                .map_err(|e| self.unavailable(e.reason().to_string()))?;
            self.shared.stream_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn publish_error(&self, e: PublishError) -> ProviderError {
        match e.kind() {
            PublishErrorKind::TimedOut => ProviderError::Timeout {
                provider: self.name.clone(),
                after: self.publish_timeout,
            },
            PublishErrorKind::StreamNotFound => {
                // The stream vanished (deleted, or a server restarted without its data), or
                // JetStream is still starting: check it again on the next publish / probe.
                self.shared.stream_ready.store(false, Ordering::Release);
                self.shared.kick.notify_one();
                self.unavailable(format!(
                    "no JetStream stream answered for subject {} (expected stream {})",
                    self.subject, self.stream_name
                ))
            }
            PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => ProviderError::Rejected {
                provider: self.name.clone(),
                reason: e.to_string(),
            },
            _ => self.unavailable(format!("publish on {} failed: {e}", self.subject)),
        }
    }
}

/// The headers of `msg` on the stream: `Nats-Msg-Id` (JetStream de-duplicates retries by it) and
/// `Dualwrite-Digest` (its content digest, which `verify` compares across brokers).
fn headers(msg: &Outgoing<'_>) -> HeaderMap {
    // Names built once (not parsed and checked on every publish).
    const MSG_ID: HeaderName = HeaderName::from_static(MSG_ID_HEADER);
    const DIGEST: HeaderName = HeaderName::from_static(DIGEST_HEADER);
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, msg.id.as_str());
    headers.insert(DIGEST, msg.digest_text());
    headers
}
