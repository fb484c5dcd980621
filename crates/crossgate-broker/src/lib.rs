//! The broker: every record between departments passes it. Each call takes
//! the same named steps (see `pipeline.rs`): authenticate → hold → limit → validate →
//! authorise → forward → finish, the one exit that audits and answers
//! (`outcome.rs`).
#![forbid(unsafe_code)]

pub mod activity;
pub mod admin;
pub mod approvals;
pub mod audit;
pub mod audit_service;
pub mod checkpoints;
pub mod config;
pub mod delivery;
pub mod deployment;
mod detached;
pub mod error;
mod in_flight;
pub mod outbox;
mod outbox_admin;
mod outcome;
mod pipeline;
pub mod release;
mod replicas;
mod service;
mod streams;
mod throttle_log;

use crossgate_policy::{Mode, Partner, Policy, ReferenceKey, Role};
use crossgate_proto::admin_server::AdminServer;
use crossgate_proto::audit_server::AuditServer;
use crossgate_proto::broker_server::BrokerServer;
use crossgate_schema::Registry;
use governor::clock as governor_clock;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;

pub use config::BrokerConfig;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    /// The role it was authenticated for.
    pub role: Role,
}

/// The limit step's answer: `Err` is the call's answer
/// (`RESOURCE_EXHAUSTED` with how long to wait, or `UNAVAILABLE`).
pub enum LimitCheck<'a> {
    /// Decided in-process.
    Now(Result<(), Status>),
    /// Decided by a store the replicas share.
    Later(futures_util::future::BoxFuture<'a, Result<(), Status>>),
}

/// The limit step's interface.
pub trait Limiter: Send + Sync + 'static {
    fn check<'a>(&'a self, partner: &'a str, mode: Mode) -> LimitCheck<'a>;
}

/// No limits.
pub struct Unlimited;

impl Limiter for Unlimited {
    fn check<'a>(&'a self, _: &'a str, _: Mode) -> LimitCheck<'a> {
        LimitCheck::Now(Ok(()))
    }
}

/// A throttled call's answer: `RESOURCE_EXHAUSTED` with a
/// `google.rpc.RetryInfo` saying how long to wait.
fn throttled(partner: &str, retry_after: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "{partner} is over its rate limit; retry in {} ms",
            retry_after.as_millis().max(1)
        ),
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// Per-partner limits held in this process.
impl<C> Limiter for crossgate_limits::Limits<C>
where
    C: governor_clock::Clock + Clone + Send + Sync + 'static,
{
    fn check<'a>(&'a self, partner: &'a str, mode: Mode) -> LimitCheck<'a> {
        LimitCheck::Now(
            crossgate_limits::Limits::check(self, partner, mode)
                .map_err(|t| throttled(partner, t.retry_after)),
        )
    }
}

/// Per-partner limits held across replicas (Redis): in-process while this
/// replica holds tokens, else one round trip.
impl Limiter for crossgate_cluster::SharedLimits {
    fn check<'a>(&'a self, partner: &'a str, mode: Mode) -> LimitCheck<'a> {
        fn answer(partner: &str, d: crossgate_cluster::Decision) -> Result<(), Status> {
            match d {
                crossgate_cluster::Decision::Allowed => Ok(()),
                crossgate_cluster::Decision::Throttled(wait) => Err(throttled(partner, wait)),
                crossgate_cluster::Decision::Unavailable(why) => Err(Status::unavailable(why)),
            }
        }
        match self.check_local(partner, mode) {
            Some(d) => LimitCheck::Now(answer(partner, d)),
            None => LimitCheck::Later(Box::pin(async move {
                answer(partner, self.check_shared(partner, mode).await)
            })),
        }
    }
}

/// Everything the broker needs, built once at start.
pub struct Parts {
    pub config: BrokerConfig,
    pub registry: Arc<Registry>,
    pub policy: Policy,
    pub partners: Vec<Partner>,
    pub adapters: delivery::Adapters,
    /// The delivery lanes over the outbox kept by `audit`.
    pub outbox: outbox::Outbox,
    pub audit: Arc<dyn audit::AuditSink>,
    pub limiter: Arc<dyn Limiter>,
    /// Live limit tuning through `Admin`; `None` when there is no limits.toml.
    pub admin: Option<admin::LimitsAdmin>,
    /// Where `Audit` reads the log; `None` when the log is not readable (in-memory sinks).
    pub audit_reader: Option<audit_service::AuditReader>,
    /// The secret behind opaque record references (see `config::load_reference_key`).
    pub references: ReferenceKey,
    /// Uses already spent of counted approvals (see `approvals::spent_in_log`).
    pub approval_uses: approvals::ApprovalUses,
    /// `catalog.toml`, re-read by `Admin.ReloadCatalog`; `None`: not reloadable.
    pub catalog_file: Option<std::path::PathBuf>,
    /// The digest of each reloadable file's text as compiled into these
    /// parts (the "old" of its first reload's entry).
    pub in_force: HashMap<std::path::PathBuf, String>,
    /// The key that signs checkpoints of the log; `None`: no checkpoints.
    pub checkpoints: Option<Arc<crossgate_audit::checkpoint::Signer>>,
    /// The CA's revocation lists (`crls` in broker.toml); `None`: none given.
    pub revocation: Option<Arc<crossgate_tls::revocation::Revocation>>,
    /// The other replicas' Redis (`[cluster]`); `None`: a single broker.
    pub cluster: Option<Arc<crossgate_cluster::Redis>>,
    /// What the broker counts for Prometheus; `None`: nothing.
    pub metrics: Option<Arc<crossgate_metrics::Metrics>>,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    registry: Arc<Registry>,
    /// The catalog in force: each call takes a snapshot, a reload swaps it.
    policy: std::sync::RwLock<Arc<Policy>>,
    catalog_file: Option<std::path::PathBuf>,
    partners: HashMap<String, Partner>,
    adapters: delivery::Adapters,
    outbox: outbox::Outbox,
    audit: Arc<dyn audit::AuditSink>,
    limiter: Arc<dyn Limiter>,
    admin: Option<admin::LimitsAdmin>,
    cluster: Option<Arc<crossgate_cluster::Redis>>,
    metrics: Option<Arc<crossgate_metrics::Metrics>>,
    audit_reader: Option<audit_service::AuditReader>,
    checkpoints: Option<Arc<crossgate_audit::checkpoint::Signer>>,
    /// Who each client certificate names (and whether it is revoked),
    /// worked out once per certificate.
    identities: crossgate_tls::peers::Identities,
    references: ReferenceKey,
    approval_uses: Arc<approvals::ApprovalUses>,
    next_request: AtomicU64,
    epoch: u64,
    /// Set when a stop begins: new calls are refused while calls in flight finish.
    draining: std::sync::atomic::AtomicBool,
    /// The work of calls whose callers went away before it ended
    /// (`detached`): a stop waits for it, within the grace period, before
    /// the outbox drains.
    leftovers: tokio_util::task::TaskTracker,
    /// Each partner's Query and Publish calls under way, leftovers included.
    in_flight: in_flight::InFlight,
    /// Throttled calls, counted until their entry is written.
    throttles: throttle_log::ThrottleLog,
    /// Each partner's calls over the last seconds, for `crossgate top`.
    activity: activity::Activity,
    /// The digest of each reloadable file as last applied.
    in_force: std::sync::Mutex<HashMap<std::path::PathBuf, String>>,
    /// The last checkpoint signed (or found in the folder): the next is
    /// signed only if the log still holds what it vouched for.
    last_checkpoint: std::sync::Mutex<Option<crossgate_audit::checkpoint::Checkpoint>>,
}

impl Broker {
    pub fn new(parts: Parts) -> Self {
        // Microseconds since 1970 and a random part: unique across restarts
        // and replicas, not only within this process.
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u64(micros);
        let epoch = micros ^ (random.finish() & 0xffff_ffff);
        let activity = activity::Activity::new(
            parts
                .partners
                .iter()
                .filter(|p| p.role == Role::Partner)
                .map(|p| p.id.as_str()),
        );
        let in_flight = in_flight::InFlight::new(
            parts.partners.iter().map(|p| p.id.as_str()),
            parts.config.calls_in_flight_per_partner.get(),
        );
        Broker {
            inner: Arc::new(Inner {
                config: parts.config,
                registry: parts.registry,
                policy: std::sync::RwLock::new(Arc::new(parts.policy)),
                catalog_file: parts.catalog_file,
                partners: parts
                    .partners
                    .into_iter()
                    .map(|p| (p.id.clone(), p))
                    .collect(),
                adapters: parts.adapters,
                outbox: parts.outbox,
                audit: parts.audit,
                limiter: parts.limiter,
                admin: parts.admin,
                cluster: parts.cluster,
                metrics: parts.metrics,
                audit_reader: parts.audit_reader,
                checkpoints: parts.checkpoints,
                identities: crossgate_tls::peers::Identities::new(parts.revocation),
                references: parts.references,
                approval_uses: Arc::new(parts.approval_uses),
                next_request: AtomicU64::new(1),
                epoch,
                draining: std::sync::atomic::AtomicBool::new(false),
                leftovers: tokio_util::task::TaskTracker::new(),
                in_flight,
                throttles: throttle_log::ThrottleLog::default(),
                activity,
                in_force: std::sync::Mutex::new(parts.in_force),
                last_checkpoint: std::sync::Mutex::new(None),
            }),
        }
    }

    /// What this broker counts for Prometheus (shared with adapters run in
    /// the same process).
    pub fn metrics(&self) -> Option<Arc<crossgate_metrics::Metrics>> {
        self.inner.metrics.clone()
    }

    /// The catalog in force now; a call keeps its snapshot to the end.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.inner
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A request id unique to this broker process; with traces on, it ends
    /// in the call's trace id (32 hex digits), so an audit entry leads to
    /// its trace. The id is also put on the call's span.
    fn request_id(&self) -> String {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let id = match crossgate_telemetry::current_trace_id() {
            Some(trace) => format!("{:x}-{n}-{trace}", self.inner.epoch),
            None => format!("{:x}-{n}", self.inner.epoch),
        };
        tracing::Span::current().record("request_id", id.as_str());
        id
    }
}

pub use crossgate_proto::standard::ServeError;

/// Serve `Broker` over mutual TLS on `listener` until `shutdown`, with health
/// checking and server reflection. Then drain: health reports NOT_SERVING and
/// new calls are refused with UNAVAILABLE for `shutdown_notice` (probes and
/// load balancers see it; callers go elsewhere), then no new connections are
/// taken, calls in flight finish and delivery attempts under way are
/// recorded — all within `shutdown_grace`; what is left then stays in the
/// outbox for the next start.
pub async fn serve(
    broker: Broker,
    tls: crossgate_tls::Bundle,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = crossgate_proto::standard::health_reporter();
    reporter.set_serving::<BrokerServer<Broker>>().await;
    reporter.set_serving::<AdminServer<Broker>>().await;
    reporter.set_serving::<AuditServer<Broker>>().await;
    let reflection = crossgate_proto::standard::reflection()?;
    let max = broker.inner.config.max_message_bytes;
    let grace = broker.inner.config.shutdown_grace;
    let notice = broker.inner.config.shutdown_notice.min(grace);
    let auth = |role| pipeline::Authenticate {
        broker: broker.clone(),
        role,
    };
    let (fired, stopping) = tokio::sync::oneshot::channel();
    let draining = {
        let reporter = reporter.clone();
        let broker = broker.clone();
        async move {
            shutdown.await;
            let _ = fired.send(tokio::time::Instant::now());
            broker.inner.draining.store(true, Ordering::SeqCst);
            tracing::info!("draining: new calls are refused, calls in flight finish");
            reporter.set_not_serving::<BrokerServer<Broker>>().await;
            reporter.set_not_serving::<AdminServer<Broker>>().await;
            reporter.set_not_serving::<AuditServer<Broker>>().await;
            reporter
                .set_service_status("", crossgate_proto::standard::ServingStatus::NotServing)
                .await;
            tokio::time::sleep(notice).await;
        }
    };
    // Health alone in plain text, for probes without a certificate: it
    // says SERVING or NOT_SERVING and holds nothing else.
    let health_only = match broker.inner.config.health_listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::HealthListen { address, source })?;
            let health = health.clone();
            Some(tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                // Bounded: probes need one call at a time.
                if let Err(e) = tonic::transport::Server::builder()
                    .concurrency_limit_per_connection(4)
                    .max_concurrent_streams(4)
                    .timeout(std::time::Duration::from_secs(5))
                    .add_service(health)
                    .serve_with_incoming(incoming)
                    .await
                {
                    tracing::error!(error = %e, "the health listener stopped");
                }
            }))
        }
        None => None,
    };
    // Prometheus metrics on their own address, if set and free.
    let metrics_task = match (
        broker.inner.config.metrics_address(),
        broker.inner.metrics.clone(),
    ) {
        (Some(address), Some(metrics)) => match TcpListener::bind(address).await {
            Ok(listener) => Some(tokio::spawn(crossgate_metrics::serve(listener, metrics))),
            Err(e) => {
                tracing::error!(%address, error = %e, "metrics are off: cannot listen for them (set metrics_listen in broker.toml)");
                None
            }
        },
        _ => None,
    };
    let limits = broker.inner.config.server.clone();
    let server = limits
        .builder()
        .layer(crossgate_metrics::GrpcLayer::new(
            broker.inner.metrics.clone(),
        ))
        .tls_config(limits.tls(tls.server()))?
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            AdminServer::new(broker.clone()),
            auth(Role::Operator),
        ))
        .add_service(InterceptedService::new(
            AuditServer::new(broker.clone()),
            auth(Role::Auditor),
        ))
        .add_service(pipeline::NamePartnerCall(InterceptedService::new(
            BrokerServer::new(broker.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth(Role::Partner),
        )))
        .serve_with_incoming_shutdown(limits.incoming(listener), draining);
    // Throttled calls reach the log as one entry per partner, kind and second.
    let counting = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                broker.write_throttles().await;
            }
        })
    };
    // Signed checkpoints of the chain heads, kept outside the store.
    let checkpointing = broker.spawn_checkpoints();
    let (since_tx, since) = tokio::sync::watch::channel(None);
    let overdue = async move {
        if let Ok(at) = stopping.await {
            let _ = since_tx.send(Some(at));
            tokio::time::sleep_until(at + grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Serving that ends in an error still goes through the steps below: the
    // last second's tallies, the leftovers' entries and the outbox's
    // deliveries are kept before the error is returned.
    let served = tokio::select! {
        served = server => served.map_err(ServeError::from),
        () = overdue => {
            tracing::warn!("grace period over: calls still in flight are cut off (their callers got no OK and may retry)");
            Ok(())
        }
    };
    if let Err(e) = &served {
        tracing::error!(error = %e, "serving stopped with an error; keeping what is under way before stopping");
        broker.inner.draining.store(true, Ordering::SeqCst);
    }
    // The grace counts from the stop asked for, or from the error.
    let stopped_at = (*since.borrow()).unwrap_or_else(tokio::time::Instant::now);
    counting.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = health_only {
        task.abort();
    }
    if let Some(task) = checkpointing {
        task.abort();
    }
    broker.write_throttles().await;
    let left = || (stopped_at + grace).saturating_duration_since(tokio::time::Instant::now());
    // Calls whose callers went away may still be fetching or publishing:
    // their entries and outbox items come before the outbox drains.
    broker.inner.leftovers.close();
    if tokio::time::timeout(left(), broker.inner.leftovers.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = broker.inner.leftovers.len(),
            "grace period over: work of calls whose callers went away is cut off"
        );
    }
    if tokio::time::timeout(left(), broker.inner.outbox.drain())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over: undelivered items stay in the outbox for the next start"
        );
    }
    served
}
