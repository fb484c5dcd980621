//! `cargo bench -p crossgate-broker --bench steps`: each step of the
//! broker's query path alone, on the shipped configuration and education's
//! person lookup (the call `crossgate bench query` and the perf pipeline
//! load): authenticate, limit, validate, authorise, project, audit encode.
//! Run with the allocator the `crossgate` binary uses.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use crossgate_audit::entry::{Decision, Entry, Kind, Stored};
use crossgate_policy::{Ask, ReferenceKey};
use crossgate_proto::{Criterion as Lookup, QueryRequest, Record};
use crossgate_schema::Registry;
use crossgate_testing::{PARTNERS, ROOT};
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).expect(path)
}

fn bench(c: &mut Criterion) {
    let registry = Registry::load_dir(format!("{ROOT}/schemas")).expect("schemas");
    let mut group = c.benchmark_group("broker step");

    // 1. authenticate: who a client certificate names.
    let ca = crossgate_tls::DevCa::new("bench CA").expect("CA");
    let (pem, _key) = ca.issue("education", 1, 30).expect("certificate");
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents;
    let chain = vec![tonic::transport::CertificateDer::from(der)];
    let identities = crossgate_tls::peers::Identities::new(None);
    group.bench_function("authenticate (certificate remembered)", |b| {
        b.iter(|| identities.identify(Some(black_box(&chain))).is_ok())
    });
    group.bench_function("authenticate (X.509 parsed each call, as before)", |b| {
        b.iter(|| crossgate_tls::peer_identity(black_box(&chain)).is_some())
    });

    // 2. limit: one token from education's query bucket.
    let limits = crossgate_limits::parse_config(
        "limits.toml",
        "[default]\nrate = \"1000000000/s\"\nburst = 1000000000\n",
        PARTNERS,
    )
    .expect("limits");
    let limiter = crossgate_limits::Limits::new(limits);
    group.bench_function("limit", |b| {
        b.iter(|| {
            limiter
                .check(black_box("education"), crossgate_limits::Mode::Query)
                .is_ok()
        })
    });

    // 3. validate: public-security's answer, a canonical person record.
    let mapping_text = read("deploy/local/departments/public-security.toml");
    let department =
        crossgate_mapping::compile("public-security.toml", &mapping_text, &registry).expect("map");
    let native: serde_json::Value = serde_json::from_str(
        read("deploy/local/fixtures/public-security/persons.valid.jsonl")
            .lines()
            .next()
            .expect("a person"),
    )
    .expect("json");
    let person = department
        .native("persons")
        .expect("persons")
        .inbound(&native, &registry)
        .expect("maps")
        .document;
    let person_bytes = serde_json::to_vec(&person).expect("json");
    group.bench_function("validate (parse + check a person record)", |b| {
        b.iter(|| {
            registry
                .parse_and_validate("person.v1", black_box(&person_bytes))
                .is_ok()
        })
    });

    // 4. authorise: the grant for education's lookup.
    let catalog = read("deploy/local/catalog.toml");
    let policy =
        crossgate_policy::compile("catalog.toml", &catalog, PARTNERS, &registry).expect("catalog");
    let today = policy.today(chrono::Utc::now());
    let ask = Ask {
        consumer: "education",
        provider: "public-security",
        record_type: "person.v1",
        purpose: "school-enrolment",
        approval: None,
        criteria: &[("/id_number", "110105198405049582")],
    };
    group.bench_function("authorise (decide the query)", |b| {
        b.iter(|| policy.decide_query(black_box(&ask), today).is_ok())
    });

    // 5. project: screen the answer (validate, match, project, mask,
    //    reference) as the consumer receives it.
    let release = policy.decide_query(&ask, today).expect("granted");
    let key = ReferenceKey::new(&[7; 32]).expect("key");
    let query = QueryRequest {
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        purpose: "school-enrolment".into(),
        criteria: vec![Lookup {
            path: "/id_number".into(),
            value: "110105198405049582".into(),
        }],
        approval_reference: String::new(),
    };
    let answer = vec![Record {
        record_type: "person.v1".into(),
        record_id: "110105198405049582".into(),
        json: person_bytes.clone(),
    }];
    group.bench_function(
        "project (screen the answer: validate, match, project, mask)",
        |b| {
            b.iter_batched(
                || answer.clone(),
                |records| {
                    crossgate_broker::release::screen(&registry, &release, &key, &query, records)
                        .records
                        .len()
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.bench_function("project (projection and reference alone)", |b| {
        b.iter(|| {
            crossgate_broker::release::released(
                &release,
                &key,
                "person.v1",
                "110105198405049582",
                black_box(&person),
            )
        })
    });

    // 6. audit encode: bound and seal the query's entry onto the chain.
    let entry = Entry {
        time: "2026-11-23T06:30:00.123456Z".into(),
        request_id: "1795412345678901-42".into(),
        kind: Kind::Query,
        consumer: "education".into(),
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        record_id: "110105198405049582".into(),
        purpose: "school-enrolment".into(),
        approval_reference: String::new(),
        decision: Decision::Allowed,
        reason: format!("grant {}", release.grant.id),
        released_fields: release.field_paths(),
        record_digest: crossgate_broker::audit::digest(&person_bytes),
        latency_micros: 1234,
    };
    group.bench_function("audit encode (bound, hash, seal an entry)", |b| {
        b.iter_batched(
            || entry.clone(),
            |e| Stored::seal("broker-1", 42, [9; 32], e.bounded()).entry_hash,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
