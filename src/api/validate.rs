//! The one validator: `PipelineConfig::try_from(&spec)` checks a whole `DualWritePipelineSpec`
//! and turns it into the core's typed configuration. The CRD enforces the same rules at
//! `kubectl apply` (its patterns are the constants below, shared with the schema; its CEL rules
//! are checked against this validator by `tests/crd_validation.rs`); this serves what reaches a
//! relay without an API server (a manifest file, the seed's variables) and the operator, which
//! must not act on a spec the API server let through from an older CRD.

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;

pub use super::rules::*;
use super::*;
use crate::duration;
use crate::handoff::Limits;
use crate::provider::kafka::{KafkaConfig, KafkaKey};
use crate::provider::memory::DEFAULT_CAPACITY;
use crate::provider::nats::NatsConfig;
use crate::provider::secret::redact_url;
use crate::relay::pipeline::{
    HandoffConfig, IngestConfig, PipelineConfig, ProviderConfig, ProviderSettings,
    DEFAULT_MAX_BODY_BYTES,
};

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
pub(super) struct Problems(Vec<FieldError>);

/// `pattern` (one of the constants of [`super::rules`]) compiled once per process: the operator
/// validates every pipeline on every reconcile, and compiling a pattern costs far more than
/// matching it.
fn compiled(pattern: &'static str) -> &'static Regex {
    static COMPILED: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<&'static str, &'static Regex>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    compiled
        .entry(pattern)
        .or_insert_with(|| Box::leak(Box::new(Regex::new(pattern).expect("the patterns compile"))))
}

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `text` must match `pattern` (one of the constants above); `what` says what was expected.
    pub(super) fn pattern(
        &mut self,
        path: &str,
        text: &str,
        pattern: &'static str,
        what: &str,
    ) -> bool {
        let ok = compiled(pattern).is_match(text);
        if !ok {
            self.add(path, format!("{text:?} {what}"));
        }
        ok
    }

    pub(super) fn length(&mut self, path: &str, text: &str, min: usize, max: usize) -> bool {
        let n = text.chars().count();
        let ok = (min..=max).contains(&n);
        if !ok {
            self.add(path, format!("must be {min} to {max} characters long"));
        }
        ok
    }

    pub(super) fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        path: &str,
        v: T,
        min: T,
        max: T,
    ) {
        if v < min || v > max {
            self.add(path, format!("{v} is out of range: {min} to {max}"));
        }
    }

    /// A duration matching `pattern`, parsed.
    pub(super) fn duration(
        &mut self,
        path: &str,
        text: &str,
        pattern: &'static str,
    ) -> Option<Duration> {
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
        let acceptance = spec
            .handoff
            .as_ref()
            .and_then(|h| h.acceptance)
            .unwrap_or_default();
        if acceptance == crate::composite::Acceptance::RelayDisk && !handoff.enabled {
            let message = super::spec::RELAY_DISK_MESSAGE;
            let message = message
                .strip_prefix("spec.handoff.acceptance: ")
                .unwrap_or(message);
            problems.add("spec.handoff.acceptance", message);
        }
        if let Some(r) = spec.relay.as_ref().and_then(|r| r.replicas) {
            problems.range("spec.relay.replicas", r, 0, 100);
        }
        if let Some(m) = &spec.migration {
            migration(&mut problems, m, &spec.providers);
        }
        if let Some(c) = &spec.consistency {
            consistency(&mut problems, c);
        }
        if !problems.0.is_empty() {
            return Err(SpecError(problems.0));
        }
        Ok(PipelineConfig {
            providers,
            strategy: spec.strategy,
            acceptance,
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
    if problems.length(&url_at, &n.url, 1, 1024) && !compiled(NATS_URLS).is_match(&n.url) {
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
    if let Some(r) = n.replicas {
        problems.range(&format!("{at}.replicas"), r, 1, 5);
    }
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
        replicas: n.replicas.map(usize::from),
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
    if let Some(m) = k.min_insync_replicas {
        problems.range(&format!("{at}.minInsyncReplicas"), m, 1, 32);
        let rf = k.replication_factor.unwrap_or(1);
        if m > rf {
            problems.add(
                format!("{at}.minInsyncReplicas"),
                format!(
                    "{m} exceeds the replication factor {rf}: no write could ever be acknowledged"
                ),
            );
        }
    }
    let key = match k.key.as_deref() {
        Some(key)
            if problems.pattern(
                &format!("{at}.key"),
                key,
                KAFKA_KEY,
                "is not a record key: use id, source or metadata:<field>",
            ) =>
        {
            key.parse().unwrap_or_default()
        }
        _ => KafkaKey::Id,
    };
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
        min_insync_replicas: k.min_insync_replicas,
        key,
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
    if let Some(v) = i.duplicate_window_ids {
        problems.range("spec.ingest.duplicateWindowIds", v, 1, 1_000_000);
    }
    if let Some(v) = i.max_batch_messages {
        problems.range("spec.ingest.maxBatchMessages", v, 1, 100_000);
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
        duplicate_window: timeout(
            problems,
            "duplicateWindow",
            &i.duplicate_window,
            defaults.duplicate_window,
        ),
        duplicate_window_ids: i
            .duplicate_window_ids
            .map_or(defaults.duplicate_window_ids, |v| v as usize),
        max_batch_messages: i
            .max_batch_messages
            .map_or(defaults.max_batch_messages, |v| v as usize),
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

/// `spec.consistency`: the schedule a CronJob takes, and `verify`'s two durations.
fn consistency(problems: &mut Problems, c: &ConsistencySpec) {
    if let Some(s) = &c.schedule {
        let at = "spec.consistency.schedule";
        if problems.length(at, s, 1, 128) {
            problems.pattern(
                at,
                s,
                CRON_SCHEDULE,
                "is not a cron schedule: five fields (minute hour day-of-month month day-of-week) such as \"*/15 * * * *\", or @hourly, @daily, @weekly, @monthly, @yearly",
            );
        }
    }
    if let Some(w) = &c.window {
        problems.duration("spec.consistency.window", w, DURATION);
    }
    if let Some(s) = &c.settle {
        problems.duration("spec.consistency.settle", s, DURATION);
    }
}

mod secrets;
use secrets::{cert_and_key, kafka_auth, nats_auth, secret_key, secret_refs, tls_files, tls_refs};

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
