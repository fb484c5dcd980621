//! The customs bench's whole pipeline (parse, map, validate, serialise) in a
//! plain loop, for counting instructions per record with callgrind, which is
//! repeatable where wall-clock timings on a shared machine are not:
//!
//! ```text
//! cargo build --release -p crossgate-mapping --example map_customs_loop
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/map_customs_loop 20000
//! ```
//!
//! Instructions per record = (total of the run − total with 0 records) / records.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let registry =
        crossgate_schema::Registry::load_dir(format!("{root}/schemas")).expect("schemas load");
    let file = format!("{root}/deploy/local/departments/customs.toml");
    let text = std::fs::read_to_string(&file).expect("customs config");
    let dept = crossgate_mapping::compile(&file, &text, &registry).expect("compiles");
    let mapping = dept.native("declarations").expect("declarations mapping");
    let fixtures = std::fs::read_to_string(format!(
        "{root}/deploy/local/fixtures/customs/declarations.valid.jsonl"
    ))
    .expect("customs fixture");
    let native = fixtures.lines().next().expect("a declaration").as_bytes();
    let mut bytes = 0;
    for _ in 0..records {
        let doc: serde_json::Value =
            serde_json::from_slice(std::hint::black_box(native)).expect("json");
        let mapped = mapping.inbound_owned(doc, &registry).expect("valid");
        bytes += mapped.to_json(native.len()).len();
    }
    println!("{records} records, {bytes} canonical bytes");
}
