//! One Kafka publish, or an ordered batch of them: the record (key per `kafka.key`, headers
//! `message_id`, `source` and `Dualwrite-Digest`, the JSON wire form as value), its delivery
//! report, and what librdkafka reports turned into a
//! [`ProviderError`]. The overall deadline is the caller's (`Provider::publish`).

use std::sync::atomic::Ordering;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use super::{KafkaProvider, HEADER_MESSAGE_ID, HEADER_SOURCE};
use crate::message::{DataMessage, Outgoing, DIGEST_HEADER};
use crate::provider::ProviderError;

impl KafkaProvider {
    pub(super) fn unavailable(&self, reason: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Writes one record and awaits its delivery report (the caller applies the deadline).
    pub(super) async fn send(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        let Some(producer) = self.producer.get() else {
            return Err(self.unavailable(self.shared.health.get().message));
        };
        let record = self.record(msg.message(), msg.wire(), msg.digest_text());
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

    /// Enqueues every message of `msgs` in order into the one idempotent producer (which keeps
    /// that order per partition, its own retries included), then awaits the delivery reports
    /// in that order, counting each acknowledged message in `acked`. Stops at the first
    /// message that cannot be enqueued or whose report is an error. The caller applies the
    /// deadline.
    pub(super) async fn send_batch(
        &self,
        msgs: &[DataMessage],
        acked: &mut usize,
    ) -> Result<(), ProviderError> {
        let Some(producer) = self.producer.get() else {
            return Err(self.unavailable(self.shared.health.get().message));
        };
        let mut reports = Vec::with_capacity(msgs.len());
        let mut refused = None;
        for msg in msgs {
            let msg = msg.outgoing();
            match producer.send_result(self.record(msg.message(), msg.wire(), msg.digest_text())) {
                Ok(report) => reports.push(report),
                // Nothing after a refused enqueue is sent, so nothing overtakes it.
                Err((e, _)) => {
                    refused = Some(self.delivery_error(e));
                    break;
                }
            }
        }
        for report in reports {
            match report.await {
                Ok(Ok(_delivery)) => {
                    *acked += 1;
                    self.shared.counters.published();
                }
                Ok(Err((e, _))) => return Err(self.delivery_error(e)),
                Err(_canceled) => {
                    return Err(self.unavailable("the producer was replaced before delivery"))
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// The record for `msg`: key per `kafka.key`, headers `message_id`, `source` and
    /// `Dualwrite-Digest` (`digest`, the message's content digest).
    fn record<'a>(
        &'a self,
        msg: &'a DataMessage,
        payload: &'a [u8],
        digest: &'a str,
    ) -> FutureRecord<'a, str, [u8]> {
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
                value: Some(digest),
            });
        FutureRecord::to(&self.topic)
            .key(self.key.of(msg))
            .payload(payload)
            .headers(headers)
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
