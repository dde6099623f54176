//! dualwrite: a relay that writes every message to several brokers at once, and the Kubernetes
//! operator that runs it.
//!
//! ```text
//!  HTTP ingest ──► relay ──► Composite (strategy) ──┬──► memory
//!   (relay::http)  (relay)    (composite)           ├──► NATS JetStream (provider::nats)
//!                    ▲                              └──► Kafka          (provider::kafka)
//!                    │ PipelineConfig (api's one validator; also from -f and the seed's env)
//!  DualWritePipeline (api) ──► operator (controller) ──► StatefulSet/Service/RBAC running the relay
//!                        ◄── status: per-provider rows, conditions, migration step
//! ```
//!
//! The core (no Kubernetes; `grep -rnE 'crate::api|crate::controller|kube::|k8s_openapi'` over
//! it prints nothing):
//! - [`message`]: the message and its JSON wire form.
//! - [`provider`]: the `Provider` trait, stats, health, the shared supervisor; the memory,
//!   NATS (`provider::nats`) and Kafka (`provider::kafka`) adapters and their configuration
//!   (TLS and credentials as Secret files: `provider::secret`, never printed).
//! - [`composite`]: fan-out to several providers under a strategy (FailFast / BestEffort), its
//!   lanes, the strategy and the merged subscription.
//! - [`handoff`]: the durable per-provider backlog (store, backlog handle, replay).
//! - [`latency`]: the lock-free latency histogram behind stats and `/metrics`.
//! - [`duration`]: the one duration parser and formatter (`750ms`, `2m`, `1h30m`).
//! - [`relay`]: a typed `PipelineConfig` → providers → composite, the HTTP ingest API
//!   (`relay::listener`: TLS, bearer tokens, connection/in-flight caps, timeouts) and its
//!   metrics; `relay::config` reads a manifest or the seed's variables and `relay::cluster`
//!   watches the resource and reports (the relay's only Kubernetes parts).
//!
//! The control plane and the commands:
//! - [`api`]: the `DualWritePipeline` resource (spec, status, the status-apply helper) and the
//!   one validator, `PipelineConfig::try_from(&spec)`.
//! - [`controller`]: the operator: reconcile, owned objects, status rows and conditions, the
//!   migration step machine and fallback, leader election, probes and metrics.
//! - [`verify`]: the consistency check of the brokers, and its record in status.
//! - [`cli`]: the command line (`relay`, `operator`, `verify`, `crd`); `main.rs` only calls it.
//!   `cli::plugin` is the kubectl plugin (`kubectl dualwrite`: status and the migration verbs,
//!   written as requests to the status subresource); `bin/kubectl-dualwrite.rs` only calls it.
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
