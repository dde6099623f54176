//! dualwrite: a relay that writes every message to several brokers at once, and the Kubernetes
//! operator that runs it.
//!
//! ```text
//!  HTTP ingest ──► relay ──► Composite (strategy) ──┬──► memory
//!   (relay::http)  (relay)    (composite)           ├──► NATS JetStream (provider::nats)
//!                                                   └──► Kafka          (provider::kafka)
//!
//!  DualWritePipeline (api) ──► operator (controller) ──► Deployment/Service/RBAC running the relay
//!                        ◄── status: per-provider rows, conditions, migration step
//! ```
//!
//! - [`message`]: the message and its JSON wire form.
//! - [`provider`]: the `Provider` trait and the memory, NATS and Kafka adapters.
//! - [`composite`]: fan-out to several providers under a strategy (FailFast / BestEffort).
//! - [`relay`]: pipeline → providers → composite, the HTTP ingest API, stats and metrics.
//! - [`api`]: the `DualWritePipeline` resource and its validation.
//!
//! `message`, `provider`, `composite` and the relay core know nothing of Kubernetes.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod composite;
pub mod controller;
pub mod duration;
pub mod handoff;
pub mod latency;
pub mod message;
pub mod provider;
pub mod relay;
#[cfg(test)]
mod testing;
pub mod verify;
