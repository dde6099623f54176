//! The bound on rollouts the operator starts of its own: a new operator version (a new default
//! relay image, or any other change it makes to the pod template) rolls at most
//! [`MAX_CONCURRENT_ROLLOUTS`] pipelines' relays at a time; the others keep their running
//! relays until a slot frees. Within a pipeline the StatefulSet's RollingUpdate goes one pod at
//! a time, each drained.
//!
//! ```text
//!   template annotation on the StatefulSet  vs  the one the operator would write
//!      same hash ─────────────────────────────▶ Unchanged  ┐
//!      other hash, other generation ──────────▶ BySpec     ├─▶ apply (a user asked for it)
//!      no StatefulSet yet ────────────────────▶ Created    ┘
//!      other hash, same generation ───────────▶ ByOperator ─▶ a slot free (or held)? apply : hold
//! ```
//!
//! A slot is held from the apply until the StatefulSet reports the rollout complete, refreshed
//! by every reconcile of its pipeline (at least every resync); one not refreshed for
//! [`Slots::admit`]'s `expire_after` (a pipeline deleted mid-rollout) is released. A rollout
//! that never completes (an image whose relays never become Ready) keeps its slot: a bad image
//! stops after the first [`MAX_CONCURRENT_ROLLOUTS`] pipelines instead of reaching them all.
//! The slots live in the operator's memory: a new operator process (which is what an upgrade
//! starts) begins with all free, so rollouts left by the previous process are not counted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

#[cfg(test)]
mod tests;

/// Pipelines whose relays the operator rolls of its own at the same time.
pub const MAX_CONCURRENT_ROLLOUTS: usize = 3;

/// What changes in a pipeline's pod template on this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateChange {
    /// No StatefulSet yet.
    Created,
    Unchanged,
    /// The spec changed (its generation moved) and the template with it.
    BySpec,
    /// Same generation, another template: the operator's own doing.
    ByOperator,
}

/// Compares the template annotation on the StatefulSet (`<hash>@<generation>`, see
/// `resources::template_annotation`) with the one the operator would write now.
pub fn classify(existing: Option<Option<&str>>, desired: &str) -> TemplateChange {
    let Some(existing) = existing else {
        return TemplateChange::Created;
    };
    let split = |a: &str| {
        a.split_once('@')
            .map(|(h, g)| (h.to_string(), g.to_string()))
    };
    let (Some((old_hash, old_gen)), Some((new_hash, new_gen))) =
        (existing.and_then(split), split(desired))
    else {
        // A StatefulSet without the annotation was not made by this version: the operator's own.
        return TemplateChange::ByOperator;
    };
    if old_hash == new_hash {
        TemplateChange::Unchanged
    } else if old_gen != new_gen {
        TemplateChange::BySpec
    } else {
        TemplateChange::ByOperator
    }
}

/// Whether the StatefulSet's last change has reached every pod: the controller has seen its
/// generation and every pod runs the update revision.
pub fn rolled_out(sts: &StatefulSet) -> bool {
    let Some(status) = &sts.status else {
        return false;
    };
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.observed_generation >= sts.metadata.generation
        && status.update_revision.is_some()
        && status.update_revision == status.current_revision
        && status.updated_replicas.unwrap_or(0) >= want
}

/// What to do with the StatefulSet on this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Apply,
    /// Keep the running StatefulSet as it is; these pipelines hold the slots.
    Hold {
        rolling: Vec<String>,
    },
}

/// The rollout slots: pipeline key → when its slot was last refreshed.
#[derive(Clone, Debug, Default)]
pub struct Slots {
    held: BTreeMap<String, Timestamp>,
}

impl Slots {
    /// One reconcile of `pipeline`, whose template change is `change` and whose StatefulSet is
    /// still rolling out (`rolling`): may it apply, and the slots updated accordingly.
    pub fn admit(
        &mut self,
        pipeline: &str,
        change: TemplateChange,
        rolling: bool,
        now: Timestamp,
        expire_after: SignedDuration,
        limit: usize,
    ) -> Admission {
        self.held
            .retain(|_, at| now.duration_since(*at) <= expire_after);
        let holds = self.held.contains_key(pipeline);
        if change == TemplateChange::ByOperator {
            if holds || self.held.len() < limit {
                self.held.insert(pipeline.to_string(), now);
                return Admission::Apply;
            }
            return Admission::Hold {
                rolling: self.held.keys().cloned().collect(),
            };
        }
        if holds {
            if rolling {
                self.held.insert(pipeline.to_string(), now);
            } else {
                self.held.remove(pipeline);
            }
        }
        Admission::Apply
    }

    /// Gives up `pipeline`'s slot (the pipeline is being deleted).
    pub fn release(&mut self, pipeline: &str) {
        self.held.remove(pipeline);
    }

    pub fn held(&self) -> Vec<&str> {
        self.held.keys().map(String::as_str).collect()
    }
}
