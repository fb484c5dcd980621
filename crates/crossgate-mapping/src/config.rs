//! The department mapping file (`deploy/<env>/departments/<id>.toml`): its
//! serde shape, and its compilation into rules checked against the schemas.
//! Every problem names the file, the line and the fix.

use crate::transform::{TextOptions, Transform};
use crate::{CompiledField, ConfigError, DepartmentMapping, FieldSet, NativePath, RecordMapping};
use crossgate_schema::Registry;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    department: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    record: Vec<RecordConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordConfig {
    /// The department's name for this kind of record, e.g. "persons".
    native_type: Spanned<String>,
    /// The canonical record type it becomes, e.g. "person.v1".
    record_type: Spanned<String>,
    /// Native field holding the record's own id (also how JSON input is matched to this mapping).
    id_field: Option<Spanned<String>>,
    /// Whether records of this type delivered to the department are mapped back to native.
    #[serde(default)]
    outbound: bool,
    #[serde(default)]
    field: Vec<FieldConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldConfig {
    /// Native field, dotted for nesting (`a.b`). Absent for constants.
    native: Option<Spanned<String>>,
    /// Canonical JSON Pointer, relative to the record (or to the list item).
    canonical: Spanned<String>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    date: Option<Spanned<String>>,
    datetime: Option<Spanned<String>>,
    codes: Option<Spanned<toml::Table>>,
    amount: Option<Spanned<String>>,
    #[serde(default)]
    upper: bool,
    #[serde(default = "yes")]
    trim: bool,
    #[serde(rename = "const")]
    constant: Option<Spanned<toml::Value>>,
    default: Option<Spanned<toml::Value>>,
    /// Rules for each element when the field is a list of objects.
    #[serde(default)]
    item: Vec<FieldConfig>,
}

fn yes() -> bool {
    true
}

/// Compile the text of one department file, checking every path, code and
/// format against the schemas in `registry`.
pub fn compile(
    file: &str,
    text: &str,
    registry: &Registry,
) -> Result<DepartmentMapping, ConfigError> {
    let source = crossgate_config::Source::new(file, text);
    let at = |span: std::ops::Range<usize>, message: String| source.error(span, message);
    let parsed: FileConfig = source.parse()?;
    let mut records = Vec::with_capacity(parsed.record.len());
    for rc in &parsed.record {
        let record_type = rc.record_type.get_ref();
        if !registry.contains(record_type) {
            let known: Vec<&str> = registry.record_types().map(|s| s.record_type).collect();
            return Err(at(
                rc.record_type.span(),
                format!(
                    "unknown record type {record_type:?}; known types: {}",
                    known.join(", ")
                ),
            ));
        }
        if records
            .iter()
            .any(|r: &RecordMapping| r.native_type == *rc.native_type.get_ref())
        {
            return Err(at(
                rc.native_type.span(),
                format!(
                    "native_type {:?} is mapped twice; keep one [[record]]",
                    rc.native_type.get_ref()
                ),
            ));
        }
        let fields = compile_fields(&rc.field, record_type, "", &at, registry)?;
        let id_field = rc
            .id_field
            .as_ref()
            .map(|f| NativePath::parse(f.get_ref()).map_err(|m| at(f.span(), m)))
            .transpose()?;
        records.push(RecordMapping {
            native_type: rc.native_type.get_ref().clone(),
            record_type: record_type.clone(),
            id_field,
            outbound: rc.outbound,
            fields,
        });
    }
    let _ = parsed.description;
    Ok(DepartmentMapping {
        department: parsed.department.into_inner(),
        records,
    })
}

fn compile_fields(
    configs: &[FieldConfig],
    record_type: &str,
    prefix: &str,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    registry: &Registry,
) -> Result<FieldSet, ConfigError> {
    let mut out = Vec::with_capacity(configs.len());
    for fc in configs {
        let canonical = fc.canonical.get_ref();
        if !canonical.starts_with('/') || canonical.len() < 2 {
            return Err(at(
                fc.canonical.span(),
                format!("canonical path {canonical:?} must be a JSON Pointer such as \"/name\""),
            ));
        }
        let full = format!("{prefix}{canonical}");
        let Some(target) = registry.schema_at(record_type, &full) else {
            return Err(at(
                fc.canonical.span(),
                format!("{full} is not a field of {record_type}; see schemas/{record_type}.json"),
            ));
        };
        let native = fc
            .native
            .as_ref()
            .map(|n| NativePath::parse(n.get_ref()).map_err(|m| at(n.span(), m)))
            .transpose()?;
        if native.is_none() && fc.constant.is_none() {
            return Err(at(
                fc.canonical.span(),
                format!(
                    "field for {full} needs `native = \"...\"` (or `const = ...` for a fixed value)"
                ),
            ));
        }
        let transform = transform_of(fc, &full, target, at)?;
        let items = if fc.item.is_empty() {
            None
        } else {
            if target.get("type").and_then(Value::as_str) != Some("array") {
                return Err(at(
                    fc.canonical.span(),
                    format!("{full} is not a list, so it cannot have [[...item]] rules"),
                ));
            }
            Some(compile_fields(
                &fc.item,
                record_type,
                &format!("{full}/0"),
                at,
                registry,
            )?)
        };
        let constant = fc.constant.as_ref().map(|c| to_json(c.get_ref()));
        let default = fc.default.as_ref().map(|c| to_json(c.get_ref()));
        out.push(CompiledField {
            native,
            canonical: crate::pointer_segments(canonical),
            canonical_text: canonical.clone(),
            transform,
            text: TextOptions {
                trim: fc.trim,
                upper: fc.upper,
            },
            constant,
            default,
            items,
            shared_native: false,
        });
    }
    FieldSet::new(out).map_err(|i| {
        at(
            configs[i].canonical.span(),
            format!(
                "{prefix}{} overlaps the path of another field; each canonical path may be filled by one field",
                configs[i].canonical.get_ref()
            ),
        )
    })
}

fn transform_of(
    fc: &FieldConfig,
    full: &str,
    target: &Value,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Transform, ConfigError> {
    let chosen = [
        fc.kind.is_some(),
        fc.date.is_some(),
        fc.datetime.is_some(),
        fc.codes.is_some(),
        fc.amount.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen > 1 {
        return Err(at(
            fc.canonical.span(),
            format!(
                "field for {full} has more than one of type, date, datetime, codes, amount; choose one"
            ),
        ));
    }
    if let Some(k) = &fc.kind {
        return match k.get_ref().as_str() {
            "string" => Ok(Transform::Text),
            "integer" => Ok(Transform::Integer),
            "number" => Ok(Transform::Number),
            "boolean" => Ok(Transform::Boolean),
            other => Err(at(
                k.span(),
                format!("unknown type {other:?}; use string, integer, number or boolean"),
            )),
        };
    }
    if let Some(d) = &fc.date {
        check_date_format(d.get_ref(), false).map_err(|m| at(d.span(), m))?;
        return Ok(Transform::Date(d.get_ref().as_str().into()));
    }
    if let Some(d) = &fc.datetime {
        if d.get_ref().eq_ignore_ascii_case("rfc3339") {
            return Ok(Transform::DateTime(None));
        }
        check_date_format(d.get_ref(), true).map_err(|m| at(d.span(), m))?;
        return Ok(Transform::DateTime(Some(d.get_ref().clone())));
    }
    if let Some(a) = &fc.amount {
        if a.get_ref() != "cn" {
            return Err(at(
                a.span(),
                format!(
                    "unknown amount style {:?}; the supported style is \"cn\" (100万元人民币)",
                    a.get_ref()
                ),
            ));
        }
        return Ok(Transform::Amount);
    }
    if let Some(codes) = &fc.codes {
        let allowed = target.get("enum").and_then(Value::as_array);
        let mut inbound: Vec<(String, Value)> = Vec::new();
        let mut outbound: Vec<(String, String)> = Vec::new();
        let mut listed = Vec::new();
        for (code, value) in codes.get_ref() {
            let Some(canonical) = value.as_str() else {
                return Err(at(
                    codes.span(),
                    format!("code {code:?} must map to a text value"),
                ));
            };
            if let Some(allowed) = allowed
                && !allowed.iter().any(|a| a.as_str() == Some(canonical))
            {
                let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                return Err(at(
                    codes.span(),
                    format!(
                        "code {code:?} maps to {canonical:?}, which {full} does not allow; allowed: {}",
                        names.join(", ")
                    ),
                ));
            }
            inbound.push((code.clone(), Value::String(canonical.to_owned())));
            if !outbound.iter().any(|(v, _)| v == canonical) {
                outbound.push((canonical.to_owned(), code.clone()));
            }
            listed.push(code.clone());
        }
        return Ok(Transform::Codes {
            inbound,
            outbound,
            listed: listed.join(", "),
        });
    }
    Ok(Transform::Text)
}

/// A date format must hold year, month and day and read back what it writes.
fn check_date_format(fmt: &str, with_time: bool) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "date format {fmt:?} is not a valid strftime format (e.g. \"%Y%m%d\")"
        ));
    }
    let sample = chrono::NaiveDate::from_ymd_opt(2001, 2, 3).and_then(|d| d.and_hms_opt(4, 5, 6));
    let Some(sample) = sample else { return Ok(()) };
    // Formatting fails (rather than writes) when the format asks for what
    // the value does not have, e.g. `%H` of a date.
    let unwritable = || {
        if with_time {
            format!("date format {fmt:?} cannot write a date-time")
        } else {
            format!(
                "date format {fmt:?} asks for a time or an offset, which a date does not have; \
                 use datetime = \"...\" for those"
            )
        }
    };
    let ok = if with_time {
        let t = sample.and_utc().fixed_offset();
        let written = crate::transform::render(t.format(fmt)).ok_or_else(unwritable)?;
        chrono::DateTime::parse_from_str(&written, fmt).is_ok_and(|back| back == t)
    } else {
        let d = sample.date();
        let written = crate::transform::render(d.format(fmt)).ok_or_else(unwritable)?;
        chrono::NaiveDate::parse_from_str(&written, fmt).is_ok_and(|back| back == d)
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "date format {fmt:?} cannot parse what it writes; it needs %Y, %m and %d{}",
            if with_time {
                " plus a time and an offset (%z), or \"rfc3339\""
            } else {
                ""
            }
        ))
    }
}

fn to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}
