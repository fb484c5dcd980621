//! The broker's request path, one named step each, in the order every call
//! takes them: authenticate → hold → limit → validate → authorise → (Publish:
//! record) → forward → finish (audit, then answer). Each step after
//! authenticate returns `Result<_, Refusal>`; the handlers in `service.rs`
//! are these steps in sequence and leave through `finish` (`outcome.rs`). A
//! Publish records its decision and its outbox items in one commit before
//! anything is forwarded (`service.rs`, `outbox.rs`).

use crate::approvals::Reservation;
use crate::audit::{Decision, Entry, Kind};
use crate::outcome::Refusal;
use crate::{Broker, Caller};
use crossgate_policy::{Ask, Mode, Policy, Release, Role};
use crossgate_proto::{QueryRequest, Record};
use crossgate_schema::Rejection;
use crossgate_telemetry::step;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tracing::Instrument;

/// A request's running context: its id, when it started, and its deadline.
pub struct Call {
    pub id: String,
    pub started: Instant,
    pub deadline: Duration,
}

impl Call {
    pub fn elapsed_micros(&self) -> u64 {
        self.started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
    }

    /// Time left before the caller's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }
}

/// Step 1 — authenticate, as an interceptor on every service the broker
/// serves: before any handler runs, the caller is whoever its verified
/// client certificate names, must be a known party of the service's role,
/// and is put into the request for the handler.
#[derive(Clone)]
pub struct Authenticate {
    pub(crate) broker: Broker,
    pub(crate) role: Role,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self
            .broker
            .inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Status::unavailable(
                "the broker is stopping; nothing was done; try again (another replica, or after its restart)",
            ));
        }
        let caller = self.broker.identify(&request, self.role)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Which of the partners' calls a request is, read from its path before
/// the interceptor runs (an interceptor sees no path), so that a refusal for
/// the wrong role is logged as the publish or query it was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartnerCall(pub(crate) Kind);

/// Puts [`PartnerCall`] into each publish to the partners' service.
#[derive(Clone)]
pub struct NamePartnerCall<S>(pub(crate) S);

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for NamePartnerCall<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>> + tonic::server::NamedService,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<B>) -> Self::Future {
        // Only a publish is marked: a query, the hot path, is what an
        // unmarked call is taken for, and pays nothing.
        // Exactly `/<service>/Publish`, not any path ending so.
        let publish = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            == Some("/Publish");
        if publish {
            request.extensions_mut().insert(PartnerCall(Kind::Publish));
        }
        self.0.call(request)
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for NamePartnerCall<S> {
    const NAME: &'static str = S::NAME;
}

impl Broker {
    /// The caller the interceptor authenticated for `role`. A service
    /// mounted without it (or for another role) identifies the caller here
    /// instead of trusting anything.
    pub(crate) fn authenticate<T>(
        &self,
        request: &Request<T>,
        role: Role,
    ) -> Result<Caller, Status> {
        match request.extensions().get::<Caller>() {
            Some(caller) if caller.role == role => Ok(caller.clone()),
            _ => self.identify(request, role),
        }
    }

    /// Who the verified client certificate names, if a known party of `role`.
    fn identify<T>(&self, request: &Request<T>, role: Role) -> Result<Caller, Status> {
        let chain = request.peer_certs();
        let id = self
            .inner
            .identities
            .identify(chain.as_deref().map(Vec::as_slice))
            .map_err(|why| Status::unauthenticated(why.to_string()))?;
        let partner = self.inner.partners.get(id.as_ref()).ok_or_else(|| {
            Status::unauthenticated(format!("{id} is not a party in partners.toml"))
        })?;
        if partner.role != role {
            let said = format!(
                "{id} has the role {}; this call needs the role {}",
                partner.role.as_str(),
                role.as_str()
            );
            // A known party, denied: in the log, counted as throttled calls
            // are (a flood of them is one entry a second).
            let kind = match role {
                Role::Auditor => Kind::Audit,
                Role::Operator => Kind::Admin,
                // The partners' service: a publish if its path said so, else
                // a query (listing the schemas counts as one).
                Role::Partner => request
                    .extensions()
                    .get::<PartnerCall>()
                    .map_or(Kind::Query, |call| call.0),
            };
            self.inner.throttles.count(
                id.as_ref(),
                kind,
                crate::throttle_log::Cause::WrongRole,
                &said,
            );
            return Err(Status::permission_denied(said));
        }
        Ok(Caller {
            id: id.as_ref().to_owned(),
            role,
        })
    }

    /// Step 1b — hold: one of the partner's calls under way, until its
    /// work ends, whether or not its caller still waits (`in_flight.rs`).
    /// Over the cap, the call is throttled (`Refusal::Busy`).
    pub(crate) fn hold(&self, caller: &Caller) -> Result<crate::in_flight::Slot<'_>, Refusal> {
        self.inner
            .in_flight
            .hold(&caller.id)
            .map_err(|no| match no {
                crate::in_flight::NoSlot::Full(status) => Refusal::Busy(status),
                crate::in_flight::NoSlot::NotCounted => Refusal::Failed {
                    status: Status::internal("the broker keeps no count of this party's calls"),
                    logged: "no count of calls under way for this party".into(),
                },
            })
    }

    /// Step 2 — limit: checked before the record is parsed, so a throttled
    /// call costs next to nothing.
    pub(crate) async fn limit(&self, caller: &Caller, mode: Mode) -> Result<(), Refusal> {
        let start = Instant::now();
        let answer = match self.inner.limiter.check(&caller.id, mode) {
            crate::LimitCheck::Now(answer) => answer,
            crate::LimitCheck::Later(answer) => answer.instrument(step("limit")).await,
        };
        self.timed("limit", start);
        answer.map_err(Refusal::Throttled)
    }

    /// Count one step's time (`crossgate_step_seconds{step}`).
    pub(crate) fn timed(&self, step: &'static str, start: Instant) {
        if let Some(m) = &self.inner.metrics {
            m.step(step, start.elapsed());
        }
    }

    /// Step 3a — bounds: what a caller writes into fields the audit log
    /// keeps is checked first, so that no entry grows with a caller's text.
    /// The refusal says how long, never what.
    pub(crate) fn bounds(&self, fields: &[(&str, &str, usize)]) -> Result<(), Refusal> {
        for (name, value, max) in fields {
            if value.len() > *max {
                return Err(Refusal::invalid(format!(
                    "{name} is {} bytes; at most {max}",
                    value.len()
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(Refusal::invalid(format!(
                    "{name} holds a control character; write it without"
                )));
            }
        }
        Ok(())
    }

    /// Step 3 — validate: the record against its schema, every fault at once.
    /// The sender hears every fault with its values; the log keeps them
    /// without.
    pub(crate) fn validate(&self, record: &Record) -> Result<Value, Refusal> {
        let _span = step("validate").entered();
        self.inner
            .registry
            .parse_and_validate(&record.record_type, &record.json)
            .map_err(|rejection| Refusal::Invalid {
                status: invalid(&record.record_type, &rejection),
                logged: format!(
                    "{} record rejected: {}",
                    record.record_type,
                    rejection.without_values()
                ),
            })
    }

    /// Step 4 — authorise a publish: every receiver whose grant is in force.
    pub(crate) fn authorise_publish<'p>(
        &self,
        policy: &'p Policy,
        caller: &Caller,
        record_type: &str,
    ) -> Result<Vec<Release<'p>>, Refusal> {
        let _span = step("authorise").entered();
        Ok(policy.publish_routes(&caller.id, record_type, today(policy))?)
    }

    /// Step 4 — authorise a query: the grant, its lookups, the approval and
    /// (for a counted approval) one of its uses, reserved until the answer
    /// is released.
    pub(crate) async fn authorise_query<'p>(
        &self,
        policy: &'p Policy,
        caller: &Caller,
        q: &QueryRequest,
    ) -> Result<(Release<'p>, Option<Reservation>), Refusal> {
        let span = step("authorise");
        let criteria: Vec<(&str, &str)> = q
            .criteria
            .iter()
            .map(|c| (c.path.as_str(), c.value.as_str()))
            .collect();
        let ask = Ask {
            consumer: &caller.id,
            provider: &q.provider,
            record_type: &q.record_type,
            purpose: &q.purpose,
            approval: (!q.approval_reference.is_empty()).then_some(q.approval_reference.as_str()),
            criteria: &criteria,
        };
        let release = span.in_scope(|| policy.decide_query(&ask, today(policy)))?;
        let reservation = match (release.approval, &self.inner.cluster) {
            (None, _) => None,
            (Some(approval), None) => self.inner.approval_uses.reserve(approval)?,
            (Some(approval), Some(redis)) => self
                .inner
                .approval_uses
                .reserve_shared(approval, redis)
                .instrument(span)
                .await
                .map_err(|why| Refusal::Failed {
                    status: Status::unavailable(why),
                    logged: format!(
                        "approval {}: uses counted in Redis, which cannot be reached",
                        approval.reference
                    ),
                })??,
        };
        Ok((release, reservation))
    }

    /// Audit (used by `finish`): returns only when the entry is kept; if the log cannot
    /// be written the broker refuses the work rather than serve without it.
    pub(crate) async fn audit(&self, call: &Call, mut entry: Entry) -> Result<(), Status> {
        entry.request_id = call.id.clone();
        entry.latency_micros = call.elapsed_micros();
        let decision = entry.decision;
        self.inner
            .audit
            .append(entry)
            .instrument(step("audit"))
            .await
            .map_err(|e| {
                tracing::error!(request_id = %call.id, error = %e, "audit log unavailable");
                Status::unavailable("the audit log cannot be written; try again later")
            })?;
        tracing::debug!(request_id = %call.id, decision = decision.as_str(), "audited");
        Ok(())
    }
}

/// A blank entry of `kind` for `caller`, filled in by each step.
pub(crate) fn entry(kind: Kind, decision: Decision) -> Entry {
    Entry {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        request_id: String::new(),
        kind,
        consumer: String::new(),
        provider: String::new(),
        record_type: String::new(),
        record_id: String::new(),
        purpose: String::new(),
        approval_reference: String::new(),
        decision,
        reason: String::new(),
        released_fields: Vec::new(),
        record_digest: String::new(),
        latency_micros: 0,
    }
}

/// Today in the catalog's time zone, for grant and approval validity.
fn today(policy: &Policy) -> chrono::NaiveDate {
    policy.today(chrono::Utc::now())
}

/// `INVALID_ARGUMENT` for the party that sent the record: every fault, with
/// its values (they are the sender's own).
pub(crate) fn invalid(record_type: &str, rejection: &Rejection) -> Status {
    let faults = rejection.faults();
    let total = faults.len();
    let mut violations: Vec<FieldViolation> = faults
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|f| FieldViolation::new(bounded(&f.path), bounded(&f.message)))
        .collect();
    if total > MAX_VIOLATIONS {
        violations.push(FieldViolation::new(
            "",
            format!("… and {} more faults", total - MAX_VIOLATIONS),
        ));
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{record_type} record rejected: {rejection}"),
        ErrorDetails::with_bad_request(violations),
    )
}

/// The longest record id or approval reference a caller may send.
pub(crate) const MAX_ID: usize = 128;
/// The longest provider, record type or purpose.
pub(crate) const MAX_NAME: usize = 64;
/// The most criteria of a query, and the longest path and value of one.
pub(crate) const MAX_CRITERIA: usize = 8;
pub(crate) const MAX_CRITERION: usize = 256;

/// The most faults one `BadRequest` lists (the rest are counted).
const MAX_VIOLATIONS: usize = 100;
/// The longest path or message of one listed fault, in characters.
const MAX_FAULT_TEXT: usize = 300;

/// `text`, cut to [`MAX_FAULT_TEXT`] characters (a fault may quote a huge value).
fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_FAULT_TEXT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The caller's deadline from the `grpc-timeout` header, capped by the default.
pub(crate) fn deadline<T>(request: &Request<T>, default: Duration) -> Duration {
    let parsed = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(crossgate_config::parse_grpc_timeout);
    parsed.map_or(default, |d| d.min(default))
}
