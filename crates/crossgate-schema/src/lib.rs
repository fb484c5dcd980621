//! The schema registry: every canonical JSON Schema in a folder, compiled once
//! at load, validating documents with **every** fault reported at once as
//! (JSON Pointer, message) pairs.
//!
//! ```no_run
//! let registry = crossgate_schema::Registry::load_dir("schemas")?;
//! match registry.parse_and_validate("person.v1", br#"{"name": "x"}"#) {
//!     Ok(_doc) => println!("valid"),
//!     Err(crossgate_schema::Rejection::Invalid(faults)) => {
//!         for f in &faults {
//!             println!("{}: {}", f.path, f.message);
//!         }
//!     }
//!     Err(other) => println!("{other}"),
//! }
//! # Ok::<(), crossgate_schema::LoadError>(())
//! ```
#![forbid(unsafe_code)]

pub mod formats;
pub mod guard;
mod registry;
pub use registry::parse_document;
mod rules;

pub use registry::{Registry, SchemaInfo};

use std::path::PathBuf;

/// One thing wrong with a document: where (a JSON Pointer into the canonical
/// document; `""` is the whole document) and what.
///
/// `message` is for the party that sent the document and may quote its
/// values ("wrong check character '1', expected 'X'"). `rule` says which rule
/// was broken without any value, so it may cross to other parties and into
/// the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub path: String,
    pub message: String,
    pub rule: String,
    /// Where the rule was broken, for other parties: `path`, except for a
    /// field the schema does not have, whose name is the sender's text and
    /// is left out (the object holding it is named instead).
    pub rule_path: String,
}

impl Fault {
    /// A fault whose message quotes no value: it is its own rule.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let (path, message) = (path.into(), message.into());
        Fault {
            rule_path: path.clone(),
            path,
            rule: message.clone(),
            message,
        }
    }

    /// A field `name` in the object at `parent` that the schema does not have.
    pub fn unexpected_field(parent: &str, name: &str) -> Self {
        Fault {
            path: format!("{parent}/{}", escape_pointer_segment(name)),
            message: "is not a field of this record type".into(),
            rule: "holds a field that is not in the schema".into(),
            rule_path: parent.to_owned(),
        }
    }

    /// A fault whose message quotes a value, with the value-free rule it broke.
    pub fn quoting(
        path: impl Into<String>,
        message: impl Into<String>,
        rule: impl Into<String>,
    ) -> Self {
        let path = path.into();
        Fault {
            rule_path: path.clone(),
            path,
            message: message.into(),
            rule: rule.into(),
        }
    }

    /// `<path>: <rule>`: the fault without any value, for other parties and the log.
    pub fn without_value(&self) -> String {
        format!("{}: {}", display_path(&self.rule_path), self.rule)
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "(document)" } else { path }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", display_path(&self.path), self.message)
    }
}

/// Why a schema folder could not be loaded. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read schema folder {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read schema {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not valid JSON: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: not a usable JSON Schema: {message}; fix the schema at {location}")]
    Compile {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error(
        "{path}: a schema file is named <record-type>.json with the version in the type, e.g. person.v1.json"
    )]
    BadName { path: PathBuf },
    #[error(
        "no schemas (*.json files) in {path}; point --schemas at the project's schemas/ folder"
    )]
    Empty { path: PathBuf },
}

/// Why a document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown record type {record_type:?}; known types: {known}")]
    UnknownType { record_type: String, known: String },
    #[error("document is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("document nests objects and arrays deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// Checked on the raw bytes before validation: a record built to make
    /// validation (and its list of faults) explode is refused at once.
    #[error("document has {what}; at most {limit}")]
    TooWide { what: &'static str, limit: usize },
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{} fault(s): {}", .0.len(), listed(.0.iter().map(|f| f.path.as_str()), ", "))]
    Invalid(Vec<Fault>),
}

/// How many faults a message names; the rest are counted ("… and 7 more"),
/// so that a record built to have a million faults gets a bounded answer.
pub const NAMED_FAULTS: usize = 20;

/// The first [`NAMED_FAULTS`] of `items` joined by `sep`, then how many more.
pub fn listed<'a>(items: impl ExactSizeIterator<Item = &'a str>, sep: &str) -> String {
    let total = items.len();
    let mut out: Vec<&str> = items.take(NAMED_FAULTS).collect();
    let more;
    if total > NAMED_FAULTS {
        more = format!("… and {} more", total - NAMED_FAULTS);
        out.push(&more);
    }
    out.join(sep)
}

impl Rejection {
    /// The faults, as (path, message) pairs: the whole list for an invalid
    /// document, one fault at the document root for the other kinds.
    pub fn faults(&self) -> Vec<Fault> {
        match self {
            Rejection::Invalid(faults) => faults.clone(),
            other => vec![Fault::quoting("", other.to_string(), other.rule())],
        }
    }

    /// What was wrong, without any value of the document: for other parties
    /// and the audit log.
    pub fn without_values(&self) -> String {
        match self {
            Rejection::Invalid(faults) => {
                let plain: Vec<String> = faults.iter().map(Fault::without_value).collect();
                listed(plain.iter().map(String::as_str), "; ")
            }
            other => other.rule().to_owned(),
        }
    }

    fn rule(&self) -> &'static str {
        match self {
            Rejection::UnknownType { .. } => "unknown record type",
            Rejection::TooLarge { .. } => "document over the size limit",
            Rejection::TooDeep { .. } => "document nested over the depth limit",
            Rejection::TooWide { .. } => "document over the structure limits",
            Rejection::Malformed { .. } => "not valid JSON",
            Rejection::Invalid(_) => "invalid",
        }
    }
}

/// Escape one property name for use as a JSON Pointer segment (RFC 6901).
pub fn escape_pointer_segment(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['~', '/']) {
        name.replace('~', "~0").replace('/', "~1").into()
    } else {
        name.into()
    }
}
