//! The merged subscription: every provider's stream as one, each message id delivered once
//! within a window of recent ids (two brokers deliver the same message at different times).

use std::collections::{HashSet, VecDeque};

use futures::stream::StreamExt;

use crate::provider::MessageStream;

/// How many recent ids the merged subscription remembers to drop duplicates.
/// Enough to cover the skew between two brokers delivering the same message (seconds of
/// traffic at thousands per second) while keeping memory bounded (~100 bytes per id).
pub const MERGE_DEDUP_WINDOW: usize = 65_536;

/// The streams interleaved as items arrive, dropping an id seen within [`MERGE_DEDUP_WINDOW`].
/// Errors pass through.
pub(super) fn merge(streams: Vec<MessageStream>) -> MessageStream {
    let mut seen = RecentIds::new(MERGE_DEDUP_WINDOW);
    futures::stream::select_all(streams)
        .filter(move |item| {
            let keep = match item {
                Ok(msg) => seen.insert(&msg.id),
                Err(_) => true,
            };
            futures::future::ready(keep)
        })
        .boxed()
}

/// A bounded set of recently seen ids: inserting past the capacity forgets the oldest.
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// True when `id` was not seen within the window.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c")); // evicts a
        assert!(r.insert("a"));
        assert!(!r.insert("c"));
    }
}
