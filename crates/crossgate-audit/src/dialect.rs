//! The one layer that knows the two SQL dialects: the tables, the insert,
//! the filtered select and the decoding of a row. The stores only run what
//! it writes, so SQLite and PostgreSQL cannot drift apart.

use crate::entry::{Decision, Entry, Kind, Stored, hex, unhex32};
use crate::{Filter, StoreError};

/// The SQL dialects of the stores.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The columns of `audit_entries` after `writer` and `sequence`, in insert
/// order; `true` for an integer column.
const COLUMNS: [(&str, bool); 18] = [
    ("writer", false),
    ("sequence", true),
    ("time", false),
    ("request_id", false),
    ("kind", false),
    ("consumer", false),
    ("provider", false),
    ("record_type", false),
    ("record_id", false),
    ("purpose", false),
    ("approval_reference", false),
    ("decision", false),
    ("reason", false),
    ("released_fields", false),
    ("record_digest", false),
    ("latency_micros", true),
    ("previous_hash", false),
    ("entry_hash", false),
];

impl Dialect {
    /// Placeholder `n` for an argument.
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// Placeholder `n` for an integer passed as text.
    fn integer(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(?{n} AS INTEGER)"),
            Dialect::Postgres => format!("${n}::text::bigint"),
        }
    }

    /// The column that keeps insertion order.
    fn row_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "id",
        }
    }

    fn integer_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
        }
    }

    /// The tables and indexes, created if missing.
    pub(crate) fn schema(self) -> String {
        let int = self.integer_type();
        let mut columns: Vec<String> = COLUMNS
            .iter()
            .map(|(name, integer)| {
                format!(
                    "    {name} {} NOT NULL",
                    if *integer { int } else { "TEXT" }
                )
            })
            .collect();
        if let Dialect::Postgres = self {
            // SQLite keeps insertion order in its rowid.
            columns.insert(0, "    id BIGSERIAL PRIMARY KEY".into());
        }
        format!(
            "CREATE TABLE IF NOT EXISTS audit_entries (\n{}\n);
CREATE INDEX IF NOT EXISTS audit_entries_chain ON audit_entries (writer, sequence);
CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (time);
CREATE TABLE IF NOT EXISTS audit_heads (
    writer TEXT PRIMARY KEY,
    sequence {int} NOT NULL,
    entry_hash TEXT NOT NULL
);",
            columns.join(",\n")
        )
    }

    /// Insert one entry; its arguments are [`encode`]'s, in order.
    pub(crate) fn insert(self) -> String {
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let places: Vec<String> = (1..=COLUMNS.len()).map(|n| self.placeholder(n)).collect();
        format!(
            "INSERT INTO audit_entries ({}) VALUES ({})",
            names.join(", "),
            places.join(", ")
        )
    }

    /// Move a chain's head; arguments: writer, sequence, entry hash.
    pub(crate) fn move_head(self) -> String {
        format!(
            "INSERT INTO audit_heads (writer, sequence, entry_hash) VALUES ({}, {}, {})
             ON CONFLICT (writer) DO UPDATE SET sequence = excluded.sequence, entry_hash = excluded.entry_hash",
            self.placeholder(1),
            self.placeholder(2),
            self.placeholder(3)
        )
    }

    /// The query selecting `filter`'s entries, and its text arguments.
    pub(crate) fn select(self, filter: &Filter) -> (String, Vec<String>) {
        let mut sql = String::from("SELECT * FROM audit_entries WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let equal = [
            ("time >=", &filter.since),
            ("time <", &filter.until),
            ("consumer =", &filter.consumer),
            ("provider =", &filter.provider),
            ("record_type =", &filter.record_type),
            ("record_id =", &filter.record_id),
            ("purpose =", &filter.purpose),
            ("decision =", &filter.decision),
        ];
        for (clause, value) in equal {
            if let Some(v) = value {
                args.push(v.clone());
                sql.push_str(&format!(" AND {clause} {}", self.placeholder(args.len())));
            }
        }
        for (clause, bound) in [
            ("sequence >=", filter.from_sequence),
            ("sequence <=", filter.to_sequence),
        ] {
            if bound > 0 {
                args.push(bound.to_string());
                sql.push_str(&format!(" AND {clause} {}", self.integer(args.len())));
            }
        }
        if let Some(p) = &filter.partner {
            args.push(p.clone());
            let n = self.placeholder(args.len());
            sql.push_str(&format!(" AND (consumer = {n} OR provider = {n})"));
        }
        sql.push_str(&if filter.chain_order {
            format!(" ORDER BY writer, sequence, {}", self.row_order())
        } else {
            " ORDER BY time, writer, sequence".to_owned()
        });
        (sql, args)
    }
}

/// One insert argument.
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// The insert arguments of a sealed entry, in [`COLUMNS`] order.
pub(crate) fn encode(s: &Stored) -> Vec<Param> {
    let e = &s.entry;
    let text = |v: &str| Param::Text(v.to_owned());
    vec![
        text(&s.writer),
        Param::Int(s.sequence as i64),
        text(&e.time),
        text(&e.request_id),
        text(e.kind.as_str()),
        text(&e.consumer),
        text(&e.provider),
        text(&e.record_type),
        text(&e.record_id),
        text(&e.purpose),
        text(&e.approval_reference),
        text(e.decision.as_str()),
        text(&e.reason),
        // A list of strings always serialises.
        Param::Text(serde_json::to_string(&e.released_fields).unwrap_or_else(|_| "[]".into())),
        text(&e.record_digest),
        Param::Int(e.latency_micros as i64),
        Param::Text(hex(&s.previous_hash)),
        Param::Text(hex(&s.entry_hash)),
    ]
}

/// A row as either store hands it over.
pub(crate) trait Columns {
    fn text(&self, name: &str) -> Result<String, StoreError>;
    fn int(&self, name: &str) -> Result<i64, StoreError>;
}

/// Hand one row to a scan's visitor: the entry, or its damage. A failure to
/// read the row at all ends the scan. Returns whether to go on.
pub(crate) fn offer(
    row: &dyn Columns,
    visit: &mut dyn FnMut(Result<Stored, StoreError>) -> bool,
) -> Result<bool, StoreError> {
    match decode(row) {
        Err(failed @ StoreError::Failed(_)) => Err(failed),
        row => Ok(visit(row)),
    }
}

/// A row back into a sealed entry. A value that cannot be what was written
/// (an unknown decision, released fields that are not a list, a hash that is
/// not 64 hex digits) is reported as damage at its place in its chain, never
/// turned into a plausible value.
pub(crate) fn decode(row: &dyn Columns) -> Result<Stored, StoreError> {
    let writer = row.text("writer")?;
    let sequence = row.int("sequence")? as u64;
    let damaged = |what: String| StoreError::Damaged {
        writer: writer.clone(),
        sequence,
        what,
    };
    let kind = row.text("kind")?;
    let kind = Kind::parse(&kind)
        .ok_or_else(|| damaged(format!("kind {kind:?} is not one crossgate writes")))?;
    let decision = row.text("decision")?;
    let decision = Decision::parse(&decision)
        .ok_or_else(|| damaged(format!("decision {decision:?} is not one crossgate writes")))?;
    let released_fields = serde_json::from_str(&row.text("released_fields")?)
        .map_err(|_| damaged("released_fields is not a list of field paths".into()))?;
    let hash = |col: &str| -> Result<[u8; 32], StoreError> {
        unhex32(&row.text(col)?).ok_or_else(|| damaged(format!("{col} is not 64 hex digits")))
    };
    Ok(Stored {
        previous_hash: hash("previous_hash")?,
        entry_hash: hash("entry_hash")?,
        entry: Entry {
            time: row.text("time")?,
            request_id: row.text("request_id")?,
            kind,
            consumer: row.text("consumer")?,
            provider: row.text("provider")?,
            record_type: row.text("record_type")?,
            record_id: row.text("record_id")?,
            purpose: row.text("purpose")?,
            approval_reference: row.text("approval_reference")?,
            decision,
            reason: row.text("reason")?,
            released_fields,
            record_digest: row.text("record_digest")?,
            latency_micros: row.int("latency_micros")? as u64,
        },
        writer,
        sequence,
    })
}
