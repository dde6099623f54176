//! One Kafka publish: the record (key = id, headers `message_id`, `source` and
//! `Dualwrite-Digest`, the JSON wire
//! form as value), its delivery report, and what librdkafka reports turned into a
//! [`ProviderError`]. The overall deadline is the caller's (`Provider::publish`).

use std::sync::atomic::Ordering;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use super::{KafkaProvider, HEADER_MESSAGE_ID, HEADER_SOURCE};
use crate::message::{DataMessage, DIGEST_HEADER};
use crate::provider::ProviderError;

impl KafkaProvider {
    pub(super) fn unavailable(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Writes one record and awaits its delivery report (the caller applies the deadline).
    pub(super) async fn send(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        let Some(producer) = self.producer.get() else {
            return Err(self.unavailable(self.shared.health.get().message));
        };
        let payload = msg.to_wire();
        let digest = msg.content_digest().to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: HEADER_MESSAGE_ID,
                value: Some(msg.id.as_str()),
            })
            .insert(Header {
                key: HEADER_SOURCE,
                value: Some(msg.source.as_str()),
            })
            .insert(Header {
                key: DIGEST_HEADER,
                value: Some(digest.as_str()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(msg.id.as_str())
            .payload(&payload)
            .headers(headers);
        // The queue timeout only matters when librdkafka's local queue is full; the delivery
        // itself is bounded by message.timeout.ms and, around both, by the caller's deadline.
        match producer
            .send(record, Timeout::After(self.publish_timeout))
            .await
        {
            Ok(_delivery) => Ok(()),
            Err((e, _)) => Err(self.delivery_error(e)),
        }
    }

    fn delivery_error(&self, e: KafkaError) -> ProviderError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => ProviderError::Timeout {
                provider: self.name.clone(),
                after: self.publish_timeout,
            },
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord,
            ) => ProviderError::Rejected {
                provider: self.name.clone(),
                reason: e.to_string(),
            },
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                // Deleted behind our back: create it again before the next write.
                self.shared.topic_ready.store(false, Ordering::Release);
                self.shared.kick.notify_one();
                self.unavailable(format!("topic {} does not exist: {e}", self.topic))
            }
            Some(RDKafkaErrorCode::QueueFull) => self.unavailable(format!(
                "librdkafka's producer queue is full (queue.buffering.max.messages/kbytes): {e}"
            )),
            _ => self.unavailable(format!("delivery to topic {} failed: {e}", self.topic)),
        }
    }
}
