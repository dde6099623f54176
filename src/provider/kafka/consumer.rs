//! Reading the topic back for `subscribe`: a consumer in the provider's group (from the
//! earliest offset when the group has none), decoding each record, and telling the connection
//! trouble librdkafka recovers from by itself apart from errors that are items of the stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;

use super::client::{HealthContext, Shared};
use super::KafkaProvider;
use crate::message::DataMessage;
use crate::provider::{MessageStream, ProviderError};

impl KafkaProvider {
    /// Opens a consumer on the topic and maps its records to decoded messages; the stream ends
    /// when the provider stops.
    pub(super) async fn open_subscription(&self) -> Result<MessageStream, ProviderError> {
        let subscribe_err = |reason: String| ProviderError::Subscribe {
            provider: self.name.clone(),
            reason,
        };
        if !self.shared.topic_ready.load(Ordering::Acquire) {
            // Subscribing to a missing topic would wait for librdkafka's next metadata refresh
            // (minutes) after the supervisor creates it; better to fail now and be retried.
            self.shared.kick.notify_one();
            return Err(subscribe_err(format!(
                "topic {} is not created yet ({}); subscribe again once the provider is healthy",
                self.topic,
                self.shared.health.get().message
            )));
        }
        let config = self.producer.consumer_config().ok_or_else(|| {
            subscribe_err(format!(
                "no clients yet ({})",
                self.shared.health.get().message
            ))
        })?;
        let consumer: StreamConsumer<HealthContext> = config
            .create_with_context(HealthContext {
                shared: self.shared.clone(),
                drives_health: false,
                generation: 0,
            })
            .map_err(|e| subscribe_err(format!("kafka consumer: {e}")))?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| subscribe_err(format!("subscribing to topic {}: {e}", self.topic)))?;

        let shared = Arc::clone(&self.shared);
        let stream = futures::stream::unfold(consumer, move |consumer| {
            let shared = shared.clone();
            async move {
                let item = next_item(&shared, &consumer).await;
                Some((item, consumer))
            }
        });
        Ok(stream
            // Ends when the provider closes or is dropped.
            .take_until(self.supervisor.stopped())
            .boxed())
    }
}

/// The next item of a subscription: a decoded message or an error worth handing out.
async fn next_item(
    shared: &Shared,
    consumer: &StreamConsumer<HealthContext>,
) -> Result<DataMessage, ProviderError> {
    loop {
        match consumer.recv().await {
            Ok(m) => return decode(shared, &m),
            // librdkafka reports connection trouble through the consumer as well; it
            // reconnects by itself and the provider's health already says so. These are not
            // items of the stream.
            Err(KafkaError::MessageConsumption(code)) if is_transient(code) => {
                tracing::debug!(provider = %shared.name, %code, "kafka consumer: broker unreachable; retrying");
            }
            Err(e) => {
                return Err(ProviderError::Subscribe {
                    provider: shared.name.clone(),
                    reason: format!("reading topic {}: {e}", shared.topic),
                })
            }
        }
    }
}

/// Connection-level consumer errors that librdkafka recovers from by itself.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
    )
}

/// Decodes one consumed record (its offset is stored for commit when it is handed out).
fn decode(shared: &Shared, m: &impl Message) -> Result<DataMessage, ProviderError> {
    match DataMessage::from_wire(m.payload().unwrap_or_default()) {
        Ok(msg) => {
            shared.counters.consumed();
            Ok(msg)
        }
        Err(e) => Err(ProviderError::Subscribe {
            provider: shared.name.clone(),
            reason: format!(
                "topic {} partition {} offset {} is not a DataMessage ({e}); skipped",
                m.topic(),
                m.partition(),
                m.offset()
            ),
        }),
    }
}
