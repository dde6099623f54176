//! The baseline of `hack/bench`: a bare axum server that does what the relay's HTTP layer must do
//! for one message and nothing else — parse the same JSON body as `POST /api/v1/ingest`, mint a
//! UUIDv7, answer `202 {"messageId": ..., "status": "accepted"}`. No broker, no composite.
//!
//! Run: `cargo run --release --example bench_echo -- 127.0.0.1:8099` (the address defaults to
//! 127.0.0.1:8099).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

// The relay's allocator, so that the echo stays the floor of the same HTTP ingest.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed, as the relay does, and then dropped
struct IngestRequest {
    source: String,
    data: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    id: Option<String>,
}

async fn ingest(Json(req): Json<IngestRequest>) -> (StatusCode, Json<serde_json::Value>) {
    let id = req.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    (
        StatusCode::ACCEPTED,
        Json(json!({ "messageId": id, "status": "accepted" })),
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let app = Router::new().route("/api/v1/ingest", post(ingest));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench_echo listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
