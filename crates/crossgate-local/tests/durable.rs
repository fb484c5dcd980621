//! Durable delivery through the whole local system: a receiver that is down
//! is owed its records and gets each exactly once when it returns; a
//! publisher may repeat a call safely; a delivery that keeps failing is
//! dead-lettered, and operators list, replay and purge — each action audited.

use crossgate_broker::audit::{Decision, Kind};
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::*;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

/// The local system from a copy of deploy/local with `[delivery]` set to
/// `delivery`, with adapters for `departments` only.
async fn start(departments: &[&str], delivery: &str) -> (LocalSystem, crossgate_testing::TempDir) {
    let dir = crossgate_testing::TempDir::new("durable");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &dir);
    let broker_toml = dir.join("broker.toml");
    let mut text = std::fs::read_to_string(&broker_toml).unwrap();
    text.push_str(&format!("\n[delivery]\n{delivery}\n"));
    std::fs::write(&broker_toml, text).unwrap();
    let mut opts = Options::project_defaults();
    opts.config = dir.to_path_buf();
    opts.departments = Some(departments.iter().map(|d| d.to_string()).collect());
    (LocalSystem::start(opts).await.unwrap(), dir)
}

/// Customs' `n`-th declaration (native), under its own entry number.
fn declaration(n: u32) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(&crossgate_testing::fixture_line(
        "customs",
        "declarations.valid.jsonl",
        0,
    ))
    .unwrap();
    doc["entryId"] = format!("44066386405632{n:04}").into();
    serde_json::to_vec(&doc).unwrap()
}

async fn submit(sys: &LocalSystem, n: u32) -> SubmitResponse {
    let mut customs = IngressClient::new(
        sys.channel(&sys.adapter_addrs["customs"], "customs")
            .await
            .unwrap(),
    );
    customs
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: declaration(n),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn outcomes(reply: &SubmitResponse) -> HashMap<String, String> {
    reply
        .deliveries
        .iter()
        .map(|d| (d.receiver.clone(), d.outcome.clone()))
        .collect()
}

async fn admin(sys: &LocalSystem, id: &str) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(sys.channel(&sys.broker_addr, id).await.unwrap())
}

async fn undelivered(sys: &LocalSystem, receiver: &str, state: &str) -> Vec<Undelivered> {
    admin(sys, "operations")
        .await
        .list_undelivered(ListUndeliveredRequest {
            receiver: receiver.into(),
            state: state.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// Wait (at most 15 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

fn entries(sys: &LocalSystem) -> Vec<crossgate_broker::audit::Entry> {
    sys.memory_audit.as_ref().unwrap().entries()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_is_down_gets_each_record_once_and_in_order_when_it_returns() {
    let (mut sys, _dir) = start(
        &["customs", "commerce"],
        "retry = [\"50ms\", \"100ms\", \"200ms\"]\n# one at a time: strictly in the order published\nconcurrency = 1",
    )
    .await;
    let mut first_replies = Vec::new();
    for n in 0..5 {
        let reply = submit(&sys, n).await;
        assert_eq!(
            outcomes(&reply),
            HashMap::from([
                ("commerce".to_owned(), "delivered".to_owned()),
                ("border-inspection".to_owned(), "queued".to_owned()),
            ]),
            "OK means recorded: border inspection is owed it, the caller need not retry"
        );
        first_replies.push(reply);
    }
    let queued = undelivered(&sys, "border-inspection", "queued").await;
    assert_eq!(queued.len(), 5);
    assert!(
        queued
            .iter()
            .all(|i| i.provider == "customs" && i.record_type == "customs-declaration.v1")
    );
    assert!(undelivered(&sys, "commerce", "").await.is_empty());

    let border = sys.start_department("border-inspection").await.unwrap();
    eventually("border inspection has all five", || {
        border.received().len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = border.received();
    let ids: Vec<&str> = received
        .iter()
        .map(|r| r.document["declaration_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..5)
            .map(|n| format!("44066386405632{n:04}"))
            .collect::<Vec<_>>(),
        "each once, in the order published"
    );
    let sent: Vec<&str> = first_replies
        .iter()
        .flat_map(|r| r.deliveries.iter())
        .filter(|d| d.receiver == "border-inspection")
        .map(|d| d.delivery_id.as_str())
        .collect();
    let got: Vec<&str> = received.iter().map(|r| r.delivery_id.as_str()).collect();
    assert_eq!(got, sent, "the delivery ids the publisher was told");
    assert!(undelivered(&sys, "border-inspection", "").await.is_empty());

    // The publisher repeats a call (it never saw the answer): the first
    // outcome as it stands now, and nothing reaches anybody twice.
    let again = submit(&sys, 0).await;
    assert!(again.repeat);
    assert_eq!(again.request_id, first_replies[0].request_id);
    assert_eq!(
        outcomes(&again),
        HashMap::from([
            ("commerce".to_owned(), "delivered".to_owned()),
            ("border-inspection".to_owned(), "delivered".to_owned()),
        ])
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(border.received().len(), 5);
    assert_eq!(sys.systems["commerce"].received().len(), 5);

    // The log: each release recorded before it was sent, failed attempts,
    // one delivery each, and the repeat.
    let log = entries(&sys);
    let to_border = |d: Decision| {
        log.iter()
            .filter(|e| e.consumer == "border-inspection" && e.decision == d)
            .count()
    };
    assert_eq!(to_border(Decision::Allowed), 5);
    assert_eq!(to_border(Decision::Delivered), 5);
    assert!(to_border(Decision::Failed) >= 1);
    assert!(
        log.iter()
            .any(|e| e.reason.starts_with("repeat of request ") && e.kind == Kind::Publish)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_keeps_failing_is_dead_lettered_and_operators_replay_or_purge_it() {
    let (mut sys, _dir) = start(
        &["customs", "commerce"],
        "retry = [\"50ms\"]\ngive_up_after = \"300ms\"",
    )
    .await;
    let first = submit(&sys, 1).await;
    let second = submit(&sys, 2).await;
    let border_id = |r: &SubmitResponse| {
        r.deliveries
            .iter()
            .find(|d| d.receiver == "border-inspection")
            .unwrap()
            .delivery_id
            .clone()
    };
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = undelivered(&sys, "border-inspection", "dead").await;
        if dead.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2, "both given up after 300 ms");
    assert!(dead[0].attempts >= 2 && dead[0].last_error.contains("border-inspection"));

    // Only operators: a partner and an auditor are refused.
    for id in ["customs", "audit-office"] {
        let status = admin(&sys, id)
            .await
            .list_undelivered(ListUndeliveredRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{id}");
    }
    // A purge needs a reason; a replay names its items one way.
    let mut ops = admin(&sys, "operations").await;
    let status = ops
        .purge(PurgeRequest {
            delivery_ids: vec![border_id(&second)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = ops
        .replay(ReplayRequest {
            delivery_ids: vec![border_id(&first)],
            receiver: "border-inspection".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The receiver returns: dead items wait for an operator.
    let border = sys.start_department("border-inspection").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(border.received().is_empty());

    let purged = ops
        .purge(PurgeRequest {
            delivery_ids: vec![border_id(&second)],
            reason: "sent on paper by the port office".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, 1);
    let replayed = ops
        .replay(ReplayRequest {
            receiver: "border-inspection".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.delivery_ids, [border_id(&first)]);
    eventually("the replayed item arrives", || border.received().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(border.received().len(), 1);
    assert_eq!(border.received()[0].delivery_id, border_id(&first));
    assert!(undelivered(&sys, "border-inspection", "").await.is_empty());

    let log = entries(&sys);
    let reasons: Vec<&str> = log
        .iter()
        .filter(|e| e.kind == Kind::Admin && e.decision == Decision::Changed)
        .map(|e| e.reason.as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.ends_with("purged by operations: sent on paper by the port office")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("replayed by operations")),
        "{reasons:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|e| e.decision == Decision::Dead && e.consumer == "border-inspection")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_reused_for_another_record_is_refused_and_delivers_nothing() {
    let (sys, _dir) = start(&["border-inspection", "commerce"], "").await;
    let mut customs = BrokerClient::new(sys.channel(&sys.broker_addr, "customs").await.unwrap());
    let canonical = |n: u32| {
        let mapping = crossgate_adapter::config::load_department(
            &crossgate_testing::deploy_local(),
            "customs",
            crossgate_testing::registry(),
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&declaration(n)).unwrap();
        let mapped = mapping
            .native("declarations")
            .unwrap()
            .inbound_owned(doc, crossgate_testing::registry())
            .unwrap();
        Record {
            record_type: mapped.record_type,
            record_id: format!("D-{n}"),
            json: serde_json::to_vec(&mapped.document).unwrap(),
        }
    };
    let publish = |n: u32| PublishRequest {
        record: Some(canonical(n)),
        idempotency_key: "batch-7".into(),
    };
    let first = customs.publish(publish(1)).await.unwrap().into_inner();
    assert!(!first.repeat);
    let status = customs.publish(publish(2)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&first.request_id));
    let again = customs.publish(publish(1)).await.unwrap().into_inner();
    assert!(again.repeat);
    assert_eq!(again.request_id, first.request_id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for dept in ["border-inspection", "commerce"] {
        assert_eq!(sys.systems[dept].received().len(), 1, "{dept}");
    }
    // Another publisher's key space is its own.
    let status = customs
        .publish(PublishRequest {
            record: Some(canonical(3)),
            idempotency_key: "x".repeat(201),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_passes_a_repeated_delivery_id_on_once() {
    let (sys, _dir) = start(&["commerce"], "").await;
    let mut to_commerce = DepartmentClient::new(
        sys.channel(&sys.adapter_addrs["commerce"], "broker")
            .await
            .unwrap(),
    );
    let deliver = |id: &str| {
        DeliverRequest {
        request_id: "r".into(),
        provider: "customs".into(),
        record: Some(Record {
            record_type: "customs-declaration.v1".into(),
            record_id: "ref".into(),
            json: br#"{"declaration_id":"440663864056324842","direction":"import","declared_on":"2025-07-22","trader_uscc":"91110105MAMLQQMQFA"}"#.to_vec(),
        }),
        delivery_id: id.into(),
    }
    };
    for _ in 0..3 {
        to_commerce.deliver(deliver("d-1")).await.unwrap();
    }
    to_commerce.deliver(deliver("d-2")).await.unwrap();
    let got: Vec<String> = sys.systems["commerce"]
        .received()
        .into_iter()
        .map(|r| r.delivery_id)
        .collect();
    assert_eq!(got, ["d-1", "d-2"]);
    // Only the broker may deliver.
    let mut impostor = DepartmentClient::new(
        sys.channel(&sys.adapter_addrs["commerce"], "customs")
            .await
            .unwrap(),
    );
    assert_eq!(
        impostor.deliver(deliver("d-3")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_the_log_cannot_record_is_refused_and_reaches_nobody() {
    let mut opts = Options::project_defaults();
    opts.departments = Some(vec![
        "customs".into(),
        "border-inspection".into(),
        "commerce".into(),
    ]);
    opts.audit = Some(std::sync::Arc::new(crossgate_broker::audit::FailingSink));
    let sys = LocalSystem::start(opts).await.unwrap();
    let mut customs = IngressClient::new(
        sys.channel(&sys.adapter_addrs["customs"], "customs")
            .await
            .unwrap(),
    );
    let status = customs
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: declaration(9),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for dept in ["border-inspection", "commerce"] {
        assert!(sys.systems[dept].received().is_empty(), "{dept}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_broker_reports_not_serving_and_finishes_the_calls_in_flight() {
    use crossgate_proto::standard::health_pb::health_client::HealthClient;
    use crossgate_proto::standard::health_pb::{HealthCheckRequest, health_check_response};
    let (sys, _dir) = start(&["commerce"], "").await;
    // Border inspection's address takes connections and never answers: a
    // delivery there waits for its timeout, keeping the Publish in flight.
    let addr = sys
        .partners
        .iter()
        .find(|p| p.id == "border-inspection")
        .and_then(|p| p.adapter.clone())
        .unwrap();
    let silent = tokio::net::TcpListener::bind(&addr).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let channel = sys.channel(&sys.broker_addr, "customs").await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |r: tonic::Response<crossgate_proto::standard::health_pb::HealthCheckResponse>| {
        r.into_inner().status
    };
    assert_eq!(
        status(health.check(HealthCheckRequest::default()).await.unwrap()),
        health_check_response::ServingStatus::Serving as i32
    );
    let declaration = r#"{"declaration_id": "440663864056399999", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}}"#;
    let mut customs = BrokerClient::new(channel);
    let mut late = customs.clone();
    let in_flight = tokio::spawn(async move {
        customs
            .publish(PublishRequest {
                record: Some(Record {
                    record_type: "customs-declaration.v1".into(),
                    record_id: "E-1".into(),
                    json: declaration.as_bytes().to_vec(),
                }),
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    sys.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status(health.check(HealthCheckRequest::default()).await.unwrap()),
        health_check_response::ServingStatus::NotServing as i32,
        "draining"
    );
    let refused = late.list_schemas(ListSchemasRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let reply = in_flight.await.unwrap().unwrap().into_inner();
    let outcomes: HashMap<String, i32> = reply
        .deliveries
        .iter()
        .map(|d| (d.receiver.clone(), d.outcome))
        .collect();
    assert_eq!(outcomes["commerce"], DeliveryOutcome::Delivered as i32);
    assert_eq!(
        outcomes["border-inspection"],
        DeliveryOutcome::Queued as i32
    );
    tokio::time::timeout(Duration::from_secs(15), sys.stop())
        .await
        .expect("the broker stops within its grace period");
}
