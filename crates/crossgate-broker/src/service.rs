//! The `Broker` gRPC service: each handler authenticates, runs its steps
//! (each returns `Result<_, Refusal>`) and leaves through `finish`.

use crate::audit::{
    Claim, Commit, Committed, Decision, Entry, Item, Kind, Op, OutboxFilter, Prior, State, digest,
    record_ids,
};
use crate::detached::detached;
use crate::outbox::{Attempt, rfc3339};
use crate::outcome::{Answer, Refusal};
use crate::pipeline::{Call, MAX_CRITERIA, MAX_CRITERION, MAX_ID, MAX_NAME, deadline, entry};
use crate::release::{released, screen};
use crate::{Broker, Caller};
use crossgate_audit::outbox::OnRepeat;
use crossgate_policy::{Mode, ReferenceKey, Release, Role};
use crossgate_proto::broker_server::Broker as BrokerService;
use crossgate_proto::{
    DeliverRequest, Delivery, DeliveryOutcome, FetchRequest, FetchResponse, ListSchemasRequest,
    ListSchemasResponse, PublishRequest, PublishResponse, QueryRequest, QueryResponse, Record,
    SchemaInfo,
};
use crossgate_telemetry::{edge_span, step};
use prost::Message;
use serde_json::Value;
use std::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

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
        let (slot, outcome) = match self.hold(&caller) {
            Ok(slot) => {
                let outcome = self
                    .publish_record(&call, &caller, request.into_inner(), &mut entry)
                    .await;
                (Some(slot), outcome)
            }
            Err(refused) => {
                entry.consumer = caller.id.clone();
                (None, Err(refused))
            }
        };
        let answer = self.finish(&call, entry, outcome).await;
        drop(slot);
        self.counted(&call, &caller, &answer);
        answer
    }

    /// limit → validate → authorise → record → forward. The call is
    /// accepted once its entries and its outbox items are one commit; only
    /// then is anything forwarded.
    async fn publish_record(
        &self,
        call: &Call,
        caller: &Caller,
        request: PublishRequest,
        entry: &mut Entry,
    ) -> Result<Answer<PublishResponse>, Refusal> {
        // A throttled entry names the caller held back in `consumer`, as
        // for queries; past the limit the caller is this record's provider.
        if let Err(throttled) = self.limit(caller, Mode::Publish).await {
            entry.consumer = caller.id.clone();
            return Err(throttled);
        }
        entry.provider = caller.id.clone();
        let record = request
            .record
            .ok_or_else(|| Refusal::invalid("record is required"))?;
        self.bounds(&[
            ("record_type", &record.record_type, MAX_NAME),
            ("record_id", &record.record_id, MAX_ID),
        ])?;
        entry.record_type = record.record_type.clone();
        entry.record_id = record_ids([record.record_id.as_str()]);
        entry.record_digest = digest(&record.json);
        let key = idempotency_key(
            &self.inner.references,
            &request.idempotency_key,
            &record,
            &entry.record_digest,
        )?;
        let document = self.validate(&record)?;
        let policy = self.policy();
        let routes = self.authorise_publish(&policy, caller, &record.record_type)?;
        let (commit, items) = self.record(call, caller, &record, &document, &routes, entry, key);
        match self
            .inner
            .audit
            .commit(commit)
            .instrument(step("record"))
            .await
        {
            Err(e) => {
                tracing::error!(request_id = %call.id, error = %e, "audit log unavailable");
                Err(Refusal::Recorded(Status::unavailable(
                    "the audit log cannot be written; nothing was accepted; try again later",
                )))
            }
            Ok(Committed::Repeat(prior)) => {
                self.repeated(caller, prior, &entry.record_digest).await
            }
            Ok(Committed::Applied) => Ok(Answer {
                reply: PublishResponse {
                    request_id: call.id.clone(),
                    deliveries: self.forward(call, items).instrument(step("forward")).await,
                    repeat: false,
                },
                entries: vec![],
                reservation: None,
            }),
        }
    }

    /// Record: one entry per receiver (or one saying nobody receives it)
    /// and one outbox item per receiver, each with its own projection under
    /// its grant's key field or its own opaque reference, and a delivery id
    /// that is the same whenever this publish is repeated.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        call: &Call,
        caller: &Caller,
        record: &Record,
        document: &Value,
        routes: &[Release<'_>],
        base: &Entry,
        key: String,
    ) -> (Commit, Vec<Item>) {
        let now = rfc3339(chrono::Utc::now());
        let mut base = base.clone();
        base.request_id = call.id.clone();
        base.latency_micros = call.elapsed_micros();
        let mut entries = Vec::with_capacity(routes.len().max(1));
        let mut items = Vec::with_capacity(routes.len());
        for release in routes {
            let receiver = release.grant.consumer.clone();
            let delivery_id = delivery_id(&self.inner.references, &caller.id, &key, &receiver);
            let deliver = DeliverRequest {
                request_id: call.id.clone(),
                provider: caller.id.clone(),
                record: Some(released(
                    release,
                    &self.inner.references,
                    &record.record_type,
                    &record.record_id,
                    document,
                )),
                delivery_id: delivery_id.clone(),
            };
            let mut e = base.clone();
            e.consumer = receiver.clone();
            e.purpose = release.grant.purposes.join(",");
            e.released_fields = release.field_paths();
            e.decision = Decision::Allowed;
            e.reason = format!("grant {}; delivery {delivery_id} queued", release.grant.id);
            items.push(Item {
                delivery_id,
                request_id: call.id.clone(),
                receiver,
                provider: caller.id.clone(),
                record_type: record.record_type.clone(),
                record_id: record.record_id.clone(),
                grant: release.grant.id.clone(),
                purpose: e.purpose.clone(),
                released_fields: e.released_fields.clone(),
                record_digest: base.record_digest.clone(),
                payload: deliver.encode_to_vec(),
                state: State::Queued,
                attempts: 0,
                created: now.clone(),
                next_attempt: now.clone(),
                last_error: String::new(),
                // This replica's lane delivers it; if this replica dies,
                // another takes it once the lease runs out.
                lease_owner: self.inner.config.audit.writer.clone(),
            });
            entries.push(e);
        }
        if routes.is_empty() {
            let mut e = base.clone();
            e.decision = Decision::Allowed;
            e.reason = "no grant routes this record to any receiver".into();
            entries.push(e);
        }
        let claim = Claim {
            provider: caller.id.clone(),
            key,
            request_id: call.id.clone(),
            record_digest: base.record_digest.clone(),
            created: now,
        };
        let on_repeat: OnRepeat = Box::new(move |prior: &Prior| {
            let mut e = base;
            if prior.record_digest == e.record_digest {
                e.decision = Decision::Allowed;
                e.reason = format!(
                    "repeat of request {} (same idempotency key); nothing delivered again",
                    prior.request_id
                );
            } else {
                e.decision = Decision::Invalid;
                e.reason = format!(
                    "idempotency key of request {} reused for a different record; refused",
                    prior.request_id
                );
            }
            vec![e]
        });
        let commit = Commit {
            entries,
            ops: items
                .iter()
                .cloned()
                .map(|i| Op::Enqueue(Box::new(i)))
                .collect(),
            claim: Some((claim, on_repeat)),
        };
        (commit, items)
    }

    /// Forward: hand the recorded items to their receivers' lanes and wait,
    /// within the call's deadline, for each first attempt.
    async fn forward(&self, call: &Call, items: Vec<Item>) -> Vec<Delivery> {
        let remaining = call.remaining();
        let waits = self.inner.outbox.submit(items.clone());
        let attempts = futures_util::future::join_all(
            waits
                .into_iter()
                .map(|wait| tokio::time::timeout(remaining, wait)),
        )
        .await;
        items
            .into_iter()
            .zip(attempts)
            .map(|(item, attempt)| {
                let (outcome, detail) = match attempt {
                    Ok(Ok(Attempt::Delivered)) => (DeliveryOutcome::Delivered, String::new()),
                    Ok(Ok(Attempt::Queued(why))) => (DeliveryOutcome::Queued, why),
                    Ok(Ok(Attempt::Dead(why))) => (DeliveryOutcome::Failed, why),
                    Ok(Err(_)) | Err(_) => (
                        DeliveryOutcome::Queued,
                        "not taken within the call's deadline; retried".into(),
                    ),
                };
                Delivery {
                    receiver: item.receiver,
                    outcome: outcome as i32,
                    released_fields: item.released_fields,
                    detail,
                    delivery_id: item.delivery_id,
                }
            })
            .collect()
    }

    /// A repeated publish: the first call's outcome as it stands now, or a
    /// refusal when the key was used for a different record.
    async fn repeated(
        &self,
        caller: &Caller,
        prior: Prior,
        digest: &str,
    ) -> Result<Answer<PublishResponse>, Refusal> {
        if prior.record_digest != digest {
            return Err(Refusal::Recorded(Status::already_exists(format!(
                "this idempotency key was used for a different record (request {}); use a new key for a new record",
                prior.request_id
            ))));
        }
        let items = self
            .inner
            .audit
            .outbox(OutboxFilter {
                request_id: Some(prior.request_id.clone()),
                ..OutboxFilter::default()
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the outbox");
                Refusal::Recorded(Status::unavailable(
                    "the outbox cannot be read; try again later",
                ))
            })?;
        // Only the caller's own items (request ids are unique, but a
        // publisher never sees another's deliveries, whatever happens).
        let items: Vec<Item> = items
            .into_iter()
            .filter(|i| i.provider == caller.id)
            .collect();
        // A first call whose commit went through while its caller (or the
        // broker) saw it fail left items its lanes were never handed: hand
        // them over now (a lane skips items it already has).
        let owed: Vec<Item> = items
            .iter()
            .filter(|i| i.state == State::Queued)
            .cloned()
            .collect();
        drop(self.inner.outbox.submit(owed));
        let deliveries = items
            .into_iter()
            .map(|item| {
                // A fixed detail: the stored error may name an operator.
                let (outcome, detail) = match item.state {
                    State::Delivered => (DeliveryOutcome::Delivered, ""),
                    State::Queued => (DeliveryOutcome::Queued, "owed to the receiver; retried"),
                    State::Dead => (
                        DeliveryOutcome::Failed,
                        "given up after the retry schedule; kept for an operator",
                    ),
                };
                Delivery {
                    receiver: item.receiver,
                    outcome: outcome as i32,
                    released_fields: item.released_fields,
                    detail: detail.into(),
                    delivery_id: item.delivery_id,
                }
            })
            .collect();
        Ok(Answer {
            reply: PublishResponse {
                request_id: prior.request_id,
                deliveries,
                repeat: true,
            },
            entries: vec![],
            reservation: None,
        })
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
        let (slot, outcome) = match self.hold(&caller) {
            Ok(slot) => {
                let outcome = self
                    .query_records(&call, &caller, &request.into_inner(), &mut entry)
                    .await;
                (Some(slot), outcome)
            }
            Err(refused) => (None, Err(refused)),
        };
        let answer = self.finish(&call, entry, outcome).await;
        drop(slot);
        self.counted(&call, &caller, &answer);
        answer
    }

    /// The call in its partner's activity (`crossgate top`).
    fn counted<T>(&self, call: &Call, caller: &Caller, answer: &Result<T, Status>) {
        let code = match answer {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.inner
            .activity
            .record(&caller.id, code, call.started.elapsed());
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
        self.limit(caller, Mode::Query).await?;
        self.bounds(&[
            ("provider", &q.provider, MAX_NAME),
            ("record_type", &q.record_type, MAX_NAME),
            ("purpose", &q.purpose, MAX_NAME),
            ("approval_reference", &q.approval_reference, MAX_ID),
        ])?;
        if q.criteria.len() > MAX_CRITERIA {
            return Err(Refusal::invalid(format!(
                "{} criteria; at most {MAX_CRITERIA}",
                q.criteria.len()
            )));
        }
        for c in &q.criteria {
            self.bounds(&[
                ("a criterion's path", &c.path, MAX_CRITERION),
                ("a criterion's value", &c.value, MAX_CRITERION),
            ])?;
        }
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
        let start = std::time::Instant::now();
        let authorised = self.authorise_query(&policy, caller, q).await;
        // Timed whatever the outcome: a denial takes this step too.
        self.timed("authorise", start);
        let (release, reservation) = authorised?;
        let start = std::time::Instant::now();
        let fetched = self
            .fetch(call, caller, q, release.grant.max_records)
            .instrument(crossgate_telemetry::client_step("forward"))
            .await;
        self.timed("forward", start);
        let answer = fetched.map_err(|status| Refusal::Failed {
            logged: format!(
                "grant {}; provider answered {:?}",
                release.grant.id,
                status.code()
            ),
            status,
        })?;
        let mut screened = step("screen").in_scope(|| {
            screen(
                &self.inner.registry,
                &release,
                &self.inner.references,
                q,
                answer.records,
            )
        });
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
        allowed.record_id = screened.logged_ids();
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

/// The longest idempotency key a publisher may give.
const MAX_KEY: usize = 200;

/// The least time worth asking a provider with: a fetch sent with less
/// would be given up at once, leaving its stream to be replaced.
const MIN_FETCH_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// The publisher's idempotency key, or the default made of the record type,
/// the record id and the record's digest (a changed record under the same
/// id is a new version).
///
/// The key a publish is claimed under, as the store keeps it: keyed under
/// the broker's secret, so that the store reveals nothing of it. The
/// default is made of the record type, the record id and the record's
/// digest (an unkeyed hash of these could be tried against candidate ids,
/// such as every plausible identity number); a publisher's own key may
/// name the record id too. The reference function's consumer part is
/// empty here, which no party's id is, so no key equals a reference.
fn idempotency_key(
    references: &ReferenceKey,
    given: &str,
    record: &Record,
    record_digest: &str,
) -> Result<String, Refusal> {
    if given.is_empty() {
        return Ok(format!(
            "auto:{}",
            references.reference("", &record.record_type, record_digest, &record.record_id)
        ));
    }
    if given.len() > MAX_KEY || given.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "idempotency_key: at most {MAX_KEY} bytes without control characters"
        )));
    }
    Ok(format!("key:{}", references.reference("", "", "", given)))
}

/// The same for every attempt and every repeat of one delivery: derived
/// from the publisher, its key and the receiver under the broker's secret,
/// so a receiver cannot test guesses of a publisher's key (which may name
/// the provider's own record id) against the ids it is given.
fn delivery_id(references: &ReferenceKey, provider: &str, key: &str, receiver: &str) -> String {
    references.reference(receiver, provider, "delivery-id", key)
}

#[tonic::async_trait]
impl BrokerService for Broker {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let broker = self.clone();
        let span = edge_span("crossgate.v1.Broker/Publish", request.metadata());
        detached(
            &self.inner.leftovers,
            async move { broker.publish_steps(request).await }.instrument(span),
        )
        .await
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let broker = self.clone();
        let span = edge_span("crossgate.v1.Broker/Query", request.metadata());
        detached(
            &self.inner.leftovers,
            async move { broker.query_steps(request).await }.instrument(span),
        )
        .await
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
        let remaining = call.remaining();
        // No time left (the consumer's own deadline): nothing to ask the
        // provider, whose answer nobody would wait for.
        if remaining < MIN_FETCH_TIME {
            return Err(Status::deadline_exceeded(format!(
                "{} did not answer in time",
                q.provider
            )));
        }
        let req = || FetchRequest {
            request_id: call.id.clone(),
            consumer: caller.id.clone(),
            record_type: q.record_type.clone(),
            purpose: q.purpose.clone(),
            criteria: q.criteria.clone(),
            limit: u32::try_from(max_records.saturating_add(1)).unwrap_or(u32::MAX),
        };
        let fetching = self.inner.adapters.fetch(
            &q.provider,
            req,
            remaining,
            crossgate_telemetry::traceparent(),
        );
        match tokio::time::timeout(remaining, fetching).await {
            Ok(Ok(reply)) => Ok(reply),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            record_type: "person.v1".into(),
            record_id: id.into(),
            json: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_claimed_key_is_keyed_and_names_no_id() {
        let key = ReferenceKey::new(&[4; 32]).unwrap();
        let other = ReferenceKey::new(&[5; 32]).unwrap();
        let id = "110105198405049582";
        let auto = idempotency_key(&key, "", &record(id), "d1").unwrap();
        assert!(auto.starts_with("auto:") && !auto.contains(id), "{auto}");
        // The same record, the same key; another version or secret, another.
        assert_eq!(auto, idempotency_key(&key, "", &record(id), "d1").unwrap());
        assert_ne!(auto, idempotency_key(&key, "", &record(id), "d2").unwrap());
        assert_ne!(
            auto,
            idempotency_key(&other, "", &record(id), "d1").unwrap()
        );
        let given = idempotency_key(&key, id, &record(id), "d1").unwrap();
        assert!(given.starts_with("key:") && !given.contains(id), "{given}");
        assert_eq!(
            given,
            idempotency_key(&key, id, &record("x"), "d9").unwrap()
        );
        assert!(idempotency_key(&key, "a\nb", &record(id), "d1").is_err());
    }
}
