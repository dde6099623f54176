//! The in-memory provider: a bounded FIFO queue inside the relay process.
//!
//! Bounded on purpose: with nobody consuming, a full queue answers "queue full" rather than
//! growing until the process is killed. One subscriber drains it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Counters, Health, MessageStream, Provider, ProviderError, ProviderKind, Stats};
use crate::message::{DataMessage, Outgoing};

/// Capacity used when a manifest or `QUEUE_SIZE` gives none.
pub const DEFAULT_CAPACITY: usize = 10_000;

pub struct MemoryProvider {
    name: String,
    capacity: usize,
    // `None` once closed: dropping the sender lets the subscriber drain the queue and then end.
    // std locks: held only for a non-blocking `try_send` or a `take()`, never across an await.
    // The queue holds shared copies: the composite makes one per message for all the memory
    // providers it writes (`Outgoing::owned`).
    tx: RwLock<Option<mpsc::Sender<Arc<DataMessage>>>>,
    rx: Mutex<Option<mpsc::Receiver<Arc<DataMessage>>>>,
    depth: Arc<AtomicU64>,
    counters: Arc<Counters>,
    since: chrono::DateTime<chrono::Utc>,
}

impl MemoryProvider {
    /// A queue holding at most `capacity` messages (at least 1).
    pub fn new(name: impl Into<String>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        Self {
            name: name.into(),
            capacity,
            tx: RwLock::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            depth: Default::default(),
            counters: Default::default(),
            since: chrono::Utc::now(),
        }
    }

    /// Puts `msg` at the end of the queue, or says why not (full, closed).
    fn enqueue(&self, msg: Arc<DataMessage>) -> Result<(), ProviderError> {
        let closed = || ProviderError::Closed {
            provider: self.name.clone(),
        };
        let outcome = match &*self.tx.read().unwrap_or_else(|p| p.into_inner()) {
            None => Err(closed()),
            Some(tx) => tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProviderError::QueueFull {
                    provider: self.name.clone(),
                    capacity: self.capacity,
                },
                mpsc::error::TrySendError::Closed(_) => closed(),
            }),
        };
        if outcome.is_ok() {
            self.depth.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.record(&outcome);
        outcome
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Memory
    }

    async fn publish(&self, msg: &DataMessage) -> Result<(), ProviderError> {
        self.enqueue(Arc::new(msg.clone()))
    }

    async fn publish_outgoing(&self, msg: &Outgoing<'_>) -> Result<(), ProviderError> {
        self.enqueue(msg.owned())
    }

    async fn subscribe(&self) -> Result<MessageStream, ProviderError> {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| ProviderError::Subscribe {
                provider: self.name.clone(),
                reason: "a memory queue has one subscriber and it is already taken".into(),
            })?;
        let (counters, depth) = (self.counters.clone(), self.depth.clone());
        Ok(ReceiverStream::new(rx)
            .map(move |m| {
                depth.fetch_sub(1, Ordering::Relaxed);
                counters.consumed();
                // The last queue to hand a shared copy out takes it without copying.
                Ok(Arc::unwrap_or_clone(m))
            })
            .boxed())
    }

    fn stats(&self) -> Stats {
        Stats {
            depth: self.depth.load(Ordering::Relaxed),
            ..self.counters.snapshot()
        }
    }

    fn health(&self) -> Health {
        let closed = self.tx.read().unwrap_or_else(|p| p.into_inner()).is_none();
        let mut h = if closed {
            Health::down(super::REASON_CLOSED, "provider closed")
        } else {
            Health::up("InProcess", "in-memory queue")
        };
        h.since = self.since;
        h
    }

    async fn close(&self) -> Result<(), ProviderError> {
        // The receiver drains what is queued, then ends: subscribers see every accepted message.
        self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_is_a_distinct_error_and_nothing_is_lost() {
        let p = MemoryProvider::new("mem", 2);
        p.publish(&DataMessage::new("t", "1")).await.unwrap();
        p.publish(&DataMessage::new("t", "2")).await.unwrap();
        let err = p.publish(&DataMessage::new("t", "3")).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::QueueFull { capacity: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("queue full"));
        let s = p.stats();
        assert_eq!((s.published, s.failed, s.depth), (2, 1, 2));

        let mut sub = p.subscribe().await.unwrap();
        assert_eq!(&sub.next().await.unwrap().unwrap().payload[..], b"1");
        assert_eq!(&sub.next().await.unwrap().unwrap().payload[..], b"2");
        assert_eq!(p.stats().consumed, 2);
        assert_eq!(p.stats().depth, 0);
    }

    #[tokio::test]
    async fn publish_after_close_is_an_error_and_close_is_idempotent() {
        let p = MemoryProvider::new("mem", 4);
        p.publish(&DataMessage::new("t", "kept")).await.unwrap();
        p.close().await.unwrap();
        p.close().await.unwrap();
        let err = p.publish(&DataMessage::new("t", "late")).await.unwrap_err();
        assert_eq!(
            err,
            ProviderError::Closed {
                provider: "mem".into()
            }
        );
        assert!(!p.health().healthy);
        // What was accepted before close is still delivered.
        let mut sub = p.subscribe().await.unwrap();
        assert_eq!(&sub.next().await.unwrap().unwrap().payload[..], b"kept");
        assert!(
            sub.next().await.is_none(),
            "the stream ends after a closed queue drains"
        );
    }

    #[tokio::test]
    async fn one_subscriber_only() {
        let p = MemoryProvider::new("mem", 1);
        let _first = p.subscribe().await.unwrap();
        let err = p.subscribe().await.err().unwrap();
        assert!(err.to_string().contains("already taken"), "{err}");
    }
}
