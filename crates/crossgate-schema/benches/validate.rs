//! `cargo bench -p crossgate-schema`: parse + full validation of a typical
//! person.v1 (custom formats and cross-field rules included), and validation
//! of an already parsed one.

use criterion::{Criterion, criterion_group, criterion_main};
use crossgate_schema::Registry;
use std::hint::black_box;

const PERSON: &str = r#"{"id_number": "11010519491231002X", "name": "张秀英", "sex": "female", "birth_date": "1949-12-31", "ethnicity": "01", "registered_address": {"division_code": "110105", "text": "北京市朝阳区解放路172号"}}"#;

fn bench(c: &mut Criterion) {
    let registry = Registry::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"))
        .expect("schemas load");
    c.bench_function("person.v1 parse+validate", |b| {
        b.iter(|| {
            registry
                .parse_and_validate("person.v1", black_box(PERSON.as_bytes()))
                .is_ok()
        })
    });
    let parsed: serde_json::Value = serde_json::from_str(PERSON).expect("valid JSON");
    c.bench_function("person.v1 validate parsed", |b| {
        b.iter(|| registry.validate("person.v1", black_box(&parsed)).is_ok())
    });
    let invalid: serde_json::Value = serde_json::from_str(
        r#"{"id_number": "110105194912310021", "sex": "male", "birth_date": "1949-02-30", "ethnicity": "1"}"#,
    )
    .expect("valid JSON");
    c.bench_function("person.v1 validate invalid (4 faults)", |b| {
        b.iter(|| registry.validate("person.v1", black_box(&invalid)).is_err())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
