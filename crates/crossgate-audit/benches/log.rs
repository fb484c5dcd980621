//! `cargo bench -p crossgate-audit`: durable appends through group commit on
//! SQLite, and verifying a chain.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossgate_audit::{Decision, Durability, Entry, SqliteStore, Stored, Verifier, Writer, digest};

fn entry(n: u64) -> Entry {
    Entry {
        time: "2026-11-22T08:00:00.000000Z".into(),
        request_id: format!("r-{n}"),
        kind: crossgate_audit::Kind::Query,
        consumer: "education".into(),
        provider: "public-security".into(),
        record_type: "household.v1".into(),
        record_id: n.to_string(),
        purpose: "school-enrolment".into(),
        approval_reference: "EDU-2025-0001".into(),
        decision: Decision::Allowed,
        reason: "grant education-household".into(),
        released_fields: vec![
            "/household_id".into(),
            "/registered_address".into(),
            "/members/-/name".into(),
        ],
        record_digest: digest(n.to_string().as_bytes()),
        latency_micros: 850,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("crossgate-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir.join("audit.db")).expect("store");
    let writer =
        Writer::start(Box::new(store), "bench".into(), Durability::Durable, 8192).expect("writer");

    // 1,000 concurrent callers each waiting for their own entry to be committed.
    const BATCH: u64 = 1000;
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.bench_function("durable appends, 1000 concurrent callers (SQLite)", |b| {
        b.to_async(&runtime).iter(|| {
            let writer = writer.clone();
            async move {
                let mut waits = Vec::with_capacity(BATCH as usize);
                for n in 0..BATCH {
                    let w = writer.clone();
                    waits.push(tokio::spawn(async move { w.append(entry(n)).await }));
                }
                for w in waits {
                    w.await.expect("task").expect("appended");
                }
            }
        })
    });

    const CHAIN: u64 = 100_000;
    let mut previous = [0u8; 32];
    let chain: Vec<Stored> = (1..=CHAIN)
        .map(|n| {
            let s = Stored::seal("bench", n, previous, entry(n));
            previous = s.entry_hash;
            s
        })
        .collect();
    group.throughput(Throughput::Elements(CHAIN));
    group.sample_size(10);
    group.bench_function("verify a 100,000-entry chain (in memory)", |b| {
        b.iter(|| {
            let mut v = Verifier::new();
            for s in &chain {
                v.feed(s);
            }
            v.finish_range()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
