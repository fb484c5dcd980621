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
//!
//! Every remembered id is also held in memory (read from the file at open),
//! so checking a delivery reads no file; ids are written by one thread of
//! the store's own, which commits whatever has queued up in one transaction
//! (as the broker's audit log does) and answers each waiting delivery once
//! its id is in the file.
//!
//! Since memory answers every lookup, the file needs no index on the ids: it
//! is one table in the order of remembering (SQLite numbers the rows), so a
//! commit appends to its last page and a trim cuts its first ones. (Keyed by
//! the id, as the first version was, every id of a batch landed on a page of
//! its own at random, and each commit wrote and later checkpointed one page
//! per id. A file in that form is moved into this one at open.) Positions in
//! memory are this process's own, so two processes sharing one file (adapters
//! started from one folder) each append without failing, and a reopen sees
//! what both wrote. Sharing is tolerated, not a way to run replicas: each
//! process checks only the ids it knows, and the file keeps the newest
//! `capacity` ids of both together.

use rusqlite::Connection;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The remembered delivery ids.
pub struct Seen {
    known: Arc<Mutex<Known>>,
    /// Ids being handed to the system right now.
    in_flight: Mutex<HashSet<String>>,
    capacity: u64,
    /// The file's writer thread; `None`: remembered in memory only.
    file: Option<(String, mpsc::UnboundedSender<Job>)>,
}

/// Every id remembered, with its position in the order of remembering.
#[derive(Default)]
struct Known {
    ids: HashMap<Box<str>, u64>,
    last: u64,
}

impl Known {
    /// Positions for those of `ids` not yet known, and, when the count
    /// passes a step of a tenth of `capacity`, the position up to which the
    /// oldest are then forgotten (trimmed in steps, not on every id).
    fn plan<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        capacity: u64,
    ) -> (Vec<(&'a str, u64)>, Option<u64>) {
        let mut last = self.last;
        let mut batch = HashSet::new();
        let mut added = Vec::new();
        for id in ids {
            if !self.ids.contains_key(id) && batch.insert(id) {
                last += 1;
                added.push((id, last));
            }
        }
        let step = (capacity / 10).max(1);
        let cutoff = (last > capacity && self.last / step != last / step).then(|| last - capacity);
        (added, cutoff)
    }

    fn apply(&mut self, added: &[(&str, u64)], cutoff: Option<u64>) {
        for (id, at) in added {
            self.ids.insert((*id).into(), *at);
            self.last = self.last.max(*at);
        }
        if let Some(cutoff) = cutoff {
            self.ids.retain(|_, at| *at > cutoff);
        }
    }
}

type Job = (String, oneshot::Sender<Result<(), String>>);

/// Why the store of delivery ids cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("delivery-id store {path}: {reason}")]
pub struct SeenError {
    pub path: String,
    pub reason: String,
}

/// How many ids are remembered by default.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// The most ids written in one transaction.
const MAX_BATCH: usize = 1024;

impl Seen {
    /// Open (creating if needed) the file at `path`.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, SeenError> {
        let shown = path.display().to_string();
        let fail = |reason: String| SeenError {
            path: shown.clone(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        let known = read(&conn).map_err(|e| fail(e.to_string()))?;
        let mut seen = Self::memory(capacity);
        seen.known = Arc::new(Mutex::new(known));
        let (tx, rx) = mpsc::unbounded_channel();
        let known = seen.known.clone();
        let capacity = seen.capacity;
        std::thread::Builder::new()
            .name("delivered-ids".into())
            .spawn(move || write_batches(conn, known, capacity, rx))
            .map_err(|e| fail(format!("cannot start its writer: {e}")))?;
        seen.file = Some((shown, tx));
        Ok(seen)
    }

    /// Remembered in memory only (tests, and adapters run without a state folder).
    pub fn memory(capacity: u64) -> Self {
        Seen {
            known: Arc::default(),
            in_flight: Mutex::new(HashSet::new()),
            capacity: capacity.max(1),
            file: None,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        lock(&self.known)
    }

    /// Whether `id` was passed on before.
    pub fn contains(&self, id: &str) -> bool {
        self.known().ids.contains_key(id)
    }

    /// Remember `id` (forgetting the oldest beyond the capacity); returns
    /// once it is in the file.
    pub async fn remember(&self, id: &str) -> Result<(), SeenError> {
        let Some((path, writer)) = &self.file else {
            let mut known = self.known();
            let (added, cutoff) = known.plan(std::iter::once(id), self.capacity);
            known.apply(&added, cutoff);
            return Ok(());
        };
        let fail = |reason: String| SeenError {
            path: path.clone(),
            reason,
        };
        let (reply, written) = oneshot::channel();
        writer
            .send((id.to_owned(), reply))
            .map_err(|_| fail("its writer has stopped".into()))?;
        written
            .await
            .map_err(|_| fail("its writer has stopped".into()))?
            .map_err(fail)
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

fn lock(known: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    known.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prepare the file and read what it remembers.
fn read(conn: &Connection) -> rusqlite::Result<Known> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Every commit rewrites the table's last page: checkpoints every
    // 10,000 log pages (not SQLite's 1,000) copy it into the file ten times
    // less often (publish +7 % by deploy/bench-ab.sh, 7 rounds). The log
    // file stays at about 41 MB once it has grown; one that grew past 64 MiB
    // is cut back when next reset. With synchronous NORMAL the log is synced
    // at checkpoints, so a power cut may now forget more of the newest ids.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // The file is this adapter's own (another process sharing it by mistake
    // takes its lock only to commit): a lock held for long is a fault to
    // report, not to wait out.
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS remembered (at INTEGER PRIMARY KEY, delivery_id TEXT NOT NULL)",
    )?;
    move_first_form(conn)?;
    let mut known = Known::default();
    let mut stmt = conn.prepare("SELECT delivery_id FROM remembered ORDER BY at")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        known.last += 1;
        known.ids.insert(id.into(), known.last);
    }
    Ok(known)
}

/// A file of the first form (`delivered`, keyed by the id) moved into
/// `remembered`, order kept. Only a file that has the old table takes the
/// write lock; the check is made again under it, so a second process opening
/// the file at the same moment finds it moved.
fn move_first_form(conn: &Connection) -> rusqlite::Result<()> {
    let first_form = || {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'delivered')",
            [],
            |r| r.get::<_, bool>(0),
        )
    };
    if !first_form()? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = first_form().and_then(|still| {
        if still {
            conn.execute_batch(
                "INSERT INTO remembered (delivery_id) SELECT delivery_id FROM delivered ORDER BY at;
                 DROP TABLE delivered",
            )?;
        }
        Ok(())
    });
    match moved {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            // The failure is what to report; SQLite may have rolled back already.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The writer thread: each turn commits every id queued so far in one
/// transaction, then answers their callers; ends when the store is dropped.
fn write_batches(
    mut conn: Connection,
    known: Arc<Mutex<Known>>,
    capacity: u64,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Memory learns the ids once the file holds them; only this thread
        // adds to it, so the plan made before the write still stands after.
        let (added, cutoff) = lock(&known).plan(batch.iter().map(|(id, _)| id.as_str()), capacity);
        let written = write(&mut conn, &added, cutoff.map(|_| capacity));
        if written.is_ok() {
            lock(&known).apply(&added, cutoff);
        }
        let answer = written.map_err(|e| e.to_string());
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(answer.clone());
        }
    }
}

/// Append `added` to the file; with `keep`, then forget all but the newest
/// `keep` rows (when memory trims too).
fn write(conn: &mut Connection, added: &[(&str, u64)], keep: Option<u64>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO remembered (delivery_id) VALUES (?1)")?;
        for (id, _) in added {
            insert.execute([id])?;
        }
    }
    if let Some(keep) = keep {
        tx.execute(
            "DELETE FROM remembered WHERE at <= (SELECT MAX(at) FROM remembered) - ?1",
            [i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
    }
    tx.commit()
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

    #[tokio::test]
    async fn ids_survive_a_reopen_and_the_oldest_are_forgotten_beyond_the_capacity() {
        let dir = crossgate_testing::TempDir::new("seen");
        let path = dir.join("delivered.db");
        {
            let seen = Seen::open(&path, 10).unwrap();
            for i in 0..10 {
                seen.remember(&format!("d{i}")).await.unwrap();
            }
            seen.remember("d0").await.unwrap();
            assert!(seen.contains("d0"));
        }
        let seen = Seen::open(&path, 10).unwrap();
        assert!(seen.contains("d9"), "kept across a restart");
        assert!(!seen.contains("x"));
        for i in 10..20 {
            seen.remember(&format!("d{i}")).await.unwrap();
        }
        assert!(!seen.contains("d0"), "the oldest are forgotten");
        assert!(seen.contains("d19"));
        assert!(seen.begin("d5"));
        assert!(!seen.begin("d5"), "one hand-over at a time");
        seen.end("d5");
        assert!(seen.begin("d5"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_remembered_at_once_share_commits_and_are_all_in_the_file() {
        let dir = crossgate_testing::TempDir::new("seen-batch");
        let path = dir.join("delivered.db");
        {
            let seen = Arc::new(Seen::open(&path, 100_000).unwrap());
            let tasks: Vec<_> = (0..500)
                .map(|i| {
                    let seen = seen.clone();
                    tokio::spawn(async move { seen.remember(&format!("id-{i}")).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        // Read back by a new process's view of the file, not from memory.
        let conn = Connection::open(&path).unwrap();
        let (rows, distinct): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT delivery_id) FROM remembered",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((rows, distinct), (500, 500));
        let seen = Seen::open(&path, 100_000).unwrap();
        assert!((0..500).all(|i| seen.contains(&format!("id-{i}"))));
    }

    #[tokio::test]
    async fn a_file_of_the_first_form_keeps_its_ids_and_their_order() {
        let dir = crossgate_testing::TempDir::new("seen-first-form");
        let path = dir.join("delivered.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE delivered (delivery_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
                 CREATE INDEX delivered_at ON delivered (at);
                 INSERT INTO delivered VALUES ('old-1', 1), ('old-2', 2), ('old-3', 3)",
            )
            .unwrap();
        }
        let seen = Seen::open(&path, 3).unwrap();
        assert!(
            ["old-1", "old-2", "old-3"]
                .iter()
                .all(|id| seen.contains(id))
        );
        // The fourth id goes after them, so the oldest is the one forgotten.
        seen.remember("new-4").await.unwrap();
        assert!(!seen.contains("old-1"));
        assert!(seen.contains("old-2") && seen.contains("new-4"));
        drop(seen);
        let seen = Seen::open(&path, 3).unwrap();
        assert!(!seen.contains("old-1"));
        assert!(
            ["old-2", "old-3", "new-4"]
                .iter()
                .all(|id| seen.contains(id))
        );
        let conn = Connection::open(&path).unwrap();
        let first_form: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'delivered'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(first_form, 0, "the first form's table is gone");
    }

    #[tokio::test]
    async fn two_stores_sharing_one_file_both_write_and_a_reopen_knows_both() {
        let dir = crossgate_testing::TempDir::new("seen-shared");
        let path = dir.join("delivered.db");
        let first = Seen::open(&path, 100).unwrap();
        let second = Seen::open(&path, 100).unwrap();
        for i in 0..5 {
            first.remember(&format!("first-{i}")).await.unwrap();
            second.remember(&format!("second-{i}")).await.unwrap();
        }
        assert!(first.contains("first-4") && !first.contains("second-4"));
        drop((first, second));
        let reopened = Seen::open(&path, 100).unwrap();
        assert!((0..5).all(|i| reopened.contains(&format!("first-{i}"))
            && reopened.contains(&format!("second-{i}"))));
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_fails_the_remember_and_memory_does_not_keep_it() {
        let dir = crossgate_testing::TempDir::new("seen-fail");
        let path = dir.join("delivered.db");
        let seen = Seen::open(&path, 10).unwrap();
        seen.remember("kept").await.unwrap();
        // Another connection takes the write lock and holds it.
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let refused = seen.remember("not-kept").await.unwrap_err();
        assert!(
            refused.to_string().contains("delivery-id store"),
            "{refused}"
        );
        assert!(
            !seen.contains("not-kept"),
            "memory holds only what the file holds"
        );
        assert!(seen.contains("kept"));
        blocker.execute_batch("ROLLBACK").unwrap();
        seen.remember("not-kept").await.unwrap();
        assert!(seen.contains("not-kept"));
    }
}
