//! The audit step's interface. Until the durable log lands, entries go to an
//! in-memory sink; the broker writes one entry per decision and per delivery.

use std::sync::Mutex;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    Throttled,
    Invalid,
    Delivered,
    Failed,
    /// An operator's change (limits, reloads).
    Changed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Throttled => "throttled",
            Decision::Invalid => "invalid",
            Decision::Delivered => "delivered",
            Decision::Failed => "failed",
            Decision::Changed => "changed",
        }
    }
}

/// One audit entry: who, what, why — and a digest, never the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    /// publish, query, admin
    pub kind: &'static str,
    pub consumer: String,
    pub provider: String,
    pub record_type: String,
    pub record_id: String,
    pub purpose: String,
    pub approval_reference: String,
    pub decision: Decision,
    pub reason: String,
    pub released_fields: Vec<String>,
    /// Hex SHA-256 of the canonical record bytes, empty when there is none.
    pub record_digest: String,
    pub latency_micros: u64,
}

/// Where the broker writes entries. `append` returns only when the entry is
/// kept; an error makes the broker refuse the request with `UNAVAILABLE`.
#[tonic::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn append(&self, entry: Entry) -> Result<(), String>;
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
    async fn append(&self, entry: Entry) -> Result<(), String> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        Ok(())
    }
}

#[tonic::async_trait]
impl<T: AuditSink> AuditSink for std::sync::Arc<T> {
    async fn append(&self, entry: Entry) -> Result<(), String> {
        (**self).append(entry).await
    }
}

/// Hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
