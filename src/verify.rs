//! The consistency check: reads what each broker of a pipeline holds and reports, per provider,
//! the message ids it lacks compared with the others, the ids it holds more than once, and the
//! ids whose content differs between copies (as Uber's Chaperone audits that every tier saw the
//! same messages). Content is compared by digest: the `Dualwrite-Digest` header the relay
//! writes, or, for a message without one (written by another tool), the digest of its body.
//!
//! Reading is bounded: each broker is read up to what it held when the check started (JetStream's
//! last sequence, Kafka's high watermarks), so the check ends even under live traffic; messages
//! younger than `settle` are left out on every broker, so a write still in flight to one of them
//! does not count as missing. Brokers are read with plain clients, never through a relay's
//! providers, so a check never consumes or moves a consumer group; they connect with the same
//! TLS and credentials as the providers (the same code makes their settings), reading the Secret
//! files under the secrets directory, and every URL in an error is redacted.
//!
//! `dualwrite verify --pipeline` reads the pipeline from the cluster ([`read_pipeline`]) and
//! [`record`]s the verdict in the pipeline's consistency ConfigMap (`<pipeline>-consistency`);
//! the operator checks it and copies it into `status.consistency`, which a migration gate
//! reads. In the cluster it runs under the pipeline's `<pipeline>-verify` ServiceAccount, whose
//! Role allows exactly that: get the pipeline, get/patch that ConfigMap (a relay's cannot).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;

use crate::api::{ConsistencyStatus, DualWritePipeline, DualWritePipelineSpec};
use crate::message::{ContentDigest, DataMessage, DIGEST_HEADER};
use crate::provider::kafka::{apply_security, KafkaConfig};
use crate::provider::nats::{client_options, default_stream_name, NatsConfig};
use crate::provider::secret::redact_url;
use crate::relay::cluster::PipelineRef;
use crate::relay::{PipelineConfig, ProviderSettings};

/// Why a check could not be made or recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NATS call failed: `what` names the step (connect, stream info, read...).
    #[error("nats {url}: {what}: {message}")]
    Nats {
        url: String,
        what: String,
        message: String,
    },
    /// A Kafka call failed: `what` names the step (consumer, metadata, read...).
    #[error("kafka {topic}: {what}: {message}")]
    Kafka {
        topic: String,
        what: String,
        message: String,
    },
    #[error("kafka read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The pipeline's spec is not valid (each problem names its field).
    #[error("the pipeline is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(#[from] crate::api::SpecError),
    #[error("a consistency check needs at least two nats or kafka providers")]
    TooFewProviders,
    #[error("cannot reach the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("cannot read {pipeline}: {source}")]
    ReadPipeline {
        pipeline: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot hand the verdict to the operator (the pipeline's <name>-consistency ConfigMap, which the operator creates; run as the <name>-verify ServiceAccount): {0}")]
    WriteStatus(#[source] kube::Error),
}

/// Deadline of each broker call in a check.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What one provider holds: every message in the window, in broker order (duplicates kept).
#[derive(Clone, Debug)]
pub struct Holdings {
    pub provider: String,
    pub messages: Vec<Held>,
}

/// One message as a broker holds it: its id and the digest of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub digest: ContentDigest,
}

impl Held {
    /// A message read from a broker: the digest its `Dualwrite-Digest` header states, or, when it
    /// has none (another tool wrote it) or an unreadable one, the digest of its body.
    pub fn read(msg: DataMessage, header: Option<&[u8]>) -> Self {
        let stated = header
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| h.parse().ok());
        Held {
            digest: stated.unwrap_or_else(|| msg.content_digest()),
            id: msg.id,
        }
    }
}

/// The result of a check, per provider. `consistent` means no provider lacks an id another has
/// and no id has two contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub seen: BTreeMap<String, u64>,
    pub missing: BTreeMap<String, u64>,
    pub duplicates: BTreeMap<String, u64>,
    /// Ids this provider holds whose content differs from another copy of the id (on any
    /// provider, this one included).
    pub conflicting: BTreeMap<String, u64>,
    /// Up to 10 missing ids per provider, to start an investigation.
    pub missing_examples: BTreeMap<String, Vec<String>>,
    /// Up to 10 ids with more than one content, with the digests seen per provider.
    pub conflicting_examples: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    pub consistent: bool,
    /// Unix seconds of the oldest ingest time read (`--window`); `None`: everything held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<i64>,
    /// Unix seconds before which messages were read (the check's start less `--settle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<i64>,
}

/// Compares the providers' holdings. Pure.
pub fn compare(holdings: &[Holdings]) -> Report {
    let sets: Vec<HashSet<&str>> = holdings
        .iter()
        .map(|h| h.messages.iter().map(|m| m.id.as_str()).collect())
        .collect();
    let union: HashSet<&str> = sets.iter().flatten().copied().collect();
    // Every content each id has anywhere; an id with more than one is a conflict.
    let mut contents: HashMap<&str, HashSet<ContentDigest>> = HashMap::new();
    for m in holdings.iter().flat_map(|h| &h.messages) {
        contents.entry(&m.id).or_default().insert(m.digest);
    }
    let mut conflicting: Vec<&str> = contents
        .iter()
        .filter(|(_, digests)| digests.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    conflicting.sort_unstable();
    let mut report = Report::default();
    for (h, set) in holdings.iter().zip(&sets) {
        let mut missing: Vec<&str> = union
            .iter()
            .filter(|id| !set.contains(*id))
            .copied()
            .collect();
        missing.sort_unstable();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for m in &h.messages {
            *counts.entry(&m.id).or_default() += 1;
        }
        report
            .seen
            .insert(h.provider.clone(), h.messages.len() as u64);
        report.conflicting.insert(
            h.provider.clone(),
            conflicting.iter().filter(|id| set.contains(*id)).count() as u64,
        );
        report
            .missing
            .insert(h.provider.clone(), missing.len() as u64);
        report.duplicates.insert(
            h.provider.clone(),
            counts.values().filter(|c| **c > 1).count() as u64,
        );
        report.missing_examples.insert(
            h.provider.clone(),
            missing.iter().take(10).map(|s| s.to_string()).collect(),
        );
    }
    for id in conflicting.iter().take(10) {
        let mut per_provider = BTreeMap::new();
        for h in holdings {
            let mut digests: Vec<String> = h
                .messages
                .iter()
                .filter(|m| m.id == *id)
                .map(|m| m.digest.to_string())
                .collect();
            digests.dedup();
            if !digests.is_empty() {
                per_provider.insert(h.provider.clone(), digests);
            }
        }
        report
            .conflicting_examples
            .insert(id.to_string(), per_provider);
    }
    // Consistent = nothing missing anywhere and one content per id. Duplicates (same id, same
    // content) are reported but do not fail the check: Kafka is at-least-once (a client retry or
    // a replay after a crash is a second record with the same key), so they are a fact to know,
    // not a lost message.
    report.consistent = report.missing.values().all(|m| *m == 0) && conflicting.is_empty();
    report
}

/// Whether a message falls in the window `[since, until)` of unix seconds.
fn in_window(msg: &DataMessage, since: Option<i64>, until: i64) -> bool {
    since.is_none_or(|s| msg.timestamp >= s) && msg.timestamp < until
}

/// Every message id on the NATS stream of `spec` with a timestamp in the window.
pub async fn nats_ids(
    spec: &NatsConfig,
    since: Option<i64>,
    until: i64,
) -> Result<Vec<String>, Error> {
    Ok(nats_messages(spec, since, until)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect())
}

/// Every message on the NATS stream of `spec` with a timestamp in the window, with its digest.
pub async fn nats_messages(
    spec: &NatsConfig,
    since: Option<i64>,
    until: i64,
) -> Result<Vec<Held>, Error> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let stream_name = spec
        .stream
        .clone()
        .unwrap_or_else(|| default_stream_name(&spec.subject));
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Nats {
        url: redact_url(&spec.url),
        what: what.into(),
        message: e.to_string(),
    };
    let (addrs, options) = client_options(
        spec,
        async_nats::ConnectOptions::new().connection_timeout(CALL_TIMEOUT),
    )
    .map_err(|e| fail("connect", &e))?;
    let client = tokio::time::timeout(CALL_TIMEOUT, options.connect(addrs))
        .await
        .map_err(|e| fail("connect", &e))?
        .map_err(|e| fail("connect", &e))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| fail(&format!("stream {stream_name}"), &e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| fail("stream info", &e))?
        .state
        .last_sequence;
    let mut held = Vec::new();
    if last == 0 {
        return Ok(held);
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: spec.subject.clone(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| fail("ephemeral consumer", &e))?;
    let mut messages = consumer.messages().await.map_err(|e| fail("read", &e))?;
    loop {
        let m = match tokio::time::timeout(CALL_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(fail("read", &e)),
            Ok(None) => break,
            Err(_) => {
                return Err(fail(
                    "read",
                    &"no message within 10s before the end of the stream",
                ))
            }
        };
        let seq = m
            .info()
            .map_err(|e| fail("message info", &e))?
            .stream_sequence;
        if let Ok(msg) = DataMessage::from_wire(&m.payload) {
            if in_window(&msg, since, until) {
                let header = m.headers.as_ref().and_then(|h| h.get(DIGEST_HEADER));
                held.push(Held::read(msg, header.map(|v| v.as_str().as_bytes())));
            }
        }
        if seq >= last {
            break;
        }
    }
    Ok(held)
}

/// Every message id on the Kafka topic of `spec` (all partitions, up to the high watermarks at
/// the start) with a timestamp in the window.
pub async fn kafka_ids(
    spec: &KafkaConfig,
    since: Option<i64>,
    until: i64,
) -> Result<Vec<String>, Error> {
    Ok(kafka_messages(spec, since, until)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect())
}

/// Every message on the Kafka topic of `spec` (as [`kafka_ids`]), with its digest.
pub async fn kafka_messages(
    spec: &KafkaConfig,
    since: Option<i64>,
    until: i64,
) -> Result<Vec<Held>, Error> {
    let spec = spec.clone();
    // rdkafka's BaseConsumer blocks: read on the blocking pool.
    tokio::task::spawn_blocking(move || kafka_read(&spec, since, until)).await?
}

/// The error of Kafka step `what` on `spec`'s topic.
fn kafka_error(spec: &KafkaConfig, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Kafka {
        topic: spec.topic.clone(),
        what: what.into(),
        message: e.to_string(),
    }
}

/// [`kafka_ids`], blocking.
fn kafka_read(spec: &KafkaConfig, since: Option<i64>, until: i64) -> Result<Vec<Held>, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| kafka_error(spec, what, e);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", spec.brokers.join(","))
        .set(
            "group.id",
            format!("dualwrite-verify-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false");
    apply_security(&mut config, spec).map_err(|e| fail("credentials", &e))?;
    for (k, v) in &spec.config {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().map_err(|e| fail("consumer", &e))?;
    let mut remaining = assign_up_to_watermarks(&consumer, spec)?;
    let mut held = Vec::new();
    while !remaining.is_empty() {
        let m = match consumer.poll(CALL_TIMEOUT) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(fail("read", &e)),
            None => {
                return Err(fail(
                    "read",
                    &"no record within 10s before the high watermark",
                ))
            }
        };
        if let Some(Ok(msg)) = m.payload().map(DataMessage::from_wire) {
            if in_window(&msg, since, until) {
                let header = m.headers().and_then(|hs| {
                    hs.iter()
                        .find(|h| h.key == DIGEST_HEADER)
                        .and_then(|h| h.value)
                });
                held.push(Held::read(msg, header));
            }
        }
        if remaining
            .get(&m.partition())
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            remaining.remove(&m.partition());
        }
    }
    Ok(held)
}

/// Assigns `consumer` every non-empty partition of the topic from its low watermark, and
/// returns each one's high watermark now: where reading stops, so the check ends under traffic.
fn assign_up_to_watermarks(
    consumer: &BaseConsumer,
    spec: &KafkaConfig,
) -> Result<HashMap<i32, i64>, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| kafka_error(spec, what, e);
    let metadata = consumer
        .fetch_metadata(Some(&spec.topic), CALL_TIMEOUT)
        .map_err(|e| fail("metadata", &e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(&spec.topic, p, CALL_TIMEOUT)
            .map_err(|e| fail("watermarks", &e))?;
        if high > low {
            remaining.insert(p, high);
            assignment
                .add_partition_offset(&spec.topic, p, Offset::Offset(low))
                .map_err(|e| fail("assign", &e))?;
        }
    }
    if !remaining.is_empty() {
        consumer
            .assign(&assignment)
            .map_err(|e| fail("assign", &e))?;
    }
    Ok(remaining)
}

/// Reads every NATS and Kafka provider of `spec` (memory providers are skipped: nothing outside
/// the relay can read them) and compares them. `window`: only messages ingested in that span
/// before now - `settle`. Credentials are read from the Secret files under `secrets_dir`.
pub async fn check(
    spec: &DualWritePipelineSpec,
    window: Option<Duration>,
    settle: Duration,
    secrets_dir: &Path,
) -> Result<Report, Error> {
    let now = chrono::Utc::now().timestamp();
    let until = now - settle.as_secs() as i64;
    let since = window.map(|w| until - w.as_secs() as i64);
    let mut holdings = Vec::new();
    let config = PipelineConfig::try_from(spec)?.with_secrets_dir(secrets_dir);
    for p in &config.providers {
        let messages = match &p.settings {
            ProviderSettings::Nats(n) => nats_messages(n, since, until).await?,
            ProviderSettings::Kafka(k) => kafka_messages(k, since, until).await?,
            ProviderSettings::Memory { .. } => continue,
        };
        holdings.push(Holdings {
            provider: p.name.clone(),
            messages,
        });
    }
    if holdings.len() < 2 {
        return Err(Error::TooFewProviders);
    }
    let mut report = compare(&holdings);
    report.window_start = since;
    report.window_end = Some(until);
    Ok(report)
}

/// The pipeline `r` in the cluster (KUBECONFIG or in-cluster), with the API to record a
/// verdict for it.
pub async fn read_pipeline(
    r: &PipelineRef,
) -> Result<
    (
        DualWritePipelineSpec,
        Api<k8s_openapi::api::core::v1::ConfigMap>,
    ),
    Error,
> {
    let client = kube::Client::try_default().await.map_err(Error::Connect)?;
    let api: Api<DualWritePipeline> = Api::namespaced(client.clone(), &r.namespace);
    let obj = api
        .get(&r.name)
        .await
        .map_err(|source| Error::ReadPipeline {
            pipeline: format!("{}/{}", r.namespace, r.name),
            source,
        })?;
    Ok((obj.spec, Api::namespaced(client, &r.namespace)))
}

/// What `status.consistency` says of `report`, checked `at`.
pub fn consistency_status(report: &Report, at: Timestamp) -> ConsistencyStatus {
    ConsistencyStatus {
        checked_at: Time(at),
        seen: report.seen.clone(),
        missing: report.missing.clone(),
        duplicates: report.duplicates.clone(),
        conflicting: report.conflicting.clone(),
        consistent: report.consistent,
        window_start: report.window_start.and_then(unix_time),
        window_end: report.window_end.and_then(unix_time),
    }
}

fn unix_time(secs: i64) -> Option<Time> {
    Timestamp::from_second(secs).ok().map(Time)
}

/// Hands `report` to the operator: under [`crate::api::VERDICT_KEY`] of the pipeline's
/// consistency ConfigMap ([`crate::api::consistency_name`]), the one object the check's
/// ServiceAccount (`<pipeline>-verify`) may write and the relay's may not. The operator checks
/// it and copies it into `status.consistency`, which a migration gate reads; nobody but the
/// operator writes the status.
pub async fn record(
    maps: &Api<k8s_openapi::api::core::v1::ConfigMap>,
    name: &str,
    report: &Report,
) -> Result<(), Error> {
    let verdict = serde_json::to_string(&consistency_status(report, Timestamp::now()))
        .expect("a verdict serializes");
    let patch = serde_json::json!({ "data": { crate::api::VERDICT_KEY: verdict } });
    let params = kube::api::PatchParams {
        field_manager: Some(VERIFY_MANAGER.into()),
        ..Default::default()
    };
    maps.patch(
        &crate::api::consistency_name(name),
        &params,
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    Ok(())
}

/// Field manager of the verdict written by `dualwrite verify --pipeline`.
pub const VERIFY_MANAGER: &str = "dualwrite-verify";

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider holding `ids`, each with the content "same".
    fn h(provider: &str, ids: &[&str]) -> Holdings {
        let held: Vec<(&str, &str)> = ids.iter().map(|id| (*id, "same")).collect();
        hc(provider, &held)
    }

    /// A provider holding `(id, content)` pairs.
    fn hc(provider: &str, held: &[(&str, &str)]) -> Holdings {
        Holdings {
            provider: provider.into(),
            messages: held
                .iter()
                .map(|(id, content)| Held {
                    id: id.to_string(),
                    digest: DataMessage::new("test", content.to_string()).content_digest(),
                })
                .collect(),
        }
    }

    #[test]
    fn ids_with_two_contents_are_conflicts_and_make_the_check_fail() {
        // (holdings, conflicting per provider, consistent)
        let cases = [
            // o-1 is "one" on a, "two" on b: both hold a conflicting id.
            (
                vec![hc("a", &[("o-1", "one")]), hc("b", &[("o-1", "two")])],
                [1, 1],
                false,
            ),
            // Kafka kept both writes of a reused id: a conflict within one provider.
            (
                vec![
                    hc("a", &[("o-1", "one")]),
                    hc("b", &[("o-1", "one"), ("o-1", "two")]),
                ],
                [1, 1],
                false,
            ),
            // A retry stored twice with the same content is a duplicate, not a conflict.
            (
                vec![
                    hc("a", &[("o-1", "one")]),
                    hc("b", &[("o-1", "one"), ("o-1", "one")]),
                ],
                [0, 0],
                true,
            ),
            // Missing on b and different on the others: counted where held.
            (
                vec![
                    hc("a", &[("o-1", "one"), ("o-2", "x")]),
                    hc("b", &[("o-2", "y")]),
                ],
                [1, 1],
                false,
            ),
        ];
        for (i, (holdings, conflicting, consistent)) in cases.into_iter().enumerate() {
            let r = compare(&holdings);
            assert_eq!(
                [r.conflicting["a"], r.conflicting["b"]],
                conflicting,
                "case {i}: {r:?}"
            );
            assert_eq!(r.consistent, consistent, "case {i}: {r:?}");
        }
        let r = compare(&[hc("a", &[("o-1", "one")]), hc("b", &[("o-1", "two")])]);
        let example = &r.conflicting_examples["o-1"];
        let digest = |c: &str| {
            DataMessage::new("test", c.to_string())
                .content_digest()
                .to_string()
        };
        assert_eq!(example["a"], [digest("one")]);
        assert_eq!(example["b"], [digest("two")]);
        assert_eq!(consistency_status(&r, Timestamp::now()).conflicting["b"], 1);
    }

    #[test]
    fn a_message_without_a_digest_header_is_compared_by_its_body() {
        let msg = DataMessage::new("test", "one");
        let stated = DataMessage::new("test", "two").content_digest();
        let header = stated.to_string();
        assert_eq!(Held::read(msg.clone(), None).digest, msg.content_digest());
        assert_eq!(
            Held::read(msg.clone(), Some(b"garbage")).digest,
            msg.content_digest()
        );
        assert_eq!(Held::read(msg, Some(header.as_bytes())).digest, stated);
    }

    #[test]
    fn compare_table() {
        // (holdings, missing per provider, duplicates per provider, consistent)
        let cases = [
            (
                vec![h("a", &["1", "2"]), h("b", &["2", "1"])],
                [0, 0],
                [0, 0],
                true,
            ),
            (
                vec![h("a", &["1", "2", "3"]), h("b", &["1", "3"])],
                [0, 1],
                [0, 0],
                false,
            ),
            (vec![h("a", &["1"]), h("b", &["2"])], [1, 1], [0, 0], false),
            (
                vec![h("a", &["1", "1", "2"]), h("b", &["1", "2"])],
                [0, 0],
                [1, 0],
                true,
            ),
            (vec![h("a", &[]), h("b", &[])], [0, 0], [0, 0], true),
        ];
        for (i, (holdings, missing, dups, consistent)) in cases.into_iter().enumerate() {
            let r = compare(&holdings);
            assert_eq!([r.missing["a"], r.missing["b"]], missing, "case {i}");
            assert_eq!([r.duplicates["a"], r.duplicates["b"]], dups, "case {i}");
            assert_eq!(r.consistent, consistent, "case {i}");
        }
        let r = compare(&[h("a", &["1", "2", "3"]), h("b", &["1"])]);
        assert_eq!(r.missing_examples["b"], ["2", "3"]);
        assert_eq!(r.seen["a"], 3);
    }

    #[test]
    fn consistency_status_carries_the_report() {
        let report = compare(&[h("a", &["1", "2"]), h("b", &["1"])]);
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let status = consistency_status(&report, at);
        assert_eq!(status.checked_at, Time(at));
        assert_eq!(status.seen, report.seen);
        assert_eq!(status.missing["b"], 1);
        assert_eq!(status.duplicates, report.duplicates);
        assert!(!status.consistent);
    }

    #[test]
    fn window_bounds() {
        let mut m = DataMessage::new("s", "x");
        m.timestamp = 100;
        assert!(in_window(&m, None, 101));
        assert!(in_window(&m, Some(100), 101));
        assert!(!in_window(&m, Some(101), 200));
        assert!(!in_window(&m, None, 100), "settling messages are left out");
    }
}
