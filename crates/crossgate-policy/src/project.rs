//! Projection of a canonical record to the fields a grant releases, with masks.

use serde_json::{Map, Value};

/// How a released value is partly hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Keep the last N characters, replace the others with `*`.
    KeepLast(usize),
    /// Keep the first N characters, replace the others with `*`.
    KeepFirst(usize),
}

impl Mask {
    /// `keep-last-4`, `keep-first-6`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("unknown mask {text:?}; use keep-last-N or keep-first-N, e.g. keep-last-4");
        if let Some(n) = text.strip_prefix("keep-last-") {
            return n.parse().map(Mask::KeepLast).map_err(|_| bad());
        }
        if let Some(n) = text.strip_prefix("keep-first-") {
            return n.parse().map(Mask::KeepFirst).map_err(|_| bad());
        }
        Err(bad())
    }

    pub fn apply(&self, value: &Value) -> Value {
        let Some(s) = value.as_str() else {
            // Only text can be partly shown; anything else is hidden whole.
            return Value::String("*".into());
        };
        let count = s.chars().count();
        let masked: String = match self {
            Mask::KeepLast(n) => s
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i >= count.saturating_sub(*n) {
                        c
                    } else {
                        '*'
                    }
                })
                .collect(),
            Mask::KeepFirst(n) => s
                .chars()
                .enumerate()
                .map(|(i, c)| if i < *n { c } else { '*' })
                .collect(),
        };
        Value::String(masked)
    }
}

/// One released field: a JSON Pointer (`-` stands for every element of a
/// list) and an optional mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedField {
    pub pointer: String,
    pub(crate) segments: Vec<String>,
    pub mask: Option<Mask>,
}

impl ReleasedField {
    pub fn new(pointer: &str, mask: Option<Mask>) -> Self {
        let segments = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        ReleasedField {
            pointer: pointer.to_owned(),
            segments,
            mask,
        }
    }
}

/// Copy the released fields of `record` into a new document, masks applied.
pub fn project(record: &Value, fields: &[ReleasedField]) -> Value {
    let mut out = Value::Object(Map::new());
    for field in fields {
        copy(record, &mut out, &field.segments, field.mask.as_ref());
    }
    out
}

fn copy(src: &Value, dst: &mut Value, segments: &[String], mask: Option<&Mask>) {
    let Some((first, rest)) = segments.split_first() else {
        *dst = match mask {
            Some(m) => m.apply(src),
            None => src.clone(),
        };
        return;
    };
    if first == "-" {
        let Some(items) = src.as_array() else { return };
        if !dst.is_array() {
            *dst = Value::Array(vec![Value::Object(Map::new()); items.len()]);
        }
        if let Value::Array(out) = dst {
            for (item, slot) in items.iter().zip(out.iter_mut()) {
                copy(item, slot, rest, mask);
            }
        }
        return;
    }
    let Some(next) = src.get(first) else { return };
    if !dst.is_object() {
        *dst = Value::Object(Map::new());
    }
    if let Value::Object(map) = dst {
        let slot = map.entry(first.clone()).or_insert_with(|| {
            if rest.is_empty() {
                Value::Null
            } else {
                Value::Object(Map::new())
            }
        });
        copy(next, slot, rest, mask);
    }
}

/// The leaf paths of `record` (lists written with `-`) that `fields` do not
/// release, in document order without repeats.
pub fn withheld(record: &Value, fields: &[ReleasedField]) -> Vec<String> {
    let mut out = Vec::new();
    leaves(record, &mut Vec::new(), &mut |path| {
        let covered = fields.iter().any(|f| {
            f.segments.len() <= path.len()
                && f.segments.iter().zip(path.iter()).all(|(a, b)| a == b)
        });
        if !covered {
            let text: String = path.iter().map(|s| format!("/{s}")).collect();
            if !out.contains(&text) {
                out.push(text);
            }
        }
    });
    out
}

fn leaves(v: &Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String])) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                path.push(k.clone());
                leaves(child, path, f);
                path.pop();
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            path.push("-".into());
            for item in items {
                leaves(item, path, f);
            }
            path.pop();
        }
        _ => f(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(list: &[(&str, Option<Mask>)]) -> Vec<ReleasedField> {
        list.iter()
            .map(|(p, m)| ReleasedField::new(p, m.clone()))
            .collect()
    }

    #[test]
    fn projects_subtrees_list_members_and_masks() {
        let record = json!({
            "declaration_id": "1", "trader_uscc": "U",
            "transport": {"mode": "road", "driver_id_number": "11010519491231002X"},
            "goods": [{"line": 1, "hs_code": "1"}, {"line": 2, "hs_code": "2"}]
        });
        let f = fields(&[
            ("/declaration_id", None),
            ("/transport", None),
            ("/transport/driver_id_number", Some(Mask::KeepLast(4))),
            ("/goods/-/hs_code", None),
        ]);
        assert_eq!(
            project(&record, &f),
            json!({
                "declaration_id": "1",
                "transport": {"mode": "road", "driver_id_number": "**************002X"},
                "goods": [{"hs_code": "1"}, {"hs_code": "2"}]
            })
        );
        assert_eq!(withheld(&record, &f), vec!["/goods/-/line", "/trader_uscc"]);
    }

    #[test]
    fn masks_parse_and_say_what_is_allowed() {
        assert_eq!(Mask::parse("keep-last-4"), Ok(Mask::KeepLast(4)));
        assert_eq!(Mask::parse("keep-first-6"), Ok(Mask::KeepFirst(6)));
        assert!(Mask::parse("hide").unwrap_err().contains("keep-last-N"));
        assert_eq!(Mask::KeepFirst(2).apply(&json!("张秀英")), json!("张秀*"));
    }
}
