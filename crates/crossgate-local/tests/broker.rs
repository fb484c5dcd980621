//! The broker end to end over real loopback sockets with real certificates:
//! the local system (adapters, reference department systems, the broker) and
//! clients that present (or fail to present) certificates.

mod common;
use crossgate_broker::audit::Decision;
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::*;
use crossgate_tls::{Bundle, DevCa};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// The local system with adapters for `departments` only; the other partners'
/// adapters are down.
async fn start(departments: &[&str]) -> LocalSystem {
    let mut opts = Options::project_defaults();
    opts.departments = Some(departments.iter().map(|d| d.to_string()).collect());
    LocalSystem::start(opts).await.unwrap()
}

async fn broker_as(sys: &LocalSystem, id: &str) -> BrokerClient<Channel> {
    BrokerClient::new(sys.channel(&sys.broker_addr, id).await.unwrap())
}

fn audit(sys: &LocalSystem) -> Vec<crossgate_broker::audit::Entry> {
    sys.memory_audit.as_ref().unwrap().entries()
}

use crossgate_testing::fixture_line as fixture;

#[tokio::test]
async fn the_land_port_one_declaration_two_receivers_each_its_own_part() {
    let sys = start(&["customs", "border-inspection", "commerce"]).await;
    let mut customs = IngressClient::new(
        sys.channel(&sys.adapter_addrs["customs"], "customs")
            .await
            .unwrap(),
    );
    let reply = customs
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: fixture("customs", "declarations.valid.jsonl", 0),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<(String, String)> = reply
        .deliveries
        .iter()
        .map(|d| (d.receiver.clone(), d.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("border-inspection".into(), "delivered".into()),
            ("commerce".into(), "delivered".into())
        ]
    );
    let border = sys.systems["border-inspection"].received();
    let commerce = sys.systems["commerce"].received();
    assert_eq!(border.len(), 1);
    assert_eq!(commerce.len(), 1);
    assert_eq!(border[0].provider, "customs");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&border[0].document),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "port_code",
            "transport"
        ]
    );
    assert_eq!(
        keys(&commerce[0].document),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "goods",
            "trader_uscc"
        ]
    );
    assert_eq!(border[0].document["transport"]["vehicle_plate"], "藏D96371");

    // Each release is recorded before it is sent, then its delivery.
    let log = audit(&sys);
    let mut recorded: Vec<(&str, &str, Decision)> = log
        .iter()
        .map(|e| (e.provider.as_str(), e.consumer.as_str(), e.decision))
        .collect();
    assert_eq!(
        recorded[..2],
        [
            ("customs", "border-inspection", Decision::Allowed),
            ("customs", "commerce", Decision::Allowed),
        ]
    );
    let mut deliveries = recorded.split_off(2);
    deliveries.sort_by_key(|(_, consumer, _)| *consumer);
    assert_eq!(
        deliveries,
        [
            ("customs", "border-inspection", Decision::Delivered),
            ("customs", "commerce", Decision::Delivered),
        ]
    );
    assert_eq!(log[0].record_digest.len(), 64);
    assert!(
        !format!("{log:?}").contains("藏D96371"),
        "the audit log never holds record contents"
    );
}

#[tokio::test]
async fn an_invalid_record_never_reaches_any_receiver() {
    let sys = start(&["border-inspection", "commerce"]).await;
    let mut customs = broker_as(&sys, "customs").await;
    let bad = json!({"declaration_id": "1", "direction": "sideways", "declared_on": "2025-07-22", "trader_uscc": "91350100M000100Y43"});
    let status = customs
        .publish(PublishRequest {
            record: Some(Record {
                record_type: "customs-declaration.v1".into(),
                record_id: "1".into(),
                json: serde_json::to_vec(&bad).unwrap(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["/declaration_id", "/direction"]);
    assert!(sys.systems["border-inspection"].received().is_empty());
    assert!(sys.systems["commerce"].received().is_empty());
    assert_eq!(audit(&sys)[0].decision, Decision::Invalid);

    let status = customs
        .publish(PublishRequest {
            record: Some(Record { record_type: "person.v1".into(), record_id: "1".into(), json: br#"{"id_number":"11010519491231002X","name":"a","sex":"female","birth_date":"1949-12-31"}"#.to_vec() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the sharing catalog does not list person.v1 for customs"
    );
}

#[tokio::test]
async fn school_enrolment_query_releases_only_the_granted_fields() {
    let sys = start(&["public-security"]).await;
    let mut education = broker_as(&sys, "education").await;
    let query = |purpose: &str, approval: &str| QueryRequest {
        provider: "public-security".into(),
        record_type: "household.v1".into(),
        purpose: purpose.into(),
        approval_reference: approval.into(),
        criteria: vec![Criterion {
            path: "/household_id".into(),
            value: "11010567397679".into(),
        }],
    };
    let reply = education
        .query(query("school-enrolment", "EDU-2025-0001"))
        .await
        .unwrap()
        .into_inner();
    let doc: Value = serde_json::from_slice(&reply.records[0].json).unwrap();
    assert_eq!(
        doc["members"][0],
        json!({"id_number": "**************9582", "name": "周建华", "relation": "head"})
    );
    assert!(
        reply.withheld_fields.is_empty(),
        "{:?}",
        reply.withheld_fields
    );

    for (purpose, approval, reason) in [
        (
            "sports",
            "EDU-2025-0001",
            "grant education-household serves the purposes school-enrolment, not \"sports\"",
        ),
        ("school-enrolment", "", "an approval reference is required"),
        (
            "school-enrolment",
            "EDU-1999-0001",
            "approval EDU-1999-0001 is not on record",
        ),
    ] {
        let status = education.query(query(purpose, approval)).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{purpose} {approval}"
        );
        assert!(status.message().contains(reason), "{}", status.message());
    }
    // The identity is the certificate's: tax has no grant, whatever it sends.
    let mut tax = broker_as(&sys, "tax").await;
    let mut req = tonic::Request::new(query("school-enrolment", "EDU-2025-0001"));
    req.metadata_mut()
        .insert("x-partner", "education".parse().unwrap());
    let status = tax.query(req).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "no grant lets tax query public-security for household.v1"
    );

    let person = education
        .query(common::person_lookup())
        .await
        .unwrap()
        .into_inner();
    let doc: Value = serde_json::from_slice(&person.records[0].json).unwrap();
    assert_eq!(
        doc.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["birth_date", "name", "registered_address"]
    );
    assert_eq!(person.withheld_fields, ["/ethnicity", "/id_number", "/sex"]);

    let decisions: Vec<Decision> = audit(&sys).iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        [
            Decision::Allowed,
            Decision::Denied,
            Decision::Denied,
            Decision::Denied,
            Decision::Denied,
            Decision::Allowed
        ]
    );
    let first = &audit(&sys)[0];
    assert_eq!(
        (
            first.consumer.as_str(),
            first.purpose.as_str(),
            first.approval_reference.as_str()
        ),
        ("education", "school-enrolment", "EDU-2025-0001")
    );
}

#[tokio::test]
async fn a_provider_that_is_down_gives_unavailable_quickly() {
    let sys = start(&[]).await;
    let mut education = broker_as(&sys, "education").await;
    let started = std::time::Instant::now();
    let status = education.query(common::person_lookup()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(audit(&sys)[0].decision, Decision::Failed);
}

#[tokio::test]
async fn clients_without_a_good_certificate_are_refused() {
    let sys = start(&[]).await;
    let ca = sys.dev_ca().unwrap();
    // Another CA.
    let rogue_ca = DevCa::new("rogue").unwrap();
    let (cert_pem, key_pem) = rogue_ca.issue("education", 1, 30).unwrap();
    let rogue = Bundle {
        cert_pem,
        key_pem,
        ca_pem: ca.pem().to_owned(),
    };
    // Expired.
    let (cert_pem, key_pem) = ca.issue("education", 30, -1).unwrap();
    let expired = Bundle {
        cert_pem,
        key_pem,
        ca_pem: ca.pem().to_owned(),
    };
    // No certificate at all.
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    for (name, tls) in [
        ("other CA", rogue.client()),
        ("expired", expired.client()),
        ("none", anonymous),
    ] {
        let endpoint = Endpoint::from_shared(format!("https://{}", sys.broker_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        let result = match endpoint.connect().await {
            Err(_) => Err(Code::Unavailable),
            Ok(ch) => BrokerClient::new(ch)
                .list_schemas(ListSchemasRequest {})
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
        };
        assert!(result.is_err(), "{name}: a call went through");
    }
    // A certificate of the deployment's own CA naming two parties (an
    // operator and a partner): it names nobody, not the first of them.
    let (cert_pem, key_pem) = ca
        .issue_naming(&["operations", "education"], 1, 30)
        .unwrap();
    let two = Bundle {
        cert_pem,
        key_pem,
        ca_pem: ca.pem().to_owned(),
    };
    let channel = Endpoint::from_shared(format!("https://{}", sys.broker_addr))
        .unwrap()
        .tls_config(two.client())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for status in [
        BrokerClient::new(channel.clone())
            .list_schemas(ListSchemasRequest {})
            .await
            .unwrap_err(),
        crossgate_proto::admin_client::AdminClient::new(channel)
            .list_limits(ListLimitsRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // A known CA but an identity not in partners.toml.
    let mut stranger = broker_as(&sys, "stranger").await;
    assert_eq!(
        stranger
            .list_schemas(ListSchemasRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // An auditor is not a partner.
    let mut auditor = broker_as(&sys, "audit-office").await;
    assert_eq!(
        auditor
            .list_schemas(ListSchemasRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut ok = broker_as(&sys, "education").await;
    assert_eq!(
        ok.list_schemas(ListSchemasRequest {})
            .await
            .unwrap()
            .into_inner()
            .schemas
            .len(),
        5
    );
}

/// Submit the first valid fixture of `dept`/`file` through its adapter.
async fn submit_fixture(
    sys: &LocalSystem,
    dept: &str,
    native_type: &str,
    file: &str,
) -> SubmitResponse {
    let mut ingress =
        IngressClient::new(sys.channel(&sys.adapter_addrs[dept], dept).await.unwrap());
    ingress
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: native_type.into(),
                record_id: String::new(),
                json: fixture(dept, file, 0),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn newborn_and_business_registration_reach_each_receiver_with_its_fields() {
    let sys = start(&[
        "health",
        "public-security",
        "medical-insurance",
        "market-regulation",
        "tax",
        "human-resources",
    ])
    .await;
    let reply = submit_fixture(&sys, "health", "births", "births.valid.jsonl").await;
    assert_eq!(reply.record_type, "birth.v1");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let police = sys.systems["public-security"].received();
    assert_eq!(
        police[0].native_type, "birth.v1",
        "no native mapping for births: canonical JSON"
    );
    assert_eq!(
        keys(&police[0].document),
        ["certificate_number", "child", "father", "mother", "place"]
    );
    let insurance = sys.systems["medical-insurance"].received();
    assert_eq!(
        keys(&insurance[0].document),
        ["certificate_number", "child", "mother"]
    );

    submit_fixture(
        &sys,
        "market-regulation",
        "businesses",
        "businesses.valid.jsonl",
    )
    .await;
    let tax = sys.systems["tax"].received();
    assert_eq!(
        tax[0].document["registered_capital"],
        json!({"amount": 3000000, "currency": "CNY"})
    );
    let hr = sys.systems["human-resources"].received();
    assert_eq!(
        keys(&hr[0].document),
        [
            "address",
            "established_on",
            "kind",
            "legal_representative",
            "name",
            "status",
            "uscc"
        ]
    );
    assert_eq!(
        keys(&hr[0].document["legal_representative"]),
        ["name"],
        "the representative's id number is not released"
    );
}

#[tokio::test]
async fn a_partner_over_its_limit_is_throttled_with_retry_info_and_others_are_not() {
    let limits = crossgate_limits::parse_config(
        "limits.toml",
        "[default]\nrate = \"100/s\"\nburst = 100\n[partner.education]\nrate = \"1/min\"\nburst = 3\n",
        &["education", "tax"],
    )
    .unwrap();
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec![]);
    opts.limiter = Some(std::sync::Arc::new(crossgate_limits::Limits::new(limits)));
    let sys = LocalSystem::start(opts).await.unwrap();
    let mut education = broker_as(&sys, "education").await;
    let denied = || QueryRequest {
        provider: "tax".into(),
        record_type: "person.v1".into(),
        purpose: "x".into(),
        ..Default::default()
    };
    for _ in 0..3 {
        assert_eq!(
            education.query(denied()).await.unwrap_err().code(),
            Code::PermissionDenied
        );
    }
    let status = education.query(denied()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap();
    assert!(
        retry > Duration::from_secs(10) && retry <= Duration::from_secs(60),
        "{retry:?}"
    );
    // Checked before the record is looked at: publish has its own budget;
    // once it is spent, even an empty publish is throttled, not refused as invalid.
    for _ in 0..3 {
        let status = education
            .publish(PublishRequest {
                record: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = education
        .publish(PublishRequest {
            record: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Another partner is not held back.
    let mut tax = broker_as(&sys, "tax").await;
    assert_eq!(
        tax.query(denied()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Throttled calls reach the log counted: one entry per partner, kind
    // and second, written within a second.
    let throttled = || -> Vec<String> {
        audit(&sys)
            .iter()
            .filter(|e| e.decision == Decision::Throttled)
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.kind,
                    e.consumer,
                    e.reason.split(' ').next().unwrap_or("")
                )
            })
            .collect()
    };
    for _ in 0..40 {
        if throttled().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(throttled(), ["query education 1", "publish education 1"]);
}

#[tokio::test]
async fn without_a_writable_audit_log_the_broker_refuses_work() {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec!["public-security".into()]);
    opts.audit = Some(std::sync::Arc::new(crossgate_broker::audit::FailingSink));
    let sys = LocalSystem::start(opts).await.unwrap();
    let mut education = broker_as(&sys, "education").await;
    let status = education.query(common::person_lookup()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "the audit log cannot be written; try again later"
    );
}

#[tokio::test]
async fn oversized_unknown_and_non_json_records_get_a_clear_answer() {
    let sys = start(&["border-inspection", "commerce"]).await;
    let mut customs = broker_as(&sys, "customs").await;
    let publish = |record_type: &str, json: Vec<u8>| PublishRequest {
        record: Some(Record {
            record_type: record_type.into(),
            record_id: "x".into(),
            json,
        }),
        ..Default::default()
    };
    let big = format!(
        "{{\"declaration_id\": \"{}\"}}",
        "1".repeat(2 * 1024 * 1024)
    )
    .into_bytes();
    let status = customs
        .publish(publish("customs-declaration.v1", big))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("over the limit of 1048576 bytes"),
        "{}",
        status.message()
    );

    let huge = vec![b' '; 5 * 1024 * 1024];
    let status = customs
        .publish(publish("customs-declaration.v1", huge))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(
        status.message().contains("message length too large")
            || status.message().contains("too large"),
        "{status:?}"
    );

    let status = customs
        .publish(publish("invoice.v1", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("unknown record type \"invoice.v1\""),
        "{}",
        status.message()
    );

    let status = customs
        .publish(publish("customs-declaration.v1", b"not json".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not valid JSON at line 1"),
        "{}",
        status.message()
    );
    assert!(sys.systems["commerce"].received().is_empty());
}

/// Sends and receives raw bytes as gRPC messages: a client that is not protobuf.
#[derive(Default, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, bytes.len());
        Ok(Some(bytes))
    }
}

#[tokio::test]
async fn malformed_protobuf_gets_a_clear_status_and_the_broker_keeps_serving() {
    let sys = start(&["border-inspection", "commerce"]).await;
    let channel = sys.channel(&sys.broker_addr, "customs").await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/crossgate.v1.Broker/Publish");
    let status = grpc
        .unary(tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0f]), path, Raw)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());
    // Still serving.
    let mut ok = BrokerClient::new(channel);
    assert_eq!(
        ok.list_schemas(ListSchemasRequest {})
            .await
            .unwrap()
            .into_inner()
            .schemas
            .len(),
        5
    );
}

/// Education asks public-security, which answers finds only after
/// `provider_takes`, for a household, and gives up after 100 ms.
async fn give_up_on_a_slow_query(sys: &LocalSystem, provider_takes: Duration) {
    sys.systems["public-security"].answer_finds_after(provider_takes);
    let mut education = broker_as(sys, "education").await;
    let request = QueryRequest {
        provider: "public-security".into(),
        record_type: "household.v1".into(),
        purpose: "school-enrolment".into(),
        approval_reference: "EDU-2025-0001".into(),
        criteria: vec![Criterion {
            path: "/household_id".into(),
            value: "11010567397679".into(),
        }],
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(100), education.query(request)).await;
    assert!(
        gave_up.is_err(),
        "the provider answers only after {provider_takes:?}"
    );
}

#[tokio::test]
async fn a_stop_waits_for_the_work_of_a_query_whose_client_gave_up() {
    let sys = start(&["public-security"]).await;
    // Longer than the stop's notice (1 s), so the stop reaches its drain
    // while the provider is still looking.
    give_up_on_a_slow_query(&sys, Duration::from_millis(2500)).await;
    // No call is in flight any more, but the query's work is: the stop
    // returns only once it has ended, so a process that exits then has
    // its entry.
    sys.stop().await;
    let entries = audit(&sys);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].decision, Decision::Allowed);
}

#[tokio::test]
async fn a_query_whose_client_gives_up_while_the_provider_looks_is_still_audited() {
    let sys = start(&["public-security"]).await;
    // The client gives up (its call is dropped, the stream reset) while
    // the provider is still looking: the broker's work goes on, and the
    // provider's answer, fetched for a query, is in the log.
    give_up_on_a_slow_query(&sys, Duration::from_millis(400)).await;
    assert!(audit(&sys).is_empty(), "{:?}", audit(&sys));
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while audit(&sys).is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "the query that was given up on was never audited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = audit(&sys);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].decision, Decision::Allowed);
    assert_eq!(entries[0].consumer, "education");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_call_leaves_no_gap() {
    let sys = start(&["border-inspection", "commerce"]).await;
    let mut customs = broker_as(&sys, "customs").await;
    let declaration = r#"{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "transport": {"mode": "road"}, "goods": [{"line": 1, "hs_code": "6746284797", "quantity": 1, "unit": "kg"}]}"#;
    let mut request = tonic::Request::new(PublishRequest {
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: "1".into(),
            json: declaration.as_bytes().to_vec(),
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_micros(1));
    // The client gives up at once (or the call completes first): either way,
    // the work under way finishes and is audited.
    let _ = tokio::time::timeout(Duration::from_millis(1), customs.publish(request)).await;
    drop(customs);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let delivered = audit(&sys)
            .iter()
            .filter(|e| e.decision == Decision::Delivered)
            .count();
        if delivered == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "deliveries not audited: {:?}",
            audit(&sys)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sys.systems["border-inspection"].received().len(), 1);
    assert_eq!(sys.systems["commerce"].received().len(), 1);
}
