//! `catalog.toml`: its serde shape and its compilation into a [`Policy`].
//! Every refusal names the file, the line and the fix.

use crate::{Approval, ConfigError, Grant, Mask, Mode, Policy, ReleasedField, SharingClass};
use chrono::NaiveDate;
use crossgate_config::{Source, parse_utc_offset};
use crossgate_schema::Registry;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The zone grant and approval dates are judged in, e.g. `+08:00`.
    time_zone: Option<Spanned<String>>,
    #[serde(default)]
    catalog: Vec<Entry>,
    #[serde(default)]
    grant: Vec<GrantConfig>,
    #[serde(default)]
    approval: Vec<ApprovalConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    provider: Spanned<String>,
    record_type: Spanned<String>,
    class: Spanned<String>,
    condition: Option<String>,
    legal_basis: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantConfig {
    id: Spanned<String>,
    consumer: Spanned<String>,
    provider: Spanned<String>,
    record_type: Spanned<String>,
    mode: Spanned<String>,
    purposes: Spanned<Vec<String>>,
    fields: Spanned<Vec<String>>,
    masks: Option<Spanned<BTreeMap<String, String>>>,
    lookup: Option<Spanned<Vec<String>>>,
    max_records: Option<Spanned<i64>>,
    key: Option<Spanned<String>>,
    valid_from: Spanned<String>,
    valid_until: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalConfig {
    reference: Spanned<String>,
    consumer: Spanned<String>,
    provider: Spanned<String>,
    record_type: Spanned<String>,
    purpose: String,
    subject: Spanned<BTreeMap<String, String>>,
    uses: Option<Spanned<i64>>,
    authority: Option<String>,
    valid_from: Spanned<String>,
    valid_until: Spanned<String>,
}

/// Compile `catalog.toml`. `partners` are the known partner ids; every
/// record type and field path is checked against `registry`.
pub fn compile(
    file: &str,
    text: &str,
    partners: &[&str],
    registry: &Registry,
) -> Result<Policy, ConfigError> {
    let source = Source::new(file, text);
    let err = |span: std::ops::Range<usize>, message: String| source.error(span, message);
    let parsed: File = source.parse()?;
    let partner = |p: &Spanned<String>| -> Result<String, ConfigError> {
        if partners.contains(&p.get_ref().as_str()) {
            Ok(p.get_ref().clone())
        } else {
            Err(err(
                p.span(),
                format!(
                    "unknown partner {:?}; partners are listed in partners.toml: {}",
                    p.get_ref(),
                    partners.join(", ")
                ),
            ))
        }
    };
    let record_type = |t: &Spanned<String>| -> Result<String, ConfigError> {
        if registry.contains(t.get_ref()) {
            Ok(t.get_ref().clone())
        } else {
            let known: Vec<&str> = registry.record_types().map(|s| s.record_type).collect();
            Err(err(
                t.span(),
                format!(
                    "unknown record type {:?}; known: {}",
                    t.get_ref(),
                    known.join(", ")
                ),
            ))
        }
    };
    let date = |d: &Spanned<String>| -> Result<NaiveDate, ConfigError> {
        NaiveDate::parse_from_str(d.get_ref(), "%Y-%m-%d").map_err(|_| {
            err(
                d.span(),
                format!("{:?} is not a date; write YYYY-MM-DD", d.get_ref()),
            )
        })
    };

    let mut policy = Policy::default();
    if let Some(zone) = &parsed.time_zone {
        policy.time_zone = parse_utc_offset(zone.get_ref()).ok_or_else(|| {
            err(
                zone.span(),
                format!(
                    "{:?} is not a UTC offset; write it as +08:00 (the catalog's dates are judged in this zone)",
                    zone.get_ref()
                ),
            )
        })?;
    }
    for e in &parsed.catalog {
        let provider = partner(&e.provider)?;
        let rt = record_type(&e.record_type)?;
        let class = match e.class.get_ref().as_str() {
            "unconditional" => SharingClass::Unconditional,
            "conditional" => SharingClass::Conditional {
                condition: e.condition.clone().ok_or_else(|| {
                    err(e.class.span(), "a conditional entry needs `condition = \"...\"` saying what the condition is".into())
                })?,
            },
            "none" => SharingClass::None {
                legal_basis: e.legal_basis.clone().ok_or_else(|| {
                    err(e.class.span(), "an entry of class none needs `legal_basis = \"...\"`".into())
                })?,
            },
            other => {
                return Err(err(
                    e.class.span(),
                    format!("unknown sharing class {other:?}; use unconditional, conditional or none"),
                ));
            }
        };
        let by_type = policy.classes.entry(provider.clone()).or_default();
        if by_type.insert(rt.clone(), class).is_some() {
            return Err(err(
                e.record_type.span(),
                format!("{rt} of {provider} is listed twice; keep one entry"),
            ));
        }
    }

    for g in &parsed.grant {
        let id = g.id.get_ref().clone();
        if policy.grants.iter().any(|x| x.id == id) {
            return Err(err(g.id.span(), format!("grant id {id:?} is used twice")));
        }
        let consumer = partner(&g.consumer)?;
        let provider = partner(&g.provider)?;
        let rt = record_type(&g.record_type)?;
        if policy.class(&provider, &rt).is_none() {
            return Err(err(
                g.record_type.span(),
                format!(
                    "grant {id} shares {rt} of {provider}, which the catalog does not list; add a [[catalog]] entry"
                ),
            ));
        }
        let mode = Mode::parse(g.mode.get_ref()).ok_or_else(|| {
            err(
                g.mode.span(),
                format!("unknown mode {:?}; use publish or query", g.mode.get_ref()),
            )
        })?;
        if g.purposes.get_ref().is_empty() {
            return Err(err(
                g.purposes.span(),
                format!(
                    "grant {id} names no purpose; data may be used only for a declared purpose"
                ),
            ));
        }
        let mut fields = Vec::new();
        for pointer in g.fields.get_ref() {
            if !is_field(registry, &rt, pointer) {
                return Err(err(
                    g.fields.span(),
                    format!(
                        "{pointer} is not a field of {rt}; see schemas/{rt}.json (write lists as /goods/-/hs_code)"
                    ),
                ));
            }
            fields.push(ReleasedField::new(pointer, None));
        }
        let no_masks = BTreeMap::new();
        let (masks, masks_span) = match &g.masks {
            Some(m) => (m.get_ref(), m.span()),
            None => (&no_masks, 0..0),
        };
        for (pointer, mask) in masks {
            let mask = Mask::parse(mask).map_err(|m| err(masks_span.clone(), m))?;
            let released = fields
                .iter()
                .any(|f| pointer == &f.pointer || pointer.starts_with(&format!("{}/", f.pointer)));
            if !is_field(registry, &rt, pointer) {
                return Err(err(
                    masks_span.clone(),
                    format!(
                        "mask on {pointer}, which is not a field of {rt}; write lists as /members/-/id_number"
                    ),
                ));
            }
            if !released {
                return Err(err(
                    masks_span.clone(),
                    format!("mask on {pointer}, which grant {id} does not release"),
                ));
            }
            fields.push(ReleasedField::new(pointer, Some(mask)));
        }
        if fields.is_empty() {
            return Err(err(
                g.fields.span(),
                format!("grant {id} releases no field"),
            ));
        }
        let (valid_from, valid_until) = (date(&g.valid_from)?, date(&g.valid_until)?);
        if valid_until < valid_from {
            return Err(err(
                g.valid_until.span(),
                format!("grant {id} ends before it starts"),
            ));
        }
        let (lookup, max_records) = match mode {
            Mode::Query => {
                let Some(lookup) = &g.lookup else {
                    return Err(err(
                        g.mode.span(),
                        format!(
                            "query grant {id} needs `lookup = [\"/...\"]`: the fields {consumer} may look {rt} records up by"
                        ),
                    ));
                };
                if lookup.get_ref().is_empty() {
                    return Err(err(
                        lookup.span(),
                        format!("grant {id} allows no lookup; name at least one field"),
                    ));
                }
                for pointer in lookup.get_ref() {
                    if pointer.split('/').any(|s| s == "-") || !is_field(registry, &rt, pointer) {
                        return Err(err(
                            lookup.span(),
                            format!(
                                "lookup {pointer} is not a field of {rt} outside a list; see schemas/{rt}.json"
                            ),
                        ));
                    }
                }
                let max = match &g.max_records {
                    None => 1,
                    Some(m) => usize::try_from(*m.get_ref())
                        .ok()
                        .filter(|&n| (1..=crate::MAX_ANSWER_RECORDS).contains(&n))
                        .ok_or_else(|| {
                            err(
                                m.span(),
                                format!(
                                    "max_records of grant {id} is a whole number from 1 to {}",
                                    crate::MAX_ANSWER_RECORDS
                                ),
                            )
                        })?,
                };
                (lookup.get_ref().clone(), max)
            }
            Mode::Publish => {
                if let Some(span) = g
                    .lookup
                    .as_ref()
                    .map(Spanned::span)
                    .or(g.max_records.as_ref().map(Spanned::span))
                {
                    return Err(err(
                        span,
                        format!(
                            "publish grant {id} takes no lookup or max_records; they belong to query grants"
                        ),
                    ));
                }
                (Vec::new(), 0)
            }
        };
        let key = match &g.key {
            None => None,
            Some(k) => {
                let released_whole = fields
                    .iter()
                    .any(|f| f.pointer == *k.get_ref() && f.mask.is_none())
                    && !fields.iter().any(|f| {
                        f.mask.is_some()
                            && (f.pointer == *k.get_ref()
                                || f.pointer.starts_with(&format!("{}/", k.get_ref())))
                    });
                if !released_whole || k.get_ref().split('/').any(|s| s == "-") {
                    return Err(err(
                        k.span(),
                        format!(
                            "key {} of grant {id} must be one of its released fields, unmasked and outside a list",
                            k.get_ref()
                        ),
                    ));
                }
                Some(k.get_ref().clone())
            }
        };
        let withheld = registry
            .leaf_paths(&rt)
            .into_iter()
            .filter(|leaf| {
                !fields.iter().any(|f| {
                    f.mask.is_none()
                        && (*leaf == f.pointer || leaf.starts_with(&format!("{}/", f.pointer)))
                })
            })
            .collect();
        let grant = Grant {
            withheld,
            id,
            consumer,
            provider,
            record_type: rt,
            mode,
            purposes: g.purposes.get_ref().clone(),
            fields,
            lookup,
            max_records,
            key,
            valid_from,
            valid_until,
        };
        if let Some(other) = policy.grants.iter().find(|o| disagree(o, &grant)) {
            return Err(err(
                g.id.span(),
                format!(
                    "grants {} and {} overlap (same consumer, provider, record type, mode, a shared purpose and overlapping validity) but release different fields, lookups or keys; merge them",
                    other.id, grant.id
                ),
            ));
        }
        let index = policy.grants.len();
        match mode {
            Mode::Query => policy
                .query
                .entry(grant.consumer.clone())
                .or_default()
                .entry(grant.provider.clone())
                .or_default()
                .entry(grant.record_type.clone())
                .or_default()
                .push(index),
            Mode::Publish => policy
                .publish
                .entry(grant.provider.clone())
                .or_default()
                .entry(grant.record_type.clone())
                .or_default()
                .push(index),
        }
        policy.grants.push(grant);
    }

    for a in &parsed.approval {
        let reference = a.reference.get_ref().clone();
        let consumer = partner(&a.consumer)?;
        let provider = partner(&a.provider)?;
        let rt = record_type(&a.record_type)?;
        // The subject must be something a query grant lets this consumer
        // look up, or the approval could never be used.
        let lookups: Vec<&String> = policy
            .grants
            .iter()
            .filter(|g| {
                g.mode == Mode::Query
                    && g.consumer == consumer
                    && g.provider == provider
                    && g.record_type == rt
            })
            .flat_map(|g| &g.lookup)
            .collect();
        if a.subject.get_ref().is_empty() {
            return Err(err(
                a.subject.span(),
                format!(
                    "approval {reference} names no subject; write e.g. subject = {{ \"/household_id\" = \"...\" }}"
                ),
            ));
        }
        for path in a.subject.get_ref().keys() {
            if !lookups.contains(&path) {
                return Err(err(
                    a.subject.span(),
                    format!(
                        "approval {reference} names {path}, which no query grant lets {consumer} look {rt} of {provider} up by"
                    ),
                ));
            }
        }
        let uses = match &a.uses {
            None => None,
            Some(u) => Some(
                u32::try_from(*u.get_ref())
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        err(
                            u.span(),
                            format!("uses of approval {reference} is a whole number of at least 1"),
                        )
                    })?,
            ),
        };
        let approval = Approval {
            consumer,
            provider,
            record_type: rt,
            purpose: a.purpose.clone(),
            subject: a
                .subject
                .get_ref()
                .iter()
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect(),
            uses,
            authority: a.authority.clone(),
            valid_from: date(&a.valid_from)?,
            valid_until: date(&a.valid_until)?,
            reference: reference.clone(),
        };
        if policy
            .approvals
            .insert(reference.clone(), approval)
            .is_some()
        {
            return Err(err(
                a.reference.span(),
                format!("approval {reference:?} is listed twice"),
            ));
        }
    }
    Ok(policy)
}

/// A field path of `record_type`'s schema as grants write them: a JSON
/// Pointer whose list elements are `-` (every element). A numeric index
/// (`/members/0/id_number`) is refused: it would name one element the
/// projection cannot single out, so a mask on it would hide nothing.
fn is_field(registry: &Registry, record_type: &str, pointer: &str) -> bool {
    pointer.starts_with('/')
        && !pointer
            .split('/')
            .skip(1)
            .any(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        && registry.schema_at(record_type, pointer).is_some()
}

fn disagree(a: &Grant, b: &Grant) -> bool {
    a.consumer == b.consumer
        && a.provider == b.provider
        && a.record_type == b.record_type
        && a.mode == b.mode
        && a.purposes.iter().any(|p| b.purposes.contains(p))
        && a.valid_from <= b.valid_until
        && b.valid_from <= a.valid_until
        && (a.fields != b.fields
            || a.lookup != b.lookup
            || a.max_records != b.max_records
            || a.key != b.key)
}
