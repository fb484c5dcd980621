//! `cargo bench -p crossgate-local`: a full publish through the broker over
//! loopback with mutual TLS — authenticate, validate, authorise, project,
//! deliver to border inspection and commerce (their adapters map nothing and
//! hand the record to their reference systems), audit — measured from the
//! publisher's side, one call at a time.

use criterion::{Criterion, criterion_group, criterion_main};
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::{PublishRequest, Record};

const DECLARATION: &str = r#"{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}, {"line": 2, "hs_code": "3307799606", "description": "yak wool", "quantity": 108, "unit": "item", "value": {"amount": 94870.91, "currency": "CNY"}}]}"#;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (system, client) = runtime.block_on(async {
        let mut opts = Options::project_defaults();
        opts.departments = Some(vec!["border-inspection".into(), "commerce".into()]);
        // Measure the path, not the publisher's rate limit.
        opts.limiter = Some(std::sync::Arc::new(crossgate_broker::Unlimited));
        let system = LocalSystem::start(opts).await.expect("local system starts");
        let channel = system
            .channel(&system.broker_addr, "customs")
            .await
            .expect("connect");
        (system, BrokerClient::new(channel))
    });
    let request = PublishRequest {
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: "440663864056324842".into(),
            json: DECLARATION.as_bytes().to_vec(),
        }),
        ..Default::default()
    };
    c.bench_function("publish a declaration to two receivers", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                let reply = client
                    .publish(request)
                    .await
                    .expect("published")
                    .into_inner();
                assert_eq!(reply.deliveries.len(), 2);
            }
        })
    });
    drop(system);
}

criterion_group!(benches, bench);
criterion_main!(benches);
