//! The CRD against the real API server: the examples apply, and each bad manifest in a table is
//! refused by `kubectl apply` with a message a person understands.

mod common;

use common::cluster::{install_crd, kube_env, kubectl, kubectl_ok, namespace, REPO};

const HEAD: &str =
    "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata:\n  name: bad\nspec:\n";

#[test]
fn examples_apply_and_bad_manifests_are_refused_with_clear_messages() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "crd");

    for example in [
        "memory-pipeline.yaml",
        "nats-to-kafka-migration.yaml",
        "secured-pipeline.yaml",
    ] {
        let out = kubectl_ok(
            &env,
            &[
                "apply",
                "-n",
                &ns,
                "-f",
                &format!("{REPO}/examples/{example}"),
            ],
            None,
        );
        assert!(
            out.contains("created") || out.contains("configured"),
            "{example}: {out}"
        );
    }
    let got = kubectl_ok(&env, &["get", "dwp", "-n", &ns, "-o", "name"], None);
    assert!(
        got.contains("memory-demo") && got.contains("orders"),
        "{got}"
    );

    let cases: &[(&str, &str)] = &[
        ("  providers: []\n", "should have at least 1 items"),
        (
            "  providers:\n  - {name: a, type: memory}\n  - {name: a, type: memory}\n",
            "provider names must be unique",
        ),
        ("  providers:\n  - {name: k, type: kafka}\n", "a provider of type kafka needs a kafka block with brokers and topic"),
        (
            "  providers:\n  - {name: k, type: kafka, kafka: {brokers: [], topic: t}}\n",
            "spec.providers[0].kafka.brokers",
        ),
        (
            "  providers:\n  - {name: k, type: kafka, kafka: {brokers: [b:9092], topic: \"\"}}\n",
            "spec.providers[0].kafka.topic",
        ),
        ("  providers:\n  - {name: nt, type: nats}\n", "a provider of type nats needs a nats block with url and subject"),
        (
            "  providers:\n  - {name: nm, type: memory, nats: {url: u, subject: s}}\n",
            "nats settings are only allowed on a provider of type nats",
        ),
        ("  providers:\n  - {name: r, type: redis}\n", "Unsupported value: \"redis\""),
        ("  providers:\n  - {name: Bad_Name, type: memory}\n", "spec.providers[0].name"),
        ("  strategy: Sometimes\n  providers:\n  - {name: a, type: memory}\n", "Unsupported value: \"Sometimes\""),
        ("  publishTimeout: soon\n  providers:\n  - {name: a, type: memory}\n", "spec.publishTimeout"),
        (
            "  providers:\n  - {name: a, type: memory}\n  migration:\n    steps:\n    - {name: s, strategy: FailFast, readFrom: ghost}\n",
            "spec.migration.steps[].readFrom must name a provider listed in spec.providers",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  migration:\n    steps:\n    - {name: s, strategy: FailFast, providers: [a, ghost]}\n",
            "spec.migration.steps[].providers may only name providers listed in spec.providers",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  migration:\n    targetStep: 3\n    steps:\n    - {name: s, strategy: FailFast}\n",
            "spec.migration.targetStep must name an existing step",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  - {name: b, type: memory}\n  migration:\n    steps:\n    - {name: s, strategy: FailFast, providers: [a], readFrom: b}\n",
            "readFrom must be one of the step's providers",
        ),
        ("  publishTimeout: 0s\n  providers:\n  - {name: a, type: memory}\n", "spec.publishTimeout"),
        (
            "  providers:\n  - {name: k, type: kafka, kafka: {brokers: [\"b:9092\"], topic: \"a/b\"}}\n",
            "spec.providers[0].kafka.topic",
        ),
        (
            "  providers:\n  - {name: k, type: kafka, kafka: {brokers: [\"no-port\"], topic: t}}\n",
            "spec.providers[0].kafka.brokers[0]",
        ),
        (
            "  providers:\n  - {name: nt, type: nats, nats: {url: \"nats://x:4222\", subject: \"orders.*\"}}\n",
            "spec.providers[0].nats.subject",
        ),
        (
            "  providers:\n  - {name: kf, type: kafka, kafka: {brokers: [\"b:9092\"], topic: t, config: {plugin.library.paths: /tmp/x.so}}}\n",
            "kafka.config: plugin.library.paths is not allowed",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  consistency: {schedule: every minute}\n",
            "spec.consistency.schedule",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  consistency: {schedule: '* * * *'}\n",
            "spec.consistency.schedule",
        ),
        (
            "  providers:\n  - {name: a, type: memory}\n  consistency: {schedule: '@hourly', window: 1day}\n",
            "spec.consistency.window",
        ),
        (
            "  providers:\n  - {name: kf, type: kafka, kafka: {brokers: [\"b:9092\"], topic: t, config: {acks: \"0\"}}}\n",
            "kafka.config: acks is not allowed",
        ),
    ];
    let long = "a".repeat(47);
    for name in ["1orders", "orders.v1", "Orders", long.as_str()] {
        let manifest = HEAD.replace("name: bad", &format!("name: \"{name}\""))
            + "  providers:\n  - {name: a, type: memory}\n";
        let out = kubectl(&env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted the name {name:?}");
        assert!(
            stderr.contains("a pipeline's name must start with a letter"),
            "{name}: {stderr}"
        );
    }
    // A scheduled check's CronJob `<name>-verify` may have 52 characters: 45 for the name.
    let scheduled = |name: &str| {
        HEAD.replace("name: bad", &format!("name: {name}"))
            + "  providers:\n  - {name: a, type: memory}\n  consistency: {schedule: '@daily'}\n"
    };
    let out = kubectl(
        &env,
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&scheduled(&"a".repeat(46))),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted a 46-character scheduled pipeline"
    );
    assert!(
        stderr.contains("a pipeline with spec.consistency.schedule is at most 45 characters long"),
        "{stderr}"
    );
    kubectl_ok(
        &env,
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&scheduled(&"a".repeat(45))),
    );
    let ok = HEAD.replace("name: bad", &format!("name: {}", "a".repeat(46)))
        + "  providers:\n  - {name: a, type: memory}\n";
    kubectl_ok(
        &env,
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&ok),
    );
    for (body, want) in cases {
        let manifest = format!("{HEAD}{body}");
        let out = kubectl(&env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted a bad manifest:\n{manifest}"
        );
        assert!(
            stderr.contains(want),
            "manifest:\n{manifest}\nexpected {want:?} in:\n{stderr}"
        );
    }
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// The CRD (schema patterns and CEL rules, judged by the real API server) and the relay's one
/// validator (`PipelineConfig::try_from`) accept and refuse the same manifests.
#[test]
fn the_api_server_and_the_validator_agree() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "agree");
    let nats = |url: &str, subject: &str| {
        format!("  providers:\n  - {{name: nt, type: nats, nats: {{url: \"{url}\", subject: \"{subject}\"}}}}\n")
    };
    let kafka = |brokers: &str, topic: &str| {
        format!("  providers:\n  - {{name: kf, type: kafka, kafka: {{brokers: [{brokers}], topic: \"{topic}\"}}}}\n")
    };
    let kafka_with = |extra: &str| {
        format!("  providers:\n  - {{name: kf, type: kafka, kafka: {{brokers: [\"b:9092\"], topic: t, {extra}}}}}\n")
    };
    let nats_with = |extra: &str| {
        format!("  providers:\n  - {{name: nt, type: nats, nats: {{url: \"tls://h:4222\", subject: s, {extra}}}}}\n")
    };
    let memory = |extra: &str| {
        format!(
            "{extra}  providers:\n  - {{name: a, type: memory}}\n  - {{name: b, type: memory}}\n"
        )
    };
    let step = |step: &str| {
        memory(&format!(
            "  migration:\n    steps:\n    - {{name: s, strategy: FailFast{step}}}\n"
        ))
    };
    let cases: Vec<String> = vec![
        memory(""),
        nats("nats://h:4222", "orders.created"),
        nats("nats://u:p@h:4222, tls://[::1]:4223", "a"),
        nats("h", "a-b.c_d"),
        nats("http://h:4222", "a"),
        nats("nats://h:4222", "orders..created"),
        nats("nats://h:4222", ".orders"),
        nats("nats://h:4222", "orders.*"),
        nats("nats://h:4222", "a b"),
        kafka("\"b:9092\", \"c:9093\"", "orders.v1_x-y"),
        kafka("\"b:9092\"", "."),
        kafka("\"b:9092\"", ".."),
        kafka("\"b:9092\"", "..."),
        kafka("\"b\"", "t"),
        kafka("", "t"),
        memory("  publishTimeout: 750ms\n"),
        memory("  publishTimeout: 1m30s\n"),
        memory("  publishTimeout: 0s\n"),
        memory("  publishTimeout: 2h\n"),
        memory("  handoff: {maxAge: 24h, maxMessages: 5}\n"),
        memory("  handoff: {maxAge: 1day}\n"),
        memory("  handoff: {maxMessages: 0}\n"),
        memory("  handoff: {acceptance: RelayDisk}\n"),
        memory("  handoff: {enabled: false, acceptance: RelayDisk}\n"),
        memory("  handoff: {acceptance: Sometimes}\n"),
        memory("  ingest: {port: 0}\n"),
        memory("  ingest: {maxBodyBytes: 1000}\n"),
        memory("  relay: {replicas: 101}\n"),
        step(", gates: {minDuration: 10m}"),
        step(", gates: {minDuration: 10ms}"),
        step(", providers: [a], readFrom: b"),
        step(", readFrom: ghost"),
        memory("  migration:\n    fallbackAfter: 2m\n    steps:\n    - {name: s, strategy: FailFast}\n"),
        memory("  migration:\n    fallbackAfter: soon\n    steps:\n    - {name: s, strategy: FailFast}\n"),
        memory("  migration:\n    targetStep: 1\n    steps:\n    - {name: s, strategy: FailFast}\n"),
        kafka_with("config: {linger.ms: '5', compression.type: zstd, client.id: relay}"),
        kafka_with("config: {plugin.library.paths: /tmp/evil.so}"),
        kafka_with("config: {sasl.kerberos.kinit.cmd: 'sh -c id'}"),
        kafka_with("config: {acks: '0'}"),
        kafka_with("config: {enable.idempotence: 'false'}"),
        kafka_with("config: {security.protocol: PLAINTEXT}"),
        kafka_with("config: {message.timeout.ms: '0'}"),
        kafka_with("tls: {trustedCertificates: [{secretName: ca, certificate: ca.crt}]}, authentication: {type: scram-sha-512, username: relay, passwordSecret: {secretName: kafka-relay, password: password}}"),
        kafka_with("authentication: {type: plain, username: relay}"),
        kafka_with("authentication: {type: tls, certificateAndKey: {secretName: c, certificate: tls.crt, key: tls.key}}"),
        kafka_with("tls: {}, authentication: {type: tls, certificateAndKey: {secretName: c, certificate: tls.crt, key: tls.key}}"),
        kafka_with("tls: {}, authentication: {type: tls, username: u, certificateAndKey: {secretName: c, certificate: tls.crt, key: tls.key}}"),
        kafka_with("authentication: {type: scram-sha-256, username: u, passwordSecret: {secretName: 'Bad_Name', password: p}}"),
        nats_with("tls: {trustedCertificates: [{secretName: nats-ca, certificate: ca.crt}], certificateAndKey: {secretName: relay-tls, certificate: tls.crt, key: tls.key}}, authentication: {type: creds, credsSecret: {secretName: nats-relay, key: relay.creds}}"),
        nats_with("authentication: {type: creds}"),
        nats_with("authentication: {type: nkey, seedSecret: {secretName: s, key: seed}, tokenSecret: {secretName: s, key: t}}"),
        nats_with("authentication: {type: user-password, username: u, passwordSecret: {secretName: s, password: p}}"),
        nats_with("authentication: {type: user-password, username: u}"),
        nats_with("authentication: {type: token, tokenSecret: {secretName: s, key: token}}"),
        memory("  ingest: {tls: {secretName: t, certificate: tls.crt, key: tls.key}, authentication: {tokensSecret: {secretName: t, key: tokens}}, probePort: 9090, maxInFlight: 10, headerTimeout: 2s}\n"),
        memory("  ingest: {headerTimeout: 0s}\n"),
        memory("  ingest: {maxConnections: 0}\n"),
        kafka_with("key: id, replicationFactor: 3, minInsyncReplicas: 2"),
        kafka_with("key: source"),
        kafka_with("key: 'metadata:tenant'"),
        kafka_with("key: 'metadata:'"),
        kafka_with("key: 'metadata:a b'"),
        kafka_with("key: partition"),
        kafka_with("minInsyncReplicas: 2"),
        kafka_with("replicationFactor: 2, minInsyncReplicas: 3"),
        kafka_with("minInsyncReplicas: 0"),
        nats_with("replicas: 3"),
        nats_with("replicas: 0"),
        nats_with("replicas: 6"),
        memory("  ingest: {duplicateWindow: 10m, duplicateWindowIds: 5}\n"),
        memory("  ingest: {duplicateWindow: 0s}\n"),
        memory("  ingest: {duplicateWindowIds: 0}\n"),
        memory("  consistency: {schedule: '* * * * *'}\n"),
        memory("  consistency: {schedule: '*/15 0-6 1,15 JAN-JUN MON', window: 1h, settle: 30s}\n"),
        memory("  consistency: {schedule: '@weekly'}\n"),
        memory("  consistency: {window: 2h}\n"),
        memory("  consistency: {schedule: 'every minute'}\n"),
        memory("  consistency: {schedule: '* * * * * *'}\n"),
        memory("  consistency: {schedule: '@every 5m'}\n"),
        memory("  consistency: {schedule: 'TZ=UTC 0 * * * *'}\n"),
        memory("  consistency: {schedule: ''}\n"),
        memory("  consistency: {schedule: '@hourly', window: 1day}\n"),
        memory("  consistency: {schedule: '@hourly', settle: 500ms}\n"),
    ];
    let mut disagreements = Vec::new();
    let mut accepted = 0;
    for body in &cases {
        let manifest = format!("{HEAD}{body}");
        let out = kubectl(
            &env,
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            Some(&manifest),
        );
        let by_server = out.status.success();
        accepted += usize::from(by_server);
        let by_validator = dualwrite::relay::config::pipeline_from_manifest(&manifest);
        if by_server != by_validator.is_ok() {
            disagreements.push(format!(
                "{body}  API server: {}\n  validator: {by_validator:?}",
                if by_server {
                    "accepted".into()
                } else {
                    String::from_utf8_lossy(&out.stderr).into_owned()
                }
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "disagreements:\n{}",
        disagreements.join("\n")
    );
    // Both verdicts occur, so agreement is not an accident of a table of one kind.
    let refused = cases.len() - accepted;
    assert!(
        accepted >= 8 && refused >= 15,
        "{accepted} accepted, {refused} refused"
    );
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// `spec.relay`'s pod settings are accepted as Kubernetes writes them, and `spec.relay.storage`
/// (the StatefulSet's immutable claim template) cannot change, be added or be removed once the
/// pipeline exists, with a message that says what to do.
#[test]
fn relay_pod_settings_apply_and_storage_is_fixed_once_the_pipeline_exists() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let ns = namespace(&env, "crd-relay");
    let manifest = |name: &str, storage: &str| {
        format!(
            "{}  providers:\n  - {{name: a, type: memory}}\n  relay:\n    replicas: 2\n    {storage}\n    resources: {{requests: {{cpu: 50m}}}}\n    imagePullSecrets: [{{name: regcred}}]\n    nodeSelector: {{disk: ssd}}\n    tolerations: [{{key: dedicated, operator: Equal, value: relays, effect: NoSchedule}}]\n    affinity: {{podAntiAffinity: {{preferredDuringSchedulingIgnoredDuringExecution: [{{weight: 100, podAffinityTerm: {{topologyKey: kubernetes.io/hostname, labelSelector: {{matchLabels: {{dualwrite.io/pipeline: {name}}}}}}}}}]}}}}\n    priorityClassName: high\n    podAnnotations: {{prometheus.io/scrape: \"true\"}}\n    podLabels: {{team: payments}}\n",
            HEAD.replace("name: bad", &format!("name: {name}"))
        )
    };
    let apply = |m: &str| kubectl(&env, &["apply", "-n", &ns, "-f", "-"], Some(m));
    let refused = |m: &str| {
        let out = apply(m);
        assert!(!out.status.success(), "accepted:\n{m}");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("spec.relay.storage cannot change once the pipeline exists"),
            "{stderr}"
        );
    };
    let sized = "storage: {size: 2Gi, storageClassName: fast}";
    kubectl_ok(
        &env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&manifest("sized", sized)),
    );
    // The same storage again, other settings changed: accepted.
    kubectl_ok(
        &env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&manifest("sized", sized).replace("replicas: 2", "replicas: 3")),
    );
    refused(&manifest(
        "sized",
        "storage: {size: 5Gi, storageClassName: fast}",
    ));
    refused(&manifest("sized", ""));
    kubectl_ok(
        &env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&manifest("plain", "")),
    );
    refused(&manifest("plain", sized));
    for size in ["lots", "0", "-1Gi"] {
        let out = apply(&manifest(
            "badsize",
            &format!("storage: {{size: \"{size}\"}}"),
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted size {size:?}");
        assert!(
            stderr.contains("spec.relay.storage.size must be a positive quantity"),
            "{size}: {stderr}"
        );
    }
    kubectl_ok(&env, &["delete", "namespace", &ns, "--wait=false"], None);
}

/// Every property of the CRD's schema, and the root, has a description (what `kubectl explain`
/// shows): a field without a doc comment fails here by its path. Reads the CRD the binary
/// prints from the Rust types (the one `crds/` holds; the drift test keeps them equal).
#[test]
fn every_crd_field_has_a_description() {
    let yaml = std::fs::read_to_string(format!("{REPO}/crds/dualwrite.io_dualwritepipelines.yaml"))
        .expect("read the CRD");
    let crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("parse the CRD");
    let mut missing = Vec::new();
    for v in crd["spec"]["versions"].as_array().expect("versions") {
        let schema = &v["schema"]["openAPIV3Schema"];
        let name = v["name"].as_str().unwrap_or("?");
        undescribed(schema, &format!("{name}:<root>"), &mut missing);
        if schema["description"]
            .as_str()
            .is_some_and(|d| d.contains("Auto-generated derived type"))
        {
            missing.push(format!("{name}:<root> (kube's placeholder)"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} CRD field(s) without a description (add a doc comment): {}",
        missing.len(),
        missing.join(", ")
    );
}

/// Appends to `out` the path of `schema` when it has no description, then of every property
/// below it (objects' properties, arrays' items, maps' values). apiVersion, kind and metadata
/// are the API server's own and described by it.
fn undescribed(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    let described = schema["description"]
        .as_str()
        .is_some_and(|d| !d.trim().is_empty());
    if !described {
        out.push(path.to_string());
    }
    if let Some(props) = schema["properties"].as_object() {
        for (key, child) in props {
            if path.ends_with(":<root>")
                && ["apiVersion", "kind", "metadata"].contains(&key.as_str())
            {
                continue;
            }
            let child_path = if path.ends_with(":<root>") {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            undescribed(child, &child_path, out);
        }
    }
    // Items and map values inherit the field's description in `kubectl explain`; only their
    // own properties need one.
    for nested in [&schema["items"], &schema["additionalProperties"]] {
        if let Some(props) = nested["properties"].as_object() {
            for (key, child) in props {
                undescribed(child, &format!("{path}[].{key}"), out);
            }
        }
    }
}

/// `kubectl explain` against the real API server teaches the resource: the root, the spec and a
/// nested field say what they are (the API server publishes the CRD's OpenAPI a moment after
/// it is applied: polled with a deadline).
#[test]
fn kubectl_explain_teaches_the_spec() {
    let Some(env) = kube_env() else { return };
    install_crd(&env);
    let expected: &[(&str, &[&str])] = &[
        (
            "dwp",
            &["writes every message it ingests to several brokers"],
        ),
        (
            "dwp.spec",
            &[
                "The brokers to write to, in order",
                "The relay's HTTP ingest API",
            ],
        ),
        (
            "dwp.spec.providers",
            &["The broker: `memory`", "Settings of a `kafka` provider"],
        ),
        (
            "dwp.status.providers",
            &["Messages this provider acknowledged"],
        ),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (path, wants) in expected {
        loop {
            let out = kubectl(&env, &["explain", path], None);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // kubectl wraps long lines: compare with whitespace folded.
            let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if wants.iter().all(|w| folded.contains(w)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl explain {path} does not say {wants:?}:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}
