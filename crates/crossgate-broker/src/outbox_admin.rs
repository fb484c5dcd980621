//! Operators' tools over the outbox (`Admin.ListUndelivered`, `Replay`,
//! `Purge`): what the broker still owes, queue it again, or drop it with a
//! reason. Every action is audited, one entry per item it touched; nobody
//! sees a record's contents.

use crate::audit::{Commit, Decision, Item, Kind, Op, OutboxFilter, State, record_ids};
use crate::outbox::{ago, rfc3339};
use crate::pipeline::entry;
use crate::{Broker, Caller};
use crossgate_proto::{
    ListUndeliveredRequest, ListUndeliveredResponse, PurgeRequest, PurgeResponse, ReplayRequest,
    ReplayResponse, Undelivered,
};
use std::collections::HashSet;
use tonic::Status;

/// Most items one listing returns.
const MAX_LISTED: usize = 10_000;
/// Longest reason an operator may give for a purge.
const MAX_REASON: usize = 500;

impl Broker {
    fn check_receiver(&self, receiver: &str) -> Result<(), Status> {
        if receiver.is_empty() || self.inner.partners.contains_key(receiver) {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "{receiver:?} is not a party in partners.toml"
            )))
        }
    }

    async fn items(&self, filter: OutboxFilter) -> Result<Vec<Item>, Status> {
        self.inner.audit.outbox(filter).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read the outbox");
            Status::unavailable("the outbox cannot be read; try again later")
        })
    }

    /// Undelivered items, oldest first.
    pub(crate) async fn list_undelivered_items(
        &self,
        operator: &Caller,
        req: ListUndeliveredRequest,
    ) -> Result<ListUndeliveredResponse, Status> {
        self.check_receiver(&req.receiver)?;
        let state = match req.state.as_str() {
            "" => None,
            "queued" => Some(State::Queued),
            "dead" => Some(State::Dead),
            other => {
                return Err(Status::invalid_argument(format!(
                    "state {other:?}: use queued, dead or leave it empty for both"
                )));
            }
        };
        let before = (req.min_age_seconds > 0)
            .then(|| rfc3339(ago(std::time::Duration::from_secs(req.min_age_seconds))));
        let limit = match req.limit as usize {
            0 => 1000,
            n => n.min(MAX_LISTED),
        };
        let items = self
            .items(OutboxFilter {
                receiver: (!req.receiver.is_empty()).then(|| req.receiver.clone()),
                state,
                before,
                undelivered: true,
                limit,
                ..OutboxFilter::default()
            })
            .await?;
        let call = self.admin_call();
        let mut e = entry(Kind::Admin, Decision::Allowed);
        e.consumer = operator.id.clone();
        e.reason = format!(
            "listed {} undelivered item(s) (receiver {:?}, state {:?}) for {}",
            items.len(),
            req.receiver,
            req.state,
            operator.id
        );
        self.audit(&call, e).await?;
        Ok(ListUndeliveredResponse {
            items: items
                .into_iter()
                .map(|i| Undelivered {
                    delivery_id: i.delivery_id,
                    receiver: i.receiver,
                    provider: i.provider,
                    last_error: i.last_error,
                    attempts: i.attempts,
                    record_type: i.record_type,
                    state: i.state.as_str().to_owned(),
                    created: i.created,
                    next_attempt: i.next_attempt,
                    request_id: i.request_id,
                })
                .collect(),
        })
    }

    /// The undelivered items one of `delivery_ids`, `receiver` (its dead
    /// items) or `since` names — exactly one of them.
    async fn chosen(
        &self,
        delivery_ids: &[String],
        receiver: &str,
        since: &str,
    ) -> Result<Vec<Item>, Status> {
        let given = [
            !delivery_ids.is_empty(),
            !receiver.is_empty(),
            !since.is_empty(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Status::invalid_argument(
                "name the items one way: delivery ids, a receiver (its dead items) or since (RFC 3339)",
            ));
        }
        self.check_receiver(receiver)?;
        if !delivery_ids.is_empty() {
            let mut items = Vec::new();
            let mut missing = Vec::new();
            for id in delivery_ids {
                let found = self
                    .items(OutboxFilter {
                        delivery_id: Some(id.clone()),
                        undelivered: true,
                        ..OutboxFilter::default()
                    })
                    .await?;
                if found.is_empty() {
                    missing.push(id.as_str());
                }
                items.extend(found);
            }
            if !missing.is_empty() {
                return Err(Status::not_found(format!(
                    "no undelivered item with delivery id {}",
                    missing.join(", ")
                )));
            }
            return Ok(items);
        }
        if !receiver.is_empty() {
            return self
                .items(OutboxFilter {
                    receiver: Some(receiver.to_owned()),
                    state: Some(State::Dead),
                    ..OutboxFilter::default()
                })
                .await;
        }
        let since = chrono::DateTime::parse_from_rfc3339(since).map_err(|e| {
            Status::invalid_argument(format!(
                "since {since:?} is not an RFC 3339 time such as 2026-11-22T08:00:00Z: {e}"
            ))
        })?;
        self.items(OutboxFilter {
            since: Some(rfc3339(since.with_timezone(&chrono::Utc))),
            undelivered: true,
            ..OutboxFilter::default()
        })
        .await
    }

    /// Commit one operator action: an op and an entry per item.
    async fn act(
        &self,
        operator: &Caller,
        action: &str,
        items: &[Item],
        op: impl Fn(&Item) -> Op,
        reason: impl Fn(&Item) -> String,
    ) -> Result<(), Status> {
        let call = self.admin_call();
        let mut entries: Vec<_> = items
            .iter()
            .map(|i| {
                let mut e = entry(Kind::Admin, Decision::Changed);
                e.request_id = call.id.clone();
                e.consumer = operator.id.clone();
                e.provider = i.provider.clone();
                e.record_type = i.record_type.clone();
                e.record_id = record_ids([i.record_id.as_str()]);
                e.record_digest = i.record_digest.clone();
                e.reason = reason(i);
                e
            })
            .collect();
        if entries.is_empty() {
            // An action that touched nothing is recorded too.
            let mut e = entry(Kind::Admin, Decision::Changed);
            e.request_id = call.id.clone();
            e.consumer = operator.id.clone();
            e.reason = format!("{action} by {}: no undelivered item matched", operator.id);
            entries.push(e);
        }
        let commit = Commit {
            entries,
            ops: items.iter().map(op).collect(),
            claim: None,
        };
        self.inner.audit.commit(commit).await.map_err(|e| {
            tracing::error!(error = %e, "audit log unavailable");
            Status::unavailable("the audit log cannot be written; nothing was changed")
        })?;
        Ok(())
    }

    /// Queue items again from now (their retry schedule starts over) and
    /// have their lanes try at once.
    pub(crate) async fn replay_items(
        &self,
        operator: &Caller,
        req: ReplayRequest,
    ) -> Result<ReplayResponse, Status> {
        let items = self
            .chosen(&req.delivery_ids, &req.receiver, &req.since)
            .await?;
        let at = rfc3339(chrono::Utc::now());
        let note = format!("replayed by {}", operator.id);
        self.act(
            operator,
            "replay",
            &items,
            |i| Op::Requeue {
                delivery_id: i.delivery_id.clone(),
                at: at.clone(),
                note: note.clone(),
            },
            |i| {
                format!(
                    "delivery {} to {} ({}, {} attempt(s)) replayed by {}",
                    i.delivery_id,
                    i.receiver,
                    i.state.as_str(),
                    i.attempts,
                    operator.id
                )
            },
        )
        .await?;
        let receivers: HashSet<String> = items.iter().map(|i| i.receiver.clone()).collect();
        self.inner.outbox.replayed(&receivers);
        self.tell_replicas(crossgate_cluster::Notice::Replayed {
            receivers: receivers.iter().cloned().collect(),
        })
        .await;
        Ok(ReplayResponse {
            requeued: items.len() as u32,
            delivery_ids: items.into_iter().map(|i| i.delivery_id).collect(),
        })
    }

    /// Drop undelivered items for good, with the operator's reason.
    pub(crate) async fn purge_items(
        &self,
        operator: &Caller,
        req: PurgeRequest,
    ) -> Result<PurgeResponse, Status> {
        let reason = req.reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "a purge needs a reason: one line of at most {MAX_REASON} bytes"
            )));
        }
        if !req.delivery_ids.is_empty() && !req.receiver.is_empty() {
            return Err(Status::invalid_argument(
                "name the items one way: delivery ids or a receiver (its dead items)",
            ));
        }
        let items = self.chosen(&req.delivery_ids, &req.receiver, "").await?;
        self.act(
            operator,
            "purge",
            &items,
            |i| Op::Purge {
                delivery_id: i.delivery_id.clone(),
            },
            |i| {
                format!(
                    "delivery {} to {} ({}, {} attempt(s)) purged by {}: {reason}",
                    i.delivery_id,
                    i.receiver,
                    i.state.as_str(),
                    i.attempts,
                    operator.id
                )
            },
        )
        .await?;
        let mut by_receiver: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for i in &items {
            by_receiver
                .entry(&i.receiver)
                .or_default()
                .push(i.delivery_id.clone());
        }
        for (receiver, ids) in by_receiver {
            self.inner.outbox.purged(receiver, ids.clone());
            // A replica holding one of them in memory drops it too.
            self.tell_replicas(crossgate_cluster::Notice::Purged {
                receiver: receiver.to_owned(),
                ids,
            })
            .await;
        }
        Ok(PurgeResponse {
            purged: items.len() as u32,
            delivery_ids: items.into_iter().map(|i| i.delivery_id).collect(),
        })
    }
}

impl Broker {
    /// Tell the other replicas of an operator's replay or purge (their
    /// lanes may hold the items in memory). Not told (Redis unreachable):
    /// a replay still reaches them at their next look at the store; a
    /// purged item another replica holds may still go out once.
    async fn tell_replicas(&self, notice: crossgate_cluster::Notice) {
        if let Some(redis) = &self.inner.cluster
            && let Err(e) = redis.announce(&notice).await
        {
            tracing::warn!(error = %e, "the other replicas were not told of an operator's replay or purge");
        }
    }
}
