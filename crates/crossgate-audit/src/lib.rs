//! The broker's store: the tamper-evident audit log, and the outbox of
//! deliveries the broker owes (see [`outbox`]), committed together.
//!
//! - Entries ([`Entry`]) say who asked for or received what, for which
//!   purpose, under which grant, what was released, when — with a SHA-256
//!   digest of the record, never the record.
//! - Each writer (a broker replica) keeps its own hash chain: entry *n* holds
//!   the hash of entry *n − 1*, and the hash covers every field in the
//!   canonical encoding documented in [`entry`]. Replicas sharing one store
//!   never contend for one chain head. The chain's head (last sequence and
//!   hash) is recorded in the same transaction as the entries, so entries cut
//!   off the end are noticed too.
//! - [`Writer`] batches appends off the request path (group commit) and, in
//!   durable mode, answers only once the entry is committed.
//! - [`verify`] checks every chain and names the first bad entry and why.
#![forbid(unsafe_code)]

pub mod checkpoint;
mod dialect;
pub mod entry;
pub mod outbox;
mod pg_tls;
mod postgres;
mod record_ids;
mod sqlite;
mod verify;
mod writer;

pub use entry::{Decision, Entry, Kind, Stored, digest};
pub use outbox::{Claim, Commit, Committed, Item, Lease, Op, OutboxFilter, Prior, State};
pub use postgres::PostgresStore;
pub use record_ids::{
    RECORD_ID_DIGEST_PREFIX, RecordIdKey, is_record_id_digest, record_id_member, record_ids,
    split_record_ids,
};
pub use sqlite::SqliteStore;
pub use verify::{ChainReport, Verifier};
pub use writer::{Durability, Writer};

use std::collections::BTreeMap;

/// A store failed, or a row in it is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another broker holds this writer's chain on this log.
    #[error(
        "audit store: chain {0} is in use by another broker on this log; give each broker its own [audit] writer in broker.toml"
    )]
    WriterInUse(String),
    /// The store cannot be reached, read or written: the message says what and where.
    #[error("audit store: {0}")]
    Failed(String),
    /// A row holds a value crossgate never writes: somebody changed it.
    #[error("audit store: entry {sequence} of chain {writer} is damaged: {what}")]
    Damaged {
        writer: String,
        sequence: u64,
        what: String,
    },
}

/// Which entries to read. Every given field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// RFC 3339 bounds: `since` inclusive, `until` exclusive.
    pub since: Option<String>,
    pub until: Option<String>,
    /// As consumer or as provider.
    pub partner: Option<String>,
    pub consumer: Option<String>,
    pub provider: Option<String>,
    pub record_type: Option<String>,
    /// Entries naming this record id: found by its digest
    /// (`record_id_digest`) and, in entries written before digests, by the
    /// id itself. A digest as entries show it (`id:…`) finds itself.
    pub record_id: Option<String>,
    /// The digest of `record_id` under the log's [`RecordIdKey`], set by
    /// whoever holds the key; without it only entries written before
    /// digests, or a digest given as `record_id`, are found.
    pub record_id_digest: Option<String>,
    pub purpose: Option<String>,
    pub decision: Option<String>,
    /// Chain order (writer, sequence) instead of time order.
    pub chain_order: bool,
    /// Sequence numbers from (inclusive, 0 = from the start) ...
    pub from_sequence: u64,
    /// ... to (inclusive, 0 = to the end).
    pub to_sequence: u64,
}

/// Where entries are kept. Implementations are synchronous; the [`Writer`]
/// runs them on their own thread.
pub trait Store: Send + 'static {
    /// Hold `writer`'s chain for this store alone while it is open: a second
    /// broker with the same writer id on the same log is refused, so a
    /// chain is never forked.
    fn lock_writer(&mut self, writer: &str) -> Result<(), StoreError>;
    /// The last (sequence, hash) of `writer`'s chain.
    fn head(&mut self, writer: &str) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// Every chain's head.
    fn heads(&mut self) -> Result<BTreeMap<String, (u64, [u8; 32])>, StoreError>;
    /// Commit a batch of sealed entries of one chain and move its head,
    /// together with outbox changes and idempotency claims, atomically.
    fn commit(&mut self, batch: &[Stored], ops: &[Op], claims: &[Claim]) -> Result<(), StoreError>;
    /// Called by the writer when nothing is queued for it: upkeep that
    /// would otherwise pause a commit, done when it usually pauses nobody
    /// (SQLite copies its log into the database file here). It changes nothing the
    /// store holds; a failure is the store's to log, and to try again later.
    fn rest(&mut self) {}
    /// The request that claimed `key` for `provider`, if any.
    fn find_claim(&mut self, provider: &str, key: &str) -> Result<Option<Prior>, StoreError>;
    /// How many outbox items each receiver has in `state` (receivers with
    /// none are left out): one counting query, no item is read.
    fn count_outbox(&mut self, state: State) -> Result<Vec<(String, u64)>, StoreError>;

    /// Visit matching outbox items, oldest first, until `visit` returns false.
    fn scan_outbox(
        &mut self,
        filter: &OutboxFilter,
        visit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<(), StoreError>;

    /// Commit a batch of sealed entries of one chain and move its head, atomically.
    fn append(&mut self, batch: &[Stored]) -> Result<(), StoreError> {
        self.commit(batch, &[], &[])
    }

    /// Matching outbox items, oldest first.
    fn outbox(&mut self, filter: &OutboxFilter) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        self.scan_outbox(filter, &mut |item| {
            items.push(item);
            true
        })?;
        Ok(items)
    }
    /// Visit every matching row in order until `visit` returns false: a
    /// readable entry, or the damage that keeps a row from being one
    /// (`StoreError::Damaged`). Other failures end the scan with an error.
    fn scan_rows(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Result<Stored, StoreError>) -> bool,
    ) -> Result<(), StoreError>;

    /// Visit matching entries in order until `visit` returns false; a
    /// damaged row ends the scan with its damage.
    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        let mut damage = None;
        self.scan_rows(filter, &mut |row| match row {
            Ok(stored) => visit(stored),
            Err(e) => {
                damage = Some(e);
                false
            }
        })?;
        damage.map_or(Ok(()), Err)
    }
}

/// Open the store `spec` names: `sqlite:PATH` (created if missing) or
/// `postgres://user@host/db`.
pub fn open(spec: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        return SqliteStore::open(std::path::Path::new(path))
            .map(|s| Box::new(s) as Box<dyn Store>);
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return PostgresStore::connect(spec, None).map(|s| Box::new(s) as Box<dyn Store>);
    }
    Err(StoreError::Failed(format!(
        "{spec:?} names no store: write sqlite:PATH or postgres://user@host/db"
    )))
}

/// Verify every chain of a store.
pub fn verify(store: &mut dyn Store) -> Result<Vec<ChainReport>, StoreError> {
    verify_range(store, 0, 0)
}

/// Verify every chain, and that the log still holds every head a signed
/// checkpoint vouches for (see [`checkpoint`]): a vouched head the log no
/// longer holds breaks its chain's report, and a chain the log lost
/// altogether gets a report of its own.
pub fn verify_vouched(
    store: &mut dyn Store,
    heads: &[checkpoint::Head],
) -> Result<Vec<ChainReport>, StoreError> {
    let mut reports = verify(store)?;
    for short in checkpoint::vouched(store, heads)? {
        let why = format!("{} (checkpoint)", short.why);
        match reports.iter_mut().find(|r| r.writer == short.writer) {
            Some(r) if r.broken.is_none() => r.broken = Some((short.sequence, why)),
            Some(_) => {}
            None => reports.push(ChainReport {
                writer: short.writer,
                checked: 0,
                broken: Some((short.sequence, why)),
            }),
        }
    }
    Ok(reports)
}

/// Verify every chain over sequences `from..=to` (0: open). A range that
/// starts after 1 takes its first entry's link as given; a range that ends
/// before the chain's head does not check the head.
pub fn verify_range(
    store: &mut dyn Store,
    from: u64,
    to: u64,
) -> Result<Vec<ChainReport>, StoreError> {
    // The heads are read first: an entry committed while the scan runs lies
    // beyond them and is left for the next verify, not taken for tampering.
    let heads_before = if to == 0 { Some(store.heads()?) } else { None };
    let mut verifier = Verifier::starting_at(from.max(1));
    if let Some(heads) = &heads_before {
        verifier.stop_at(heads);
    }
    let filter = Filter {
        chain_order: true,
        from_sequence: from,
        to_sequence: to,
        ..Filter::default()
    };
    store.scan_rows(&filter, &mut |row| {
        match row {
            Ok(s) => verifier.feed(&s),
            // A damaged row is where its chain breaks; the others go on.
            Err(StoreError::Damaged {
                writer,
                sequence,
                what,
            }) => verifier.damaged(&writer, sequence, what),
            Err(_) => {}
        }
        true
    })?;
    Ok(match heads_before {
        Some(before) => {
            // A chain whose first head was written during the scan began
            // after this verify did.
            let after = store.heads()?;
            verifier.settle(&before, &after);
            verifier.finish(&before)
        }
        None => verifier.finish_range(),
    })
}

#[cfg(test)]
mod tests;
