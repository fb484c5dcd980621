//! Deliveries over one stream per adapter, against adapters scripted to
//! answer out of order, to answer what was never asked, to end the stream
//! with deliveries in hand, to send their headers only with their first
//! answer, and not to know the stream at all: each attempt hears what a
//! `Deliver` call would have answered.

mod common;

use crossgate_broker::delivery::Adapters;
use crossgate_proto::department_server::Department;
use crossgate_proto::{
    DeliverAnswer, DeliverMessage, DeliverRequest, DeliverResponse, FetchAnswer, FetchMessage,
    FetchRequest, FetchResponse,
};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, Copy)]
enum Script {
    /// Take this many messages, then answer them last first, after an
    /// answer to a sequence never sent; then answer the first again; then
    /// answer each further message as it comes.
    Reversed(usize),
    /// Take this many messages and end the stream without an answer.
    EndAfter(usize),
    /// Not implemented: `Deliver` calls only.
    NoStream,
    /// Answer nothing until this long has passed.
    Slow(Duration),
    /// Never answer the call: no headers, no answers.
    NoHeaders,
    /// Send headers, then end the stream with UNIMPLEMENTED.
    UnimplementedAfterHeaders,
    /// Read the first message before answering the call (its headers go
    /// out with the first answer, as grpc-go and grpc-java servers do);
    /// then answer each message as it comes.
    HeadersWithFirstAnswer,
}

#[derive(Clone)]
struct Fake {
    script: Arc<Mutex<Script>>,
    opened: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<String>>>,
}

fn answer(m: &DeliverMessage) -> DeliverAnswer {
    let id = m.delivery.as_ref().map_or("", |d| d.delivery_id.as_str());
    let (code, message) = if id.starts_with("refuse") {
        (Code::InvalidArgument, "the system refuses it".to_owned())
    } else {
        (Code::Ok, String::new())
    };
    DeliverAnswer {
        sequence: m.sequence,
        code: code as i32,
        message,
        stopping: false,
    }
}

#[tonic::async_trait]
impl Department for Fake {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let id = request.into_inner().delivery_id;
        self.calls.lock().unwrap().push(id);
        Ok(Response::new(DeliverResponse {}))
    }

    type DeliverStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DeliverAnswer, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<DeliverMessage>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let script = *self.script.lock().unwrap();
        match script {
            Script::NoStream => return Err(Status::unimplemented("no DeliverStream here")),
            Script::NoHeaders => std::future::pending::<()>().await,
            _ => {}
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        if let Script::HeadersWithFirstAnswer = script {
            let first = incoming
                .message()
                .await?
                .ok_or_else(|| Status::cancelled("ended before a message"))?;
            tx.send(Ok(answer(&first))).await.expect("room");
        }
        if let Script::UnimplementedAfterHeaders = script {
            tx.send(Err(Status::unimplemented("no DeliverStream here")))
                .await
                .expect("room");
        }
        tokio::spawn(async move {
            match script {
                Script::Reversed(n) => {
                    let mut taken = Vec::new();
                    while taken.len() < n {
                        match incoming.message().await {
                            Ok(Some(m)) => taken.push(m),
                            _ => return,
                        }
                    }
                    let stray = DeliverAnswer {
                        sequence: u64::MAX,
                        code: Code::Ok as i32,
                        message: String::new(),
                        stopping: false,
                    };
                    let _ = tx.send(Ok(stray)).await;
                    for m in taken.iter().rev() {
                        let _ = tx.send(Ok(answer(m))).await;
                    }
                    let mut again = answer(&taken[0]);
                    again.code = Code::Internal as i32;
                    let _ = tx.send(Ok(again)).await;
                    while let Ok(Some(m)) = incoming.message().await {
                        let _ = tx.send(Ok(answer(&m))).await;
                    }
                }
                Script::EndAfter(n) => {
                    for _ in 0..n {
                        if !matches!(incoming.message().await, Ok(Some(_))) {
                            return;
                        }
                    }
                    drop(tx);
                }
                Script::Slow(wait) => {
                    while let Ok(Some(m)) = incoming.message().await {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = tx.send(Ok(answer(&m))).await;
                        });
                    }
                }
                Script::HeadersWithFirstAnswer => {
                    while let Ok(Some(m)) = incoming.message().await {
                        let _ = tx.send(Ok(answer(&m))).await;
                    }
                }
                Script::NoStream | Script::NoHeaders | Script::UnimplementedAfterHeaders => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch(
        &self,
        _request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type FetchStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<FetchAnswer, Status>> + Send>>;

    async fn fetch_stream(
        &self,
        _request: Request<Streaming<FetchMessage>>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn start(script: Script) -> (Fake, Adapters) {
    start_with_limit(script, 16 << 20).await
}

/// `limit`: the largest message the fake adapter decodes.
async fn start_with_limit(script: Script, limit: usize) -> (Fake, Adapters) {
    let fake = Fake {
        script: Arc::new(Mutex::new(script)),
        opened: Arc::new(AtomicUsize::new(0)),
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let adapters = common::serve_as(fake.clone(), "commerce", limit).await;
    (fake, adapters)
}

fn delivery(id: &str) -> DeliverRequest {
    DeliverRequest {
        request_id: format!("r-{id}"),
        provider: "customs".into(),
        record: None,
        delivery_id: id.into(),
    }
}

async fn deliver(adapters: &Adapters, id: &str) -> Result<(), Status> {
    let attempt = adapters.deliver(
        "commerce",
        delivery(id),
        Duration::from_secs(5),
        String::new(),
    );
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("every attempt is answered")
}

#[tokio::test]
async fn answers_in_any_order_reach_their_own_attempts_over_one_stream() {
    let (fake, adapters) = start(Script::Reversed(8)).await;
    let ids: Vec<String> = (0..8)
        .map(|i| {
            if i == 3 {
                "refuse-3".to_owned()
            } else {
                format!("d-{i}")
            }
        })
        .collect();
    let attempts = ids.iter().map(|id| deliver(&adapters, id));
    let results = futures_util::future::join_all(attempts).await;
    for (id, result) in ids.iter().zip(&results) {
        match id.as_str() {
            "refuse-3" => {
                let status = result.as_ref().expect_err("refused");
                assert_eq!(status.code(), Code::InvalidArgument, "{id}");
                assert_eq!(status.message(), "the system refuses it");
            }
            _ => assert!(result.is_ok(), "{id}: {result:?}"),
        }
    }
    // The stray and the repeated answers told nobody anything; the stream
    // still carries the next delivery.
    deliver(&adapters, "d-8").await.expect("the stream goes on");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "one stream for all");
    assert!(fake.calls.lock().unwrap().is_empty(), "no Deliver calls");
}

#[tokio::test]
async fn a_stream_that_ends_with_deliveries_in_hand_leaves_them_unavailable_and_the_next_opens_anew()
 {
    let (fake, adapters) = start(Script::EndAfter(3)).await;
    let results =
        futures_util::future::join_all(["d-1", "d-2", "d-3"].map(|id| deliver(&adapters, id)))
            .await;
    for result in results {
        let status = result.expect_err("no answer came");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    *fake.script.lock().unwrap() = Script::Reversed(1);
    deliver(&adapters, "d-1").await.expect("a new stream");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_attempt_that_gives_up_waiting_sends_the_next_over_a_new_stream() {
    let (fake, adapters) = start(Script::Slow(Duration::from_millis(1500))).await;
    // Given up after the least wait that says a silent stream may be stuck.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        adapters.deliver(
            "commerce",
            delivery("d-1"),
            Duration::from_secs(5),
            String::new(),
        ),
    )
    .await;
    assert!(gave_up.is_err(), "no answer within 300 ms");
    // The stream may be stuck: the next attempt opens another, and hears
    // its own answer.
    deliver(&adapters, "refuse-2")
        .await
        .expect_err("its own answer");
    deliver(&adapters, "d-3").await.expect("delivered");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stream_whose_headers_never_come_is_let_go_when_its_attempt_gives_up() {
    let (fake, adapters) = start(Script::NoHeaders).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        adapters.deliver(
            "commerce",
            delivery("d-1"),
            Duration::from_millis(300),
            String::new(),
        ),
    )
    .await;
    assert!(gave_up.is_err(), "no answer from a stream never opened");
    *fake.script.lock().unwrap() = Script::Reversed(1);
    deliver(&adapters, "d-1").await.expect("over a new stream");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_adapter_without_delivery_streams_is_sent_calls() {
    let (fake, adapters) = start(Script::NoStream).await;
    // The first attempt learns it and is retried (as a call, by the lane).
    let first = deliver(&adapters, "d-1")
        .await
        .expect_err("the stream is refused");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    for id in ["d-1", "d-2", "d-3"] {
        deliver(&adapters, id).await.expect("delivered by a call");
    }
    assert_eq!(*fake.calls.lock().unwrap(), ["d-1", "d-2", "d-3"]);
    assert_eq!(
        fake.opened.load(Ordering::SeqCst),
        1,
        "asked once, not for every delivery"
    );
}

#[tokio::test]
async fn an_adapter_that_sends_its_headers_with_its_first_answer_gets_every_delivery() {
    let (fake, adapters) = start(Script::HeadersWithFirstAnswer).await;
    for id in ["d-1", "refuse-2", "d-3"] {
        let result = deliver(&adapters, id).await;
        assert_eq!(result.is_ok(), id != "refuse-2", "{id}: {result:?}");
    }
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_delivery_too_large_for_one_message_goes_as_a_call_and_the_stream_stays() {
    let (fake, adapters) = start(Script::Reversed(1)).await;
    deliver(&adapters, "d-1").await.expect("over the stream");
    let mut big = delivery("d-big");
    big.record = Some(crossgate_proto::Record {
        record_type: "customs-declaration.v1".into(),
        record_id: "1".into(),
        json: vec![b' '; 5 << 20],
    });
    let sent = adapters.deliver("commerce", big, Duration::from_secs(5), String::new());
    // The fake takes it; an adapter at gRPC's usual limit refuses it alone
    // with OUT_OF_RANGE, as it always has.
    sent.await.expect("taken by a call");
    assert_eq!(*fake.calls.lock().unwrap(), ["d-big"]);
    deliver(&adapters, "d-2").await.expect("the stream goes on");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unimplemented_after_the_headers_also_sends_the_adapter_calls() {
    let (fake, adapters) = start(Script::UnimplementedAfterHeaders).await;
    let first = deliver(&adapters, "d-1")
        .await
        .expect_err("the stream is refused");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    for id in ["d-1", "d-2"] {
        deliver(&adapters, id).await.expect("delivered by a call");
    }
    assert_eq!(*fake.calls.lock().unwrap(), ["d-1", "d-2"]);
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refusal_of_the_stream_after_messages_went_out_is_no_attempts_own_refusal() {
    // Messages go out before the headers: an adapter that reads one before
    // it answers the call may refuse the stream for another's size. The
    // small delivery's outcome is unknown, not refused for good.
    let (_fake, adapters) = start_with_limit(Script::HeadersWithFirstAnswer, 1 << 20).await;
    let mut big = delivery("d-big");
    big.record = Some(crossgate_proto::Record {
        record_type: "customs-declaration.v1".into(),
        record_id: "1".into(),
        json: vec![b' '; 2 << 20],
    });
    let big = adapters.deliver("commerce", big, Duration::from_secs(5), String::new());
    let small = async {
        tokio::task::yield_now().await;
        deliver(&adapters, "d-small").await
    };
    let (big, small) = futures_util::future::join(big, small).await;
    let code = |r: &Result<(), Status>| r.as_ref().err().map(Status::code);
    assert!(
        matches!(code(&small), None | Some(Code::Unavailable)),
        "{small:?}"
    );
    assert_eq!(code(&big), Some(Code::Unavailable), "{big:?}");
}
