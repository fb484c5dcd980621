//! The tamper-evident audit log.
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

pub mod entry;
mod postgres;
mod sqlite;
mod verify;
mod writer;

pub use entry::{Decision, Entry, Stored, digest};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use verify::{ChainReport, Verifier};
pub use writer::{Durability, Writer};

use std::collections::BTreeMap;

/// A store failed: the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit store: {0}")]
pub struct StoreError(pub String);

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
    pub record_id: Option<String>,
    pub purpose: Option<String>,
    pub decision: Option<String>,
    /// Chain order (writer, sequence) instead of time order.
    pub chain_order: bool,
    /// Sequence numbers from (inclusive, 0 = from the start) ...
    pub from_sequence: u64,
    /// ... to (inclusive, 0 = to the end).
    pub to_sequence: u64,
}

/// The SQL dialects of the stores.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Placeholder `n` for a text argument.
    fn text(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// Placeholder `n` for an integer passed as text.
    fn integer(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(?{n} AS INTEGER)"),
            Dialect::Postgres => format!("${n}::text::bigint"),
        }
    }

    /// The column that keeps insertion order.
    fn row_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "id",
        }
    }
}

impl Filter {
    /// The query selecting this filter's entries, and its text arguments.
    pub(crate) fn select(&self, dialect: Dialect) -> (String, Vec<String>) {
        let mut sql = String::from("SELECT * FROM audit_entries WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let equal = [
            ("time >=", &self.since),
            ("time <", &self.until),
            ("consumer =", &self.consumer),
            ("provider =", &self.provider),
            ("record_type =", &self.record_type),
            ("record_id =", &self.record_id),
            ("purpose =", &self.purpose),
            ("decision =", &self.decision),
        ];
        for (clause, value) in equal {
            if let Some(v) = value {
                args.push(v.clone());
                sql.push_str(&format!(" AND {clause} {}", dialect.text(args.len())));
            }
        }
        for (clause, bound) in [
            ("sequence >=", self.from_sequence),
            ("sequence <=", self.to_sequence),
        ] {
            if bound > 0 {
                args.push(bound.to_string());
                sql.push_str(&format!(" AND {clause} {}", dialect.integer(args.len())));
            }
        }
        if let Some(p) = &self.partner {
            args.push(p.clone());
            let n = dialect.text(args.len());
            sql.push_str(&format!(" AND (consumer = {n} OR provider = {n})"));
        }
        sql.push_str(&if self.chain_order {
            format!(" ORDER BY writer, sequence, {}", dialect.row_order())
        } else {
            " ORDER BY time, writer, sequence".to_owned()
        });
        (sql, args)
    }
}

/// Where entries are kept. Implementations are synchronous; the [`Writer`]
/// runs them on their own thread.
pub trait Store: Send + 'static {
    /// The last (sequence, hash) of `writer`'s chain.
    fn head(&mut self, writer: &str) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// Every chain's head.
    fn heads(&mut self) -> Result<BTreeMap<String, (u64, [u8; 32])>, StoreError>;
    /// Commit a batch of sealed entries of one chain and move its head, atomically.
    fn append(&mut self, batch: &[Stored]) -> Result<(), StoreError>;
    /// Visit matching entries in order until `visit` returns false.
    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError>;
}

/// Verify every chain of a store.
pub fn verify(store: &mut dyn Store) -> Result<Vec<ChainReport>, StoreError> {
    verify_range(store, 0, 0)
}

/// Verify every chain over sequences `from..=to` (0: open). A range that
/// starts after 1 takes its first entry's link as given; a range that ends
/// before the chain's head does not check the head.
pub fn verify_range(
    store: &mut dyn Store,
    from: u64,
    to: u64,
) -> Result<Vec<ChainReport>, StoreError> {
    let mut verifier = Verifier::starting_at(from.max(1));
    let filter = Filter {
        chain_order: true,
        from_sequence: from,
        to_sequence: to,
        ..Filter::default()
    };
    store.scan(&filter, &mut |s| {
        verifier.feed(&s);
        true
    })?;
    let heads = if to == 0 {
        store.heads()?
    } else {
        BTreeMap::new()
    };
    Ok(verifier.finish(&heads))
}

#[cfg(test)]
mod tests;
