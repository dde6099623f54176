//! Fixtures shared by the controller's table tests: a fixed clock and provider rows.

use k8s_openapi::jiff::Timestamp;

use crate::api::{ProviderKind, ProviderStatus, Readiness};

/// `secs` after a fixed instant (negative: before it).
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A row as aggregation makes it; a row that is down says why.
pub fn row(name: &str, ready: Readiness, backlog: u64) -> ProviderStatus {
    ProviderStatus {
        ready,
        message: if ready == Readiness::False {
            "connection refused".into()
        } else {
            String::new()
        },
        backlog,
        ..ProviderStatus::new(name, ProviderKind::Nats)
    }
}
