//! Calls to an adapter as messages of one long-lived stream: deliveries over
//! `DeliverStream`, fetches over `FetchStream`. A call costs both processes a
//! new HTTP/2 stream, its headers and trailers, a task and the server's
//! layers, where a message is a frame each way. What a caller hears is what
//! the call would have answered:
//!
//! - the adapter's answer to its message, whatever order answers come in;
//! - `DEADLINE_EXCEEDED` (from the caller's own timeout) when none comes
//!   within its time; the message carries that time, and the adapter
//!   answers by then too. A stream that left a caller unanswered for at
//!   least [`STUCK_AFTER`], and sent no answer to any message meanwhile,
//!   may be stuck (its headers or answers never coming), so the next caller
//!   opens another; the old one lasts while callers still wait on it and is
//!   reset when the last lets go. A stream that answers its callers, or a
//!   caller that gave up sooner, is no sign of it: one caller's short
//!   deadline (a query's is its consumer's choice) does not cost the next
//!   caller a new stream; a late answer to a caller that gave up counts
//!   as one (a slow adapter is not a stuck stream), answers to sequences
//!   never sent or answered before do not;
//! - an answer marked `stopping` (the adapter shuts down; nothing was
//!   done): its caller hears `UNAVAILABLE` that [`stopped_before_doing`]
//!   recognises (a fetch is asked once more), and the next caller opens
//!   another stream;
//! - a message whose stream ended before it went out is sent once on a new
//!   one;
//! - `UNAVAILABLE` for every caller still waiting when the stream ends or
//!   breaks (adapter restarted, connection lost): the outcome is unknown;
//! - `UNAUTHENTICATED` or `PERMISSION_DENIED` when the adapter refuses the
//!   stream for the broker's certificate, as it would refuse a call; any
//!   other refusal may come after the adapter read some messages (they go
//!   out before its headers), so the callers hear `UNAVAILABLE`.
//!
//! Messages are sent as soon as the stream is asked for, without waiting for
//! the adapter's headers (an adapter may send them with its first answer),
//! and nothing waits on the network while holding the stream's books. An
//! adapter that answers the stream with UNIMPLEMENTED (at once, or after its
//! headers but before any answer) is sent calls for [`CALLS_FOR`], then asked
//! again; the callers waiting on that stream hear UNAVAILABLE.

use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::{DeliverAnswer, DeliverMessage, FetchAnswer, FetchMessage, FetchResponse};
use foldhash::{HashMap, HashMapExt};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// How long a caller must have waited, with no answer to any message
/// heard on the stream meanwhile, before its giving up marks the stream as
/// perhaps stuck.
pub const STUCK_AFTER: Duration = Duration::from_millis(250);

/// Given-up sequences kept to recognise their late answers.
const GIVEN_UP_KEPT: usize = 1024;

/// Messages queued for one stream before a sender waits.
const STREAM_QUEUE: usize = 256;

/// How long an adapter that answered a stream with UNIMPLEMENTED is sent
/// calls before it is asked again (it may have been upgraded).
pub const CALLS_FOR: Duration = Duration::from_secs(600);

/// What one kind of stream carries: its messages, their answers, and what an
/// answer tells the caller waiting on it.
pub trait Exchange: Send + Sync + 'static {
    type Message: Send + 'static;
    type Answer: Send + 'static;
    type Reply: Send + 'static;
    /// The stream's method, for logs ("DeliverStream").
    const METHOD: &'static str;
    /// What travels on it, for messages ("delivery").
    const WHAT: &'static str;
    fn set_sequence(message: &mut Self::Message, sequence: u64);
    fn sequence(answer: &Self::Answer) -> u64;
    /// The adapter is stopping: nothing more goes on this stream.
    fn stopping(answer: &Self::Answer) -> bool;
    fn reply(answer: Self::Answer) -> Result<Self::Reply, Status>;
    /// Log that the adapter has no such stream and is sent calls.
    fn no_stream(partner: &str);
    /// Log callers left without an answer when the stream ended.
    fn stranded(partner: &str, callers: usize, code: Code);
    fn open(
        client: DepartmentClient<Channel>,
        messages: ReceiverStream<Self::Message>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<Self::Answer>>, Status>> + Send;
}

/// Deliveries: `DeliverStream`, answered by a status alone.
pub struct Deliveries;

impl Exchange for Deliveries {
    type Message = DeliverMessage;
    type Answer = DeliverAnswer;
    type Reply = ();
    const METHOD: &'static str = "DeliverStream";
    const WHAT: &'static str = "delivery";

    fn set_sequence(message: &mut DeliverMessage, sequence: u64) {
        message.sequence = sequence;
    }

    fn sequence(answer: &DeliverAnswer) -> u64 {
        answer.sequence
    }

    fn stopping(answer: &DeliverAnswer) -> bool {
        answer.stopping
    }

    fn reply(answer: DeliverAnswer) -> Result<(), Status> {
        match Code::from(answer.code) {
            Code::Ok => Ok(()),
            code => Err(Status::new(code, answer.message)),
        }
    }

    fn no_stream(partner: &str) {
        tracing::warn!(receiver = %partner, "the adapter has no DeliverStream; it is sent Deliver calls for {} s", CALLS_FOR.as_secs());
    }

    fn stranded(partner: &str, callers: usize, code: Code) {
        tracing::debug!(receiver = %partner, attempts = callers, ?code, "delivery attempts left without an answer");
    }

    async fn open(
        mut client: DepartmentClient<Channel>,
        messages: ReceiverStream<DeliverMessage>,
    ) -> Result<tonic::Response<Streaming<DeliverAnswer>>, Status> {
        client.deliver_stream(messages).await
    }
}

/// Fetches: `FetchStream`, answered by the records found or a status.
pub struct Fetches;

impl Exchange for Fetches {
    type Message = FetchMessage;
    type Answer = FetchAnswer;
    type Reply = FetchResponse;
    const METHOD: &'static str = "FetchStream";
    const WHAT: &'static str = "fetch";

    fn set_sequence(message: &mut FetchMessage, sequence: u64) {
        message.sequence = sequence;
    }

    fn sequence(answer: &FetchAnswer) -> u64 {
        answer.sequence
    }

    fn stopping(answer: &FetchAnswer) -> bool {
        answer.stopping
    }

    fn reply(answer: FetchAnswer) -> Result<FetchResponse, Status> {
        match (Code::from(answer.code), answer.response) {
            (Code::Ok, Some(response)) => Ok(response),
            // "Found" with nothing: not what a call can answer.
            (Code::Ok, None) => Err(Status::internal("a fetch answered OK without its records")),
            (code, _) => Err(Status::new(code, answer.message)),
        }
    }

    fn no_stream(partner: &str) {
        tracing::warn!(provider = %partner, "the adapter has no FetchStream; it is sent Fetch calls for {} s", CALLS_FOR.as_secs());
    }

    fn stranded(partner: &str, callers: usize, code: Code) {
        tracing::debug!(provider = %partner, fetches = callers, ?code, "fetches left without an answer");
    }

    async fn open(
        mut client: DepartmentClient<Channel>,
        messages: ReceiverStream<FetchMessage>,
    ) -> Result<tonic::Response<Streaming<FetchAnswer>>, Status> {
        client.fetch_stream(messages).await
    }
}

/// One kind of stream to one adapter: the stream open now, if any, and
/// whether the adapter is sent calls instead.
pub struct Streams<E: Exchange> {
    partner: String,
    client: DepartmentClient<Channel>,
    open: Mutex<Option<Arc<Session<E>>>>,
    /// Until when the adapter is sent calls (it answered the stream with
    /// UNIMPLEMENTED).
    calls_until: Arc<Mutex<Option<Instant>>>,
}

/// An open stream. Dropping it (a broker that stops, or a stream found
/// ended) ends the stream's sending side, and the adapter ends its own.
struct Session<E: Exchange> {
    tx: mpsc::Sender<E::Message>,
    waiting: Arc<Mutex<Waiting<E>>>,
    /// Dropped with the session: its task stops waiting for the stream
    /// (its headers or answers) and resets it.
    _held: oneshot::Sender<()>,
}

/// Callers waiting for their answers, by sequence number.
struct Waiting<E: Exchange> {
    /// False once the stream has ended: no caller may wait on it then.
    open: bool,
    /// The next message's sequence.
    next: u64,
    /// Answers heard on the stream so far: the first to each sequence sent,
    /// whether its caller still waited or had given up (answers to
    /// sequences never sent, or answered before, are no sign that it works).
    heard: u64,
    /// Sequences whose callers gave up before their answer came, the
    /// newest [`GIVEN_UP_KEPT`]: a slow adapter's late answer is still a
    /// sign that the stream works.
    given_up: BTreeSet<u64>,
    /// Each waiting caller, with `heard` as it was when the caller began,
    /// and when it began.
    answers: HashMap<u64, (Caller<E>, u64, Instant)>,
}

/// Where a waiting caller hears its answer.
type Caller<E> = oneshot::Sender<Result<<E as Exchange>::Reply, Status>>;

impl<E: Exchange> Streams<E> {
    pub fn new(partner: String, client: DepartmentClient<Channel>) -> Self {
        Streams {
            partner,
            client,
            open: Mutex::new(None),
            calls_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether calls go over the stream (not while the adapter is sent
    /// calls for want of it).
    pub fn streams(&self) -> bool {
        let mut until = lock(&self.calls_until);
        match *until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// Send `message` on the open stream (or a new one) and wait for its
    /// answer. The caller bounds the wait by its own time.
    ///
    /// A message that was never sent, because the stream ended between
    /// taking it and sending (another caller found it stuck, or it broke),
    /// is sent once more on a new stream.
    pub async fn call(&self, message: E::Message) -> Result<E::Reply, Status> {
        // The first session is let go before the second is asked for
        // (which takes its place): a stream marked perhaps stuck is reset
        // then, unless others still wait on it.
        let first = {
            let session = self.session();
            session.call(&self.partner, message).await
        };
        match first {
            Err(Unsent(message)) => self
                .session()
                .call(&self.partner, message)
                .await
                .unwrap_or_else(|Unsent(_)| Err(ended::<E>(&self.partner))),
            Ok(answer) => answer,
        }
    }

    /// The open stream, or a new one: asked for in a task of its own, which
    /// reads its answers, so that messages are sent at once.
    fn session(&self) -> Arc<Session<E>> {
        let mut open = lock(&self.open);
        if let Some(session) = open.as_ref().filter(|s| s.is_open()) {
            return session.clone();
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting {
            open: true,
            next: 0,
            heard: 0,
            given_up: BTreeSet::new(),
            answers: HashMap::new(),
        }));
        let (held, let_go) = oneshot::channel();
        tokio::spawn(run_stream::<E>(
            self.partner.clone(),
            self.client.clone(),
            rx,
            waiting.clone(),
            self.calls_until.clone(),
            let_go,
        ));
        let session = Arc::new(Session {
            tx,
            waiting,
            _held: held,
        });
        *open = Some(session.clone());
        session
    }
}

impl<E: Exchange> Session<E> {
    fn is_open(&self) -> bool {
        lock(&self.waiting).open && !self.tx.is_closed()
    }

    /// The answer to `message`, or the message back if it was not sent.
    async fn call(
        &self,
        partner: &str,
        mut message: E::Message,
    ) -> Result<Result<E::Reply, Status>, Unsent<E>> {
        let (answer, heard) = oneshot::channel();
        let sequence = {
            let mut waiting = lock(&self.waiting);
            if !waiting.open {
                return Err(Unsent(message));
            }
            let sequence = waiting.next;
            waiting.next += 1;
            let heard = waiting.heard;
            waiting
                .answers
                .insert(sequence, (answer, heard, Instant::now()));
            sequence
        };
        E::set_sequence(&mut message, sequence);
        // Whatever ends this wait (the answer, the stream's end, the
        // caller's timeout dropping it) takes the caller out of the books.
        let forget = Forget {
            waiting: &self.waiting,
            sequence,
        };
        if let Err(mpsc::error::SendError(message)) = self.tx.send(message).await {
            drop(forget);
            return Err(Unsent(message));
        }
        Ok(heard.await.unwrap_or_else(|_| Err(ended::<E>(partner))))
    }
}

/// A message given back unsent: its stream ended before it went out.
struct Unsent<E: Exchange>(E::Message);

/// Removes a caller from the books when its wait ends by any path.
struct Forget<'a, E: Exchange> {
    waiting: &'a Mutex<Waiting<E>>,
    sequence: u64,
}

impl<E: Exchange> Drop for Forget<'_, E> {
    fn drop(&mut self) {
        let mut waiting = lock(self.waiting);
        let Some((_, heard, began)) = waiting.answers.remove(&self.sequence) else {
            return;
        };
        // Given up without an answer: its answer may still come.
        waiting.given_up.insert(self.sequence);
        if waiting.given_up.len() > GIVEN_UP_KEPT {
            waiting.given_up.pop_first();
        }
        if heard == waiting.heard && began.elapsed() >= STUCK_AFTER {
            // Unanswered for a while, and no answer at all meanwhile: the
            // stream may be stuck (its headers or answers never come), so
            // the next caller opens another; this one lasts while callers
            // still wait on it, and is reset when the last lets go of it.
            waiting.open = false;
        }
    }
}

/// Ask for the stream and read its answers; when it cannot be opened, or
/// ends, every caller still waiting hears why.
async fn run_stream<E: Exchange>(
    partner: String,
    client: DepartmentClient<Channel>,
    messages: mpsc::Receiver<E::Message>,
    waiting: Arc<Mutex<Waiting<E>>>,
    calls_until: Arc<Mutex<Option<Instant>>>,
    mut held: oneshot::Receiver<()>,
) {
    let stream = async {
        match E::open(client, ReceiverStream::new(messages)).await {
            Ok(answers) => read_answers::<E>(answers.into_inner(), &waiting).await,
            Err(status) => Err(status),
        }
    };
    let end = tokio::select! {
        end = stream => end,
        // Nothing uses the session any more: whatever it waits for, no
        // caller does.
        _ = &mut held => Ok(Status::unavailable(format!("the {} stream was let go", E::WHAT))),
    };
    let end = match end {
        Ok(end) => end,
        Err(status) if status.code() == Code::Unimplemented => {
            E::no_stream(&partner);
            *lock(&calls_until) = Some(Instant::now() + CALLS_FOR);
            Status::unavailable(format!(
                "the adapter has no {}; the next attempt is a call",
                E::METHOD
            ))
        }
        // Refused before anything was taken (the broker's certificate):
        // the callers hear it, as a call's would.
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            status
        }
        // Anything else may come after the adapter read some messages (they
        // go out before its headers): their outcome is unknown.
        Err(status) => Status::unavailable(format!(
            "the {} stream was refused: {:?}",
            E::WHAT,
            status.code()
        )),
    };
    let stranded: Vec<_> = {
        let mut waiting = lock(&waiting);
        waiting.open = false;
        waiting
            .answers
            .drain()
            .map(|(_, (caller, _, _))| caller)
            .collect()
    };
    if !stranded.is_empty() {
        E::stranded(&partner, stranded.len(), end.code());
    }
    for caller in stranded {
        let _ = caller.send(Err(Status::new(end.code(), end.message().to_owned())));
    }
}

/// Pass each answer to its caller until the stream ends: `Ok` with the
/// status every caller still waiting then hears, or `Err` with the stream's
/// refusal when it ended with an error before any answer (an adapter may
/// refuse the stream after its headers, as UNIMPLEMENTED in the trailers).
async fn read_answers<E: Exchange>(
    mut answers: Streaming<E::Answer>,
    waiting: &Mutex<Waiting<E>>,
) -> Result<Status, Status> {
    let mut answered = false;
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                answered = true;
                let stopping = E::stopping(&answer);
                let caller = {
                    let mut waiting = lock(waiting);
                    if stopping {
                        // Nothing more goes on this stream: the next
                        // caller opens another (a new connection may reach
                        // an adapter that is up).
                        waiting.open = false;
                    }
                    let sequence = E::sequence(&answer);
                    let caller = waiting.answers.remove(&sequence);
                    if caller.is_some() || waiting.given_up.remove(&sequence) {
                        waiting.heard += 1;
                    }
                    caller
                };
                let Some((caller, _, _)) = caller else {
                    // Its caller gave up waiting (or the sequence is not
                    // one of ours): nothing to tell.
                    continue;
                };
                let _ = caller.send(if stopping {
                    Err(refused_while_stopping::<E>())
                } else {
                    E::reply(answer)
                });
            }
            Ok(None) => {
                return Ok(Status::unavailable(format!(
                    "the adapter ended the {} stream",
                    E::WHAT
                )));
            }
            Err(status) if !answered => return Err(status),
            Err(status) => {
                return Ok(Status::unavailable(format!(
                    "the {} stream broke: {:?}",
                    E::WHAT,
                    status.code()
                )));
            }
        }
    }
}

/// Metadata that marks a refusal by an adapter that is stopping.
const STOPPING: &str = "crossgate-adapter-stopping";

/// What a caller hears when the adapter refused its message because it is
/// stopping: `UNAVAILABLE`, nothing done, recognised by [`stopped_before_doing`].
fn refused_while_stopping<E: Exchange>() -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(STOPPING, tonic::metadata::MetadataValue::from_static("1"));
    Status::with_metadata(
        Code::Unavailable,
        format!("the adapter is stopping; the {} was not done", E::WHAT),
        metadata,
    )
}

/// Whether `status` is an adapter's refusal while stopping: nothing was
/// done, and the message may be sent again on a new stream.
pub fn stopped_before_doing(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.metadata().contains_key(STOPPING)
}

fn ended<E: Exchange>(partner: &str) -> Status {
    Status::unavailable(format!(
        "the {} stream to {partner}'s adapter ended",
        E::WHAT
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
