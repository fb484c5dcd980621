//! The audit step's interface: the durable log (`crossgate-audit`'s
//! `Writer`, which also keeps the outbox) or, in tests, an in-memory sink.
//! The broker writes one entry per decision, per delivery attempt and per
//! operator change; a Publish's entries and its outbox items are one commit.

use std::collections::HashMap;
use std::sync::Mutex;

pub use crossgate_audit::{
    Claim, Commit, Committed, Decision, Entry, Item, Kind, Lease, Op, OutboxFilter, Prior,
    RecordIdKey, State, StoreError, digest, record_ids, split_record_ids,
};

/// Where the broker writes entries and keeps the outbox. Each call returns
/// only when what it wrote is kept; an error makes the broker refuse the
/// request with `UNAVAILABLE`.
#[tonic::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        self.commit(Commit::entries(vec![entry])).await.map(|_| ())
    }
    /// Entries and outbox changes, kept together or not at all.
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError>;
    /// Outbox items, oldest first, reading what was committed before.
    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError>;
    /// Items per receiver in `state`. The durable log counts in the store;
    /// other sinks count what they hold.
    async fn outbox_counts(&self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        let items = self
            .outbox(OutboxFilter {
                state: Some(state),
                limit: usize::MAX,
                ..OutboxFilter::default()
            })
            .await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for item in items {
            *counts.entry(item.receiver).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }
}

/// Keeps entries and the outbox in memory (tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    state: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    entries: Vec<Entry>,
    items: Vec<Item>,
    claims: HashMap<(String, String), Prior>,
}

impl MemorySink {
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Memory {
    /// The same changes the stores make (see `crossgate-audit`'s dialect).
    fn apply(&mut self, op: Op) {
        match op {
            Op::Enqueue(item) => {
                if !self.items.iter().any(|i| i.delivery_id == item.delivery_id) {
                    self.items.push(*item);
                }
            }
            Op::Update {
                delivery_id,
                state,
                attempts,
                next_attempt,
                last_error,
            } => {
                for i in self
                    .items
                    .iter_mut()
                    .filter(|i| i.delivery_id == delivery_id && i.state != State::Delivered)
                {
                    (i.state, i.attempts, i.next_attempt, i.last_error) =
                        (state, attempts, next_attempt.clone(), last_error.clone());
                    if state == State::Delivered {
                        i.payload.clear();
                        i.record_id.clear();
                    }
                }
            }
            Op::Requeue {
                delivery_id,
                at,
                note,
            } => {
                for i in self
                    .items
                    .iter_mut()
                    .filter(|i| i.delivery_id == delivery_id && i.state != State::Delivered)
                {
                    if i.state == State::Dead {
                        i.lease_owner.clear();
                    }
                    (i.state, i.attempts, i.created, i.next_attempt, i.last_error) =
                        (State::Queued, 0, at.clone(), at.clone(), note.clone());
                }
            }
            // One process: nobody else takes its items.
            Op::Renew { .. } => {}
            Op::Purge { delivery_id } => self
                .items
                .retain(|i| i.delivery_id != delivery_id || i.state == State::Delivered),
            Op::Prune { before } => self
                .items
                .retain(|i| i.state != State::Delivered || i.created >= before),
        }
    }
}

fn matches(f: &OutboxFilter, i: &Item) -> bool {
    let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    is(&f.receiver, &i.receiver)
        && f.state.is_none_or(|s| s == i.state)
        && is(&f.request_id, &i.request_id)
        && is(&f.delivery_id, &i.delivery_id)
        && f.since.as_deref().is_none_or(|s| i.created.as_str() >= s)
        && f.before.as_deref().is_none_or(|b| i.created.as_str() < b)
        && !(f.undelivered && i.state == State::Delivered)
}

#[tonic::async_trait]
impl AuditSink for MemorySink {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let mut memory = self.lock();
        let mut outcome = Committed::Applied;
        let entries = match commit.claim {
            Some((claim, on_repeat)) => {
                let key = (claim.provider.clone(), claim.key.clone());
                match memory.claims.get(&key).cloned() {
                    Some(prior) => {
                        outcome = Committed::Repeat(prior.clone());
                        on_repeat(&prior)
                    }
                    None => {
                        memory.claims.insert(
                            key,
                            Prior {
                                request_id: claim.request_id,
                                record_digest: claim.record_digest,
                            },
                        );
                        commit.ops.into_iter().for_each(|op| memory.apply(op));
                        commit.entries
                    }
                }
            }
            None => {
                commit.ops.into_iter().for_each(|op| memory.apply(op));
                commit.entries
            }
        };
        memory.entries.extend(entries);
        Ok(outcome)
    }

    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        let memory = self.lock();
        let found = memory.items.iter().filter(|i| matches(&filter, i)).cloned();
        Ok(match filter.limit {
            0 => found.collect(),
            n => found.take(n).collect(),
        })
    }
}

/// A log that cannot be written ("disk full"): for tests of a broker that
/// must refuse work rather than serve without its log.
#[derive(Debug, Default)]
pub struct FailingSink;

#[tonic::async_trait]
impl AuditSink for FailingSink {
    async fn commit(&self, _: Commit) -> Result<Committed, StoreError> {
        Err(StoreError::Failed("disk full".into()))
    }
    async fn outbox(&self, _: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        Err(StoreError::Failed("disk full".into()))
    }
}

#[tonic::async_trait]
impl<T: AuditSink> AuditSink for std::sync::Arc<T> {
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        (**self).commit(commit).await
    }
    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        (**self).outbox(filter).await
    }
    async fn outbox_counts(&self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        (**self).outbox_counts(state).await
    }
}

/// The durable, hash-chained log and its outbox.
#[tonic::async_trait]
impl AuditSink for crossgate_audit::Writer {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        crossgate_audit::Writer::append(self, entry).await
    }
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        crossgate_audit::Writer::commit(self, commit).await
    }
    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        self.read(move |store| store.outbox(&filter)).await
    }
    async fn outbox_counts(&self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(move |store| store.count_outbox(state)).await
    }
}

/// A sink that counts what it keeps: each entry's decision
/// (`crossgate_decisions_total`) and each commit's time
/// (`crossgate_audit_append_seconds`). Throttled calls are counted where
/// they are refused, one by one (their entries sum up a second each).
/// The log holds digests, never values: a provider's record id (for
/// `person.v1` the citizen's identity number) is kept as its keyed digest
/// ([`RecordIdKey`]). Every entry reaches the log through this sink, which
/// turns each entry's ids (as the broker names them, [`record_ids`]) into
/// their digests, whichever path wrote the entry: decisions, deliveries,
/// operator changes and a repeated publish's entries alike.
pub struct Digested {
    pub inner: std::sync::Arc<dyn AuditSink>,
    pub ids: RecordIdKey,
}

/// `entry`'s record ids replaced by their digests under `ids`.
pub fn digest_ids(ids: &RecordIdKey, entry: &mut Entry) {
    if entry.record_id.is_empty() {
        return;
    }
    let named: Vec<_> = split_record_ids(&entry.record_id).collect();
    entry.record_id = ids.record_ids(named.iter().map(AsRef::as_ref));
}

#[tonic::async_trait]
impl AuditSink for Digested {
    async fn commit(&self, mut commit: Commit) -> Result<Committed, StoreError> {
        for e in &mut commit.entries {
            digest_ids(&self.ids, e);
        }
        if let Some((claim, on_repeat)) = commit.claim.take() {
            let ids = self.ids.clone();
            let on_repeat: crossgate_audit::outbox::OnRepeat = Box::new(move |prior| {
                let mut entries = on_repeat(prior);
                for e in &mut entries {
                    digest_ids(&ids, e);
                }
                entries
            });
            commit.claim = Some((claim, on_repeat));
        }
        self.inner.commit(commit).await
    }

    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        self.inner.outbox(filter).await
    }
    async fn outbox_counts(&self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.outbox_counts(state).await
    }
}

pub struct Counted {
    pub inner: std::sync::Arc<dyn AuditSink>,
    pub metrics: std::sync::Arc<crossgate_metrics::Metrics>,
}

impl Counted {
    fn count(&self, entries: &[(String, String, String, Decision)]) {
        for (consumer, provider, record_type, decision) in entries {
            if *decision != Decision::Throttled {
                self.metrics
                    .decision(consumer, provider, record_type, decision.as_str());
            }
        }
    }
}

#[tonic::async_trait]
impl AuditSink for Counted {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        let labels = [(
            entry.consumer.clone(),
            entry.provider.clone(),
            entry.record_type.clone(),
            entry.decision,
        )];
        let start = std::time::Instant::now();
        if let Err(e) = self.inner.append(entry).await {
            self.metrics.audit_failed();
            return Err(e);
        }
        self.metrics.audit_append(start.elapsed());
        self.count(&labels);
        Ok(())
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let labels: Vec<_> = commit
            .entries
            .iter()
            .map(|e| {
                (
                    e.consumer.clone(),
                    e.provider.clone(),
                    e.record_type.clone(),
                    e.decision,
                )
            })
            .collect();
        let start = std::time::Instant::now();
        let committed = match self.inner.commit(commit).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.audit_failed();
                return Err(e);
            }
        };
        self.metrics.audit_append(start.elapsed());
        // A repeat writes its own entries instead: not this call's decisions.
        if committed == Committed::Applied {
            self.count(&labels);
        }
        Ok(committed)
    }

    async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<Item>, StoreError> {
        self.inner.outbox(filter).await
    }
    async fn outbox_counts(&self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.outbox_counts(state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_a_grant_allows_is_named_whole_in_its_entry() {
        assert_eq!(
            crossgate_policy::MAX_ANSWER_RECORDS,
            crossgate_audit::entry::MAX_RECORDS_NAMED
        );
    }

    #[test]
    fn each_named_id_becomes_its_digest() {
        let ids = RecordIdKey::new(&[3; 32]);
        let mut e = crate::pipeline::entry(Kind::Query, Decision::Allowed);
        e.record_id = record_ids(["A,B", "50%", "C"]);
        digest_ids(&ids, &mut e);
        assert_eq!(
            e.record_id,
            [ids.digest("A,B"), ids.digest("50%"), ids.digest("C")].join(",")
        );
        let mut none = crate::pipeline::entry(Kind::Query, Decision::Denied);
        digest_ids(&ids, &mut none);
        assert_eq!(none.record_id, "");
    }
}
