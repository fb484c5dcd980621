//! A delivery stream against a department system that never finishes some
//! hand-overs: each stuck one is answered DEADLINE_EXCEEDED when the
//! broker's time for it is up, frees its place on the stream, and holds
//! neither the other deliveries nor the adapter's shutdown; once
//! [`crossgate_adapter::HAND_OVERS_MAX`] of them are under way, further
//! deliveries are turned away until some finish.

mod common;

use common::{Served, listener, serve_adapter, until};
use crossgate_adapter::{Adapter, HAND_OVERS_MAX, config, lazy_channel};
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::department_system_server::{DepartmentSystem, DepartmentSystemServer};
use crossgate_proto::*;
use crossgate_schema::Registry;
use crossgate_testing::ROOT;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// Takes every record at once, except a delivery id starting `hang`: that
/// hand-over never finishes (a system stuck on one record); one starting
/// `held` finishes when [`RELEASED`] turns true.
#[derive(Clone)]
struct System;

static RELEASED: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);
/// `held` hand-overs the system has been given.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Delivery ids of every hand-over the system has been given.
static RECEIVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether the system has been given the hand-over `id`.
fn received(id: &str) -> bool {
    RECEIVED.lock().unwrap().iter().any(|r| r == id)
}

#[tonic::async_trait]
impl DepartmentSystem for System {
    async fn receive(
        &self,
        r: Request<ReceiveRequest>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        RECEIVED
            .lock()
            .unwrap()
            .push(r.get_ref().delivery_id.clone());
        if r.get_ref().delivery_id.starts_with("hang") {
            std::future::pending::<()>().await;
        }
        if r.get_ref().delivery_id.starts_with("held") {
            HELD.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = RELEASED.subscribe().wait_for(|r| *r).await;
        }
        Ok(Response::new(ReceiveResponse {}))
    }
    async fn find(&self, _: Request<FindRequest>) -> Result<Response<FindResponse>, Status> {
        Ok(Response::new(FindResponse::default()))
    }
}

struct Run {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The adapter served (a handle on the same state).
    adapter: Adapter,
    served: tokio::task::JoinHandle<Result<(), crossgate_adapter::ServeError>>,
    department: DepartmentClient<Channel>,
}

async fn start() -> Run {
    let registry = Arc::new(Registry::load_dir(format!("{ROOT}/schemas")).unwrap());
    let mapping = config::load_department(
        Path::new(&format!("{ROOT}/deploy/local")),
        "customs",
        &registry,
    )
    .unwrap();
    let (sl, system_uri) = listener().await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DepartmentSystemServer::new(System))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(sl))
            .await
    });
    let adapter = Adapter::new(
        mapping,
        registry,
        lazy_channel("http://127.0.0.1:1").unwrap(),
        lazy_channel(&system_uri).unwrap(),
    );
    let Served {
        stop,
        served,
        channel,
    } = serve_adapter(adapter.clone()).await;
    Run {
        stop,
        adapter,
        served,
        department: DepartmentClient::new(channel),
    }
}

fn delivery(id: &str, padding: usize) -> DeliverRequest {
    let person = json!({"name": "徐军", "pad": "x".repeat(padding)});
    DeliverRequest {
        request_id: format!("r-{id}"),
        provider: "public-security".into(),
        record: Some(Record {
            record_type: "person.v1".into(),
            record_id: id.into(),
            json: serde_json::to_vec(&person).unwrap(),
        }),
        delivery_id: id.into(),
    }
}

/// A delivery message the broker gives `millis` to answer.
fn message(sequence: u64, id: &str, millis: u32) -> DeliverMessage {
    DeliverMessage {
        sequence,
        delivery: Some(delivery(id, 0)),
        traceparent: String::new(),
        timeout_millis: millis,
    }
}

async fn open(
    run: &mut Run,
) -> (
    tokio::sync::mpsc::Sender<DeliverMessage>,
    tonic::Streaming<DeliverAnswer>,
) {
    let (send, rx) = tokio::sync::mpsc::channel(1024);
    let answers = run
        .department
        .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    (send, answers)
}

#[tokio::test]
async fn a_stuck_hand_over_is_answered_when_the_brokers_time_is_up_and_does_not_hold_the_shutdown()
{
    let mut run = start().await;
    let (send, mut answers) = open(&mut run).await;
    send.send(message(1, "hang-1", 300)).await.unwrap();
    send.send(message(2, "ok-2", 300)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("answered in time")
            .expect("the stream holds")
            .expect("not ended");
        got.push((answer.sequence, Code::from(answer.code)));
    }
    assert_eq!(got, [(2, Code::Ok), (1, Code::DeadlineExceeded)]);

    send.send(message(3, "hang-at-stop", 2_000)).await.unwrap();
    // Stopped once the system has it: taken before the stop, it is
    // answered, not refused as one sent while the adapter stops.
    until("the hand-over reaches the system", || {
        received("hang-at-stop")
    })
    .await;
    let _ = run.stop.take().expect("running").send(());
    let end = tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await
        .expect("the stream ends");
    // Answered when its two seconds are up: the drain lasts no longer than
    // the broker waits, whatever the system does.
    let last = end.expect("the stream holds").expect("an answer first");
    assert_eq!(
        (last.sequence, Code::from(last.code)),
        (3, Code::DeadlineExceeded)
    );
    tokio::time::timeout(Duration::from_secs(10), run.served)
        .await
        .expect("the adapter stops once it is answered")
        .expect("its task")
        .expect("served without error");
}

#[tokio::test]
async fn a_stopping_adapter_answers_further_deliveries_unavailable_and_never_hands_them_over() {
    let mut run = start().await;
    let (send, mut answers) = open(&mut run).await;
    // Taken before the stop: with the system, which never finishes it; the
    // broker gives it 5 s.
    send.send(message(1, "hang-before-stop", 5_000))
        .await
        .unwrap();
    until("the hand-over reaches the system", || {
        received("hang-before-stop")
    })
    .await;
    let _ = run.stop.take().expect("running").send(());
    until("the adapter is stopping", || run.adapter.is_closing()).await;
    // Sent while the adapter stops: answered at once, nothing handed over,
    // and marked so that the broker sends nothing more on this stream (its
    // lane tries the delivery again later, on another stream).
    send.send(message(2, "ok-after-stop", 5_000)).await.unwrap();
    let refused = next_answer(&mut answers).await;
    assert_eq!(
        (refused.sequence, Code::from(refused.code)),
        (2, Code::Unavailable),
        "{refused:?}"
    );
    assert!(refused.stopping, "{refused:?}");
    assert!(
        refused.message.contains("nothing was done"),
        "{}",
        refused.message
    );
    // The one taken before is answered (its time is up: the system still
    // has it), not refused, and then the stream ends.
    let taken = next_answer(&mut answers).await;
    assert_eq!(
        (taken.sequence, Code::from(taken.code), taken.stopping),
        (1, Code::DeadlineExceeded, false),
        "{taken:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(!received("ok-after-stop"), "refused, yet handed over");
}

#[tokio::test]
async fn stuck_hand_overs_do_not_stop_the_other_deliveries_of_their_stream() {
    let mut run = start().await;
    let (send, mut answers) = open(&mut run).await;
    // More stuck ones than the stream takes at once.
    for i in 0..300u64 {
        send.send(message(i, &format!("hang-{i}"), 500))
            .await
            .unwrap();
    }
    send.send(message(1000, "ok-1", 5_000)).await.unwrap();
    let mut stuck = 0;
    loop {
        let answer = next_answer(&mut answers).await;
        if answer.sequence == 1000 {
            assert_eq!(Code::from(answer.code), Code::Ok);
            break;
        }
        assert_eq!(Code::from(answer.code), Code::DeadlineExceeded);
        stuck += 1;
    }
    assert!(stuck >= 1, "ok-1 waited for a free place: {stuck}");
}

async fn next_answer(answers: &mut tonic::Streaming<DeliverAnswer>) -> DeliverAnswer {
    tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("answers keep coming")
        .expect("the stream holds")
        .expect("not ended")
}

#[tokio::test]
async fn once_its_hand_overs_are_full_the_adapter_turns_deliveries_away_until_some_finish() {
    let mut run = start().await;
    let (send, mut answers) = open(&mut run).await;
    // Hand-overs that outlive the broker's time fill the adapter: each is
    // answered DEADLINE_EXCEEDED and goes on.
    let full = u64::try_from(HAND_OVERS_MAX).unwrap();
    let sender = send.clone();
    tokio::spawn(async move {
        for i in 0..full {
            let _ = sender.send(message(i, &format!("held-{i}"), 100)).await;
        }
    });
    for _ in 0..full {
        let answer = next_answer(&mut answers).await;
        assert_eq!(
            Code::from(answer.code),
            Code::DeadlineExceeded,
            "{}",
            answer.message
        );
    }

    // Full: a new delivery, over the stream or as a call, is turned away at
    // once with a reason and a retry (UNAVAILABLE), not taken.
    send.send(message(5000, "ok-1", 5_000)).await.unwrap();
    let turned = next_answer(&mut answers).await;
    assert_eq!(
        (turned.sequence, Code::from(turned.code)),
        (5000, Code::Unavailable)
    );
    assert!(
        turned
            .message
            .contains("hand-overs are still with the department system"),
        "{}",
        turned.message
    );
    let call = run.department.deliver(delivery("ok-2", 0)).await;
    assert_eq!(call.map(|_| ()).unwrap_err().code(), Code::Unavailable);

    // The system catches up: deliveries are taken again, and a held one
    // sent again is acknowledged as the repeat it is.
    RELEASED.send_replace(true);
    let mut sequence = 6000;
    loop {
        send.send(message(sequence, "ok-1", 5_000)).await.unwrap();
        let answer = next_answer(&mut answers).await;
        if Code::from(answer.code) == Code::Ok {
            break;
        }
        assert_eq!(Code::from(answer.code), Code::Unavailable);
        assert!(sequence < 6100, "the adapter never took deliveries again");
        sequence += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send.send(message(7000, "held-0", 5_000)).await.unwrap();
    let repeat = next_answer(&mut answers).await;
    assert_eq!((repeat.sequence, Code::from(repeat.code)), (7000, Code::Ok));
    run.department
        .deliver(delivery("ok-2", 0))
        .await
        .expect("a call is taken again");
}
