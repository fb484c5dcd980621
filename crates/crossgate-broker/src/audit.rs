//! The audit step's interface: the durable log (`crossgate-audit`'s
//! `Writer`) or, in tests, an in-memory sink. The broker writes one entry per
//! decision, per delivery and per operator change.

use std::sync::Mutex;

pub use crossgate_audit::{Decision, Entry, Kind, StoreError, digest};

/// Where the broker writes entries. `append` returns only when the entry is
/// kept; an error makes the broker refuse the request with `UNAVAILABLE`.
#[tonic::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn append(&self, entry: Entry) -> Result<(), StoreError>;
}

/// Keeps entries in memory (tests, and until the durable log lands).
#[derive(Debug, Default)]
pub struct MemorySink {
    entries: Mutex<Vec<Entry>>,
}

impl MemorySink {
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[tonic::async_trait]
impl AuditSink for MemorySink {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        Ok(())
    }
}

#[tonic::async_trait]
impl<T: AuditSink> AuditSink for std::sync::Arc<T> {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        (**self).append(entry).await
    }
}

/// The durable, hash-chained log: `append` returns once the entry is
/// committed (or at once in async mode).
#[tonic::async_trait]
impl AuditSink for crossgate_audit::Writer {
    async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        crossgate_audit::Writer::append(self, entry).await
    }
}
