//! Bounded work, bounded log: requests built to blow up a reply or an
//! audit entry get a bounded answer and leave a bounded entry.

mod common;
use crossgate_broker::audit::Decision;
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::*;
use tonic::Code;
use tonic_types::StatusExt;

async fn start() -> LocalSystem {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec!["public-security".into()]);
    LocalSystem::start(opts).await.unwrap()
}

fn log(sys: &LocalSystem) -> Vec<crossgate_broker::audit::Entry> {
    sys.memory_audit.as_ref().unwrap().entries()
}

/// A valid customs declaration published under `record_id`.
fn declaration(record_id: &str) -> PublishRequest {
    let declaration = serde_json::json!({
        "declaration_id": "440663864056324842", "direction": "import",
        "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508",
        "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"},
        "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191,
                   "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}],
    });
    PublishRequest {
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: record_id.into(),
            json: serde_json::to_vec(&declaration).unwrap(),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_with_thousands_of_faults_gets_a_bounded_reply_and_entry() {
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let goods: Vec<serde_json::Value> = (0..5000).map(|_| serde_json::json!({})).collect();
    let record = serde_json::json!({
        "declaration_id": "440663864056324842", "direction": "import",
        "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA",
        "goods": goods,
    });
    let status = customs
        .publish(PublishRequest {
            record: Some(Record {
                record_type: "customs-declaration.v1".into(),
                record_id: "D-1".into(),
                json: serde_json::to_vec(&record).unwrap(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations.len(), 101, "100 faults and a count of the rest");
    assert!(violations[100].description.contains("more faults"));
    assert!(status.message().len() < 4096, "{}", status.message().len());
    assert!(status.message().contains("more"), "{}", status.message());
    let entry = log(&sys).pop().unwrap();
    assert_eq!(entry.decision, Decision::Invalid);
    assert!(
        entry.reason.len() < 4096,
        "an entry of {} bytes",
        entry.reason.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_or_forged_fields_are_refused_before_they_reach_the_log() {
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let huge_id = "9".repeat(3 * 1024 * 1024);
    let status = customs
        .publish(PublishRequest {
            record: Some(Record {
                record_type: "customs-declaration.v1".into(),
                record_id: huge_id,
                json: b"{}".to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "record_id is 3145728 bytes; at most 128");
    let entry = log(&sys).pop().unwrap();
    assert!(entry.record_id.is_empty(), "the id never reaches the log");

    let mut education =
        BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    let ask = |purpose: &str, criteria: usize| QueryRequest {
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        purpose: purpose.into(),
        criteria: (0..criteria)
            .map(|_| Criterion {
                path: "/id_number".into(),
                value: "540202198107103540".into(),
            })
            .collect(),
        ..Default::default()
    };
    for (request, said) in [
        (
            ask(
                "school-enrolment\n2026-11-22T09:00:00Z query tax allowed",
                1,
            ),
            "purpose holds a control character; write it without",
        ),
        (ask(&"p".repeat(65), 1), "purpose is 65 bytes; at most 64"),
        (ask("school-enrolment", 9), "9 criteria; at most 8"),
    ] {
        let status = education.query(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), said);
    }
    assert!(
        log(&sys)
            .iter()
            .all(|e| !e.purpose.contains('\n') && e.purpose.len() <= 64),
        "no forged or oversized purpose in the log"
    );
    // Within the bounds, the same query is answered.
    assert!(education.query(ask("school-enrolment", 1)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_flood_leaves_a_handful_of_counted_entries() {
    let limits = crossgate_limits::parse_config(
        "limits.toml",
        "[default]\nrate = \"1/min\"\nburst = 1\n",
        &["education"],
    )
    .unwrap();
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec![]);
    opts.limiter = Some(std::sync::Arc::new(crossgate_limits::Limits::new(limits)));
    let sys = LocalSystem::start(opts).await.unwrap();
    let education = BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    let calls: Vec<_> = (0..500)
        .map(|_| {
            let mut c = education.clone();
            tokio::spawn(async move {
                c.query(QueryRequest {
                    provider: "tax".into(),
                    record_type: "person.v1".into(),
                    purpose: "x".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
                .code()
            })
        })
        .collect();
    let mut throttled = 0;
    for call in calls {
        if call.await.unwrap() == Code::ResourceExhausted {
            throttled += 1;
        }
    }
    assert_eq!(throttled, 499);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let entries: Vec<_> = log(&sys)
        .into_iter()
        .filter(|e| e.decision == Decision::Throttled)
        .collect();
    assert!(
        !entries.is_empty() && entries.len() <= 3,
        "{} entries",
        entries.len()
    );
    let counted: u64 = entries
        .iter()
        .map(|e| e.reason.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 499, "every throttled call is counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_are_dropped_and_a_legitimate_call_still_answers() {
    // A copy of deploy/local with a short handshake timeout.
    let dir = crossgate_testing::TempDir::new("hostile-handshakes");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &dir);
    let toml = dir.join("broker.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!("{text}\n[server]\nhandshake_timeout = \"1s\"\n"),
    )
    .unwrap();
    let mut opts = Options::project_defaults();
    opts.config = dir.to_path_buf();
    opts.departments = Some(vec!["public-security".into()]);
    let sys = LocalSystem::start(opts).await.unwrap();

    // 2,000 connections that never say a word.
    let mut stalled = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = tokio::net::TcpStream::connect(&sys.broker_addr).await {
            stalled.push(s);
        }
    }
    assert!(stalled.len() >= 500, "only {} connected", stalled.len());
    // They came from 127.0.0.1 and hold its share of connections (the rest
    // were closed at once); a department from another address is served.
    let started = std::time::Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", sys.broker_addr))
        .unwrap()
        .local_address(Some([127, 0, 0, 2].into()))
        .tls_config(sys.bundle("education").unwrap().client())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut education = BrokerClient::new(channel);
    let answer = education.query(common::person_lookup()).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    // After the handshake timeout every stalled connection was closed.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut closed = 0;
    for s in &mut stalled {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(
            std::time::Duration::from_millis(5),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, stalled.len(), "every stalled connection is closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amplification_record_is_refused_before_validation() {
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    // 300,000 empty goods items: 900 KB that once made a 25 MB entry.
    let json = format!(
        "{{\"declaration_id\":\"440663864056324842\",\"direction\":\"import\",\"declared_on\":\"2025-07-22\",\"trader_uscc\":\"91110105MAMLQQMQFA\",\"goods\":[{}]}}",
        vec!["{}"; 300_000].join(",")
    );
    let status = customs
        .publish(PublishRequest {
            record: Some(Record {
                record_type: "customs-declaration.v1".into(),
                record_id: "D-2".into(),
                json: json.into_bytes(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("an array of more items; at most 5000"),
        "{}",
        status.message()
    );
    let entry = log(&sys).pop().unwrap();
    assert!(entry.reason.len() < 200, "{}", entry.reason);
}

/// A gRPC server on loopback holding `bundle`'s certificate and serving
/// nothing but health: a call that reaches it gets UNIMPLEMENTED.
async fn impostor(bundle: crossgate_tls::Bundle) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_reporter, health) = crossgate_proto::standard::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(bundle.server())
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_hands_nothing_to_a_broker_impostor() {
    use crossgate_proto::ingress_server::Ingress;
    let sys = start().await;
    // Education's certificate, from the deployment's own CA, posing as the broker.
    let fake = impostor(sys.bundle("education").unwrap()).await;
    let registry = std::sync::Arc::new(
        crossgate_schema::Registry::load_dir(crossgate_testing::root().join("schemas")).unwrap(),
    );
    let customs = sys.bundle("customs").unwrap();
    let adapter_towards = |tls: tonic::transport::ClientTlsConfig| {
        let mapping = crossgate_adapter::config::load_department(
            &crossgate_testing::deploy_local(),
            "customs",
            &registry,
        )
        .unwrap();
        crossgate_adapter::Adapter::new(
            mapping,
            registry.clone(),
            crossgate_adapter::lazy_tls_channel(&format!("https://{fake}"), Some(tls)).unwrap(),
            crossgate_adapter::lazy_channel("http://127.0.0.1:9").unwrap(),
        )
    };
    let submit = || {
        tonic::Request::new(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: crossgate_testing::fixture_line("customs", "declarations.valid.jsonl", 0),
            }),
            ..Default::default()
        })
    };
    // Checking only the CA, the declaration would have reached the impostor.
    let naive = adapter_towards(customs.client())
        .submit(submit())
        .await
        .unwrap_err();
    assert_eq!(naive.code(), Code::Unimplemented, "{naive:?}");
    // Checking that the server is the broker, it never does.
    let checked = adapter_towards(customs.client_for("broker"))
        .submit(submit())
        .await
        .unwrap_err();
    assert_eq!(checked.code(), Code::Unavailable, "{checked:?}");
}

/// A server holding `holding`'s certificate on the adapter address of
/// `party` (whose adapter is not started), serving only health checks: a
/// call that reached it would be answered UNIMPLEMENTED.
async fn adapter_impostor(sys: &LocalSystem, party: &str, holding: &str) {
    let address = sys
        .partners
        .iter()
        .find(|p| p.id == party)
        .and_then(|p| p.adapter.clone())
        .unwrap();
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    let (reporter, health) = crossgate_proto::standard::health_reporter();
    let server = tonic::transport::Server::builder()
        .tls_config(sys.bundle(holding).unwrap().server())
        .unwrap()
        .add_service(health)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(async move {
        let _reporter = reporter;
        server.await
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_delivers_nothing_to_an_adapter_impostor() {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec!["customs".into(), "commerce".into()]);
    let sys = LocalSystem::start(opts).await.unwrap();
    // Commerce's certificate, serving on border inspection's address.
    adapter_impostor(&sys, "border-inspection", "commerce").await;
    let mut customs = crossgate_proto::ingress_client::IngressClient::new(
        sys.channel(&sys.adapter_addrs["customs"], "customs")
            .await
            .unwrap(),
    );
    let reply = customs
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: crossgate_testing::fixture_line("customs", "declarations.valid.jsonl", 1),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let to_border = reply
        .deliveries
        .iter()
        .find(|d| d.receiver == "border-inspection")
        .unwrap();
    assert_eq!(to_border.outcome, "queued", "{to_border:?}");
    // It failed at the handshake (Unavailable), never reaching the
    // impostor's server (which would answer Unimplemented).
    assert!(
        to_border.detail.ends_with("answered Unavailable"),
        "{to_border:?}"
    );
}

/// A party whose certificate the CA revoked (broker.toml's `crls`) is
/// refused by the broker, though the certificate still chains to the CA;
/// the other parties are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused() {
    let dir = crossgate_testing::TempDir::new("hostile-crl");
    crossgate_testing::config_copy(&dir);
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = crossgate_tls::DevCa::new("hostile CA").unwrap();
    let ids: Vec<String> = crossgate_broker::deployment::read_partners(&dir)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .chain(["broker".to_owned()])
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ca.write_folder(&certs, &ids).unwrap();
    let education = std::fs::read_to_string(certs.join("education.pem")).unwrap();
    let crl = certs.join("revoked.crl.pem");
    std::fs::write(&crl, ca.revocation_list(&[&education]).unwrap()).unwrap();
    let toml = std::fs::read_to_string(dir.join("broker.toml")).unwrap();
    std::fs::write(
        dir.join("broker.toml"),
        format!("crls = [\"{}\"]\n{toml}", crl.display()),
    )
    .unwrap();
    let mut opts = Options::project_defaults();
    opts.config = dir.to_path_buf();
    opts.certs = Some(certs.clone());
    opts.departments = Some(vec!["public-security".into()]);
    let sys = LocalSystem::start(opts).await.unwrap();
    let list = |id: &'static str| {
        let sys = &sys;
        async move {
            let channel = sys.channel(&sys.broker_addr, id).await.unwrap();
            BrokerClient::new(channel)
                .list_schemas(ListSchemasRequest {})
                .await
        }
    };
    let refused = list("education").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        refused.message(),
        "education: the certificate was revoked by the CA"
    );
    list("tax").await.expect("tax's certificate stands");
}

/// The local system, with `departments`' adapters, from a copy of
/// deploy/local whose broker holds each partner to `cap` calls under way;
/// the copy lives as long as the folder returned.
async fn start_capped(
    cap: usize,
    departments: &[&str],
) -> (crossgate_testing::TempDir, LocalSystem) {
    let dir = crossgate_testing::TempDir::new("hostile-capped");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &dir);
    let toml = dir.join("broker.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let capped = text.replace(
        "calls_in_flight_per_partner = 1024",
        &format!("calls_in_flight_per_partner = {cap}"),
    );
    assert_ne!(capped, text, "deploy/local/broker.toml sets the cap");
    std::fs::write(&toml, capped).unwrap();
    let mut opts = Options::project_defaults();
    opts.config = dir.to_path_buf();
    opts.departments = Some(departments.iter().map(|d| d.to_string()).collect());
    let sys = LocalSystem::start(opts).await.unwrap();
    (dir, sys)
}

/// A partner that hangs up on every call, to pile up work the broker goes
/// on with after each caller went away, is held to its cap of calls under
/// way (`calls_in_flight_per_partner`): the work of calls it gave up on
/// counts until it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_that_hangs_up_on_every_call_is_held_to_its_calls_under_way() {
    let (_dir, sys) = start_capped(3, &["public-security"]).await;
    sys.systems["public-security"].answer_finds_after(std::time::Duration::from_millis(1500));
    let query = || common::person_lookup();
    let mut education =
        BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            education.query(query()),
        )
        .await;
        assert!(gave_up.is_err(), "the provider takes 1.5 s");
    }
    // Each of the three reached the provider before its client gave up.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sys.systems["public-security"].slow_answers_begun() < 3 {
        assert!(std::time::Instant::now() < until, "the finds never began");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // No call of education's is open now, but three of its queries are
    // still being worked on: a fourth is refused at once.
    let started = std::time::Instant::now();
    let status = education.query(query()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("education has 3 calls under way"),
        "{}",
        status.message()
    );
    assert!(status.get_details_retry_info().is_some());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // Other partners are not held back by education's calls.
    let mut tax = BrokerClient::new(sys.channel(&sys.broker_addr, "tax").await.unwrap());
    let other = tax.query(query()).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");

    // The three finish, are audited, and free their slots.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let allowed = || {
        log(&sys)
            .iter()
            .filter(|e| e.decision == Decision::Allowed && e.consumer == "education")
            .count()
    };
    while allowed() < 3 {
        assert!(std::time::Instant::now() < until, "{:?}", log(&sys));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sys.systems["public-security"].answer_finds_after(std::time::Duration::ZERO);
    // A slot is freed just after its entry is written: a moment later at most.
    let answer = loop {
        match education.query(query()).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < until, "{s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            answer => break answer,
        }
    };
    assert!(answer.is_ok(), "{answer:?}");
    // The refusal reached the log counted, as a throttled call, in words
    // of its own cause.
    while !log(&sys).iter().any(|e| {
        e.decision == Decision::Throttled
            && e.consumer == "education"
            && e.reason.contains("education has 3 calls under way")
    }) {
        assert!(std::time::Instant::now() < until, "{:?}", log(&sys));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The same for Publish: a publish waits for its receivers' first attempts,
/// and one whose publisher hung up goes on waiting with its slot held.
#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_that_hangs_up_on_every_call_is_held_to_its_calls_under_way() {
    let (_dir, sys) = start_capped(2, &["border-inspection", "commerce"]).await;
    let receivers = ["border-inspection", "commerce"];
    for r in receivers {
        sys.systems[r].answer_receives_after(std::time::Duration::from_millis(1500));
    }
    // Declarations of their own: never versions of one record, which
    // would wait for each other.
    let declaration = |n: u32| {
        PublishRequest {
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: format!("D-{n}"),
            json: format!(
                r#"{{"declaration_id": "44066386405632484{n}", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "transport": {{"mode": "road"}}, "goods": [{{"line": 1, "hs_code": "6746284797", "quantity": 1, "unit": "kg"}}]}}"#
            )
            .into_bytes(),
        }),
        ..Default::default()
    }
    };
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    for n in 1..=2 {
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            customs.publish(declaration(n)),
        )
        .await;
        assert!(gave_up.is_err(), "the receivers take 1.5 s");
    }
    // Both reached both receivers before their publisher gave up on them.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let begun = || -> u64 {
        receivers
            .iter()
            .map(|r| sys.systems[*r].slow_answers_begun())
            .sum()
    };
    while begun() < 4 {
        assert!(
            std::time::Instant::now() < until,
            "{} receives began",
            begun()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let status = customs.publish(declaration(3)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("customs has 2 calls under way"),
        "{}",
        status.message()
    );

    // The two are delivered and free their slots; the third is then taken.
    for r in receivers {
        sys.systems[r].answer_receives_after(std::time::Duration::ZERO);
    }
    let answer = loop {
        match customs.publish(declaration(3)).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < until, "{s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            answer => break answer,
        }
    };
    assert!(answer.is_ok(), "{answer:?}");
    for r in receivers {
        while sys.systems[r].received().len() < 3 {
            assert!(
                std::time::Instant::now() < until,
                "{r} got {:?}",
                sys.systems[r].received().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    while !log(&sys).iter().any(|e| {
        e.decision == Decision::Throttled
            && e.consumer == "customs"
            && e.reason.contains("customs has 2 calls under way")
    }) {
        assert!(std::time::Instant::now() < until, "{:?}", log(&sys));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A partner that reaches a provider's adapter with its own certificate and
/// asks it directly, by a call or over a fetch stream, to skip the broker's
/// grants: refused either way, and nothing of the provider's is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_cannot_fetch_from_an_adapter_directly_by_call_or_stream() {
    use crossgate_proto::department_client::DepartmentClient;
    let sys = start().await;
    let mut education = DepartmentClient::new(
        sys.channel(&sys.adapter_addrs["public-security"], "education")
            .await
            .unwrap(),
    );
    let fetch = FetchRequest {
        request_id: "r".into(),
        consumer: "education".into(),
        record_type: "person.v1".into(),
        purpose: "school-enrolment".into(),
        criteria: vec![Criterion {
            path: "/id_number".into(),
            value: "14030219890903420X".into(),
        }],
        limit: 0,
    };
    let by_call = education.fetch(fetch.clone()).await.unwrap_err();
    assert_eq!(by_call.code(), Code::PermissionDenied, "{by_call:?}");

    let (send, messages) = tokio::sync::mpsc::channel(1);
    send.send(FetchMessage {
        sequence: 1,
        fetch: Some(fetch),
        traceparent: String::new(),
        timeout_millis: 5_000,
    })
    .await
    .unwrap();
    let by_stream = match education
        .fetch_stream(tokio_stream::wrappers::ReceiverStream::new(messages))
        .await
    {
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            match answers.message().await {
                Err(status) => status,
                Ok(answer) => panic!("the adapter answered education's stream: {answer:?}"),
            }
        }
    };
    assert_eq!(by_stream.code(), Code::PermissionDenied, "{by_stream:?}");
    assert!(
        !by_stream.message().contains("1989"),
        "{:?}",
        by_stream.message()
    );

    // The broker's own fetches still pass: education's query through it.
    let mut through_broker =
        BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    let answer = through_broker
        .query(common::person_lookup())
        .await
        .expect("the broker's fetch stream is the broker's")
        .into_inner();
    assert_eq!(answer.records.len(), 1);
}

/// A server with another party's certificate on a provider's address: the
/// broker's fetch fails at the handshake, over the stream as over a call,
/// so nothing the impostor says can become an answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_fetches_nothing_from_an_adapter_impostor() {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec![]);
    let sys = LocalSystem::start(opts).await.unwrap();
    adapter_impostor(&sys, "public-security", "commerce").await;
    let mut education =
        BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    let status = education.query(common::person_lookup()).await.unwrap_err();
    // Unavailable: the handshake failed. Had the impostor been reached, it
    // would have answered Unimplemented, and the query Internal.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("public-security's adapter cannot be reached"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_id_holding_the_logs_separator_is_logged_as_one_id() {
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    // Were it written as given, a search for "D-1" or for "D-2" would find
    // this record, which is neither.
    customs.publish(declaration("D-1,D-2 50%")).await.unwrap();
    let entries: Vec<_> = log(&sys)
        .into_iter()
        .filter(|e| e.provider == "customs")
        .collect();
    // Its two receivers' adapters are not running: an entry each, queued.
    let mut queued_for: Vec<&str> = entries
        .iter()
        .filter(|e| e.decision == Decision::Allowed)
        .map(|e| e.consumer.as_str())
        .collect();
    queued_for.sort();
    assert_eq!(queued_for, ["border-inspection", "commerce"]);
    // Each entry holds the id's digest, one member, never the id.
    let digest = sys.record_ids.digest("D-1,D-2 50%");
    for field in entries.iter().map(|e| e.record_id.as_str()) {
        assert_eq!(field, digest);
        let ids: Vec<_> = crossgate_audit::split_record_ids(field).collect();
        assert_eq!(ids, [digest.as_str()]);
    }
    assert_ne!(digest, sys.record_ids.digest("D-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_entry_holds_a_record_id_whichever_path_wrote_it() {
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let publish = declaration("440663864056324842");
    // The publish, queued for its two receivers (not running), then the
    // same publish again: a repeat's entry is made inside the log's writer.
    customs.publish(publish.clone()).await.unwrap();
    customs.publish(publish).await.unwrap();
    // A query answered with a citizen's record.
    let mut education =
        BrokerClient::new(sys.channel(&sys.broker_addr, "education").await.unwrap());
    education.query(common::person_lookup()).await.unwrap();
    let entries = log(&sys);
    assert!(
        entries
            .iter()
            .any(|e| e.reason.starts_with("repeat of request")),
        "{entries:?}"
    );
    let person = &common::person_lookup().criteria[0].value;
    let answered = entries
        .iter()
        .find(|e| e.consumer == "education" && e.decision == Decision::Allowed)
        .expect("the query's entry");
    assert_eq!(answered.record_id, sys.record_ids.digest(person));
    let everything = format!("{entries:?}");
    for id in ["440663864056324842", person.as_str()] {
        assert!(!everything.contains(id), "{id} in {everything}");
    }
    // Every entry of the declaration (releases, the repeat, the delivery
    // attempts that failed) names it by its digest.
    let declaration_digest = sys.record_ids.digest("440663864056324842");
    let of_customs: Vec<_> = entries.iter().filter(|e| e.provider == "customs").collect();
    assert!(
        of_customs.iter().all(|e| e.record_id == declaration_digest),
        "{of_customs:?}"
    );
    assert_eq!(
        of_customs
            .iter()
            .filter(|e| e.decision == Decision::Allowed)
            .count(),
        3,
        "two receivers' releases and the repeat: {of_customs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_durable_log_names_a_repeated_publish_by_its_digest_too() {
    // A repeat's entry is made on the durable log's writer thread, from the
    // claim the store already holds: the digests reach it there as well.
    let dir = crossgate_testing::TempDir::new("repeat-digest");
    let store = format!("sqlite:{}", dir.join("audit.db").display());
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec!["public-security".into()]);
    opts.audit_store = Some(store.clone());
    opts.state_dir = Some(dir.join("state"));
    let sys = LocalSystem::start(opts).await.unwrap();
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let publish = declaration("D-REPEAT-7");
    customs.publish(publish.clone()).await.unwrap();
    customs.publish(publish).await.unwrap();
    sys.stop().await;
    let mut entries = Vec::new();
    crossgate_audit::open(&store)
        .unwrap()
        .scan(&crossgate_audit::Filter::default(), &mut |s| {
            entries.push(s.entry);
            true
        })
        .unwrap();
    let repeat = entries
        .iter()
        .find(|e| e.reason.starts_with("repeat of request"))
        .unwrap_or_else(|| panic!("no repeat entry: {entries:?}"));
    assert_eq!(repeat.record_id, sys.record_ids.digest("D-REPEAT-7"));
    assert!(
        !format!("{entries:?}").contains("D-REPEAT-7"),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_cannot_forge_another_records_digest_as_its_id() {
    // A publisher that learnt the digest of a citizen's record id and
    // publishes under it as its own id: its entries hold the digest of what
    // it sent, so a search for the citizen's record never finds them.
    let sys = start().await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let citizens = sys.record_ids.digest("110105198405049582");
    customs.publish(declaration(&citizens)).await.unwrap();
    let entries: Vec<_> = log(&sys)
        .into_iter()
        .filter(|e| e.provider == "customs")
        .collect();
    assert!(!entries.is_empty());
    for e in &entries {
        assert_eq!(e.record_id, sys.record_ids.digest(&citizens), "{e:?}");
        assert_ne!(e.record_id, citizens);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_party_calling_another_roles_service_is_denied_and_logged_counted() {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec![]);
    let sys = LocalSystem::start(opts).await.unwrap();
    // A partner reading the log, 200 times over.
    let tax = crossgate_proto::audit_client::AuditClient::new(
        sys.channel(&sys.broker_addr, "tax").await.unwrap(),
    );
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut c = tax.clone();
            tokio::spawn(async move {
                c.search(SearchRequest::default())
                    .await
                    .err()
                    .map(|s| (s.code(), s.message().to_owned()))
            })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            Some((
                Code::PermissionDenied,
                "tax has the role partner; this call needs the role auditor".into()
            ))
        );
    }
    // An auditor changing a limit, and an operator querying.
    let mut auditor = crossgate_proto::admin_client::AdminClient::new(
        sys.channel(&sys.broker_addr, "audit-office").await.unwrap(),
    );
    let refused = auditor
        .set_limit(SetLimitRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut operator =
        BrokerClient::new(sys.channel(&sys.broker_addr, "operations").await.unwrap());
    let refused = operator.query(QueryRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // And publishing: logged as the publish it was, not as a query.
    let refused = operator
        .publish(PublishRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Counted into the log within the second, a handful of entries for 200 calls.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let denied: Vec<_> = log(&sys)
        .into_iter()
        .filter(|e| e.decision == Decision::Denied)
        .collect();
    let count = |e: &crossgate_broker::audit::Entry| {
        e.reason.split(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let from_tax: Vec<_> = denied.iter().filter(|e| e.consumer == "tax").collect();
    assert!(
        !from_tax.is_empty() && from_tax.len() <= 3,
        "{} entries",
        from_tax.len()
    );
    assert!(
        from_tax
            .iter()
            .all(|e| e.kind == crossgate_broker::audit::Kind::Audit
                && e.reason.contains(" call(s) refused from ")
                && e.reason
                    .ends_with("tax has the role partner; this call needs the role auditor")),
        "{from_tax:?}"
    );
    assert_eq!(from_tax.iter().map(|e| count(e)).sum::<u64>(), 200);
    let one = |party: &str, kind| {
        let of: Vec<_> = denied
            .iter()
            .filter(|e| e.consumer == party && e.kind == kind)
            .collect();
        assert_eq!(of.len(), 1, "{party} {kind:?}: {denied:?}");
        assert_eq!(count(of[0]), 1, "{party} {kind:?}");
    };
    one("audit-office", crossgate_broker::audit::Kind::Admin);
    one("operations", crossgate_broker::audit::Kind::Query);
    one("operations", crossgate_broker::audit::Kind::Publish);
    let by = |party: &str| denied.iter().filter(|e| e.consumer == party).count();
    assert_eq!((by("audit-office"), by("operations")), (1, 2), "{denied:?}");
}
