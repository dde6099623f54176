use std::time::Duration;

use super::*;

fn spec(yaml: &str) -> DualWritePipelineSpec {
    serde_yaml::from_str(yaml).unwrap()
}

const MEMORY: &str = "providers: [{name: a, type: memory}]";

/// (manifest spec, the path and text of the expected problem; None: valid)
#[test]
fn validation_table() {
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        (MEMORY, None),
        ("providers: []", Some(("spec.providers", "at least one provider"))),
        (
            "providers: [{name: a, type: memory}, {name: a, type: memory}]",
            Some(("spec.providers[1].name", "used twice")),
        ),
        ("providers: [{name: A_b, type: memory}]", Some(("spec.providers[0].name", "DNS label"))),
        ("providers: [{name: k, type: kafka}]", Some(("spec.providers[0].kafka", "needs a kafka block"))),
        (
            "providers: [{name: k, type: kafka, kafka: {brokers: [], topic: t}}]",
            Some(("spec.providers[0].kafka.brokers", "brokers as host:port")),
        ),
        (
            "providers: [{name: k, type: kafka, kafka: {brokers: [b:1, nope], topic: t}}]",
            Some(("spec.providers[0].kafka.brokers[1]", "is not host:port")),
        ),
        (
            "providers: [{name: k, type: kafka, kafka: {brokers: [b:1], topic: ..}}]",
            Some(("spec.providers[0].kafka.topic", "not a legal topic name")),
        ),
        (
            "providers: [{name: k, type: kafka, kafka: {brokers: [b:1], topic: a b}}]",
            Some(("spec.providers[0].kafka.topic", "only letters, digits")),
        ),
        ("providers: [{name: n, type: nats}]", Some(("spec.providers[0].nats", "needs a nats block"))),
        (
            "providers: [{name: n, type: memory, nats: {url: u, subject: s}}]",
            Some(("spec.providers[0].nats", "nats settings are only allowed")),
        ),
        (
            "providers: [{name: n, type: nats, nats: {url: 'nats://h:4222', subject: orders..created}}]",
            Some(("spec.providers[0].nats.subject", "one concrete subject")),
        ),
        (
            "providers: [{name: n, type: nats, nats: {url: 'nats://h:4222', subject: 'orders.>'}}]",
            Some(("spec.providers[0].nats.subject", "one concrete subject")),
        ),
        (
            "providers: [{name: n, type: nats, nats: {url: 'http://h:4222', subject: s}}]",
            Some(("spec.providers[0].nats.url", "is not a list of NATS URLs")),
        ),
        (
            "providers: [{name: n, type: nats, nats: {url: 'nats://h:4222', subject: s, duplicateWindow: 2 min}}]",
            Some(("spec.providers[0].nats.duplicateWindow", "is not a duration")),
        ),
        ("providers: [{name: m, type: memory, memory: {capacity: 0}}]", Some(("spec.providers[0].memory.capacity", "out of range"))),
        (
            "{providers: [{name: a, type: memory}], publishTimeout: soon}",
            Some(("spec.publishTimeout", "is not a duration")),
        ),
        (
            "{providers: [{name: a, type: memory}], publishTimeout: 0s}",
            Some(("spec.publishTimeout", "is not a duration")),
        ),
        (
            "{providers: [{name: a, type: memory}], handoff: {maxAge: 1day}}",
            Some(("spec.handoff.maxAge", "is not a duration")),
        ),
        ("{providers: [{name: a, type: memory}], handoff: {acceptance: RelayDisk}}", None),
        (
            "{providers: [{name: a, type: memory}], handoff: {enabled: false, acceptance: RelayDisk}}",
            Some(("spec.handoff.acceptance", "RelayDisk needs hinted handoff")),
        ),
        (
            "{providers: [{name: a, type: memory}], ingest: {maxBodyBytes: 10}}",
            Some(("spec.ingest.maxBodyBytes", "out of range")),
        ),
        (
            "{providers: [{name: a, type: memory}], ingest: {duplicateWindow: 0s}}",
            Some(("spec.ingest.duplicateWindow", "is not a duration")),
        ),
        (
            "{providers: [{name: a, type: memory}], ingest: {duplicateWindowIds: 0}}",
            Some(("spec.ingest.duplicateWindowIds", "out of range")),
        ),
        (
            "{providers: [{name: a, type: memory}], ingest: {maxBatchMessages: 0}}",
            Some(("spec.ingest.maxBatchMessages", "out of range")),
        ),
        (
            "{providers: [{name: a, type: memory}], migration: {steps: [{name: s, strategy: FailFast, readFrom: zz}]}}",
            Some(("spec.migration.steps[0]", "\"zz\" is not a provider")),
        ),
        (
            "{providers: [{name: a, type: memory}, {name: b, type: memory}], migration: {steps: [{name: s, strategy: FailFast, providers: [a], readFrom: b}]}}",
            Some(("spec.migration.steps[0].readFrom", "one of the step's providers")),
        ),
        (
            "{providers: [{name: a, type: memory}], migration: {targetStep: 3, steps: [{name: s, strategy: FailFast}]}}",
            Some(("spec.migration.targetStep", "past the last step")),
        ),
        (
            "{providers: [{name: a, type: memory}], migration: {fallbackAfter: 2x, steps: [{name: s, strategy: FailFast}]}}",
            Some(("spec.migration.fallbackAfter", "is not a duration")),
        ),
        (
            "{providers: [{name: a, type: memory}], migration: {steps: [{name: s, strategy: FailFast, gates: {minDuration: 10ms}}]}}",
            Some(("spec.migration.steps[0].gates.minDuration", "is not a duration")),
        ),
        (
            "providers: [{name: n, type: nats, nats: {url: 'nats://u:p@h:4222, tls://[::1]:4223,h2', subject: s}}]",
            None,
        ),
    ];
    for (yaml, want) in cases {
        let got = spec(yaml).validate();
        match (want, got) {
            (None, Ok(())) => {}
            (Some((path, text)), Err(errs)) => assert!(
                errs.0
                    .iter()
                    .any(|e| e.path == *path && e.message.contains(text)),
                "{yaml}: expected {path}: {text:?} in {errs:?}"
            ),
            (want, got) => panic!("{yaml}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn unknown_provider_types_are_rejected_when_parsing() {
    let err = serde_yaml::from_str::<DualWritePipelineSpec>("providers: [{name: a, type: redis}]")
        .unwrap_err();
    assert!(err.to_string().contains("redis"), "{err}");
}

#[test]
fn conversion_fills_in_defaults_and_types() {
    let config = PipelineConfig::try_from(&spec(MEMORY)).unwrap();
    assert_eq!(
        config.publish_timeout,
        crate::composite::DEFAULT_PUBLISH_TIMEOUT
    );
    assert_eq!(config.ingest.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert!(config.handoff.enabled);
    assert_eq!(
        config.acceptance,
        crate::composite::Acceptance::BrokerAck,
        "a 202 needs a broker's acknowledgement unless the spec says otherwise"
    );
    assert_eq!(
        (
            config.ingest.duplicate_window,
            config.ingest.duplicate_window_ids
        ),
        (Duration::from_secs(120), 100_000)
    );
    assert_eq!(config.ingest.max_batch_messages, 1000);
    let ingest = PipelineConfig::try_from(&spec(
        "{providers: [{name: a, type: memory}], ingest: {duplicateWindow: 10m, duplicateWindowIds: 5, maxBatchMessages: 7}}",
    ))
    .unwrap()
    .ingest;
    assert_eq!(
        (
            ingest.duplicate_window,
            ingest.duplicate_window_ids,
            ingest.max_batch_messages
        ),
        (Duration::from_secs(600), 5, 7)
    );
    assert_eq!(
        config.providers[0].settings,
        ProviderSettings::Memory {
            capacity: DEFAULT_CAPACITY
        }
    );

    let config = PipelineConfig::try_from(&spec(
        "{providers: [{name: n, type: nats, nats: {url: 'nats://h:4222', subject: a.b, duplicateWindow: 45s}}], \
         publishTimeout: 750ms, handoff: {enabled: false, maxMessages: 9, maxAge: 1h30m}, ingest: {port: 9000}}",
    ))
    .unwrap();
    assert_eq!(config.publish_timeout, Duration::from_millis(750));
    assert_eq!(config.port(None), 9000);
    assert_eq!(config.port(Some(1)), 1);
    assert!(!config.handoff.enabled);
    assert_eq!(config.handoff.limits.max_messages, Some(9));
    assert_eq!(
        config.handoff.limits.max_age,
        Some(Duration::from_secs(5400))
    );
    match &config.providers[0].settings {
        ProviderSettings::Nats(n) => {
            assert_eq!(n.duplicate_window, Some(Duration::from_secs(45)));
            assert_eq!(n.subject, "a.b");
        }
        other => panic!("expected nats, got {other:?}"),
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs = spec("{providers: [{name: A, type: kafka}], publishTimeout: soon}")
        .validate()
        .unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.providers[0].name",
            "spec.providers[0].kafka",
            "spec.publishTimeout"
        ]
    );
}

/// The subject and topic rules the providers used to re-check at connect, now held here only.
#[test]
fn subject_and_topic_rules() {
    let nats = |subject: &str| {
        spec(&format!(
            "providers: [{{name: n, type: nats, nats: {{url: 'nats://h:4222', subject: '{subject}'}}}}]"
        ))
        .validate()
    };
    assert!(nats("orders.created").is_ok());
    for bad in ["", "a b", "a..b", ".a", "a.", "a.*", "a.>"] {
        assert!(nats(bad).is_err(), "subject {bad:?}");
    }
    let kafka = |topic: &str| {
        spec(&format!(
            "providers: [{{name: k, type: kafka, kafka: {{brokers: ['b:9092'], topic: '{topic}'}}}}]"
        ))
        .validate()
    };
    let long = "t".repeat(249);
    for ok in ["events", "a.b_c-1", long.as_str()] {
        assert!(kafka(ok).is_ok(), "topic {ok:?}");
    }
    let too_long = "t".repeat(250);
    for bad in ["", ".", "..", "a b", "a/b", "ü", too_long.as_str()] {
        assert!(kafka(bad).is_err(), "topic {bad:?}");
    }
}

/// A NATS URL's user-info is a credential: an error about the URL shows it redacted.
#[test]
fn url_errors_do_not_show_user_info() {
    for url in [
        "http://u:MARKER-s3cret@h:4222",
        "nats://u:MARKER-s3cret@h:4222/x y",
    ] {
        let errs = spec(&format!(
            "providers: [{{name: n, type: nats, nats: {{url: '{url}', subject: s}}}}]"
        ))
        .validate()
        .unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("spec.providers[0].nats.url"), "{text}");
        assert!(!text.contains("MARKER"), "{text}");
    }
}

/// `kafka.key`, `kafka.minInsyncReplicas` and `nats.replicas`: what each spelling becomes, and
/// what is refused, naming the field.
#[test]
fn record_key_and_the_settings_of_created_topics_and_streams() {
    let kafka = |extra: &str| {
        PipelineConfig::try_from(&spec(&format!(
            "providers: [{{name: k, type: kafka, kafka: {{brokers: ['b:1'], topic: t{extra}}}}}]"
        )))
    };
    let settings = |extra: &str| match kafka(extra).unwrap().providers[0].settings.clone() {
        ProviderSettings::Kafka(k) => k,
        other => panic!("expected kafka, got {other:?}"),
    };
    assert_eq!(settings("").key, KafkaKey::Id);
    assert_eq!(settings(", key: id").key, KafkaKey::Id);
    assert_eq!(settings(", key: source").key, KafkaKey::Source);
    assert_eq!(
        settings(", key: 'metadata:tenant'").key,
        KafkaKey::Metadata("tenant".into())
    );
    let k = settings(", replicationFactor: 3, minInsyncReplicas: 2");
    assert_eq!(
        (k.replication_factor, k.min_insync_replicas),
        (Some(3), Some(2))
    );
    for (extra, path, text) in [
        (
            ", key: partition",
            "spec.providers[0].kafka.key",
            "use id, source or metadata:<field>",
        ),
        (
            ", key: 'metadata:'",
            "spec.providers[0].kafka.key",
            "not a record key",
        ),
        (
            ", key: 'metadata:a b'",
            "spec.providers[0].kafka.key",
            "not a record key",
        ),
        (
            ", minInsyncReplicas: 2",
            "spec.providers[0].kafka.minInsyncReplicas",
            "exceeds the replication factor 1",
        ),
        (
            ", minInsyncReplicas: 0",
            "spec.providers[0].kafka.minInsyncReplicas",
            "out of range",
        ),
    ] {
        let err = kafka(extra).unwrap_err().to_string();
        assert!(err.contains(path) && err.contains(text), "{extra}: {err}");
    }

    let nats = |extra: &str| {
        PipelineConfig::try_from(&spec(&format!(
            "providers: [{{name: n, type: nats, nats: {{url: 'nats://h:4222', subject: s{extra}}}}}]"
        )))
    };
    match &nats(", replicas: 3").unwrap().providers[0].settings {
        ProviderSettings::Nats(n) => assert_eq!(n.replicas, Some(3)),
        other => panic!("expected nats, got {other:?}"),
    }
    let err = nats(", replicas: 6").unwrap_err().to_string();
    assert!(
        err.contains("spec.providers[0].nats.replicas") && err.contains("out of range"),
        "{err}"
    );
}

/// `spec.consistency`: a schedule is a CronJob's five fields or a descriptor; a bad one is
/// refused naming `spec.consistency.schedule`; window and settle are durations.
#[test]
fn consistency_schedule_window_and_settle() {
    let with = |c: &str| spec(&format!("{{{MEMORY}, consistency: {c}}}"));
    // (consistency block, the path of the expected problem; None: valid)
    let cases: &[(&str, Option<&str>)] = &[
        ("{schedule: '* * * * *'}", None),
        ("{schedule: '*/15 * * * *', window: 1h, settle: 30s}", None),
        ("{schedule: '0 3 * * MON-FRI'}", None),
        ("{schedule: '0,30 1-5/2 1 JAN ?'}", None),
        ("{schedule: '@hourly'}", None),
        ("{schedule: '@daily'}", None),
        ("{window: 1h}", None),
        ("{}", None),
        (
            "{schedule: 'every minute'}",
            Some("spec.consistency.schedule"),
        ),
        ("{schedule: '* * * *'}", Some("spec.consistency.schedule")),
        (
            "{schedule: '* * * * * *'}",
            Some("spec.consistency.schedule"),
        ),
        ("{schedule: '@every 5m'}", Some("spec.consistency.schedule")),
        (
            "{schedule: 'TZ=UTC * * * * *'}",
            Some("spec.consistency.schedule"),
        ),
        ("{schedule: ''}", Some("spec.consistency.schedule")),
        (
            "{schedule: '*/x * * * *'}",
            Some("spec.consistency.schedule"),
        ),
        (
            "{schedule: '* * * * *', window: 1day}",
            Some("spec.consistency.window"),
        ),
        (
            "{schedule: '* * * * *', settle: 500ms}",
            Some("spec.consistency.settle"),
        ),
    ];
    for (block, want) in cases {
        match (want, with(block).validate()) {
            (None, Ok(())) => {}
            (Some(path), Err(e)) => assert!(
                e.0.iter().any(|f| f.path == *path),
                "{block}: expected a problem at {path} in {e:?}"
            ),
            (want, got) => panic!("{block}: expected {want:?}, got {got:?}"),
        }
    }
    let e = with("{schedule: 'every minute'}").validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.consistency.schedule: \"every minute\" is not a cron schedule: five fields (minute hour day-of-month month day-of-week) such as \"*/15 * * * *\", or @hourly, @daily, @weekly, @monthly, @yearly"
    );
}
