//! Declarative mapping between a department's native records and the
//! canonical records of `schemas/`, in both directions.
//!
//! A department file (`deploy/local/departments/<id>.toml`) declares, per kind
//! of native record, which native field goes to which canonical JSON Pointer
//! and how its value is read: type coercion, date formats, code tables,
//! upper-casing and trimming, constants and defaults, Chinese amounts, lists
//! of objects. The file is compiled once against the schemas ([`compile`]);
//! mapping a record is then pure computation that reports **every** fault at
//! once, each with the native field and the canonical path it maps to.
//!
//! This crate does no I/O: callers read the file and hand over its text.
#![forbid(unsafe_code)]

mod config;
mod engine;
pub mod transform;

pub use config::compile;

use crossgate_schema::Registry;
use serde_json::Value;
use transform::{TextOptions, Transform};

/// A department's compiled mapping file.
#[derive(Debug)]
pub struct DepartmentMapping {
    pub department: String,
    pub records: Vec<RecordMapping>,
}

/// The mapping of one kind of native record to one canonical record type.
#[derive(Debug)]
pub struct RecordMapping {
    pub native_type: String,
    pub record_type: String,
    pub outbound: bool,
    id_field: Option<NativePath>,
    fields: FieldSet,
}

/// The field rules of one level (a record, or the elements of a list), and
/// the shape of the canonical object they fill, planned at load so that
/// mapping builds each object once without looking parents up again.
#[derive(Debug)]
pub(crate) struct FieldSet {
    fields: Vec<CompiledField>,
    plan: Vec<(String, PlanNode)>,
}

#[derive(Debug)]
pub(crate) enum PlanNode {
    /// Filled by the field at this index.
    Leaf(usize),
    /// An object with these members, left out when none of them is filled.
    Object(Vec<(String, PlanNode)>),
}

impl FieldSet {
    /// Plan the canonical shape; `Err(i)` when field `i`'s path collides with
    /// an earlier field's.
    pub(crate) fn new(fields: Vec<CompiledField>) -> Result<Self, usize> {
        fn insert(
            level: &mut Vec<(String, PlanNode)>,
            segments: &[String],
            i: usize,
        ) -> Result<(), usize> {
            let Some((first, rest)) = segments.split_first() else {
                return Err(i);
            };
            let pos = level.iter().position(|(k, _)| k == first);
            match (pos, rest.is_empty()) {
                (Some(_), true) => Err(i),
                (None, true) => {
                    level.push((first.clone(), PlanNode::Leaf(i)));
                    Ok(())
                }
                (Some(p), false) => match &mut level[p].1 {
                    PlanNode::Object(children) => insert(children, rest, i),
                    PlanNode::Leaf(_) => Err(i),
                },
                (None, false) => {
                    let mut children = Vec::new();
                    insert(&mut children, rest, i)?;
                    level.push((first.clone(), PlanNode::Object(children)));
                    Ok(())
                }
            }
        }
        let mut fields = fields;
        for i in 0..fields.len() {
            let shared = fields[i].native.as_ref().is_some_and(|n| {
                fields
                    .iter()
                    .enumerate()
                    .any(|(j, f)| j != i && f.native.as_ref().is_some_and(|m| m.text == n.text))
            });
            fields[i].shared_native = shared;
        }
        let mut plan = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            insert(&mut plan, &f.canonical, i)?;
        }
        Ok(FieldSet { fields, plan })
    }
}

#[derive(Debug)]
pub(crate) struct CompiledField {
    native: Option<NativePath>,
    canonical: Vec<String>,
    canonical_text: String,
    transform: Transform,
    text: TextOptions,
    constant: Option<Value>,
    default: Option<Value>,
    items: Option<FieldSet>,
    /// Another field of the same level reads the same native field, so the
    /// value is copied rather than moved out of the native record.
    shared_native: bool,
}

/// A native field path: dotted segments (`address.city`).
#[derive(Debug, Clone)]
pub struct NativePath {
    segments: Vec<String>,
    text: String,
}

impl NativePath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "native field {text:?} has an empty segment; write e.g. \"address.city\""
            ));
        }
        Ok(NativePath {
            segments,
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `doc`, mutably.
    pub fn get_mut<'a>(&self, doc: &'a mut Value) -> Option<&'a mut Value> {
        self.segments
            .iter()
            .try_fold(doc, |node, seg| node.get_mut(seg))
    }

    /// The value at this path in `doc`, if any.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(doc, |node, seg| node.get(seg))
    }
}

/// One fault of a record: the native field, the canonical path it maps to, and
/// what is wrong. Displayed as `<native> -> <pointer>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFault {
    pub native: String,
    pub canonical: String,
    pub message: String,
}

impl std::fmt::Display for MapFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let canonical = if self.canonical.is_empty() {
            "(record)"
        } else {
            &self.canonical
        };
        write!(f, "{} -> {canonical}: {}", self.native, self.message)
    }
}

/// A department file that cannot be used: `<file>:<line>: <message>`.
pub use crossgate_config::ConfigError;

/// A native record turned into a valid canonical one.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub record_type: String,
    /// The native id field's value, if the mapping names one.
    pub record_id: Option<String>,
    pub document: Value,
}

impl Mapped {
    /// The canonical record as JSON bytes, written into one buffer sized
    /// from `size_hint` (the native record's length is a good one) instead
    /// of a buffer that grows and copies as it fills.
    pub fn to_json(&self, size_hint: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size_hint.max(64));
        // Writing a `Value` into a Vec cannot fail: its keys are strings.
        let _ = serde_json::to_writer(&mut out, &self.document);
        out
    }
}

impl DepartmentMapping {
    /// The mapping for a native record type.
    pub fn native(&self, native_type: &str) -> Option<&RecordMapping> {
        self.records.iter().find(|r| r.native_type == native_type)
    }

    /// The mapping for a canonical record type.
    pub fn canonical(&self, record_type: &str) -> Option<&RecordMapping> {
        self.records.iter().find(|r| r.record_type == record_type)
    }

    /// Which mapping a native record belongs to: the only one, or the first
    /// whose id field the record has.
    pub fn detect_native(&self, doc: &Value) -> Option<&RecordMapping> {
        if let [only] = self.records.as_slice() {
            return Some(only);
        }
        self.records
            .iter()
            .find(|r| r.id_field.as_ref().is_some_and(|f| f.get(doc).is_some()))
    }

    /// Which mapping a canonical record belongs to: the only one, or the first
    /// whose id field's canonical path the record has.
    pub fn detect_canonical(&self, doc: &Value) -> Option<&RecordMapping> {
        if let [only] = self.records.as_slice() {
            return Some(only);
        }
        self.records.iter().find(|r| {
            r.id_canonical_path()
                .is_some_and(|p| doc.pointer(p).is_some())
        })
    }
}

impl RecordMapping {
    /// Native → canonical, then validated against the record type's schema.
    /// Every fault at once, mapping faults first.
    pub fn inbound(&self, native: &Value, registry: &Registry) -> Result<Mapped, Vec<MapFault>> {
        self.inbound_owned(native.clone(), registry)
    }

    /// As [`RecordMapping::inbound`], consuming the native record so that its
    /// values move into the canonical one instead of being copied.
    pub fn inbound_owned(
        &self,
        native: Value,
        registry: &Registry,
    ) -> Result<Mapped, Vec<MapFault>> {
        let record_id = self.record_id(&native);
        let (document, mut faults) = self.to_canonical_owned(native);
        if let Err(rejection) = registry.validate(&self.record_type, &document) {
            for fault in rejection.faults() {
                // A field that failed to map is absent, so the schema reports it
                // again as missing: say it once.
                if faults.iter().any(|f| f.canonical == fault.path) {
                    continue;
                }
                faults.push(MapFault {
                    native: self.native_for(&fault.path),
                    canonical: fault.path,
                    message: fault.message,
                });
            }
        }
        if faults.is_empty() {
            Ok(Mapped {
                record_type: self.record_type.clone(),
                record_id,
                document,
            })
        } else {
            Err(faults)
        }
    }

    /// The native id field's value as text.
    pub fn record_id(&self, native: &Value) -> Option<String> {
        match self.id_field.as_ref()?.get(native)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The canonical pointer the id field maps to.
    pub fn id_canonical_path(&self) -> Option<&str> {
        let id = self.id_field.as_ref()?;
        self.fields
            .fields
            .iter()
            .find(|f| f.native.as_ref().is_some_and(|n| n.text == id.text))
            .map(|f| f.canonical_text.as_str())
    }

    /// A query condition on a canonical field, as the native field (a JSON
    /// Pointer into the native record) and the native value, so that a
    /// department's system can be asked in its own terms. `None` when the
    /// canonical field is not mapped from a single native field.
    pub fn native_criterion(&self, canonical: &str, value: &str) -> Option<(String, Value)> {
        let field =
            self.fields.fields.iter().find(|f| {
                f.canonical_text == canonical && f.items.is_none() && f.constant.is_none()
            })?;
        let native = field.native.as_ref()?;
        let native_value = field
            .transform
            .outbound(&Value::String(value.to_owned()))
            .ok()?;
        let pointer: String = native.segments.iter().map(|s| format!("/{s}")).collect();
        Some((pointer, native_value))
    }

    /// The native field a canonical path comes from, for fault reports:
    /// `goods[1].unit` for `/goods/1/unit`.
    pub fn native_for(&self, canonical: &str) -> String {
        engine::native_for(&self.fields.fields, canonical, "")
            .unwrap_or_else(|| "(record)".to_owned())
    }
}

/// The segments of a JSON Pointer (`/a/b~1c` → `a`, `b/c`).
pub(crate) fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests;
