//! The adapter service over real loopback sockets: a fake broker, the
//! reference department system, and the adapter between them.

use crossgate_adapter::system::ReferenceSystem;
mod common;

use common::{Served, listener, serve_adapter, until};
use crossgate_adapter::{Adapter, config, lazy_channel, serve_system};
use crossgate_proto::broker_server::{Broker, BrokerServer};
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::*;
use crossgate_schema::Registry;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use crossgate_testing::ROOT;

/// Records what is published; answers queries with one person.
#[derive(Clone, Default)]
struct FakeBroker {
    published: Arc<Mutex<Vec<Record>>>,
}

#[tonic::async_trait]
impl Broker for FakeBroker {
    async fn publish(
        &self,
        r: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let record = r.into_inner().record.unwrap();
        self.published.lock().unwrap().push(record);
        Ok(Response::new(PublishResponse {
            request_id: "req-1".into(),
            deliveries: vec![Delivery {
                receiver: "border-inspection".into(),
                outcome: DeliveryOutcome::Delivered as i32,
                released_fields: vec!["/transport".into()],
                detail: String::new(),
                delivery_id: "d-1".into(),
            }],
            repeat: false,
        }))
    }
    async fn query(&self, r: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let q = r.into_inner();
        if q.provider != "public-security" {
            return Err(Status::permission_denied("no grant"));
        }
        let doc = json!({"name": "徐军", "birth_date": "1989-09-03", "registered_address": {"division_code": "140302"}});
        Ok(Response::new(QueryResponse {
            request_id: "req-2".into(),
            records: vec![Record {
                record_type: q.record_type,
                record_id: "x".into(),
                json: serde_json::to_vec(&doc).unwrap(),
            }],
            withheld_fields: vec!["/id_number".into()],
            withheld_records: 0,
        }))
    }
    async fn list_schemas(
        &self,
        _: Request<ListSchemasRequest>,
    ) -> Result<Response<ListSchemasResponse>, Status> {
        Ok(Response::new(ListSchemasResponse::default()))
    }
}

struct Running {
    /// Sent (or dropped): the adapter shuts down; `served` ends then.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), crossgate_adapter::ServeError>>,
    channel: Channel,
    broker: FakeBroker,
    system: ReferenceSystem,
    /// The adapter served (a handle on the same state).
    adapter: Adapter,
    ingress: IngressClient<Channel>,
    department: DepartmentClient<Channel>,
}

/// Start the fake broker (unless `broker_down`), the reference system seeded
/// from the department's fixtures, and the adapter, all on loopback.
async fn start(department: &str, broker_down: bool) -> Running {
    let registry = Arc::new(Registry::load_dir(format!("{ROOT}/schemas")).unwrap());
    let mapping = config::load_department(
        Path::new(&format!("{ROOT}/deploy/local")),
        department,
        &registry,
    )
    .unwrap();
    let broker = FakeBroker::default();
    let (bl, broker_uri) = listener().await;
    if broker_down {
        drop(bl);
    } else {
        let svc = BrokerServer::new(broker.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(bl))
                .await
        });
    }
    let system = ReferenceSystem::new();
    system
        .seed_dir(Path::new(&format!(
            "{ROOT}/deploy/local/fixtures/{department}"
        )))
        .unwrap();
    let (sl, system_uri) = listener().await;
    tokio::spawn(serve_system(system.clone(), sl, std::future::pending()));
    let adapter = Adapter::new(
        mapping,
        registry,
        lazy_channel(&broker_uri).unwrap(),
        lazy_channel(&system_uri).unwrap(),
    );
    let Served {
        stop,
        served,
        channel,
    } = serve_adapter(adapter.clone()).await;
    Running {
        stop,
        served,
        channel: channel.clone(),
        broker,
        system,
        adapter,
        ingress: IngressClient::new(channel.clone()),
        department: DepartmentClient::new(channel),
    }
}

fn fixture_line(dept: &str, file: &str, n: usize) -> Vec<u8> {
    let text =
        std::fs::read_to_string(format!("{ROOT}/deploy/local/fixtures/{dept}/{file}")).unwrap();
    text.lines().nth(n).unwrap().as_bytes().to_vec()
}

fn native(native_type: &str, json: Vec<u8>) -> SubmitRequest {
    SubmitRequest {
        record: Some(NativeRecord {
            native_type: native_type.into(),
            record_id: String::new(),
            json,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn submit_maps_validates_and_publishes_the_canonical_record() {
    let mut run = start("customs", false).await;
    let reply = run
        .ingress
        .submit(native(
            "declarations",
            fixture_line("customs", "declarations.valid.jsonl", 0),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.record_type, "customs-declaration.v1");
    assert_eq!(reply.deliveries[0].receiver, "border-inspection");
    assert_eq!(reply.deliveries[0].outcome, "delivered");
    let published = run.broker.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].record_id, "440663864056324842");
    let doc: Value = serde_json::from_slice(&published[0].json).unwrap();
    assert_eq!(doc["direction"], "import");
    assert_eq!(doc["transport"]["mode"], "road");
    assert_eq!(doc["goods"][0]["unit"], "kg");
}

#[tokio::test]
async fn an_invalid_record_is_refused_with_every_fault_and_never_published() {
    let mut run = start("customs", false).await;
    let status = run
        .ingress
        .submit(native(
            "declarations",
            fixture_line("customs", "declarations.invalid.jsonl", 0),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = status
        .get_details_bad_request()
        .expect("BadRequest details");
    let mut got: Vec<(String, String)> = bad
        .field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "/goods");
    assert!(got[0].1.starts_with("goods: "), "{}", got[0].1);
    assert_eq!(
        got[1],
        (
            "/transport/mode".into(),
            "trafMode: unknown code \"Q\"; known codes: 2, 3, 4, 5".into()
        )
    );
    assert!(run.broker.published.lock().unwrap().is_empty());

    let status = run
        .ingress
        .submit(native("declarations", b"{not json".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not valid JSON"),
        "{}",
        status.message()
    );

    let status = run
        .ingress
        .submit(native("invoices", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("mapped native types: declarations"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn deliveries_reach_the_system_in_its_own_format() {
    let mut run = start("customs", false).await;
    let part = json!({"declaration_id": "440663864056324842", "transport": {"mode": "road", "vehicle_plate": "藏D96371"}});
    run.department
        .deliver(DeliverRequest {
            request_id: "r".into(),
            provider: "customs".into(),
            record: Some(Record {
                record_type: "customs-declaration.v1".into(),
                record_id: "1".into(),
                json: serde_json::to_vec(&part).unwrap(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // A type the department has no mapping for arrives as canonical JSON.
    let person = json!({"name": "徐军"});
    run.department
        .deliver(DeliverRequest {
            request_id: "r2".into(),
            provider: "public-security".into(),
            record: Some(Record {
                record_type: "person.v1".into(),
                record_id: "2".into(),
                json: serde_json::to_vec(&person).unwrap(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = run.system.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].native_type, "declarations");
    assert_eq!(
        got[0].document,
        json!({"entryId": "440663864056324842", "trafMode": "4", "vehiclePlate": "藏D96371"})
    );
    assert_eq!(got[1].native_type, "person.v1");
    assert_eq!(got[1].document, person);
}

#[tokio::test]
async fn a_delivery_stream_hands_each_record_over_once_and_ends_when_the_adapter_stops() {
    let mut run = start("customs", false).await;
    let (send, to_adapter) = tokio::sync::mpsc::channel(8);
    let mut answers = run
        .department
        .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(to_adapter))
        .await
        .expect("a stream")
        .into_inner();
    let person = json!({"name": "徐军"});
    let message = |sequence: u64, id: &str, record: bool| DeliverMessage {
        sequence,
        delivery: Some(DeliverRequest {
            request_id: format!("r-{sequence}"),
            provider: "public-security".into(),
            record: record.then(|| Record {
                record_type: "person.v1".into(),
                record_id: id.into(),
                json: serde_json::to_vec(&person).unwrap(),
            }),
            delivery_id: id.into(),
        }),
        traceparent: String::new(),
        timeout_millis: 10_000,
    };
    let mut answer = async || {
        let a = tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream holds")
            .expect("not ended");
        (a.sequence, Code::from(a.code), a.message)
    };
    send.send(message(7, "s-1", true)).await.unwrap();
    send.send(message(8, "s-2", true)).await.unwrap();
    send.send(message(9, "s-3", false)).await.unwrap();
    let mut got = [answer().await, answer().await, answer().await];
    got.sort_by_key(|a| a.0);
    assert_eq!(got[0], (7, Code::Ok, String::new()));
    assert_eq!(got[1], (8, Code::Ok, String::new()));
    assert_eq!(
        got[2],
        (9, Code::InvalidArgument, "record is required".to_owned())
    );
    // The same delivery again (a retry after a lost answer): acknowledged,
    // not handed over a second time.
    send.send(message(10, "s-1", true)).await.unwrap();
    assert_eq!(answer().await, (10, Code::Ok, String::new()));
    assert_eq!(run.system.received().len(), 2);

    // Stopping the adapter ends the stream (the broker would keep it open
    // for ever), so the server's drain finishes.
    let _ = run.stop.take().expect("running").send(());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(std::time::Duration::from_secs(10), run.served)
        .await
        .expect("the adapter stops in time")
        .expect("its task")
        .expect("served without error");
}

#[tokio::test]
async fn fetch_leaves_out_records_that_do_not_map_and_never_quotes_them() {
    let run = start("public-security", false).await;
    // Two persons share a name: one is fine, one has an ethnicity code the
    // schema does not allow.
    run.system.insert(
        "persons",
        json!({"GMSFHM": "110105198405049582", "XM": "同名", "XB": "2", "CSRQ": "19840504",
               "MZ": "SECRET-CODE", "HJDZ_XZQH": "110105", "HJDZ": "北京市朝阳区解放路172号"}),
    );
    run.system.insert(
        "persons",
        json!({"GMSFHM": "110105198405049582", "XM": "同名", "XB": "2", "CSRQ": "19840504",
               "MZ": "01", "HJDZ_XZQH": "110105", "HJDZ": "北京市朝阳区解放路172号"}),
    );
    let fetch = |limit| FetchRequest {
        record_type: "person.v1".into(),
        criteria: vec![Criterion {
            path: "/name".into(),
            value: "同名".into(),
        }],
        limit,
        ..Default::default()
    };
    let reply = run
        .department
        .clone()
        .fetch(fetch(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.records.len(), 1);
    assert_eq!(reply.withheld_records, 1);
    assert!(!format!("{reply:?}").contains("SECRET"));
    // The limit caps what the system is asked for and what is answered.
    let reply = run
        .department
        .clone()
        .fetch(fetch(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.records.len() + reply.withheld_records as usize, 1);
}

#[tokio::test]
async fn fetch_answers_from_the_system_with_valid_canonical_records() {
    let mut run = start("public-security", false).await;
    let reply = run
        .department
        .fetch(FetchRequest {
            request_id: "r".into(),
            consumer: "education".into(),
            record_type: "person.v1".into(),
            purpose: "school-enrolment".into(),
            criteria: vec![Criterion {
                path: "/id_number".into(),
                value: "14030219890903420X".into(),
            }],
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.records.len(), 1);
    let doc: Value = serde_json::from_slice(&reply.records[0].json).unwrap();
    assert_eq!(doc["id_number"], "14030219890903420X");
    assert_eq!(doc["birth_date"], "1989-09-03");

    let households = run
        .department
        .fetch(FetchRequest {
            record_type: "household.v1".into(),
            criteria: vec![Criterion {
                path: "/household_id".into(),
                value: "11010567397679".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let doc: Value = serde_json::from_slice(&households.records[0].json).unwrap();
    assert_eq!(doc["members"][0]["relation"], "head");

    let none = run
        .department
        .fetch(FetchRequest {
            record_type: "person.v1".into(),
            criteria: vec![Criterion {
                path: "/id_number".into(),
                value: "11010519491231002X".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    let not_held = run
        .department
        .fetch(FetchRequest {
            record_type: "birth.v1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(not_held.code(), Code::NotFound);
}

#[tokio::test]
async fn a_fetch_stream_answers_each_fetch_as_a_call_would_and_within_its_time() {
    let mut run = start("public-security", false).await;
    let (send, mut answers) = open_fetch_stream(&mut run, 8).await;
    let mut answer = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream holds")
            .expect("not ended")
    };
    send.send(person_message(7, "14030219890903420X", 10_000))
        .await
        .unwrap();
    send.send(person_message(8, "11010519491231002X", 10_000))
        .await
        .unwrap();
    send.send(FetchMessage {
        fetch: None,
        ..person_message(9, "", 10_000)
    })
    .await
    .unwrap();
    let mut got = [answer().await, answer().await, answer().await];
    got.sort_by_key(|a| a.sequence);
    // Found: the canonical record, as `Fetch` answers it.
    assert_eq!(Code::from(got[0].code), Code::Ok, "{:?}", got[0]);
    let records = &got[0].response.as_ref().expect("an answer").records;
    assert_eq!(records.len(), 1);
    let doc: Value = serde_json::from_slice(&records[0].json).unwrap();
    assert_eq!(doc["id_number"], "14030219890903420X");
    assert_eq!(doc["birth_date"], "1989-09-03");
    // Not found, and a message without a fetch: the call's statuses.
    assert_eq!(
        (got[1].sequence, Code::from(got[1].code)),
        (8, Code::NotFound)
    );
    assert!(got[1].response.is_none());
    assert_eq!(
        (
            got[2].sequence,
            Code::from(got[2].code),
            got[2].message.as_str()
        ),
        (9, Code::InvalidArgument, "fetch is required")
    );

    // A system slower than the broker's time: DEADLINE_EXCEEDED when the
    // time is up, not when the system answers.
    run.system
        .answer_finds_after(std::time::Duration::from_secs(5));
    let began = std::time::Instant::now();
    send.send(person_message(10, "14030219890903420X", 300))
        .await
        .unwrap();
    let late = answer().await;
    assert_eq!(
        (late.sequence, Code::from(late.code)),
        (10, Code::DeadlineExceeded),
        "{late:?}"
    );
    assert!(
        began.elapsed() < std::time::Duration::from_secs(4),
        "answered only after the system: {:?}",
        began.elapsed()
    );

    // Stopping the adapter ends the stream.
    let _ = run.stop.take().expect("running").send(());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// A `FetchStream` to the adapter, as the broker opens it: where to send
/// its messages (`room` of them queued), and its answers.
async fn open_fetch_stream(
    run: &mut Running,
    room: usize,
) -> (
    tokio::sync::mpsc::Sender<FetchMessage>,
    tonic::Streaming<FetchAnswer>,
) {
    let (send, to_adapter) = tokio::sync::mpsc::channel(room);
    let answers = run
        .department
        .fetch_stream(tokio_stream::wrappers::ReceiverStream::new(to_adapter))
        .await
        .expect("a stream")
        .into_inner();
    (send, answers)
}

/// With the system answering finds only after `delay`: a stream whose
/// first fetch (sequence 1, given `timeout_millis`) is with the system.
async fn slow_fetch_under_way(
    run: &mut Running,
    delay: std::time::Duration,
    timeout_millis: u32,
) -> (
    tokio::sync::mpsc::Sender<FetchMessage>,
    tonic::Streaming<FetchAnswer>,
) {
    run.system.answer_finds_after(delay);
    let (send, answers) = open_fetch_stream(run, 8).await;
    send.send(person_message(1, "14030219890903420X", timeout_millis))
        .await
        .unwrap();
    until("the fetch reaches the system", || {
        run.system.slow_answers_begun() == 1
    })
    .await;
    (send, answers)
}

/// A person fetch for the stream, asking for `id_number` within `timeout_millis`.
fn person_message(sequence: u64, id_number: &str, timeout_millis: u32) -> FetchMessage {
    FetchMessage {
        sequence,
        fetch: Some(FetchRequest {
            request_id: format!("r-{sequence}"),
            consumer: "education".into(),
            record_type: "person.v1".into(),
            purpose: "school-enrolment".into(),
            criteria: vec![Criterion {
                path: "/id_number".into(),
                value: id_number.into(),
            }],
            limit: 2,
        }),
        traceparent: String::new(),
        timeout_millis,
    }
}

#[tokio::test]
async fn a_fetch_stops_when_the_broker_lets_its_stream_go() {
    let mut run = start("public-security", false).await;
    // The system would take a minute; the broker gave the fetch 30 s.
    let (send, answers) =
        slow_fetch_under_way(&mut run, std::time::Duration::from_secs(60), 30_000).await;
    assert_eq!(run.system.slow_answers_waiting(), 1);
    // The broker lets the stream go (it found the stream stuck, it stops,
    // or the connection is lost):
    // the fetch stops, as a call's would at its reset, instead of holding
    // the system and a place among the adapter's fetches for 30 s.
    drop(answers);
    drop(send);
    until("the system's find is let go", || {
        run.system.slow_answers_waiting() == 0
    })
    .await;
}

#[tokio::test]
async fn a_stopping_adapter_answers_further_fetches_unavailable_and_those_it_took_in_full() {
    let mut run = start("public-security", false).await;
    let (send, mut answers) =
        slow_fetch_under_way(&mut run, std::time::Duration::from_secs(2), 10_000).await;
    let _ = run.stop.take().expect("running").send(());
    until("the adapter is stopping", || run.adapter.is_closing()).await;
    // Sent while the adapter stops: answered at once, nothing done, and
    // marked so that the broker sends nothing more on this stream.
    send.send(person_message(2, "11010519491231002X", 10_000))
        .await
        .unwrap();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
            .await
            .expect("in time")
            .expect("the stream holds")
    };
    let refused = next().await.expect("an answer to the fetch sent last");
    assert_eq!(
        (refused.sequence, Code::from(refused.code)),
        (2, Code::Unavailable),
        "{refused:?}"
    );
    assert!(refused.stopping, "{refused:?}");
    assert_eq!(run.system.slow_answers_begun(), 1, "it reached the system");
    // The fetch taken before is answered in full, then the stream ends.
    let taken = next().await.expect("an answer to the fetch taken");
    assert_eq!(
        (taken.sequence, Code::from(taken.code)),
        (1, Code::Ok),
        "{taken:?}"
    );
    assert_eq!(taken.response.expect("records").records.len(), 1);
    assert!(next().await.is_none(), "the stream ends");
}

#[tokio::test]
async fn a_fetch_answer_too_large_for_one_message_is_refused_and_its_stream_goes_on() {
    let mut run = start("public-security", false).await;
    // The system holds the same person many times over; all of them, in
    // canonical form, are first just under what one gRPC message may carry
    // (4 MiB), then just over it, while the system's own answer, in its
    // shorter native form, fits either way.
    let person: Value =
        serde_json::from_slice(&fixture_line("public-security", "persons.valid.jsonl", 0)).unwrap();
    let id_number = person["GMSFHM"].as_str().unwrap().to_owned();
    let system = run.system.clone();
    let add = |copies: usize| {
        for _ in 0..copies {
            system.insert("persons", person.clone());
        }
    };
    add(UNDER);
    let (send, mut answers) = open_fetch_stream(&mut run, 8).await;
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(30), answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream holds")
            .expect("not ended")
    };
    let everyone = |sequence| {
        let mut all = person_message(sequence, &id_number, 30_000);
        all.fetch.as_mut().unwrap().limit = 0;
        all
    };
    send.send(everyone(1)).await.unwrap();
    let under = next().await;
    assert_eq!(
        (under.sequence, Code::from(under.code)),
        (1, Code::Ok),
        "{}",
        under.message
    );
    // The fixtures' own record and the copies.
    assert_eq!(under.response.expect("records").records.len(), UNDER + 1);

    add(OVER - UNDER);
    send.send(everyone(2)).await.unwrap();
    let refused = next().await;
    assert_eq!(
        (refused.sequence, Code::from(refused.code)),
        (2, Code::OutOfRange),
        "{}",
        refused.message
    );
    assert!(
        refused.message.contains("ask for fewer records"),
        "{}",
        refused.message
    );
    assert!(refused.response.is_none());
    // Sent as it was, the answer would have broken the broker's reading
    // of the whole stream; refused, the stream goes on.
    send.send(person_message(3, "14030219890903420X", 10_000))
        .await
        .unwrap();
    let found = next().await;
    assert_eq!(
        (found.sequence, Code::from(found.code)),
        (3, Code::Ok),
        "{found:?}"
    );
    assert_eq!(found.response.expect("records").records.len(), 1);
}

/// Copies of one person whose canonical answer stays under 4 MiB (about
/// 239 bytes each as encoded: 4.06 MB), and that make it go over (4.42 MB),
/// while the system's native answer stays under (about 164 bytes each).
const UNDER: usize = 17_000;
const OVER: usize = 18_500;

#[tokio::test]
async fn lookup_answers_in_the_departments_own_format() {
    let mut run = start("public-security", false).await;
    let reply = run
        .ingress
        .lookup(LookupRequest {
            provider: "public-security".into(),
            record_type: "person.v1".into(),
            purpose: "check".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let doc: Value = serde_json::from_slice(&reply.records[0].json).unwrap();
    assert_eq!(
        doc,
        json!({"XM": "徐军", "CSRQ": "19890903", "HJDZ_XZQH": "140302"})
    );
    assert_eq!(reply.withheld_fields, vec!["/id_number"]);
    let denied = run
        .ingress
        .lookup(LookupRequest {
            provider: "tax".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "broker: no grant");
}

#[tokio::test]
async fn a_broker_that_is_down_gives_unavailable_quickly() {
    let mut run = start("customs", true).await;
    let started = std::time::Instant::now();
    let status = run
        .ingress
        .submit(native(
            "declarations",
            fixture_line("customs", "declarations.valid.jsonl", 0),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn an_unknown_department_names_the_configured_ones() {
    let registry = Registry::load_dir(format!("{ROOT}/schemas")).unwrap();
    let err = config::load_department(
        Path::new(&format!("{ROOT}/deploy/local")),
        "educaton",
        &registry,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "configured departments: border-inspection, commerce, customs, education, health, human-resources, market-regulation, medical-insurance, public-security, tax"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn standard_grpc_health_checking_is_served() {
    use crossgate_proto::standard::health_pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let run = start("customs", false).await;
    let mut health = HealthClient::new(run.channel.clone());
    for service in ["crossgate.v1.Ingress", "crossgate.v1.Department"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "crossgate.v1.Broker".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn fetches_over_the_cap_are_refused_at_once_across_streams() {
    use crossgate_adapter::FETCHES_MAX;
    let mut run = start("public-security", false).await;
    run.system
        .answer_finds_after(std::time::Duration::from_secs(60));
    // A stream serves at most 256 messages at once: the cap is reached
    // over several, as over a broker's new streams.
    const PER_STREAM: usize = 256;
    let streams = FETCHES_MAX / PER_STREAM + 1;
    let (heard, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    let mut sequence = 0;
    for s in 0..streams {
        let (send, mut answers) = open_fetch_stream(&mut run, PER_STREAM).await;
        let n = if s + 1 < streams {
            PER_STREAM
        } else {
            FETCHES_MAX + 1 - PER_STREAM * (streams - 1)
        };
        for _ in 0..n {
            sequence += 1;
            send.send(person_message(sequence, "14030219890903420X", 30_000))
                .await
                .unwrap();
        }
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Ok(Some(answer)) = answers.message().await {
                let _ = heard.send(answer);
            }
        });
        senders.push(send);
    }
    // One more than the cap: whichever came last is refused at once, and
    // the others wait for the system.
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), answered.recv())
        .await
        .expect("one fetch answered at once")
        .expect("an answer");
    assert_eq!(Code::from(refused.code), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message,
        format!("{FETCHES_MAX} fetches are still with the department system; try again")
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), answered.recv())
            .await
            .is_err(),
        "only one over the cap"
    );
}
