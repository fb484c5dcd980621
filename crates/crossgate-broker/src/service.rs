//! The `Broker` gRPC service: each handler is the pipeline's steps in order.

use crate::audit::{Decision, digest};
use crate::pipeline::{Call, deadline, denied, entry, invalid};
use crate::release::{released, screen};
use crate::{Broker, Caller};
use crossgate_policy::{Denial, Mode, Role};
use crossgate_proto::broker_server::Broker as BrokerService;
use crossgate_proto::{
    DeliverRequest, Delivery, DeliveryOutcome, FetchRequest, FetchResponse, ListSchemasRequest,
    ListSchemasResponse, PublishRequest, PublishResponse, QueryRequest, QueryResponse, SchemaInfo,
};
use std::time::Instant;
use tonic::{Code, Request, Response, Status};

impl Broker {
    fn start<T>(&self, request: &Request<T>) -> Call {
        Call {
            id: self.request_id(),
            started: Instant::now(),
            deadline: deadline(request, self.inner.config.default_deadline()),
        }
    }

    /// Audit a throttled or refused call before answering it.
    async fn refuse(
        &self,
        call: &Call,
        caller: &Caller,
        kind: &'static str,
        status: Status,
        decision: Decision,
    ) -> Status {
        let mut e = entry(kind, decision);
        e.consumer = caller.id.clone();
        e.reason = status.message().to_owned();
        match self.audit(call, e).await {
            Ok(()) => status,
            Err(unavailable) => unavailable,
        }
    }
}

impl Broker {
    /// Publish: authenticate → limit → validate → authorise → forward, with
    /// an audit entry for the decision and for each delivery.
    async fn publish_steps(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let call = self.start(&request);
        let caller = self.authenticate(&request, Role::Partner)?;
        if let Err(status) = self.limit(&caller, Mode::Publish).await {
            return Err(self
                .refuse(&call, &caller, "publish", status, Decision::Throttled)
                .await);
        }
        let record = request
            .into_inner()
            .record
            .ok_or_else(|| Status::invalid_argument("record is required"))?;
        let mut base = entry("publish", Decision::Invalid);
        base.provider = caller.id.clone();
        base.record_type = record.record_type.clone();
        base.record_id = record.record_id.clone();
        base.record_digest = digest(&record.json);

        let document = match self.validate(&record) {
            Ok(doc) => doc,
            Err(rejection) => {
                // The log keeps the faults without their values.
                base.reason = format!(
                    "{} record rejected: {}",
                    record.record_type,
                    rejection.without_values()
                );
                self.audit(&call, base).await?;
                return Err(invalid(&record.record_type, &rejection));
            }
        };
        let routes = match self.authorise_publish(&caller, &record.record_type) {
            Ok(routes) => routes,
            Err(denial) => return Err(self.deny(&call, base, &denial).await),
        };
        if routes.is_empty() {
            base.decision = Decision::Allowed;
            base.reason = "no grant routes this record to any receiver".into();
            self.audit(&call, base).await?;
            return Ok(Response::new(PublishResponse {
                request_id: call.id,
                deliveries: vec![],
            }));
        }

        // Forward: each receiver gets its own projection, referred to by its
        // grant's key field or its own opaque reference, all in parallel.
        let sends = routes.iter().map(|release| {
            let receiver = release.grant.consumer.clone();
            let request = DeliverRequest {
                request_id: call.id.clone(),
                provider: caller.id.clone(),
                record: Some(released(
                    release,
                    &self.inner.references,
                    &record.record_type,
                    &record.record_id,
                    &document,
                )),
            };
            let queue = self.inner.queue.clone();
            async move {
                let result = queue.deliver(&receiver, request).await;
                (receiver, result)
            }
        });
        let results = futures_util::future::join_all(sends).await;
        let mut deliveries = Vec::with_capacity(results.len());
        for ((receiver, result), release) in results.into_iter().zip(&routes) {
            let mut e = base.clone();
            e.consumer = receiver.clone();
            e.purpose = release.grant.purposes.join(",");
            e.released_fields = release.field_paths();
            let (outcome, detail) = match &result {
                Ok(()) => (DeliveryOutcome::Delivered, String::new()),
                // The receiver's own words stay at the broker: they may quote
                // its records.
                Err(status) => (
                    DeliveryOutcome::Failed,
                    format!("{receiver}'s adapter answered {:?}", status.code()),
                ),
            };
            // The log keeps the receiver's status code, not its text.
            (e.decision, e.reason) = match &result {
                Ok(()) => (Decision::Delivered, format!("grant {}", release.grant.id)),
                Err(status) => (
                    Decision::Failed,
                    format!(
                        "grant {}; receiver answered {:?}",
                        release.grant.id,
                        status.code()
                    ),
                ),
            };
            self.audit(&call, e).await?;
            deliveries.push(Delivery {
                receiver,
                outcome: outcome as i32,
                released_fields: release.field_paths(),
                detail,
            });
        }
        Ok(Response::new(PublishResponse {
            request_id: call.id,
            deliveries,
        }))
    }

    /// Query: authenticate → limit → check the ask → authorise (grant,
    /// lookups, approval) → forward → screen the answer → audit.
    async fn query_steps(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let call = self.start(&request);
        let caller = self.authenticate(&request, Role::Partner)?;
        if let Err(status) = self.limit(&caller, Mode::Query).await {
            return Err(self
                .refuse(&call, &caller, "query", status, Decision::Throttled)
                .await);
        }
        let q = request.into_inner();
        let mut base = entry("query", Decision::Invalid);
        base.consumer = caller.id.clone();
        base.provider = q.provider.clone();
        base.record_type = q.record_type.clone();
        base.purpose = q.purpose.clone();
        base.approval_reference = q.approval_reference.clone();
        if q.provider.is_empty()
            || q.purpose.is_empty()
            || !self.inner.registry.contains(&q.record_type)
        {
            let status = Status::invalid_argument(format!(
                "a query names a provider, a known record type and a purpose (got provider {:?}, type {:?}, purpose {:?})",
                q.provider, q.record_type, q.purpose
            ));
            base.reason = status.message().to_owned();
            self.audit(&call, base).await?;
            return Err(status);
        }
        let (release, reservation) = match self.authorise_query(&caller, &q) {
            Ok(r) => r,
            Err(denial) => return Err(self.deny(&call, base, &denial).await),
        };

        // Forward to the provider's adapter under what is left of the
        // deadline, asking for one record more than the grant releases.
        let answer = match self
            .fetch(&call, &caller, &q, release.grant.max_records)
            .await
        {
            Ok(answer) => answer,
            Err(status) => {
                base.decision = Decision::Failed;
                base.reason = format!(
                    "grant {}; provider answered {:?}",
                    release.grant.id,
                    status.code()
                );
                self.audit(&call, base).await?;
                return Err(status);
            }
        };
        // An answer larger than the grant allows releases nothing.
        let matched = answer.records.len() + answer.withheld_records as usize;
        if let Err(denial) = release.grant.check_answer_size(matched) {
            return Err(self.deny(&call, base, &denial).await);
        }
        let mut screened = screen(
            &self.inner.registry,
            &release,
            &self.inner.references,
            &q,
            answer.records,
        );
        screened.withheld_at_adapter = answer.withheld_records;
        base.decision = Decision::Allowed;
        base.reason = match screened.invalid_summary() {
            Some(invalid) => format!("grant {}; {invalid}", release.grant.id),
            None => format!("grant {}", release.grant.id),
        };
        base.released_fields = release.field_paths();
        base.record_id = screened.provider_ids.join(",");
        base.record_digest = screened.digests.join(",");
        self.audit(&call, base).await?;
        if let Some(reservation) = reservation {
            reservation.spend();
        }
        Ok(Response::new(QueryResponse {
            request_id: call.id,
            withheld_records: screened.withheld_count(),
            records: screened.records,
            withheld_fields: release.grant.withheld.clone(),
        }))
    }

    /// Audit a denial, then answer `PERMISSION_DENIED` with its rule.
    async fn deny(&self, call: &Call, mut e: crate::audit::Entry, denial: &Denial) -> Status {
        e.decision = Decision::Denied;
        e.reason = denial.to_string();
        match self.audit(call, e).await {
            Ok(()) => denied(denial),
            Err(unavailable) => unavailable,
        }
    }
}

/// The request path runs in its own task: a client that hangs up mid-call
/// cancels its wait, not the work, so every decision and delivery already
/// under way still reaches its receivers and the audit log.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<Response<T>, Status>> + Send + 'static,
) -> Result<Response<T>, Status> {
    tokio::spawn(work)
        .await
        .map_err(|e| Status::internal(format!("the request failed inside the broker: {e}")))?
}

#[tonic::async_trait]
impl BrokerService for Broker {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let broker = self.clone();
        detached(async move { broker.publish_steps(request).await }).await
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let broker = self.clone();
        detached(async move { broker.query_steps(request).await }).await
    }

    async fn list_schemas(
        &self,
        request: Request<ListSchemasRequest>,
    ) -> Result<Response<ListSchemasResponse>, Status> {
        self.authenticate(&request, Role::Partner)?;
        let schemas = self
            .inner
            .registry
            .record_types()
            .map(|s| SchemaInfo {
                record_type: s.record_type.to_owned(),
                title: s.title.to_owned(),
                json_schema: s.source.as_bytes().to_vec(),
            })
            .collect();
        Ok(Response::new(ListSchemasResponse { schemas }))
    }
}

impl Broker {
    async fn fetch(
        &self,
        call: &Call,
        caller: &Caller,
        q: &QueryRequest,
        max_records: usize,
    ) -> Result<FetchResponse, Status> {
        let mut client = self.inner.adapters.get(&q.provider)?;
        let remaining = call.remaining();
        let mut req = Request::new(FetchRequest {
            request_id: call.id.clone(),
            consumer: caller.id.clone(),
            record_type: q.record_type.clone(),
            purpose: q.purpose.clone(),
            criteria: q.criteria.clone(),
            limit: u32::try_from(max_records.saturating_add(1)).unwrap_or(u32::MAX),
        });
        req.set_timeout(remaining);
        match tokio::time::timeout(remaining, client.fetch(req)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(match status.code() {
                Code::NotFound => Status::not_found(format!(
                    "{} has no matching {} record",
                    q.provider, q.record_type
                )),
                Code::DeadlineExceeded | Code::Cancelled => {
                    Status::deadline_exceeded(format!("{} did not answer in time", q.provider))
                }
                // The provider's own words stay at the broker: they may
                // quote its records.
                Code::Unavailable | Code::Unknown => Status::unavailable(format!(
                    "{}'s adapter cannot be reached ({:?})",
                    q.provider,
                    status.code()
                )),
                code => Status::internal(format!(
                    "{}'s adapter failed to answer ({code:?})",
                    q.provider
                )),
            }),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{} did not answer in time",
                q.provider
            ))),
        }
    }
}
