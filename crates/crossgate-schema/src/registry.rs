//! Loading, compiling and applying the canonical schemas.

use crate::formats::CUSTOM_FORMATS;
use crate::guard::{MAX_DEPTH, MAX_DOCUMENT_BYTES, nesting_depth, too_wide};
use crate::rules::{Rule, rules_for};
use crate::{Fault, LoadError, Rejection, escape_pointer_segment};
use foldhash::{HashMap, HashMapExt};
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, ValidationError, Validator};
use serde_json::Value;
use std::path::Path;

/// A record type as listed by the registry.
#[derive(Debug, Clone, Copy)]
pub struct SchemaInfo<'a> {
    pub record_type: &'a str,
    pub title: &'a str,
    /// The schema file's text as loaded.
    pub source: &'a str,
}

struct Entry {
    title: String,
    source: String,
    schema: Value,
    validator: Validator,
    rules: &'static [Rule],
}

/// Every canonical schema of a folder, compiled once.
pub struct Registry {
    entries: HashMap<String, Entry>,
    /// Record types in name order, for listings and error messages.
    names: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("types", &self.names)
            .finish()
    }
}

impl Registry {
    /// Load and compile every `<record-type>.json` in `dir` (e.g. `person.v1.json`).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let read_dir = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for item in read_dir {
            let item = item.map_err(|source| LoadError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = item.path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push((path, text));
        }
        if sources.is_empty() {
            return Err(LoadError::Empty {
                path: dir.to_path_buf(),
            });
        }
        Self::from_sources(sources)
    }

    /// Compile schemas given as (file path, text); the record type is the file
    /// name without `.json`.
    pub fn from_sources(
        sources: impl IntoIterator<Item = (std::path::PathBuf, String)>,
    ) -> Result<Self, LoadError> {
        let mut entries = HashMap::new();
        for (path, source) in sources {
            let record_type = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| n.contains(".v") && !n.is_empty())
                .ok_or_else(|| LoadError::BadName { path: path.clone() })?
                .to_owned();
            let schema: Value = serde_json::from_str(&source).map_err(|e| LoadError::Json {
                path: path.clone(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?;
            let validator = compile(&schema).map_err(|e| LoadError::Compile {
                path: path.clone(),
                location: e.schema_path().as_str().to_owned(),
                message: e.to_string(),
            })?;
            let title = schema
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(&record_type)
                .to_owned();
            let rules = rules_for(&record_type);
            entries.insert(
                record_type,
                Entry {
                    title,
                    source,
                    schema,
                    validator,
                    rules,
                },
            );
        }
        let mut names: Vec<String> = entries.keys().cloned().collect();
        names.sort();
        Ok(Registry { entries, names })
    }

    /// The record types, in name order.
    pub fn record_types(&self) -> impl Iterator<Item = SchemaInfo<'_>> {
        self.names.iter().map(|name| {
            let e = &self.entries[name];
            SchemaInfo {
                record_type: name,
                title: &e.title,
                source: &e.source,
            }
        })
    }

    pub fn contains(&self, record_type: &str) -> bool {
        self.entries.contains_key(record_type)
    }

    /// The parsed schema of a record type.
    pub fn schema(&self, record_type: &str) -> Option<&Value> {
        self.entries.get(record_type).map(|e| &e.schema)
    }

    /// The sub-schema describing the value at `pointer` in a document of
    /// `record_type`, following `properties` and array `items` (a numeric
    /// segment or `-` stands for any array element). `None` if the schema has
    /// no such field: used to check config paths at load.
    pub fn schema_at(&self, record_type: &str, pointer: &str) -> Option<&Value> {
        let mut node = self.schema(record_type)?;
        if pointer.is_empty() {
            return Some(node);
        }
        let rest = pointer.strip_prefix('/')?;
        for raw in rest.split('/') {
            let segment = raw.replace("~1", "/").replace("~0", "~");
            if node.get("type").and_then(Value::as_str) == Some("array") {
                if segment != "-" && segment.parse::<usize>().is_err() {
                    return None;
                }
                node = node.get("items")?;
            } else {
                node = node.get("properties")?.get(&segment)?;
            }
        }
        Some(node)
    }

    /// Every leaf field the schema of `record_type` defines, as JSON Pointers
    /// with `-` for the elements of a list of objects (a list of scalars is
    /// one leaf), in schema order. Empty for an unknown type.
    pub fn leaf_paths(&self, record_type: &str) -> Vec<String> {
        fn walk(node: &Value, path: &mut String, out: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&escape_pointer_segment(name));
                    walk(child, path, out);
                    path.truncate(len);
                }
                return;
            }
            if let Some(items) = node.get("items").filter(|i| i.get("properties").is_some()) {
                let len = path.len();
                path.push_str("/-");
                walk(items, path, out);
                path.truncate(len);
                return;
            }
            out.push(path.clone());
        }
        let mut out = Vec::new();
        if let Some(schema) = self.schema(record_type) {
            walk(schema, &mut String::new(), &mut out);
        }
        out
    }

    fn entry(&self, record_type: &str) -> Result<&Entry, Rejection> {
        self.entries
            .get(record_type)
            .ok_or_else(|| Rejection::UnknownType {
                record_type: record_type.to_owned(),
                known: self.names.join(", "),
            })
    }

    /// Check size and nesting, parse, and validate. Returns the parsed document.
    pub fn parse_and_validate(&self, record_type: &str, bytes: &[u8]) -> Result<Value, Rejection> {
        let entry = self.entry(record_type)?;
        let doc = parse_document(bytes)?;
        let faults = entry.faults(&doc);
        if faults.is_empty() {
            Ok(doc)
        } else {
            Err(Rejection::Invalid(faults))
        }
    }

    /// Validate a parsed document: `Ok` or every fault at once.
    pub fn validate(&self, record_type: &str, doc: &Value) -> Result<(), Rejection> {
        let faults = self.entry(record_type)?.faults(doc);
        if faults.is_empty() {
            Ok(())
        } else {
            Err(Rejection::Invalid(faults))
        }
    }
}

/// Check size and nesting limits, then parse JSON.
pub fn parse_document(bytes: &[u8]) -> Result<Value, Rejection> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(Rejection::TooLarge {
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    if nesting_depth(bytes, MAX_DEPTH) > MAX_DEPTH {
        return Err(Rejection::TooDeep { limit: MAX_DEPTH });
    }
    if let Some((what, limit)) = too_wide(bytes) {
        return Err(Rejection::TooWide { what, limit });
    }
    serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

impl Entry {
    fn faults(&self, doc: &Value) -> Vec<Fault> {
        let mut faults = Vec::new();
        if !self.validator.is_valid(doc) {
            for error in self.validator.iter_errors(doc) {
                push_fault(&error, &mut faults);
            }
        }
        for rule in self.rules {
            rule(doc, &mut faults);
        }
        faults
    }
}

fn compile(schema: &Value) -> Result<Validator, ValidationError<'static>> {
    let mut options = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false);
    for (name, check, _) in CUSTOM_FORMATS {
        options = options.with_format(*name, *check);
    }
    options.build(schema)
}

/// Turn one jsonschema error into faults a department's engineer can act on:
/// a missing field is reported at its own path, each unexpected field at its
/// own path, and national-code formats say what exactly is wrong.
fn push_fault(error: &ValidationError<'_>, faults: &mut Vec<Fault>) {
    let at = error.instance_path().as_str();
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            faults.push(Fault::new(
                format!("{at}/{}", escape_pointer_segment(name)),
                "is required",
            ));
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                faults.push(Fault::unexpected_field(at, name));
            }
        }
        ValidationErrorKind::Format { format } => {
            let explained = CUSTOM_FORMATS
                .iter()
                .find(|(name, _, _)| name == format)
                .and_then(|(_, _, explain)| error.instance().as_str().and_then(explain));
            let message = explained.unwrap_or_else(|| error.to_string());
            faults.push(Fault::quoting(
                at,
                message,
                format!("is not a valid {format:?}"),
            ));
        }
        kind => faults.push(Fault::quoting(at, error.to_string(), rule_of(kind))),
    }
}

/// A schema rule broken, in words that quote no value of the document.
fn rule_of(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Type { .. } => "has the wrong type".into(),
        ValidationErrorKind::Pattern { .. } => "does not match the field's pattern".into(),
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. } => {
            "is not one of the allowed values".into()
        }
        ValidationErrorKind::MinLength { .. } => "is too short".into(),
        ValidationErrorKind::MaxLength { .. } => "is too long".into(),
        ValidationErrorKind::MinItems { .. } => "has too few items".into(),
        ValidationErrorKind::MaxItems { .. } => "has too many items".into(),
        ValidationErrorKind::Minimum { .. } | ValidationErrorKind::ExclusiveMinimum { .. } => {
            "is below the minimum".into()
        }
        ValidationErrorKind::Maximum { .. } | ValidationErrorKind::ExclusiveMaximum { .. } => {
            "is above the maximum".into()
        }
        other => format!("breaks the schema's {} rule", other.keyword()),
    }
}

#[cfg(test)]
mod tests;
