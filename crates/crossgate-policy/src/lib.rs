//! The sharing catalog (after the Government Data Sharing Regulation) and
//! its grants, compiled once at load into lookups. A decision is either allow
//! (with the released fields and their masks) or deny (with a written reason
//! naming the rule). Default deny.
#![forbid(unsafe_code)]

mod catalog;
mod partners;
mod project;

pub use catalog::compile;
pub use partners::{Partner, Role, compile_partners};
pub use project::{Mask, ReleasedField, project, withheld};

use chrono::NaiveDate;
use std::collections::HashMap;

/// Publish (a subscription: the broker pushes records) or query (on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Publish,
    Query,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Publish => "publish",
            Mode::Query => "query",
        }
    }
}

/// The sharing class of a provider's record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharingClass {
    Unconditional,
    /// A grant and a valid approval are needed; the text says what the condition is.
    Conditional {
        condition: String,
    },
    /// Never shared; the text gives the legal basis.
    None {
        legal_basis: String,
    },
}

/// A grant as compiled.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    pub consumer: String,
    pub provider: String,
    pub record_type: String,
    pub mode: Mode,
    pub purposes: Vec<String>,
    pub fields: Vec<ReleasedField>,
    pub valid_from: NaiveDate,
    pub valid_until: NaiveDate,
}

/// An approval for conditionally shared data.
#[derive(Debug, Clone)]
pub struct Approval {
    pub reference: String,
    pub consumer: String,
    pub record_type: String,
    pub purpose: String,
    pub valid_from: NaiveDate,
    pub valid_until: NaiveDate,
}

/// What a consumer may see.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub grant: &'a Grant,
    /// The approval that satisfied a conditional class, if any.
    pub approval: Option<&'a Approval>,
}

impl Release<'_> {
    pub fn fields(&self) -> &[ReleasedField] {
        &self.grant.fields
    }

    /// The released JSON Pointers, for replies and the audit log.
    pub fn field_paths(&self) -> Vec<String> {
        // A masked field is listed once, though it is released and then masked.
        let mut paths: Vec<String> = Vec::with_capacity(self.grant.fields.len());
        for f in &self.grant.fields {
            if !paths.contains(&f.pointer) {
                paths.push(f.pointer.clone());
            }
        }
        paths
    }
}

/// Why a request is refused: the rule, and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// e.g. `default-deny`, `catalog:public-security/household.v1`, `grant:edu-household`
    pub rule: String,
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (rule {})", self.reason, self.rule)
    }
}

/// A config that cannot be used: `<file>:<line>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

type ByType = HashMap<String, Vec<usize>>;

/// The compiled catalog.
#[derive(Debug, Default)]
pub struct Policy {
    classes: HashMap<String, HashMap<String, SharingClass>>,
    grants: Vec<Grant>,
    /// consumer → provider → record type → query grants
    query: HashMap<String, HashMap<String, ByType>>,
    /// provider → record type → publish grants
    publish: HashMap<String, ByType>,
    approvals: HashMap<String, Approval>,
}

impl Policy {
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The sharing class of a provider's record type, if the catalog lists it.
    pub fn class(&self, provider: &str, record_type: &str) -> Option<&SharingClass> {
        self.classes.get(provider)?.get(record_type)
    }

    fn catalog_entry(&self, provider: &str, record_type: &str) -> Result<&SharingClass, Denial> {
        match self.class(provider, record_type) {
            None => Err(Denial {
                rule: "catalog".into(),
                reason: format!("the sharing catalog does not list {record_type} for {provider}"),
            }),
            Some(SharingClass::None { legal_basis }) => Err(Denial {
                rule: format!("catalog:{provider}/{record_type}"),
                reason: format!("{record_type} of {provider} is not shared: {legal_basis}"),
            }),
            Some(class) => Ok(class),
        }
    }

    /// May `consumer` query `provider` for `record_type` for `purpose` on `today`?
    pub fn decide_query(
        &self,
        consumer: &str,
        provider: &str,
        record_type: &str,
        purpose: &str,
        approval: Option<&str>,
        today: NaiveDate,
    ) -> Result<Release<'_>, Denial> {
        let class = self.catalog_entry(provider, record_type)?;
        let candidates = self
            .query
            .get(consumer)
            .and_then(|p| p.get(provider))
            .and_then(|t| t.get(record_type))
            .map(Vec::as_slice)
            .unwrap_or_default();
        if candidates.is_empty() {
            return Err(Denial {
                rule: "default-deny".into(),
                reason: format!("no grant lets {consumer} query {provider} for {record_type}"),
            });
        }
        let mut denial = None;
        for &i in candidates {
            let grant = &self.grants[i];
            if !grant.purposes.iter().any(|p| p == purpose) {
                denial.get_or_insert(Denial {
                    rule: format!("grant:{}", grant.id),
                    reason: format!(
                        "grant {} serves the purposes {}, not {purpose:?}",
                        grant.id,
                        grant.purposes.join(", ")
                    ),
                });
                continue;
            }
            if today < grant.valid_from || today > grant.valid_until {
                denial = Some(Denial {
                    rule: format!("grant:{}", grant.id),
                    reason: format!(
                        "grant {} is valid from {} to {}; today is {today}",
                        grant.id, grant.valid_from, grant.valid_until
                    ),
                });
                continue;
            }
            let approval = match class {
                SharingClass::Conditional { condition } => Some(self.check_approval(
                    consumer,
                    provider,
                    record_type,
                    purpose,
                    approval,
                    today,
                    condition,
                )?),
                _ => None,
            };
            return Ok(Release { grant, approval });
        }
        Err(denial.unwrap_or(Denial {
            rule: "default-deny".into(),
            reason: format!("no grant lets {consumer} query {provider} for {record_type}"),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn check_approval(
        &self,
        consumer: &str,
        provider: &str,
        record_type: &str,
        purpose: &str,
        reference: Option<&str>,
        today: NaiveDate,
        condition: &str,
    ) -> Result<&Approval, Denial> {
        let rule = format!("catalog:{provider}/{record_type}");
        let Some(reference) = reference.filter(|r| !r.is_empty()) else {
            return Err(Denial {
                rule,
                reason: format!(
                    "{record_type} of {provider} is shared on condition ({condition}); an approval reference is required"
                ),
            });
        };
        let deny = |why: String| Denial {
            rule: format!("approval:{reference}"),
            reason: why,
        };
        let Some(approval) = self.approvals.get(reference) else {
            return Err(deny(format!("approval {reference} is not on record")));
        };
        if approval.consumer != consumer || approval.record_type != record_type {
            return Err(deny(format!(
                "approval {reference} was given to {} for {}, not to {consumer} for {record_type}",
                approval.consumer, approval.record_type
            )));
        }
        if approval.purpose != purpose {
            return Err(deny(format!(
                "approval {reference} is for the purpose {:?}, not {purpose:?}",
                approval.purpose
            )));
        }
        if today < approval.valid_from || today > approval.valid_until {
            return Err(deny(format!(
                "approval {reference} is valid from {} to {}; today is {today}",
                approval.valid_from, approval.valid_until
            )));
        }
        Ok(approval)
    }

    /// Where a record that `provider` publishes goes: one release per receiver
    /// whose publish grant is in force. Refused when the catalog does not list
    /// the record type for the provider (or does not share it).
    pub fn publish_routes(
        &self,
        provider: &str,
        record_type: &str,
        today: NaiveDate,
    ) -> Result<Vec<Release<'_>>, Denial> {
        self.catalog_entry(provider, record_type)?;
        Ok(self
            .publish
            .get(provider)
            .and_then(|t| t.get(record_type))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|&i| &self.grants[i])
            .filter(|g| today >= g.valid_from && today <= g.valid_until)
            .map(|grant| Release {
                grant,
                approval: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
