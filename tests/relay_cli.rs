//! The built `dualwrite` binary, run as a user would: configuration sources and start-up errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dualwrite");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay child process, killed on drop; its log lines are collected from stderr/stdout.
struct RelayProcess {
    child: Child,
    port: u16,
    log: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("relay")
        .args(args)
        .env("API_PORT", port.to_string())
        .env("API_BIND", "127.0.0.1");
    for k in [
        "QUEUE_TYPE",
        "COMPOSITE_PROVIDERS",
        "COMPOSITE_STRATEGY",
        "QUEUE_SIZE",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    RelayProcess {
        child,
        port,
        log: rx,
        seen: Vec::new(),
    }
}

impl RelayProcess {
    /// Waits for a log line containing `needle` (or the process to exit).
    fn wait_for_log(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn post(&self, body: &str) -> (u16, serde_json::Value) {
        http::request(self.port, "POST", "/api/v1/ingest", body)
    }
}

mod http {
    /// A tiny blocking HTTP/1.1 client over std, enough for JSON requests to the relay.
    pub fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status: u16 = raw[9..12].parse().unwrap();
        let json = raw.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }
}

const SEED_BODY: &str = r#"{"source":"test","data":"dual-write test"}"#;

fn check_dual_write(relay: &mut RelayProcess, expected_providers: usize) {
    assert!(
        relay.wait_for_log("ingest API listening"),
        "relay did not start: {:?}",
        relay.seen
    );
    let created = relay
        .seen
        .iter()
        .filter(|l| l.contains("memory adapter created"))
        .count();
    assert_eq!(
        created, expected_providers,
        "one 'adapter created' line per provider: {:?}",
        relay.seen
    );
    let (status, body) = relay.post(SEED_BODY);
    assert_eq!(status, 202, "{body}");
    let (_, stats) = http::request(relay.port, "GET", "/stats", "");
    let rows = stats["providers"].as_array().unwrap();
    assert_eq!(rows.len(), expected_providers);
    assert!(rows.iter().all(|r| r["published"] == 1), "{stats}");
}

#[test]
fn default_pipeline_dual_writes_to_two_memory_providers() {
    let mut relay = spawn(&[], &[]);
    check_dual_write(&mut relay, 2);
}

#[test]
fn seed_variables_configure_a_best_effort_composite() {
    let mut relay = spawn(
        &[],
        &[
            ("QUEUE_TYPE", "composite"),
            ("COMPOSITE_PROVIDERS", "memory,memory"),
            ("COMPOSITE_STRATEGY", "best-effort"),
        ],
    );
    check_dual_write(&mut relay, 2);
    let (_, stats) = http::request(relay.port, "GET", "/stats", "");
    assert_eq!(stats["strategy"], "BestEffort");
}

#[test]
fn manifest_file_configures_the_pipeline() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/memory-pipeline.yaml");
    let mut relay = spawn(&["-f", manifest], &[]);
    check_dual_write(&mut relay, 2);
    let (_, stats) = http::request(relay.port, "GET", "/stats", "");
    let names: Vec<_> = stats["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        [serde_json::json!("primary"), serde_json::json!("shadow")]
    );
}

fn start_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut relay = spawn(args, env);
    let status = relay.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "a bad configuration exits with code 2"
    );
    let mut text = String::new();
    while let Ok(line) = relay.log.recv_timeout(Duration::from_secs(5)) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[test]
fn bad_configuration_stops_the_relay_with_a_message_that_says_what_to_fix() {
    let err = start_error(
        &[],
        &[
            ("COMPOSITE_PROVIDERS", "memory,memory"),
            ("COMPOSITE_STRATEGY", "sometimes"),
        ],
    );
    assert!(
        err.contains("unknown strategy \"sometimes\": use fail-fast or best-effort"),
        "{err}"
    );

    let err = start_error(&[], &[("QUEUE_TYPE", "redis")]);
    assert!(
        err.contains("use memory, nats, kafka or composite"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let dup = dir.path().join("dup.yaml");
    std::fs::write(
        &dup,
        "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: d}\nspec:\n  providers:\n  - {name: a, type: memory}\n  - {name: a, type: memory}\n",
    )
    .unwrap();
    let err = start_error(&["-f", dup.to_str().unwrap()], &[]);
    assert!(err.contains("\"a\" is used twice"), "{err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: DualWritePipeline\nspec: [").unwrap();
    let err = start_error(&["-f", bad.to_str().unwrap()], &[]);
    assert!(err.contains("not valid YAML"), "{err}");
}

/// `kafka.config` cannot be turned into a weapon: keys that load code, run commands, change
/// security or weaken what a 202 promises stop the relay (exit 2) with the key named; tuning
/// keys pass the validator.
#[test]
fn kafka_config_outside_the_allowlist_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("plugin.library.paths", "/tmp/evil.so"),
        ("sasl.kerberos.kinit.cmd", "sh -c id"),
        ("acks", "0"),
        ("enable.idempotence", "false"),
        ("security.protocol", "PLAINTEXT"),
        ("ssl.ca.location", "/etc/passwd"),
        ("message.timeout.ms", "0"),
    ] {
        let path = dir.path().join("p.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: k}}\nspec:\n  providers:\n  - name: kf\n    type: kafka\n    kafka:\n      brokers: [\"127.0.0.1:1\"]\n      topic: t\n      config: {{{key}: \"{value}\"}}\n"
            ),
        )
        .unwrap();
        let err = start_error(&["-f", path.to_str().unwrap()], &[]);
        assert!(
            err.contains("spec.providers[0].kafka.config")
                && err.contains(&format!("{key} not allowed")),
            "{key}: {err}"
        );
    }
}
