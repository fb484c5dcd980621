//! Applying compiled field rules to documents, in both directions.

use crate::{CompiledField, MapFault, RecordMapping};
use serde_json::{Map, Value};

impl RecordMapping {
    /// Native → canonical without schema validation: the document built from
    /// every field that mapped, and a fault for every field that did not.
    pub fn to_canonical(&self, native: &Value) -> (Value, Vec<MapFault>) {
        let mut out = Value::Object(Map::new());
        let mut faults = Vec::new();
        if !native.is_object() {
            faults.push(MapFault {
                native: "(record)".into(),
                canonical: String::new(),
                message: "a native record must be a JSON object".into(),
            });
            return (out, faults);
        }
        inbound_fields(&self.fields, native, &mut out, &Ctx::ROOT, &mut faults);
        (out, faults)
    }

    /// Canonical → native, for departments that take deliveries in their own
    /// format. Fields absent from the canonical record (withheld by the
    /// catalog) are left out of the native one.
    pub fn outbound(&self, canonical: &Value) -> Result<Value, Vec<MapFault>> {
        let mut out = Value::Object(Map::new());
        let mut faults = Vec::new();
        outbound_fields(&self.fields, canonical, &mut out, &Ctx::ROOT, &mut faults);
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

fn inbound_fields(
    fields: &[CompiledField],
    native: &Value,
    out: &mut Value,
    ctx: &Ctx<'_>,
    faults: &mut Vec<MapFault>,
) {
    for field in fields {
        let value = match &field.native {
            Some(path) => path.get(native).filter(|v| !v.is_null()),
            None => None,
        };
        let value = match (value, &field.constant, &field.default) {
            (_, Some(c), _) => {
                set(out, &field.canonical, c.clone());
                continue;
            }
            (Some(v), _, _) => v,
            (None, _, Some(d)) => d,
            // Absent: the schema says whether that is a fault.
            (None, _, None) => continue,
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
                if element.is_object() {
                    inbound_fields(items, element, &mut obj, &inner, faults);
                } else {
                    faults.push(inner.element_fault("expected an object"));
                }
                mapped.push(obj);
            }
            set(out, &field.canonical, Value::Array(mapped));
            continue;
        }
        match field.transform.inbound(value, field.text) {
            Ok(v) => set(out, &field.canonical, v),
            Err(message) => faults.push(ctx.fault(field, message)),
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
                outbound_fields(items, element, &mut obj, &inner, faults);
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
            return native_for(items, &inner, &prefix)
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
