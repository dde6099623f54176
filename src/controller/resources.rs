//! The objects the operator owns for each pipeline, built as plain values (applied with
//! server-side apply by the reconciler): the relay's ServiceAccount, Role and RoleBinding, its
//! Deployment and the ingest Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::DualWritePipeline;
use crate::relay::DEFAULT_PORT;

/// Where a relay keeps its hinted-handoff backlog inside the pod.
pub const STATE_DIR: &str = "/var/lib/dualwrite";

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
                spec: Some(relay_pod(p, relay_container(p, default_image))),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The relay container: hardened (non-root, read-only root, no capabilities), probed on its
/// ingest port, its backlog on the `state` volume.
fn relay_container(p: &DualWritePipeline, default_image: &str) -> Container {
    let relay = p.spec.relay.as_ref();
    let image = relay
        .and_then(|r| r.image.clone())
        .unwrap_or_else(|| default_image.to_string());
    let port = ingest_port(p);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ingest".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    Container {
        name: "relay".into(),
        image: Some(image),
        args: Some(relay_args(p)),
        env: Some(relay_env(port)),
        ports: Some(vec![ContainerPort {
            name: Some("ingest".into()),
            container_port: port.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
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
        volume_mounts: Some(vec![VolumeMount {
            name: "state".into(),
            mount_path: STATE_DIR.into(),
            ..VolumeMount::default()
        }]),
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
        EnvVar {
            name: "LOG_FORMAT".into(),
            value: Some("json".into()),
            ..EnvVar::default()
        },
    ]
}

/// The relay pod: its service account, restricted security defaults and the backlog volume.
fn relay_pod(p: &DualWritePipeline, container: Container) -> PodSpec {
    PodSpec {
        service_account_name: Some(relay_name(&p.name_any())),
        containers: vec![container],
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // The backlog survives container restarts; a durable volume is the next step
        // for surviving pod rescheduling (see README).
        volumes: Some(vec![Volume {
            name: "state".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
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
}
