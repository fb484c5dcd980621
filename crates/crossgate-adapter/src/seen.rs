//! Delivery ids this adapter has passed on to its department's system, so a
//! delivery the broker sends again (after a timeout or a restart) is
//! acknowledged without reaching the system twice.
//!
//! Kept in a small SQLite file of the adapter's own (WAL, synchronous
//! NORMAL: it survives the adapter's crash; after a power cut the newest ids
//! may be forgotten, and the system sees the delivery id again in
//! `ReceiveRequest` to dedupe on its side). Bounded: the oldest ids beyond
//! `capacity` are forgotten; the broker stops retrying an id once it is
//! acknowledged, so only recent ids can come again.

use rusqlite::{Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

/// The remembered delivery ids.
pub struct Seen {
    conn: Mutex<Connection>,
    /// Ids being handed to the system right now.
    in_flight: Mutex<HashSet<String>>,
    capacity: u64,
}

/// Why the store of delivery ids cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("delivery-id store {path}: {reason}")]
pub struct SeenError {
    pub path: String,
    pub reason: String,
}

/// How many ids are remembered by default.
pub const DEFAULT_CAPACITY: u64 = 100_000;

impl Seen {
    /// Open (creating if needed) the file at `path`.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, SeenError> {
        let fail = |reason: String| SeenError {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        Self::with(conn, capacity).map_err(|e| fail(e.to_string()))
    }

    /// Remembered in memory only (tests, and adapters run without a state folder).
    pub fn memory(capacity: u64) -> Result<Self, SeenError> {
        Connection::open_in_memory()
            .and_then(|conn| Self::with(conn, capacity))
            .map_err(|e| SeenError {
                path: ":memory:".into(),
                reason: e.to_string(),
            })
    }

    fn with(conn: Connection, capacity: u64) -> rusqlite::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS delivered (delivery_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS delivered_at ON delivered (at)",
        )?;
        Ok(Seen {
            conn: Mutex::new(conn),
            in_flight: Mutex::new(HashSet::new()),
            capacity: capacity.max(1),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` was passed on before.
    pub fn contains(&self, id: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM delivered WHERE delivery_id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Remember `id`; forget the oldest beyond the capacity.
    pub fn remember(&self, id: &str) -> rusqlite::Result<()> {
        let conn = self.conn();
        let n: i64 = conn
            .prepare_cached("INSERT OR IGNORE INTO delivered (delivery_id, at) VALUES (?1, (SELECT COALESCE(MAX(at), 0) + 1 FROM delivered)) RETURNING at")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let capacity = i64::try_from(self.capacity).unwrap_or(i64::MAX);
        // Trim in steps of a tenth, not on every insert.
        if n > capacity && n % (capacity / 10).max(1) == 0 {
            conn.prepare_cached("DELETE FROM delivered WHERE at <= ?1")?
                .execute([n - capacity])?;
        }
        Ok(())
    }

    /// Mark `id` as being handed over; `false` when it already is.
    pub fn begin(&self, id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }

    pub fn end(&self, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// A hand-over under way: `id` is released when this is dropped, however
/// the hand-over ends.
pub struct Handing {
    pub seen: std::sync::Arc<Seen>,
    pub id: String,
}

impl Drop for Handing {
    fn drop(&mut self) {
        self.seen.end(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_a_reopen_and_the_oldest_are_forgotten_beyond_the_capacity() {
        let dir = crossgate_testing::TempDir::new("seen");
        let path = dir.join("delivered.db");
        {
            let seen = Seen::open(&path, 10).unwrap();
            for i in 0..10 {
                seen.remember(&format!("d{i}")).unwrap();
            }
            seen.remember("d0").unwrap();
            assert!(seen.contains("d0").unwrap());
        }
        let seen = Seen::open(&path, 10).unwrap();
        assert!(seen.contains("d9").unwrap(), "kept across a restart");
        assert!(!seen.contains("x").unwrap());
        for i in 10..20 {
            seen.remember(&format!("d{i}")).unwrap();
        }
        assert!(!seen.contains("d0").unwrap(), "the oldest are forgotten");
        assert!(seen.contains("d19").unwrap());
        assert!(seen.begin("d5"));
        assert!(!seen.begin("d5"), "one hand-over at a time");
        seen.end("d5");
        assert!(seen.begin("d5"));
    }
}
