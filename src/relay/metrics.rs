//! Counters of the ingest API and the Prometheus exposition of everything the relay measures.
//!
//! Provider numbers live in the composite (one source of truth), so they are not mirrored into
//! a second set of counters: a `prometheus-client` [`Collector`] reads them, the ingest counters
//! and the latency histograms at scrape time, and the registry is encoded in the Prometheus text
//! format (version 0.0.4, the one every scraper reads). The encoder appends `_total` to counter
//! names, so counters are described by their base name.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Relay;
use crate::composite::{BreakerState, Composite, ProviderRow};
use crate::latency::{Histogram, BOUNDS_SECONDS};

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the ingest API answered, by outcome.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub accepted: AtomicU64,
    pub bad_request: AtomicU64,
    pub too_large: AtomicU64,
    pub unavailable: AtomicU64,
    /// A retry of a message accepted inside the duplicate window: 202, not written again.
    pub duplicate: AtomicU64,
    /// An id accepted inside the duplicate window with other content: 409.
    pub conflict: AtomicU64,
    /// Batch requests (`POST /api/v1/ingest/batch`) that passed their checks and were written;
    /// each of their messages is also counted by outcome above.
    pub batches: AtomicU64,
    /// Messages in those batch requests.
    pub batch_messages: AtomicU64,
    /// Time from request to answer for accepted messages.
    pub latency: Histogram,
    /// What the listener refused before a handler ran (see [`super::listener`]).
    pub rejected: Rejected,
    /// Connections open now, on the ingest listener.
    pub connections: AtomicU64,
    /// Requests being served now, on the ingest listener (the ones `maxInFlight` caps).
    pub in_flight: AtomicU64,
}

/// Requests and connections the ingest listener refused, by reason.
#[derive(Debug, Default)]
pub struct Rejected {
    /// Past `maxInFlight`: 503 with `Retry-After`.
    pub overloaded: AtomicU64,
    /// No bearer token, or one not accepted: 401.
    pub unauthorized: AtomicU64,
    /// The request's body did not arrive within `requestTimeout`: 408.
    pub body_timeout: AtomicU64,
    /// The request took longer than `requestTimeout` to answer: 503.
    pub request_timeout: AtomicU64,
    /// Connections closed because the headers did not arrive within `headerTimeout`.
    pub header_timeout: AtomicU64,
    /// Connections closed because the TLS handshake failed or did not finish within
    /// `headerTimeout`.
    pub tls_handshake: AtomicU64,
}

impl IngestMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one to the gauge `gauge` until the guard is dropped.
    pub fn hold(gauge: &AtomicU64) -> GaugeGuard<'_> {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

/// One unit of a gauge, given back on drop (a connection closed, a request answered).
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the relay's numbers at scrape time: the ingest counters and, from the composite in
/// force now (it is swapped when the provider list changes), the per-provider series.
pub struct RelayCollector {
    relay: Arc<Relay>,
}

impl fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayCollector").finish_non_exhaustive()
    }
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode_ingest(&mut encoder, &self.relay.metrics)?;
        encode_providers(&mut encoder, &self.relay.composite())
    }
}

/// The relay's registry: one collector over its live numbers. Built once per server.
pub fn registry(relay: Arc<Relay>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector { relay }));
    registry
}

/// The whole `/metrics` page.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

fn counter(m: &mut MetricEncoder, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn histogram(m: &mut MetricEncoder, h: &Histogram) -> fmt::Result {
    // `counts` has one bucket per bound plus the +Inf one; the encoder accumulates them.
    let counts = h.counts();
    let buckets: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| (BOUNDS_SECONDS.get(i).copied().unwrap_or(f64::INFINITY), *c))
        .collect();
    m.encode_histogram::<NoLabelSet>(h.sum_seconds(), counts.iter().sum(), &buckets, None)
}

fn encode_ingest(encoder: &mut DescriptorEncoder, ingest: &IngestMetrics) -> fmt::Result {
    let mut m = encoder.encode_descriptor(
        "dualwrite_ingest_requests",
        "Ingest requests by outcome (a batch counts each of its messages).",
        None,
        MetricType::Counter,
    )?;
    for (outcome, c) in [
        ("accepted", &ingest.accepted),
        ("bad_request", &ingest.bad_request),
        ("too_large", &ingest.too_large),
        ("unavailable", &ingest.unavailable),
        ("duplicate", &ingest.duplicate),
        ("conflict", &ingest.conflict),
    ] {
        let labels = [("outcome", outcome)];
        counter(&mut m.encode_family(&labels)?, c.load(Ordering::Relaxed))?;
    }
    for (name, help, c) in [
        (
            "dualwrite_ingest_batches",
            "Batch requests written (their messages are counted by outcome in dualwrite_ingest_requests).",
            &ingest.batches,
        ),
        (
            "dualwrite_ingest_batch_messages",
            "Messages in the batch requests written.",
            &ingest.batch_messages,
        ),
    ] {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        counter(&mut m, c.load(Ordering::Relaxed))?;
    }
    let mut m = encoder.encode_descriptor(
        "dualwrite_ingest_rejected",
        "Requests and connections the ingest listener refused, by reason.",
        None,
        MetricType::Counter,
    )?;
    let r = &ingest.rejected;
    for (reason, c) in [
        ("overloaded", &r.overloaded),
        ("unauthorized", &r.unauthorized),
        ("body_timeout", &r.body_timeout),
        ("request_timeout", &r.request_timeout),
        ("header_timeout", &r.header_timeout),
        ("tls_handshake", &r.tls_handshake),
    ] {
        let labels = [("reason", reason)];
        counter(&mut m.encode_family(&labels)?, c.load(Ordering::Relaxed))?;
    }
    for (name, help, g) in [
        (
            "dualwrite_ingest_connections",
            "Connections open now on the ingest listener.",
            &ingest.connections,
        ),
        (
            "dualwrite_ingest_in_flight",
            "Ingest requests being served now (capped by maxInFlight).",
            &ingest.in_flight,
        ),
    ] {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&g.load(Ordering::Relaxed))?;
    }
    let mut m = encoder.encode_descriptor(
        "dualwrite_ingest_duration_seconds",
        "Time to answer an accepted ingest request.",
        None,
        MetricType::Histogram,
    )?;
    histogram(&mut m, &ingest.latency)
}

/// A per-provider series: name (counters without `_total`), type, help, and how to read it.
type Series = (
    &'static str,
    MetricType,
    &'static str,
    fn(&ProviderRow) -> u64,
);

const PROVIDER_SERIES: [Series; 12] = [
    (
        "dualwrite_provider_published",
        MetricType::Counter,
        "Messages the provider acknowledged.",
        |r| r.stats.published,
    ),
    (
        "dualwrite_provider_failed",
        MetricType::Counter,
        "Writes to the provider that failed (timeouts included).",
        |r| r.stats.failed,
    ),
    (
        "dualwrite_provider_timeouts",
        MetricType::Counter,
        "Writes abandoned at the publish deadline.",
        |r| r.timeouts,
    ),
    (
        "dualwrite_provider_consumed",
        MetricType::Counter,
        "Messages read back from the provider.",
        |r| r.stats.consumed,
    ),
    (
        "dualwrite_provider_depth",
        MetricType::Gauge,
        "Messages waiting in an in-memory queue.",
        |r| r.stats.depth,
    ),
    (
        "dualwrite_provider_backlog",
        MetricType::Gauge,
        "Messages waiting in the provider's hinted-handoff backlog.",
        |r| r.stats.backlog,
    ),
    (
        "dualwrite_provider_healthy",
        MetricType::Gauge,
        "1 when the provider takes writes.",
        |r| u64::from(r.health.healthy),
    ),
    (
        "dualwrite_provider_breaker_open",
        MetricType::Gauge,
        "1 while the provider's circuit breaker is open or half-open (its writes are refused at once but for one probe).",
        |r| u64::from(r.breaker.state != BreakerState::Closed),
    ),
    (
        "dualwrite_provider_breaker_refused",
        MetricType::Counter,
        "Writes to the provider its open circuit breaker refused at once.",
        |r| r.breaker.refused,
    ),
    (
        "dualwrite_provider_missed",
        MetricType::Counter,
        "Accepted messages the provider missed for good (refused by the broker, or its backlog could not keep them).",
        |r| r.missed,
    ),
    (
        "dualwrite_provider_backlog_errors",
        MetricType::Counter,
        "Appends to the provider's hinted-handoff backlog that failed with a storage error (disk full, I/O error).",
        |r| r.backlog_errors,
    ),
    (
        "dualwrite_provider_needs_reconciliation",
        MetricType::Gauge,
        "1 when replay alone cannot make the provider complete (its backlog passed its limits, or it missed an accepted message).",
        |r| u64::from(r.needs_reconciliation),
    ),
];

fn encode_providers(encoder: &mut DescriptorEncoder, composite: &Composite) -> fmt::Result {
    let stats = composite.stats_detailed();
    // An info metric, as Prometheus names them: one series, always 1, its label the value.
    let name = stats.strategy.to_string();
    encoder
        .encode_descriptor(
            "dualwrite_strategy_info",
            "The strategy in force, as its label (always 1).",
            None,
            MetricType::Gauge,
        )?
        .encode_family(&[("strategy", name.as_str())])?
        .encode_gauge(&1u64)?;
    let kinds: Vec<String> = stats.providers.iter().map(|r| r.kind.to_string()).collect();
    for (name, kind, help, value) in PROVIDER_SERIES {
        let mut m = encoder.encode_descriptor(name, help, None, kind)?;
        for (row, type_) in stats.providers.iter().zip(&kinds) {
            let labels = [("provider", row.name.as_str()), ("type", type_.as_str())];
            let mut series = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => counter(&mut series, value(row))?,
                _ => series.encode_gauge(&value(row))?,
            }
        }
    }
    let mut m = encoder.encode_descriptor(
        "dualwrite_provider_publish_duration_seconds",
        "Time from write to acknowledgement, per provider.",
        None,
        MetricType::Histogram,
    )?;
    for (provider, h) in composite.latency_histograms() {
        let labels = [("provider", provider)];
        histogram(&mut m.encode_family(&labels)?, h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composite::Strategy;
    use crate::message::DataMessage;
    use crate::provider::memory::MemoryProvider;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn exposition_has_a_series_per_provider_with_live_values() {
        let c = Composite::new(
            vec![
                Arc::new(MemoryProvider::new("a", 10)),
                Arc::new(MemoryProvider::new("b", 10)),
            ],
            Strategy::FailFast,
            Duration::from_secs(1),
        )
        .unwrap();
        c.publish_detailed(&DataMessage::new("t", "x"))
            .await
            .unwrap();
        // The spec only sets the body limit here; the series come from the composite.
        let relay = Relay::new(c, crate::relay::PipelineConfig::two_memory_queues());
        IngestMetrics::count(&relay.metrics.accepted);
        let text = render(&registry(relay));
        for line in [
            "dualwrite_ingest_requests_total{outcome=\"accepted\"} 1",
            "dualwrite_ingest_rejected_total{reason=\"overloaded\"} 0",
            "dualwrite_ingest_connections 0",
            "dualwrite_provider_published_total{provider=\"a\",type=\"memory\"} 1",
            "dualwrite_provider_published_total{provider=\"b\",type=\"memory\"} 1",
            "dualwrite_provider_depth{provider=\"b\",type=\"memory\"} 1",
            "dualwrite_provider_needs_reconciliation{provider=\"a\",type=\"memory\"} 0",
            "dualwrite_provider_breaker_open{provider=\"a\",type=\"memory\"} 0",
            "dualwrite_provider_breaker_refused_total{provider=\"a\",type=\"memory\"} 0",
            "dualwrite_strategy_info{strategy=\"FailFast\"} 1",
            "dualwrite_provider_publish_duration_seconds_count{provider=\"a\"} 1",
            "dualwrite_provider_publish_duration_seconds_bucket{provider=\"a\",le=\"+Inf\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // An info metric has only the series in force (its value is always 1).
        assert!(!text.contains("strategy=\"BestEffort\""), "{text}");
        // Every sample line is `name{labels} number`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample {l:?}");
        }
    }
}
