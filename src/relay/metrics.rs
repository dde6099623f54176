//! Counters of the ingest API and the Prometheus text rendering of everything the relay measures.
//!
//! Provider numbers are read from the composite at scrape time (one source of truth), so the
//! exposition is written by hand in the text format (version 0.0.4) rather than mirrored into a
//! second set of counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::composite::Composite;
use crate::latency::{Histogram, BOUNDS_SECONDS};

/// What the ingest API answered, by outcome.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub accepted: AtomicU64,
    pub bad_request: AtomicU64,
    pub too_large: AtomicU64,
    pub unavailable: AtomicU64,
    /// Time from request to answer for accepted messages.
    pub latency: Histogram,
}

impl IngestMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    let counts = h.counts();
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = BOUNDS_SECONDS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds());
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// The whole `/metrics` page.
pub fn render(ingest: &IngestMetrics, composite: &Composite) -> String {
    let stats = composite.stats_detailed();
    let mut out = String::with_capacity(4096);

    header(
        &mut out,
        "dualwrite_ingest_requests_total",
        "counter",
        "Ingest requests by outcome.",
    );
    for (outcome, c) in [
        ("accepted", &ingest.accepted),
        ("bad_request", &ingest.bad_request),
        ("too_large", &ingest.too_large),
        ("unavailable", &ingest.unavailable),
    ] {
        let _ = writeln!(
            out,
            "dualwrite_ingest_requests_total{{outcome=\"{outcome}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    header(
        &mut out,
        "dualwrite_ingest_duration_seconds",
        "histogram",
        "Time to answer an accepted ingest request.",
    );
    histogram(
        &mut out,
        "dualwrite_ingest_duration_seconds",
        "",
        &ingest.latency,
    );

    header(
        &mut out,
        "dualwrite_strategy_info",
        "gauge",
        "The strategy in force (1 for the current one).",
    );
    for s in [
        crate::composite::Strategy::FailFast,
        crate::composite::Strategy::BestEffort,
    ] {
        let v = u8::from(stats.strategy == s);
        let _ = writeln!(out, "dualwrite_strategy_info{{strategy=\"{s}\"}} {v}");
    }

    let rows: Vec<_> = stats
        .providers
        .iter()
        .map(|r| {
            (
                format!("provider=\"{}\",type=\"{}\"", escape(&r.name), r.kind),
                r,
            )
        })
        .collect();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::composite::ProviderRow) -> f64,
    );
    let series: [Series; 8] = [
        (
            "dualwrite_provider_published_total",
            "counter",
            "Messages the provider acknowledged.",
            |r| r.stats.published as f64,
        ),
        (
            "dualwrite_provider_failed_total",
            "counter",
            "Writes to the provider that failed (timeouts included).",
            |r| r.stats.failed as f64,
        ),
        (
            "dualwrite_provider_timeouts_total",
            "counter",
            "Writes abandoned at the publish deadline.",
            |r| r.timeouts as f64,
        ),
        (
            "dualwrite_provider_consumed_total",
            "counter",
            "Messages read back from the provider.",
            |r| r.stats.consumed as f64,
        ),
        (
            "dualwrite_provider_depth",
            "gauge",
            "Messages waiting in an in-memory queue.",
            |r| r.stats.depth as f64,
        ),
        (
            "dualwrite_provider_backlog",
            "gauge",
            "Messages waiting in the provider's hinted-handoff backlog.",
            |r| r.stats.backlog as f64,
        ),
        (
            "dualwrite_provider_healthy",
            "gauge",
            "1 when the provider takes writes.",
            |r| f64::from(u8::from(r.health.healthy)),
        ),
        (
            "dualwrite_provider_needs_reconciliation",
            "gauge",
            "1 when the provider's backlog passed its limits: replay alone cannot make it complete.",
            |r| f64::from(u8::from(r.needs_reconciliation)),
        ),
    ];
    for (name, kind, help, value) in series {
        header(&mut out, name, kind, help);
        for (labels, row) in &rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(row));
        }
    }
    let name = "dualwrite_provider_publish_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from write to acknowledgement, per provider.",
    );
    for (provider, h) in composite.latency_histograms() {
        histogram(
            &mut out,
            name,
            &format!("provider=\"{}\"", escape(provider)),
            h,
        );
    }
    out
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
        let ingest = IngestMetrics::default();
        IngestMetrics::count(&ingest.accepted);
        let text = render(&ingest, &c);
        for line in [
            "dualwrite_ingest_requests_total{outcome=\"accepted\"} 1",
            "dualwrite_provider_published_total{provider=\"a\",type=\"memory\"} 1",
            "dualwrite_provider_published_total{provider=\"b\",type=\"memory\"} 1",
            "dualwrite_provider_depth{provider=\"b\",type=\"memory\"} 1",
            "dualwrite_provider_needs_reconciliation{provider=\"a\",type=\"memory\"} 0",
            "dualwrite_strategy_info{strategy=\"FailFast\"} 1",
            "dualwrite_provider_publish_duration_seconds_count{provider=\"a\"} 1",
            "dualwrite_provider_publish_duration_seconds_bucket{provider=\"a\",le=\"+Inf\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} number`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample {l:?}");
        }
    }
}
