//! Applying compiled field rules to documents, in both directions.

use crate::{CompiledField, FieldSet, MapFault, PlanNode, RecordMapping};
use serde_json::{Map, Value};

impl RecordMapping {
    /// Native → canonical without schema validation: the document built from
    /// every field that mapped, and a fault for every field that did not.
    pub fn to_canonical(&self, native: &Value) -> (Value, Vec<MapFault>) {
        self.to_canonical_owned(native.clone())
    }

    /// As [`RecordMapping::to_canonical`], moving values out of `native`.
    pub fn to_canonical_owned(&self, mut native: Value) -> (Value, Vec<MapFault>) {
        let mut faults = Vec::new();
        if !native.is_object() {
            faults.push(MapFault {
                native: "(record)".into(),
                canonical: String::new(),
                message: "a native record must be a JSON object".into(),
            });
            return (Value::Object(Map::new()), faults);
        }
        let out = Value::Object(inbound_fields(
            &self.fields,
            &mut native,
            &Ctx::ROOT,
            &mut faults,
        ));
        (out, faults)
    }

    /// Canonical → native, for departments that take deliveries in their own
    /// format. Fields absent from the canonical record (withheld by the
    /// catalog) are left out of the native one.
    pub fn outbound(&self, canonical: &Value) -> Result<Value, Vec<MapFault>> {
        let mut out = Value::Object(Map::new());
        let mut faults = Vec::new();
        outbound_fields(
            &self.fields.fields,
            canonical,
            &mut out,
            &Ctx::ROOT,
            &mut faults,
        );
        if faults.is_empty() {
            Ok(out)
        } else {
            Err(faults)
        }
    }
}

/// Where we are, for fault messages only: a chain of (list field, index)
/// steps, turned into text only when a fault is reported.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    parent: Option<(&'a Ctx<'a>, &'a CompiledField, usize)>,
}

impl Ctx<'_> {
    const ROOT: Ctx<'static> = Ctx { parent: None };

    fn prefixes(&self) -> (String, String) {
        match self.parent {
            None => (String::new(), String::new()),
            Some((up, field, i)) => {
                let (native, canonical) = up.prefixes();
                let name = field.native.as_ref().map_or("", |n| n.as_str());
                (
                    format!("{native}{name}[{i}]."),
                    format!("{canonical}{}/{i}", field.canonical_text),
                )
            }
        }
    }

    fn fault(&self, field: &CompiledField, message: String) -> MapFault {
        let (native_prefix, canonical_prefix) = self.prefixes();
        let native = field.native.as_ref().map_or("(constant)", |n| n.as_str());
        MapFault {
            native: format!("{native_prefix}{native}"),
            canonical: format!("{canonical_prefix}{}", field.canonical_text),
            message,
        }
    }

    /// A fault about the list element itself.
    fn element_fault(&self, message: &str) -> MapFault {
        let (native, canonical) = self.prefixes();
        MapFault {
            native: native.trim_end_matches('.').to_owned(),
            canonical,
            message: message.to_owned(),
        }
    }
}

/// Build the canonical object of one level along its plan.
fn inbound_fields(
    set: &FieldSet,
    native: &mut Value,
    ctx: &Ctx<'_>,
    faults: &mut Vec<MapFault>,
) -> Map<String, Value> {
    build(&set.plan, &set.fields, native, ctx, faults)
}

fn build(
    level: &[(String, PlanNode)],
    fields: &[CompiledField],
    native: &mut Value,
    ctx: &Ctx<'_>,
    faults: &mut Vec<MapFault>,
) -> Map<String, Value> {
    // The plan's keys are in order: collected, the map is built in bulk
    // instead of searched once per key.
    let mut entries = Vec::with_capacity(level.len());
    for (key, node) in level {
        let value = match node {
            PlanNode::Leaf(i) => inbound_value(&fields[*i], native, ctx, faults),
            PlanNode::Object(children) => {
                let inner = build(children, fields, native, ctx, faults);
                (!inner.is_empty()).then_some(Value::Object(inner))
            }
        };
        if let Some(v) = value {
            entries.push((key.clone(), v));
        }
    }
    entries.into_iter().collect()
}

/// The canonical value of one field, `None` when the native record does not
/// have it (the schema says whether that is a fault) or it failed to map.
fn inbound_value(
    field: &CompiledField,
    native: &mut Value,
    ctx: &Ctx<'_>,
    faults: &mut Vec<MapFault>,
) -> Option<Value> {
    if let Some(c) = &field.constant {
        return Some(c.clone());
    }
    let found = field
        .native
        .as_ref()
        .and_then(|path| path.get_mut(native))
        .filter(|v| !v.is_null())
        .map(|v| {
            if field.shared_native {
                v.clone()
            } else {
                std::mem::take(v)
            }
        });
    let value = match found {
        Some(v) => v,
        None => field.default.clone()?,
    };
    if let Some(items) = &field.items {
        let Value::Array(list) = value else {
            faults.push(ctx.fault(field, "expected a list".into()));
            return None;
        };
        let mut mapped = Vec::with_capacity(list.len());
        for (i, mut element) in list.into_iter().enumerate() {
            let inner = Ctx {
                parent: Some((ctx, field, i)),
            };
            if element.is_object() {
                mapped.push(Value::Object(inbound_fields(
                    items,
                    &mut element,
                    &inner,
                    faults,
                )));
            } else {
                faults.push(inner.element_fault("expected an object"));
                mapped.push(Value::Object(Map::new()));
            }
        }
        return Some(Value::Array(mapped));
    }
    match field.transform.inbound_owned(value, field.text) {
        Ok(v) => Some(v),
        Err(message) => {
            faults.push(ctx.fault(field, message));
            None
        }
    }
}

fn outbound_fields(
    fields: &[CompiledField],
    canonical: &Value,
    out: &mut Value,
    ctx: &Ctx<'_>,
    faults: &mut Vec<MapFault>,
) {
    for field in fields {
        let Some(native) = &field.native else {
            continue;
        };
        let Some(value) = get(canonical, &field.canonical) else {
            continue;
        };
        if let Some(items) = &field.items {
            let Some(list) = value.as_array() else {
                faults.push(ctx.fault(field, "expected a list".into()));
                continue;
            };
            let mut mapped = Vec::with_capacity(list.len());
            for (i, element) in list.iter().enumerate() {
                let inner = Ctx {
                    parent: Some((ctx, field, i)),
                };
                let mut obj = Value::Object(Map::new());
                outbound_fields(&items.fields, element, &mut obj, &inner, faults);
                mapped.push(obj);
            }
            set(out, &native.segments, Value::Array(mapped));
            continue;
        }
        match field.transform.outbound(value) {
            Ok(v) => set(out, &native.segments, v),
            Err(message) => faults.push(ctx.fault(field, message)),
        }
    }
}

fn get<'a>(doc: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments.iter().try_fold(doc, |node, seg| node.get(seg))
}

/// Set `value` at `segments` under `doc`, creating objects on the way.
fn set(doc: &mut Value, segments: &[String], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut node = doc;
    for seg in parents {
        let Value::Object(map) = node else { return };
        // Look up before inserting: most parents exist already, and an
        // entry() would allocate the key every time.
        if !map.contains_key(seg) {
            map.insert(seg.clone(), Value::Object(Map::new()));
        }
        let Some(next) = map.get_mut(seg) else { return };
        node = next;
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), value);
    }
}

/// The native field for a canonical path: exact field, a list element's
/// field, or the first field under a parent path.
pub(crate) fn native_for(
    fields: &[CompiledField],
    canonical: &str,
    native_prefix: &str,
) -> Option<String> {
    for field in fields {
        let Some(rest) = canonical.strip_prefix(field.canonical_text.as_str()) else {
            continue;
        };
        let native = field.native.as_ref().map_or("(constant)", |n| n.as_str());
        if rest.is_empty() {
            return Some(format!("{native_prefix}{native}"));
        }
        if !rest.starts_with('/') {
            continue;
        }
        if let Some(items) = &field.items {
            let mut parts = rest[1..].splitn(2, '/');
            let index = parts.next().unwrap_or_default();
            let inner = parts.next().map(|r| format!("/{r}")).unwrap_or_default();
            let prefix = format!("{native_prefix}{native}[{index}].");
            if inner.is_empty() {
                return Some(prefix.trim_end_matches('.').to_owned());
            }
            return native_for(&items.fields, &inner, &prefix)
                .or(Some(prefix.trim_end_matches('.').to_owned()));
        }
    }
    // A parent of mapped fields, e.g. /transport: name the first field under it.
    let under = format!("{canonical}/");
    fields
        .iter()
        .find(|f| f.canonical_text.starts_with(&under))
        .map(|f| {
            format!(
                "{native_prefix}{}",
                f.native.as_ref().map_or("(constant)", |n| n.as_str())
            )
        })
}
