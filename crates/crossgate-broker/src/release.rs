//! What a consumer receives of a provider's records: each record checked
//! like any other, reduced to the released fields (masks applied), and
//! referred to by the grant's key field or an opaque per-consumer reference —
//! never by the provider's own id. A provider record that does not validate
//! is left out and counted; its faults are kept without values.

use crate::audit::digest;
use crossgate_policy::{ReferenceKey, Release, project};
use crossgate_proto::{Criterion, QueryRequest, Record};
use crossgate_schema::Registry;
use serde_json::Value;

/// The record's field at the criterion's path equals its value exactly.
fn matches(document: &Value, c: &Criterion) -> bool {
    match document.pointer(&c.path) {
        Some(Value::String(s)) => *s == c.value,
        Some(Value::Number(n)) => n.to_string() == c.value,
        Some(Value::Bool(b)) => b.to_string() == c.value,
        _ => false,
    }
}

/// One record as the consumer receives it. A record the provider gave no id
/// is referred to by its content's digest, so that two such records never
/// share a reference.
pub fn released(
    release: &Release<'_>,
    key: &ReferenceKey,
    record_type: &str,
    provider_id: &str,
    document: &Value,
) -> Record {
    let projected = project(document, release.fields());
    let digest_id;
    let provider_id = if provider_id.is_empty() {
        digest_id = format!(
            "digest:{}",
            digest(&serde_json::to_vec(document).unwrap_or_default())
        );
        digest_id.as_str()
    } else {
        provider_id
    };
    Record {
        record_type: record_type.to_owned(),
        record_id: release.record_id(key, provider_id, &projected),
        // Serialising a `Value` cannot fail: its keys are strings.
        json: serde_json::to_vec(&projected).unwrap_or_default(),
    }
}

/// A provider's answer after screening.
#[derive(Debug, Default)]
pub struct Screened {
    /// What the consumer receives.
    pub records: Vec<Record>,
    /// The provider's own ids of the released records, for the audit log.
    pub provider_ids: Vec<String>,
    /// Digests of the released records as the provider sent them.
    pub digests: Vec<String>,
    /// Per record left out: why, without any value.
    pub invalid: Vec<String>,
    /// Records the provider's adapter left out (they do not map).
    pub withheld_at_adapter: u32,
    /// Records that do not equal the lookup (a provider's looser search):
    /// dropped without a trace towards the consumer, not even a count.
    pub unrelated: usize,
}

impl Screened {
    /// The released records' provider ids as the audit entry names them:
    /// one list whose members are whole ids, however the ids are spelt.
    pub fn logged_ids(&self) -> String {
        crate::audit::record_ids(self.provider_ids.iter().map(String::as_str))
    }

    /// "1 provider record withheld: invalid (/ethnicity: does not match the field's pattern)".
    pub fn invalid_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.invalid.is_empty() {
            parts.push(format!(
                "{} provider record(s) withheld: invalid ({})",
                self.invalid.len(),
                self.invalid.join(" | ")
            ));
        }
        if self.unrelated > 0 {
            parts.push(format!(
                "{} provider record(s) did not equal the lookup and were dropped",
                self.unrelated
            ));
        }
        if self.withheld_at_adapter > 0 {
            parts.push(format!(
                "{} provider record(s) withheld by the provider's adapter: they do not map",
                self.withheld_at_adapter
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Matching records not released because they are invalid.
    pub fn withheld_count(&self) -> u32 {
        u32::try_from(self.invalid.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.withheld_at_adapter)
    }
}

/// Check and reduce every record of a provider's answer to the query `q`:
/// of its record type, valid, and matching every criterion exactly — the
/// grant (and an approval's subject) covers what was asked for, not what a
/// provider's looser search found.
pub fn screen(
    registry: &Registry,
    release: &Release<'_>,
    key: &ReferenceKey,
    q: &QueryRequest,
    records: Vec<Record>,
) -> Screened {
    let record_type = q.record_type.as_str();
    let mut out = Screened::default();
    for record in records {
        if record.record_type != record_type {
            out.invalid
                .push(format!("a record of another type than {record_type}"));
            continue;
        }
        let document = match registry.parse_and_validate(record_type, &record.json) {
            Ok(d) => d,
            Err(rejection) => {
                out.invalid.push(rejection.without_values());
                continue;
            }
        };
        if q.criteria.iter().any(|c| !matches(&document, c)) {
            out.unrelated += 1;
            continue;
        }
        out.digests.push(digest(&record.json));
        out.records.push(released(
            release,
            key,
            record_type,
            &record.record_id,
            &document,
        ));
        out.provider_ids.push(record.record_id);
    }
    out
}

#[cfg(test)]
mod tests;
