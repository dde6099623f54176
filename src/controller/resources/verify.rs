//! The consistency check's own identity and Job: a ServiceAccount, Role and RoleBinding
//! `<pipeline>-verify` that may read the pipeline and write only the verdict ConfigMap
//! `<pipeline>-consistency` (so a relay's token cannot forge the verdict), and the Job that runs
//! `dualwrite verify --pipeline` under it with the relay's Secret files, once (a Job a person
//! starts) or on `spec.consistency.schedule` (the CronJob the operator owns).

use super::*;

/// Name of the consistency check's ServiceAccount, Role and RoleBinding for pipeline `name`
/// (at most 53 characters with the longest pipeline name).
pub fn verify_name(pipeline: &str) -> String {
    format!("{pipeline}-verify")
}

/// The metadata of the consistency check's objects: owned by the pipeline like the relay's,
/// named `<pipeline>-verify`, labelled as the check's (`app.kubernetes.io/name`).
fn verify_meta(p: &DualWritePipeline) -> ObjectMeta {
    let mut m = meta(p);
    m.name = Some(verify_name(&p.name_any()));
    if let Some(l) = m.labels.as_mut() {
        l.insert("app.kubernetes.io/name".into(), "dualwrite-verify".into());
    }
    m
}

/// The identity `dualwrite verify --pipeline` runs under (a Job a person starts today; the
/// operator's scheduled check later), apart from the relay's: the consistency verdict opens
/// the migration gate, so the relay's token must not be able to write it.
pub fn verify_service_account(p: &DualWritePipeline) -> ServiceAccount {
    ServiceAccount {
        metadata: verify_meta(p),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// The consistency check's Role: `get` its pipeline (the spec says which brokers to read) and
/// get/patch the pipeline's consistency ConfigMap ([`crate::api::consistency_name`]), where it
/// writes its verdict; nothing else. No status, no reports ConfigMap, no `create` (the operator
/// creates the ConfigMap), no Secrets (the brokers' credentials are mounted files).
pub fn verify_role(p: &DualWritePipeline) -> Role {
    Role {
        metadata: verify_meta(p),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![crate::api::GROUP.into()]),
                resources: Some(vec!["dualwritepipelines".into()]),
                resource_names: Some(vec![p.name_any()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![crate::api::consistency_name(&p.name_any())]),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

pub fn verify_role_binding(p: &DualWritePipeline) -> RoleBinding {
    binding(verify_meta(p), verify_name(&p.name_any()))
}

/// The ConfigMap the consistency check writes its verdict into, as the operator applies it: no
/// `data`, so server-side apply never touches the verdict.
pub fn consistency(p: &DualWritePipeline) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(crate::api::consistency_name(&p.name_any())),
            ..verify_meta(p)
        },
        ..ConfigMap::default()
    }
}

/// A Job that runs the consistency check of `p` once, as the README shows: the same image as
/// the relay (`spec.relay.image`, else `default_image`), `dualwrite verify --pipeline ns/name`
/// under the `<pipeline>-verify` ServiceAccount, the same Secret keys as the relay mounted
/// read-only at the same paths, restricted security, one attempt, kept for an hour so its log
/// can be read. It writes its verdict into `<pipeline>-consistency`; its exit code says whether
/// the brokers agree. (Issue 13's scheduled check runs this pod template.)
pub fn verify_job(p: &DualWritePipeline, default_image: &str, name: &str) -> Job {
    let secrets = referenced_secret_keys(p);
    let relay = p.spec.relay.clone().unwrap_or_default();
    let container = Container {
        name: "verify".into(),
        image: Some(relay.image.unwrap_or_else(|| default_image.to_string())),
        args: Some(vec![
            "verify".into(),
            "--pipeline".into(),
            format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
        ]),
        env: Some(vec![EnvVar {
            name: "DUALWRITE_SECRETS_DIR".into(),
            value: Some(DEFAULT_SECRETS_DIR.into()),
            ..EnvVar::default()
        }]),
        security_context: Some(restricted_container()),
        volume_mounts: Some(secret_mounts(&secrets)).filter(|m| !m.is_empty()),
        ..Container::default()
    };
    let mut metadata = verify_meta(p);
    metadata.name = Some(name.to_string());
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    service_account_name: Some(verify_name(&p.name_any())),
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    security_context: Some(restricted_pod()),
                    volumes: Some(secret_volumes(&secrets)).filter(|v| !v.is_empty()),
                    image_pull_secrets: relay.image_pull_secrets,
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The name of the Job a Verify request (`kubectl dualwrite verify`, an Argo CD action) starts:
/// `<pipeline>-verify-<suffix>` within the 63 characters of a Job's name label, the suffix from
/// the request's nonce (else its `requestedAt`), letters and digits only, so that one request is
/// one Job (its creation again is a 409) and two requests are two.
pub fn verify_request_job_name(pipeline: &str, request: &crate::api::MigrationRequest) -> String {
    let from = request.nonce.as_deref().unwrap_or(&request.requested_at);
    let clean: Vec<char> = from
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let tail: String = clean[clean.len().saturating_sub(20)..].iter().collect();
    let suffix = format!("-verify-{tail}");
    let keep = 63usize.saturating_sub(suffix.len());
    let base: String = pipeline.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// How long one scheduled check may run before Kubernetes stops it (`activeDeadlineSeconds`):
/// reading a whole retention of two brokers takes minutes, not half an hour; a check stuck
/// on a broker that does not answer must not hold the schedule (Forbid) for ever.
pub const VERIFY_ACTIVE_DEADLINE_SECONDS: i64 = 30 * 60;

/// How late a scheduled check may still start (`startingDeadlineSeconds`): a run missed while
/// the cluster's CronJob controller was down is made up within this, then skipped for the next
/// one (and the controller never counts more than this span of missed runs).
pub const VERIFY_STARTING_DEADLINE_SECONDS: i64 = 5 * 60;

/// The CronJob that runs the consistency check on `spec.consistency.schedule`, or `None`
/// without a schedule (the operator then deletes the one it owns). Its Jobs are [`verify_job`]'s
/// (same image, ServiceAccount `<pipeline>-verify`, the relay's Secret files, restricted
/// security) plus `--window` and `--settle` from the spec; one at a time (Forbid: a slow check
/// is not overtaken by the next), the last 3 successful and 3 failed Jobs kept for `kubectl`
/// (no TTL, which would fight the history limits), each stopped after
/// [`VERIFY_ACTIVE_DEADLINE_SECONDS`].
pub fn verify_cron_job(p: &DualWritePipeline, default_image: &str) -> Option<CronJob> {
    let consistency = p.spec.consistency.as_ref()?;
    let schedule = consistency.schedule.clone()?;
    let job = verify_job(p, default_image, &verify_name(&p.name_any()));
    let mut spec = job.spec.unwrap_or_default();
    spec.ttl_seconds_after_finished = None;
    spec.active_deadline_seconds = Some(VERIFY_ACTIVE_DEADLINE_SECONDS);
    let flags = [
        ("--window", consistency.window.as_ref()),
        ("--settle", consistency.settle.as_ref()),
    ];
    if let Some(c) = spec
        .template
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
    {
        let args = c.args.get_or_insert_with(Vec::new);
        for (flag, value) in flags {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]);
            }
        }
    }
    let metadata = verify_meta(p);
    Some(CronJob {
        metadata: metadata.clone(),
        spec: Some(CronJobSpec {
            schedule,
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(VERIFY_STARTING_DEADLINE_SECONDS),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels,
                    ..ObjectMeta::default()
                }),
                spec: Some(spec),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::verify_request_job_name;
    use crate::api::{MigrationAction, MigrationRequest};

    #[test]
    fn request_job_names_fit_a_label_and_follow_the_nonce() {
        let mut r = MigrationRequest {
            action: MigrationAction::Verify,
            to_step: None,
            requested_at: "2026-11-27T13:00:00Z".into(),
            requested_by: None,
            nonce: Some("81234".into()),
        };
        assert_eq!(verify_request_job_name("orders", &r), "orders-verify-81234");
        let long = "a".repeat(63);
        assert!(verify_request_job_name(&long, &r).len() <= 63);
        r.nonce = Some("9F1C-UUID/..".into());
        assert_eq!(
            verify_request_job_name("orders", &r),
            "orders-verify-9f1cuuid"
        );
        r.nonce = None;
        assert_eq!(
            verify_request_job_name("orders", &r),
            "orders-verify-20261127t130000z"
        );
    }
}
