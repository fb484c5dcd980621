//! What several of these test files ask the broker.

use crossgate_proto::{Criterion, QueryRequest};

/// Education's lookup of a child by identity number at public-security,
/// for school enrolment: allowed by the project's catalog.
pub fn person_lookup() -> QueryRequest {
    QueryRequest {
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        purpose: "school-enrolment".into(),
        approval_reference: String::new(),
        criteria: vec![Criterion {
            path: "/id_number".into(),
            value: "540202198107103540".into(),
        }],
    }
}
