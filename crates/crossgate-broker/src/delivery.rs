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
//!   repeat of its delivery id);
//! - `UNAVAILABLE` for every attempt still waiting when the stream ends or
//!   breaks (adapter restarted, connection lost): the outcome is unknown, so
//!   the lane tries again, and the next attempt opens a new stream;
//! - an adapter that does not implement `DeliverStream` (UNIMPLEMENTED) is
//!   sent `Deliver` calls from then on.

use crate::error::BrokerError;
use crossgate_policy::{Partner, Role};
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::{DeliverAnswer, DeliverMessage, DeliverRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Messages queued for one stream before a sender waits (the lanes'
/// concurrency keeps far fewer in flight).
const STREAM_QUEUE: usize = 256;

/// Clients for every partner's adapter.
#[derive(Clone)]
pub struct Adapters {
    /// Shared: every delivery attempt holds the set, and copying ten
    /// channels for each was measurable.
    links: Arc<HashMap<String, Link>>,
}

/// One adapter: its channel, and the delivery stream open on it.
struct Link {
    client: DepartmentClient<Channel>,
    stream: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The adapter answered `DeliverStream` with UNIMPLEMENTED.
    unary: AtomicBool,
}

/// An open delivery stream. Dropping it (a broker that stops, or a stream
/// found ended) ends the stream's sending side, and the adapter ends its own.
struct Session {
    tx: mpsc::Sender<DeliverMessage>,
    waiting: Arc<Mutex<Waiting>>,
    next: AtomicU64,
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
                    client: DepartmentClient::new(endpoint.connect_lazy()),
                    stream: tokio::sync::Mutex::new(None),
                    unary: AtomicBool::new(false),
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

    /// Deliver `delivery` to `partner`'s adapter; the caller bounds the
    /// wait. `traceparent`: the attempt's span, for the adapter's.
    pub async fn deliver(
        &self,
        partner: &str,
        delivery: DeliverRequest,
        timeout: Duration,
        traceparent: String,
    ) -> Result<(), Status> {
        let link = self.link(partner)?;
        if !link.unary.load(Ordering::Relaxed) {
            match link.session().await {
                Ok(session) => return session.deliver(partner, delivery, traceparent).await,
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::warn!(receiver = %partner, "the adapter has no DeliverStream; sending it Deliver calls");
                    link.unary.store(true, Ordering::Relaxed);
                }
                Err(status) => return Err(status),
            }
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
    /// The open stream, or a new one.
    async fn session(&self) -> Result<Arc<Session>, Status> {
        let mut open = self.stream.lock().await;
        if let Some(session) = open.as_ref().filter(|s| s.is_open()) {
            return Ok(session.clone());
        }
        *open = None;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let answers = self
            .client
            .clone()
            .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let waiting = Arc::new(Mutex::new(Waiting {
            open: true,
            answers: HashMap::new(),
        }));
        tokio::spawn(read_answers(answers, waiting.clone()));
        let session = Arc::new(Session {
            tx,
            waiting,
            next: AtomicU64::new(0),
        });
        *open = Some(session.clone());
        Ok(session)
    }
}

impl Session {
    fn is_open(&self) -> bool {
        lock(&self.waiting).open && !self.tx.is_closed()
    }

    async fn deliver(
        &self,
        partner: &str,
        delivery: DeliverRequest,
        traceparent: String,
    ) -> Result<(), Status> {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
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
        let message = DeliverMessage {
            sequence,
            delivery: Some(delivery),
            traceparent,
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
        lock(self.waiting).answers.remove(&self.sequence);
    }
}

/// Pass each answer to its attempt; when the stream ends, every attempt
/// still waiting hears UNAVAILABLE.
async fn read_answers(mut answers: Streaming<DeliverAnswer>, waiting: Arc<Mutex<Waiting>>) {
    let end = loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let Some(attempt) = lock(&waiting).answers.remove(&answer.sequence) else {
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
            Ok(None) => break "the adapter ended the delivery stream".to_owned(),
            Err(status) => break format!("the delivery stream broke: {:?}", status.code()),
        }
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
        tracing::debug!(attempts = stranded.len(), reason = %end, "delivery attempts left without an answer");
    }
    for attempt in stranded {
        let _ = attempt.send(Err(Status::unavailable(end.clone())));
    }
}

fn ended(partner: &str) -> Status {
    Status::unavailable(format!("the delivery stream to {partner}'s adapter ended"))
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}
