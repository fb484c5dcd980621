//! Reaching department adapters: one lazily connected mutual-TLS channel per
//! adapter, carrying its deliveries (through the outbox's lanes,
//! `outbox.rs`) and its fetches, each kind as messages of one long-lived
//! stream where the adapter has it (`streams.rs`) and as calls where it does
//! not. A message too large for the adapter's default limit goes as a call,
//! which the adapter refuses (or takes) as it always has.

use crate::error::BrokerError;
use crate::streams::{Deliveries, Fetches, Streams};
use crossgate_policy::{Partner, Role};
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::{DeliverMessage, DeliverRequest, FetchMessage, FetchRequest, FetchResponse};
use foldhash::{HashMap, HashMapExt};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The largest request sent as a message on a stream: gRPC's usual 4 MiB
/// limit on one message, less room for the message's own fields. A larger one is sent as
/// a call, so that the adapter answers it alone (OUT_OF_RANGE at the usual
/// limit) instead of ending the stream for every call on it.
const MESSAGE_MAX: usize = 4 * 1024 * 1024 - 1024;

/// Clients for every partner's adapter.
#[derive(Clone)]
pub struct Adapters {
    /// Shared: every delivery attempt holds the set, and copying ten
    /// channels for each was measurable.
    links: Arc<HashMap<String, Link>>,
}

/// One adapter: its channel, and the streams open on it.
struct Link {
    client: DepartmentClient<Channel>,
    deliveries: Streams<Deliveries>,
    fetches: Streams<Fetches>,
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
            let client = DepartmentClient::new(endpoint.connect_lazy());
            links.insert(
                p.id.clone(),
                Link {
                    deliveries: Streams::new(p.id.clone(), client.clone()),
                    fetches: Streams::new(p.id.clone(), client.clone()),
                    client,
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
        if link.deliveries.streams() && delivery.encoded_len() <= MESSAGE_MAX {
            let message = DeliverMessage {
                sequence: 0,
                delivery: Some(delivery),
                traceparent,
                timeout_millis: timeout_millis(timeout),
            };
            return link.deliveries.call(message).await;
        }
        let mut request = tonic::Request::new(delivery);
        request.set_timeout(timeout);
        set_traceparent(&mut request, &traceparent);
        link.client.clone().deliver(request).await.map(|_| ())
    }

    /// Ask `partner`'s adapter for the records `fetch()` names, as
    /// [`Adapters::deliver`] hands over a delivery. The caller bounds its
    /// own wait by `timeout`. A fetch the stream could not carry because
    /// the adapter has none is asked again at once as a call (`fetch()`
    /// makes it anew): a fetch only reads, so asking twice is harmless, and
    /// a query is not failed for what the broker can mend itself. (A fetch
    /// in hand on a stream that broke just as another of the adapter's
    /// streams was refused UNIMPLEMENTED is asked again the same way.)
    pub async fn fetch(
        &self,
        partner: &str,
        fetch: impl Fn() -> FetchRequest,
        timeout: Duration,
        traceparent: String,
    ) -> Result<FetchResponse, Status> {
        let link = self.link(partner)?;
        let began = std::time::Instant::now();
        let mut request = fetch();
        // A fetch refused by an adapter that is stopping (nothing done) is
        // asked once more, on a new stream: during a rolling restart it
        // may reach another of the provider's adapters.
        let mut refusals_left = 1;
        while link.fetches.streams() && request.encoded_len() <= MESSAGE_MAX {
            let message = FetchMessage {
                sequence: 0,
                fetch: Some(request),
                traceparent: traceparent.clone(),
                timeout_millis: timeout_millis(timeout.saturating_sub(began.elapsed())),
            };
            let answered = link.fetches.call(message).await;
            match after_stream(&answered, || link.fetches.streams(), refusals_left) {
                AfterStream::Done => return answered,
                AfterStream::AskOnNewStream => refusals_left -= 1,
                AfterStream::AskAsCall => {
                    request = fetch();
                    break;
                }
            }
            request = fetch();
        }
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout.saturating_sub(began.elapsed()));
        set_traceparent(&mut request, &traceparent);
        link.client
            .clone()
            .fetch(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// What [`Adapters::fetch`] does after a stream attempt: at most two
/// attempts on streams, then at most one call.
#[derive(Debug, PartialEq, Eq)]
enum AfterStream {
    /// The answer stands, whatever it is.
    Done,
    /// Refused by a stopping adapter (nothing done), with a refusal to
    /// spare: asked again, on a new stream.
    AskOnNewStream,
    /// The stream could not carry it, and the adapter takes no streams
    /// for now: asked again as a call.
    AskAsCall,
}

/// `streams_now` is asked only of an unavailable stream: it takes the
/// link's lock, which every fetch to the partner shares.
fn after_stream(
    answered: &Result<FetchResponse, Status>,
    streams_now: impl FnOnce() -> bool,
    refusals_left: u32,
) -> AfterStream {
    match answered {
        Err(status) if crate::streams::stopped_before_doing(status) && refusals_left > 0 => {
            AfterStream::AskOnNewStream
        }
        Err(status) if status.code() == Code::Unavailable && !streams_now() => {
            AfterStream::AskAsCall
        }
        _ => AfterStream::Done,
    }
}

/// A message's `timeout_millis`: at least 1, as 0 would mean the adapter's
/// default.
fn timeout_millis(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

fn set_traceparent<T>(request: &mut tonic::Request<T>, traceparent: &str) {
    if let Ok(value) = traceparent.parse() {
        request.metadata_mut().insert("traceparent", value);
    }
}
