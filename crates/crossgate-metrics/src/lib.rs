//! Prometheus metrics of a broker or adapter process, on an HTTP endpoint
//! (`GET /metrics`, OpenMetrics text).
//!
//! - The standard gRPC server series (`grpc_server_started_total`,
//!   `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}`,
//!   `grpc_server_handling_seconds`), from a tower layer on the server
//!   ([`GrpcLayer`]).
//! - crossgate's own: decisions, throttled calls, the limit in force,
//!   deliveries, the audit log's append latency, each pipeline step's
//!   latency.
//!
//! Label values come only from configuration: a partner or record type a
//! caller names that the deployment does not know is counted as `other`,
//! a gRPC method the process does not serve as `unknown`. So a hostile
//! caller cannot grow the series.
#![forbid(unsafe_code)]

mod grpc;
mod http;

pub use grpc::GrpcLayer;
pub use http::serve;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handled {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    consumer: String,
    provider: String,
    record_type: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerMode {
    partner: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Throttle {
    partner: String,
    mode: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    receiver: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Step {
    step: &'static str,
}

/// Run before a scrape.
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 50 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// What a process counts, and the names it may use as label values.
pub struct Metrics {
    registry: Registry,
    started: Family<Method, Counter>,
    handled: Family<Handled, Counter>,
    handling: Histograms<Method>,
    decisions: Family<DecisionLabels, Counter>,
    throttled: Family<Throttle, Counter>,
    limit: Family<PartnerMode, Gauge<f64, AtomicU64>>,
    deliveries: Family<Delivery, Counter>,
    audit_append: Histogram,
    audit_failures: Counter,
    steps: Histograms<Step>,
    partners: HashSet<String>,
    record_types: HashSet<String>,
    outbox: Family<OutboxLabels, Gauge>,
    audit_queue: Gauge,
    /// Run before each scrape (e.g. to read the limits in force).
    refresh: Mutex<Vec<Refresh>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    receiver: String,
    state: &'static str,
}

/// A gauge to set: a count that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Level(Gauge);

impl Level {
    pub fn set(&self, n: usize) {
        self.0.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Failed,
    Dead,
}

impl DeliveryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Dead => "dead",
        }
    }
}

impl Metrics {
    /// `partners` and `record_types` are the deployment's: the only label
    /// values other than `other`.
    pub fn new(
        partners: impl IntoIterator<Item = String>,
        record_types: impl IntoIterator<Item = String>,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let started = Family::<Method, Counter>::default();
        let handled = Family::<Handled, Counter>::default();
        let handling = Histograms::<Method>::new_with_constructor(latency);
        let decisions = Family::<DecisionLabels, Counter>::default();
        let throttled = Family::<Throttle, Counter>::default();
        let limit = Family::<PartnerMode, Gauge<f64, AtomicU64>>::default();
        let deliveries = Family::<Delivery, Counter>::default();
        let audit_append = latency();
        let audit_failures = Counter::default();
        let steps = Histograms::<Step>::new_with_constructor(latency);
        let outbox = Family::<OutboxLabels, Gauge>::default();
        let audit_queue = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Time from an RPC's start to its answer",
            prometheus_client::registry::Unit::Seconds,
            handling.clone(),
        );
        registry.register(
            "crossgate_decisions",
            "Decisions written to the audit log (a throttled call counts once here)",
            decisions.clone(),
        );
        registry.register(
            "crossgate_throttled",
            "Calls refused by a partner's rate limit (cause=\"rate\") or its cap of calls under way (cause=\"calls_under_way\")",
            throttled.clone(),
        );
        registry.register(
            "crossgate_limit_rate",
            "The rate limit in force, calls per second",
            limit.clone(),
        );
        registry.register(
            "crossgate_deliveries",
            "Delivery attempts to receivers' adapters, by outcome",
            deliveries.clone(),
        );
        registry.register_with_unit(
            "crossgate_audit_append",
            "Time to commit an audit entry (durable: until it is on disk)",
            prometheus_client::registry::Unit::Seconds,
            audit_append.clone(),
        );
        registry.register(
            "crossgate_audit_failures",
            "Audit commits that failed (the calls behind them were refused)",
            audit_failures.clone(),
        );
        registry.register_with_unit(
            "crossgate_step",
            "Time in each step of the broker's request path",
            prometheus_client::registry::Unit::Seconds,
            steps.clone(),
        );
        registry.register(
            "crossgate_outbox_items",
            "Deliveries owed to each receiver: held (waiting, in backoff or being sent) by this \
             replica, and dead (given up, in the store, read every 15 s)",
            outbox.clone(),
        );
        registry.register(
            "crossgate_audit_queue_depth",
            "Audit entries waiting for the log's writer",
            audit_queue.clone(),
        );
        Arc::new(Metrics {
            registry,
            outbox,
            audit_queue,
            started,
            handled,
            handling,
            decisions,
            throttled,
            limit,
            deliveries,
            audit_append,
            audit_failures,
            steps,
            partners: partners.into_iter().collect(),
            record_types: record_types.into_iter().collect(),
            refresh: Mutex::new(Vec::new()),
        })
    }

    /// A known partner, empty (no provider: an auditor's search, an
    /// operator's change) or `other`.
    fn partner(&self, id: &str) -> String {
        if id.is_empty() || self.partners.contains(id) {
            id.to_owned()
        } else {
            "other".to_owned()
        }
    }

    fn record_type(&self, t: &str) -> String {
        if t.is_empty() || self.record_types.contains(t) {
            t.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// A receiver's outbox items in `state` ("held" or "dead"), as a
    /// handle to set again and again without a lookup.
    pub fn outbox_items(&self, receiver: &str, state: &'static str) -> Level {
        Level(
            self.outbox
                .get_or_create(&OutboxLabels {
                    receiver: self.partner(receiver),
                    state,
                })
                .clone(),
        )
    }

    /// Entries waiting for the audit log's writer.
    pub fn audit_queue_depth(&self, n: usize) {
        self.audit_queue.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One decision written to the audit log.
    pub fn decision(
        &self,
        consumer: &str,
        provider: &str,
        record_type: &str,
        decision: &'static str,
    ) {
        self.decisions
            .get_or_create(&DecisionLabels {
                consumer: self.partner(consumer),
                provider: self.partner(provider),
                record_type: self.record_type(record_type),
                decision,
            })
            .inc();
    }

    /// One call refused by `partner`'s limit for `mode` (publish or query).
    pub fn throttled(&self, partner: &str, mode: &'static str, cause: &'static str) {
        self.throttled
            .get_or_create(&Throttle {
                partner: self.partner(partner),
                mode,
                cause,
            })
            .inc();
    }

    /// The limit in force for `partner` and `mode`, calls per second.
    pub fn limit_in_force(&self, partner: &str, mode: &'static str, per_second: f64) {
        self.limit
            .get_or_create(&PartnerMode {
                partner: self.partner(partner),
                mode,
            })
            .set(per_second);
    }

    /// One delivery attempt to `receiver`.
    pub fn delivery(&self, receiver: &str, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&Delivery {
                receiver: self.partner(receiver),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// One audit commit and how long it took.
    pub fn audit_append(&self, took: Duration) {
        self.audit_append.observe(took.as_secs_f64());
    }

    /// One audit commit that failed.
    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    /// One step of the request path and how long it took.
    pub fn step(&self, step: &'static str, took: Duration) {
        self.steps
            .get_or_create(&Step { step })
            .observe(took.as_secs_f64());
    }

    /// Run `f` before each scrape.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// Everything, as OpenMetrics text.
    pub fn render(&self) -> String {
        for f in self
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(self);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests;
