//! Audit entries and their canonical byte encoding.
//!
//! The entry hash is SHA-256 over:
//!
//! ```text
//! "crossgate-audit-v1" 0x00
//! previous_hash            32 bytes (zeros for a chain's first entry)
//! sequence                 u64, big-endian
//! writer, time, request_id, kind, consumer, provider, record_type, record_id,
//! purpose, approval_reference, decision, reason      each a field
//! released_fields          u32 big-endian count, then each a field
//! record_digest            a field
//! latency_micros           u64, big-endian
//!
//! field = u32 big-endian byte length, then the UTF-8 bytes
//! ```
//!
//! Every field is covered and lengths are explicit, so no two different
//! entries encode alike.

use sha2::{Digest, Sha256};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    Throttled,
    Invalid,
    Delivered,
    /// A delivery attempt failed (retried later), or a call failed.
    Failed,
    /// A delivery given up after the retry schedule: kept for an operator.
    Dead,
    /// An operator's change (limits, reloads) or an auditor's reading.
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
            Decision::Dead => "dead",
            Decision::Changed => "changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "allowed" => Decision::Allowed,
            "denied" => Decision::Denied,
            "throttled" => Decision::Throttled,
            "invalid" => Decision::Invalid,
            "delivered" => Decision::Delivered,
            "failed" => Decision::Failed,
            "dead" => Decision::Dead,
            "changed" => Decision::Changed,
            _ => return None,
        })
    }
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A record published, or one of its deliveries.
    Publish,
    /// A query and its answer.
    Query,
    /// An operator's change.
    Admin,
    /// An auditor's reading of the log.
    Audit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Query => "query",
            Kind::Admin => "admin",
            Kind::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "publish" => Kind::Publish,
            "query" => Kind::Query,
            "admin" => Kind::Admin,
            "audit" => Kind::Audit,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit entry: who, what, why — and a digest, never the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    pub kind: Kind,
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

/// An entry as the log keeps it: its place in its writer's chain and the hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub writer: String,
    pub sequence: u64,
    pub entry: Entry,
    pub previous_hash: [u8; 32],
    pub entry_hash: [u8; 32],
}

fn field(h: &mut Sha256, s: &str) {
    h.update((s.len() as u32).to_be_bytes());
    h.update(s.as_bytes());
}

/// The hash of an entry at `sequence` of `writer`'s chain after `previous`.
pub fn entry_hash(writer: &str, sequence: u64, previous: &[u8; 32], e: &Entry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"crossgate-audit-v1\0");
    h.update(previous);
    h.update(sequence.to_be_bytes());
    for f in [
        writer,
        &e.time,
        &e.request_id,
        e.kind.as_str(),
        &e.consumer,
        &e.provider,
        &e.record_type,
        &e.record_id,
        &e.purpose,
        &e.approval_reference,
        e.decision.as_str(),
        &e.reason,
    ] {
        field(&mut h, f);
    }
    h.update((e.released_fields.len() as u32).to_be_bytes());
    for f in &e.released_fields {
        field(&mut h, f);
    }
    field(&mut h, &e.record_digest);
    h.update(e.latency_micros.to_be_bytes());
    h.finalize().into()
}

/// The largest `reason` an entry keeps, in bytes.
pub const MAX_REASON: usize = 4096;
/// The largest other text field an entry keeps, in bytes.
pub const MAX_FIELD: usize = 1024;
/// The most released field paths an entry keeps.
pub const MAX_RELEASED: usize = 1000;
/// The most records one entry names: an answer's records, each by its id's
/// digest in `record_id` and its record's digest in `record_digest`, all
/// kept, so that a search finds every one (a query grant's `max_records`
/// is at most this).
pub const MAX_RECORDS_NAMED: usize = 1000;
/// `record_id`'s bound: [`MAX_RECORDS_NAMED`] digests of ids (`id:` and 32
/// hex characters) and their commas.
pub const MAX_RECORD_IDS: usize = MAX_RECORDS_NAMED * 36;
/// `record_digest`'s bound: [`MAX_RECORDS_NAMED`] SHA-256 hex digests and
/// their commas.
pub const MAX_RECORD_DIGESTS: usize = MAX_RECORDS_NAMED * 65;

impl Entry {
    /// Cut every field to its bound, saying how much was cut, so that no
    /// entry can grow the log without limit whatever its caller put in it.
    /// The broker bounds what a peer sends far below these; this is the
    /// last line.
    pub fn bounded(mut self) -> Self {
        for (field, most) in [
            (&mut self.reason, MAX_REASON),
            (&mut self.consumer, MAX_FIELD),
            (&mut self.provider, MAX_FIELD),
            (&mut self.record_type, MAX_FIELD),
            (&mut self.record_id, MAX_RECORD_IDS),
            (&mut self.purpose, MAX_FIELD),
            (&mut self.approval_reference, MAX_FIELD),
            (&mut self.request_id, MAX_FIELD),
            (&mut self.time, MAX_FIELD),
            (&mut self.record_digest, MAX_RECORD_DIGESTS),
        ] {
            cut(field, most);
        }
        if self.released_fields.len() > MAX_RELEASED {
            let more = self.released_fields.len() - MAX_RELEASED + 1;
            self.released_fields.truncate(MAX_RELEASED - 1);
            self.released_fields.push(format!("... and {more} more"));
        }
        for f in &mut self.released_fields {
            cut(f, MAX_FIELD);
        }
        self
    }
}

/// Cut `s` to at most `most` bytes at a character boundary, ending in a
/// note of how many bytes were cut.
fn cut(s: &mut String, most: usize) {
    if s.len() <= most {
        return;
    }
    let note = format!("... (cut from {} bytes)", s.len());
    let mut end = most.saturating_sub(note.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&note);
}

impl Stored {
    /// Seal `entry` as the next of a chain whose head is (`sequence - 1`, `previous`).
    pub fn seal(writer: &str, sequence: u64, previous: [u8; 32], entry: Entry) -> Self {
        let entry_hash = entry_hash(writer, sequence, &previous, &entry);
        Stored {
            writer: writer.to_owned(),
            sequence,
            entry,
            previous_hash: previous,
            entry_hash,
        }
    }
}

impl Stored {
    /// The entry as one JSON line (for export and search output).
    pub fn to_json_line(&self) -> String {
        let e = &self.entry;
        serde_json::json!({
            "writer": self.writer, "sequence": self.sequence, "time": e.time, "request_id": e.request_id,
            "kind": e.kind.as_str(), "consumer": e.consumer, "provider": e.provider, "record_type": e.record_type,
            "record_id": e.record_id, "purpose": e.purpose, "approval_reference": e.approval_reference,
            "decision": e.decision.as_str(), "reason": e.reason, "released_fields": e.released_fields,
            "record_digest": e.record_digest, "latency_micros": e.latency_micros,
            "previous_hash": hex(&self.previous_hash), "entry_hash": hex(&self.entry_hash),
        })
        .to_string()
    }

    /// The entry as one CSV row under [`CSV_HEADER`]; every cell escaped by
    /// [`csv_cell`].
    pub fn to_csv_line(&self) -> String {
        let e = &self.entry;
        [
            e.time.as_str(),
            self.writer.as_str(),
            &self.sequence.to_string(),
            e.kind.as_str(),
            &e.consumer,
            &e.provider,
            &e.record_type,
            &e.record_id,
            &e.purpose,
            &e.approval_reference,
            e.decision.as_str(),
            &e.reason,
            &e.released_fields.join(" "),
            &e.record_digest,
        ]
        .iter()
        .map(|f| csv_cell(f))
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// The header row of [`Stored::to_csv_line`].
pub const CSV_HEADER: &str = "time,writer,sequence,kind,consumer,provider,record_type,record_id,purpose,\
                              approval_reference,decision,reason,released_fields,record_digest";

/// One CSV cell: always quoted, quotes doubled; a cell a spreadsheet would
/// read as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
/// return) gets a leading `'` (OWASP's advice on CSV injection).
pub fn csv_cell(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let mut out = String::with_capacity(text.len() + 3);
    out.push('"');
    if formula {
        out.push('\'');
    }
    out.push_str(&text.replace('"', "\"\""));
    out.push('"');
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// 32 bytes from 64 lower-case hex digits, as crossgate writes them: any
/// other spelling (a `+`, which `from_str_radix` would take, upper case) is
/// not a hash crossgate wrote.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Hex SHA-256 of `bytes`: the digest a record is logged by.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod hex_tests {
    /// Found by fuzzing (fuzz/ target audit_entry): `+7` was read as `07`.
    #[test]
    fn only_the_lower_case_hex_crossgate_writes_is_a_hash() {
        let good = "0a".repeat(32);
        assert_eq!(super::unhex32(&good), Some([10; 32]));
        assert_eq!(super::unhex32(&format!("+a{}", "0a".repeat(31))), None);
        assert_eq!(super::unhex32(&"0A".repeat(32)), None);
        assert_eq!(super::unhex32(&"0a".repeat(31)), None);
    }
}
