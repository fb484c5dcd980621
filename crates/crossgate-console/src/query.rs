//! A page's URL query: the search filters (so that a link carries them),
//! the page number, and an entry's place.

use crossgate_audit::Filter;

/// The filters an auditor sets, as the URL carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// A day (`2026-11-23`) or an RFC 3339 time: from (inclusive) ...
    pub since: String,
    /// ... until (exclusive).
    pub until: String,
    pub consumer: String,
    pub provider: String,
    pub record_type: String,
    pub record_id: String,
    pub purpose: String,
    pub decision: String,
    /// From 1.
    pub page: usize,
    pub writer: String,
    pub sequence: u64,
}

/// The filter fields, in the order of the form and the URL.
const FIELDS: [&str; 8] = [
    "since",
    "until",
    "consumer",
    "provider",
    "record_type",
    "record_id",
    "purpose",
    "decision",
];

/// Longest value kept from the URL; the rest is cut.
const MAX_VALUE: usize = 256;

impl Query {
    /// A parameter's value as the pages read it: trimmed, at most
    /// [`MAX_VALUE`] characters.
    pub fn parse_value(value: &str) -> String {
        value.trim().chars().take(MAX_VALUE).collect()
    }

    pub fn parse(query: &str) -> Query {
        let mut q = Query {
            page: 1,
            ..Query::default()
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = Query::parse_value(&value);
            match key.as_ref() {
                "page" => q.page = value.parse().unwrap_or(1).max(1),
                "sequence" => q.sequence = value.parse().unwrap_or(0),
                "writer" => q.writer = value,
                key => {
                    if let Some(slot) = q.field_mut(key) {
                        *slot = value;
                    }
                }
            }
        }
        q
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut String> {
        Some(match key {
            "since" => &mut self.since,
            "until" => &mut self.until,
            "consumer" => &mut self.consumer,
            "provider" => &mut self.provider,
            "record_type" => &mut self.record_type,
            "record_id" => &mut self.record_id,
            "purpose" => &mut self.purpose,
            "decision" => &mut self.decision,
            _ => return None,
        })
    }

    /// (name, value) of each filter field, set or not.
    pub fn fields(&self) -> [(&'static str, &str); 8] {
        let values = [
            &self.since,
            &self.until,
            &self.consumer,
            &self.provider,
            &self.record_type,
            &self.record_id,
            &self.purpose,
            &self.decision,
        ];
        std::array::from_fn(|i| (FIELDS[i], values[i].as_str()))
    }

    /// The store's filter: time order, every set field must match.
    pub fn to_filter(&self) -> Filter {
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Filter {
            since: set(&self.since),
            until: set(&self.until),
            consumer: set(&self.consumer),
            provider: set(&self.provider),
            record_type: set(&self.record_type),
            record_id: set(&self.record_id),
            purpose: set(&self.purpose),
            decision: set(&self.decision),
            ..Filter::default()
        }
    }

    /// `path` with the set filters (and `page` when past the first) as its
    /// query string, percent-encoded.
    pub fn href(&self, path: &str, page: usize) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.fields() {
            if !value.is_empty() {
                out.append_pair(name, value);
            }
        }
        if page > 1 {
            out.append_pair("page", &page.to_string());
        }
        let query = out.finish();
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        }
    }
}

/// The link to one entry's page.
pub fn entry_href(writer: &str, sequence: u64) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("writer", writer)
        .append_pair("sequence", &sequence.to_string())
        .finish();
    format!("/entry?{query}")
}

/// The link to "who received" a record.
pub fn received_href(record_id: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("record_id", record_id)
        .finish();
    format!("/received?{query}")
}
