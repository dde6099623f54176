//! The ingest API (seed-compatible): `POST /api/v1/ingest` (and `/api/v1/ingest/batch`, in
//! `super::batch`) plus `/health`, `/ready`, `/stats` and `/metrics`, on one port or split over
//! two ([`Endpoints`]). Every error is JSON with a message a person understands. What guards the
//! API (TLS, tokens, timeouts, caps) is the listener's business ([`super::listener`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::metrics::{self, IngestMetrics};
use super::window::Verdict;
use super::Relay;
use crate::composite::PublishError;
use crate::message::{validate_id, DataMessage};

/// The body of `POST /api/v1/ingest` (and each element of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IngestRequest {
    source: String,
    data: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Optional client-chosen id: a retry with the same id is de-duplicated by the brokers.
    #[serde(default)]
    id: Option<String>,
}

/// The body of a 202 (serialised straight from borrowed fields: this is the hot path).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AcceptedBody<'a> {
    message_id: &'a str,
    status: &'static str,
    strategy: crate::composite::Strategy,
    acceptance: crate::composite::Acceptance,
    providers: &'a [String],
    deferred_providers: &'a [String],
    failed_providers: Vec<&'a str>,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// The ingest API and the probe endpoints, on one port.
    All,
    /// The ingest API only; the probe endpoints are on `probe_port`.
    Ingest { probe_port: u16 },
    /// `/health`, `/ready`, `/stats`, `/metrics` only (the probe port).
    Probes,
}

/// The endpoints that probes and scrapers call: never counted against `maxInFlight`.
pub const PROBE_PATHS: [&str; 4] = ["/health", "/ready", "/stats", "/metrics"];

/// The endpoints a kubelet probe calls: it carries no token, so they need none.
pub const UNAUTHENTICATED_PATHS: [&str; 2] = ["/health", "/ready"];

/// The router of the whole API (ingest and probes on one port).
pub fn router(relay: Arc<Relay>) -> Router {
    routes(relay, Endpoints::All)
}

/// The router of `endpoints`.
pub fn routes(relay: Arc<Relay>, endpoints: Endpoints) -> Router {
    let max_body = relay.max_body_bytes();
    let mut router = Router::new();
    if endpoints != Endpoints::Probes {
        router = router
            .route(
                "/api/v1/ingest",
                post(ingest).fallback(|| async { method_not_allowed("POST") }),
            )
            .route(
                "/api/v1/ingest/batch",
                post(super::batch::ingest_batch).fallback(|| async { method_not_allowed("POST") }),
            );
    }
    if !matches!(endpoints, Endpoints::Ingest { .. }) {
        // Built once; its collector reads the live numbers at every scrape.
        let registry = Arc::new(metrics::registry(relay.clone()));
        let scrape = move || prometheus(registry.clone());
        router = router
            .route(
                "/health",
                get(health).fallback(|| async { method_not_allowed("GET") }),
            )
            .route(
                "/ready",
                get(ready).fallback(|| async { method_not_allowed("GET") }),
            )
            .route(
                "/stats",
                get(stats).fallback(|| async { method_not_allowed("GET") }),
            )
            .route(
                "/metrics",
                get(scrape).fallback(|| async { method_not_allowed("GET") }),
            );
    }
    let not_found: String = match endpoints {
        Endpoints::All => "no such endpoint; try POST /api/v1/ingest or /api/v1/ingest/batch, GET /health, /ready, /stats or /metrics".into(),
        Endpoints::Ingest { probe_port } => format!(
            "no such endpoint; try POST /api/v1/ingest (GET /health, /ready, /stats and /metrics are served on port {probe_port})"
        ),
        Endpoints::Probes => "no such endpoint on the probe port; try GET /health, /ready, /stats or /metrics (POST /api/v1/ingest is served on the ingest port)".into(),
    };
    router
        .fallback(move || {
            let message = not_found.clone();
            async move { error(StatusCode::NOT_FOUND, message) }
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(relay)
}

/// A JSON error: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn ingest(State(relay): State<Arc<Relay>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let msg = match message_from(&relay, body) {
        Ok(msg) => msg,
        Err((status, message)) => return error(status, message),
    };
    let m = &relay.metrics;
    // The digest is computed once, for the window and every provider (the wire form too,
    // inside the write's task).
    let digest = msg.content_digest();
    // Decided before any write: a retry of an accepted message is not written again, and an id
    // reused for other content is refused (see `relay::window`).
    let claim = match relay.window.check(&msg.id, digest).await {
        Verdict::Fresh(claim) => claim,
        Verdict::Duplicate => {
            IngestMetrics::count(&m.duplicate);
            return (
                StatusCode::ACCEPTED,
                Json(json!({
                    "messageId": msg.id,
                    "status": "accepted",
                    "duplicate": true,
                    "strategy": relay.composite().strategy(),
                })),
            )
                .into_response();
        }
        Verdict::Conflict { accepted } => {
            IngestMetrics::count(&m.conflict);
            let earlier = if accepted {
                "was accepted"
            } else {
                "was sent (and may be stored on a broker)"
            };
            return (
                StatusCode::CONFLICT,
                Json(json!({
                    "error": format!(
                        "message id {:?} {earlier} with different content (source, data or metadata) within the last {}; a retry must repeat the same content, new content needs a new id",
                        msg.id,
                        crate::duration::format(relay.window.max_age()),
                    ),
                    "messageId": msg.id,
                })),
            )
                .into_response();
        }
    };
    // The write and its bookkeeping (the strategy's backlog appends, the window's claim, the
    // counters) run detached from the request: a request dropped on its timeout or by the
    // client must not cut between a broker's acknowledgement and what has to follow it.
    let write = super::detach::run_detached(async move {
        let m = &relay.metrics;
        let out = msg.outgoing_with_digest(digest);
        let mut composite = relay.composite();
        let mut outcome = composite.publish_outgoing_detailed(&out).await;
        if matches!(outcome, Err(PublishError::Closed)) {
            // The provider list was swapped while this request held the old composite: retry
            // once on the one in force now.
            let current = relay.composite();
            if !Arc::ptr_eq(&current, &composite) {
                composite = current;
                outcome = composite.publish_outgoing_detailed(&out).await;
            }
        }
        match outcome {
            Ok(report) => {
                claim.accept();
                IngestMetrics::count(&m.accepted);
                m.latency.record(started.elapsed());
                let failed: Vec<&str> = report.failed.iter().map(|e| e.provider()).collect();
                (
                    StatusCode::ACCEPTED,
                    Json(AcceptedBody {
                        message_id: &msg.id,
                        status: "accepted",
                        strategy: composite.strategy(),
                        acceptance: composite.acceptance(),
                        providers: &report.accepted,
                        deferred_providers: &report.deferred,
                        failed_providers: failed,
                    }),
                )
                    .into_response()
            }
            Err(e @ PublishError::TooLarge { .. }) => {
                // Refused before any write: the id stays free for a smaller message.
                claim.release();
                IngestMetrics::count(&m.too_large);
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Json(json!({
                        "error": e.to_string(),
                        "messageId": msg.id,
                        "failedProviders": e.failed_providers(),
                    })),
                )
                    .into_response()
            }
            Err(e) => {
                if matches!(e, PublishError::Closed) {
                    // Refused before any write (the pipeline is closing): nothing to remember.
                    claim.release();
                }
                IngestMetrics::count(&m.unavailable);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "error": e.to_string(),
                        "messageId": msg.id,
                        "strategy": composite.strategy(),
                        "failedProviders": e.failed_providers(),
                    })),
                )
                    .into_response()
            }
        }
    });
    write.await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the write failed: {e}"),
        )
    })
}

/// The message a request carries, or the status and message that refuse it (counted by
/// outcome).
fn message_from(
    relay: &Relay,
    body: Result<Bytes, BytesRejection>,
) -> Result<DataMessage, (StatusCode, String)> {
    let m = &relay.metrics;
    let body = read_body(relay, body)?;
    // serde's derived struct deserializer also takes a JSON array in field order
    // (`["test", "data"]`): only an object is a message.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok()
    {
        IngestMetrics::count(&m.bad_request);
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid request: the body must be a JSON object, e.g. {\"source\": \"...\", \"data\": \"...\", \"metadata\": {...}}".to_string(),
        ));
    }
    let req: IngestRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            IngestMetrics::count(&m.bad_request);
            let what = if e.is_data() {
                "invalid request"
            } else {
                "malformed JSON"
            };
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{what}: {e}; expected {{\"source\": \"...\", \"data\": \"...\", \"metadata\": {{...}}}}"),
            ));
        }
    };
    req.into_message().map_err(|e| {
        IngestMetrics::count(&m.bad_request);
        (StatusCode::BAD_REQUEST, e)
    })
}

/// The request body, or the status and message that refuse it (counted by outcome).
pub(super) fn read_body(
    relay: &Relay,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, (StatusCode, String)> {
    let m = &relay.metrics;
    match body {
        Ok(b) => Ok(b),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            IngestMetrics::count(&m.too_large);
            Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than {} bytes; send smaller messages or raise spec.ingest.maxBodyBytes",
                    relay.max_body_bytes()
                ),
            ))
        }
        Err(rejection) => {
            IngestMetrics::count(&m.bad_request);
            Err((
                rejection.status(),
                format!("could not read the request body: {rejection}"),
            ))
        }
    }
}

impl IngestRequest {
    /// The message this request asks for, with a fresh id unless the client chose one (checked).
    pub(super) fn into_message(self) -> Result<DataMessage, String> {
        let mut msg = DataMessage::new(self.source, self.data.into_bytes());
        msg.metadata = self.metadata;
        if let Some(id) = self.id {
            validate_id(&id).map_err(|e| format!("invalid request: {e}"))?;
            msg.id = id;
        }
        Ok(msg)
    }
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn ready(State(relay): State<Arc<Relay>>) -> Response {
    let composite = relay.composite();
    match composite.readiness() {
        Ok(()) => {
            Json(json!({ "status": "ready", "strategy": composite.strategy() })).into_response()
        }
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "strategy": composite.strategy(), "error": why.to_string() })),
        )
            .into_response(),
    }
}

async fn stats(State(relay): State<Arc<Relay>>) -> Response {
    Json(relay.composite().stats_detailed()).into_response()
}

async fn prometheus(registry: Arc<prometheus_client::registry::Registry>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&registry),
    )
        .into_response()
}
