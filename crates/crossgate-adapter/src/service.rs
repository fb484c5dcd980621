//! The adapter: `Ingress` towards its own department's system, `Department`
//! towards the broker. Each call is map → validate → forward, in both
//! directions.

use crate::seen::{Handing, Seen};
use crossgate_mapping::{DepartmentMapping, MapFault, RecordMapping};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::department_server::Department;
use crossgate_proto::department_system_client::DepartmentSystemClient;
use crossgate_proto::ingress_server::Ingress;
use crossgate_proto::{
    Criterion, DeliverAnswer, DeliverMessage, DeliverRequest, DeliverResponse, DeliveryOutcome,
    DeliveryReport, FetchAnswer, FetchMessage, FetchRequest, FetchResponse, FindRequest,
    LookupRequest, LookupResponse, NativeRecord, PublishRequest, QueryRequest, ReceiveRequest,
    Record, SubmitRequest, SubmitResponse,
};
use crossgate_schema::{Registry, parse_document};
use crossgate_telemetry::{client_step, server_span, step};
use futures_util::FutureExt as _;
use prost::Message as _;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tonic::transport::CertificateDer;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tracing::Instrument;

/// One department's adapter.
#[derive(Clone)]
pub struct Adapter {
    inner: Arc<Inner>,
}

struct Inner {
    mapping: DepartmentMapping,
    registry: Arc<Registry>,
    broker: BrokerClient<crate::Replicas>,
    system: DepartmentSystemClient<Channel>,
    /// Under mutual TLS: who may call which service.
    peers: Option<Peers>,
    /// Delivery ids already passed on to the system.
    seen: Option<Arc<Seen>>,
    /// Set when the server shuts down: the broker's streams stop taking
    /// messages, answer those in hand and end, so the server's drain is not
    /// held open by a stream the broker would keep forever.
    closing: watch::Sender<bool>,
    /// Hand-overs under way, by calls and streams alike: at most
    /// [`HAND_OVERS_MAX`].
    hand_overs: Arc<Semaphore>,
    /// Fetches under way, by calls and streams alike: at most
    /// [`FETCHES_MAX`].
    fetches: Arc<Semaphore>,
}

/// Hand-overs to the system under way at once, over all calls and streams.
/// A hand-over whose broker stopped waiting goes on (its record may already
/// be with the system), so without this bound a stuck system and the
/// broker's retries would pile up tasks and connections without end. One
/// over it is answered UNAVAILABLE at once, which the broker retries after
/// its back-off; the broker sends each receiver at most its lane's
/// `concurrency` (16 by default) at a time, so only hand-overs that outlived
/// their time fill it.
pub const HAND_OVERS_MAX: usize = 1024;

/// Fetches from the system under way at once, over all calls and streams.
/// Each stream serves at most [`STREAM_IN_FLIGHT`] at once, but the broker
/// opens a new stream when one seems stuck, and a fetch whose broker gave
/// up runs to its own time: without this bound a slow system and the
/// broker's new streams would pile up finds. One over it is answered
/// UNAVAILABLE at once (the query fails fast; its consumer may ask again).
pub const FETCHES_MAX: usize = 1024;

/// A stream of answers to the broker.
type StreamOf<A> = Pin<Box<dyn tokio_stream::Stream<Item = Result<A, Status>> + Send>>;

/// Messages of one stream served at once; the stream is not read
/// further until one of them is answered or its time is up.
const STREAM_IN_FLIGHT: u32 = 256;

/// How long a stream's message waits for its answer when the broker gave
/// no time, and the most it may give: the server's own limit on a call
/// (`ServerLimits::request_timeout`'s default), so that a stream holds the
/// drain no longer than calls do.
const STREAM_ANSWER_DEFAULT: Duration = Duration::from_secs(30);
const STREAM_ANSWER_MAX: Duration = Duration::from_secs(60);

/// The time a stream's message gives its answer.
fn answer_within(timeout_millis: u32) -> Duration {
    match timeout_millis {
        0 => STREAM_ANSWER_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)).min(STREAM_ANSWER_MAX),
    }
}

/// Under mutual TLS, `Department` may be called only by the broker and
/// `Ingress` only by the department's own system (its certificate names the
/// department).
#[derive(Debug, Clone)]
pub struct Peers {
    pub broker: String,
    /// Who each caller's certificate names; a revoked caller is refused.
    identities: Arc<crossgate_tls::peers::Identities>,
}

impl Peers {
    /// The broker is `broker`; callers are checked against the CA's
    /// revocation lists when given.
    pub fn new(
        broker: impl Into<String>,
        revocation: Option<Arc<crossgate_tls::revocation::Revocation>>,
    ) -> Self {
        Peers {
            broker: broker.into(),
            identities: Arc::new(crossgate_tls::peers::Identities::new(revocation)),
        }
    }
}

impl Adapter {
    /// `broker` and `system` may be lazily connected channels: the adapter
    /// starts even when neither is up yet, and a call made while one is down
    /// answers `UNAVAILABLE`.
    pub fn new(
        mapping: DepartmentMapping,
        registry: Arc<Registry>,
        broker: impl Into<crate::Replicas>,
        system: Channel,
    ) -> Self {
        Adapter {
            inner: Arc::new(Inner {
                mapping,
                registry,
                broker: BrokerClient::new(broker.into()),
                system: DepartmentSystemClient::new(system),
                peers: None,
                seen: Some(Arc::new(Seen::memory(crate::seen::DEFAULT_CAPACITY))),
                closing: watch::channel(false).0,
                hand_overs: Arc::new(Semaphore::new(HAND_OVERS_MAX)),
                fetches: Arc::new(Semaphore::new(FETCHES_MAX)),
            }),
        }
    }

    /// Remember passed-on delivery ids in this store (a file, so that they
    /// survive a restart) instead of in memory. Call before the adapter is
    /// cloned or served.
    pub fn with_seen(mut self, seen: Seen) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.seen = Some(Arc::new(seen)),
            None => tracing::error!("with_seen called on a shared adapter; store not set"),
        }
        self
    }

    /// Check callers' certificates: the broker for `Department`, the
    /// department itself for `Ingress`. For adapters served over mutual TLS;
    /// call before the adapter is cloned or served.
    pub fn with_peers(mut self, peers: Peers) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.peers = Some(peers),
            None => tracing::error!("with_peers called on a shared adapter; peers not set"),
        }
        self
    }

    /// Under mutual TLS, the caller must be `expected`.
    fn check_peer<T>(&self, request: &Request<T>, expected: &str) -> Result<(), Status> {
        if self.inner.peers.is_none() {
            return Ok(());
        }
        self.check_certs(request.peer_certs().as_deref().map(Vec::as_slice), expected)
    }

    /// [`Self::check_peer`] for certificates kept from a stream's start:
    /// each message of a stream is checked as a call would be (a
    /// certificate revoked while the stream is open is refused from then on).
    fn check_certs(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
        expected: &str,
    ) -> Result<(), Status> {
        let Some(peers) = &self.inner.peers else {
            return Ok(());
        };
        let caller = peers.identities.identify(certs).map_err(|why| match why {
            crossgate_tls::peers::Unidentified::NoParty => {
                Status::unauthenticated("a client certificate is required")
            }
            revoked => Status::unauthenticated(revoked.to_string()),
        })?;
        match caller {
            id if id.as_ref() == expected => Ok(()),
            id => Err(Status::permission_denied(format!(
                "{id} may not call this service of {}'s adapter",
                self.department()
            ))),
        }
    }

    /// End the broker's streams (the server is shutting down): each
    /// answers what it has taken, answers anything sent meanwhile
    /// UNAVAILABLE (nothing done), and ends.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Whether the server is shutting down (its streams were told).
    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    fn broker_id(&self) -> &str {
        self.inner.peers.as_ref().map_or("", |p| p.broker.as_str())
    }

    pub fn department(&self) -> &str {
        &self.inner.mapping.department
    }

    fn native_mapping(&self, record: &NativeRecord, doc: &Value) -> Result<&RecordMapping, Status> {
        let mapping = &self.inner.mapping;
        let found = if record.native_type.is_empty() {
            mapping.detect_native(doc)
        } else {
            mapping.native(&record.native_type)
        };
        found.ok_or_else(|| {
            let known: Vec<&str> = mapping
                .records
                .iter()
                .map(|r| r.native_type.as_str())
                .collect();
            Status::invalid_argument(format!(
                "department {} has no mapping for native type {:?}; mapped native types: {}",
                mapping.department,
                record.native_type,
                known.join(", ")
            ))
        })
    }
}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` listing every fault:
/// the field is the canonical JSON Pointer, the description names the native field.
pub fn faults_status(faults: &[MapFault]) -> Status {
    let paths: Vec<&str> = faults.iter().map(|f| f.native.as_str()).collect();
    let message = format!(
        "record rejected with {} fault(s): {}",
        faults.len(),
        paths.join(", ")
    );
    faults_status_with(message, faults)
}

fn faults_status_with(message: String, faults: &[MapFault]) -> Status {
    let violations: Vec<FieldViolation> = faults
        .iter()
        .map(|f| FieldViolation::new(f.canonical.clone(), format!("{}: {}", f.native, f.message)))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

fn parse_native(bytes: &[u8]) -> Result<Value, Status> {
    parse_document(bytes).map_err(|rejection| {
        let faults: Vec<MapFault> = rejection
            .faults()
            .into_iter()
            .map(|f| MapFault {
                native: "(record)".into(),
                canonical: f.path,
                message: f.message,
            })
            .collect();
        faults_status_with(format!("record rejected: {rejection}"), &faults)
    })
}

/// A failed outgoing call keeps its gRPC code (UNAVAILABLE stays UNAVAILABLE)
/// and its details, and says which hop failed.
fn upstream(hop: &str, status: Status) -> Status {
    // The details (the rule of a denial, how long to wait, every fault) pass
    // through unchanged.
    Status::with_details(
        status.code(),
        format!("{hop}: {}", status.message()),
        status.details().to_vec().into(),
    )
}

#[tonic::async_trait]
impl Ingress for Adapter {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let span = server_span("crossgate.v1.Ingress/Submit", request.metadata());
        self.submit_record(request).instrument(span).await
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let span = server_span("crossgate.v1.Ingress/Lookup", request.metadata());
        self.lookup_records(request).instrument(span).await
    }
}

impl Adapter {
    /// Map a record from the department's system and publish it.
    async fn submit_record(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.check_peer(&request, self.department())?;
        let SubmitRequest {
            record,
            idempotency_key,
        } = request.into_inner();
        let native = record.ok_or_else(|| Status::invalid_argument("record is required"))?;
        let doc = parse_native(&native.json)?;
        let mapping = self.native_mapping(&native, &doc)?;
        let mapped = mapping
            .inbound_owned(doc, &self.inner.registry)
            .map_err(|faults| faults_status(&faults))?;
        let record_id = if native.record_id.is_empty() {
            mapped.record_id.clone().unwrap_or_default()
        } else {
            native.record_id.clone()
        };
        let json = mapped.to_json(native.json.len());
        let publish = PublishRequest {
            record: Some(Record {
                record_type: mapped.record_type.clone(),
                record_id,
                json,
            }),
            idempotency_key,
        };
        let mut broker = self.inner.broker.clone();
        // A replica that cannot take it (gone, draining): once more, on the
        // next. A Publish is idempotent: a replica that did take the first
        // answers the second as a repeat.
        let reply = match broker.publish(publish.clone()).await {
            Err(s) if s.code() == tonic::Code::Unavailable => broker.publish(publish).await,
            answered => answered,
        }
        .map_err(|s| upstream("broker", s))?
        .into_inner();
        tracing::debug!(
            department = %self.department(),
            record_type = %mapped.record_type,
            receivers = reply.deliveries.len(),
            "submitted"
        );
        Ok(Response::new(SubmitResponse {
            request_id: reply.request_id,
            record_type: mapped.record_type,
            deliveries: reply
                .deliveries
                .into_iter()
                .map(|d| DeliveryReport {
                    outcome: outcome_name(d.outcome()).to_owned(),
                    receiver: d.receiver,
                    released_fields: d.released_fields,
                    delivery_id: d.delivery_id,
                    detail: d.detail,
                })
                .collect(),
            repeat: reply.repeat,
        }))
    }

    /// Ask the broker for another department's records and map them back.
    async fn lookup_records(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        self.check_peer(&request, self.department())?;
        let req = request.into_inner();
        let reply = self
            .inner
            .broker
            .clone()
            .query(QueryRequest {
                provider: req.provider,
                record_type: req.record_type.clone(),
                purpose: req.purpose,
                approval_reference: req.approval_reference,
                criteria: req.criteria,
            })
            .await
            .map_err(|s| upstream("broker", s))?
            .into_inner();
        let back = self
            .inner
            .mapping
            .canonical(&req.record_type)
            .filter(|m| m.outbound);
        let mut records = Vec::with_capacity(reply.records.len());
        for record in reply.records {
            records.push(to_native(back, record)?);
        }
        Ok(Response::new(LookupResponse {
            request_id: reply.request_id,
            records,
            withheld_fields: reply.withheld_fields,
            withheld_records: reply.withheld_records,
        }))
    }
}

/// A canonical record in the department's own format where it has an
/// outbound mapping for the type, canonical JSON otherwise.
fn to_native(mapping: Option<&RecordMapping>, record: Record) -> Result<NativeRecord, Status> {
    let Some(mapping) = mapping else {
        return Ok(NativeRecord {
            native_type: record.record_type,
            record_id: record.record_id,
            json: record.json,
        });
    };
    let doc = parse_native(&record.json)?;
    let native = mapping.outbound(&doc).map_err(|faults| {
        let paths: Vec<String> = faults.iter().map(|f| f.canonical.clone()).collect();
        Status::internal(format!(
            "cannot map {} back to {}: {}",
            record.record_type,
            mapping.native_type,
            paths.join(", ")
        ))
    })?;
    Ok(NativeRecord {
        native_type: mapping.native_type.clone(),
        record_id: record.record_id,
        json: serde_json::to_vec(&native).map_err(|e| Status::internal(e.to_string()))?,
    })
}

fn outcome_name(o: DeliveryOutcome) -> &'static str {
    match o {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::Queued => "queued",
        DeliveryOutcome::Failed => "failed",
        DeliveryOutcome::Unspecified => "unspecified",
    }
}

#[tonic::async_trait]
impl Department for Adapter {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let span = server_span("crossgate.v1.Department/Deliver", request.metadata());
        self.deliver_record(request).instrument(span).await
    }

    type DeliverStreamStream = StreamOf<DeliverAnswer>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<DeliverMessage>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        self.open_stream::<Deliveries>(request)
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let span = server_span("crossgate.v1.Department/Fetch", request.metadata());
        self.fetch_records(request).instrument(span).await
    }

    type FetchStreamStream = StreamOf<FetchAnswer>;

    async fn fetch_stream(
        &self,
        request: Request<Streaming<FetchMessage>>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        self.open_stream::<Fetches>(request)
    }
}

/// A kind of call the broker sends as messages of one stream: deliveries
/// (`DeliverStream`) or fetches (`FetchStream`).
trait Served: 'static {
    type Message: Send + 'static;
    type Answer: Send + 'static;
    type Reply: Send + 'static;
    /// The call a message stands for, as its span is named.
    const SPAN: &'static str;
    /// What the broker hears when the message's time is up.
    const LATE: &'static str;
    /// What the broker hears when serving the message panicked.
    const FAILED: &'static str;
    /// The message's sequence, `traceparent` and `timeout_millis`.
    fn header(message: &Self::Message) -> (u64, &str, u32);
    /// Do what the message asks, as the call would.
    fn serve(
        adapter: Adapter,
        message: Self::Message,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send + 'static;
    fn answer(sequence: u64, result: Result<Self::Reply, Status>) -> Self::Answer;
    /// The answer to a message that came while the adapter stops.
    fn stopping(sequence: u64) -> Self::Answer;
}

/// What a message that came while the adapter stops is answered.
fn stopping_status() -> Status {
    Status::unavailable("the adapter is stopping; nothing was done; try again")
}

struct Deliveries;

impl Served for Deliveries {
    type Message = DeliverMessage;
    type Answer = DeliverAnswer;
    type Reply = ();
    const SPAN: &'static str = "crossgate.v1.Department/Deliver";
    const LATE: &'static str = "the hand-over did not finish in the broker's time";
    const FAILED: &'static str = "the delivery failed inside the adapter";

    fn header(m: &DeliverMessage) -> (u64, &str, u32) {
        (m.sequence, &m.traceparent, m.timeout_millis)
    }

    async fn serve(adapter: Adapter, message: DeliverMessage) -> Result<(), Status> {
        // The hand-over in a task of its own, as a call's: when the
        // broker's time is up it is answered DEADLINE_EXCEEDED and its place
        // on the stream is freed, while the hand-over and its record go on.
        let req = message
            .delivery
            .ok_or_else(|| Status::invalid_argument("delivery is required"))?;
        tokio::spawn(async move { adapter.deliver_one(req).await }.in_current_span())
            .await
            .map_err(|_| Status::internal(Self::FAILED))?
    }

    fn answer(sequence: u64, result: Result<(), Status>) -> DeliverAnswer {
        let (code, message) = match result {
            Ok(()) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        DeliverAnswer {
            sequence,
            code: code as i32,
            message,
            stopping: false,
        }
    }

    fn stopping(sequence: u64) -> DeliverAnswer {
        DeliverAnswer {
            stopping: true,
            ..Self::answer(sequence, Err(stopping_status()))
        }
    }
}

struct Fetches;

impl Served for Fetches {
    type Message = FetchMessage;
    type Answer = FetchAnswer;
    type Reply = FetchResponse;
    const SPAN: &'static str = "crossgate.v1.Department/Fetch";
    const LATE: &'static str = "the system did not answer in the broker's time";
    const FAILED: &'static str = "the fetch failed inside the adapter";

    fn header(m: &FetchMessage) -> (u64, &str, u32) {
        (m.sequence, &m.traceparent, m.timeout_millis)
    }

    /// Unlike a hand-over, a fetch whose time is up is dropped: nobody
    /// waits for its answer, as for a call's.
    async fn serve(adapter: Adapter, message: FetchMessage) -> Result<FetchResponse, Status> {
        let req = message
            .fetch
            .ok_or_else(|| Status::invalid_argument("fetch is required"))?;
        let answer = adapter.fetch_one(req).await?;
        // Larger than one message: the broker would fail the whole stream
        // reading it, as it refuses such an answer to a call.
        if answer.encoded_len() > ANSWER_MAX {
            return Err(Status::out_of_range(format!(
                "the answer is larger than {ANSWER_MAX} bytes; ask for fewer records"
            )));
        }
        Ok(answer)
    }

    fn answer(sequence: u64, result: Result<FetchResponse, Status>) -> FetchAnswer {
        match result {
            Ok(response) => FetchAnswer {
                sequence,
                code: Code::Ok as i32,
                message: String::new(),
                response: Some(response),
                stopping: false,
            },
            Err(status) => FetchAnswer {
                sequence,
                code: status.code() as i32,
                message: status.message().to_owned(),
                response: None,
                stopping: false,
            },
        }
    }

    fn stopping(sequence: u64) -> FetchAnswer {
        FetchAnswer {
            stopping: true,
            ..Self::answer(sequence, Err(stopping_status()))
        }
    }
}

/// The largest fetch answer sent as a message: gRPC's usual 4 MiB limit
/// on one message, less room for the answer's own fields.
const ANSWER_MAX: usize = 4 * 1024 * 1024 - 1024;

impl Adapter {
    /// Hand a delivered record to the system, once per delivery id.
    async fn deliver_record(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        self.check_peer(&request, self.broker_id())?;
        let req = request.into_inner();
        // In a task of its own: a broker that gives up on the call (its
        // timeout) cancels its wait, not the hand-over and its record.
        let adapter = self.clone();
        tokio::spawn(async move { adapter.deliver_one(req).await }.in_current_span())
            .await
            .map_err(|_| Status::internal("the delivery failed inside the adapter"))??;
        Ok(Response::new(DeliverResponse {}))
    }

    /// Open a stream of the broker's: checked as a call would be, then
    /// served in a task of its own.
    fn open_stream<E: Served>(
        &self,
        request: Request<Streaming<E::Message>>,
    ) -> Result<Response<StreamOf<E::Answer>>, Status> {
        self.check_peer(&request, self.broker_id())?;
        let certs = request.peer_certs();
        let (answers, rx) = mpsc::channel(STREAM_IN_FLIGHT as usize);
        tokio::spawn(
            self.clone()
                .serve_stream::<E>(request.into_inner(), certs, answers),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// One stream: each message is served in a task of its own (so answers
    /// go back in the order they finish, and a broker that goes away
    /// cancels no hand-over), at most [`STREAM_IN_FLIGHT`] at once. The
    /// stream ends when the broker ends it, it breaks, or the server shuts
    /// down; the messages taken are answered first where the broker still
    /// listens, and deliveries are handed over either way. A fetch whose
    /// broker let the stream go stops, as a call's would at its reset.
    /// While the server shuts down, each further message is answered
    /// UNAVAILABLE at once (nothing was done; the broker may ask again
    /// elsewhere or later) until the messages taken before are answered.
    async fn serve_stream<E: Served>(
        self,
        mut incoming: Streaming<E::Message>,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        answers: mpsc::Sender<Result<E::Answer, Status>>,
    ) {
        let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT as usize));
        let mut closing = self.inner.closing.subscribe();
        loop {
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => None,
                next = async {
                    let slot = slots.clone().acquire_owned().await;
                    (slot, incoming.message().await)
                } => Some(next),
            };
            let Some(next) = next else {
                refuse_until_answered::<E>(&mut incoming, &slots, &answers).await;
                break;
            };
            let (Ok(slot), Ok(Some(message))) = next else {
                // Ended by the broker (`None`) or broken (an error the
                // broker no longer hears): nothing more comes.
                break;
            };
            let (sequence, traceparent, timeout_millis) = E::header(&message);
            let deadline = Instant::now() + answer_within(timeout_millis);
            let span = server_span(E::SPAN, &trace_metadata(traceparent));
            let adapter = self.clone();
            let certs = certs.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let work = async {
                    adapter
                        .check_certs(certs.as_deref().map(Vec::as_slice), adapter.broker_id())?;
                    E::serve(adapter.clone(), message).await
                }
                .instrument(span);
                // A panic is answered (the panic hook logs where), not left
                // for the broker to wait out.
                let work = std::panic::AssertUnwindSafe(work).catch_unwind();
                let result = tokio::select! {
                    done = tokio::time::timeout_at(deadline, work) => match done {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(Status::internal(E::FAILED)),
                        Err(_) => Err(Status::deadline_exceeded(E::LATE)),
                    },
                    // Nobody to answer: the broker let the stream go.
                    // Dropping the work stops a fetch; a delivery's
                    // hand-over is a task of its own and goes on.
                    _ = answers.closed() => return,
                };
                // A broker gone away, or not reading, hears nothing after
                // its time (it stopped waiting then): a hand-over stands
                // and a retry is acknowledged as a repeat.
                let answer = E::answer(sequence, result);
                let _ = tokio::time::timeout_at(deadline, answers.send(Ok(answer))).await;
                drop(slot);
            });
        }
        // The stream ends with OK when the last sender is dropped, that is
        // once every message taken has answered or its time is up; the
        // broker's side of it is kept open until then, so that their answers
        // still reach it.
        drop(answers);
        let _ = slots.acquire_many(STREAM_IN_FLIGHT).await;
        drop(incoming);
    }

    /// One delivery, handed to the system once per delivery id: a repeat
    /// that arrives while the first is with the system is told to come back.
    async fn deliver_one(&self, req: DeliverRequest) -> Result<(), Status> {
        // Held until the hand-over ends, however long after its answer.
        let Ok(_under_way) = self.inner.hand_overs.clone().try_acquire_owned() else {
            tracing::warn!(department = %self.department(), most = HAND_OVERS_MAX, "a delivery was turned away: the system has not finished earlier hand-overs");
            return Err(Status::unavailable(format!(
                "{HAND_OVERS_MAX} hand-overs are still with the department system; try again"
            )));
        };
        let Some(seen) = self
            .inner
            .seen
            .clone()
            .filter(|_| !req.delivery_id.is_empty())
        else {
            return self.hand_over(req).await;
        };
        let id = req.delivery_id.clone();
        if !seen.begin(&id) {
            return Err(Status::aborted(format!(
                "delivery {id} is being handed over; try again"
            )));
        }
        let handing = Handing { seen, id };
        let result = self.deliver_once(&handing.seen, req).await;
        drop(handing);
        result
    }

    /// A delivery id passed on before is acknowledged without passing it on
    /// again; a new one is remembered once the system has taken it.
    async fn deliver_once(&self, seen: &Seen, req: DeliverRequest) -> Result<(), Status> {
        let id = req.delivery_id.clone();
        if seen.contains(&id) {
            tracing::debug!(department = %self.department(), delivery = %id, "repeated delivery acknowledged");
            return Ok(());
        }
        self.hand_over(req).await?;
        // If this fails the system has the record but the id is not kept:
        // the broker retries and the system sees the same delivery id.
        seen.remember(&id).await.map_err(|e| {
            tracing::error!(error = %e, "delivery-id store failed");
            Status::unavailable("the adapter cannot keep the delivery id; try again")
        })
    }

    /// Map the delivered record to the department's format and hand it to its system.
    async fn hand_over(&self, req: DeliverRequest) -> Result<(), Status> {
        let record = req
            .record
            .ok_or_else(|| Status::invalid_argument("record is required"))?;
        let record_type = record.record_type.clone();
        let back = self
            .inner
            .mapping
            .canonical(&record_type)
            .filter(|m| m.outbound);
        let native = step("map").in_scope(|| to_native(back, record))?;
        let mut receive = Request::new(ReceiveRequest {
            provider: req.provider,
            record_type: record_type.clone(),
            record: Some(native),
            delivery_id: req.delivery_id,
        });
        let span = client_step("system");
        span.in_scope(|| crossgate_telemetry::inject(receive.metadata_mut()));
        self.inner
            .system
            .clone()
            .receive(receive)
            .instrument(span)
            .await
            .map_err(|s| upstream("department system", s))?;
        tracing::debug!(department = %self.department(), %record_type, request_id = %req.request_id, "delivered");
        Ok(())
    }

    /// Answer a query from the department's own data.
    async fn fetch_records(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.check_peer(&request, self.broker_id())?;
        self.fetch_one(request.into_inner())
            .await
            .map(Response::new)
    }

    /// One fetch: find the records in the system, and answer with those
    /// that map to valid canonical records; NOT_FOUND when none matches.
    async fn fetch_one(&self, req: FetchRequest) -> Result<FetchResponse, Status> {
        let Ok(_under_way) = self.inner.fetches.clone().try_acquire_owned() else {
            tracing::warn!(department = %self.department(), most = FETCHES_MAX, "a fetch was turned away: the system has not finished earlier fetches");
            return Err(Status::unavailable(format!(
                "{FETCHES_MAX} fetches are still with the department system; try again"
            )));
        };
        let mapping = self
            .inner
            .mapping
            .canonical(&req.record_type)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{} does not hold {} records",
                    self.department(),
                    req.record_type
                ))
            })?;
        let mut find = Request::new(FindRequest {
            native_type: mapping.native_type.clone(),
            criteria: native_criteria(mapping, &req)?,
            limit: req.limit,
        });
        let span = client_step("system");
        span.in_scope(|| crossgate_telemetry::inject(find.metadata_mut()));
        let found = self
            .inner
            .system
            .clone()
            .find(find)
            .instrument(span)
            .await
            .map_err(|s| upstream("department system", s))?
            .into_inner();
        let answer =
            step("map").in_scope(|| self.canonical_answer(mapping, found.records, req.limit))?;
        if answer.records.is_empty() && answer.withheld_records == 0 {
            return Err(Status::not_found(format!(
                "no {} record matches",
                req.record_type
            )));
        }
        Ok(answer)
    }
}

/// While the server shuts down: answer each message UNAVAILABLE at once
/// until every message taken before has been answered (all `slots` are
/// back), or the broker ends the stream. An answer that finds the broker
/// not reading is left out; its caller hears UNAVAILABLE when the stream ends.
async fn refuse_until_answered<E: Served>(
    incoming: &mut Streaming<E::Message>,
    slots: &Semaphore,
    answers: &mpsc::Sender<Result<E::Answer, Status>>,
) {
    loop {
        tokio::select! {
            biased;
            _ = slots.acquire_many(STREAM_IN_FLIGHT) => return,
            next = incoming.message() => {
                let Ok(Some(message)) = next else { return };
                let (sequence, _, _) = E::header(&message);
                let _ = answers.try_send(Ok(E::stopping(sequence)));
            }
        }
    }
}

/// The broker's canonical criteria in the department's native terms.
fn native_criteria(mapping: &RecordMapping, req: &FetchRequest) -> Result<Vec<Criterion>, Status> {
    req.criteria
        .iter()
        .map(|c| {
            let (path, value) = mapping.native_criterion(&c.path, &c.value).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{} cannot be searched by {}",
                    req.record_type, c.path
                ))
            })?;
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Ok(Criterion { path, value })
        })
        .collect()
}

impl Adapter {
    /// The system's native records as valid canonical ones, at most `limit`
    /// (0: all). A record that does not map is never answered with: its
    /// faults may quote values, so only its field names are logged here and
    /// only the count crosses to the broker.
    fn canonical_answer(
        &self,
        mapping: &RecordMapping,
        natives: Vec<NativeRecord>,
        limit: u32,
    ) -> Result<FetchResponse, Status> {
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut answer = FetchResponse::default();
        for native in natives.into_iter().take(limit) {
            let size = native.json.len();
            let mapped = parse_document(&native.json)
                .map_err(|rejection| rejection.faults().into_iter().map(|f| f.path).collect())
                .and_then(|doc| {
                    mapping
                        .inbound_owned(doc, &self.inner.registry)
                        .map_err(|faults| faults.into_iter().map(|f| f.native).collect::<Vec<_>>())
                });
            match mapped {
                Ok(mapped) => answer.records.push(Record {
                    json: mapped.to_json(size),
                    record_type: mapped.record_type,
                    record_id: mapped.record_id.unwrap_or_default(),
                }),
                Err(fields) => {
                    tracing::warn!(
                        department = %self.department(),
                        native_type = %mapping.native_type,
                        fields = %fields.join(", "),
                        "department system returned a record that does not map; left out of the answer"
                    );
                    answer.withheld_records = answer.withheld_records.saturating_add(1);
                }
            }
        }
        Ok(answer)
    }
}

/// A stream message's `traceparent` as the metadata a call would carry it
/// in (empty when traces are off or it is not a valid header value).
fn trace_metadata(traceparent: &str) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if !traceparent.is_empty()
        && let Ok(value) = traceparent.parse()
    {
        metadata.insert("traceparent", value);
    }
    metadata
}
