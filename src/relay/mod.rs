//! The relay: a [`PipelineConfig`] becomes providers, the providers a [`Composite`], and the
//! composite is served by the HTTP ingest API ([`http`]).
//!
//! The relay core (this module, [`pipeline`], [`http`], [`listener`], [`metrics`]) knows nothing of
//! Kubernetes. [`config`] reads a pipeline from a manifest file or the seed's variables, and
//! [`cluster`] (`dualwrite relay --pipeline`) watches the resource and feeds changed pipelines
//! to [`Relay::apply`]; both go through `api`'s one validator.
//!
//! Secret files (broker credentials) are not watched here: each NATS or Kafka provider's
//! supervisor reads its own every round and reconnects only that provider when one changes or
//! appears, so a rotated Secret neither rebuilds the composite nor restarts the relay.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::composite::Composite;
use crate::handoff::{HandoffError, HandoffStore};
use crate::provider::kafka::KafkaProvider;
use crate::provider::memory::MemoryProvider;
use crate::provider::nats::NatsProvider;
use crate::provider::{Provider, ProviderError};

mod batch;
pub mod cluster;
pub mod config;
mod detach;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod window;

pub use pipeline::{
    PipelineConfig, ProviderConfig, ProviderSettings, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT,
};

/// Why a relay could not build or change its composite.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Composite(#[from] crate::composite::CompositeError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

/// Creates one provider and logs "<type> adapter created" (the seed's check that each adapter
/// came up).
pub async fn build_provider(
    config: &ProviderConfig,
    publish_timeout: Duration,
) -> Result<Arc<dyn Provider>, ProviderError> {
    let name = config.name.as_str();
    let provider: Arc<dyn Provider> = match &config.settings {
        ProviderSettings::Memory { capacity } => Arc::new(MemoryProvider::new(name, *capacity)),
        ProviderSettings::Nats(nats) => {
            Arc::new(NatsProvider::connect(name, nats, publish_timeout).await?)
        }
        ProviderSettings::Kafka(kafka) => {
            Arc::new(KafkaProvider::connect(name, kafka, publish_timeout).await?)
        }
    };
    let kind = config.settings.type_name();
    tracing::info!(provider = %name, r#type = %kind, "{kind} adapter created");
    Ok(provider)
}

/// Builds the composite of `config`, without hinted handoff.
pub async fn build_composite(config: &PipelineConfig) -> Result<Composite, RelayError> {
    build_composite_with(config, None).await
}

/// Builds the composite of `config`; with a handoff store (and handoff enabled) every provider
/// gets a durable backlog. Replay is started by [`Relay`]. On failure, closes whatever was
/// already created.
pub async fn build_composite_with(
    config: &PipelineConfig,
    handoff: Option<&Arc<HandoffStore>>,
) -> Result<Composite, RelayError> {
    let timeout = config.publish_timeout;
    let mut providers = Vec::with_capacity(config.providers.len());
    for p in &config.providers {
        match build_provider(p, timeout).await {
            Ok(provider) => providers.push(provider),
            Err(e) => {
                for created in &providers {
                    let _ = created.close().await;
                }
                return Err(e.into());
            }
        }
    }
    let composite =
        Composite::new(providers, config.strategy, timeout)?.with_acceptance(config.acceptance);
    match handoff {
        Some(store) if config.handoff.enabled => {
            let mut backlogs = std::collections::HashMap::new();
            for p in &config.providers {
                let backlog = store.backlog(&p.name, config.handoff.limits)?;
                backlogs.insert(p.name.clone(), backlog);
            }
            Ok(composite.with_backlogs(backlogs))
        }
        _ => Ok(composite),
    }
}

/// The running relay's state, shared by the HTTP handlers.
pub struct Relay {
    // Swapped whole when the provider list changes; handlers clone the Arc and never hold the
    // lock across an await (std RwLock: held for a pointer copy only).
    composite: RwLock<Arc<Composite>>,
    config: RwLock<PipelineConfig>,
    handoff: Option<Arc<HandoffStore>>,
    pub metrics: metrics::IngestMetrics,
    max_body_bytes: usize,
    max_batch_messages: usize,
    /// Ids accepted recently, to answer retries and refuse reused ids (see [`window`]).
    pub(crate) window: window::DuplicateWindow,
}

impl Relay {
    /// A relay serving `composite` (built from `config`), without hinted handoff.
    pub fn new(composite: Composite, config: PipelineConfig) -> Arc<Self> {
        Self::with_handoff(composite, config, None)
    }

    /// A relay whose composites keep missed writes in `handoff` (the same store across provider
    /// list changes); starts the composite's replay.
    pub fn with_handoff(
        composite: Composite,
        config: PipelineConfig,
        handoff: Option<Arc<HandoffStore>>,
    ) -> Arc<Self> {
        composite.start_replay();
        let max_body_bytes = config.ingest.max_body_bytes;
        let max_batch_messages = config.ingest.max_batch_messages;
        let window = window::DuplicateWindow::new(
            config.ingest.duplicate_window,
            config.ingest.duplicate_window_ids,
        );
        Arc::new(Self {
            composite: RwLock::new(Arc::new(composite)),
            config: RwLock::new(config),
            handoff,
            metrics: Default::default(),
            max_body_bytes,
            max_batch_messages,
            window,
        })
    }

    /// The composite in force now.
    pub fn composite(&self) -> Arc<Composite> {
        self.composite
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The hinted-handoff store, when the relay keeps one.
    pub fn handoff(&self) -> Option<&Arc<HandoffStore>> {
        self.handoff.as_ref()
    }

    /// The pipeline in force now.
    pub fn config(&self) -> PipelineConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Most messages in one batch request.
    pub fn max_batch_messages(&self) -> usize {
        self.max_batch_messages
    }

    /// Applies a changed pipeline without dropping in-flight messages: a strategy or acceptance change takes effect
    /// for the next publish; a changed provider list, publish timeout or handoff setting builds a
    /// new composite, swaps it in, waits for publishes still running on the old one, then closes
    /// it.
    pub async fn apply(&self, new: PipelineConfig) -> Result<(), RelayError> {
        let old = self.config();
        if old == new {
            return Ok(());
        }
        // Ingest settings (port, body limit, duplicate window) are fixed for the process: the operator puts them
        // in the pod template, so a change rolls the relays.
        if old.providers == new.providers
            && old.publish_timeout == new.publish_timeout
            && old.handoff == new.handoff
        {
            let composite = self.composite();
            if composite.strategy() != new.strategy {
                tracing::info!(from = %composite.strategy(), to = %new.strategy, "strategy changed");
                composite.set_strategy(new.strategy);
            }
            if composite.acceptance() != new.acceptance {
                tracing::info!(from = %composite.acceptance(), to = %new.acceptance, "acceptance changed");
                composite.set_acceptance(new.acceptance);
            }
        } else {
            let fresh = Arc::new(build_composite_with(&new, self.handoff.as_ref()).await?);
            let previous = std::mem::replace(
                &mut *self.composite.write().unwrap_or_else(|p| p.into_inner()),
                fresh,
            );
            tracing::info!("provider list changed; new composite in force, closing the old one after in-flight publishes");
            // Closing waits for publishes still running on the old composite and stops its
            // replay tasks before the new composite starts its own.
            if let Err(e) = previous.close_all().await {
                tracing::warn!(error = %e, "closing the previous providers failed");
            }
            self.composite().start_replay();
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// Serves the whole ingest API (probe endpoints included) on `listener`, guarded as the relay's
/// pipeline says (TLS, tokens, limits), until `shutdown` resolves; then as [`serve_with`].
pub async fn serve(
    relay: Arc<Relay>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = self::listener::IngestServer::new(relay, listener, None)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    serve_with(server, shutdown).await
}

/// Runs `server` until `shutdown` resolves: stops accepting, lets requests in flight finish (up
/// to [`listener::DRAIN_GRACE`]), then closes every provider, letting the backlogs replay up to
/// [`BACKLOG_GRACE`]. Both bounds, with the publish timeout, stay inside the pod's grace period (the operator
/// sets it from them: 45 s with the defaults).
pub async fn serve_with(
    server: listener::IngestServer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let relay = server.relay().clone();
    server.run(shutdown).await;
    tracing::info!("ingest stopped; in-flight requests finished; closing providers");
    let composite = relay.composite();
    if let Err(e) = composite.close_with_grace(BACKLOG_GRACE).await {
        tracing::warn!(error = %e, "closing providers failed");
    }
    Ok(())
}

/// How long a stopping relay lets the replay empty its backlogs (within the pod's
/// termination grace period, which the operator sizes from it, leaving time to close the
/// providers).
pub const BACKLOG_GRACE: Duration = Duration::from_secs(20);
