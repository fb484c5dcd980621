//! The `Broker` gRPC service: each handler is the pipeline's steps in order.

use crate::audit::{Decision, digest};
use crate::pipeline::{Call, deadline, denied, entry};
use crate::{Broker, Caller};
use crossgate_policy::{Mode, Role, project, withheld};
use crossgate_proto::broker_server::Broker as BrokerService;
use crossgate_proto::{
    DeliverRequest, Delivery, DeliveryOutcome, FetchRequest, ListSchemasRequest,
    ListSchemasResponse, PublishRequest, PublishResponse, QueryRequest, QueryResponse, Record,
    SchemaInfo,
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
            Err(status) => {
                base.reason = status.message().to_owned();
                self.audit(&call, base).await?;
                return Err(status);
            }
        };
        let routes = match self.authorise_publish(&caller, &record.record_type) {
            Ok(routes) => routes,
            Err(denial) => {
                base.decision = Decision::Denied;
                base.reason = denial.to_string();
                self.audit(&call, base).await?;
                return Err(denied(&denial));
            }
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

        // Forward: each receiver gets its own projection, all in parallel.
        let sends = routes.iter().map(|release| {
            let projected = project(&document, release.fields());
            let receiver = release.grant.consumer.clone();
            let request = DeliverRequest {
                request_id: call.id.clone(),
                provider: caller.id.clone(),
                record: Some(Record {
                    record_type: record.record_type.clone(),
                    record_id: record.record_id.clone(),
                    json: serde_json::to_vec(&projected).unwrap_or_default(),
                }),
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
                Err(status) => (
                    DeliveryOutcome::Failed,
                    format!("{:?}: {}", status.code(), status.message()),
                ),
            };
            e.decision = if result.is_ok() {
                Decision::Delivered
            } else {
                Decision::Failed
            };
            e.reason = format!(
                "grant {}{}",
                release.grant.id,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!("; {detail}")
                }
            );
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

    /// Query: authenticate → limit → validate → authorise → forward → check
    /// the answer → audit.
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
        let release = match self.authorise_query(
            &caller,
            &q.provider,
            &q.record_type,
            &q.purpose,
            &q.approval_reference,
        ) {
            Ok(r) => r,
            Err(denial) => {
                base.decision = Decision::Denied;
                base.reason = denial.to_string();
                self.audit(&call, base).await?;
                return Err(denied(&denial));
            }
        };

        // Forward to the provider's adapter under what is left of the deadline.
        let fetched = self.fetch(&call, &caller, &q).await;
        let records = match fetched {
            Ok(records) => records,
            Err(status) => {
                base.decision = Decision::Failed;
                base.reason = format!(
                    "grant {}; provider answered {:?}: {}",
                    release.grant.id,
                    status.code(),
                    status.message()
                );
                self.audit(&call, base).await?;
                return Err(status);
            }
        };
        // The provider's answer is checked like any other record.
        let mut answer = Vec::with_capacity(records.len());
        let mut withheld_fields: Vec<String> = Vec::new();
        let mut digests = Vec::with_capacity(records.len());
        for record in records {
            if record.record_type != q.record_type {
                return Err(self
                    .provider_fault(
                        &call,
                        base,
                        format!("provider answered with {} records", record.record_type),
                    )
                    .await);
            }
            let document = match self.validate(&record) {
                Ok(d) => d,
                Err(status) => {
                    return Err(self
                        .provider_fault(
                            &call,
                            base,
                            format!("provider sent an invalid record: {}", status.message()),
                        )
                        .await);
                }
            };
            for path in withheld(&document, release.fields()) {
                if !withheld_fields.contains(&path) {
                    withheld_fields.push(path);
                }
            }
            digests.push(digest(&record.json));
            let projected = project(&document, release.fields());
            answer.push(Record {
                record_type: record.record_type,
                record_id: record.record_id,
                json: serde_json::to_vec(&projected).unwrap_or_default(),
            });
        }
        base.decision = Decision::Allowed;
        base.reason = format!("grant {}", release.grant.id);
        base.released_fields = release.field_paths();
        base.record_id = answer
            .iter()
            .map(|r| r.record_id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        base.record_digest = digests.join(",");
        self.audit(&call, base).await?;
        Ok(Response::new(QueryResponse {
            request_id: call.id,
            records: answer,
            withheld_fields,
        }))
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
    ) -> Result<Vec<Record>, Status> {
        let mut client = self.inner.adapters.get(&q.provider)?;
        let remaining = call.remaining();
        let mut req = Request::new(FetchRequest {
            request_id: call.id.clone(),
            consumer: caller.id.clone(),
            record_type: q.record_type.clone(),
            purpose: q.purpose.clone(),
            criteria: q.criteria.clone(),
        });
        req.set_timeout(remaining);
        match tokio::time::timeout(remaining, client.fetch(req)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().records),
            Ok(Err(status)) => Err(match status.code() {
                Code::NotFound => Status::not_found(format!(
                    "{} has no matching {} record",
                    q.provider, q.record_type
                )),
                Code::DeadlineExceeded | Code::Cancelled => {
                    Status::deadline_exceeded(format!("{} did not answer in time", q.provider))
                }
                Code::Unavailable | Code::Unknown => Status::unavailable(format!(
                    "{}'s adapter cannot be reached: {}",
                    q.provider,
                    status.message()
                )),
                _ => Status::internal(format!(
                    "{}'s adapter failed: {}",
                    q.provider,
                    status.message()
                )),
            }),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{} did not answer in time",
                q.provider
            ))),
        }
    }

    /// A provider that answers with an invalid record: audited, never passed on.
    async fn provider_fault(
        &self,
        call: &Call,
        mut e: crate::audit::Entry,
        reason: String,
    ) -> Status {
        e.decision = Decision::Failed;
        e.reason = reason.clone();
        if let Err(unavailable) = self.audit(call, e).await {
            return unavailable;
        }
        Status::internal(reason)
    }
}
