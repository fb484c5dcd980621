//! Reaching department adapters: one lazily connected mutual-TLS channel per
//! adapter (deliveries go through the outbox's lanes, `outbox.rs`).
//!
//! Deliveries travel as messages of one long-lived `DeliverStream` per
//! adapter rather than as a call each: a call costs both processes a new
//! HTTP/2 stream, its headers and trailers, and a task, where a message is a
//! frame each way. What an attempt hears is what a `Deliver` call would have
//! answered:
//!
//! - the adapter's answer to its message, whatever order answers come in;
//! - `DEADLINE_EXCEEDED` when none comes within the attempt's time (the
//!   adapter may still hand the record over; the retry is acknowledged as a
//!   repeat of its delivery id); the message carries that time, and the
//!   adapter answers by then too. A stream that left an attempt unanswered
//!   may be stuck (its headers or answers never coming), so the next attempt
//!   opens another; the old one lasts while attempts still wait on it and
//!   is reset when the last lets go;
//! - `UNAVAILABLE` for every attempt still waiting when the stream ends or
//!   breaks (adapter restarted, connection lost): the outcome is unknown, so
//!   the lane tries again, and the next attempt opens a new stream;
//! - `UNAUTHENTICATED` or `PERMISSION_DENIED` when the adapter refuses the
//!   stream for the broker's certificate, as it would refuse a call; any
//!   other refusal may come after the adapter read some messages (they go
//!   out before its headers), so the attempts hear `UNAVAILABLE`.
//!
//! Messages are sent as soon as the stream is asked for, without waiting for
//! the adapter's headers (an adapter may send them with its first answer),
//! and nothing waits on the network while holding the link. An adapter that
//! answers the stream with UNIMPLEMENTED (at once, or after its headers but
//! before any answer) is sent `Deliver` calls for
//! [`CALLS_FOR`], then asked again; the attempts waiting on that stream hear
//! UNAVAILABLE and are retried as calls. A delivery too large for one
//! message of the adapter's default limit goes as a call, which the adapter
//! refuses (or takes) as it always has.

use crate::error::BrokerError;
use crossgate_policy::{Partner, Role};
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::{DeliverAnswer, DeliverMessage, DeliverRequest};
use foldhash::{HashMap, HashMapExt};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Messages queued for one stream before a sender waits (the lanes'
/// concurrency keeps far fewer in flight).
const STREAM_QUEUE: usize = 256;

/// How long an adapter that answered the stream with UNIMPLEMENTED is sent
/// calls before it is asked again (it may have been upgraded).
pub const CALLS_FOR: Duration = Duration::from_secs(600);

/// The largest delivery sent as a message: gRPC's usual 4 MiB limit on one
/// message, less room for the message's own fields. A larger one is sent as
/// a call, so that the adapter answers it alone (OUT_OF_RANGE at the usual
/// limit) instead of ending the stream for every delivery on it.
const MESSAGE_MAX: usize = 4 * 1024 * 1024 - 1024;

/// Clients for every partner's adapter.
#[derive(Clone)]
pub struct Adapters {
    /// Shared: every delivery attempt holds the set, and copying ten
    /// channels for each was measurable.
    links: Arc<HashMap<String, Link>>,
}

/// One adapter: its channel, and the delivery stream open on it.
struct Link {
    partner: String,
    client: DepartmentClient<Channel>,
    stream: Mutex<Option<Arc<Session>>>,
    /// Until when the adapter is sent calls (it answered the stream with
    /// UNIMPLEMENTED).
    calls_until: Arc<Mutex<Option<Instant>>>,
}

/// An open delivery stream. Dropping it (a broker that stops, or a stream
/// found ended) ends the stream's sending side, and the adapter ends its own.
struct Session {
    tx: mpsc::Sender<DeliverMessage>,
    waiting: Arc<Mutex<Waiting>>,
    next: AtomicU64,
    /// Dropped with the session: its task stops waiting for the stream
    /// (its headers or answers) and resets it.
    _held: oneshot::Sender<()>,
}

/// Attempts waiting for their answers, by sequence number.
struct Waiting {
    /// False once the stream has ended: no attempt may wait on it then.
    open: bool,
    answers: HashMap<u64, oneshot::Sender<Result<(), Status>>>,
}

impl Adapters {
    /// One channel per partner with an adapter address. Channels connect on
    /// first use; a connect timeout keeps a down adapter from hanging callers.
    /// `tls`: the broker's certificate; each adapter must present its own
    /// party's certificate (checked as the server name), not just any of the CA.
    pub fn new(
        partners: &[Partner],
        tls: Option<&crossgate_tls::Bundle>,
        connect_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let mut links = HashMap::new();
        for p in partners.iter().filter(|p| p.role == Role::Partner) {
            let Some(addr) = &p.adapter else { continue };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| BrokerError::AdapterAddress {
                    partner: p.id.clone(),
                    address: addr.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(connect_timeout);
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls.client_for(&p.id)).map_err(|e| {
                    BrokerError::AdapterTls {
                        partner: p.id.clone(),
                        reason: e.to_string(),
                    }
                })?;
            }
            links.insert(
                p.id.clone(),
                Link {
                    partner: p.id.clone(),
                    client: DepartmentClient::new(endpoint.connect_lazy()),
                    stream: Mutex::new(None),
                    calls_until: Arc::new(Mutex::new(None)),
                },
            );
        }
        Ok(Adapters {
            links: Arc::new(links),
        })
    }

    fn link(&self, partner: &str) -> Result<&Link, Status> {
        self.links.get(partner).ok_or_else(|| {
            Status::unavailable(format!("{partner} has no adapter address in partners.toml"))
        })
    }

    pub fn get(&self, partner: &str) -> Result<DepartmentClient<Channel>, Status> {
        self.link(partner).map(|l| l.client.clone())
    }

    /// Deliver `delivery` to `partner`'s adapter. The adapter is given
    /// `timeout` (a call's `grpc-timeout`, a message's `timeout_millis`);
    /// the caller bounds its own wait by it. `traceparent`: the attempt's
    /// span, for the adapter's.
    pub async fn deliver(
        &self,
        partner: &str,
        delivery: DeliverRequest,
        timeout: Duration,
        traceparent: String,
    ) -> Result<(), Status> {
        let link = self.link(partner)?;
        if link.streams() && delivery.encoded_len() <= MESSAGE_MAX {
            let message = DeliverMessage {
                sequence: 0,
                delivery: Some(delivery),
                traceparent,
                // At least 1: 0 would mean the adapter's default.
                timeout_millis: u32::try_from(timeout.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
            };
            return link.session().deliver(partner, message).await;
        }
        let mut request = tonic::Request::new(delivery);
        request.set_timeout(timeout);
        if let Ok(value) = traceparent.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        link.client.clone().deliver(request).await.map(|_| ())
    }
}

impl Link {
    /// Whether deliveries go over the stream (not while the adapter is sent
    /// calls for want of it).
    fn streams(&self) -> bool {
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

    /// The open stream, or a new one: asked for in a task of its own, which
    /// reads its answers, so that messages are sent at once.
    fn session(&self) -> Arc<Session> {
        let mut open = lock(&self.stream);
        if let Some(session) = open.as_ref().filter(|s| s.is_open()) {
            return session.clone();
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting {
            open: true,
            answers: HashMap::new(),
        }));
        let (held, let_go) = oneshot::channel();
        tokio::spawn(run_stream(
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
            next: AtomicU64::new(0),
            _held: held,
        });
        *open = Some(session.clone());
        session
    }
}

impl Session {
    fn is_open(&self) -> bool {
        lock(&self.waiting).open && !self.tx.is_closed()
    }

    async fn deliver(&self, partner: &str, mut message: DeliverMessage) -> Result<(), Status> {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        message.sequence = sequence;
        let (answer, heard) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            if !waiting.open {
                return Err(ended(partner));
            }
            waiting.answers.insert(sequence, answer);
        }
        // Whatever ends this wait (the answer, the stream's end, the
        // caller's timeout dropping it) takes the attempt out of the books.
        let _forget = Forget {
            waiting: &self.waiting,
            sequence,
        };
        if self.tx.send(message).await.is_err() {
            return Err(ended(partner));
        }
        heard.await.unwrap_or_else(|_| Err(ended(partner)))
    }
}

/// Removes an attempt from the books when its wait ends by any path.
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    sequence: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(self.waiting);
        if waiting.answers.remove(&self.sequence).is_some() {
            // Unanswered: the attempt's time ran out. The stream may be
            // stuck (its headers or answers never come), so the next
            // attempt opens another; this one lasts while attempts still
            // wait on it, and is reset when the last lets go of it.
            waiting.open = false;
        }
    }
}

/// Ask for the stream and read its answers; when it cannot be opened, or
/// ends, every attempt still waiting hears why.
async fn run_stream(
    partner: String,
    mut client: DepartmentClient<Channel>,
    messages: mpsc::Receiver<DeliverMessage>,
    waiting: Arc<Mutex<Waiting>>,
    calls_until: Arc<Mutex<Option<Instant>>>,
    mut held: oneshot::Receiver<()>,
) {
    let stream = async {
        let opened = client
            .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(messages))
            .await;
        match opened {
            Ok(answers) => read_answers(answers.into_inner(), &waiting).await,
            Err(status) => Err(status),
        }
    };
    let end = tokio::select! {
        end = stream => end,
        // Nothing uses the session any more: whatever it waits for, no
        // attempt does.
        _ = &mut held => Ok(Status::unavailable("the delivery stream was let go")),
    };
    let end = match end {
        Ok(end) => end,
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::warn!(receiver = %partner, "the adapter has no DeliverStream; it is sent Deliver calls for {} s", CALLS_FOR.as_secs());
            *lock(&calls_until) = Some(Instant::now() + CALLS_FOR);
            Status::unavailable("the adapter has no DeliverStream; the next attempt is a call")
        }
        // Refused before anything was taken (the broker's certificate):
        // the attempts hear it, as a call's would.
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
            "the delivery stream was refused: {:?}",
            status.code()
        )),
    };
    let stranded: Vec<_> = {
        let mut waiting = lock(&waiting);
        waiting.open = false;
        waiting
            .answers
            .drain()
            .map(|(_, attempt)| attempt)
            .collect()
    };
    if !stranded.is_empty() {
        tracing::debug!(receiver = %partner, attempts = stranded.len(), code = ?end.code(), "delivery attempts left without an answer");
    }
    for attempt in stranded {
        let _ = attempt.send(Err(Status::new(end.code(), end.message().to_owned())));
    }
}

/// Pass each answer to its attempt until the stream ends: `Ok` with the
/// status every attempt still waiting then hears, or `Err` with the stream's
/// refusal when it ended with an error before any answer (an adapter may
/// refuse the stream after its headers, as UNIMPLEMENTED in the trailers).
async fn read_answers(
    mut answers: Streaming<DeliverAnswer>,
    waiting: &Mutex<Waiting>,
) -> Result<Status, Status> {
    let mut answered = false;
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                answered = true;
                let Some(attempt) = lock(waiting).answers.remove(&answer.sequence) else {
                    // Its attempt gave up waiting (or the sequence is not
                    // one of ours): nothing to tell.
                    continue;
                };
                let result = match Code::from(answer.code) {
                    Code::Ok => Ok(()),
                    code => Err(Status::new(code, answer.message)),
                };
                let _ = attempt.send(result);
            }
            Ok(None) => return Ok(Status::unavailable("the adapter ended the delivery stream")),
            Err(status) if !answered => return Err(status),
            Err(status) => {
                return Ok(Status::unavailable(format!(
                    "the delivery stream broke: {:?}",
                    status.code()
                )));
            }
        }
    }
}

fn ended(partner: &str) -> Status {
    Status::unavailable(format!("the delivery stream to {partner}'s adapter ended"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
