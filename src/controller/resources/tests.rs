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
fn statefulset_runs_the_relay_for_this_pipeline() {
    let d = statefulset(&pipeline(), "dualwrite:default");
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
    let ingest = &annotations["dualwrite.io/ingest"];
    assert!(
        ingest.starts_with("port=9000,maxBodyBytes=1048576,settings="),
        "{ingest}"
    );
    // Any other ingest setting (TLS, tokens, probe port, caps) changes it too, so the
    // relays roll and start with it.
    let mut q = pipeline();
    q.spec.ingest.as_mut().unwrap().probe_port = Some(9090);
    let other = statefulset(&q, "img")
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_ne!(&other["dualwrite.io/ingest"], ingest);
}

#[test]
fn default_image_and_port() {
    let mut p = pipeline();
    p.spec.relay = None;
    p.spec.ingest = None;
    let d = statefulset(&p, "dualwrite:default");
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
        assert!(
            rule.resource_names.as_deref() == Some(&["orders".to_string()][..])
                || rule.resource_names.as_deref()
                    == Some(&["orders-relay-reports".to_string()][..]),
            "{rule:?}"
        );
        assert!(
            !rule
                .resources
                .iter()
                .flatten()
                .any(|r| r.starts_with("dualwritepipelines/")),
            "a relay's token writes no part of the pipeline's status: {rule:?}"
        );
        assert!(!rule
            .verbs
            .iter()
            .any(|v| v == "delete" || v == "update" || v == "create"));
    }
}

#[test]
fn verify_role_is_limited_to_reading_its_pipeline_and_writing_its_verdict() {
    let p = pipeline();
    let sa = verify_service_account(&p);
    assert_eq!(sa.metadata.name.as_deref(), Some("orders-verify"));
    assert_eq!(sa.automount_service_account_token, Some(true));
    let owner = &sa.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.name.as_str(), owner.controller),
        ("orders", Some(true))
    );
    let r = verify_role(&p);
    assert_eq!(r.metadata.name.as_deref(), Some("orders-verify"));
    // Each rule as [apiGroups, resources, resourceNames, verbs].
    let rules: Vec<[Vec<String>; 4]> = r
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            [
                r.api_groups.unwrap(),
                r.resources.unwrap(),
                r.resource_names.unwrap(),
                r.verbs,
            ]
        })
        .collect();
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            [
                v(&["dualwrite.io"]),
                v(&["dualwritepipelines"]),
                v(&["orders"]),
                v(&["get"])
            ],
            [
                v(&[""]),
                v(&["configmaps"]),
                v(&["orders-consistency"]),
                v(&["get", "patch"])
            ],
        ],
        "get the pipeline, get/patch its verdict ConfigMap: no status, no reports, no Secret"
    );
    let b = verify_role_binding(&p);
    assert_eq!(b.metadata.name.as_deref(), Some("orders-verify"));
    assert_eq!(
        (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
        ("Role", "orders-verify")
    );
    let s = &b.subjects.unwrap()[0];
    assert_eq!(
        (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
        ("ServiceAccount", "orders-verify", Some("shop"))
    );
    let cm = consistency(&p);
    assert_eq!(cm.metadata.name.as_deref(), Some("orders-consistency"));
    assert!(
        cm.data.is_none(),
        "server-side apply must not own the verdict"
    );
    assert_eq!(
        cm.metadata.owner_references.as_ref().unwrap()[0].name,
        "orders"
    );
    // The relay's Role does not name the verdict's ConfigMap, nor the relay's ServiceAccount
    // the check's Role.
    assert!(!role(&p)
        .rules
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_names.iter().flatten())
        .any(|n| n == "orders-consistency"));
    assert_eq!(role_binding(&p).subjects.unwrap()[0].name, "orders-relay");
}

#[test]
fn derived_names_fit_with_the_longest_pipeline_name() {
    let name = "a".repeat(crate::api::rules::MAX_PIPELINE_NAME);
    for derived in [
        relay_name(&name),
        verify_name(&name),
        crate::api::relay_reports_name(&name),
        crate::api::consistency_name(&name),
        pods_service_name(&name),
    ] {
        assert!(derived.len() <= 63, "{derived}: {} > 63", derived.len());
    }
    // A CronJob's name has at most 52 characters; the CRD limits a scheduled pipeline's name
    // to 45 for it (`rules::SCHEDULED_NAME_RULE`).
    assert!(crate::api::rules::SCHEDULED_NAME_RULE.contains("<= 45"));
    assert_eq!(verify_name(&"a".repeat(45)).len(), 52);
}

#[test]
fn the_verify_job_runs_under_its_own_account_with_the_relays_secret_files() {
    let p = secured_pipeline("");
    let job = verify_job(&p, "img:1", "orders-verify-manual");
    assert_eq!(job.metadata.name.as_deref(), Some("orders-verify-manual"));
    let spec = job.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-verify"));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let relay = pod_of(&p);
    assert_eq!(
        pod.volumes, relay.volumes,
        "the same Secret keys as the relay"
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("img:1"));
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["verify", "--pipeline", "shop/orders"]
    );
    let mounts = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path.starts_with(DEFAULT_SECRETS_DIR))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(mounts(c), mounts(&relay.containers[0]), "at the same paths");
    assert!(mounts(c).iter().all(|m| m.read_only == Some(true)));
    assert_eq!(c.security_context, relay.containers[0].security_context);
    assert_eq!(pod.security_context, relay.security_context);
}

#[test]
fn the_readmes_verify_job_is_the_one_the_code_builds() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("apiVersion: batch/v1")
        .expect("the README shows the verify Job");
    let end = start + readme[start..].find("```").unwrap();
    let shown: Job = serde_yaml::from_str(&readme[start..end]).unwrap();
    let mut p: DualWritePipeline = serde_yaml::from_str(
            r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata: {name: orders, namespace: shop}
spec:
  providers:
  - {name: nats, type: nats, nats: {url: "nats://n:4222", subject: orders}}
  - name: kafka
    type: kafka
    kafka:
      brokers: ["k:9093"]
      topic: orders
      authentication: {type: scram-sha-512, username: u, passwordSecret: {secretName: kafka-user, password: password}}
"#,
        )
        .unwrap();
    p.metadata.uid = Some("u-1".into());
    let built = verify_job(&p, "<the relay's image>", "orders-verify-1");
    assert_eq!(shown.metadata.name, built.metadata.name);
    let (shown, mut built) = (shown.spec.unwrap(), built.spec.unwrap());
    let args = built.template.spec.as_mut().unwrap().containers[0]
        .args
        .as_mut()
        .unwrap();
    args.extend(["--window".into(), "1h".into()]);
    assert_eq!(shown, built);
}

/// The scheduled check is the verify Job's pod on a schedule: one run at a time, a bounded
/// history, deadlines to start and to finish, owned by the pipeline; none without a schedule.
#[test]
fn the_scheduled_check_is_a_cron_job_of_the_verify_job() {
    let mut p = secured_pipeline("");
    assert!(
        verify_cron_job(&p, "img:1").is_none(),
        "no consistency block"
    );
    p.spec.consistency = Some(crate::api::ConsistencySpec {
        window: Some("1h".into()),
        ..Default::default()
    });
    assert!(verify_cron_job(&p, "img:1").is_none(), "no schedule");
    p.spec.consistency = Some(crate::api::ConsistencySpec {
        schedule: Some("*/15 * * * *".into()),
        window: Some("1h".into()),
        settle: Some("30s".into()),
    });
    let cron = verify_cron_job(&p, "img:1").unwrap();
    assert_eq!(cron.metadata.name.as_deref(), Some("orders-verify"));
    let owner = &cron.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("DualWritePipeline", "orders", Some(true))
    );
    let labels = cron.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "dualwrite-operator");
    let spec = cron.spec.unwrap();
    assert_eq!(spec.schedule, "*/15 * * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.successful_jobs_history_limit, Some(3));
    assert_eq!(spec.failed_jobs_history_limit, Some(3));
    assert_eq!(
        spec.starting_deadline_seconds,
        Some(VERIFY_STARTING_DEADLINE_SECONDS)
    );
    assert_eq!(spec.suspend, None);
    let job = spec.job_template.spec.unwrap();
    assert_eq!(
        job.active_deadline_seconds,
        Some(VERIFY_ACTIVE_DEADLINE_SECONDS)
    );
    assert_eq!(
        job.ttl_seconds_after_finished, None,
        "the history limits keep Jobs"
    );
    // Everything else is the verify Job's, with the spec's window and settle.
    let mut once = verify_job(&p, "img:1", "orders-verify").spec.unwrap();
    once.ttl_seconds_after_finished = None;
    once.active_deadline_seconds = Some(VERIFY_ACTIVE_DEADLINE_SECONDS);
    once.template.spec.as_mut().unwrap().containers[0]
        .args
        .as_mut()
        .unwrap()
        .extend(["--window", "1h", "--settle", "30s"].map(String::from));
    assert_eq!(job, once);
    let pod = job.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-verify"));
    assert_eq!(pod.security_context, pod_of(&p).security_context);
    // Without window and settle: verify's defaults (everything the brokers hold, 5s).
    p.spec.consistency = Some(crate::api::ConsistencySpec {
        schedule: Some("@hourly".into()),
        ..Default::default()
    });
    let cron = verify_cron_job(&p, "img:1").unwrap();
    let args = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args, ["verify", "--pipeline", "shop/orders"]);
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
    statefulset(p, "img").spec.unwrap().template.spec.unwrap()
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
    assert!(env
        .iter()
        .any(|e| e.name == "DUALWRITE_SECRETS_DIR"
            && e.value.as_deref() == Some(DEFAULT_SECRETS_DIR)));
}

#[test]
fn a_pipeline_without_secrets_mounts_none() {
    let pod = pod_of(&pipeline());
    assert_eq!(
        pod.volumes, None,
        "the state volume comes from the claim template"
    );
    let mounts: Vec<(&str, &str)> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [("state", STATE_DIR)]);
}

#[test]
fn statefulset_shape_claims_retained_parallel_rolling_one_at_a_time() {
    let p = pipeline();
    let spec = statefulset(&p, "img").spec.unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("orders-relay-pods"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.unwrap();
    assert_eq!(
        (rolling.partition, rolling.max_unavailable),
        (Some(0), None)
    );
    let retention = spec.persistent_volume_claim_retention_policy.unwrap();
    assert_eq!(
        (
            retention.when_deleted.as_deref(),
            retention.when_scaled.as_deref()
        ),
        (Some("Retain"), Some("Retain"))
    );
    assert_eq!(
        spec.selector.match_labels.unwrap(),
        BTreeMap::from([("dualwrite.io/pipeline".to_string(), "orders".to_string())])
    );
    let headless = pods_service(&p);
    assert_eq!(headless.metadata.name.as_deref(), Some("orders-relay-pods"));
    let hs = headless.spec.unwrap();
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    assert_eq!(
        service(&p).spec.unwrap().cluster_ip,
        None,
        "ingest Service stays"
    );
}

#[test]
fn claim_template_takes_size_and_class_from_the_spec() {
    let claim = |p: &DualWritePipeline| {
        let mut c = statefulset(p, "img")
            .spec
            .unwrap()
            .volume_claim_templates
            .unwrap();
        assert_eq!(c.len(), 1);
        c.remove(0)
    };
    let mut p = pipeline();
    let c = claim(&p);
    assert_eq!(c.metadata.name.as_deref(), Some("state"));
    assert_eq!(
        c.metadata.labels.as_ref().unwrap()["dualwrite.io/pipeline"],
        "orders"
    );
    let spec = c.spec.unwrap();
    assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
    assert_eq!(spec.storage_class_name, None, "the cluster's default class");
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"],
        Quantity("1Gi".into())
    );
    p.spec.relay.as_mut().unwrap().storage = Some(crate::api::RelayStorageSpec {
        size: Some(Quantity("5Gi".into())),
        storage_class_name: Some("fast".into()),
    });
    let spec = claim(&p).spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"],
        Quantity("5Gi".into())
    );
    assert_eq!(claim_name("orders", 2), "state-orders-relay-2");
    assert_eq!(claim_ordinal("orders", "state-orders-relay-2"), Some(2));
}

#[test]
fn pod_disruption_budget_only_with_more_than_one_relay() {
    let with = |replicas: Option<i32>| {
        let mut p = pipeline();
        p.spec.relay.as_mut().unwrap().replicas = replicas;
        pod_disruption_budget(&p)
    };
    // (replicas, a budget)
    for (replicas, want) in [
        (Some(0), false),
        (None, false),
        (Some(1), false),
        (Some(2), true),
        (Some(3), true),
    ] {
        assert_eq!(with(replicas).is_some(), want, "{replicas:?}");
    }
    let pdb = with(Some(3)).unwrap();
    assert_eq!(pdb.metadata.name.as_deref(), Some("orders-relay"));
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["dualwrite.io/pipeline"],
        "orders"
    );
}

#[test]
fn pod_settings_from_the_spec_and_defaults() {
    let mut p: DualWritePipeline = serde_yaml::from_str(
            r#"apiVersion: dualwrite.io/v1alpha1
kind: DualWritePipeline
metadata: {name: orders, namespace: shop, uid: u-1}
spec:
  providers: [{name: a, type: memory}]
  relay:
    imagePullSecrets: [{name: regcred}]
    nodeSelector: {disk: ssd}
    tolerations: [{key: dedicated, operator: Equal, value: relays, effect: NoSchedule}]
    affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {dualwrite.io/pipeline: orders}}}}]}}
    priorityClassName: high
    podAnnotations: {prometheus.io/scrape: "true", dualwrite.io/ingest: "mine"}
    podLabels: {team: payments, dualwrite.io/pipeline: other}
"#,
        )
        .unwrap();
    p.metadata.uid = Some("u-1".into());
    let template = statefulset(&p, "img").spec.unwrap().template;
    let meta = template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["team"], "payments");
    assert_eq!(
        labels["dualwrite.io/pipeline"], "orders",
        "the operator's labels win"
    );
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert!(
        annotations["dualwrite.io/ingest"].starts_with("port="),
        "the operator's wins"
    );
    let pod = template.spec.unwrap();
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    // No resources given: the defaults, Burstable.
    let r = pod.containers[0].resources.clone().unwrap();
    assert_eq!(r, default_resources());
    assert_eq!(r.requests.as_ref().unwrap()["cpu"], Quantity("100m".into()));
    assert_eq!(
        r.requests.as_ref().unwrap()["memory"],
        Quantity("128Mi".into())
    );
    assert_eq!(
        r.limits.as_ref().unwrap()["memory"],
        Quantity("512Mi".into())
    );
    // Given: as given. Given empty: the defaults (never BestEffort).
    let given = ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("2".into()))])),
        ..ResourceRequirements::default()
    };
    p.spec.relay.as_mut().unwrap().resources = Some(given.clone());
    assert_eq!(pod_of(&p).containers[0].resources, Some(given));
    p.spec.relay.as_mut().unwrap().resources = Some(ResourceRequirements::default());
    assert_eq!(
        pod_of(&p).containers[0].resources,
        Some(default_resources())
    );
    // Nothing set: no placement constraint.
    let pod = pod_of(&pipeline());
    assert_eq!(
        (
            pod.image_pull_secrets,
            pod.node_selector,
            pod.tolerations,
            pod.affinity,
            pod.priority_class_name
        ),
        (None, None, None, None, None)
    );
}

#[test]
fn the_grace_period_covers_the_whole_drain() {
    let c = pod_of(&pipeline());
    // preStop 5 s + requests in flight 5 s + publish timeout 5 s + backlog grace 20 s +
    // closing 10 s.
    assert_eq!(c.termination_grace_period_seconds, Some(45));
    assert_eq!(
        (
            crate::relay::listener::DRAIN_GRACE.as_secs(),
            crate::composite::DEFAULT_PUBLISH_TIMEOUT.as_secs(),
            crate::relay::BACKLOG_GRACE.as_secs()
        ),
        (5, 5, 20),
        "the relay's own deadlines, which the grace period adds up"
    );
    let container = &c.containers[0];
    let pre_stop = container.lifecycle.clone().unwrap().pre_stop.unwrap();
    assert_eq!(pre_stop.sleep.unwrap().seconds, PRE_STOP_SECONDS);
    assert_eq!(
        container.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let mut p = pipeline();
    p.spec.publish_timeout = Some("1500ms".into());
    assert_eq!(
        pod_of(&p).termination_grace_period_seconds,
        Some(5 + 5 + 2 + 20 + 10)
    );
}

#[test]
fn template_annotation_moves_with_the_template_and_the_generation() {
    let mut p = pipeline();
    p.metadata.generation = Some(4);
    let a = |p: &DualWritePipeline, image: &str| {
        statefulset(p, image).metadata.annotations.unwrap()[TEMPLATE_ANNOTATION].clone()
    };
    let first = a(&p, "img:1");
    assert!(first.ends_with("@4"), "{first}");
    assert_eq!(a(&p, "img:1"), first, "stable");
    p.spec.relay.as_mut().unwrap().image = None;
    let by_operator = a(&p, "img:2");
    assert_ne!(by_operator, a(&p, "img:3"));
    assert!(by_operator.ends_with("@4"));
    p.metadata.generation = Some(5);
    assert_eq!(
        a(&p, "img:2").split('@').next(),
        by_operator.split('@').next(),
        "the hash does not depend on the generation"
    );
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

/// Each relay pod names the container port a scraper reads `/metrics` on without a token, and
/// the chart's PodMonitor scrapes each named port only on the pods that say so.
#[test]
fn relay_pods_name_the_port_that_serves_metrics_and_the_pod_monitor_follows_it() {
    let label = |p: &DualWritePipeline| {
        let sts = statefulset(p, "img");
        let template = sts.spec.unwrap().template;
        let ports: Vec<String> = template.spec.unwrap().containers[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|c| c.name.clone())
            .collect();
        let label = template
            .metadata
            .unwrap()
            .labels
            .unwrap()
            .get(METRICS_PORT_LABEL)
            .cloned();
        if let Some(l) = &label {
            assert!(
                ports.contains(l),
                "{l} is a named port of the relay: {ports:?}"
            );
        }
        label
    };
    let mut plain = pipeline();
    // (pipeline, the port named; None: /metrics needs the ingest token)
    let cases = [
        (plain.clone(), Some("ingest")),
        (secured_pipeline("probePort: 9001"), Some("probes")),
        (secured_pipeline(""), None),
        (
            {
                plain.spec.ingest.as_mut().unwrap().probe_port = Some(9090);
                plain
            },
            Some("probes"),
        ),
    ];
    for (p, want) in cases {
        assert_eq!(label(&p).as_deref(), want, "{:?}", p.spec.ingest);
    }
    // The chart's PodMonitor: one endpoint per port, each kept only where the label names it.
    let monitor =
        include_str!("../../../charts/dualwrite-operator/templates/relay-podmonitor.yaml");
    let meta_label = format!(
        "__meta_kubernetes_pod_label_{}",
        METRICS_PORT_LABEL.replace(['.', '/', '-'], "_")
    );
    assert!(
        monitor.contains(&format!("sourceLabels: [{meta_label}]")),
        "{monitor}"
    );
    assert!(
        monitor.contains(r#"range $port := list "probes" "ingest""#),
        "{monitor}"
    );
    assert!(
        monitor.contains("regex: {{ $port }}\n          action: keep"),
        "{monitor}"
    );
}
