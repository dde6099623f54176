//! The relay: a pipeline spec becomes providers, the providers a [`Composite`], and the composite
//! is served by the HTTP ingest API ([`http`]).
//!
//! The relay core knows nothing of Kubernetes; `dualwrite relay --pipeline` adds a watcher on top
//! that feeds changed specs to [`Relay::apply`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::api::{DualWritePipelineSpec, ProviderSpec, ProviderType};
use crate::composite::Composite;
use crate::handoff::{HandoffStore, Limits};
use crate::provider::kafka::KafkaProvider;
use crate::provider::memory::{MemoryProvider, DEFAULT_CAPACITY};
use crate::provider::nats::NatsProvider;
use crate::provider::Provider;

pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;

/// Port of the ingest API when neither the manifest nor `API_PORT` gives one (the seed's).
pub const DEFAULT_PORT: u16 = 8080;
/// Largest request body accepted by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest ingest body `spec` accepts.
pub fn max_body_bytes(spec: &DualWritePipelineSpec) -> usize {
    spec.ingest
        .as_ref()
        .and_then(|i| i.max_body_bytes)
        .map_or(DEFAULT_MAX_BODY_BYTES, |b| b as usize)
}

/// Creates one provider from its spec and logs "<type> adapter created" (the seed's check that
/// each adapter came up).
pub async fn build_provider(
    spec: &ProviderSpec,
    publish_timeout: Duration,
) -> Result<Arc<dyn Provider>, String> {
    let missing = |block: &str| {
        format!(
            "provider {:?} of type {} needs a {block} block",
            spec.name, spec.kind
        )
    };
    let provider: Arc<dyn Provider> = match spec.kind {
        ProviderType::Memory => {
            let capacity = spec
                .memory
                .as_ref()
                .and_then(|m| m.capacity)
                .map_or(DEFAULT_CAPACITY, |c| c as usize);
            Arc::new(MemoryProvider::new(&spec.name, capacity))
        }
        ProviderType::Nats => {
            let nats = spec.nats.as_ref().ok_or_else(|| missing("nats"))?;
            Arc::new(
                NatsProvider::connect(&spec.name, &nats.to_config()?, publish_timeout)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
        ProviderType::Kafka => {
            let kafka = spec.kafka.as_ref().ok_or_else(|| missing("kafka"))?;
            Arc::new(
                KafkaProvider::connect(&spec.name, &kafka.to_config(), publish_timeout)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    tracing::info!(provider = %spec.name, r#type = %spec.kind, "{} adapter created", spec.kind);
    Ok(provider)
}

/// Validates `spec` and builds its composite, without hinted handoff.
pub async fn build_composite(spec: &DualWritePipelineSpec) -> Result<Composite, String> {
    build_composite_with(spec, None).await
}

/// The backlog limits of `spec.handoff`.
fn handoff_limits(spec: &DualWritePipelineSpec) -> Limits {
    let h = spec.handoff.as_ref();
    Limits {
        max_messages: h.and_then(|h| h.max_messages),
        max_age: h
            .and_then(|h| h.max_age.as_deref())
            .and_then(|t| crate::api::parse_duration("spec.handoff.maxAge", t).ok()),
    }
}

/// Validates `spec` and builds its composite; with a handoff store (and `spec.handoff.enabled`
/// not false) every provider gets a durable backlog. Replay is started by [`Relay`]. On failure,
/// closes whatever was already created.
pub async fn build_composite_with(
    spec: &DualWritePipelineSpec,
    handoff: Option<&Arc<HandoffStore>>,
) -> Result<Composite, String> {
    spec.validate().map_err(|errs| errs.join("\n"))?;
    let timeout = spec.publish_timeout();
    let mut providers = Vec::with_capacity(spec.providers.len());
    for p in &spec.providers {
        match build_provider(p, timeout).await {
            Ok(provider) => providers.push(provider),
            Err(e) => {
                for created in &providers {
                    let _ = created.close().await;
                }
                return Err(e);
            }
        }
    }
    let composite = Composite::new(providers, spec.strategy, timeout).map_err(|e| e.to_string())?;
    let enabled = spec.handoff.as_ref().and_then(|h| h.enabled) != Some(false);
    match handoff {
        Some(store) if enabled => {
            let limits = handoff_limits(spec);
            let mut backlogs = std::collections::HashMap::new();
            for p in &spec.providers {
                let backlog = store.backlog(&p.name, limits).map_err(|e| e.to_string())?;
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
    spec: RwLock<DualWritePipelineSpec>,
    handoff: Option<Arc<HandoffStore>>,
    pub metrics: metrics::IngestMetrics,
    max_body_bytes: usize,
}

impl Relay {
    /// A relay serving `composite` (built from `spec`), without hinted handoff.
    pub fn new(composite: Composite, spec: DualWritePipelineSpec) -> Arc<Self> {
        Self::with_handoff(composite, spec, None)
    }

    /// A relay whose composites keep missed writes in `handoff` (the same store across provider
    /// list changes); starts the composite's replay.
    pub fn with_handoff(
        composite: Composite,
        spec: DualWritePipelineSpec,
        handoff: Option<Arc<HandoffStore>>,
    ) -> Arc<Self> {
        composite.start_replay();
        let max_body_bytes = max_body_bytes(&spec);
        Arc::new(Self {
            composite: RwLock::new(Arc::new(composite)),
            spec: RwLock::new(spec),
            handoff,
            metrics: Default::default(),
            max_body_bytes,
        })
    }

    /// The composite in force now.
    pub fn composite(&self) -> Arc<Composite> {
        self.composite
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spec(&self) -> DualWritePipelineSpec {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Applies a changed spec without dropping in-flight messages: a strategy change takes effect
    /// for the next publish; a changed provider list, publish timeout or handoff setting builds a
    /// new composite, swaps it in, waits for publishes still running on the old one, then closes
    /// it.
    pub async fn apply(&self, new: DualWritePipelineSpec) -> Result<(), String> {
        let old = self.spec();
        if old == new {
            return Ok(());
        }
        // Ingest settings (port, body limit) are fixed for the process: the operator puts them
        // in the pod template, so a change rolls the relays.
        if old.providers == new.providers
            && old.publish_timeout == new.publish_timeout
            && old.handoff == new.handoff
        {
            new.validate().map_err(|e| e.join("\n"))?;
            let composite = self.composite();
            if composite.strategy() != new.strategy {
                tracing::info!(from = %composite.strategy(), to = %new.strategy, "strategy changed");
                composite.set_strategy(new.strategy);
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
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// Serves the ingest API on `listener` until `shutdown` resolves, lets in-flight requests finish,
/// then closes every provider.
pub async fn serve(
    relay: Arc<Relay>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, strategy = %relay.composite().strategy(), "ingest API listening");
    axum::serve(listener, http::router(relay.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("ingest stopped; in-flight requests finished; closing providers");
    let composite = relay.composite();
    if let Err(e) = composite.close_with_grace(BACKLOG_GRACE).await {
        tracing::warn!(error = %e, "closing providers failed");
    }
    Ok(())
}

/// How long a stopping relay lets the replay empty its backlogs (within the pod's 30 s
/// termination grace period, leaving time to close the providers).
pub const BACKLOG_GRACE: Duration = Duration::from_secs(20);
