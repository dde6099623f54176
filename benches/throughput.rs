//! Side-by-side publish throughput and latency of each provider and of the composite, on real
//! brokers, in one run on one machine (so ratios between rows are meaningful; absolute numbers
//! depend on the machine).
//!
//! Run: `hack/test-env up nats kafka && . target/test-env/env.sh && cargo bench --bench throughput`
//! Options (environment): BENCH_SECONDS (per cell, default 3), BENCH_CONCURRENCY (default 1,16,64).
//! Prints a Markdown table for docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite::api::DualWritePipelineSpec;
use dualwrite::composite::Composite;
use dualwrite::message::DataMessage;
use dualwrite::provider::Provider;
use dualwrite::relay::{self, PipelineConfig, Relay};
use futures::StreamExt;

struct Cell {
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Runs `concurrency` workers calling `op` for `seconds`; each records its own latencies.
async fn measure<F, Fut>(concurrency: usize, seconds: f64, op: F) -> Cell
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if op((w as u64) << 40 | n).await {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Cell {
        msgs_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    }
}

fn pipeline(yaml: &str) -> PipelineConfig {
    let spec: DualWritePipelineSpec = serde_yaml::from_str(yaml).unwrap();
    PipelineConfig::try_from(&spec).unwrap()
}

fn message(n: u64) -> DataMessage {
    let mut m = DataMessage::new("bench", vec![b'x'; 256]);
    m.metadata.insert("n".into(), n.to_string());
    m
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let (nats, kafka) = match (std::env::var("NATS_URL"), std::env::var("KAFKA_BROKERS")) {
        (Ok(n), Ok(k)) => (n, k),
        _ => {
            eprintln!("NATS_URL and KAFKA_BROKERS must point at real brokers: hack/test-env up nats kafka && . target/test-env/env.sh");
            std::process::exit(2);
        }
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let providers = format!(
        "providers:\n- {{name: memory, type: memory, memory: {{capacity: 10000000}}}}\n- {{name: nats, type: nats, nats: {{url: \"{nats}\", subject: bench.{run}}}}}\n- {{name: kafka, type: kafka, kafka: {{brokers: [\"{kafka}\"], topic: bench-{run}}}}}\n"
    );
    let all = pipeline(&providers);
    let timeout = Duration::from_secs(5);
    let mut built: Vec<Arc<dyn Provider>> = Vec::new();
    for p in &all.providers {
        built.push(relay::build_provider(p, timeout).await.unwrap());
    }
    // Keep the memory queue drained so it measures the provider, not a full queue.
    let mut drain = built[0].subscribe().await.unwrap();
    let drainer = tokio::spawn(async move { while drain.next().await.is_some() {} });
    let (memory, nats_p, kafka_p) = (built[0].clone(), built[1].clone(), built[2].clone());
    let composite = |strategy| {
        Arc::new(Composite::new(vec![nats_p.clone(), kafka_p.clone()], strategy, timeout).unwrap())
    };
    let ff = composite(dualwrite::composite::Strategy::FailFast);
    let be = composite(dualwrite::composite::Strategy::BestEffort);
    // The same BestEffort composite with hinted handoff on (a durable backlog per provider, on
    // this machine's disk): with no failures it only checks each backlog is empty.
    let state = tempfile::tempdir().unwrap();
    let store = dualwrite::handoff::HandoffStore::open(state.path()).unwrap();
    let be_handoff = {
        let c = Composite::new(
            vec![nats_p.clone(), kafka_p.clone()],
            dualwrite::composite::Strategy::BestEffort,
            timeout,
        )
        .unwrap();
        let backlogs = ["nats", "kafka"]
            .iter()
            .map(|n| (n.to_string(), store.backlog(n, Default::default()).unwrap()))
            .collect();
        let c = Arc::new(c.with_backlogs(backlogs));
        c.start_replay();
        c
    };

    // HTTP ingest end to end: a relay over composite(nats, kafka) FailFast on loopback.
    let http_relay = Relay::new(
        Composite::new(
            vec![nats_p.clone(), kafka_p.clone()],
            dualwrite::composite::Strategy::FailFast,
            timeout,
        )
        .unwrap(),
        PipelineConfig::two_memory_queues(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/ingest", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay::serve(http_relay, listener, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    println!("| concurrency | target | msgs/s | p50 ms | p99 ms | errors |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for &c in &levels {
        let row = |name: &str, cell: &Cell| {
            println!(
                "| {c} | {name} | {:.0} | {:.2} | {:.2} | {} |",
                cell.msgs_per_sec, cell.p50_ms, cell.p99_ms, cell.errors
            );
        };
        let p = memory.clone();
        let m = measure(c, seconds, move |n| {
            let p = p.clone();
            async move { p.publish(&message(n)).await.is_ok() }
        })
        .await;
        row("memory", &m);
        let p = nats_p.clone();
        let n = measure(c, seconds, move |i| {
            let p = p.clone();
            async move { p.publish(&message(i)).await.is_ok() }
        })
        .await;
        row("nats", &n);
        let p = kafka_p.clone();
        let k = measure(c, seconds, move |i| {
            let p = p.clone();
            async move { p.publish(&message(i)).await.is_ok() }
        })
        .await;
        row("kafka", &k);
        let p = ff.clone();
        let f = measure(c, seconds, move |i| {
            let p = p.clone();
            async move { p.publish_detailed(&message(i)).await.is_ok() }
        })
        .await;
        row("composite(nats,kafka) FailFast", &f);
        let p = be.clone();
        let b = measure(c, seconds, move |i| {
            let p = p.clone();
            async move { p.publish_detailed(&message(i)).await.is_ok() }
        })
        .await;
        row("composite(nats,kafka) BestEffort", &b);
        let p = be_handoff.clone();
        let bh = measure(c, seconds, move |i| {
            let p = p.clone();
            async move {
                p.publish_detailed(&message(i))
                    .await
                    .is_ok_and(|r| r.deferred.is_empty())
            }
        })
        .await;
        row("composite(nats,kafka) BestEffort + hinted handoff", &bh);
        let (cl, u) = (client.clone(), url.clone());
        let h = measure(c, seconds, move |i| {
            let (cl, u) = (cl.clone(), u.clone());
            async move {
                cl.post(&u)
                    .json(&serde_json::json!({"source": "bench", "data": format!("{i:0>256}")}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 202)
            }
        })
        .await;
        row("HTTP ingest → composite FailFast", &h);
        let slower = n.msgs_per_sec.min(k.msgs_per_sec);
        ratios.push((
            c,
            f.msgs_per_sec / slower,
            b.msgs_per_sec / slower,
            bh.msgs_per_sec / b.msgs_per_sec,
        ));
    }
    println!();
    println!("| concurrency | FailFast / slower broker | BestEffort / slower broker | BestEffort with handoff / without |");
    println!("|---:|---:|---:|---:|");
    for (c, f, b, h) in ratios {
        println!("| {c} | {f:.2} | {b:.2} | {h:.2} |");
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    drainer.abort();
}
