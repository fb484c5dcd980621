//! `cargo bench -p crossgate-policy`: one query decision against the shipped catalog.

use chrono::NaiveDate;
use criterion::{Criterion, criterion_group, criterion_main};
use crossgate_policy::Ask;
use crossgate_schema::Registry;
use std::hint::black_box;

use crossgate_testing::{PARTNERS, ROOT};

fn bench(c: &mut Criterion) {
    let registry = Registry::load_dir(format!("{ROOT}/schemas")).expect("schemas");
    let file = format!("{ROOT}/deploy/local/catalog.toml");
    let text = std::fs::read_to_string(&file).expect("catalog");
    let policy =
        crossgate_policy::compile(&file, &text, PARTNERS, &registry).expect("catalog compiles");
    let today = NaiveDate::from_ymd_opt(2026, 11, 22).expect("date");
    c.bench_function("decide query (conditional, with approval)", |b| {
        b.iter(|| {
            policy
                .decide_query(
                    &Ask {
                        consumer: black_box("education"),
                        provider: "public-security",
                        record_type: "household.v1",
                        purpose: "school-enrolment",
                        approval: Some("EDU-2025-0001"),
                        criteria: &[("/household_id", "11010567397679")],
                    },
                    today,
                )
                .is_ok()
        })
    });
    c.bench_function("decide query (denied: wrong purpose)", |b| {
        b.iter(|| {
            policy
                .decide_query(
                    &Ask {
                        consumer: black_box("education"),
                        provider: "public-security",
                        record_type: "person.v1",
                        purpose: "marketing",
                        approval: None,
                        criteria: &[("/id_number", "540202198107103540")],
                    },
                    today,
                )
                .is_err()
        })
    });
    let key = crossgate_policy::ReferenceKey::new(&[7; 32]).expect("key");
    c.bench_function("opaque record reference (HMAC-SHA-256, 32 hex)", |b| {
        b.iter(|| {
            key.reference(
                black_box("education"),
                "public-security",
                "person.v1",
                "110105198405049582",
            )
        })
    });
    c.bench_function("publish routes", |b| {
        b.iter(|| {
            policy
                .publish_routes(black_box("customs"), "customs-declaration.v1", today)
                .map(|r| r.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
