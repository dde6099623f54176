//! Reading the stream back for `subscribe`: the durable pull consumer (`DeliverPolicy::All`; a
//! durable that exists resumes where it stopped), and decoding and acknowledging each message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::connection::Shared;
use super::{NatsProvider, CONSUMER_ACK_TIMEOUT, SETUP_TIMEOUT};
use crate::message::DataMessage;
use crate::provider::{MessageStream, ProviderError};

impl NatsProvider {
    fn subscribe_error(&self, reason: String) -> ProviderError {
        ProviderError::Subscribe {
            provider: self.name.clone(),
            reason,
        }
    }

    /// Opens the durable consumer's message stream (ensuring the stream first when it is not
    /// known to exist), bounded by [`SETUP_TIMEOUT`], and maps it to decoded messages that end
    /// when the provider stops.
    pub(super) async fn open_subscription(&self) -> Result<MessageStream, ProviderError> {
        // Not connected: fail now rather than queue JetStream requests until they time out.
        let conn = self.connection().await.map_err(|e| match e {
            ProviderError::Unavailable { reason, .. } => self.subscribe_error(reason),
            other => other,
        })?;
        let open = async {
            if !self.shared.stream_ready.load(Ordering::Acquire) {
                conn.setup
                    .ensure()
                    .await
                    .map_err(|e| self.subscribe_error(e.reason().to_string()))?;
                self.shared.stream_ready.store(true, Ordering::Release);
            }
            let stream = conn
                .setup
                .js
                .get_stream(&self.stream_name)
                .await
                .map_err(|e| self.subscribe_error(format!("stream {}: {e}", self.stream_name)))?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &self.durable,
                    pull::Config {
                        durable_name: Some(self.durable.clone()),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.subscribe_error(format!("consumer {}: {e}", self.durable)))?;
            consumer
                .messages()
                .await
                .map_err(|e| self.subscribe_error(format!("consumer {}: {e}", self.durable)))
        };
        let messages = tokio::time::timeout(SETUP_TIMEOUT, open)
            .await
            .map_err(|_| {
                self.subscribe_error(format!(
                    "JetStream did not answer within {}ms when opening consumer {}",
                    SETUP_TIMEOUT.as_millis(),
                    self.durable
                ))
            })??;

        let shared = Arc::clone(&self.shared);
        let stream = self.stream_name.clone();
        Ok(messages
            .then(move |item| {
                let (shared, stream) = (shared.clone(), stream.clone());
                async move { decode_and_ack(&shared, &stream, item).await }
            })
            // Ends when the provider closes or is dropped.
            .take_until(self.supervisor.stopped())
            .boxed())
    }
}

/// Decodes one consumed message and acknowledges it; undecodable messages are terminated (never
/// redelivered) and reported as an error item.
async fn decode_and_ack(
    shared: &Shared,
    stream: &str,
    item: Result<jetstream::Message, pull::MessagesError>,
) -> Result<DataMessage, ProviderError> {
    let subscribe_err = |reason: String| ProviderError::Subscribe {
        provider: shared.name.clone(),
        reason,
    };
    let m = item.map_err(|e| subscribe_err(format!("reading stream {stream}: {e}")))?;
    let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
    match DataMessage::from_wire(&m.payload) {
        Ok(msg) => {
            match tokio::time::timeout(CONSUMER_ACK_TIMEOUT, m.ack()).await {
                Ok(Ok(())) => {}
                // Not fatal: JetStream redelivers after the consumer's ack wait.
                Ok(Err(e)) => {
                    tracing::warn!(provider = %shared.name, seq, error = %e, "nats: ack failed; the message will be redelivered")
                }
                Err(_) => {
                    tracing::warn!(provider = %shared.name, seq, "nats: ack timed out; the message will be redelivered")
                }
            }
            shared.counters.consumed();
            Ok(msg)
        }
        Err(e) => {
            let _ = tokio::time::timeout(CONSUMER_ACK_TIMEOUT, m.ack_with(AckKind::Term)).await;
            Err(subscribe_err(format!(
                "stream {stream} message {seq} is not a DataMessage ({e}); skipped"
            )))
        }
    }
}
