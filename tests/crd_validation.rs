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

    for example in ["memory-pipeline.yaml", "nats-to-kafka-migration.yaml"] {
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
    ];
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
