//! The one validator: `PipelineConfig::try_from(&spec)` checks a whole `DualWritePipelineSpec`
//! and turns it into the core's typed configuration. The CRD enforces the same rules at
//! `kubectl apply` (its patterns are the constants below, shared with the schema; its CEL rules
//! are checked against this validator by `tests/crd_validation.rs`); this serves what reaches a
//! relay without an API server (a manifest file, the seed's variables) and the operator, which
//! must not act on a spec the API server let through from an older CRD.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use regex::Regex;

use super::*;
use crate::duration;
use crate::handoff::Limits;
use crate::provider::kafka::KafkaConfig;
use crate::provider::memory::DEFAULT_CAPACITY;
use crate::provider::nats::NatsConfig;
use crate::provider::secret::{
    redact_url, CertAndKey, KafkaAuth, NatsAuth, SaslMechanism, SecretFile, TlsFiles,
    DEFAULT_SECRETS_DIR,
};
use crate::relay::pipeline::{
    HandoffConfig, IngestConfig, PipelineConfig, ProviderConfig, ProviderSettings,
    DEFAULT_MAX_BODY_BYTES,
};

/// A provider name: a DNS label.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A concrete NATS subject: dot-separated non-empty tokens, no wildcards, no whitespace.
pub const NATS_SUBJECT: &str = r"^[^\s*>.]+(\.[^\s*>.]+)*$";
/// A Kafka topic's characters (Kafka's rule; `.` and `..` alone are refused by a CEL rule).
pub const KAFKA_TOPIC: &str = r"^[a-zA-Z0-9._-]+$";
/// NATS server URLs, comma-separated: an optional scheme of nats, tls, ws or wss, optional
/// user info, a host name or a bracketed IPv6 address, an optional port.
pub const NATS_URLS: &str = r"^ *((nats|tls|ws|wss)://)?([^\s,/@]+@)?(\[[0-9a-fA-F:.]+\]|[^\s,/:@\[\]]+)(:[0-9]+)?/? *( *, *((nats|tls|ws|wss)://)?([^\s,/@]+@)?(\[[0-9a-fA-F:.]+\]|[^\s,/:@\[\]]+)(:[0-9]+)?/? *)*$";
/// A bootstrap server, `host:port`.
pub const KAFKA_BROKER: &str = r"^[^\s,]+:[0-9]+$";
/// A publish deadline: not zero, in ms, s or m.
pub const TIMEOUT: &str = r"^([0-9]*[1-9][0-9]*(ms|s|m))+$";
/// A duration in ms, s, m or h.
pub const DURATION_MS: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A duration in s, m or h.
pub const DURATION: &str = r"^([0-9]+(s|m|h))+$";

/// Longest pipeline name: `<name>-relay` and a StatefulSet's `<name>-relay-<10-char hash>`
/// revision label must stay within 63 characters.
pub const MAX_PIPELINE_NAME: usize = 46;
/// The CRD's rule on `metadata.name` (only the API server sees a resource's name).
pub const PIPELINE_NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 46";
/// Its message.
pub const PIPELINE_NAME_MESSAGE: &str = "metadata.name: a pipeline's name must start with a letter, hold only lower case letters, digits and '-', end with a letter or digit, and be at most 46 characters (it names the relay's Service and StatefulSet)";

/// A Secret's name: a DNS subdomain.
pub const SECRET_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key within a Secret (Kubernetes' rule for ConfigMap and Secret keys).
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// The librdkafka settings `kafka.config` may hold: tuning only. Everything about security
/// (`security.protocol`, `ssl.*`, `sasl.*`, plugins, Kerberos commands) goes through the typed
/// `tls` and `authentication` fields, and the delivery guarantees (`acks=all`, idempotence, a
/// finite message timeout derived from `publishTimeout`) cannot be changed. An allowlist, so a
/// key librdkafka adds later is refused until someone decides it is safe.
macro_rules! kafka_config_allowlist {
    ($m:ident) => {
        $m!(
            "batch.num.messages",
            "batch.size",
            "broker.address.family",
            "client.id",
            "client.rack",
            "compression.codec",
            "compression.level",
            "compression.type",
            "connections.max.idle.ms",
            "fetch.max.bytes",
            "fetch.min.bytes",
            "fetch.wait.max.ms",
            "heartbeat.interval.ms",
            "linger.ms",
            "max.partition.fetch.bytes",
            "max.poll.interval.ms",
            "message.max.bytes",
            "metadata.max.age.ms",
            "partitioner",
            "queue.buffering.max.kbytes",
            "queue.buffering.max.messages",
            "queue.buffering.max.ms",
            "receive.message.max.bytes",
            "reconnect.backoff.max.ms",
            "reconnect.backoff.ms",
            "request.timeout.ms",
            "retry.backoff.max.ms",
            "retry.backoff.ms",
            "session.timeout.ms",
            "socket.keepalive.enable",
            "socket.receive.buffer.bytes",
            "socket.send.buffer.bytes",
            "socket.timeout.ms",
            "statistics.interval.ms",
            "sticky.partitioning.linger.ms",
            "topic.metadata.refresh.interval.ms"
        )
    };
}
macro_rules! as_array {
    ($($k:literal),*) => { [$($k),*] };
}
// A CEL map literal, not a list: membership in a map is a constant-cost lookup for the API
// server's cost estimator, which refuses a list scan per key of an unbounded map.
macro_rules! as_cel_list {
    ($($k:literal),*) => { concat!("{", $("'", $k, "': true, ",)* "}") };
}
/// The keys `kafka.config` accepts.
pub const KAFKA_CONFIG_ALLOWED: &[&str] = &kafka_config_allowlist!(as_array);
/// The CRD's rule for `kafka.config` (the same list).
pub const KAFKA_CONFIG_RULE: &str = concat!(
    "!has(self.config) || self.config.all(k, k in ",
    kafka_config_allowlist!(as_cel_list),
    ")"
);
/// The CRD's message naming a refused key (the first; the relay's validator names them all).
pub const KAFKA_CONFIG_MESSAGE: &str = concat!(
    "'kafka.config: ' + self.config.filter(k, !(k in ",
    kafka_config_allowlist!(as_cel_list),
    "))[0] + ' is not allowed: only tuning settings (batching, linger, compression, buffering, timeouts, client.id); security goes through tls and authentication, and acks, idempotence and the message timeout are fixed'"
);

/// One thing wrong with a spec, at a path such as `spec.providers[1].kafka.brokers`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a spec, one line each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError(pub Vec<FieldError>);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl SpecError {
    /// Each problem as one line, `path: message`.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Every problem on one line, separated by `sep`.
    pub fn join(&self, sep: &str) -> String {
        self.messages().join(sep)
    }
}

/// Collects problems while a spec is walked.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `text` must match `pattern` (one of the constants above); `what` says what was expected.
    fn pattern(&mut self, path: &str, text: &str, pattern: &str, what: &str) -> bool {
        let ok = Regex::new(pattern)
            .expect("the patterns compile")
            .is_match(text);
        if !ok {
            self.add(path, format!("{text:?} {what}"));
        }
        ok
    }

    fn length(&mut self, path: &str, text: &str, min: usize, max: usize) -> bool {
        let n = text.chars().count();
        let ok = (min..=max).contains(&n);
        if !ok {
            self.add(path, format!("must be {min} to {max} characters long"));
        }
        ok
    }

    fn range<T: PartialOrd + std::fmt::Display>(&mut self, path: &str, v: T, min: T, max: T) {
        if v < min || v > max {
            self.add(path, format!("{v} is out of range: {min} to {max}"));
        }
    }

    /// A duration matching `pattern`, parsed.
    fn duration(&mut self, path: &str, text: &str, pattern: &str) -> Option<Duration> {
        let units = if pattern == DURATION {
            "s, m or h"
        } else {
            "ms, s, m or h"
        };
        let what = format!("is not a duration like 5s, 750ms or 2m (units {units})");
        if !self.pattern(path, text, pattern, &what) {
            return None;
        }
        match duration::parse(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.add(path, e.to_string());
                None
            }
        }
    }
}

impl TryFrom<&DualWritePipelineSpec> for PipelineConfig {
    type Error = SpecError;

    /// Checks the whole spec (migration and relay settings too) and builds the relay's part.
    fn try_from(spec: &DualWritePipelineSpec) -> Result<Self, SpecError> {
        let mut problems = Problems::default();
        let providers = providers(&mut problems, &spec.providers);
        let publish_timeout = spec
            .publish_timeout
            .as_deref()
            .and_then(|t| problems.duration("spec.publishTimeout", t, TIMEOUT))
            .unwrap_or(crate::composite::DEFAULT_PUBLISH_TIMEOUT);
        let ingest = ingest(&mut problems, spec.ingest.as_ref());
        let handoff = handoff(&mut problems, spec.handoff.as_ref());
        if let Some(r) = spec.relay.as_ref().and_then(|r| r.replicas) {
            problems.range("spec.relay.replicas", r, 0, 100);
        }
        if let Some(m) = &spec.migration {
            migration(&mut problems, m, &spec.providers);
        }
        if !problems.0.is_empty() {
            return Err(SpecError(problems.0));
        }
        Ok(PipelineConfig {
            providers,
            strategy: spec.strategy,
            publish_timeout,
            handoff,
            ingest,
        })
    }
}

impl DualWritePipelineSpec {
    /// Every problem of the spec, each naming its path and saying how to fix it.
    pub fn validate(&self) -> Result<(), SpecError> {
        PipelineConfig::try_from(self).map(drop)
    }
}

fn providers(problems: &mut Problems, specs: &[ProviderSpec]) -> Vec<ProviderConfig> {
    if specs.is_empty() {
        problems.add("spec.providers", "list at least one provider");
    }
    if specs.len() > MAX_PROVIDERS {
        problems.add(
            "spec.providers",
            format!("at most {MAX_PROVIDERS} providers"),
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for (i, p) in specs.iter().enumerate() {
        let at = format!("spec.providers[{i}]");
        let name_at = format!("{at}.name");
        if problems.length(&name_at, &p.name, 1, 63) {
            problems.pattern(
                &name_at,
                &p.name,
                DNS_LABEL,
                "must be a DNS label (lower case letters, digits and '-', at most 63)",
            );
        }
        if !names.insert(p.name.as_str()) {
            problems.add(
                &name_at,
                format!("{:?} is used twice; provider names must be unique", p.name),
            );
        }
        if let Some(settings) = provider(problems, &at, p) {
            out.push(ProviderConfig {
                name: p.name.clone(),
                settings,
            });
        }
    }
    out
}

fn provider(problems: &mut Problems, at: &str, p: &ProviderSpec) -> Option<ProviderSettings> {
    let blocks = [
        (ProviderKind::Memory, p.memory.is_some()),
        (ProviderKind::Nats, p.nats.is_some()),
        (ProviderKind::Kafka, p.kafka.is_some()),
    ];
    for (kind, present) in blocks {
        if present && kind != p.kind {
            problems.add(
                format!("{at}.{kind}"),
                format!("{kind} settings are only allowed on a provider of type {kind}"),
            );
        }
    }
    match p.kind {
        ProviderKind::Memory => {
            let capacity = p.memory.as_ref().and_then(|m| m.capacity);
            if let Some(c) = capacity {
                problems.range(&format!("{at}.memory.capacity"), c, 1, 10_000_000);
            }
            Some(ProviderSettings::Memory {
                capacity: capacity.map_or(DEFAULT_CAPACITY, |c| c as usize),
            })
        }
        ProviderKind::Nats => match &p.nats {
            None => {
                problems.add(
                    format!("{at}.nats"),
                    "a provider of type nats needs a nats block with url and subject",
                );
                None
            }
            Some(n) => nats(problems, &format!("{at}.nats"), n).map(ProviderSettings::Nats),
        },
        ProviderKind::Kafka => match &p.kafka {
            None => {
                problems.add(
                    format!("{at}.kafka"),
                    "a provider of type kafka needs a kafka block with brokers and topic",
                );
                None
            }
            Some(k) => kafka(problems, &format!("{at}.kafka"), k).map(ProviderSettings::Kafka),
        },
    }
}

fn nats(problems: &mut Problems, at: &str, n: &NatsSpec) -> Option<NatsConfig> {
    let before = problems.0.len();
    let url_at = format!("{at}.url");
    let urls: Vec<&str> = n
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        problems.add(&url_at, "give the server URL, e.g. nats://nats:4222");
    }
    if problems.length(&url_at, &n.url, 1, 1024)
        && !Regex::new(NATS_URLS)
            .expect("the patterns compile")
            .is_match(&n.url)
    {
        // The URL may carry user:password@: the message shows it redacted.
        problems.add(
            &url_at,
            format!(
                "{:?} is not a list of NATS URLs like nats://host:4222",
                redact_url(&n.url)
            ),
        );
        return None;
    }
    for u in urls {
        if let Err(e) = u.parse::<async_nats::ServerAddr>() {
            problems.add(
                &url_at,
                format!(
                    "{:?} is not a NATS URL like nats://host:4222 ({})",
                    redact_url(u),
                    redact_url(&e.to_string())
                ),
            );
        }
    }
    let subject_at = format!("{at}.subject");
    if problems.length(&subject_at, &n.subject, 1, 255) {
        problems.pattern(
            &subject_at,
            &n.subject,
            NATS_SUBJECT,
            "must be one concrete subject (tokens separated by single dots, no wildcards or spaces, e.g. orders.created)",
        );
    }
    for (field, value) in [("stream", &n.stream), ("durable", &n.durable)] {
        if let Some(v) = value {
            problems.length(&format!("{at}.{field}"), v, 1, 255);
        }
    }
    let duplicate_window = n
        .duplicate_window
        .as_deref()
        .and_then(|w| problems.duration(&format!("{at}.duplicateWindow"), w, DURATION_MS));
    let mut refs = n.tls.as_ref().map(tls_refs).unwrap_or_default();
    if let Some(a) = &n.authentication {
        for (field, s) in [
            ("authentication.credsSecret", &a.creds_secret),
            ("authentication.seedSecret", &a.seed_secret),
            ("authentication.tokenSecret", &a.token_secret),
        ] {
            refs.extend(
                s.iter()
                    .map(|s| (field, s.secret_name.as_str(), s.key.as_str())),
            );
        }
        refs.extend(a.password_secret.iter().map(|p| {
            (
                "authentication.passwordSecret",
                p.secret_name.as_str(),
                p.password.as_str(),
            )
        }));
    }
    secret_refs(problems, at, &refs);
    let tls = n.tls.as_ref().map(tls_files);
    let auth = n
        .authentication
        .as_ref()
        .and_then(|a| nats_auth(problems, at, a));
    (problems.0.len() == before).then(|| NatsConfig {
        url: n.url.trim().to_string(),
        subject: n.subject.clone(),
        stream: n.stream.clone(),
        durable: n.durable.clone(),
        duplicate_window,
        tls,
        auth,
    })
}

fn kafka(problems: &mut Problems, at: &str, k: &KafkaSpec) -> Option<KafkaConfig> {
    let before = problems.0.len();
    let brokers_at = format!("{at}.brokers");
    if k.brokers.is_empty() || k.brokers.len() > 32 {
        problems.add(&brokers_at, "list 1 to 32 brokers as host:port");
    }
    for (i, b) in k.brokers.iter().enumerate() {
        if b.trim().is_empty() {
            problems.add(&brokers_at, "list at least one broker as host:port");
        } else {
            problems.pattern(
                &format!("{brokers_at}[{i}]"),
                b,
                KAFKA_BROKER,
                "is not host:port",
            );
        }
    }
    let topic_at = format!("{at}.topic");
    if problems.length(&topic_at, &k.topic, 1, 249)
        && problems.pattern(
            &topic_at,
            &k.topic,
            KAFKA_TOPIC,
            "may hold only letters, digits, '.', '_' and '-'",
        )
        && (k.topic == "." || k.topic == "..")
    {
        problems.add(
            &topic_at,
            format!("{:?} is not a legal topic name", k.topic),
        );
    }
    if let Some(p) = k.partitions {
        problems.range(&format!("{at}.partitions"), p, 1, 10_000);
    }
    if let Some(r) = k.replication_factor {
        problems.range(&format!("{at}.replicationFactor"), r, 1, 32);
    }
    let refused: Vec<&str> = k
        .config
        .keys()
        .map(String::as_str)
        .filter(|key| !KAFKA_CONFIG_ALLOWED.contains(key))
        .collect();
    if !refused.is_empty() {
        problems.add(
            format!("{at}.config"),
            format!(
                "{} not allowed: only tuning settings (batching, linger, compression, buffering, \
                 timeouts, client.id); security goes through tls and authentication, and acks, \
                 idempotence and the message timeout are fixed",
                refused.join(", ")
            ),
        );
    }
    let mut refs = k.tls.as_ref().map(tls_refs).unwrap_or_default();
    if let Some(a) = &k.authentication {
        refs.extend(a.password_secret.iter().map(|p| {
            (
                "authentication.passwordSecret",
                p.secret_name.as_str(),
                p.password.as_str(),
            )
        }));
        if let Some(c) = &a.certificate_and_key {
            refs.push((
                "authentication.certificateAndKey",
                &c.secret_name,
                &c.certificate,
            ));
            refs.push(("authentication.certificateAndKey", &c.secret_name, &c.key));
        }
    }
    secret_refs(problems, at, &refs);
    let tls = k.tls.as_ref().map(tls_files);
    let auth = k
        .authentication
        .as_ref()
        .and_then(|a| kafka_auth(problems, at, a, tls.is_some()));
    (problems.0.len() == before).then(|| KafkaConfig {
        brokers: k.brokers.iter().map(|b| b.trim().to_string()).collect(),
        topic: k.topic.clone(),
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        group_id: k.group_id.clone(),
        config: k.config.clone(),
        tls,
        auth,
    })
}

fn ingest(problems: &mut Problems, spec: Option<&IngestSpec>) -> IngestConfig {
    let port = spec.and_then(|i| i.port);
    if let Some(p) = port {
        problems.range("spec.ingest.port", p, 1, u16::MAX);
    }
    let max_body = spec.and_then(|i| i.max_body_bytes);
    if let Some(b) = max_body {
        problems.range("spec.ingest.maxBodyBytes", b, 1024, 64 * 1024 * 1024);
    }
    let defaults = IngestConfig::default();
    let Some(i) = spec else {
        return defaults;
    };
    let timeout = |problems: &mut Problems, field: &str, v: &Option<String>, default| {
        v.as_deref()
            .and_then(|t| problems.duration(&format!("spec.ingest.{field}"), t, TIMEOUT))
            .unwrap_or(default)
    };
    if let Some(p) = i.probe_port {
        problems.range("spec.ingest.probePort", p, 1, u16::MAX);
    }
    for (field, v) in [
        ("maxInFlight", i.max_in_flight),
        ("maxConnections", i.max_connections),
    ] {
        if let Some(v) = v {
            problems.range(&format!("spec.ingest.{field}"), v, 1, 100_000);
        }
    }
    let mut refs = Vec::new();
    if let Some(c) = &i.tls {
        refs.push(("tls", c.secret_name.as_str(), c.certificate.as_str()));
        refs.push(("tls", c.secret_name.as_str(), c.key.as_str()));
    }
    if let Some(a) = &i.authentication {
        refs.push((
            "authentication.tokensSecret",
            &a.tokens_secret.secret_name,
            &a.tokens_secret.key,
        ));
    }
    secret_refs(problems, "spec.ingest", &refs);
    IngestConfig {
        port,
        max_body_bytes: max_body.map_or(DEFAULT_MAX_BODY_BYTES, |b| b as usize),
        tls: i.tls.as_ref().map(cert_and_key),
        tokens: i
            .authentication
            .as_ref()
            .map(|a| secret_key(&a.tokens_secret)),
        probe_port: i.probe_port,
        max_in_flight: i
            .max_in_flight
            .map_or(defaults.max_in_flight, |v| v as usize),
        max_connections: i
            .max_connections
            .map_or(defaults.max_connections, |v| v as usize),
        header_timeout: timeout(
            problems,
            "headerTimeout",
            &i.header_timeout,
            defaults.header_timeout,
        ),
        request_timeout: timeout(
            problems,
            "requestTimeout",
            &i.request_timeout,
            defaults.request_timeout,
        ),
    }
}

fn handoff(problems: &mut Problems, spec: Option<&HandoffSpec>) -> HandoffConfig {
    let Some(h) = spec else {
        return HandoffConfig::default();
    };
    if h.max_messages == Some(0) {
        problems.add("spec.handoff.maxMessages", "must be at least 1");
    }
    let max_age = h
        .max_age
        .as_deref()
        .and_then(|t| problems.duration("spec.handoff.maxAge", t, DURATION));
    HandoffConfig {
        enabled: h.enabled != Some(false),
        limits: Limits {
            max_messages: h.max_messages,
            max_age,
        },
    }
}

fn migration(problems: &mut Problems, m: &MigrationSpec, providers: &[ProviderSpec]) {
    let known: HashSet<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    if m.steps.is_empty() || m.steps.len() > 16 {
        problems.add("spec.migration.steps", "list 1 to 16 steps");
    }
    for (i, s) in m.steps.iter().enumerate() {
        let at = format!("spec.migration.steps[{i}]");
        problems.length(&format!("{at}.name"), &s.name, 1, 63);
        if let Some(list) = &s.providers {
            if list.is_empty() || list.len() > MAX_PROVIDERS {
                problems.add(
                    format!("{at}.providers"),
                    format!("list 1 to {MAX_PROVIDERS} providers"),
                );
            }
        }
        for n in s.providers.iter().flatten().chain(s.read_from.iter()) {
            if !known.contains(n.as_str()) {
                problems.add(
                    &at,
                    format!("{n:?} is not a provider listed in spec.providers"),
                );
            }
        }
        if let (Some(list), Some(r)) = (&s.providers, &s.read_from) {
            if !list.contains(r) {
                problems.add(
                    format!("{at}.readFrom"),
                    format!("{r:?} must be one of the step's providers"),
                );
            }
        }
        if let Some(min) = s.gates.as_ref().and_then(|g| g.min_duration.as_ref()) {
            problems.duration(&format!("{at}.gates.minDuration"), min, DURATION);
        }
    }
    if let Some(t) = m.target_step {
        if t as usize >= m.steps.len() {
            problems.add(
                "spec.migration.targetStep",
                format!(
                    "{t} is past the last step ({})",
                    m.steps.len().saturating_sub(1)
                ),
            );
        }
    }
    if let Some(f) = &m.fallback_after {
        problems.duration("spec.migration.fallbackAfter", f, DURATION);
    }
}

/// Checks every Secret reference of a provider or the ingest listener: names and keys as
/// Kubernetes allows them (the CRD's patterns).
fn secret_refs(problems: &mut Problems, at: &str, refs: &[(&str, &str, &str)]) {
    for (field, name, key) in refs {
        let path = format!("{at}.{field}");
        if problems.length(&format!("{path}.secretName"), name, 1, 253) {
            problems.pattern(
                &format!("{path}.secretName"),
                name,
                SECRET_NAME,
                "is not a Secret name (lower case letters, digits, '-' and '.')",
            );
        }
        if problems.length(&format!("{path} key"), key, 1, 253) {
            problems.pattern(
                &format!("{path} key"),
                key,
                SECRET_KEY,
                "is not a Secret key (letters, digits, '-', '_' and '.')",
            );
        }
    }
}

/// Every Secret reference of a TLS block, as (field, secret, key).
fn tls_refs(t: &TlsSpec) -> Vec<(&'static str, &str, &str)> {
    let mut out: Vec<(&str, &str, &str)> = t
        .trusted_certificates
        .iter()
        .map(|c| {
            (
                "tls.trustedCertificates[]",
                c.secret_name.as_str(),
                c.certificate.as_str(),
            )
        })
        .collect();
    if let Some(c) = &t.certificate_and_key {
        out.push(("tls.certificateAndKey", &c.secret_name, &c.certificate));
        out.push(("tls.certificateAndKey", &c.secret_name, &c.key));
    }
    out
}

/// The secrets directory a spec's Secret keys resolve under until `--secrets-dir` re-roots them.
fn secrets_dir() -> &'static Path {
    Path::new(DEFAULT_SECRETS_DIR)
}

fn secret_key(s: &SecretKeySource) -> SecretFile {
    SecretFile::new(secrets_dir(), &s.secret_name, &s.key)
}

fn password(s: &PasswordSecretSource) -> SecretFile {
    SecretFile::new(secrets_dir(), &s.secret_name, &s.password)
}

fn cert_and_key(s: &CertAndKeySecretSource) -> CertAndKey {
    CertAndKey {
        certificate: SecretFile::new(secrets_dir(), &s.secret_name, &s.certificate),
        key: SecretFile::new(secrets_dir(), &s.secret_name, &s.key),
    }
}

fn tls_files(t: &TlsSpec) -> TlsFiles {
    TlsFiles {
        trusted_certificates: t
            .trusted_certificates
            .iter()
            .map(|c| SecretFile::new(secrets_dir(), &c.secret_name, &c.certificate))
            .collect(),
        client: t.certificate_and_key.as_ref().map(cert_and_key),
    }
}

/// Kafka credentials; each type takes its own fields and refuses the others (as the CRD does).
fn kafka_auth(
    problems: &mut Problems,
    at: &str,
    a: &KafkaAuthenticationSpec,
    has_tls: bool,
) -> Option<KafkaAuth> {
    let at = format!("{at}.authentication");
    let sasl = |mechanism| match (&a.username, &a.password_secret) {
        (Some(u), Some(p)) => Some(KafkaAuth::Sasl {
            mechanism,
            username: u.clone(),
            password: password(p),
        }),
        _ => None,
    };
    let (auth, wants) = match a.kind {
        KafkaAuthType::Tls => (
            a.certificate_and_key
                .as_ref()
                .map(|c| KafkaAuth::Tls(cert_and_key(c))),
            "certificateAndKey",
        ),
        KafkaAuthType::Plain => (sasl(SaslMechanism::Plain), "username and passwordSecret"),
        KafkaAuthType::ScramSha256 => (
            sasl(SaslMechanism::ScramSha256),
            "username and passwordSecret",
        ),
        KafkaAuthType::ScramSha512 => (
            sasl(SaslMechanism::ScramSha512),
            "username and passwordSecret",
        ),
    };
    let is_tls = a.kind == KafkaAuthType::Tls;
    if auth.is_none() {
        problems.add(&at, format!("this type needs {wants}"));
    }
    if is_tls && (a.username.is_some() || a.password_secret.is_some()) {
        problems.add(&at, "username and passwordSecret are not for type tls");
    }
    if !is_tls && a.certificate_and_key.is_some() {
        problems.add(&at, "certificateAndKey is only for type tls");
    }
    if is_tls && !has_tls {
        problems.add(&at, "type tls needs a tls block");
    }
    auth
}

/// NATS credentials; each type takes its own field and refuses the others (as the CRD does).
fn nats_auth(problems: &mut Problems, at: &str, a: &NatsAuthenticationSpec) -> Option<NatsAuth> {
    let at = format!("{at}.authentication");
    let given = [
        (
            "credsSecret",
            a.creds_secret.is_some(),
            a.kind == NatsAuthType::Creds,
        ),
        (
            "seedSecret",
            a.seed_secret.is_some(),
            a.kind == NatsAuthType::Nkey,
        ),
        (
            "tokenSecret",
            a.token_secret.is_some(),
            a.kind == NatsAuthType::Token,
        ),
        (
            "username",
            a.username.is_some(),
            a.kind == NatsAuthType::UserPassword,
        ),
        (
            "passwordSecret",
            a.password_secret.is_some(),
            a.kind == NatsAuthType::UserPassword,
        ),
    ];
    for (field, present, wanted) in given {
        if present != wanted {
            let verb = if wanted { "needs" } else { "does not take" };
            problems.add(&at, format!("this type {verb} {field}"));
        }
    }
    match a.kind {
        NatsAuthType::Creds => a
            .creds_secret
            .as_ref()
            .map(|s| NatsAuth::Creds(secret_key(s))),
        NatsAuthType::Nkey => a
            .seed_secret
            .as_ref()
            .map(|s| NatsAuth::Nkey(secret_key(s))),
        NatsAuthType::Token => a
            .token_secret
            .as_ref()
            .map(|s| NatsAuth::Token(secret_key(s))),
        NatsAuthType::UserPassword => match (&a.username, &a.password_secret) {
            (Some(u), Some(p)) => Some(NatsAuth::UserPassword {
                username: u.clone(),
                password: password(p),
            }),
            _ => None,
        },
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
