//! Whether the operator's watches can work, for `/readyz`, and what to fix when they cannot.
//!
//! Lifecycle, and why it is shaped this way: kube's `Controller` retries a failed watch with
//! backoff by itself, and its output says only that *a* watch failed, not which one, and never
//! that it works again. So [`keep_checking`] lists and starts a watch on each kind the operator
//! watches ([`WATCHED`]), in its scope: once at start, again whenever the controller reports a
//! watch error ([`WatchHealth::watch_failed`]), and with backoff while any check fails. It runs
//! beside the controller from the start, leader or follower, until the operator's stop token is
//! cancelled. `/readyz` is ready once every kind passed and no watch failed since. Each problem
//! is logged once at warn, saying what to fix ([`diagnose`]: the CRD missing, RBAC lacking
//! list/watch on a resource), and its end once at info; the check's requests each have a
//! deadline, so a hung API server reads as a problem, not as a hang.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ListParams, WatchParams};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::scoped;
use crate::api::DualWritePipeline;

/// The resource the CRD serves: the one a 404 means "not installed" for.
const PIPELINES: &str = "dualwritepipelines.dualwrite.io";

/// The key of a problem a watch reported without saying on which resource.
const ANY_WATCH: &str = "watch";

/// How long one check request may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait between checks while one fails.
const MAX_RECHECK: Duration = Duration::from_secs(16);

/// What `/readyz` reads: the problems of the last check and of the watches since.
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// A std Mutex: held for a few map operations, never across an `.await`.
    state: Mutex<State>,
    /// Wakes [`keep_checking`] when a watch failed.
    recheck: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// A check has completed (until then the watches are not known to work).
    checked: bool,
    /// What stops each resource from being watched (key: `plural.group`, or [`ANY_WATCH`]).
    problems: BTreeMap<String, String>,
}

impl WatchHealth {
    /// `Ok` when every watched kind passed the last check and no watch failed since; else why
    /// not, one problem a line.
    pub fn ready(&self) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.checked {
            return Err("the watches have not been checked yet".into());
        }
        if state.problems.is_empty() {
            return Ok(());
        }
        Err(state
            .problems
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The controller reported a watch error: not ready until a check passes again (logged at
    /// warn when it is news).
    pub fn watch_failed(&self, e: &watcher::Error) {
        let Some((resource, problem)) = diagnose_watch(e) else {
            tracing::debug!(error = %e, "a watch expired; the watcher lists again");
            return;
        };
        self.record(resource.as_deref().unwrap_or(ANY_WATCH), Some(problem));
        self.recheck.notify_one();
    }

    /// Records `resource`'s problem (or its absence), logging a change: a new or different
    /// problem at warn, its end at info.
    fn record(&self, resource: &str, problem: Option<String>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(p) => {
                if state.problems.get(resource) != Some(&p) {
                    tracing::warn!(resource, "{p}");
                    state.problems.insert(resource.to_string(), p);
                }
            }
            None => {
                if state.problems.remove(resource).is_some() {
                    tracing::info!(resource, "watching works again");
                }
            }
        }
    }

    /// A whole check completed: `passed` clears a problem a watch reported without a resource.
    fn checked(&self, passed: bool) {
        if passed {
            self.record(ANY_WATCH, None);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if passed && (!state.checked || !state.problems.is_empty()) {
            tracing::info!("every watched resource can be listed and watched: ready");
        }
        state.checked = true;
    }
}

/// A kind the operator watches, as RBAC and people name it.
fn resource_name<K: Resource<DynamicType = ()>>() -> String {
    let plural = K::plural(&());
    match K::group(&()).as_ref() {
        "" => plural.into_owned(),
        group => format!("{plural}.{group}"),
    }
}

/// Lists (one item) and starts a watch of `K` in the operator's scope, each with a deadline.
async fn check_kind<K>(client: &Client, namespace: Option<&str>) -> Result<(), String>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + 'static,
{
    let api = scoped::<K>(client, namespace);
    let resource = resource_name::<K>();
    let scope = match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".to_string(),
    };
    let timed_out = || {
        format!("listing {resource} {scope} took over {CHECK_TIMEOUT:?}: is the API server overloaded or unreachable?")
    };
    let failed = |e: kube::Error| diagnose(&resource, &scope, &e);
    tokio::time::timeout(
        CHECK_TIMEOUT,
        api.list_metadata(&ListParams::default().limit(1)),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(failed)?;
    // The watch request is refused or accepted at once; the stream itself is not read.
    let watch = tokio::time::timeout(
        CHECK_TIMEOUT,
        api.watch_metadata(&WatchParams::default().timeout(1), "0"),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(failed)?;
    drop(watch);
    Ok(())
}

/// Every kind `controller::run` watches, in its order.
pub const WATCHED: [&str; 11] = [
    PIPELINES,
    "statefulsets.apps",
    "services",
    "poddisruptionbudgets.policy",
    "pods",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "configmaps",
    "cronjobs.batch",
    "persistentvolumeclaims",
];

/// Checks every watched kind once, recording each one's problem; whether all passed.
async fn check(client: &Client, namespace: Option<&str>, health: &WatchHealth) -> bool {
    let results = [
        (
            resource_name::<DualWritePipeline>(),
            check_kind::<DualWritePipeline>(client, namespace).await,
        ),
        (
            resource_name::<StatefulSet>(),
            check_kind::<StatefulSet>(client, namespace).await,
        ),
        (
            resource_name::<Service>(),
            check_kind::<Service>(client, namespace).await,
        ),
        (
            resource_name::<PodDisruptionBudget>(),
            check_kind::<PodDisruptionBudget>(client, namespace).await,
        ),
        (
            resource_name::<Pod>(),
            check_kind::<Pod>(client, namespace).await,
        ),
        (
            resource_name::<ServiceAccount>(),
            check_kind::<ServiceAccount>(client, namespace).await,
        ),
        (
            resource_name::<Role>(),
            check_kind::<Role>(client, namespace).await,
        ),
        (
            resource_name::<RoleBinding>(),
            check_kind::<RoleBinding>(client, namespace).await,
        ),
        (
            resource_name::<ConfigMap>(),
            check_kind::<ConfigMap>(client, namespace).await,
        ),
        (
            resource_name::<CronJob>(),
            check_kind::<CronJob>(client, namespace).await,
        ),
        (
            resource_name::<PersistentVolumeClaim>(),
            check_kind::<PersistentVolumeClaim>(client, namespace).await,
        ),
    ];
    let mut passed = true;
    for (resource, result) in results {
        passed &= result.is_ok();
        health.record(&resource, result.err());
    }
    health.checked(passed);
    passed
}

/// Checks the watched kinds at start, whenever a watch failed, and with backoff (1 s doubling
/// to [`MAX_RECHECK`]) while a check fails; returns when `stop` is cancelled.
pub async fn keep_checking(
    client: Client,
    namespace: Option<String>,
    health: &WatchHealth,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let passed = tokio::select! {
            passed = check(&client, namespace.as_deref(), health) => passed,
            _ = stop.cancelled() => return,
        };
        failures = if passed {
            0
        } else {
            failures.saturating_add(1)
        };
        let retry = Duration::from_secs(1u64 << failures.saturating_sub(1).min(4)).min(MAX_RECHECK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = health.recheck.notified() => {}
            _ = tokio::time::sleep(retry), if !passed => {}
        }
    }
}

/// What to fix, for an error listing or watching `resource` (`plural.group`) in `scope`.
/// Only the API server's own message is quoted: it names resources and users, never a token.
pub fn diagnose(resource: &str, scope: &str, e: &kube::Error) -> String {
    let kube::Error::Api(status) = e else {
        return format!("cannot list/watch {resource} {scope}: {e}");
    };
    match status.code {
        404 if resource == PIPELINES => format!(
            "the DualWritePipeline CRD is not installed (the API server does not serve {PIPELINES}): install the CRD: kubectl apply --server-side -f crds/ (or the chart with crds.enabled=true)"
        ),
        404 => format!("the API server does not serve {resource}: {}", status.message),
        403 => format!(
            "the operator's ServiceAccount lacks list/watch on {resource} {scope}: grant list and watch on it (the chart's ClusterRole does; with --namespace a Role there suffices). The API server said: {}",
            status.message
        ),
        401 => "the API server does not accept the operator's credentials (401 Unauthorized): check its ServiceAccount token, or KUBECONFIG outside a cluster".to_string(),
        code => format!(
            "cannot list/watch {resource} {scope} ({code} {}): {}",
            status.reason, status.message
        ),
    }
}

/// The resource a failed watch names (a 403 says which in its details; a 404 without details
/// can only be the CRD, as every other watched kind is built in) and what to fix; `None` for a
/// watch that merely expired (410 Gone: the watcher lists again by itself).
fn diagnose_watch(e: &watcher::Error) -> Option<(Option<String>, String)> {
    let source = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) if status.code == 410 => return None,
        watcher::Error::WatchError(status) => {
            return Some(diagnose_api(&kube::Error::Api(status.clone())));
        }
        watcher::Error::NoResourceVersion => return Some((None, format!("a watch failed: {e}"))),
    };
    Some(diagnose_api(source))
}

fn diagnose_api(e: &kube::Error) -> (Option<String>, String) {
    let kube::Error::Api(status) = e else {
        return (None, format!("a watch failed: {e}"));
    };
    let resource = status
        .details
        .as_ref()
        .filter(|d| !d.kind.is_empty())
        .map(|d| match d.group.as_str() {
            "" => d.kind.clone(),
            group => format!("{}.{group}", d.kind),
        })
        .or_else(|| (status.code == 404).then(|| PIPELINES.to_string()));
    let named = resource.as_deref().unwrap_or("a watched resource");
    (
        resource.clone(),
        diagnose(named, "in the operator's scope", e),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::StatusDetails;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str, details: Option<(&str, &str)>) -> kube::Error {
        let mut s = Status::failure(message, reason);
        s.code = code;
        s.details = details.map(|(group, kind)| {
            serde_json::from_value::<StatusDetails>(
                serde_json::json!({"group": group, "kind": kind}),
            )
            .unwrap()
        });
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn every_watched_kind_has_its_rbac_name() {
        let names = [
            resource_name::<DualWritePipeline>(),
            resource_name::<StatefulSet>(),
            resource_name::<Service>(),
            resource_name::<PodDisruptionBudget>(),
            resource_name::<Pod>(),
            resource_name::<ServiceAccount>(),
            resource_name::<Role>(),
            resource_name::<RoleBinding>(),
            resource_name::<ConfigMap>(),
            resource_name::<CronJob>(),
            resource_name::<PersistentVolumeClaim>(),
        ];
        assert_eq!(names, WATCHED);
    }

    #[test]
    fn diagnosis_says_what_to_fix() {
        let forbidden = r#"dualwritepipelines.dualwrite.io is forbidden: User "x" cannot list resource "dualwritepipelines" in API group "dualwrite.io" in the namespace "n""#;
        // (resource, error, what the line must contain)
        let cases = [
            (
                PIPELINES,
                api(404, "NotFound", "the server could not find the requested resource", None),
                "install the CRD: kubectl apply --server-side -f crds/",
            ),
            (
                PIPELINES,
                api(403, "Forbidden", forbidden, Some(("dualwrite.io", "dualwritepipelines"))),
                "the operator's ServiceAccount lacks list/watch on dualwritepipelines.dualwrite.io in namespace n",
            ),
            (
                "pods",
                api(401, "Unauthorized", "Unauthorized", None),
                "does not accept the operator's credentials",
            ),
            (
                "pods",
                api(500, "InternalError", "etcd is down", None),
                "cannot list/watch pods in namespace n (500 InternalError): etcd is down",
            ),
        ];
        for (resource, e, want) in cases {
            let got = diagnose(resource, "in namespace n", &e);
            assert!(got.contains(want), "{got}");
        }
    }

    #[test]
    fn a_failed_watch_is_traced_to_its_resource() {
        let forbidden = watcher::Error::InitialListFailed(api(
            403,
            "Forbidden",
            "pods is forbidden",
            Some(("", "pods")),
        ));
        let missing = watcher::Error::InitialListFailed(api(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ));
        let (resource, why) = diagnose_watch(&forbidden).unwrap();
        assert_eq!(resource.as_deref(), Some("pods"));
        assert!(why.contains("lacks list/watch on pods"), "{why}");
        let (resource, why) = diagnose_watch(&missing).unwrap();
        assert_eq!(resource.as_deref(), Some(PIPELINES));
        assert!(why.contains("install the CRD"), "{why}");
        let mut gone = Status::failure("too old resource version", "Expired");
        gone.code = 410;
        assert!(
            diagnose_watch(&watcher::Error::WatchError(Box::new(gone))).is_none(),
            "an expired watch is no problem"
        );
    }

    #[test]
    fn ready_only_after_a_clean_check_and_until_a_watch_fails() {
        let h = WatchHealth::default();
        assert!(h.ready().is_err(), "not checked yet");
        h.record(PIPELINES, Some("install the CRD".into()));
        h.checked(false);
        assert_eq!(h.ready(), Err("install the CRD".to_string()));
        h.record(PIPELINES, None);
        h.checked(true);
        assert_eq!(h.ready(), Ok(()));
        h.watch_failed(&watcher::Error::NoResourceVersion);
        assert!(
            h.ready().is_err(),
            "a failed watch is news until a check passes"
        );
        h.checked(true);
        assert_eq!(h.ready(), Ok(()));
    }
}
