//! `cargo bench -p crossgate-mapping`: a customs declaration from native JSON
//! bytes to validated canonical JSON bytes (parse, map, validate, serialise).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossgate_schema::Registry;
use std::hint::black_box;

use crossgate_testing::ROOT;

/// The allocator the `crossgate` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let registry = Registry::load_dir(format!("{ROOT}/schemas")).expect("schemas load");
    let file = format!("{ROOT}/deploy/local/departments/customs.toml");
    let text = std::fs::read_to_string(&file).expect("customs config");
    let dept =
        crossgate_mapping::compile(&file, &text, &registry).expect("customs config compiles");
    let mapping = dept.native("declarations").expect("declarations mapping");
    let fixtures = std::fs::read_to_string(format!(
        "{ROOT}/deploy/local/fixtures/customs/declarations.valid.jsonl"
    ))
    .expect("customs fixture");
    let native = fixtures
        .lines()
        .next()
        .expect("a declaration")
        .as_bytes()
        .to_vec();

    let mut group = c.benchmark_group("customs");
    group.throughput(Throughput::Elements(1));
    group.bench_function("native bytes -> validated canonical bytes", |b| {
        b.iter(|| {
            let doc: serde_json::Value = serde_json::from_slice(black_box(&native)).expect("json");
            let mapped = mapping.inbound_owned(doc, &registry).expect("valid");
            mapped.to_json(native.len())
        })
    });
    // The parts, to see where the time goes.
    let doc: serde_json::Value = serde_json::from_slice(&native).expect("json");
    let mapped = mapping.inbound(&doc, &registry).expect("valid");
    let canonical = mapped.document.clone();
    group.bench_function("part: parse native JSON", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&native)).expect("json"))
    });
    group.bench_function("part: map (no validation)", |b| {
        b.iter_batched(
            || doc.clone(),
            |d| mapping.to_canonical_owned(black_box(d)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("part: validate canonical", |b| {
        b.iter(|| {
            registry
                .validate("customs-declaration.v1", black_box(&canonical))
                .is_ok()
        })
    });
    group.bench_function("part: serialise canonical", |b| {
        b.iter(|| black_box(&mapped).to_json(native.len()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
