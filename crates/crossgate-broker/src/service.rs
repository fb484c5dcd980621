//! The `Broker` gRPC service: each handler authenticates, runs its steps
//! (each returns `Result<_, Refusal>`) and leaves through `finish`.

use crate::audit::{Decision, Entry, Kind, digest};
use crate::outcome::{Answer, Refusal};
use crate::pipeline::{Call, deadline, entry};
use crate::release::{released, screen};
use crate::{Broker, Caller};
use crossgate_policy::{Mode, Release, Role};
use crossgate_proto::broker_server::Broker as BrokerService;
use crossgate_proto::{
    DeliverRequest, Delivery, DeliveryOutcome, FetchRequest, FetchResponse, ListSchemasRequest,
    ListSchemasResponse, PublishRequest, PublishResponse, QueryRequest, QueryResponse, Record,
    SchemaInfo,
};
use serde_json::Value;
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

    /// Publish: authenticate, then the steps, then the one exit.
    async fn publish_steps(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let call = self.start(&request);
        let caller = self.authenticate(&request, Role::Partner)?;
        let mut entry = entry(Kind::Publish, Decision::Invalid);
        let outcome = self
            .publish_record(&call, &caller, request.into_inner(), &mut entry)
            .await;
        self.finish(&call, entry, outcome).await
    }

    /// limit → validate → authorise → forward, one entry per delivery.
    async fn publish_record(
        &self,
        call: &Call,
        caller: &Caller,
        request: PublishRequest,
        entry: &mut Entry,
    ) -> Result<Answer<PublishResponse>, Refusal> {
        // A throttled entry names the caller held back in `consumer`, as
        // for queries; past the limit the caller is this record's provider.
        if let Err(throttled) = self.limit(caller, Mode::Publish) {
            entry.consumer = caller.id.clone();
            return Err(throttled);
        }
        entry.provider = caller.id.clone();
        let record = request
            .record
            .ok_or_else(|| Refusal::invalid("record is required"))?;
        entry.record_type = record.record_type.clone();
        entry.record_id = record.record_id.clone();
        entry.record_digest = digest(&record.json);
        let document = self.validate(&record)?;
        let policy = self.policy();
        let routes = self.authorise_publish(&policy, caller, &record.record_type)?;
        if routes.is_empty() {
            let mut allowed = entry.clone();
            allowed.decision = Decision::Allowed;
            allowed.reason = "no grant routes this record to any receiver".into();
            return Ok(Answer {
                reply: PublishResponse {
                    request_id: call.id.clone(),
                    deliveries: vec![],
                },
                entries: vec![allowed],
                reservation: None,
            });
        }
        let (deliveries, entries) = self
            .forward(call, caller, &record, &document, &routes, entry)
            .await;
        Ok(Answer {
            reply: PublishResponse {
                request_id: call.id.clone(),
                deliveries,
            },
            entries,
            reservation: None,
        })
    }

    /// Forward: each receiver gets its own projection, referred to by its
    /// grant's key field or its own opaque reference, all in parallel.
    async fn forward(
        &self,
        call: &Call,
        caller: &Caller,
        record: &Record,
        document: &Value,
        routes: &[Release<'_>],
        base: &Entry,
    ) -> (Vec<Delivery>, Vec<Entry>) {
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
                    document,
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
        let mut entries = Vec::with_capacity(results.len());
        for ((receiver, result), release) in results.into_iter().zip(routes) {
            let mut e = base.clone();
            e.consumer = receiver.clone();
            e.purpose = release.grant.purposes.join(",");
            e.released_fields = release.field_paths();
            // The receiver's own words stay at the broker (they may quote
            // its records): the publisher and the log get its status code.
            let (outcome, detail) = match &result {
                Ok(()) => {
                    (e.decision, e.reason) =
                        (Decision::Delivered, format!("grant {}", release.grant.id));
                    (DeliveryOutcome::Delivered, String::new())
                }
                Err(status) => {
                    (e.decision, e.reason) = (
                        Decision::Failed,
                        format!(
                            "grant {}; receiver answered {:?}",
                            release.grant.id,
                            status.code()
                        ),
                    );
                    (
                        DeliveryOutcome::Failed,
                        format!("{receiver}'s adapter answered {:?}", status.code()),
                    )
                }
            };
            entries.push(e);
            deliveries.push(Delivery {
                receiver,
                outcome: outcome as i32,
                released_fields: release.field_paths(),
                detail,
            });
        }
        (deliveries, entries)
    }

    /// Query: authenticate, then the steps, then the one exit.
    async fn query_steps(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let call = self.start(&request);
        let caller = self.authenticate(&request, Role::Partner)?;
        let mut entry = entry(Kind::Query, Decision::Invalid);
        entry.consumer = caller.id.clone();
        let outcome = self
            .query_records(&call, &caller, &request.into_inner(), &mut entry)
            .await;
        self.finish(&call, entry, outcome).await
    }

    /// limit → check the ask → authorise (grant, lookups, approval) →
    /// forward → size → screen the answer.
    async fn query_records(
        &self,
        call: &Call,
        caller: &Caller,
        q: &QueryRequest,
        entry: &mut Entry,
    ) -> Result<Answer<QueryResponse>, Refusal> {
        self.limit(caller, Mode::Query)?;
        entry.provider = q.provider.clone();
        entry.record_type = q.record_type.clone();
        entry.purpose = q.purpose.clone();
        entry.approval_reference = q.approval_reference.clone();
        if q.provider.is_empty()
            || q.purpose.is_empty()
            || !self.inner.registry.contains(&q.record_type)
        {
            return Err(Refusal::invalid(format!(
                "a query names a provider, a known record type and a purpose (got provider {:?}, type {:?}, purpose {:?})",
                q.provider, q.record_type, q.purpose
            )));
        }
        let policy = self.policy();
        let (release, reservation) = self.authorise_query(&policy, caller, q)?;
        let answer = self
            .fetch(call, caller, q, release.grant.max_records)
            .await
            .map_err(|status| Refusal::Failed {
                logged: format!(
                    "grant {}; provider answered {:?}",
                    release.grant.id,
                    status.code()
                ),
                status,
            })?;
        let mut screened = screen(
            &self.inner.registry,
            &release,
            &self.inner.references,
            q,
            answer.records,
        );
        screened.withheld_at_adapter = answer.withheld_records;
        // An answer with more matches than the grant allows releases
        // nothing. Records that do not equal the lookup are not matches.
        release
            .grant
            .check_answer_size(screened.records.len() + screened.withheld_count() as usize)?;
        let mut allowed = entry.clone();
        allowed.decision = Decision::Allowed;
        allowed.reason = match screened.invalid_summary() {
            Some(invalid) => format!("grant {}; {invalid}", release.grant.id),
            None => format!("grant {}", release.grant.id),
        };
        allowed.released_fields = release.field_paths();
        allowed.record_id = screened.provider_ids.join(",");
        allowed.record_digest = screened.digests.join(",");
        Ok(Answer {
            reply: QueryResponse {
                request_id: call.id.clone(),
                withheld_records: screened.withheld_count(),
                records: screened.records,
                withheld_fields: release.grant.withheld.clone(),
            },
            entries: vec![allowed],
            reservation,
        })
    }
}

/// The request path runs in its own task: a client that hangs up mid-call
/// cancels its wait, not the work, so every decision and delivery already
/// under way still reaches its receivers and the audit log.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<Response<T>, Status>> + Send + 'static,
) -> Result<Response<T>, Status> {
    tokio::spawn(work).await.map_err(|e| {
        // Neither the caller nor the log gets the panic's words: they may
        // quote a record.
        tracing::error!(
            panicked = e.is_panic(),
            "a request failed inside the broker"
        );
        Status::internal("the request failed inside the broker")
    })?
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
