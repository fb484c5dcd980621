//! The `Admin` service (operator role only): read and tune per-partner
//! limits live. Every change is audited (who, old, new) and persisted beside
//! the config so that a restart keeps it.

use crate::audit::{Decision, Kind};
use crate::pipeline::{Call, entry};
use crate::{Broker, Caller};
use crossgate_limits::{Limit, Limits, Mode, Rate};
use crossgate_policy::Role;
use crossgate_proto::admin_server::Admin;
use crossgate_proto::{
    GetLimitRequest, ListLimitsRequest, ListLimitsResponse, ListUndeliveredRequest,
    ListUndeliveredResponse, PartnerActivity, PartnerLimit, PurgeRequest, PurgeResponse,
    Rate as RateMsg, ReloadRequest, ReloadResponse, ReplayRequest, ReplayResponse, SetLimitRequest,
    TopRequest, TopResponse,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// What the `Admin` service works on.
pub struct LimitsAdmin {
    pub limits: Arc<Limits>,
    /// The config folder: limits.toml is re-read from it.
    pub config_dir: PathBuf,
    /// Where operators' changes are kept (usually `limits.overrides.toml` beside the config).
    pub overrides_file: PathBuf,
    /// Replicas share operators' changes through Redis (`[cluster]`).
    pub shared: Option<Arc<crossgate_cluster::Redis>>,
    /// One change of overrides at a time: an operator's, or another
    /// replica's being taken in (so neither undoes the other).
    pub changes: tokio::sync::Mutex<()>,
}

/// The mode (`None`: both) and the limit an operator asks for, checked.
fn wanted_limit(req: &SetLimitRequest) -> Result<(Option<Mode>, Limit), Status> {
    let mode = match req.mode.as_str() {
        "" => None,
        other => Some(Mode::parse(other).ok_or_else(|| {
            Status::invalid_argument(format!(
                "mode {other:?}: use publish, query or leave it empty for both"
            ))
        })?),
    };
    let wanted = req
        .limit
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("limit is required"))?;
    let rate = Rate::parse(&wanted.rate).map_err(Status::invalid_argument)?;
    if wanted.burst == 0 {
        return Err(Status::invalid_argument("burst must be at least 1"));
    }
    Ok((
        mode,
        Limit {
            rate,
            burst: wanted.burst,
        },
    ))
}

fn describe(limit: &Limit) -> String {
    format!("{} burst {}", limit.rate.text, limit.burst)
}

impl Broker {
    fn admin(&self) -> Result<&LimitsAdmin, Status> {
        self.inner.admin.as_ref().ok_or_else(|| {
            Status::failed_precondition("this broker runs without limits.toml: nothing to tune")
        })
    }

    /// Every partner's id (not auditors' or operators'), sorted.
    fn partner_ids(&self) -> Vec<&String> {
        let mut ids: Vec<&String> = self
            .inner
            .partners
            .values()
            .filter(|p| p.role == Role::Partner)
            .map(|p| &p.id)
            .collect();
        ids.sort();
        ids
    }

    fn known_partner(&self, id: &str) -> Result<(), Status> {
        match self.inner.partners.get(id) {
            Some(p) if p.role == Role::Partner => Ok(()),
            _ => Err(Status::not_found(format!(
                "{id:?} is not a partner in partners.toml"
            ))),
        }
    }

    fn partner_limit(&self, admin: &LimitsAdmin, partner: &str) -> PartnerLimit {
        let (limits, source) = admin.limits.partner_limits(partner);
        let (publish, window) = admin.limits.effective(partner, Mode::Publish);
        let (query, _) = admin.limits.effective(partner, Mode::Query);
        let (allowed, throttled) = admin.limits.last_minute(partner);
        let _ = limits;
        PartnerLimit {
            partner: partner.to_owned(),
            publish: Some(RateMsg {
                rate: publish.rate.text.clone(),
                burst: publish.burst,
            }),
            query: Some(RateMsg {
                rate: query.rate.text.clone(),
                burst: query.burst,
            }),
            active_window: window.unwrap_or_default(),
            allowed_last_minute: allowed,
            throttled_last_minute: throttled,
            source: source.as_str().to_owned(),
        }
    }

    /// Write the overrides beside the config; on failure the change is
    /// undone by the caller. What is written is read back first as the
    /// broker would at start: a change that would leave the configuration
    /// unloadable is refused, not written.
    pub(crate) fn persist(&self, admin: &LimitsAdmin) -> Result<(), Status> {
        let path = admin.overrides_file.clone();
        let tmp = path.with_extension("toml.tmp");
        let text = admin
            .limits
            .overrides_toml()
            .map_err(|e| Status::internal(format!("cannot write the overrides as TOML: {e}")))?;
        let ids: Vec<&str> = self.inner.partners.keys().map(String::as_str).collect();
        if let Err(e) = crossgate_limits::parse_config(&path.display().to_string(), &text, &ids) {
            return Err(Status::invalid_argument(format!(
                "refused: the overrides would not load again ({e}); nothing was changed"
            )));
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                Status::unavailable(format!("cannot keep the change in {}: {e}", path.display()))
            })
    }

    /// Tell the other replicas of a partner's override (set or removed);
    /// a change they cannot get is not made.
    async fn share(&self, admin: &LimitsAdmin, partner: &str) -> Result<(), Status> {
        let Some(redis) = &admin.shared else {
            return Ok(());
        };
        let line = admin.limits.override_of(partner).map(|o| o.to_line());
        redis
            .share_override(partner, line.as_deref())
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the change cannot reach the other replicas ({e}); nothing was changed"
                ))
            })
    }

    async fn audit_change(
        &self,
        call: &Call,
        operator: &Caller,
        partner: &str,
        reason: String,
    ) -> Result<(), Status> {
        let mut e = entry(Kind::Admin, Decision::Changed);
        e.consumer = operator.id.clone();
        e.provider = partner.to_owned();
        e.reason = reason;
        self.audit(call, e).await
    }

    /// An operator's reload: applied and audited (who, what), or refused
    /// with the file's line and the old configuration kept.
    async fn reload(
        &self,
        request: &Request<ReloadRequest>,
        apply: Reload,
    ) -> Result<Response<ReloadResponse>, Status> {
        let operator = self.authenticate(request, Role::Operator)?;
        let (applied, message) = self.reload_audited(&operator, apply).await?;
        Ok(Response::new(ReloadResponse { applied, message }))
    }

    /// Apply a reload and audit it either way: applied (`changed`, with the
    /// digest of the file now in force) or refused (`invalid`, with the
    /// file's line), by whom.
    async fn reload_audited(&self, by: &Caller, apply: Reload) -> Result<(bool, String), Status> {
        let call = self.admin_call();
        let mut shared = None;
        // One reload at a time (SIGHUP and Admin may race): what is applied
        // and what the entry says was in force before stay together.
        let (applied, decision, message, digest, logged) = {
            let mut in_force = self
                .inner
                .in_force
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match apply(self) {
                Ok(r) => {
                    shared = Some((r.kind, r.digest.clone()));
                    // What was in force before, and what is now: by digest.
                    let old = in_force.insert(r.file.clone(), r.digest.clone());
                    let change = match old {
                        Some(old) if old == r.digest => format!("{}: unchanged", r.message),
                        Some(old) => format!("{}: sha256 {old} -> {}", r.message, r.digest),
                        None => format!("{}: now sha256 {}", r.message, r.digest),
                    };
                    (true, Decision::Changed, change.clone(), r.digest, change)
                }
                Err(refused) => (
                    false,
                    Decision::Invalid,
                    format!("not reloaded: {refused}"),
                    String::new(),
                    format!("not reloaded: {}", refused.logged()),
                ),
            }
        };
        let mut e = entry(Kind::Admin, decision);
        e.consumer = by.id.clone();
        e.reason = format!("{logged} (by {})", by.id);
        e.record_digest = digest;
        self.audit(&call, e).await?;
        // The other replicas reload their own copy of the file, unaudited:
        // the change is audited once, here.
        if let (Some(redis), Some((kind, digest))) = (&self.inner.cluster, shared)
            && let Err(e) = redis.announce_file(kind, &digest).await
        {
            tracing::warn!(error = %e, "the other replicas were not told of the reload");
            return Ok((
                applied,
                format!("{message}; the other replicas were not told ({e}): reload them too"),
            ));
        }
        Ok((applied, message))
    }

    /// SIGHUP: reload limits.toml and catalog.toml, each audited as the
    /// signal's doing. Returns what happened, for the broker's output.
    /// Each file's outcome: `Ok` what was applied, `Err` why it was refused.
    pub async fn reload_on_signal(&self) -> Vec<Result<String, String>> {
        let signal = Caller {
            id: "signal:SIGHUP".into(),
            role: Role::Operator,
        };
        let mut said = Vec::new();
        for apply in [
            Broker::reload_limits_file as Reload,
            Broker::reload_catalog_file,
        ] {
            said.push(match self.reload_audited(&signal, apply).await {
                Ok((_, message)) => Ok(message),
                Err(status) => Err(status.message().to_owned()),
            });
        }
        said
    }

    pub(crate) fn admin_call(&self) -> Call {
        Call {
            id: self.request_id(),
            started: Instant::now(),
            deadline: self.inner.config.default_deadline(),
        }
    }
}

#[tonic::async_trait]
impl Admin for Broker {
    async fn list_limits(
        &self,
        request: Request<ListLimitsRequest>,
    ) -> Result<Response<ListLimitsResponse>, Status> {
        self.authenticate(&request, Role::Operator)?;
        let admin = self.admin()?;
        let ids = self.partner_ids();
        let limits = ids
            .into_iter()
            .map(|id| self.partner_limit(admin, id))
            .collect();
        Ok(Response::new(ListLimitsResponse { limits }))
    }

    async fn get_limit(
        &self,
        request: Request<GetLimitRequest>,
    ) -> Result<Response<PartnerLimit>, Status> {
        self.authenticate(&request, Role::Operator)?;
        let admin = self.admin()?;
        let partner = request.into_inner().partner;
        self.known_partner(&partner)?;
        Ok(Response::new(self.partner_limit(admin, &partner)))
    }

    async fn set_limit(
        &self,
        request: Request<SetLimitRequest>,
    ) -> Result<Response<PartnerLimit>, Status> {
        let operator = self.authenticate(&request, Role::Operator)?;
        let admin = self.admin()?;
        let call = self.admin_call();
        let req = request.into_inner();
        self.known_partner(&req.partner)?;
        let (mode, limit) = wanted_limit(&req)?;
        let _one_change = admin.changes.lock().await;
        let previous = admin.limits.override_of(&req.partner);
        let before = admin.limits.set(&req.partner, mode, limit.clone());
        if let Err(status) = self.persist(admin) {
            // Not kept, so not applied: put back what was there.
            admin.limits.restore(&req.partner, previous);
            return Err(status);
        }
        if let Err(status) = self.share(admin, &req.partner).await {
            admin.limits.restore(&req.partner, previous);
            let _ = self.persist(admin);
            return Err(status);
        }
        let which = if req.mode.is_empty() {
            "publish+query"
        } else {
            req.mode.as_str()
        };
        let old = match mode {
            Some(Mode::Query) => describe(&before.query),
            _ => describe(&before.publish),
        };
        let reason = format!(
            "limit {which} of {}: {old} -> {} (set by {})",
            req.partner,
            describe(&limit),
            operator.id
        );
        self.audit_change(&call, &operator, &req.partner, reason)
            .await?;
        tracing::info!(partner = %req.partner, operator = %operator.id, "limit set");
        Ok(Response::new(self.partner_limit(admin, &req.partner)))
    }

    async fn reset_limit(
        &self,
        request: Request<GetLimitRequest>,
    ) -> Result<Response<PartnerLimit>, Status> {
        let operator = self.authenticate(&request, Role::Operator)?;
        let admin = self.admin()?;
        let call = self.admin_call();
        let partner = request.into_inner().partner;
        self.known_partner(&partner)?;
        let _one_change = admin.changes.lock().await;
        let (before, _) = admin.limits.partner_limits(&partner);
        let previous = admin.limits.override_of(&partner);
        if admin.limits.reset(&partner) {
            self.persist(admin)?;
            if let Err(status) = self.share(admin, &partner).await {
                admin.limits.restore(&partner, previous);
                let _ = self.persist(admin);
                return Err(status);
            }
            let (after, _) = admin.limits.partner_limits(&partner);
            let reason = format!(
                "limit of {partner} reset: {} -> {} (by {})",
                describe(&before.publish),
                describe(&after.publish),
                operator.id
            );
            self.audit_change(&call, &operator, &partner, reason)
                .await?;
        }
        Ok(Response::new(self.partner_limit(admin, &partner)))
    }

    async fn reload_limits(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadResponse>, Status> {
        self.reload(&request, Broker::reload_limits_file).await
    }

    async fn reload_catalog(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadResponse>, Status> {
        self.reload(&request, Broker::reload_catalog_file).await
    }

    async fn list_undelivered(
        &self,
        request: Request<ListUndeliveredRequest>,
    ) -> Result<Response<ListUndeliveredResponse>, Status> {
        let operator = self.authenticate(&request, Role::Operator)?;
        let reply = self
            .list_undelivered_items(&operator, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let operator = self.authenticate(&request, Role::Operator)?;
        let reply = self.replay_items(&operator, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn purge(
        &self,
        request: Request<PurgeRequest>,
    ) -> Result<Response<PurgeResponse>, Status> {
        let operator = self.authenticate(&request, Role::Operator)?;
        let reply = self.purge_items(&operator, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn top(&self, request: Request<TopRequest>) -> Result<Response<TopResponse>, Status> {
        self.authenticate(&request, Role::Operator)?;
        let ids = self.partner_ids();
        let partners = ids
            .into_iter()
            .map(|id| {
                let recent = self.inner.activity.now(id).unwrap_or_default();
                PartnerActivity {
                    limit: Some(match &self.inner.admin {
                        Some(admin) => self.partner_limit(admin, id),
                        None => PartnerLimit {
                            partner: id.clone(),
                            source: "none".into(),
                            ..PartnerLimit::default()
                        },
                    }),
                    calls_per_second: recent.calls_per_second,
                    throttled_per_second: recent.throttled_per_second,
                    errors_per_second: recent.errors_per_second,
                    p99_millis: recent.p99.map_or(0.0, |d| {
                        if d == std::time::Duration::MAX {
                            f64::INFINITY
                        } else {
                            d.as_secs_f64() * 1000.0
                        }
                    }),
                    answered: recent.answered,
                }
            })
            .collect();
        Ok(Response::new(TopResponse {
            partners,
            p99_window_seconds: crate::activity::P99_SECONDS as u32,
        }))
    }
}

impl Broker {
    /// Re-read catalog.toml (operator call or SIGHUP): compiled against the
    /// partners and schemas in force; an invalid file is refused with file,
    /// line and reason, and the old catalog stays. Calls under way finish
    /// under the catalog they started with.
    pub fn reload_catalog_file(&self) -> Result<Reloaded, crate::error::BrokerError> {
        let file = self
            .inner
            .catalog_file
            .clone()
            .ok_or(crate::error::BrokerError::NoCatalogFile)?;
        let text =
            std::fs::read_to_string(&file).map_err(|source| crate::error::BrokerError::Read {
                path: file.clone(),
                source,
            })?;
        let mut ids: Vec<&str> = self.inner.partners.keys().map(String::as_str).collect();
        ids.sort_unstable();
        let policy = crossgate_policy::compile(
            &file.display().to_string(),
            &text,
            &ids,
            &self.inner.registry,
        )?;
        // An approval that is counted now may have been used before: count
        // its uses from the log before it can open another answer.
        if let Some(reader) = &self.inner.audit_reader {
            let spent = crate::deployment::off_runtime(|| {
                crate::approvals::spent_in_log(&policy, &reader.store)
            })
            .map_err(crate::error::BrokerError::ApprovalUses)?;
            self.inner.approval_uses.at_least(spent);
        }
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(Reloaded {
            message: format!("reloaded {}", file.display()),
            digest: crate::audit::digest(text.as_bytes()),
            file,
            kind: "catalog",
        })
    }

    /// Re-read limits.toml (operator call or SIGHUP). An invalid file is
    /// refused with file, line and reason, and the old limits stay.
    pub fn reload_limits_file(&self) -> Result<Reloaded, crate::error::BrokerError> {
        let admin = self
            .inner
            .admin
            .as_ref()
            .ok_or(crate::error::BrokerError::NoLimits)?;
        let ids: Vec<&str> = self.inner.partners.keys().map(String::as_str).collect();
        let file = admin.config_dir.join("limits.toml");
        let text = crate::error::read_optional(&file)?
            .ok_or_else(|| crate::error::BrokerError::LimitsGone(file.clone()))?;
        let config = crossgate_limits::parse_config(&file.display().to_string(), &text, &ids)?;
        admin.limits.replace(config);
        Ok(Reloaded {
            message: format!("reloaded {}", file.display()),
            digest: crate::audit::digest(text.as_bytes()),
            file,
            kind: "limits",
        })
    }
}

/// A configuration file applied live.
pub struct Reloaded {
    pub file: std::path::PathBuf,
    pub message: String,
    /// SHA-256 of the text now in force, for the audit entry.
    pub digest: String,
    /// Which file it is, as the other replicas are told (`catalog`, `limits`).
    pub kind: &'static str,
}

type Reload = fn(&Broker) -> Result<Reloaded, crate::error::BrokerError>;
