//! Following the other replicas (`[cluster]` of broker.toml):
//!
//! - operators' limit overrides are read from Redis whenever one changes,
//!   and every few seconds in case a notice was missed;
//! - a reload made through another replica (Redis keeps the digest of the
//!   file it put in force) is made here from this replica's own copy; while
//!   that copy differs (a ConfigMap not yet updated here) it is tried again
//!   at every look, with a warning;
//! - an operator's replay or purge through another replica reaches the
//!   lanes here, which may hold those items in memory.
//!
//! Changes are audited once, by the replica that took the operator's call.

use crate::Broker;
use crate::admin::Reloaded;
use crate::error::BrokerError;
use crossgate_cluster::{Notice, Redis};
use crossgate_limits::PartnerLimits;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often overrides and files are looked at even without a notice.
const RESYNC: Duration = Duration::from_secs(5);

type Reload = fn(&Broker) -> Result<Reloaded, BrokerError>;

/// The reloadable files by the name replicas know them by.
const FILES: [(&str, Reload); 2] = [
    ("catalog", Broker::reload_catalog_file as Reload),
    ("limits", Broker::reload_limits_file as Reload),
];

/// What this replica has made of the files' digests in Redis.
#[derive(Default)]
struct Files {
    /// The digest Redis held at the last look, per file; `None` before the
    /// first look (a replica that starts reads its own files: it does not
    /// take an older reload's word over them).
    seen: Option<HashMap<String, String>>,
    /// Files whose digest in force here still differs from Redis's.
    behind: HashSet<String>,
}

impl Broker {
    /// Follow the other replicas' changes for as long as the process runs.
    pub(crate) fn follow(&self, redis: Arc<Redis>) {
        let broker = self.clone();
        let mut notices = redis.notices();
        tokio::spawn(async move {
            let mut resync = tokio::time::interval(RESYNC);
            resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut files = Files::default();
            loop {
                let notice = tokio::select! {
                    n = notices.recv() => match n {
                        Some(n) => n,
                        None => return,
                    },
                    _ = resync.tick() => Notice::Resync,
                };
                match notice {
                    Notice::Overrides => broker.take_overrides(&redis).await,
                    Notice::Files => broker.take_files(&redis, &mut files).await,
                    Notice::Resync => {
                        broker.take_overrides(&redis).await;
                        broker.take_files(&redis, &mut files).await;
                    }
                    Notice::Replayed { receivers } => broker
                        .inner
                        .outbox
                        .replayed(&receivers.into_iter().collect()),
                    Notice::Purged { receiver, ids } => broker.inner.outbox.purged(&receiver, ids),
                }
            }
        });
    }

    /// Make this replica's overrides Redis's; a Redis that holds none yet
    /// is given this replica's (from its overrides file).
    async fn take_overrides(&self, redis: &Redis) {
        let Some(admin) = &self.inner.admin else {
            return;
        };
        let _one_change = admin.changes.lock().await;
        let shared = match redis.overrides().await {
            Ok(shared) => shared,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the shared overrides");
                return;
            }
        };
        let Some(shared) = shared else {
            let mine: BTreeMap<String, String> = admin
                .limits
                .overrides()
                .into_iter()
                .map(|(p, l)| (p, l.to_line()))
                .collect();
            if let Err(e) = redis.seed_overrides(&mine).await {
                tracing::warn!(error = %e, "cannot share this replica's overrides");
            }
            return;
        };
        let mut wanted: BTreeMap<String, PartnerLimits> = BTreeMap::new();
        for (partner, line) in shared {
            if !self.inner.partners.contains_key(&partner) {
                tracing::warn!(%partner, "a shared override names a party this replica does not know; skipped");
                continue;
            }
            match PartnerLimits::from_line(&line) {
                Ok(l) => {
                    wanted.insert(partner, l);
                }
                Err(e) => {
                    tracing::warn!(%partner, error = %e, "a shared override cannot be read; skipped")
                }
            }
        }
        if wanted == admin.limits.overrides() {
            return;
        }
        admin.limits.set_overrides(wanted);
        tracing::info!("limit overrides changed through another replica; in force here");
        if let Err(status) = self.persist(admin) {
            tracing::warn!(error = %status.message(), "cannot keep the shared overrides beside the config");
        }
    }

    /// Reload each file whose digest in Redis changed since the last look
    /// and differs from the one in force here.
    async fn take_files(&self, redis: &Redis, files: &mut Files) {
        let digests = match redis.files().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the reloaded files' digests");
                return;
            }
        };
        let Some(seen) = &mut files.seen else {
            files.seen = Some(digests.into_iter().collect());
            return;
        };
        for (kind, reload) in FILES {
            let Some(wanted) = digests.get(kind) else {
                continue;
            };
            let changed = seen.get(kind) != Some(wanted);
            if changed {
                seen.insert(kind.to_owned(), wanted.clone());
            }
            if !changed && !files.behind.contains(kind) {
                continue;
            }
            if self.in_force_digest(kind).as_deref() == Some(wanted.as_str()) {
                files.behind.remove(kind);
                continue;
            }
            // One reload at a time, as an operator's (SIGHUP, Admin).
            let reloaded = {
                let mut in_force = self
                    .inner
                    .in_force
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let r = reload(self);
                if let Ok(r) = &r {
                    in_force.insert(r.file.clone(), r.digest.clone());
                }
                r
            };
            match reloaded {
                Ok(r) => {
                    if r.digest == *wanted {
                        files.behind.remove(kind);
                        tracing::info!(file = %r.file.display(), "reloaded as another replica did");
                    } else {
                        files.behind.insert(kind.to_owned());
                        tracing::warn!(
                            file = %r.file.display(),
                            here = %r.digest,
                            elsewhere = %wanted,
                            "another replica reloaded a different version of this file; tried again every few seconds"
                        );
                    }
                }
                Err(e) => {
                    files.behind.insert(kind.to_owned());
                    tracing::error!(error = %e, "another replica reloaded a file this replica cannot load; the old one stays");
                }
            }
        }
    }

    /// The digest of a reloadable file as in force here.
    fn in_force_digest(&self, kind: &str) -> Option<String> {
        let file = match kind {
            "catalog" => self.inner.catalog_file.clone()?,
            _ => self.inner.admin.as_ref()?.config_dir.join("limits.toml"),
        };
        self.inner
            .in_force
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&file)
            .cloned()
    }
}
