//! The shared store: PostgreSQL, for several broker replicas. Each replica
//! appends to its own chain (its own head row), so replicas never wait for
//! one another's entries.

use crate::entry::{Decision, Entry, Stored, hex, unhex32};
use crate::{Filter, Store, StoreError};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;

pub struct PostgresStore {
    client: Client,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_entries (
    id BIGSERIAL PRIMARY KEY,
    writer TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT NOT NULL,
    provider TEXT NOT NULL,
    record_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    approval_reference TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    released_fields TEXT NOT NULL,
    record_digest TEXT NOT NULL,
    latency_micros BIGINT NOT NULL,
    previous_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_entries_chain ON audit_entries (writer, sequence);
CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (time);
CREATE TABLE IF NOT EXISTS audit_heads (
    writer TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    entry_hash TEXT NOT NULL
);
";

fn err(e: postgres::Error) -> StoreError {
    StoreError(e.to_string())
}

impl PostgresStore {
    /// Connect to `url` (postgres://...) and create the tables if needed,
    /// in `schema` if given (tests use one schema each).
    pub fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls)
            .map_err(|e| StoreError(format!("cannot connect to PostgreSQL: {e}")))?;
        if let Some(schema) = schema {
            if !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError(format!(
                    "schema name {schema:?}: letters, digits and _ only"
                )));
            }
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))
                .map_err(err)?;
        }
        // Two replicas starting at once may both create the tables.
        if let Err(e) = client.batch_execute(SCHEMA) {
            client.batch_execute(SCHEMA).map_err(|_| err(e))?;
        }
        Ok(PostgresStore { client })
    }

    /// Direct access, for tests that tamper with the table.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

fn row_to_stored(row: &postgres::Row) -> Result<Stored, StoreError> {
    let released: String = row.get("released_fields");
    let decision: String = row.get("decision");
    let hash = |col: &str| {
        unhex32(&row.get::<_, String>(col)).ok_or_else(|| StoreError(format!("a damaged {col}")))
    };
    Ok(Stored {
        writer: row.get("writer"),
        sequence: row.get::<_, i64>("sequence") as u64,
        entry: Entry {
            time: row.get("time"),
            request_id: row.get("request_id"),
            kind: row.get("kind"),
            consumer: row.get("consumer"),
            provider: row.get("provider"),
            record_type: row.get("record_type"),
            record_id: row.get("record_id"),
            purpose: row.get("purpose"),
            approval_reference: row.get("approval_reference"),
            decision: Decision::parse(&decision).unwrap_or(Decision::Changed),
            reason: row.get("reason"),
            released_fields: serde_json::from_str(&released).unwrap_or_default(),
            record_digest: row.get("record_digest"),
            latency_micros: row.get::<_, i64>("latency_micros") as u64,
        },
        previous_hash: hash("previous_hash")?,
        entry_hash: hash("entry_hash")?,
    })
}

impl Store for PostgresStore {
    fn head(&mut self, writer: &str) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT sequence, entry_hash FROM audit_heads WHERE writer = $1",
                &[&writer],
            )
            .map_err(err)?;
        row.map(|r| {
            unhex32(&r.get::<_, String>(1))
                .map(|h| (r.get::<_, i64>(0) as u64, h))
                .ok_or_else(|| StoreError("a chain head is damaged".into()))
        })
        .transpose()
    }

    fn heads(&mut self) -> Result<BTreeMap<String, (u64, [u8; 32])>, StoreError> {
        let rows = self
            .client
            .query("SELECT writer, sequence, entry_hash FROM audit_heads", &[])
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let h = unhex32(&r.get::<_, String>(2)).unwrap_or([0xff; 32]);
                (r.get::<_, String>(0), (r.get::<_, i64>(1) as u64, h))
            })
            .collect())
    }

    fn append(&mut self, batch: &[Stored]) -> Result<(), StoreError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let mut tx = self.client.transaction().map_err(err)?;
        let insert = tx
            .prepare(
                "INSERT INTO audit_entries (writer, sequence, time, request_id, kind, consumer, provider, record_type,
                 record_id, purpose, approval_reference, decision, reason, released_fields, record_digest,
                 latency_micros, previous_hash, entry_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            )
            .map_err(err)?;
        for s in batch {
            let e = &s.entry;
            let released =
                serde_json::to_string(&e.released_fields).unwrap_or_else(|_| "[]".into());
            tx.execute(
                &insert,
                &[
                    &s.writer,
                    &(s.sequence as i64),
                    &e.time,
                    &e.request_id,
                    &e.kind,
                    &e.consumer,
                    &e.provider,
                    &e.record_type,
                    &e.record_id,
                    &e.purpose,
                    &e.approval_reference,
                    &e.decision.as_str(),
                    &e.reason,
                    &released,
                    &e.record_digest,
                    &(e.latency_micros as i64),
                    &hex(&s.previous_hash),
                    &hex(&s.entry_hash),
                ],
            )
            .map_err(err)?;
        }
        tx.execute(
            "INSERT INTO audit_heads (writer, sequence, entry_hash) VALUES ($1, $2, $3)
             ON CONFLICT (writer) DO UPDATE SET sequence = excluded.sequence, entry_hash = excluded.entry_hash",
            &[&last.writer, &(last.sequence as i64), &hex(&last.entry_hash)],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, args) = filter.select(crate::Dialect::Postgres);
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| a as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let mut rows = self.client.query_raw(sql.as_str(), params).map_err(err)?;
        while let Some(row) =
            postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(err)?
        {
            if !visit(row_to_stored(&row)?) {
                break;
            }
        }
        Ok(())
    }
}
