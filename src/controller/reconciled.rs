//! When a provider's misses count as reconciled: the time written into
//! `status.providers[].reconciledThrough`, which the relays read to clear their
//! needs-reconciliation flag for every miss up to it (a miss after it keeps the flag). Two
//! sources, and the latest wins (it never moves back):
//!
//! - a `dualwrite verify --pipeline` verdict that read everything the brokers held (no
//!   `--window`) and found nothing missing on the provider: reconciled through the end of what
//!   it read (its start less `--settle`);
//! - the annotation [`ANNOTATION`] on the pipeline, `<provider>=<RFC 3339 time>[,...]`: a
//!   person (or a GitOps commit) saying the provider was reconciled by other means up to that
//!   time. A time, not a bare name, so the annotation can stay in Git: re-applied, it covers
//!   only the misses before its time, never a newer loss.
//!
//! Pure; tested with a table (`reconciled/tests.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::ConsistencyStatus;

#[cfg(test)]
mod tests;

/// `dualwrite.io/reconciled: kafka=2025-06-01T12:00:00Z,nats=2025-06-01T12:00:00Z`.
pub const ANNOTATION: &str = "dualwrite.io/reconciled";

/// The times `annotation` gives `provider` (the latest if named twice); entries that do not
/// parse are left out (and listed by [`unreadable_entries`]).
fn from_annotation(provider: &str, annotation: &str) -> Option<Timestamp> {
    annotation
        .split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .filter(|(name, _)| name.trim() == provider)
        .filter_map(|(_, at)| at.trim().parse::<Timestamp>().ok())
        .max()
}

/// The entries of `annotation` that are not `<provider>=<RFC 3339 time>`.
pub fn unreadable_entries(annotation: &str) -> Vec<String> {
    annotation
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter(|e| {
            e.split_once('=')
                .is_none_or(|(_, at)| at.trim().parse::<Timestamp>().is_err())
        })
        .map(String::from)
        .collect()
}

/// Through when a clean verdict covers `provider`: it read all the brokers held and found
/// nothing missing on this provider.
fn from_verdict(provider: &str, c: &ConsistencyStatus) -> Option<Timestamp> {
    let read = c.seen.contains_key(provider);
    let nothing_missing = c.missing.get(provider).copied() == Some(0);
    if read && nothing_missing && c.window_start.is_none() {
        c.window_end.as_ref().map(|t| t.0)
    } else {
        None
    }
}

/// `provider`'s `reconciledThrough`: the latest of the previous one, the annotation's and a
/// clean verdict's.
pub fn reconciled_through(
    provider: &str,
    previous: Option<&Time>,
    annotation: Option<&str>,
    consistency: Option<&ConsistencyStatus>,
) -> Option<Time> {
    [
        previous.map(|t| t.0),
        annotation.and_then(|a| from_annotation(provider, a)),
        consistency.and_then(|c| from_verdict(provider, c)),
    ]
    .into_iter()
    .flatten()
    .max()
    .map(Time)
}
