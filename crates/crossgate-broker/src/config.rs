//! `broker.toml` and the files it points at.

use crate::error::{BrokerError, read_optional};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the broker listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Also answer `grpc.health.v1` in plain text here, and nothing else:
    /// for probes that cannot present a client certificate (Kubernetes'
    /// gRPC probes). Off unless set.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`, plain HTTP) on this address, or
    /// `"off"`. One that cannot be bound is reported and left off: the
    /// gateway does not stop for its metrics.
    #[serde(default = "default_metrics")]
    pub metrics_listen: String,
    /// Traces over OTLP/gRPC to this collector, e.g.
    /// `"http://127.0.0.1:4317"` [default: `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// without either, no traces].
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Where operators' live limit changes are kept [default:
    /// limits.overrides.toml in the config folder]; a writable place when
    /// the config folder is not (a ConfigMap).
    #[serde(default)]
    pub limits_overrides: Option<PathBuf>,
    /// Folder with `ca.pem`, `broker.pem`/`broker.key` and the parties' certificates.
    #[serde(default = "default_certs")]
    pub certs: PathBuf,
    /// The CA's certificate revocation lists (PEM or DER): a party whose
    /// certificate is revoked is refused by the broker and by adapters run
    /// from this folder.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Largest gRPC message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Deadline for a call whose caller set none, e.g. `"5s"`.
    #[serde(default = "default_deadline", with = "crossgate_config::duration")]
    pub default_deadline: Duration,
    /// Query and Publish calls of one partner under way at once, counted
    /// until their work ends (also after a caller hung up); one more is
    /// answered `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_in_flight")]
    pub calls_in_flight_per_partner: std::num::NonZeroUsize,
    /// How long a delivery to one adapter may take, e.g. `"2s"`.
    #[serde(default = "default_delivery", with = "crossgate_config::duration")]
    pub delivery_timeout: Duration,
    /// How long a stop (SIGTERM, Ctrl-C) may take: calls in flight finish
    /// and delivery attempts are recorded within it, e.g. `"10s"`.
    #[serde(default = "default_grace", with = "crossgate_config::duration")]
    pub shutdown_grace: Duration,
    /// The first part of a stop: health says NOT_SERVING and new calls are
    /// refused (UNAVAILABLE) while connections stay open, so probes and
    /// load balancers notice, e.g. `"1s"`.
    #[serde(default = "default_notice", with = "crossgate_config::duration")]
    pub shutdown_notice: Duration,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Retries of deliveries a receiver did not take.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Connection, stream and time limits of the broker's server.
    #[serde(default)]
    pub server: crossgate_tls::serving::ServerLimits,
    /// Several replicas: limits and change notices shared through Redis.
    /// Without it, limits are this process's own.
    #[serde(default)]
    pub cluster: Option<crossgate_cluster::ClusterConfig>,
}

/// `[delivery]` of broker.toml: how the outbox retries a receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Waits between failed attempts, one per failure in a row; the last
    /// one repeats. Each is spread by ±20 % (jitter).
    #[serde(default = "default_retry", with = "crossgate_config::durations")]
    pub retry: Vec<Duration>,
    /// A delivery still failing this long after it was accepted is
    /// dead-lettered: kept for an operator to replay or purge.
    #[serde(default = "default_give_up", with = "crossgate_config::duration")]
    pub give_up_after: Duration,
    /// Deliveries in flight at once per receiver (versions of one record
    /// always go one after another).
    #[serde(default = "default_concurrency")]
    pub concurrency: std::num::NonZeroUsize,
    /// Undelivered items held in memory per receiver; more wait in the store.
    #[serde(default = "default_memory_items")]
    pub memory_items: std::num::NonZeroUsize,
    /// How long delivered items and idempotency keys are kept: a repeat
    /// within this window is recognised.
    #[serde(default = "default_keep", with = "crossgate_config::duration")]
    pub keep_delivered: Duration,
    /// Replicas sharing a PostgreSQL store: how long a replica holds the
    /// queued items it took (renewed while it lives). A replica that dies
    /// leaves its items to the others after this long.
    #[serde(default = "default_lease", with = "crossgate_config::duration")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

fn default_retry() -> Vec<Duration> {
    [1, 5, 30, 120, 600, 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}
fn default_give_up() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_concurrency() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(16).unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_memory_items() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(10_000).unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_keep() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry: default_retry(),
            give_up_after: default_give_up(),
            concurrency: default_concurrency(),
            memory_items: default_memory_items(),
            keep_delivered: default_keep(),
            lease: default_lease(),
        }
    }
}

/// `[audit]` of broker.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `sqlite:PATH` (the embedded default) or `postgres://...` (shared by replicas).
    #[serde(default = "default_store")]
    pub store: String,
    /// `durable` (reply after the entry is committed) or `async`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// This broker's chain in the log; replicas sharing a store need distinct ids.
    #[serde(default = "default_writer")]
    pub writer: String,
    /// How often the broker signs a checkpoint of every chain's head into
    /// `checkpoints` (see `crossgate audit checkpoint`); `"0s"`: never.
    #[serde(
        default = "default_checkpoint_every",
        with = "crossgate_config::duration"
    )]
    pub checkpoint_every: Duration,
    /// Folder of the periodic signed checkpoints, outside the store.
    #[serde(default = "default_checkpoints")]
    pub checkpoints: PathBuf,
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_checkpoints() -> PathBuf {
    PathBuf::from(".crossgate/checkpoints")
}

fn default_store() -> String {
    "sqlite:.crossgate/audit.db".into()
}
fn default_durability() -> String {
    "durable".into()
}
fn default_writer() -> String {
    "broker-1".into()
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            store: default_store(),
            durability: default_durability(),
            writer: default_writer(),
            checkpoint_every: default_checkpoint_every(),
            checkpoints: default_checkpoints(),
        }
    }
}

impl AuditConfig {
    /// Whether the store may be shared by replicas (PostgreSQL).
    pub fn shares_store(&self) -> bool {
        self.store.starts_with("postgres://") || self.store.starts_with("postgresql://")
    }

    /// Start the log's writer for this broker.
    pub fn start(&self) -> Result<crossgate_audit::Writer, BrokerError> {
        let durability = match self.durability.as_str() {
            "durable" => crossgate_audit::Durability::Durable,
            "async" => crossgate_audit::Durability::Async,
            other => return Err(BrokerError::Durability(other.to_owned())),
        };
        Ok(crossgate_audit::Writer::start(
            crossgate_audit::open(&self.store)?,
            self.writer.clone(),
            durability,
            4096,
        )?)
    }
}

fn default_metrics() -> String {
    "127.0.0.1:9464".into()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}
fn default_certs() -> PathBuf {
    PathBuf::from(".crossgate/certs")
}
fn default_max_message() -> usize {
    4 * 1024 * 1024
}
fn default_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_in_flight() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(1024).unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_delivery() -> Duration {
    Duration::from_secs(2)
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_notice() -> Duration {
    Duration::from_secs(1)
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: default_listen(),
            health_listen: None,
            metrics_listen: default_metrics(),
            otlp_endpoint: None,
            limits_overrides: None,
            certs: default_certs(),
            crls: Vec::new(),
            max_message_bytes: default_max_message(),
            default_deadline: default_deadline(),
            calls_in_flight_per_partner: default_in_flight(),
            delivery_timeout: default_delivery(),
            shutdown_grace: default_grace(),
            shutdown_notice: default_notice(),
            audit: AuditConfig::default(),
            delivery: DeliveryConfig::default(),
            server: crossgate_tls::serving::ServerLimits::default(),
            cluster: None,
        }
    }
}

impl BrokerConfig {
    /// Read `<dir>/broker.toml`; a missing file means the defaults.
    pub fn load(dir: &Path) -> Result<Self, BrokerError> {
        let path = dir.join("broker.toml");
        let mut config: Self = match read_optional(&path)? {
            None => Self::default(),
            Some(text) => {
                let file = path.display().to_string();
                crossgate_config::Source::new(&file, &text).parse()?
            }
        };
        config.apply_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
        Ok(config)
    }

    /// What differs between replicas sharing one broker.toml (a
    /// ConfigMap), and secrets kept out of it, from the environment:
    /// `CROSSGATE_AUDIT_WRITER` (each replica's own chain, e.g. the pod's
    /// name), `CROSSGATE_AUDIT_STORE` and `CROSSGATE_REDIS_URL` (URLs that
    /// may hold a password).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(writer) = var("CROSSGATE_AUDIT_WRITER") {
            self.audit.writer = writer;
        }
        if let Some(store) = var("CROSSGATE_AUDIT_STORE") {
            self.audit.store = store;
        }
        if let (Some(redis), Some(cluster)) = (var("CROSSGATE_REDIS_URL"), &mut self.cluster) {
            cluster.redis = redis;
        }
    }

    pub fn default_deadline(&self) -> Duration {
        self.default_deadline
    }

    /// Where metrics are served; `None`: off. An address that does not
    /// parse is refused when the deployment is loaded.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listen.parse().ok()
    }

    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }
}

/// Read `<dir>/limits.toml`, checked against the partner ids, with the
/// digest of the text read; `None` when there is no such file (then nobody
/// is limited).
pub fn load_limits(
    dir: &Path,
    partners: &[&str],
) -> Result<Option<(crossgate_limits::LimitsConfig, String)>, BrokerError> {
    let path = dir.join("limits.toml");
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let config = crossgate_limits::parse_config(&path.display().to_string(), &text, partners)?;
    Ok(Some((config, crate::audit::digest(text.as_bytes()))))
}

/// Where operators' live limit changes are kept, beside the config.
pub fn overrides_file(dir: &Path) -> PathBuf {
    dir.join("limits.overrides.toml")
}

/// Limits as a broker starts with them.
pub struct OpenedLimits {
    pub limits: std::sync::Arc<crossgate_limits::Limits>,
    /// SHA-256 of the limits.toml text they were made from.
    pub digest: String,
}

/// The limits of a config folder: `limits.toml` with the operators'
/// overrides (from `overrides`, usually `limits.overrides.toml` beside it) on
/// top. `None` without limits.toml.
pub fn open_limits(
    dir: &Path,
    overrides: &Path,
    partners: &[&str],
) -> Result<Option<OpenedLimits>, BrokerError> {
    let Some((config, digest)) = load_limits(dir, partners)? else {
        return Ok(None);
    };
    let limits = crossgate_limits::Limits::new(config);
    if let Some(text) = read_optional(overrides)? {
        let file = overrides.display().to_string();
        let overrides = crossgate_limits::parse_config(&file, &text, partners)?;
        limits.set_overrides(overrides.partners);
    }
    Ok(Some(OpenedLimits {
        limits: std::sync::Arc::new(limits),
        digest,
    }))
}

/// The broker's record-reference secret, `reference.key` in its certificate folder.
pub fn load_reference_key(certs: &Path) -> Result<crossgate_policy::ReferenceKey, BrokerError> {
    let secret = crossgate_tls::read_reference_secret(certs)?;
    warn_if_readable(&certs.join(crossgate_tls::REFERENCE_SECRET_FILE));
    crossgate_policy::ReferenceKey::new(&secret).map_err(|source| BrokerError::ReferenceKey {
        path: certs.join(crossgate_tls::REFERENCE_SECRET_FILE),
        source,
    })
}

/// A secret file any user of the machine may read is named in a warning
/// (it is used as it is: an operator may be mid-way through fixing it).
fn warn_if_readable(path: &Path) {
    if crossgate_tls::readable_by_others(path) {
        tracing::warn!(
            path = %path.display(),
            "this secret is readable by every user of this machine; chmod 600 it"
        );
    }
}

/// The key of the audit log's record-id digests, derived from the
/// record-reference secret: every replica of a deployment (they share the
/// secret) digests an id alike, and a search by id on any of them, or on
/// the store with the same certificate folder, finds it.
pub fn record_id_key(references: &crossgate_policy::ReferenceKey) -> crossgate_audit::RecordIdKey {
    crossgate_audit::RecordIdKey::new(&record_id_secret(references))
}

/// The secret of [`record_id_key`], for handing to an auditor who reads the
/// store directly (`crossgate certs id-key`): it digests ids and nothing
/// else; the reference secret it comes from cannot be had from it.
pub fn record_id_secret(references: &crossgate_policy::ReferenceKey) -> [u8; 32] {
    references.derive("audit record id")
}

/// The broker's checkpoint signing key, `checkpoint.key` in its certificate
/// folder, made (with `checkpoint.pub` beside it) if missing.
pub fn load_checkpoint_signer(
    certs: &Path,
) -> Result<std::sync::Arc<crossgate_audit::checkpoint::Signer>, BrokerError> {
    let seed = crossgate_tls::ensure_checkpoint_key(certs)?;
    warn_if_readable(&certs.join(crossgate_tls::CHECKPOINT_KEY_FILE));
    let signer = crossgate_audit::checkpoint::Signer::from_seed(&seed, "broker").map_err(|e| {
        crossgate_tls::TlsError::CheckpointKey {
            path: certs.join(crossgate_tls::CHECKPOINT_KEY_FILE),
            why: e.to_string(),
        }
    })?;
    Ok(std::sync::Arc::new(signer))
}
