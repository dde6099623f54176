//! The objects the operator owns for each pipeline, built as plain values (applied with
//! server-side apply by the reconciler): the relay's ServiceAccount, Role and RoleBinding, the
//! ConfigMap its reports go to, the consistency check's own ServiceAccount, Role, RoleBinding
//! and verdict ConfigMap (`<pipeline>-verify`, `<pipeline>-consistency`), the relay's
//! StatefulSet (a PersistentVolumeClaim per relay for the hinted-handoff backlog), the ingest
//! Service, the headless Service of the relay pods, and a PodDisruptionBudget when there is
//! more than one relay.
//!
//! Broker credentials reach the relay as files, and the operator never reads them: for every
//! Secret the pipeline names, the pod template carries one `secret` volume listing exactly the
//! keys the pipeline references, mounted read-only at
//! `/var/run/secrets/dualwrite/<secretName>/<key>`. The kubelet reads the Secret; the operator
//! only writes its name and keys, so its RBAC has no access to Secrets at all. The volumes are
//! `optional`: a missing Secret or key leaves the file absent and the relay reports the
//! provider's `SecretMissing` reason, instead of a pod stuck in ContainerCreating. A Secret's
//! new content needs no rollout (the kubelet rewrites the files in place).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::DualWritePipeline;
use crate::provider::secret::DEFAULT_SECRETS_DIR;
use crate::relay::{PipelineConfig, DEFAULT_PORT};

mod verify;
pub use verify::{
    consistency, verify_cron_job, verify_job, verify_name, verify_request_job_name, verify_role,
    verify_role_binding, verify_service_account, VERIFY_ACTIVE_DEADLINE_SECONDS,
    VERIFY_STARTING_DEADLINE_SECONDS,
};

/// Where a relay keeps its hinted-handoff backlog inside the pod.
pub const STATE_DIR: &str = "/var/lib/dualwrite";

/// The relay's user and group (distroless `nonroot`); `fsGroup` too, so the Secret files
/// (mode [`SECRET_FILE_MODE`], group-owned by it) are readable by the relay and nobody else.
pub const RELAY_UID: i64 = 65532;

/// Mode of the mounted Secret files: read-only, owner and group (the pod's `fsGroup`).
pub const SECRET_FILE_MODE: i32 = 0o440;

/// Name of every object owned for pipeline `name`.
pub fn relay_name(pipeline: &str) -> String {
    format!("{pipeline}-relay")
}

fn labels(p: &DualWritePipeline) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "dualwrite-relay".into()),
        ("app.kubernetes.io/instance".into(), p.name_any()),
        (
            "app.kubernetes.io/managed-by".into(),
            "dualwrite-operator".into(),
        ),
        ("dualwrite.io/pipeline".into(), p.name_any()),
    ])
}

fn selector(p: &DualWritePipeline) -> BTreeMap<String, String> {
    BTreeMap::from([("dualwrite.io/pipeline".into(), p.name_any())])
}

fn meta(p: &DualWritePipeline) -> ObjectMeta {
    let owner: OwnerReference = p
        .controller_owner_ref(&())
        .expect("a pipeline read from the API server has a name and uid");
    ObjectMeta {
        name: Some(relay_name(&p.name_any())),
        namespace: p.namespace(),
        labels: Some(labels(p)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The Secret keys a pipeline references, by Secret name (sorted, so the pod template does not
/// change when the spec lists them in another order). Empty for a spec the validator refuses:
/// such a relay reports its configuration error and reads no Secret.
pub fn referenced_secret_keys(p: &DualWritePipeline) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Ok(mut config) = PipelineConfig::try_from(&p.spec) {
        for f in config.secret_files_mut() {
            out.entry(f.secret.clone())
                .or_default()
                .insert(f.key.clone());
        }
    }
    out
}

/// The pod volume name for Secret `secret`: `secret-<name>` when that is a valid volume name
/// (a DNS-1123 label: at most 63 characters, no dots); otherwise `secrets-<hash>-<prefix>`, with
/// a stable hash of the whole name, so two long names sharing a prefix still get two volumes.
/// The two forms never collide (`secret-` vs `secrets`), nor with the `state` volume.
pub fn secret_volume_name(secret: &str) -> String {
    let plain = format!("secret-{secret}");
    if plain.len() <= 63 && !secret.contains('.') {
        return plain;
    }
    let prefix: String = secret
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .take(63 - "secrets-".len() - 16 - 1)
        .collect();
    let prefix = prefix.trim_end_matches('-');
    format!("secrets-{:016x}-{prefix}", fnv1a(secret.as_bytes()))
        .trim_end_matches('-')
        .to_string()
}

/// FNV-1a, 64 bits: a hash that never changes between Rust versions (the std hasher may), so a
/// volume name, and with it the pod template, stays the same across operator upgrades.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One `secret` volume per referenced Secret, listing exactly the referenced keys (file name =
/// key), optional, mode [`SECRET_FILE_MODE`].
fn secret_volumes(secrets: &BTreeMap<String, BTreeSet<String>>) -> Vec<Volume> {
    secrets
        .iter()
        .map(|(secret, keys)| Volume {
            name: secret_volume_name(secret),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            mode: None,
                        })
                        .collect(),
                ),
                optional: Some(true),
                default_mode: Some(SECRET_FILE_MODE),
            }),
            ..Volume::default()
        })
        .collect()
}

/// Each Secret volume, read-only at `/var/run/secrets/dualwrite/<secretName>`.
fn secret_mounts(secrets: &BTreeMap<String, BTreeSet<String>>) -> Vec<VolumeMount> {
    secrets
        .keys()
        .map(|secret| VolumeMount {
            name: secret_volume_name(secret),
            mount_path: format!("{DEFAULT_SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect()
}

pub fn ingest_port(p: &DualWritePipeline) -> u16 {
    p.spec
        .ingest
        .as_ref()
        .and_then(|i| i.port)
        .unwrap_or(DEFAULT_PORT)
}

pub fn service_account(p: &DualWritePipeline) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(p),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// The relay's Role: read its own pipeline (spec, and the status the operator decides), and
/// get/patch its pipeline's reports ConfigMap, nothing else. No verb on
/// `dualwritepipelines/status`: what the operator decides (step, fallback, strategy,
/// conditions, consistency) cannot be written with a relay's token, and the consistency
/// ConfigMap is not named (the check has a Role of its own, [`verify_role`]). No `create`
/// either (it cannot be limited by `resourceNames`): the operator creates the ConfigMap.
pub fn role(p: &DualWritePipeline) -> Role {
    Role {
        metadata: meta(p),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![crate::api::GROUP.into()]),
                resources: Some(vec!["dualwritepipelines".into()]),
                resource_names: Some(vec![p.name_any()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![crate::api::relay_reports_name(&p.name_any())]),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

/// The ConfigMap the relays report into (see [`crate::api::relay_reports_name`]), as the
/// operator applies it: no `data`, so server-side apply never touches the relays' keys.
pub fn relay_reports(p: &DualWritePipeline) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(crate::api::relay_reports_name(&p.name_any())),
            ..meta(p)
        },
        ..ConfigMap::default()
    }
}

pub fn role_binding(p: &DualWritePipeline) -> RoleBinding {
    binding(meta(p), relay_name(&p.name_any()))
}

/// A RoleBinding (`metadata`) of the Role and the ServiceAccount both named `name`.
fn binding(metadata: ObjectMeta, name: String) -> RoleBinding {
    let namespace = metadata.namespace.clone();
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace,
            ..Subject::default()
        }]),
    }
}

/// The relay container's arguments: the same binary, in relay mode, watching this pipeline.
pub fn relay_args(p: &DualWritePipeline) -> Vec<String> {
    vec![
        "relay".into(),
        "--pipeline".into(),
        format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
    ]
}

/// Annotation on the StatefulSet: a stable hash of the pod template the operator last applied,
/// and the pipeline generation it applied it for. Together they tell a rollout the user asked
/// for (the generation moved) from one the operator makes of its own (same generation, another
/// template: a new operator version, a new default image), which [`super::rollout`] bounds.
pub const TEMPLATE_ANNOTATION: &str = "dualwrite.io/pod-template";

/// Name of the headless Service that gives each relay a stable DNS name
/// (`<name>-relay-<ordinal>.<name>-relay-pods.<namespace>.svc`), the StatefulSet's
/// `serviceName`.
pub fn pods_service_name(pipeline: &str) -> String {
    format!("{pipeline}-relay-pods")
}

/// The pod of relay `ordinal` of pipeline `pipeline`, as the StatefulSet controller names it
/// (also the name its report has in `status.relays`).
pub fn relay_pod_name(pipeline: &str, ordinal: i32) -> String {
    format!("{}-{ordinal}", relay_name(pipeline))
}

/// The claim template's name: a relay's PVC is `state-<name>-relay-<ordinal>`.
pub const STATE_VOLUME: &str = "state";

/// Size of a relay's backlog claim when `spec.relay.storage.size` is unset.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// The PVC of relay `ordinal` of pipeline `pipeline`, as the StatefulSet controller names it.
pub fn claim_name(pipeline: &str, ordinal: i32) -> String {
    format!("{STATE_VOLUME}-{}-{ordinal}", relay_name(pipeline))
}

/// The ordinal of a relay PVC of pipeline `pipeline`, if `claim` is one.
pub fn claim_ordinal(pipeline: &str, claim: &str) -> Option<i32> {
    let prefix = format!("{STATE_VOLUME}-{}-", relay_name(pipeline));
    let n = claim.strip_prefix(&prefix)?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !(n.len() > 1 && n.starts_with('0')))
        .then(|| n.parse().ok())
        .flatten()
}

pub fn replicas(p: &DualWritePipeline) -> i32 {
    p.spec.relay.as_ref().and_then(|r| r.replicas).unwrap_or(1)
}

/// The relay StatefulSet: `spec.relay.replicas` relays (default 1; the reconciler keeps more
/// while a scale-down waits for a backlog, see [`super::scale`]), each with its own
/// PersistentVolumeClaim for the backlog.
///
/// - `podManagementPolicy: Parallel`: relays are peers with no order between them (no quorum,
///   no leader), so scaling creates or removes them all at once instead of waiting for each to
///   be Ready (under FailFast a relay is not Ready while a broker is down, and OrderedReady
///   would then block a scale-up for the whole outage). Rollouts are not affected: they go one
///   pod at a time either way.
/// - `updateStrategy: RollingUpdate`: one pod at a time, highest ordinal first, the next only
///   once the updated one is Ready; each stopping relay drains (see [`grace_period_seconds`]).
/// - `persistentVolumeClaimRetentionPolicy: Retain/Retain`: a claim may hold a backlog, so
///   neither a scale-down nor the pipeline's deletion removes it; a relay that comes back with
///   the same ordinal replays it. A scale-down waits (bounded) for the relays it removes to
///   replay their backlog first ([`super::scale`]); claims of relays scaled away are listed in
///   `status.retainedClaims`.
pub fn statefulset(p: &DualWritePipeline, default_image: &str) -> StatefulSet {
    let port = ingest_port(p);
    let template = pod_template(p, default_image, port);
    let mut metadata = meta(p);
    metadata.annotations = Some(BTreeMap::from([(
        TEMPLATE_ANNOTATION.to_string(),
        template_annotation(&template, p.metadata.generation.unwrap_or(0)),
    )]));
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas(p)),
            selector: LabelSelector {
                match_labels: Some(selector(p)),
                ..LabelSelector::default()
            },
            service_name: Some(pods_service_name(&p.name_any())),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            volume_claim_templates: Some(vec![claim_template(p)]),
            template,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// `<hash of the pod template>@<generation>`, the value of [`TEMPLATE_ANNOTATION`].
pub fn template_annotation(template: &PodTemplateSpec, generation: i64) -> String {
    let json = serde_json::to_vec(template).expect("a pod template serializes");
    format!("{:016x}@{generation}", fnv1a(&json))
}

/// The claim template of the backlog volume: ReadWriteOnce, `spec.relay.storage`'s size and
/// class. Labelled so the operator can list a pipeline's claims.
fn claim_template(p: &DualWritePipeline) -> PersistentVolumeClaim {
    let storage = p.spec.relay.as_ref().and_then(|r| r.storage.as_ref());
    let size = storage
        .and_then(|s| s.size.clone())
        .unwrap_or_else(|| Quantity(DEFAULT_STORAGE_SIZE.into()));
    let mut labels = labels(p);
    labels.remove("app.kubernetes.io/instance");
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(STATE_VOLUME.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.and_then(|s| s.storage_class_name.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The relay pod's label naming its container port that serves `/metrics` to a scraper with
/// no token over plain HTTP; the chart's PodMonitor scrapes `ingest` only where it says so.
pub const METRICS_PORT_LABEL: &str = "dualwrite.io/metrics-port";

/// The named container port a scraper reads `/metrics` on: `probes` with
/// `spec.ingest.probePort` (the ingest port then serves no `/metrics`), else `ingest` when the
/// ingest API has neither TLS nor tokens, else none (`/metrics` there needs the token).
pub fn metrics_port(p: &DualWritePipeline) -> Option<&'static str> {
    let ingest = p.spec.ingest.as_ref();
    match ingest {
        Some(i) if i.probe_port.is_some() => Some("probes"),
        Some(i) if i.tls.is_some() || i.authentication.is_some() => None,
        _ => Some("ingest"),
    }
}

/// The relay pod template: the user's `podLabels`/`podAnnotations` under the operator's own.
fn pod_template(p: &DualWritePipeline, default_image: &str, port: u16) -> PodTemplateSpec {
    let relay = p.spec.relay.as_ref();
    let mut pod_labels = relay.and_then(|r| r.pod_labels.clone()).unwrap_or_default();
    pod_labels.extend(labels(p));
    pod_labels.extend(selector(p));
    if let Some(port) = metrics_port(p) {
        pod_labels.insert(METRICS_PORT_LABEL.into(), port.into());
    }
    let mut annotations = relay
        .and_then(|r| r.pod_annotations.clone())
        .unwrap_or_default();
    // The relay reads its ingest settings (port, body limit, TLS, tokens, probe port, caps,
    // timeouts) once at start: any change to `spec.ingest` changes this value and rolls it.
    // (A rotated Secret's content is followed live and needs no roll.)
    let ingest = serde_json::to_vec(&p.spec.ingest).unwrap_or_default();
    annotations.insert(
        "dualwrite.io/ingest".to_string(),
        format!(
            "port={port},maxBodyBytes={},settings={:016x}",
            crate::relay::PipelineConfig::try_from(&p.spec)
                .map_or(crate::relay::DEFAULT_MAX_BODY_BYTES, |c| c
                    .ingest
                    .max_body_bytes),
            fnv1a(&ingest)
        ),
    );
    let secrets = referenced_secret_keys(p);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(relay_pod(
            p,
            relay_container(p, default_image, &secrets),
            &secrets,
        )),
    }
}

/// Seconds a stopping relay sleeps in its preStop hook before SIGTERM, so that endpoints (the
/// Service, kube-proxy, ingress controllers) stop sending it new requests first.
pub const PRE_STOP_SECONDS: i64 = 5;

/// Seconds left after the backlog grace for closing the providers (Kafka flushes its queue).
pub const CLOSE_MARGIN_SECONDS: i64 = 10;

/// The pod's `terminationGracePeriodSeconds`: long enough that a stopping relay's whole drain
/// ends before SIGKILL, in this order: the preStop sleep ([`PRE_STOP_SECONDS`]); after SIGTERM,
/// requests in flight finish ([`crate::relay::listener::DRAIN_GRACE`], 5 s) and a publish still
/// running meets its deadline (`spec.publishTimeout`, 5 s by default); the replay empties the
/// backlogs for at most [`crate::relay::BACKLOG_GRACE`] (20 s); the providers close
/// ([`CLOSE_MARGIN_SECONDS`]). 45 s with the defaults. A backlog not emptied in that time stays
/// on the relay's claim for its successor.
pub fn grace_period_seconds(p: &DualWritePipeline) -> i64 {
    let publish_timeout = PipelineConfig::try_from(&p.spec)
        .map_or(crate::composite::DEFAULT_PUBLISH_TIMEOUT, |c| {
            c.publish_timeout
        });
    let secs = |d: std::time::Duration| d.as_secs_f64().ceil() as i64;
    PRE_STOP_SECONDS
        + secs(crate::relay::listener::DRAIN_GRACE)
        + secs(publish_timeout)
        + secs(crate::relay::BACKLOG_GRACE)
        + CLOSE_MARGIN_SECONDS
}

/// Resources of the relay container when `spec.relay.resources` sets neither requests nor
/// limits: requests 100m CPU / 128Mi (a relay idles at a few MiB and a burst of messages in
/// flight is bounded by `maxInFlight` × the body limit), a 512Mi memory limit, no CPU limit
/// (throttling would only add latency). Burstable QoS, never BestEffort.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn relay_resources(p: &DualWritePipeline) -> ResourceRequirements {
    match p.spec.relay.as_ref().and_then(|r| r.resources.clone()) {
        Some(r)
            if r.requests.as_ref().is_some_and(|m| !m.is_empty())
                || r.limits.as_ref().is_some_and(|m| !m.is_empty()) =>
        {
            r
        }
        _ => default_resources(),
    }
}

/// The PodDisruptionBudget of a pipeline with more than one relay: at most one relay evicted at
/// a time (node drains, cluster upgrades), each draining its backlog as it goes. Unhealthy
/// relays may always be evicted, so a crash-looping relay never blocks a node drain. `None`
/// with one relay or none: a budget would block every drain of that relay's node.
pub fn pod_disruption_budget(p: &DualWritePipeline) -> Option<PodDisruptionBudget> {
    (replicas(p) > 1).then(|| PodDisruptionBudget {
        metadata: meta(p),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(p)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The headless Service of the relays: a stable DNS name per relay (to read one relay's
/// `/stats`, e.g. its backlog), listing relays that are not Ready too (a relay is not Ready
/// while FailFast lacks a broker, which is when one wants to look at it).
pub fn pods_service(p: &DualWritePipeline) -> Service {
    let mut svc = service(p);
    svc.metadata.name = Some(pods_service_name(&p.name_any()));
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
        spec.publish_not_ready_addresses = Some(true);
    }
    svc
}

/// Where the kubelet probes the relay: the `probes` port when `spec.ingest.probePort` is set
/// (plain HTTP, no token), else the ingest port, over HTTPS when the ingest API has TLS.
fn probe_target(p: &DualWritePipeline) -> (&'static str, &'static str) {
    let ingest = p.spec.ingest.as_ref();
    match (
        ingest.and_then(|i| i.probe_port),
        ingest.is_some_and(|i| i.tls.is_some()),
    ) {
        (Some(_), _) => ("probes", "HTTP"),
        (None, true) => ("ingest", "HTTPS"),
        (None, false) => ("ingest", "HTTP"),
    }
}

/// The relay container: hardened (non-root, read-only root, no capabilities), probed on its
/// probe port (or ingest port), its backlog on the `state` volume, the referenced Secret keys
/// under the secrets directory.
fn relay_container(
    p: &DualWritePipeline,
    default_image: &str,
    secrets: &BTreeMap<String, BTreeSet<String>>,
) -> Container {
    let relay = p.spec.relay.as_ref();
    let image = relay
        .and_then(|r| r.image.clone())
        .unwrap_or_else(|| default_image.to_string());
    let port = ingest_port(p);
    let (probe_port, scheme) = probe_target(p);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(probe_port.into()),
            scheme: Some(scheme.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let named_port = |name: &str, number: u16| ContainerPort {
        name: Some(name.into()),
        container_port: number.into(),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let mut ports = vec![named_port("ingest", port)];
    if let Some(probes) = p.spec.ingest.as_ref().and_then(|i| i.probe_port) {
        ports.push(named_port("probes", probes));
    }
    let mut volume_mounts = vec![VolumeMount {
        name: STATE_VOLUME.into(),
        mount_path: STATE_DIR.into(),
        ..VolumeMount::default()
    }];
    volume_mounts.extend(secret_mounts(secrets));
    Container {
        name: "relay".into(),
        image: Some(image),
        args: Some(relay_args(p)),
        env: Some(relay_env(port)),
        ports: Some(ports),
        readiness_probe: Some(probe("/ready")),
        liveness_probe: Some(probe("/health")),
        resources: Some(relay_resources(p)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        // The relay writes its start-up error there (one line, see `cli::write_termination_message`);
        // a crash with no message falls back to the end of its log.
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(restricted_container()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

/// The container security context of the restricted Pod Security Standard: no privilege
/// escalation, a read-only root, non-root, no capabilities.
fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The pod security context of the relay and the check: [`RELAY_UID`] (the Secret files are
/// group-readable by it), the runtime's default seccomp profile.
fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RELAY_UID),
        run_as_group: Some(RELAY_UID),
        fs_group: Some(RELAY_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The relay's environment: its pod name (the key of its report), port, state and log format.
fn relay_env(port: u16) -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        EnvVar {
            name: "API_PORT".into(),
            value: Some(port.to_string()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "DUALWRITE_STATE_DIR".into(),
            value: Some(STATE_DIR.into()),
            ..EnvVar::default()
        },
        // The relay's default, spelt out so that a reader of the pod sees where the Secret
        // files are (and a local run from this template can move them).
        EnvVar {
            name: "DUALWRITE_SECRETS_DIR".into(),
            value: Some(DEFAULT_SECRETS_DIR.into()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "LOG_FORMAT".into(),
            value: Some("json".into()),
            ..EnvVar::default()
        },
    ]
}

/// The relay pod: its service account, restricted security defaults, one volume per
/// referenced Secret (the backlog's `state` volume comes from the claim template), the grace
/// period of its drain and the placement settings of `spec.relay`.
fn relay_pod(
    p: &DualWritePipeline,
    container: Container,
    secrets: &BTreeMap<String, BTreeSet<String>>,
) -> PodSpec {
    let relay = p.spec.relay.clone().unwrap_or_default();
    PodSpec {
        service_account_name: Some(relay_name(&p.name_any())),
        containers: vec![container],
        termination_grace_period_seconds: Some(grace_period_seconds(p)),
        security_context: Some(restricted_pod()),
        volumes: Some(secret_volumes(secrets)).filter(|v| !v.is_empty()),
        image_pull_secrets: relay.image_pull_secrets,
        node_selector: relay.node_selector,
        tolerations: relay.tolerations,
        affinity: relay.affinity,
        priority_class_name: relay.priority_class_name,
        ..PodSpec::default()
    }
}

pub fn service(p: &DualWritePipeline) -> Service {
    let port = ingest_port(p);
    Service {
        metadata: meta(p),
        spec: Some(ServiceSpec {
            selector: Some(selector(p)),
            ports: Some(vec![ServicePort {
                name: Some("ingest".into()),
                port: port.into(),
                target_port: Some(IntOrString::String("ingest".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests;
