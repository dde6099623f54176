//! Helpers shared by the integration tests that talk to real brokers: finding a broker's address
//! (and refusing to skip silently under CI), unique names so tests run in parallel and
//! repeatedly, awaiting a condition with a deadline instead of sleeping, and stopping/starting a
//! broker through `hack/test-env` for the outage tests.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

/// kube-apiserver helpers (kubectl, kubeconfigs, namespaces) for the cluster tests.
pub mod brokers;
pub mod cluster;
/// Relay pods on the real node (`hack/test-env up node`): pod IPs, `/stats`, the image.
pub mod node;

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to get the brokers the tests need.
pub const SETUP_HINT: &str = "run `hack/test-env up && . target/test-env/env.sh` first";

/// Whether this run is under CI, where a test that cannot run must fail, never skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The value of `var` (e.g. `NATS_URL`). When it is missing or empty: under `CI=true` the test
/// fails; otherwise a loud `SKIPPED` line goes to stderr and `None` comes back, and the caller
/// returns.
pub fn require_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if under_ci() => panic!("{var} is not set and CI=true: {SETUP_HINT}"),
        _ => {
            eprintln!(
                "\n*** SKIPPED: {var} is not set; this test needs a real broker: {SETUP_HINT} ***\n"
            );
            None
        }
    }
}

/// Whether the outage tests (which stop and start the shared brokers) may run: when
/// `DUALWRITE_OUTAGE_TESTS=1`, and always under `CI=true` (the CI script runs them in their own
/// serial step). Otherwise prints a loud `SKIPPED` line and returns false.
pub fn outage_tests_enabled() -> bool {
    if std::env::var("DUALWRITE_OUTAGE_TESTS").is_ok_and(|v| v == "1") || under_ci() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED: outage test; it stops and starts the shared brokers. Run it alone with \
         DUALWRITE_OUTAGE_TESTS=1 cargo test --test nats_outage --test kafka_outage -- --test-threads=1 ***\n"
    );
    false
}

/// A name no other test run uses: `<prefix>-<uuid>` (letters, digits and '-').
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` until it returns `Ok`, and returns that value; panics with the last error
/// after `timeout`. For conditions that can only be observed by asking again (a broker's
/// state, a provider's health) — never a fixed sleep.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last =
            match tokio::time::timeout(remaining.max(Duration::from_millis(1)), check()).await {
                Ok(Ok(v)) => return v,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the check itself did not finish before the deadline".to_string(),
            };
        if Instant::now() >= deadline {
            panic!("{what}: not true within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Installs a test log subscriber once (RUST_LOG, default warnings from the crate).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dualwrite=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn test_env_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/test-env")
}

/// Runs `hack/test-env CMD SERVICE` (e.g. `stop kafka`) and panics with its output when it
/// fails. Blocking (a few hundred milliseconds for stop, seconds for start); the script bounds
/// itself (it waits for readiness up to its own timeout, then fails).
pub fn test_env(cmd: &str, service: &str) {
    let started = Instant::now();
    let out = std::process::Command::new(test_env_script())
        .args([cmd, service])
        .output()
        .unwrap_or_else(|e| panic!("cannot run hack/test-env {cmd} {service}: {e}"));
    assert!(
        out.status.success(),
        "hack/test-env {cmd} {service} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("hack/test-env {cmd} {service} took {:?}", started.elapsed());
}

/// [`test_env`] off the async runtime's threads.
async fn test_env_async(cmd: &'static str, service: &'static str) {
    if let Err(e) = tokio::task::spawn_blocking(move || test_env(cmd, service)).await {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Stops a service of the test environment and starts it again when dropped, so a failing
/// outage test does not leave the shared broker down for the next test.
pub struct StoppedService {
    service: &'static str,
    started: bool,
}

impl StoppedService {
    pub async fn stop(service: &'static str) -> Self {
        test_env_async("stop", service).await;
        Self {
            service,
            started: false,
        }
    }

    pub async fn start(mut self) {
        // Set first: if the start itself fails, Drop must not try again.
        self.started = true;
        test_env_async("start", self.service).await;
    }
}

impl Drop for StoppedService {
    fn drop(&mut self) {
        if !self.started {
            eprintln!("restarting {} after a failed outage test", self.service);
            let _ = std::process::Command::new(test_env_script())
                .args(["start", self.service])
                .status();
        }
    }
}
