//! The embedded store: one SQLite file in WAL mode.

use crate::dialect::{Columns, Dialect, Param, Statement, decode_item, encode, offer};
use crate::entry::{Stored, hex, unhex32};
use crate::outbox::{Claim, Item, Op, OutboxFilter, Prior, State};
use crate::{Filter, Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;

pub struct SqliteStore {
    conn: Connection,
    path: std::path::PathBuf,
    /// Lock files of the chains this store writes, held while it is open.
    locks: Vec<std::fs::File>,
    /// Commits since the log was last copied into the file at a rest.
    commits_unchecked: u32,
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

/// Pages written to the log between checkpoints (SQLite's default is
/// 1,000). Measured with `deploy/bench-ab.sh`: publish +12 to +17 %
/// against 1,000; 30,000 was faster still but doubled the pause a
/// checkpoint makes (p99).
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// Commits after which a rest of the writer copies the log into the file
/// (a passive checkpoint, which waits for no reader). At a steady 6,000
/// queries/s (about 600 commits of eight pages each) that is about every
/// 0.1 s and 500 pages: a pause of a millisecond or two, usually while
/// nothing waits (a commit that comes meanwhile waits for it), instead of
/// one of tens of milliseconds every two seconds in the middle of a commit
/// when the log reaches WAL_CHECKPOINT_PAGES. Under a load that never lets
/// the writer rest, WAL_CHECKPOINT_PAGES still holds.
const CHECKPOINT_AT_REST_COMMITS: u32 = 64;

/// A log file that grew past this (a reader held back checkpoints) is cut
/// back to it when it is next reset; at about 41 MB per checkpoint a log
/// that keeps up never reaches it, and stays at that size to be reused.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// A new log is made readable by its owner only: its outbox holds the
/// records waiting for their receivers. SQLite gives its `-wal` and `-shm`
/// files the mode of the file itself. An existing log keeps its mode (an
/// operator may have given a group access); one that any user of the
/// machine may read is named in a warning, once per process.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(()); // SQLite's own, in memory: no file
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            let readable = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(path)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o004 != 0)
            };
            #[cfg(not(unix))]
            let readable = false;
            if readable && first_warning(path) {
                tracing::warn!(
                    path = %path.display(),
                    "the audit log is readable by every user of this machine, and its outbox holds records waiting for delivery; chmod o-rwx it (and its -wal and -shm files)"
                );
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Failed(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Whether this process has not yet warned of `path` (the log is opened
/// for every audit call and console page; once is enough).
fn first_warning(path: &Path) -> bool {
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.iter().any(|p| p == path) {
        return false;
    }
    warned.push(path.to_path_buf());
    true
}

impl SqliteStore {
    /// Open (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        owner_only(path)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Failed(format!("cannot open {}: {e}", path.display())))?;
        // A second connection (a reader, another broker) waits for the
        // writer's lock, or for another's recovery of a large log, instead
        // of failing at once; from the first statement on.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // Checkpoints copy the log's pages into the file. Publishing
        // rewrites the same pages (the tails of the tables and indexes, the
        // outbox rows a delivery updates) in commit after commit: with a
        // checkpoint every WAL_CHECKPOINT_PAGES instead of SQLite's 1,000,
        // each is copied once per checkpoint rather than many times.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(err)?;
        // A log that grew far past its usual size is cut back once reset.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(err)?;
        // FULL: a committed batch survives a power cut, which is what "durable" promises.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(&Dialect::Sqlite.schema()).map_err(err)?;
        conn.execute_batch(&Dialect::Sqlite.outbox_schema())
            .map_err(err)?;
        // An outbox made before its lease columns gets them (empty: anyone's).
        for column in Dialect::Sqlite.outbox_added_columns() {
            let present: bool = conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = ?1",
                    [column],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE outbox ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                ))
                .map_err(err)?;
            }
        }
        // A column an earlier build of the lease work made, no longer written.
        let stale: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'lease_until'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if stale {
            conn.execute_batch("ALTER TABLE outbox DROP COLUMN lease_until")
                .map_err(err)?;
        }
        conn.execute_batch(Dialect::Sqlite.outbox_leases())
            .map_err(err)?;
        if let Err(e) = conn.execute_batch(Dialect::Sqlite.unique_chain()) {
            tracing::warn!(error = %e, "the log holds a chain position twice; run crossgate audit verify");
            conn.execute_batch(Dialect::Sqlite.plain_chain())
                .map_err(err)?;
        }
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            locks: Vec::new(),
            commits_unchecked: 0,
        })
    }

    /// Direct access, for tests that tamper with the file.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> Result<String, StoreError> {
        self.get(name).map_err(err)
    }
    fn int(&self, name: &str) -> Result<i64, StoreError> {
        self.get(name).map_err(err)
    }
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.get(name).map_err(err)
    }
}

/// Bound as it is: text and bytes are borrowed, not copied.
impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::Int(i) => ValueRef::Integer(*i),
            Param::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

/// A statement run through the connection's cache of prepared statements.
fn run(tx: &rusqlite::Transaction<'_>, (sql, args): Statement<'_>) -> Result<(), StoreError> {
    tx.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(args.iter())))
        .map(|_| ())
        .map_err(err)
}

impl Store for SqliteStore {
    /// An exclusive lock on `<log>.<writer>.lock` beside the file: released
    /// by the operating system when the process ends, however it ends.
    fn lock_writer(&mut self, writer: &str) -> Result<(), StoreError> {
        let safe: String = writer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{safe}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .map_err(|e| {
                StoreError::Failed(format!(
                    "cannot open the chain lock {}: {e}",
                    std::path::Path::new(&name).display()
                ))
            })?;
        match lock.try_lock() {
            Ok(()) => {
                self.locks.push(lock);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(StoreError::WriterInUse(writer.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Failed(format!(
                "cannot lock {}: {e}",
                std::path::Path::new(&name).display()
            ))),
        }
    }

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
                    .ok_or_else(|| StoreError::Failed("a chain head is damaged".into()))
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

    fn commit(&mut self, batch: &[Stored], ops: &[Op], claims: &[Claim]) -> Result<(), StoreError> {
        if batch.is_empty() && ops.is_empty() && claims.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(err)?;
        for claim in claims {
            run(&tx, Dialect::Sqlite.claim(claim))?;
        }
        for op in ops {
            for statement in Dialect::Sqlite.outbox_op(op) {
                run(&tx, statement)?;
            }
        }
        {
            let mut insert = tx.prepare_cached(Dialect::Sqlite.insert()).map_err(err)?;
            for s in batch {
                insert
                    .execute(rusqlite::params_from_iter(encode(s).iter()))
                    .map_err(err)?;
            }
            if let Some(last) = batch.last() {
                tx.prepare_cached(Dialect::Sqlite.move_head())
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            last.writer,
                            last.sequence as i64,
                            hex(&last.entry_hash)
                        ])
                    })
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.commits_unchecked = self.commits_unchecked.saturating_add(1);
        Ok(())
    }

    fn rest(&mut self) {
        if self.commits_unchecked < CHECKPOINT_AT_REST_COMMITS {
            return;
        }
        // Counted afresh either way: a failing checkpoint is tried (and
        // logged) once per CHECKPOINT_AT_REST_COMMITS commits, not at every
        // rest.
        self.commits_unchecked = 0;
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, file = %self.path.display(), "cannot copy the audit log's WAL into its file; tried again later");
        }
    }

    fn find_claim(&mut self, provider: &str, key: &str) -> Result<Option<Prior>, StoreError> {
        self.conn
            .prepare_cached(Dialect::Sqlite.find_claim())
            .and_then(|mut stmt| {
                stmt.query_row([provider, key], |r| {
                    Ok(Prior {
                        request_id: r.get(0)?,
                        record_digest: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(err)
    }

    fn count_outbox(&mut self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&Dialect::Sqlite.count_outbox())
            .map_err(err)?;
        let rows = stmt
            .query_map([state.as_str()], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(err)?;
        rows.map(|r| {
            r.map(|(receiver, n)| (receiver, n.max(0) as u64))
                .map_err(err)
        })
        .collect()
    }

    fn scan_outbox(
        &mut self,
        filter: &OutboxFilter,
        visit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, args) = Dialect::Sqlite.select_outbox(filter);
        let mut stmt = self.conn.prepare(&sql).map_err(err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            if !visit(decode_item(row)?) {
                break;
            }
        }
        Ok(())
    }

    fn scan_rows(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Result<Stored, StoreError>) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, args) = Dialect::Sqlite.select(filter);
        let mut stmt = self.conn.prepare(&sql).map_err(err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            if !offer(row, visit)? {
                break;
            }
        }
        Ok(())
    }
}
