//! Fetches over one stream per adapter, against adapters scripted to answer
//! out of order and with sequences never sent, to end the stream with
//! fetches in hand, and not to know the stream at all: each fetch gets the
//! answer to its own question or what a `Fetch` call would have answered.

mod common;

use crossgate_broker::delivery::Adapters;
use crossgate_proto::department_server::Department;
use crossgate_proto::{
    DeliverAnswer, DeliverMessage, DeliverRequest, DeliverResponse, FetchAnswer, FetchMessage,
    FetchRequest, FetchResponse, Record,
};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, Copy)]
enum Script {
    /// Take this many messages, then answer a sequence never sent, then
    /// answer them last first; then answer each further message as it comes.
    Reversed(usize),
    /// Take this many messages and break the stream without an answer.
    BreakAfter(usize),
    /// Not implemented: `Fetch` calls only.
    NoStream,
    /// Answer each message as it comes, except: never a fetch whose request
    /// id starts with "stuck", and one starting with "late" only after
    /// 1.5 s.
    ByName,
    /// Answer no fetch, but a sequence never sent every 50 ms.
    Strays,
    /// Answer the first fetch, then that answer again every 50 ms, and
    /// no other fetch.
    Repeats,
    /// Answer each fetch a second after it came.
    Slow,
    /// On the first stream, answer each fetch as an adapter that is
    /// stopping does (UNAVAILABLE, nothing done), keeping the stream open;
    /// on later streams, as it comes.
    StoppingFirst,
    /// On every stream, as an adapter that is stopping.
    AlwaysStopping,
    /// Take the first message and, this long after, end the stream with
    /// UNIMPLEMENTED (after its headers): a build that takes no streams.
    RefusedAfter(Duration),
}

#[derive(Clone)]
struct Fake {
    script: Script,
    opened: Arc<AtomicUsize>,
    /// Request ids of the `Fetch` calls taken.
    calls: Arc<Mutex<Vec<String>>>,
    /// The time each call gave the adapter (its `grpc-timeout`).
    call_timeouts: Arc<Mutex<Vec<Duration>>>,
}

/// The answer to a fetch: one record whose id is the fetch's request id,
/// so that a test sees whose question it answers.
fn found(fetch: &FetchRequest) -> FetchResponse {
    FetchResponse {
        records: vec![Record {
            record_type: fetch.record_type.clone(),
            record_id: fetch.request_id.clone(),
            json: b"{}".to_vec(),
        }],
        withheld_records: 0,
    }
}

fn answer(m: &FetchMessage) -> FetchAnswer {
    let fetch = m.fetch.clone().unwrap_or_default();
    if fetch.request_id.starts_with("missing") {
        return FetchAnswer {
            sequence: m.sequence,
            code: Code::NotFound as i32,
            message: "no person.v1 record matches".into(),
            response: None,
            stopping: false,
        };
    }
    FetchAnswer {
        sequence: m.sequence,
        code: 0,
        message: String::new(),
        response: Some(found(&fetch)),
        stopping: false,
    }
}

#[tonic::async_trait]
impl Department for Fake {
    async fn deliver(
        &self,
        _request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type DeliverStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DeliverAnswer, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        _request: Request<Streaming<DeliverMessage>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| crossgate_config::parse_grpc_timeout(v.to_str().ok()?))
            .expect("a call carries its time");
        self.call_timeouts.lock().unwrap().push(timeout);
        let fetch = request.into_inner();
        self.calls.lock().unwrap().push(fetch.request_id.clone());
        Ok(Response::new(found(&fetch)))
    }

    type FetchStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<FetchAnswer, Status>> + Send>>;

    async fn fetch_stream(
        &self,
        request: Request<Streaming<FetchMessage>>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        let earlier = self.opened.fetch_add(1, Ordering::SeqCst);
        let script = match self.script {
            Script::StoppingFirst if earlier > 0 => Script::ByName,
            Script::AlwaysStopping => Script::StoppingFirst,
            script => script,
        };
        if let Script::NoStream = script {
            return Err(Status::unimplemented("no FetchStream here"));
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        if let Script::RefusedAfter(after) = script {
            return answered_by(rx, async move {
                let Ok(Some(_first)) = incoming.message().await else {
                    return;
                };
                tokio::time::sleep(after).await;
                let _ = tx
                    .send(Err(Status::unimplemented("no FetchStream in this build")))
                    .await;
            });
        }
        if let Script::StoppingFirst = script {
            return answered_by(rx, async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let stopping = FetchAnswer {
                        sequence: m.sequence,
                        code: Code::Unavailable as i32,
                        message: "the adapter is stopping; nothing was done; try again".into(),
                        response: None,
                        stopping: true,
                    };
                    if tx.send(Ok(stopping)).await.is_err() {
                        return;
                    }
                }
            });
        }
        if let Script::Repeats = script {
            return answered_by(rx, async move {
                let Ok(Some(first)) = incoming.message().await else {
                    return;
                };
                let _incoming = incoming;
                loop {
                    if tx.send(Ok(answer(&first))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        if let Script::Slow = script {
            return answered_by(rx, async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = tx.send(Ok(answer(&m))).await;
                    });
                }
            });
        }
        if let Script::Strays = script {
            return answered_by(rx, async move {
                let _incoming = incoming;
                let mut sequence = 1u64 << 40;
                loop {
                    let stray = FetchMessage {
                        sequence,
                        fetch: Some(FetchRequest {
                            request_id: "stray".into(),
                            ..FetchRequest::default()
                        }),
                        ..FetchMessage::default()
                    };
                    if tx.send(Ok(answer(&stray))).await.is_err() {
                        return;
                    }
                    sequence += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        if let Script::ByName = script {
            return answered_by(rx, async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let id = m.fetch.as_ref().map_or("", |f| f.request_id.as_str());
                    if id.starts_with("stuck") {
                        continue;
                    }
                    let tx = tx.clone();
                    let late = id.starts_with("late");
                    tokio::spawn(async move {
                        if late {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        let _ = tx.send(Ok(answer(&m))).await;
                    });
                }
            });
        }
        answered_by(rx, async move {
            let n = match script {
                Script::Reversed(n) | Script::BreakAfter(n) => n,
                Script::NoStream
                | Script::ByName
                | Script::Strays
                | Script::Repeats
                | Script::Slow
                | Script::StoppingFirst
                | Script::AlwaysStopping
                | Script::RefusedAfter(_) => 0,
            };
            let mut taken = Vec::new();
            while taken.len() < n {
                match incoming.message().await {
                    Ok(Some(m)) => taken.push(m),
                    _ => return,
                }
            }
            if let Script::BreakAfter(_) = script {
                let _ = tx
                    .send(Err(Status::internal("the adapter fell over")))
                    .await;
                return;
            }
            // An answer to a fetch nobody asked: it must reach nobody.
            let stray = FetchMessage {
                sequence: u64::MAX,
                fetch: Some(FetchRequest {
                    request_id: "stray".into(),
                    ..FetchRequest::default()
                }),
                ..FetchMessage::default()
            };
            let _ = tx.send(Ok(answer(&stray))).await;
            for m in taken.iter().rev() {
                let _ = tx.send(Ok(answer(m))).await;
            }
            while let Ok(Some(m)) = incoming.message().await {
                let _ = tx.send(Ok(answer(&m))).await;
            }
        })
    }
}

/// The stream's answers, taken from `rx` while `script` plays in a task of
/// its own.
fn answered_by(
    rx: mpsc::Receiver<Result<FetchAnswer, Status>>,
    script: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Response<<Fake as Department>::FetchStreamStream>, Status> {
    tokio::spawn(script);
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

async fn start(script: Script) -> (Fake, Adapters) {
    let fake = Fake {
        script,
        opened: Arc::new(AtomicUsize::new(0)),
        calls: Arc::new(Mutex::new(Vec::new())),
        call_timeouts: Arc::new(Mutex::new(Vec::new())),
    };
    let adapters = common::serve_as(fake.clone(), "public-security", 4 << 20).await;
    (fake, adapters)
}

async fn fetch(adapters: &Adapters, request_id: &str) -> Result<FetchResponse, Status> {
    tokio::time::timeout(Duration::from_secs(10), fetch_within(adapters, request_id))
        .await
        .expect("every fetch is answered")
}

/// Ask, giving up (as the broker does at a query's deadline) when no
/// answer comes within the time.
async fn fetch_within(adapters: &Adapters, request_id: &str) -> Result<FetchResponse, Status> {
    let make = || FetchRequest {
        request_id: request_id.into(),
        consumer: "education".into(),
        record_type: "person.v1".into(),
        purpose: "school-enrolment".into(),
        criteria: vec![],
        limit: 2,
    };
    adapters
        .fetch(
            "public-security",
            make,
            Duration::from_secs(5),
            String::new(),
        )
        .await
}

async fn give_up_after(
    millis: u64,
    adapters: &Adapters,
    request_id: &str,
) -> Result<Result<FetchResponse, Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(
        Duration::from_millis(millis),
        fetch_within(adapters, request_id),
    )
    .await
}

fn answered_for(answer: &FetchResponse) -> &str {
    &answer.records[0].record_id
}

#[tokio::test]
async fn each_fetch_gets_the_answer_to_its_own_question_whatever_the_order() {
    let (fake, adapters) = start(Script::Reversed(3)).await;
    let (a, b, c) = tokio::join!(
        fetch(&adapters, "query-a"),
        fetch(&adapters, "query-b"),
        fetch(&adapters, "missing-c"),
    );
    assert_eq!(answered_for(&a.unwrap()), "query-a");
    assert_eq!(answered_for(&b.unwrap()), "query-b");
    let c = c.unwrap_err();
    assert_eq!(c.code(), Code::NotFound, "{c:?}");
    // A later fetch goes over the same stream, and no call was made.
    let d = fetch(&adapters, "query-d").await.unwrap();
    assert_eq!(answered_for(&d), "query-d");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_adapter_without_the_stream_is_asked_by_calls_and_no_query_fails_for_it() {
    let (fake, adapters) = start(Script::NoStream).await;
    let first = fetch(&adapters, "query-1")
        .await
        .expect("asked again as a call");
    assert_eq!(answered_for(&first), "query-1");
    let second = fetch(&adapters, "query-2").await.unwrap();
    assert_eq!(answered_for(&second), "query-2");
    // The stream was asked for once; both fetches were calls.
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    assert_eq!(*fake.calls.lock().unwrap(), ["query-1", "query-2"]);
}

#[tokio::test]
async fn fetches_in_hand_when_the_stream_breaks_are_unavailable_and_not_asked_again() {
    let (fake, adapters) = start(Script::BreakAfter(2)).await;
    let (a, b) = tokio::join!(fetch(&adapters, "query-a"), fetch(&adapters, "query-b"));
    for result in [a, b] {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // The adapter's own words stay out of it.
        assert!(!status.message().contains("fell over"), "{status:?}");
    }
    assert!(fake.calls.lock().unwrap().is_empty());
    // The next fetch opens a new stream.
    let (c, d) = tokio::join!(fetch(&adapters, "query-c"), fetch(&adapters, "query-d"));
    assert_eq!(c.unwrap_err().code(), Code::Unavailable);
    assert_eq!(d.unwrap_err().code(), Code::Unavailable);
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_given_up_fetch_keeps_a_stream_that_answers_others_and_its_late_answer_reaches_nobody() {
    let (fake, adapters) = start(Script::ByName).await;
    // A fetch given up sooner than a stuck stream could be told (a
    // consumer's tiny deadline), on a quiet stream: the stream stays.
    assert_eq!(
        answered_for(&fetch(&adapters, "query-0").await.unwrap()),
        "query-0"
    );
    assert!(give_up_after(20, &adapters, "stuck-0").await.is_err());
    // A fetch the adapter never answers, given up after a second, while
    // another is answered on the same stream meanwhile: the stream stays.
    let (stuck, other) = tokio::join!(give_up_after(1000, &adapters, "stuck-1"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fetch(&adapters, "query-a").await
    });
    assert!(stuck.is_err(), "the stuck fetch was answered: {stuck:?}");
    assert_eq!(answered_for(&other.unwrap()), "query-a");
    assert_eq!(
        answered_for(&fetch(&adapters, "query-b").await.unwrap()),
        "query-b"
    );
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);

    // A fetch given up before its answer comes: the answer, when it comes
    // (1.5 s after the fetch), reaches nobody; the fetches after it get
    // their own.
    let (late, other) = tokio::join!(give_up_after(1000, &adapters, "late-1"), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fetch(&adapters, "query-e").await
    });
    assert!(late.is_err(), "answered before its time: {late:?}");
    assert_eq!(answered_for(&other.unwrap()), "query-e");
    for n in 0..10 {
        let id = format!("query-c{n}");
        assert_eq!(answered_for(&fetch(&adapters, &id).await.unwrap()), id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);

    // Given up after a while on a stream that answered nobody meanwhile:
    // the next fetch opens a new stream, as the old one may be stuck.
    assert!(give_up_after(400, &adapters, "stuck-2").await.is_err());
    assert_eq!(
        answered_for(&fetch(&adapters, "query-d").await.unwrap()),
        "query-d"
    );
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn answers_to_sequences_never_sent_do_not_keep_a_stuck_stream() {
    let (fake, adapters) = start(Script::Strays).await;
    // The adapter answers, but never a fetch the broker sent: a fetch given
    // up after a while marks the stream as perhaps stuck all the same, and
    // the next fetch opens another.
    assert!(give_up_after(400, &adapters, "query-1").await.is_err());
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    assert!(give_up_after(400, &adapters, "query-2").await.is_err());
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fetch_refused_by_a_stopping_adapter_is_asked_again_on_a_new_stream() {
    let (fake, adapters) = start(Script::StoppingFirst).await;
    // The first stream's adapter is stopping: it refuses the fetch, nothing
    // done. The fetch is asked once more, on a new stream (during a
    // rolling restart, another of the provider's adapters), and answered.
    let answered = fetch(&adapters, "query-1").await.unwrap();
    assert_eq!(answered_for(&answered), "query-1");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    // Nothing more goes on the stopping stream.
    let answered = fetch(&adapters, "query-2").await.unwrap();
    assert_eq!(answered_for(&answered), "query-2");
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_fetch_refused_twice_by_stopping_adapters_is_unavailable() {
    let (fake, adapters) = start(Script::AlwaysStopping).await;
    let refused = fetch(&adapters, "query-1").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Asked twice, each on its own stream, and not as a call.
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn answers_repeated_do_not_keep_a_stuck_stream() {
    let (fake, adapters) = start(Script::Repeats).await;
    assert_eq!(
        answered_for(&fetch(&adapters, "query-1").await.unwrap()),
        "query-1"
    );
    // The adapter answers the first fetch again and again, and no other:
    // a fetch given up after a while marks the stream as perhaps stuck.
    assert!(give_up_after(400, &adapters, "query-2").await.is_err());
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    // The next fetch goes on a new stream, and is answered there.
    assert_eq!(
        answered_for(&fetch(&adapters, "query-3").await.unwrap()),
        "query-3"
    );
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_slow_adapter_keeps_its_stream_though_its_callers_give_up() {
    let (fake, adapters) = start(Script::Slow).await;
    // Every answer comes a second after its fetch. One caller waits for
    // it; the others come every 500 ms and each gives up after 700 ms,
    // hearing meanwhile the late answer to the one before (200 ms before
    // it gives up). The stream is slow, not stuck: one serves them all.
    let patient = fetch(&adapters, "query-patient");
    let impatient = futures_util::future::join_all((1..=4).map(|n| {
        let adapters = &adapters;
        async move {
            tokio::time::sleep(Duration::from_millis(500 * n)).await;
            give_up_after(700, adapters, &format!("query-{n}")).await
        }
    }));
    let (patient, impatient) = tokio::join!(patient, impatient);
    assert_eq!(answered_for(&patient.unwrap()), "query-patient");
    assert!(impatient.iter().all(Result::is_err), "{impatient:?}");
    // The next fetch goes on the same stream.
    assert_eq!(
        answered_for(&fetch(&adapters, "query-last").await.unwrap()),
        "query-last"
    );
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fetch_asked_again_as_a_call_gives_the_adapter_only_the_time_left() {
    let (fake, adapters) = start(Script::RefusedAfter(Duration::from_secs(1))).await;
    // The stream took the fetch and a second later turned out to be one
    // the adapter does not serve: the fetch is asked again as a call, with
    // what is left of its 5 s.
    let answered = fetch(&adapters, "query-1")
        .await
        .expect("asked again as a call");
    assert_eq!(answered_for(&answered), "query-1");
    assert_eq!(*fake.calls.lock().unwrap(), ["query-1"]);
    let given = fake.call_timeouts.lock().unwrap()[0];
    assert!(
        given <= Duration::from_millis(4_050) && given >= Duration::from_secs(3),
        "the call was given {given:?}"
    );
}
