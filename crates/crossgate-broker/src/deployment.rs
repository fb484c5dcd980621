//! A deployment's configuration folder read and compiled once, and the one
//! place that wires a broker from it. `crossgate broker`, `up`, `demo` and
//! the tests all build their broker here, so they run the same broker.

use crate::admin::LimitsAdmin;
use crate::approvals::{ApprovalUses, spent_in_log};
use crate::audit::AuditSink;
use crate::audit_service::AuditReader;
use crate::config::{AuditConfig, BrokerConfig, open_limits};
use crate::delivery::Adapters;
use crate::outbox::Outbox;
use crate::{Broker, Limiter, Parts, Unlimited};
use crossgate_policy::{Partner, Policy, ReferenceKey};
use crossgate_schema::Registry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::error::BrokerError as DeploymentError;

fn read(path: PathBuf) -> Result<String, DeploymentError> {
    std::fs::read_to_string(&path).map_err(|source| DeploymentError::Read { path, source })
}

/// Every party of `<dir>/partners.toml`, with its role and adapter address.
pub fn read_partners(dir: &Path) -> Result<Vec<Partner>, DeploymentError> {
    let path = dir.join("partners.toml");
    let text = read(path.clone())?;
    Ok(crossgate_policy::compile_partners(
        &path.display().to_string(),
        &text,
    )?)
}

/// A configuration folder, compiled: broker.toml (defaults when missing),
/// partners.toml and catalog.toml (both required).
pub struct Deployment {
    pub dir: PathBuf,
    pub config: BrokerConfig,
    pub registry: Arc<Registry>,
    pub partners: Vec<Partner>,
    pub policy: Policy,
    /// SHA-256 of the catalog text `policy` was compiled from: the "old" of
    /// its first reload's entry (the file may change after it was read).
    pub catalog_digest: String,
}

impl Deployment {
    pub fn load(dir: &Path, registry: Arc<Registry>) -> Result<Self, DeploymentError> {
        let config = BrokerConfig::load(dir)?;
        let partners = read_partners(dir)?;
        let ids: Vec<&str> = partners.iter().map(|p| p.id.as_str()).collect();
        let catalog = dir.join("catalog.toml");
        let text = read(catalog.clone())?;
        let policy =
            crossgate_policy::compile(&catalog.display().to_string(), &text, &ids, &registry)?;
        let catalog_digest = crate::audit::digest(text.as_bytes());
        let lease = config.delivery.lease;
        let least = (config.delivery_timeout + Duration::from_secs(1)) * 2;
        if lease < least || lease > Duration::from_secs(3600) {
            return Err(DeploymentError::Cluster {
                file: dir.join("broker.toml"),
                message: format!(
                    "[delivery] lease = {lease:?}: between {least:?} (twice delivery_timeout \
                     and a second: a replica stops sending its deliveries that long before its \
                     lease runs out) and 1h"
                ),
            });
        }
        if config.metrics_listen != "off" && config.metrics_address().is_none() {
            return Err(DeploymentError::Cluster {
                file: dir.join("broker.toml"),
                message: format!(
                    "metrics_listen = {:?}: write host:port (e.g. \"127.0.0.1:9464\") or \"off\"",
                    config.metrics_listen
                ),
            });
        }
        let writer = &config.audit.writer;
        if writer.is_empty()
            || writer.len() > 64
            || !writer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(DeploymentError::Cluster {
                file: dir.join("broker.toml"),
                message: format!(
                    "[audit] writer = {writer:?}: 1 to 64 letters, digits, '.', '_' or '-' \
                     (each replica's own, e.g. its pod's name)"
                ),
            });
        }
        if let Some(cluster) = &config.cluster {
            cluster
                .check(&ids)
                .map_err(|message| DeploymentError::Cluster {
                    file: dir.join("broker.toml"),
                    message,
                })?;
        }
        Ok(Deployment {
            dir: dir.to_path_buf(),
            config,
            registry,
            partners,
            policy,
            catalog_digest,
        })
    }

    pub fn partner_ids(&self) -> Vec<&str> {
        self.partners.iter().map(|p| p.id.as_str()).collect()
    }
}

/// Run blocking store work (the PostgreSQL client drives its own runtime)
/// on a plain thread of its own, so that it may be called from async code.
pub(crate) fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// How long a limit decision waits for Redis before the partner's fail
/// mode decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Where the broker writes its audit log.
pub enum AuditChoice {
    /// A durable store (`sqlite:PATH`, `postgres://...`); the `Audit`
    /// service reads it and approval uses are counted from it.
    Store(AuditConfig),
    /// Anything else that keeps entries (tests: in memory); not readable
    /// through `Audit`.
    Sink(Arc<dyn AuditSink>),
}

/// What a broker needs beyond its configuration folder.
pub struct Wiring {
    /// The broker's own certificate: it also calls the adapters with it.
    pub tls: crossgate_tls::Bundle,
    pub references: ReferenceKey,
    pub audit: AuditChoice,
    /// Where operators' live limit changes are kept.
    pub overrides_file: PathBuf,
    /// The key that signs checkpoints of the log (see `crate::checkpoints`).
    pub checkpoints: Option<Arc<crossgate_audit::checkpoint::Signer>>,
    /// Test knob: this limiter instead of limits.toml.
    pub limiter: Option<Arc<dyn Limiter>>,
    /// Count into these metrics (shared with adapters in the same
    /// process); `None`: the broker's own.
    pub metrics: Option<Arc<crossgate_metrics::Metrics>>,
}

impl Broker {
    /// The broker of a deployment: adapters, delivery, limits, audit log,
    /// record references and approval uses, wired the one way.
    pub fn from_deployment(dep: Deployment, wiring: Wiring) -> Result<Broker, DeploymentError> {
        let adapters = Adapters::new(&dep.partners, Some(&wiring.tls), Duration::from_secs(2))?;
        let revocation =
            crossgate_tls::revocation::Revocation::load(&wiring.tls.ca_pem, &dep.config.crls)?
                .map(Arc::new);
        let ids = dep.partner_ids();
        let cluster = match &dep.config.cluster {
            Some(c) => Some(Arc::new(
                crossgate_cluster::Redis::new(
                    &c.redis,
                    &c.namespace,
                    &dep.config.audit.writer,
                    c.pool,
                    REDIS_TIMEOUT,
                )
                .map_err(|e| DeploymentError::Cluster {
                    file: dep.dir.join("broker.toml"),
                    message: e.to_string(),
                })?,
            )),
            None => None,
        };
        let catalog_file = dep.dir.join("catalog.toml");
        // What is in force is what was compiled, not what the files hold
        // by now: the first reload's entry reports "old -> new" from these.
        let mut in_force = HashMap::from([(catalog_file.clone(), dep.catalog_digest.clone())]);
        let (limiter, admin): (Arc<dyn Limiter>, _) = match wiring.limiter {
            Some(l) => (l, None),
            None => match open_limits(&dep.dir, &wiring.overrides_file, &ids)? {
                Some(crate::config::OpenedLimits { limits, digest }) => {
                    in_force.insert(dep.dir.join("limits.toml"), digest);
                    // With replicas, a partner's limit holds across all of them.
                    let limiter = match (&cluster, &dep.config.cluster) {
                        (Some(redis), Some(c)) => Arc::new(crossgate_cluster::SharedLimits::new(
                            limits.clone(),
                            redis.clone(),
                            c.clone(),
                        )) as Arc<dyn Limiter>,
                        _ => limits.clone() as Arc<dyn Limiter>,
                    };
                    (
                        limiter,
                        Some(LimitsAdmin {
                            limits,
                            config_dir: dep.dir.clone(),
                            overrides_file: wiring.overrides_file.clone(),
                            shared: cluster.clone(),
                            changes: tokio::sync::Mutex::new(()),
                        }),
                    )
                }
                None => (Arc::new(Unlimited) as Arc<dyn Limiter>, None),
            },
        };
        let ids = crate::config::record_id_key(&wiring.references);
        let mut writer_queue = None;
        let (audit, audit_reader, approval_uses): (Arc<dyn AuditSink>, _, _) = match wiring.audit {
            AuditChoice::Store(log) => {
                let (spent, writer) = off_runtime(|| {
                    let spent = spent_in_log(&dep.policy, &log.store)
                        .map_err(DeploymentError::ApprovalUses)?;
                    Ok::<_, DeploymentError>((spent, log.start()?))
                })?;
                writer_queue = Some(writer.clone());
                (
                    Arc::new(writer),
                    Some(AuditReader {
                        store: log.store.clone(),
                        ids: ids.clone(),
                    }),
                    ApprovalUses::with_spent(spent),
                )
            }
            AuditChoice::Sink(sink) => (sink, None, ApprovalUses::default()),
        };
        // Counted for Prometheus: label values only from this deployment.
        let metrics = wiring.metrics.clone().unwrap_or_else(|| {
            crossgate_metrics::Metrics::new(
                dep.partners.iter().map(|p| p.id.clone()),
                dep.registry
                    .record_types()
                    .map(|t| t.record_type.to_owned()),
            )
        });
        // Record ids reach the log as their digests, by every path.
        let audit: Arc<dyn AuditSink> = Arc::new(crate::audit::Digested { inner: audit, ids });
        let audit: Arc<dyn AuditSink> = Arc::new(crate::audit::Counted {
            inner: audit,
            metrics: metrics.clone(),
        });
        if let Some(writer) = writer_queue {
            metrics.on_scrape(move |m| m.audit_queue_depth(writer.queue_depth()));
        }
        if let Some(admin) = &admin {
            let limits = admin.limits.clone();
            let partners: Vec<String> = dep
                .partners
                .iter()
                .filter(|p| p.role == crossgate_policy::Role::Partner)
                .map(|p| p.id.clone())
                .collect();
            metrics.on_scrape(move |m| {
                for partner in &partners {
                    for mode in [
                        crossgate_limits::Mode::Publish,
                        crossgate_limits::Mode::Query,
                    ] {
                        let q = limits.quota_now(partner, mode);
                        let per_second = f64::from(q.count) / q.per.as_secs_f64().max(1e-9);
                        m.limit_in_force(partner, mode.as_str(), per_second);
                    }
                }
            });
        }
        // Every partner with an adapter may receive.
        let receivers: Vec<String> = dep
            .partners
            .iter()
            .filter(|p| p.adapter.is_some())
            .map(|p| p.id.clone())
            .collect();
        if dep.config.metrics_address().is_some() {
            count_dead_letters(&receivers, audit.clone(), metrics.clone());
        }
        let outbox = Outbox::start(
            receivers,
            adapters.clone(),
            audit.clone(),
            dep.config.delivery.clone(),
            dep.config.delivery_timeout(),
            // Items are leased where replicas may share the store.
            dep.config
                .audit
                .shares_store()
                .then(|| dep.config.audit.writer.clone()),
            Some(metrics.clone()),
        );
        let broker = Broker::new(Parts {
            outbox,
            config: dep.config,
            registry: dep.registry,
            policy: dep.policy,
            partners: dep.partners,
            adapters,
            audit,
            limiter,
            admin,
            audit_reader,
            references: wiring.references,
            approval_uses,
            catalog_file: Some(catalog_file),
            in_force,
            checkpoints: wiring.checkpoints,
            revocation,
            cluster: cluster.clone(),
            metrics: Some(metrics),
        });
        if let Some(redis) = cluster {
            broker.follow(redis);
        }
        Ok(broker)
    }
}

/// Every 15 s, the dead items owed to each receiver, counted in the store
/// (all replicas' together, one counting query): the gauge
/// `crossgate_outbox_items{state="dead"}`. A store that cannot be read
/// leaves the last count until the next tick.
fn count_dead_letters(
    receivers: &[String],
    audit: Arc<dyn AuditSink>,
    metrics: Arc<crossgate_metrics::Metrics>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(15);
    let levels: Vec<(String, crossgate_metrics::Level)> = receivers
        .iter()
        .map(|r| (r.clone(), metrics.outbox_items(r, "dead")))
        .collect();
    // Weak: the count stops with the broker, and keeps no log open.
    let audit = Arc::downgrade(&audit);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(audit) = audit.upgrade() else { return };
            let Ok(dead) = audit.outbox_counts(crate::audit::State::Dead).await else {
                continue;
            };
            for (receiver, level) in &levels {
                let n = dead
                    .iter()
                    .find(|(r, _)| r == receiver)
                    .map_or(0, |(_, n)| *n);
                level.set(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
    });
}
