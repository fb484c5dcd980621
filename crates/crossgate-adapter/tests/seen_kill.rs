//! An adapter killed while it moves a delivery-id file of the first form
//! into the current one loses no id: the next open finds either the first
//! form untouched (and moves it) or the move complete, never half of it.
//!
//! The test runs itself as the adapter: a child process of this test binary
//! opens the file and is SIGKILLed inside the move: once the move's
//! transaction has written a random share of the log it writes (the log
//! grows while the transaction runs), or at a random moment of the whole
//! open.

use crossgate_adapter::seen::Seen;
use rusqlite::Connection;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child: the file it opens.
const CHILD: &str = "CROSSGATE_TEST_SEEN_OPEN";
const IDS: u64 = 150_000;
const ROUNDS: usize = 8;

fn id(n: u64) -> String {
    format!("delivery-{n:08}")
}

/// A file as the first version of the adapter left it: `IDS` ids, in order.
fn first_form(path: &Path) {
    let mut conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(
        "CREATE TABLE delivered (delivery_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
         CREATE INDEX delivered_at ON delivered (at);",
    )
    .unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO delivered (delivery_id, at) VALUES (?1, ?2)")
            .unwrap();
        // Numbered backwards, so that the order of `at` is not the order of the key.
        for n in 0..IDS {
            insert.execute((id(n), (IDS - n) as i64)).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Start this test again as the child that opens `path`.
fn open_in_child(path: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_move_killed_at_any_moment_loses_no_id_and_keeps_the_order",
            "--test-threads=1",
        ])
        .env(CHILD, path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn random_below(n: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % n.max(1)
}

#[test]
fn a_move_killed_at_any_moment_loses_no_id_and_keeps_the_order() {
    if let Ok(path) = std::env::var(CHILD) {
        // The child: open (which moves the file), then stop.
        Seen::open(Path::new(&path), IDS * 2).expect("open");
        std::process::exit(0);
    }
    let dir = crossgate_testing::TempDir::new("seen-kill");

    // An open that moves the file, watched: how large its log grows and
    // how long it takes, child start included. It must have moved the file
    // (a child that ran no test would leave it for the parent's reopen).
    let path = dir.join("calibrate.db");
    first_form(&path);
    let started = Instant::now();
    let mut child = open_in_child(&path);
    let mut largest = 0;
    let status = loop {
        largest = largest.max(wal_len(&path));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let whole = started.elapsed();
    assert!(status.success(), "the child's open failed: {status}");
    assert_moved(&path, "calibration");
    assert!(largest > 0, "the move wrote no log");

    let mut inside = 0;
    for round in 0..ROUNDS {
        let path = dir.join(format!("round-{round}.db"));
        first_form(&path);
        let mut child = open_in_child(&path);
        // Even rounds: once the log passes a random share of its size at
        // the end of the move; odd rounds: at a random moment of the open.
        let by_log = round % 2 == 0;
        let share = random_below(largest);
        let at = Duration::from_micros(random_below(whole.as_micros() as u64));
        let started = Instant::now();
        let log_when_killed = loop {
            let log = wal_len(&path);
            let due = if by_log {
                log > share
            } else {
                started.elapsed() >= at
            };
            if due || child.try_wait().unwrap().is_some() {
                break log;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Killed before it finished: it counts as inside the move once the
        // move had begun (its log written to). A kill that came earlier (a
        // random moment in the child's start) still gets the reopen's check
        // below. A child that was not killed must have opened the file.
        if status.signal() == Some(libc_sigkill()) {
            if log_when_killed > 0 {
                inside += 1;
            }
        } else {
            assert!(
                status.success(),
                "round {round}: the child failed: {status}"
            );
        }

        // The next open: every id once, in the order of the first form.
        let seen = Seen::open(&path, IDS * 2).expect("reopen");
        for n in [0, 1, IDS / 2, IDS - 1] {
            assert!(seen.contains(&id(n)), "round {round}: {} forgotten", id(n));
        }
        drop(seen);
        assert_moved(&path, &format!("round {round} (killed: {status})"));
    }
    // Most kills land inside the move (a kill after it proves less).
    assert!(
        inside >= ROUNDS / 2,
        "only {inside} of {ROUNDS} kills landed inside the move (an open takes {whole:?}, its log {largest} bytes)"
    );
}

fn wal_len(db: &Path) -> u64 {
    let mut wal = PathBuf::from(db).into_os_string();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// SIGKILL's number on Linux (the only platform these tests run on).
fn libc_sigkill() -> i32 {
    9
}

/// The file holds `IDS` ids once each in `remembered`, oldest first as the
/// first form ordered them, and the first form's table is gone.
fn assert_moved(path: &Path, when: &str) {
    let conn = Connection::open(path).unwrap();
    let old_table: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_table, 0, "{when}: the first form is still there");
    let mut stmt = conn
        .prepare("SELECT delivery_id FROM remembered ORDER BY at")
        .unwrap();
    let ids: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len() as u64, IDS, "{when}: each id once");
    // Oldest first: the first form's `at` ran backwards against the ids.
    assert!(
        ids.iter().zip((0..IDS).rev()).all(|(got, n)| *got == id(n)),
        "{when}: the order of remembering is lost"
    );
}
