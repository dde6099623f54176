//! What the relay pods say of themselves when they cannot run: an image that cannot be pulled,
//! a crash loop, no node to run on, or a start-up error the relay wrote to its termination
//! message. [`relay_failure`] turns the pods' statuses into one [`RelayFailure`] (a condition
//! reason and a message naming the pod and the cause), which the status puts on `Ready` and the
//! reconciler records as a Warning Event; [`retained_claims`] names the backlog claims of relays
//! scaled away. Pure functions over the pods and claims the reconciler listed; table tests in
//! `pods/tests.rs`.
//!
//! The operator sees pod changes through a watch on pods labelled
//! `app.kubernetes.io/managed-by=dualwrite-operator`, so a failure reaches the status within a
//! reconcile of the kubelet reporting it (seconds), well inside the 30 s promised.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

use super::scale::ScaleDecision;
use super::{reason, resources};

#[cfg(test)]
mod tests;

/// The exit code of a relay that stopped on a configuration error (`cli::Error::exit_code`).
pub const CONFIG_ERROR_EXIT_CODE: i32 = 2;

/// Longest message taken from a pod (a termination message may be up to 4 KiB, a log tail
/// longer): status and Events stay readable, and an Event note's limit is 1 KiB.
const MAX_MESSAGE: usize = 400;

/// What the reconciler saw of a pipeline's relay pods, claims and rollout, for
/// [`super::status::next_status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayObservation {
    /// The most telling failure of a relay pod ([`relay_failure`]).
    pub failure: Option<RelayFailure>,
    /// Claims of relays scaled away ([`retained_claims`]).
    pub retained_claims: Vec<String>,
    /// Why a new pod template waits (see [`super::rollout`]), if it does.
    pub rollout_queued: Option<String>,
    /// What this reconcile decided about the StatefulSet's replicas ([`super::scale`]), when
    /// it applied the StatefulSet.
    pub scale: Option<ScaleDecision>,
    /// The owned object the API server refused in this reconcile, and what it said (the objects
    /// after it in the apply order were not applied).
    pub apply_failed: Option<String>,
}

/// Why a relay pod cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayFailure {
    /// One of [`reason::RELAY_CONFIG_ERROR`], [`reason::RELAY_IMAGE_PULL_FAILED`],
    /// [`reason::RELAY_CRASH_LOOPING`], [`reason::RELAY_UNSCHEDULABLE`].
    pub reason: &'static str,
    /// The pod it was seen on.
    pub pod: String,
    /// For people: the pod and the cause, in one line.
    pub message: String,
}

/// Waiting reasons of a container whose image cannot be pulled.
const IMAGE_PULL: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The most telling failure among `pods` (the relay pods of one pipeline), or `None` when none
/// has one. Ranked by how directly it names what the user must fix: a configuration error the
/// relay wrote, an image that cannot be pulled, a crash loop, no node; between pods of the same
/// rank, the first by name, so the status does not flap between pods.
pub fn relay_failure(pods: &[Pod]) -> Option<RelayFailure> {
    let mut found: Vec<(usize, RelayFailure)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(pod_failure)
        .collect();
    found.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then_with(|| a.pod.cmp(&b.pod)));
    found.into_iter().next().map(|(_, f)| f)
}

/// One pod's failure and its rank (lower is more telling).
fn pod_failure(pod: &Pod) -> Option<(usize, RelayFailure)> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let fail = |rank: usize, reason: &'static str, message: String| {
        Some((
            rank,
            RelayFailure {
                reason,
                pod: name.clone(),
                message: one_line(&format!("pod {name}: {message}")),
            },
        ))
    };
    let relay = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "relay");
    if let Some(c) = relay {
        // A relay running now has left its earlier exits behind (`lastState` keeps the last one
        // until the next).
        let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
        if let Some(message) = config_error(c).filter(|_| !running) {
            return fail(0, reason::RELAY_CONFIG_ERROR, message);
        }
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
        let waiting_message = waiting.and_then(|w| w.message.as_deref()).unwrap_or("");
        if IMAGE_PULL.contains(&waiting_reason) {
            let image = &c.image;
            return fail(
                1,
                reason::RELAY_IMAGE_PULL_FAILED,
                format!("image {image} cannot be pulled ({waiting_reason}): {waiting_message}"),
            );
        }
        if waiting_reason == "CrashLoopBackOff" {
            return fail(2, reason::RELAY_CRASH_LOOPING, crash_message(c));
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return fail(
            3,
            reason::RELAY_UNSCHEDULABLE,
            format!(
                "cannot be scheduled: {}",
                c.message.as_deref().unwrap_or("no node fits")
            ),
        );
    }
    None
}

/// The relay's own words when it stopped on a configuration error (exit code 2), now or on its
/// last run: its termination message.
fn config_error(c: &ContainerStatus) -> Option<String> {
    let terminated = [
        c.state.as_ref().and_then(|s| s.terminated.as_ref()),
        c.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
    ]
    .into_iter()
    .flatten()
    .find(|t| t.exit_code == CONFIG_ERROR_EXIT_CODE)?;
    let message = terminated.message.as_deref().map(str::trim).unwrap_or("");
    Some(if message.is_empty() {
        format!("the relay stopped on a configuration error (exit code {CONFIG_ERROR_EXIT_CODE}); see its log")
    } else {
        message.to_string()
    })
}

/// A crash loop's restarts, last exit code and, when the pod has one, the last line of its
/// termination message (the relay's, or the end of its log).
fn crash_message(c: &ContainerStatus) -> String {
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let mut out = format!("the relay keeps crashing ({} restarts", c.restart_count);
    if let Some(t) = last {
        out.push_str(&format!(", last exit code {}", t.exit_code));
        if let Some(r) = t.reason.as_deref() {
            out.push_str(&format!(" {r}"));
        }
    }
    out.push(')');
    let tail = last
        .and_then(|t| t.message.as_deref())
        .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()));
    if let Some(line) = tail {
        out.push_str(": ");
        out.push_str(line.trim());
    }
    out
}

/// `text` on one line (newlines and runs of blanks as one space), at most [`MAX_MESSAGE`]
/// characters.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_MESSAGE {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_MESSAGE - 1).collect();
    cut.push('…');
    cut
}

/// The backlog claims of pipeline `pipeline` that belong to relays scaled away (ordinal ≥
/// `replicas`, the StatefulSet's count), sorted by ordinal, from the names of its claims (those
/// not being deleted).
pub fn retained_claims(pipeline: &str, replicas: i32, claims: &[String]) -> Vec<String> {
    let mut out: Vec<(i32, &String)> = claims
        .iter()
        .filter_map(|name| {
            let ordinal = resources::claim_ordinal(pipeline, name)?;
            (ordinal >= replicas).then_some((ordinal, name))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, n)| n.clone()).collect()
}
