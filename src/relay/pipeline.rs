//! The pipeline as the relay runs it: typed, checked, defaults filled in. `api` builds it from a
//! `DualWritePipeline` spec with its one validator (`PipelineConfig::try_from(&spec)`), for a
//! resource, a manifest file and the seed's variables alike; nothing here checks it again.

use std::path::Path;
use std::time::Duration;

use crate::composite::{Acceptance, Strategy, DEFAULT_PUBLISH_TIMEOUT};
use crate::handoff::Limits;
use crate::provider::kafka::KafkaConfig;
use crate::provider::memory::DEFAULT_CAPACITY;
use crate::provider::nats::NatsConfig;
use crate::provider::secret::{CertAndKey, SecretFile};

/// Port of the ingest API when neither the manifest nor `API_PORT` gives one (the seed's).
pub const DEFAULT_PORT: u16 = 8080;
/// Largest request body accepted by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything the relay needs to run one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// In order; the first is the default read provider.
    pub providers: Vec<ProviderConfig>,
    pub strategy: Strategy,
    /// What BestEffort needs to accept a message (`spec.handoff.acceptance`).
    pub acceptance: Acceptance,
    /// Deadline of one write to one provider.
    pub publish_timeout: Duration,
    pub handoff: HandoffConfig,
    pub ingest: IngestConfig,
}

/// One broker the pipeline writes to.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    /// Unique within the pipeline.
    pub name: String,
    pub settings: ProviderSettings,
}

/// A provider's type and its settings, together so that one cannot go without the other.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderSettings {
    /// A bounded in-process queue of `capacity` messages.
    Memory {
        capacity: usize,
    },
    Nats(NatsConfig),
    Kafka(KafkaConfig),
}

impl ProviderSettings {
    /// `memory`, `nats` or `kafka`: the type's name in manifests and logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            ProviderSettings::Memory { .. } => "memory",
            ProviderSettings::Nats(_) => "nats",
            ProviderSettings::Kafka(_) => "kafka",
        }
    }
}

/// Hinted handoff: whether missed writes are kept (when the relay has a state directory), and
/// the limits past which a provider needs reconciliation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HandoffConfig {
    pub enabled: bool,
    pub limits: Limits,
}

/// The ingest listener's settings that come from the pipeline (fixed for the process).
#[derive(Clone, Debug, PartialEq)]
pub struct IngestConfig {
    /// The pipeline's port; the command line or `API_PORT` may override it.
    pub port: Option<u16>,
    pub max_body_bytes: usize,
    /// Serve over TLS with this certificate and key.
    pub tls: Option<CertAndKey>,
    /// Accepted bearer tokens (one a line in this file); unset: no authentication.
    pub tokens: Option<SecretFile>,
    /// A separate port for `/health`, `/ready`, `/stats`, `/metrics`.
    pub probe_port: Option<u16>,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    /// How long an accepted id is remembered, to answer a retry as a duplicate and refuse the id
    /// with other content (see [`super::window`]).
    pub duplicate_window: Duration,
    /// How many accepted ids are remembered at most (the oldest go first).
    pub duplicate_window_ids: usize,
    /// Most messages in one batch request (`POST /api/v1/ingest/batch`).
    pub max_batch_messages: usize,
}

/// Messages in one batch request by default: 1000 small messages parse and pipeline in a few
/// milliseconds, and the answer (a row per message) stays near 100 KiB.
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 1000;
/// Requests served at once by default (past it: 503 with `Retry-After`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Open connections by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Time to send a request's headers by default (a slow client cannot hold a connection open).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one request may take by default, publish included (above the publish timeout).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for HandoffConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            limits: Limits::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            port: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls: None,
            tokens: None,
            probe_port: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            duplicate_window: super::window::DEFAULT_DUPLICATE_WINDOW,
            duplicate_window_ids: super::window::DEFAULT_DUPLICATE_WINDOW_IDS,
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
        }
    }
}

impl PipelineConfig {
    /// The built-in pipeline: FailFast over two in-memory queues, `memory-1` and `memory-2`.
    pub fn two_memory_queues() -> Self {
        let memory = |name: &str| ProviderConfig {
            name: name.to_string(),
            settings: ProviderSettings::Memory {
                capacity: DEFAULT_CAPACITY,
            },
        };
        Self {
            providers: vec![memory("memory-1"), memory("memory-2")],
            strategy: Strategy::FailFast,
            acceptance: Acceptance::BrokerAck,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            handoff: HandoffConfig::default(),
            ingest: IngestConfig::default(),
        }
    }

    /// The same pipeline reading its Secret keys under `dir` (`--secrets-dir`) instead of the
    /// default mount path.
    pub fn with_secrets_dir(mut self, dir: &Path) -> Self {
        for f in self.secret_files_mut() {
            f.rebase(dir);
        }
        self
    }

    /// Every Secret file the pipeline reads: providers' TLS and credentials, the ingest
    /// listener's certificate and tokens.
    pub fn secret_files_mut(&mut self) -> Vec<&mut SecretFile> {
        let mut out = Vec::new();
        for p in &mut self.providers {
            match &mut p.settings {
                ProviderSettings::Memory { .. } => {}
                ProviderSettings::Nats(n) => out.extend(n.secret_files_mut()),
                ProviderSettings::Kafka(k) => out.extend(k.secret_files_mut()),
            }
        }
        if let Some(c) = &mut self.ingest.tls {
            out.push(&mut c.certificate);
            out.push(&mut c.key);
        }
        out.extend(self.ingest.tokens.as_mut());
        out
    }

    /// The ingest port: `overridden` (command line, `API_PORT`), else the pipeline's, else 8080.
    pub fn port(&self, overridden: Option<u16>) -> u16 {
        overridden.or(self.ingest.port).unwrap_or(DEFAULT_PORT)
    }
}
