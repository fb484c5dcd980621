//! `cargo bench -p crossgate-local --bench durable`: Publish throughput with
//! the durable outbox, and how fast a backlog drains when a receiver returns.
//! A load tool of its own (criterion measures one call at a time): the whole
//! local system in this process — broker on a SQLite store in a temporary
//! folder, the border-inspection and commerce adapters with their
//! delivery-id files, their reference systems — and 64 publishers beside
//! it, each publishing declarations under fresh entry numbers (every call a
//! new record: two outbox items, two deliveries, five audit entries).
//! `SECS` (default 5) sets the measuring time, `BACKLOG` (default 5000) the
//! backlog size, `PUBLISHERS` (64) the publishers, `CONCURRENCY` (16) the
//! lanes' window; `MEMORY=1` runs the same on an in-memory log and outbox.

use crossgate_local::{LocalSystem, Options};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::{DeliveryOutcome, PublishRequest, Record};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DECLARATION: &str = r#"{"declaration_id": "ID", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}, {"line": 2, "hs_code": "3307799606", "description": "yak wool", "quantity": 108, "unit": "item", "value": {"amount": 94870.91, "currency": "CNY"}}]}"#;

fn publishers() -> usize {
    env("PUBLISHERS", 64) as usize
}

fn request(n: u64) -> PublishRequest {
    let id = format!("{:018}", 100_000_000_000_000_000 + n);
    PublishRequest {
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: id.clone(),
            json: DECLARATION.replace("ID", &id).into_bytes(),
        }),
        ..Default::default()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    _dir: crossgate_testing::TempDir,
    system: LocalSystem,
    client: BrokerClient<tonic::transport::Channel>,
}

async fn start(departments: &[&str]) -> Run {
    let dir = crossgate_testing::TempDir::new("bench-durable");
    let config = dir.join("config");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &config);
    let toml = config.join("broker.toml");
    let text = std::fs::read_to_string(&toml).expect("broker.toml");
    std::fs::write(
        &toml,
        format!(
            "{text}\n[delivery]\nretry = [\"100ms\"]\nconcurrency = {}\n",
            env("CONCURRENCY", 16)
        ),
    )
    .expect("write");
    let mut opts = Options::project_defaults();
    opts.config = config;
    opts.departments = Some(departments.iter().map(|d| d.to_string()).collect());
    opts.limiter = Some(Arc::new(crossgate_broker::Unlimited));
    // MEMORY=1: the same run on an in-memory log and outbox, to see what durability costs.
    if std::env::var("MEMORY").is_err() {
        opts.audit_store = Some(format!("sqlite:{}", dir.join("audit.db").display()));
    }
    if std::env::var("MEMORY").is_err() {
        opts.adapter_state = Some(dir.join("adapters"));
    }
    let system = LocalSystem::start(opts).await.expect("local system starts");
    let channel = system
        .channel(&system.broker_addr, "customs")
        .await
        .expect("connect");
    Run {
        _dir: dir,
        system,
        client: BrokerClient::new(channel),
    }
}

/// Closed loop: every publisher publishes a new record as soon as its last
/// one is answered, for `secs`; returns (publishes/s, p50, p99, delivered share).
async fn load(
    client: &BrokerClient<tonic::transport::Channel>,
    secs: u64,
) -> (f64, Duration, Duration, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..publishers())
        .map(|_| {
            let mut client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut delivered, mut deliveries) = (0u64, 0u64);
                while Instant::now() < until {
                    let n = next.fetch_add(1, Ordering::Relaxed) + 1_000_000 * secs;
                    let started = Instant::now();
                    let reply = client
                        .publish(request(n))
                        .await
                        .expect("published")
                        .into_inner();
                    latencies.push(started.elapsed());
                    deliveries += reply.deliveries.len() as u64;
                    delivered += reply
                        .deliveries
                        .iter()
                        .filter(|d| d.outcome == DeliveryOutcome::Delivered as i32)
                        .count() as u64;
                }
                (latencies, delivered, deliveries)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    let (mut delivered, mut deliveries) = (0, 0);
    for t in tasks {
        let (l, d, n) = t.await.expect("publisher");
        all.extend(l);
        delivered += d;
        deliveries += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (
        all.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        delivered as f64 / deliveries.max(1) as f64,
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let secs = env("SECS", 5);
    let backlog = env("BACKLOG", 5000);
    runtime.block_on(async {
        let run = start(&["border-inspection", "commerce"]).await;
        load(&run.client, 1).await; // warm-up
        let (rate, p50, p99, delivered) = load(&run.client, secs).await;
        println!(
            "publish to two receivers, {}, {} publishers: {rate:.0} publishes/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} % delivered within the call",
            if std::env::var("MEMORY").is_ok() {
                "log and outbox in memory"
            } else {
                "durable outbox (SQLite)"
            },
            publishers(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            delivered * 100.0
        );
        drop(run);

        // A backlog: border inspection down while `backlog` records are published.
        let mut run = start(&["commerce"]).await;
        let mut client = run.client.clone();
        let mut waits = Vec::new();
        for chunk in (0..backlog).collect::<Vec<_>>().chunks(publishers()) {
            for &n in chunk {
                let mut c = client.clone();
                waits.push(tokio::spawn(async move { c.publish(request(n)).await.expect("published") }));
            }
            for w in waits.drain(..) {
                w.await.expect("publisher");
            }
        }
        client = run.client.clone();
        drop(client);
        let started = Instant::now();
        let border = run
            .system
            .start_department("border-inspection")
            .await
            .expect("border inspection starts");
        while (border.received().len() as u64) < backlog {
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(started.elapsed() < Duration::from_secs(300), "the backlog never drained");
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "backlog of {backlog} for a returning receiver drained in {took:.2} s: {:.0} deliveries/s",
            backlog as f64 / took
        );
    });
}
