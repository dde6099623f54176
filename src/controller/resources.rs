//! The objects the operator owns for each pipeline, built as plain values (applied with
//! server-side apply by the reconciler): the relay's ServiceAccount, Role and RoleBinding, its
//! Deployment and the ingest Service.
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
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::DualWritePipeline;
use crate::provider::secret::DEFAULT_SECRETS_DIR;
use crate::relay::{PipelineConfig, DEFAULT_PORT};

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

/// The relay may read its own pipeline and write its own report into the status; nothing else.
pub fn role(p: &DualWritePipeline) -> Role {
    let only_this = Some(vec![p.name_any()]);
    Role {
        metadata: meta(p),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![crate::api::GROUP.into()]),
                resources: Some(vec!["dualwritepipelines".into()]),
                resource_names: only_this.clone(),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![crate::api::GROUP.into()]),
                resources: Some(vec!["dualwritepipelines/status".into()]),
                resource_names: only_this,
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

pub fn role_binding(p: &DualWritePipeline) -> RoleBinding {
    RoleBinding {
        metadata: meta(p),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: relay_name(&p.name_any()),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: relay_name(&p.name_any()),
            namespace: p.namespace(),
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

/// The relay Deployment: `spec.relay.replicas` relays (default 1), rolled surge-first.
pub fn deployment(p: &DualWritePipeline, default_image: &str) -> Deployment {
    let relay = p.spec.relay.as_ref();
    let port = ingest_port(p);
    let mut pod_labels = labels(p);
    pod_labels.extend(selector(p));
    Deployment {
        metadata: meta(p),
        spec: Some(DeploymentSpec {
            replicas: Some(relay.and_then(|r| r.replicas).unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector(p)),
                ..LabelSelector::default()
            },
            // Surge before removing: a relay finishes its in-flight messages on SIGTERM.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    // The relay reads its ingest settings once at start: a change here rolls it.
                    annotations: Some(BTreeMap::from([(
                        "dualwrite.io/ingest".to_string(),
                        format!(
                            "port={port},maxBodyBytes={}",
                            crate::relay::PipelineConfig::try_from(&p.spec)
                                .map_or(crate::relay::DEFAULT_MAX_BODY_BYTES, |c| c
                                    .ingest
                                    .max_body_bytes)
                        ),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some({
                    let secrets = referenced_secret_keys(p);
                    relay_pod(p, relay_container(p, default_image, &secrets), &secrets)
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
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
        name: "state".into(),
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
        resources: relay.and_then(|r| r.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
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

/// The relay pod: its service account, restricted security defaults, the backlog volume and
/// one volume per referenced Secret.
fn relay_pod(
    p: &DualWritePipeline,
    container: Container,
    secrets: &BTreeMap<String, BTreeSet<String>>,
) -> PodSpec {
    let mut volumes = vec![Volume {
        name: "state".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    volumes.extend(secret_volumes(secrets));
    PodSpec {
        service_account_name: Some(relay_name(&p.name_any())),
        containers: vec![container],
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            fs_group: Some(RELAY_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // The backlog survives container restarts; a durable volume is the next step
        // for surviving pod rescheduling (see README).
        volumes: Some(volumes),
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
mod tests {
    use super::*;

    fn pipeline() -> DualWritePipeline {
        let mut p: DualWritePipeline = serde_yaml::from_str(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: orders, namespace: shop, uid: u-1}\nspec:\n  providers: [{name: a, type: memory}]\n  ingest: {port: 9000}\n  relay: {replicas: 3, image: custom:1}\n",
        )
        .unwrap();
        p.metadata.uid = Some("u-1".into());
        p
    }

    #[test]
    fn deployment_runs_the_relay_for_this_pipeline() {
        let d = deployment(&pipeline(), "dualwrite:default");
        assert_eq!(d.metadata.name.as_deref(), Some("orders-relay"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DualWritePipeline", "orders", Some(true))
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("custom:1"));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &["relay", "--pipeline", "shop/orders"]
        );
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9000);
        assert_eq!(pod.service_account_name.as_deref(), Some("orders-relay"));
        let annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(
            annotations["dualwrite.io/ingest"],
            "port=9000,maxBodyBytes=1048576"
        );
    }

    #[test]
    fn default_image_and_port() {
        let mut p = pipeline();
        p.spec.relay = None;
        p.spec.ingest = None;
        let d = deployment(&p, "dualwrite:default");
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("dualwrite:default"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
        assert_eq!(service(&p).spec.unwrap().ports.unwrap()[0].port, 8080);
    }

    #[test]
    fn relay_role_is_limited_to_its_own_pipeline() {
        let r = role(&pipeline());
        for rule in r.rules.unwrap() {
            assert!(
                !rule
                    .resources
                    .iter()
                    .flatten()
                    .any(|r| r.contains("secret")),
                "the relay reads its Secret keys as mounted files, never through the API"
            );
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["orders".to_string()][..])
            );
            assert!(!rule
                .verbs
                .iter()
                .any(|v| v == "delete" || v == "update" || v == "create"));
        }
    }

    /// Both secured providers and a closed ingest API; `shared` holds two keys used by two
    /// providers, `kafka-ca` is named twice.
    fn secured_pipeline(probe_port: &str) -> DualWritePipeline {
        let mut p: DualWritePipeline = serde_yaml::from_str(&format!(
            r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata: {{name: orders, namespace: shop}}
spec:
  ingest:
    port: 9000
    {probe_port}
    tls: {{secretName: ingest-tls, certificate: tls.crt, key: tls.key}}
    authentication: {{tokensSecret: {{secretName: ingest-tokens, key: tokens}}}}
  providers:
  - name: kafka
    type: kafka
    kafka:
      brokers: ["k:9093"]
      topic: orders
      tls: {{trustedCertificates: [{{secretName: kafka-ca, certificate: ca.crt}}, {{secretName: kafka-ca, certificate: ca.crt}}]}}
      authentication:
        type: scram-sha-512
        username: relay
        passwordSecret: {{secretName: shared, password: kafka-password}}
  - name: nats
    type: nats
    nats:
      url: tls://n:4222
      subject: orders
      tls: {{trustedCertificates: [{{secretName: kafka-ca, certificate: ca.crt}}]}}
      authentication:
        type: user-password
        username: relay
        passwordSecret: {{secretName: shared, password: nats-password}}
"#
        ))
        .unwrap();
        p.metadata.uid = Some("u-1".into());
        p
    }

    fn pod_of(p: &DualWritePipeline) -> PodSpec {
        deployment(p, "img").spec.unwrap().template.spec.unwrap()
    }

    #[test]
    fn exactly_the_referenced_keys_are_mounted_read_only_one_volume_per_secret() {
        let pod = pod_of(&secured_pipeline(""));
        let volumes: Vec<(String, Vec<String>)> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| {
                let s = v.secret.as_ref()?;
                assert_eq!(
                    s.optional,
                    Some(true),
                    "{}: a missing Secret is the relay's to report",
                    v.name
                );
                assert_eq!(s.default_mode, Some(0o440));
                assert_eq!(
                    v.name,
                    format!("secret-{}", s.secret_name.as_deref().unwrap())
                );
                let items = s.items.as_ref().unwrap();
                assert!(items.iter().all(|i| i.key == i.path), "file name = key");
                Some((
                    s.secret_name.clone().unwrap(),
                    items.iter().map(|i| i.key.clone()).collect(),
                ))
            })
            .collect();
        let want = |s: &str, keys: &[&str]| {
            (
                s.to_string(),
                keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            volumes,
            vec![
                want("ingest-tls", &["tls.crt", "tls.key"]),
                want("ingest-tokens", &["tokens"]),
                want("kafka-ca", &["ca.crt"]),
                want("shared", &["kafka-password", "nats-password"]),
            ]
        );
        let c = &pod.containers[0];
        let mounts: Vec<(String, String, Option<bool>)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.name != "state")
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            ["ingest-tls", "ingest-tokens", "kafka-ca", "shared"]
                .map(|s| (
                    format!("secret-{s}"),
                    format!("/var/run/secrets/dualwrite/{s}"),
                    Some(true)
                ))
                .to_vec()
        );
        // The relay's user reads the files through the group: fsGroup is its group.
        let sc = pod.security_context.unwrap();
        assert_eq!(
            (sc.run_as_user, sc.fs_group),
            (Some(RELAY_UID), Some(RELAY_UID))
        );
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "DUALWRITE_SECRETS_DIR"
            && e.value.as_deref() == Some(DEFAULT_SECRETS_DIR)));
    }

    #[test]
    fn a_pipeline_without_secrets_mounts_none() {
        let pod = pod_of(&pipeline());
        let names: Vec<&str> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["state"]);
    }

    #[test]
    fn volume_names_are_valid_and_unique_for_any_secret_name() {
        let label = regex::Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap();
        let long = "x".repeat(253);
        let long2 = format!("{}y", "x".repeat(252));
        let names = [
            "kafka-ca",
            "a.b",
            "a-b",
            "secret-a-b",
            &"y".repeat(56),
            &"y".repeat(57),
            &long,
            &long2,
            "a.-.b",
            "0",
        ];
        let volumes: Vec<String> = names.iter().map(|n| secret_volume_name(n)).collect();
        for (n, v) in names.iter().zip(&volumes) {
            assert!(v.len() <= 63 && label.is_match(v), "{n:?} -> {v:?}");
            assert!(v.starts_with("secret") && v != "state");
        }
        let unique: BTreeSet<&String> = volumes.iter().collect();
        assert_eq!(unique.len(), volumes.len(), "{volumes:?}");
        assert_eq!(secret_volume_name("kafka-ca"), "secret-kafka-ca");
        assert_eq!(
            secret_volume_name(&long),
            secret_volume_name(&long),
            "stable"
        );
    }

    #[test]
    fn probes_go_where_neither_tls_nor_a_token_is_in_the_way() {
        let target = |p: &DualWritePipeline| {
            let c = pod_of(p).containers.remove(0);
            let get = c.readiness_probe.unwrap().http_get.unwrap();
            let ports: Vec<(String, i32)> = c
                .ports
                .unwrap()
                .into_iter()
                .map(|p| (p.name.unwrap(), p.container_port))
                .collect();
            (get.port, get.scheme.unwrap(), ports)
        };
        let ingest = |n: &str| IntOrString::String(n.into());
        assert_eq!(
            target(&pipeline()),
            (
                ingest("ingest"),
                "HTTP".into(),
                vec![("ingest".into(), 9000)]
            )
        );
        assert_eq!(
            target(&secured_pipeline("")),
            (
                ingest("ingest"),
                "HTTPS".into(),
                vec![("ingest".into(), 9000)]
            )
        );
        assert_eq!(
            target(&secured_pipeline("probePort: 9001")),
            (
                ingest("probes"),
                "HTTP".into(),
                vec![("ingest".into(), 9000), ("probes".into(), 9001)]
            )
        );
    }
}
