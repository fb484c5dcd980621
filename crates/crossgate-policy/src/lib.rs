//! The sharing catalog (after the Government Data Sharing Regulation) and
//! its grants, compiled once at load into lookups. A decision is either allow
//! (with the released fields and their masks) or deny (with a written reason
//! naming the rule). Default deny.
#![forbid(unsafe_code)]

mod catalog;
mod partners;
mod project;
mod reference;

pub use catalog::compile;
pub use partners::{Partner, Role, compile_partners};
pub use project::{Mask, ReleasedField, project, withheld};
pub use reference::{REFERENCE_HEX_LEN, ReferenceKey, ReferenceKeyError};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use foldhash::{HashMap, HashMapExt};
use serde_json::Value;

pub use crossgate_config::Mode;

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
    /// Query grants: the fields a consumer may look records up by. A query
    /// must name at least one and no other. The consumer need not receive
    /// them (it may look up by a value it already holds).
    pub lookup: Vec<String>,
    /// Query grants: the most records one answer may hold.
    pub max_records: usize,
    /// A released field the consumer receives as `record_id`; without it the
    /// consumer gets an opaque reference (see [`ReferenceKey`]).
    pub key: Option<String>,
    /// The schema's leaf fields this grant does not release: what a consumer
    /// is told it did not get. From the schema, not from each record, so the
    /// list says nothing about which fields a given record holds.
    pub withheld: Vec<String>,
    pub valid_from: NaiveDate,
    pub valid_until: NaiveDate,
}

/// An approval for conditionally shared data: it names whom it was given to,
/// for which provider's record type and purpose, and the subject it covers
/// (the lookup values a query under it must use, exactly).
#[derive(Debug, Clone)]
pub struct Approval {
    pub reference: String,
    pub consumer: String,
    pub provider: String,
    pub record_type: String,
    pub purpose: String,
    /// (canonical field, value) pairs, sorted by field.
    pub subject: Vec<(String, String)>,
    /// How many answers it may open; `None`: unlimited within its validity.
    pub uses: Option<u32>,
    /// Who approved it, e.g. a district education bureau.
    pub authority: Option<String>,
    pub valid_from: NaiveDate,
    pub valid_until: NaiveDate,
}

impl Approval {
    /// "household 11010567397679": the subject in words.
    pub fn describe_subject(&self) -> String {
        describe_lookup(
            &self.record_type,
            self.subject.iter().map(|(p, v)| (p.as_str(), v.as_str())),
        )
    }
}

fn describe_lookup<'a>(
    record_type: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let noun = record_type.split('.').next().unwrap_or(record_type);
    let pairs: Vec<(&str, &str)> = pairs.collect();
    match pairs.as_slice() {
        [] => format!("no {noun}"),
        [(_, value)] => format!("{noun} {value}"),
        many => {
            let parts: Vec<String> = many.iter().map(|(p, v)| format!("{p} = {v}")).collect();
            format!("{noun} with {}", parts.join(", "))
        }
    }
}

/// What a consumer asks of a provider.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub consumer: &'a str,
    pub provider: &'a str,
    pub record_type: &'a str,
    pub purpose: &'a str,
    pub approval: Option<&'a str>,
    /// (canonical field, value): records must match all of them.
    pub criteria: &'a [(&'a str, &'a str)],
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

    /// What the consumer receives as a record's `record_id`: the grant's key
    /// field from the projected record, else an opaque per-consumer
    /// reference to the provider's own id. The provider's id itself never
    /// leaves the broker.
    pub fn record_id(&self, key: &ReferenceKey, provider_id: &str, projected: &Value) -> String {
        let keyed = self
            .grant
            .key
            .as_deref()
            .and_then(|k| match projected.pointer(k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        keyed.unwrap_or_else(|| {
            key.reference(
                &self.grant.consumer,
                &self.grant.provider,
                &self.grant.record_type,
                provider_id,
            )
        })
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

/// The most records a query grant may release in one answer
/// (`max_records`): the audit entry of an answer names each of them, and
/// keeps that many (`crossgate_audit::entry::MAX_RECORDS_NAMED`).
pub const MAX_ANSWER_RECORDS: usize = 1000;

/// Why a request is refused: the rule, and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// e.g. `default-deny`, `catalog:public-security/household.v1`, `grant:edu-household`
    pub rule: String,
    pub reason: String,
    /// The reason as the audit log keeps it, where `reason` names a value
    /// (an approval's subject, the value looked up); `None`: `reason`.
    pub logged: Option<String>,
}

impl Denial {
    /// A refusal whose reason names no value, so the log keeps it as told.
    pub fn new(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Denial {
            rule: rule.into(),
            reason: reason.into(),
            logged: None,
        }
    }

    /// The same refusal, logged as `logged`: for a reason that names a
    /// value the caller may hear but the log must not keep.
    pub fn logged_as(self, logged: impl Into<String>) -> Self {
        Denial {
            logged: Some(logged.into()),
            ..self
        }
    }

    /// What the audit log keeps: the reason without any value, and the rule.
    pub fn logged(&self) -> String {
        format!(
            "{} (rule {})",
            self.logged.as_deref().unwrap_or(&self.reason),
            self.rule
        )
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (rule {})", self.reason, self.rule)
    }
}

pub use crossgate_config::ConfigError;

type ByType = HashMap<String, Vec<usize>>;

/// The compiled catalog.
#[derive(Debug)]
pub struct Policy {
    /// Grant and approval dates are judged in this zone (default `+08:00`).
    time_zone: FixedOffset,
    classes: HashMap<String, HashMap<String, SharingClass>>,
    grants: Vec<Grant>,
    /// consumer → provider → record type → query grants
    query: HashMap<String, HashMap<String, ByType>>,
    /// provider → record type → publish grants
    publish: HashMap<String, ByType>,
    approvals: HashMap<String, Approval>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            time_zone: DEFAULT_TIME_ZONE,
            classes: HashMap::new(),
            grants: Vec::new(),
            query: HashMap::new(),
            publish: HashMap::new(),
            approvals: HashMap::new(),
        }
    }
}

/// China Standard Time, the catalog's default zone.
pub const DEFAULT_TIME_ZONE: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(z) => z,
    None => panic!("+08:00 is a valid offset"),
};

impl Policy {
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn approvals(&self) -> impl Iterator<Item = &Approval> {
        self.approvals.values()
    }

    pub fn approval(&self, reference: &str) -> Option<&Approval> {
        self.approvals.get(reference)
    }

    /// The catalog's time zone.
    pub fn time_zone(&self) -> FixedOffset {
        self.time_zone
    }

    /// The date `now` falls on in the catalog's time zone: the day grants and
    /// approvals are judged by.
    pub fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.time_zone).date_naive()
    }

    /// The sharing class of a provider's record type, if the catalog lists it.
    pub fn class(&self, provider: &str, record_type: &str) -> Option<&SharingClass> {
        self.classes.get(provider)?.get(record_type)
    }

    fn catalog_entry(&self, provider: &str, record_type: &str) -> Result<&SharingClass, Denial> {
        match self.class(provider, record_type) {
            None => Err(Denial::new(
                "catalog",
                format!("the sharing catalog does not list {record_type} for {provider}"),
            )),
            Some(SharingClass::None { legal_basis }) => Err(Denial::new(
                format!("catalog:{provider}/{record_type}"),
                format!("{record_type} of {provider} is not shared: {legal_basis}"),
            )),
            Some(class) => Ok(class),
        }
    }

    /// May the consumer ask this of the provider on `today`? Checks, in
    /// order: the catalog lists the record type, a grant serves the purpose
    /// and is in force, the criteria are lookups the grant allows, and for
    /// conditional data an approval that names exactly this subject.
    pub fn decide_query(&self, ask: &Ask<'_>, today: NaiveDate) -> Result<Release<'_>, Denial> {
        let Ask {
            consumer,
            provider,
            record_type,
            purpose,
            ..
        } = *ask;
        let class = self.catalog_entry(provider, record_type)?;
        let candidates = self
            .query
            .get(consumer)
            .and_then(|p| p.get(provider))
            .and_then(|t| t.get(record_type))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let no_grant = || {
            Denial::new(
                "default-deny",
                format!("no grant lets {consumer} query {provider} for {record_type}"),
            )
        };
        let mut denial = None;
        for &i in candidates {
            let grant = &self.grants[i];
            if !grant.purposes.iter().any(|p| p == purpose) {
                denial.get_or_insert(Denial::new(
                    format!("grant:{}", grant.id),
                    format!(
                        "grant {} serves the purposes {}, not {purpose:?}",
                        grant.id,
                        grant.purposes.join(", ")
                    ),
                ));
                continue;
            }
            if today < grant.valid_from || today > grant.valid_until {
                denial = Some(Denial::new(
                    format!("grant:{}", grant.id),
                    format!(
                        "grant {} is valid from {} to {}; today is {today}",
                        grant.id, grant.valid_from, grant.valid_until
                    ),
                ));
                continue;
            }
            check_lookup(grant, ask.criteria)?;
            let approval = match class {
                SharingClass::Conditional { condition } => {
                    Some(self.check_approval(ask, today, condition)?)
                }
                _ => None,
            };
            return Ok(Release { grant, approval });
        }
        Err(denial.unwrap_or_else(no_grant))
    }

    fn check_approval(
        &self,
        ask: &Ask<'_>,
        today: NaiveDate,
        condition: &str,
    ) -> Result<&Approval, Denial> {
        let (consumer, provider, record_type, purpose) =
            (ask.consumer, ask.provider, ask.record_type, ask.purpose);
        let rule = format!("catalog:{provider}/{record_type}");
        let Some(reference) = ask.approval.filter(|r| !r.is_empty()) else {
            return Err(Denial::new(
                rule,
                format!(
                    "{record_type} of {provider} is shared on condition ({condition}); an approval reference is required"
                ),
            ));
        };
        let deny = |why: String| Denial::new(format!("approval:{reference}"), why);
        // One answer whether the reference does not exist or belongs to
        // someone else: a consumer cannot probe who holds which approval.
        let approval = self
            .approvals
            .get(reference)
            .filter(|a| a.consumer == consumer)
            .ok_or_else(|| {
                deny(format!(
                    "approval {reference} is not on record for {consumer}"
                ))
            })?;
        if approval.provider != provider || approval.record_type != record_type {
            return Err(deny(format!(
                "approval {reference} is for {} of {}, not {record_type} of {provider}",
                approval.record_type, approval.provider
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
        // The query must look up exactly the approved subject: every pair
        // once, nothing else (no allocation: subjects are a pair or two).
        let asked = ask.criteria;
        let covered = asked.len() == approval.subject.len()
            && approval
                .subject
                .iter()
                .all(|(sp, sv)| asked.iter().filter(|(p, v)| p == sp && v == sv).count() == 1);
        if !covered {
            // The consumer is told both (the approval is its own, the
            // lookup its own); the log keeps neither value.
            let noun = record_type.split('.').next().unwrap_or(record_type);
            return Err(deny(format!(
                "approval {reference} covers {}, not {}",
                approval.describe_subject(),
                describe_lookup(record_type, asked.iter().copied())
            ))
            .logged_as(format!(
                "approval {reference} covers another {noun} than the one looked up"
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

/// The criteria must be lookups the grant allows: at least one, no other.
fn check_lookup(grant: &Grant, criteria: &[(&str, &str)]) -> Result<(), Denial> {
    let rule = || format!("grant:{}", grant.id);
    let allowed = grant.lookup.join(", ");
    if criteria.is_empty() {
        return Err(Denial::new(
            rule(),
            format!(
                "grant {} answers lookups by {allowed} only; a query without criteria is refused",
                grant.id
            ),
        ));
    }
    if let Some((path, _)) = criteria.iter().find(|(_, value)| value.is_empty()) {
        return Err(Denial::new(
            rule(),
            format!("the lookup by {path} has no value; an empty value matches nothing"),
        ));
    }
    if let Some((path, _)) = criteria
        .iter()
        .find(|(path, _)| !grant.lookup.iter().any(|l| l == path))
    {
        return Err(Denial::new(
            rule(),
            format!(
                "grant {} allows lookups by {allowed}, not by {path}",
                grant.id
            ),
        ));
    }
    Ok(())
}

impl Grant {
    /// An answer of `count` records is over this grant's `max_records`.
    pub fn check_answer_size(&self, count: usize) -> Result<(), Denial> {
        if count <= self.max_records {
            return Ok(());
        }
        Err(Denial::new(
            format!("grant:{}", self.id),
            format!(
                "grant {} releases at most {} record(s) per answer; this lookup matches more, so nothing is released — look up by a more specific value",
                self.id, self.max_records
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
