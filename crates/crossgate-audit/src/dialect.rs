//! The one layer that knows the two SQL dialects: the tables, the insert,
//! the filtered select and the decoding of a row. The stores only run what
//! it writes, so SQLite and PostgreSQL cannot drift apart.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::entry::{Decision, Entry, Kind, Stored, hex, unhex32};
use crate::outbox::{Claim, Item, Op, OutboxFilter, State};
use crate::{Filter, StoreError};

/// The SQL dialects of the stores.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement and its arguments. The text of every statement on the write
/// path is made once per dialect ([`Statements`]); the arguments borrow what
/// is written, so a commit copies no record, field or payload to bind it.
pub(crate) type Statement<'a> = (Cow<'static, str>, Vec<Param<'a>>);

/// The texts of the statements a commit runs, made once per dialect.
pub(crate) struct Statements {
    insert: String,
    move_head: String,
    claim: String,
    find_claim: String,
    enqueue: String,
    update: String,
    requeue: String,
    purge: String,
    renew: String,
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
    /// This dialect's write-path statements, made on first use.
    fn statements(self) -> &'static Statements {
        static SQLITE: OnceLock<Statements> = OnceLock::new();
        static POSTGRES: OnceLock<Statements> = OnceLock::new();
        let made = match self {
            Dialect::Sqlite => &SQLITE,
            Dialect::Postgres => &POSTGRES,
        };
        made.get_or_init(|| Statements::new(self))
    }

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
CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (time);
CREATE TABLE IF NOT EXISTS audit_heads (
    writer TEXT PRIMARY KEY,
    sequence {int} NOT NULL,
    entry_hash TEXT NOT NULL
);",
            columns.join(",\n")
        )
    }

    fn bytes_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BLOB",
            Dialect::Postgres => "BYTEA",
        }
    }

    /// The outbox and the idempotency keys, created if missing.
    pub(crate) fn outbox_schema(self) -> String {
        let int = self.integer_type();
        let mut columns: Vec<String> = OUTBOX_COLUMNS
            .iter()
            .map(|(name, kind)| {
                let ty = match kind {
                    Col::Text => "TEXT",
                    Col::Int => int,
                    Col::Bytes => self.bytes_type(),
                };
                format!("    {name} {ty} NOT NULL")
            })
            .collect();
        columns[0].push_str(" UNIQUE");
        if let Dialect::Postgres = self {
            columns.insert(0, "    id BIGSERIAL PRIMARY KEY".into());
        }
        format!(
            "CREATE TABLE IF NOT EXISTS outbox (\n{}\n);
CREATE INDEX IF NOT EXISTS outbox_receiver ON outbox (receiver, state{});
CREATE INDEX IF NOT EXISTS outbox_request ON outbox (request_id);
CREATE TABLE IF NOT EXISTS publish_keys (
    provider TEXT NOT NULL,
    key TEXT NOT NULL,
    request_id TEXT NOT NULL,
    record_digest TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (provider, key)
);",
            columns.join(",\n"),
            match self {
                Dialect::Sqlite => "",
                Dialect::Postgres => ", id",
            }
        )
    }

    /// An outbox change as statements and their arguments.
    pub(crate) fn outbox_op(self, op: &Op) -> Vec<Statement<'_>> {
        let p = |n| self.placeholder(n);
        if let Op::Prune { before } = op {
            // A key goes only when nothing of its request is still owed.
            return [
                "outbox WHERE state = 'delivered' AND created",
                "publish_keys WHERE request_id NOT IN (SELECT request_id FROM outbox WHERE state <> 'delivered') AND created",
                // Replicas gone long ago.
                "outbox_replicas WHERE until",
            ]
            .into_iter()
            .map(|table| {
                (
                    Cow::Owned(format!("DELETE FROM {table} < {}", p(1))),
                    vec![text(before)],
                )
            })
            .collect();
        }
        vec![self.outbox_change(op)]
    }

    fn outbox_change(self, op: &Op) -> Statement<'_> {
        let sql = self.statements();
        let (statement, args) = match op {
            Op::Enqueue(item) => (&sql.enqueue, encode_item(item)),
            Op::Update {
                delivery_id,
                state,
                attempts,
                next_attempt,
                last_error,
            } => (
                &sql.update,
                vec![
                    text(state.as_str()),
                    Param::Int(i64::from(*attempts)),
                    text(next_attempt),
                    text(last_error),
                    text(delivery_id),
                ],
            ),
            Op::Requeue {
                delivery_id,
                at,
                note,
            } => (&sql.requeue, vec![text(at), text(note), text(delivery_id)]),
            Op::Purge { delivery_id } => (&sql.purge, vec![text(delivery_id)]),
            Op::Renew { owner, until } => (&sql.renew, vec![text(owner), text(until)]),
            Op::Prune { .. } => return (Cow::Borrowed(""), Vec::new()),
        };
        (Cow::Borrowed(statement.as_str()), args)
    }

    /// Columns added after the first release, for tables made before them.
    pub(crate) fn outbox_added_columns(self) -> &'static [&'static str] {
        &["lease_owner"]
    }

    /// Made once the added columns are there: the replicas' leases, and the
    /// index their claims use.
    pub(crate) fn outbox_leases(self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS outbox_replicas (
    owner TEXT PRIMARY KEY,
    until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_leased ON outbox (receiver, lease_owner) WHERE state = 'queued'"
    }

    /// Queued items of `receiver` that `lease.owner` holds, or whose holder
    /// has no live lease (it died, or never had one), oldest first, made
    /// `lease.owner`'s. Rows another replica is claiming at this instant are
    /// skipped, not waited for. PostgreSQL only (a SQLite store has one
    /// broker).
    pub(crate) fn claim_outbox(
        self,
        receiver: &str,
        lease: &crate::outbox::Lease,
        limit: usize,
    ) -> (String, Vec<String>) {
        let limit = if limit == 0 {
            String::new()
        } else {
            format!(" LIMIT {limit}")
        };
        (
            format!(
                "WITH claimed AS (
                   UPDATE outbox SET lease_owner = $1
                   WHERE id IN (
                     SELECT o.id FROM outbox o
                     WHERE o.receiver = $2 AND o.state = 'queued'
                       AND (o.lease_owner = $1 OR NOT EXISTS (
                         SELECT 1 FROM outbox_replicas r WHERE r.owner = o.lease_owner AND r.until >= $3))
                     ORDER BY o.id{limit}
                     FOR UPDATE OF o SKIP LOCKED)
                   RETURNING *)
                 SELECT * FROM claimed ORDER BY id"
            ),
            vec![lease.owner.clone(), receiver.to_owned(), lease.now.clone()],
        )
    }

    /// Claim an idempotency key; a key claimed before keeps its first request.
    pub(crate) fn claim(self, claim: &Claim) -> Statement<'_> {
        (
            Cow::Borrowed(self.statements().claim.as_str()),
            [
                &claim.provider,
                &claim.key,
                &claim.request_id,
                &claim.record_digest,
                &claim.created,
            ]
            .into_iter()
            .map(|s| text(s))
            .collect(),
        )
    }

    /// Who claimed a key first; arguments: provider, key.
    pub(crate) fn find_claim(self) -> &'static str {
        &self.statements().find_claim
    }

    /// Items per receiver in one state; argument: the state.
    pub(crate) fn count_outbox(self) -> String {
        format!(
            "SELECT receiver, COUNT(*) FROM outbox WHERE state = {} GROUP BY receiver",
            self.placeholder(1)
        )
    }

    /// The query selecting `filter`'s outbox items, oldest first.
    pub(crate) fn select_outbox(self, filter: &OutboxFilter) -> (String, Vec<String>) {
        let mut sql = String::from("SELECT * FROM outbox WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let state = filter.state.map(|s| s.as_str().to_owned());
        for (clause, value) in [
            ("receiver =", &filter.receiver),
            ("state =", &state),
            ("request_id =", &filter.request_id),
            ("delivery_id =", &filter.delivery_id),
            ("created >=", &filter.since),
            ("created <", &filter.before),
        ] {
            if let Some(v) = value {
                args.push(v.clone());
                sql.push_str(&format!(" AND {clause} {}", self.placeholder(args.len())));
            }
        }
        if filter.undelivered {
            sql.push_str(" AND state <> 'delivered'");
        }
        sql.push_str(&format!(" ORDER BY {}", self.row_order()));
        if filter.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", filter.limit));
        }
        (sql, args)
    }

    /// One place per chain position: (writer, sequence) is unique. Made
    /// apart from the tables: a log that already holds a position twice
    /// (tampered with) must still open, so that `verify` can say where.
    /// Logs made before it also had a plain index on the same columns,
    /// which only cost every insert: dropped once the unique one stands.
    pub(crate) fn unique_chain(self) -> &'static str {
        "CREATE UNIQUE INDEX IF NOT EXISTS audit_entries_chain_unique ON audit_entries (writer, sequence);
DROP INDEX IF EXISTS audit_entries_chain"
    }

    /// Where the unique index cannot stand (a tampered log), chain lookups
    /// still need an index.
    pub(crate) fn plain_chain(self) -> &'static str {
        "CREATE INDEX IF NOT EXISTS audit_entries_chain ON audit_entries (writer, sequence)"
    }

    /// Insert one entry; its arguments are [`encode`]'s, in order.
    pub(crate) fn insert(self) -> &'static str {
        &self.statements().insert
    }

    /// Move a chain's head; arguments: writer, sequence, entry hash.
    pub(crate) fn move_head(self) -> &'static str {
        &self.statements().move_head
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
        if let Some(id) = &filter.record_id {
            if id.is_empty() {
                // No id: the entries that name no record.
                args.push(String::new());
                let n = self.placeholder(args.len());
                sql.push_str(&format!(" AND record_id = {n}"));
            } else {
                // An answer of several records names them all,
                // comma-separated: the id's digest, and the id itself as
                // entries written before digests hold it, are each looked
                // for as one of them, compared as text (no pattern: `%` and
                // `_` are themselves).
                let (find, cast) = match self {
                    Dialect::Sqlite => ("instr", ""),
                    Dialect::Postgres => ("strpos", "::text"),
                };
                let among = |member: String, args: &mut Vec<String>| {
                    args.push(member);
                    let n = self.placeholder(args.len());
                    format!("{find}(',' || record_id || ',', ',' || {n}{cast} || ',') > 0")
                };
                let mut any = Vec::with_capacity(3);
                if let Some(digest) = filter.record_id_digest.as_ref().filter(|d| !d.is_empty()) {
                    any.push(among(digest.clone(), &mut args));
                }
                let member = crate::record_id_member(id);
                // An id holding `,` or `%` was written escaped; entries
                // made before that rule hold it as given, and are found by
                // the whole field.
                let as_given = matches!(member, std::borrow::Cow::Owned(_));
                any.push(among(member.into_owned(), &mut args));
                if as_given {
                    args.push(id.clone());
                    any.push(format!("record_id = {}", self.placeholder(args.len())));
                }
                sql.push_str(&format!(" AND ({})", any.join(" OR ")));
            }
        }
        sql.push_str(&if filter.chain_order {
            format!(" ORDER BY writer, sequence, {}", self.row_order())
        } else {
            " ORDER BY time, writer, sequence".to_owned()
        });
        (sql, args)
    }
}

impl Statements {
    fn new(d: Dialect) -> Self {
        let p = |n| d.placeholder(n);
        let places = |count: usize| (1..=count).map(p).collect::<Vec<_>>().join(", ");
        let names = |columns: &[&str]| columns.join(", ");
        let entry_columns: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let outbox_columns: Vec<&str> = OUTBOX_COLUMNS.iter().map(|(n, _)| *n).collect();
        let empty = match d {
            Dialect::Sqlite => "x''",
            Dialect::Postgres => "''::bytea",
        };
        Statements {
            insert: format!(
                "INSERT INTO audit_entries ({}) VALUES ({})",
                names(&entry_columns),
                places(COLUMNS.len())
            ),
            move_head: format!(
                "INSERT INTO audit_heads (writer, sequence, entry_hash) VALUES ({})
             ON CONFLICT (writer) DO UPDATE SET sequence = excluded.sequence, entry_hash = excluded.entry_hash",
                places(3)
            ),
            claim: format!(
                "INSERT INTO publish_keys (provider, key, request_id, record_digest, created)
                 VALUES ({}) ON CONFLICT (provider, key) DO NOTHING",
                places(5)
            ),
            find_claim: format!(
                "SELECT request_id, record_digest FROM publish_keys WHERE provider = {} AND key = {}",
                p(1),
                p(2)
            ),
            enqueue: format!(
                "INSERT INTO outbox ({}) VALUES ({}) ON CONFLICT (delivery_id) DO NOTHING",
                names(&outbox_columns),
                places(OUTBOX_COLUMNS.len())
            ),
            update: format!(
                "UPDATE outbox SET state = {s}, attempts = {a}, next_attempt = {n}, last_error = {e},
                 payload = CASE WHEN {s} = 'delivered' THEN {empty} ELSE payload END,
                 record_id = CASE WHEN {s} = 'delivered' THEN '' ELSE record_id END
                 WHERE delivery_id = {id} AND state <> 'delivered'",
                s = p(1),
                a = p(2),
                n = p(3),
                e = p(4),
                id = p(5)
            ),
            requeue: format!(
                "UPDATE outbox SET state = 'queued', attempts = 0, created = {at}, next_attempt = {at}, last_error = {n},
                 lease_owner = CASE WHEN state = 'dead' THEN '' ELSE lease_owner END
                 WHERE delivery_id = {id} AND state <> 'delivered'",
                at = p(1),
                n = p(2),
                id = p(3)
            ),
            purge: format!(
                "DELETE FROM outbox WHERE delivery_id = {} AND state <> 'delivered'",
                p(1)
            ),
            renew: format!(
                "INSERT INTO outbox_replicas (owner, until) VALUES ({}, {})
                 ON CONFLICT (owner) DO UPDATE SET until = excluded.until",
                p(1),
                p(2)
            ),
        }
    }
}

/// One statement argument, borrowed from what is written where it can be.
pub(crate) enum Param<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Bytes(&'a [u8]),
}

fn text(v: &str) -> Param<'_> {
    Param::Text(Cow::Borrowed(v))
}

/// A column's SQL type.
enum Col {
    Text,
    Int,
    Bytes,
}

/// The columns of `outbox`, in insert order.
const OUTBOX_COLUMNS: [(&str, Col); 17] = [
    ("delivery_id", Col::Text),
    ("request_id", Col::Text),
    ("receiver", Col::Text),
    ("provider", Col::Text),
    ("record_type", Col::Text),
    ("record_id", Col::Text),
    ("grant_id", Col::Text),
    ("purpose", Col::Text),
    ("released_fields", Col::Text),
    ("record_digest", Col::Text),
    ("payload", Col::Bytes),
    ("state", Col::Text),
    ("attempts", Col::Int),
    ("created", Col::Text),
    ("next_attempt", Col::Text),
    ("last_error", Col::Text),
    ("lease_owner", Col::Text),
];

/// The insert arguments of an outbox item, in [`OUTBOX_COLUMNS`] order.
fn encode_item(i: &Item) -> Vec<Param<'_>> {
    vec![
        text(&i.delivery_id),
        text(&i.request_id),
        text(&i.receiver),
        text(&i.provider),
        text(&i.record_type),
        text(&i.record_id),
        text(&i.grant),
        text(&i.purpose),
        released(&i.released_fields),
        text(&i.record_digest),
        Param::Bytes(&i.payload),
        text(i.state.as_str()),
        Param::Int(i64::from(i.attempts)),
        text(&i.created),
        text(&i.next_attempt),
        text(&i.last_error),
        text(&i.lease_owner),
    ]
}

/// An outbox row back into an item; a value crossgate never writes is an error.
pub(crate) fn decode_item(row: &dyn Columns) -> Result<Item, StoreError> {
    let delivery_id = row.text("delivery_id")?;
    let damaged =
        |what: String| StoreError::Failed(format!("outbox item {delivery_id} is damaged: {what}"));
    let state = row.text("state")?;
    let state =
        State::parse(&state).ok_or_else(|| damaged(format!("state {state:?} is unknown")))?;
    let released_fields = serde_json::from_str(&row.text("released_fields")?)
        .map_err(|_| damaged("released_fields is not a list of field paths".into()))?;
    let attempts = u32::try_from(row.int("attempts")?)
        .map_err(|_| damaged("attempts is out of range".into()))?;
    Ok(Item {
        request_id: row.text("request_id")?,
        receiver: row.text("receiver")?,
        provider: row.text("provider")?,
        record_type: row.text("record_type")?,
        record_id: row.text("record_id")?,
        grant: row.text("grant_id")?,
        purpose: row.text("purpose")?,
        released_fields,
        record_digest: row.text("record_digest")?,
        payload: row.bytes("payload")?,
        state,
        attempts,
        created: row.text("created")?,
        next_attempt: row.text("next_attempt")?,
        last_error: row.text("last_error")?,
        lease_owner: row.text("lease_owner")?,
        delivery_id,
    })
}

/// The insert arguments of a sealed entry, in [`COLUMNS`] order.
pub(crate) fn encode(s: &Stored) -> Vec<Param<'_>> {
    let e = &s.entry;
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
        released(&e.released_fields),
        text(&e.record_digest),
        Param::Int(e.latency_micros as i64),
        Param::Text(Cow::Owned(hex(&s.previous_hash))),
        Param::Text(Cow::Owned(hex(&s.entry_hash))),
    ]
}

/// Released field paths as the JSON list the column holds.
fn released(fields: &[String]) -> Param<'static> {
    // A list of strings always serialises.
    Param::Text(Cow::Owned(
        serde_json::to_string(fields).unwrap_or_else(|_| "[]".into()),
    ))
}

/// A row as either store hands it over.
pub(crate) trait Columns {
    fn text(&self, name: &str) -> Result<String, StoreError>;
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError>;
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
