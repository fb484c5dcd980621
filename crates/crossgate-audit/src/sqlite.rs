//! The embedded store: one SQLite file in WAL mode.

use crate::entry::{Decision, Entry, Stored, hex, unhex32};
use crate::{Filter, Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;

pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_entries (
    writer TEXT NOT NULL,
    sequence INTEGER NOT NULL,
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
    latency_micros INTEGER NOT NULL,
    previous_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_entries_chain ON audit_entries (writer, sequence);
CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (time);
CREATE TABLE IF NOT EXISTS audit_heads (
    writer TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    entry_hash TEXT NOT NULL
);
";

fn err(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqliteStore {
    /// Open (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // FULL: a committed batch survives a power cut, which is what "durable" promises.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteStore { conn })
    }

    /// Direct access, for tests that tamper with the file.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn row_to_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let released: String = row.get("released_fields")?;
    let decision: String = row.get("decision")?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what}").into(),
        )
    };
    Ok(Stored {
        writer: row.get("writer")?,
        sequence: row.get::<_, i64>("sequence")? as u64,
        entry: Entry {
            time: row.get("time")?,
            request_id: row.get("request_id")?,
            kind: row.get("kind")?,
            consumer: row.get("consumer")?,
            provider: row.get("provider")?,
            record_type: row.get("record_type")?,
            record_id: row.get("record_id")?,
            purpose: row.get("purpose")?,
            approval_reference: row.get("approval_reference")?,
            // An unknown decision word keeps the entry readable; verify then
            // flags it, because its hash no longer matches.
            decision: Decision::parse(&decision).unwrap_or(Decision::Changed),
            reason: row.get("reason")?,
            released_fields: serde_json::from_str(&released).unwrap_or_default(),
            record_digest: row.get("record_digest")?,
            latency_micros: row.get::<_, i64>("latency_micros")? as u64,
        },
        previous_hash: unhex32(&row.get::<_, String>("previous_hash")?)
            .ok_or_else(|| bad("previous_hash"))?,
        entry_hash: unhex32(&row.get::<_, String>("entry_hash")?)
            .ok_or_else(|| bad("entry_hash"))?,
    })
}

impl Store for SqliteStore {
    fn head(&mut self, writer: &str) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.conn
            .query_row(
                "SELECT sequence, entry_hash FROM audit_heads WHERE writer = ?1",
                [writer],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(err)?
            .map(|(s, h)| {
                unhex32(&h)
                    .map(|h| (s, h))
                    .ok_or_else(|| StoreError("a chain head is damaged".into()))
            })
            .transpose()
    }

    fn heads(&mut self) -> Result<BTreeMap<String, (u64, [u8; 32])>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT writer, sequence, entry_hash FROM audit_heads")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(err)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (w, s, h) = row.map_err(err)?;
            out.insert(w, (s, unhex32(&h).unwrap_or([0xff; 32])));
        }
        Ok(out)
    }

    fn append(&mut self, batch: &[Stored]) -> Result<(), StoreError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit_entries (writer, sequence, time, request_id, kind, consumer, provider, record_type,
                     record_id, purpose, approval_reference, decision, reason, released_fields, record_digest,
                     latency_micros, previous_hash, entry_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )
                .map_err(err)?;
            for s in batch {
                let e = &s.entry;
                insert
                    .execute(params![
                        s.writer,
                        s.sequence as i64,
                        e.time,
                        e.request_id,
                        e.kind,
                        e.consumer,
                        e.provider,
                        e.record_type,
                        e.record_id,
                        e.purpose,
                        e.approval_reference,
                        e.decision.as_str(),
                        e.reason,
                        serde_json::to_string(&e.released_fields).unwrap_or_else(|_| "[]".into()),
                        e.record_digest,
                        e.latency_micros as i64,
                        hex(&s.previous_hash),
                        hex(&s.entry_hash),
                    ])
                    .map_err(err)?;
            }
            tx.execute(
                "INSERT INTO audit_heads (writer, sequence, entry_hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT (writer) DO UPDATE SET sequence = excluded.sequence, entry_hash = excluded.entry_hash",
                params![last.writer, last.sequence as i64, hex(&last.entry_hash)],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, args) = filter.select(crate::Dialect::Sqlite);
        let mut stmt = self.conn.prepare(&sql).map_err(err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            if !visit(row_to_stored(row).map_err(err)?) {
                break;
            }
        }
        Ok(())
    }
}
