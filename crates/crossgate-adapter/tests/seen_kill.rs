//! An adapter killed while it moves a delivery-id file of the first form
//! into the current one loses no id: the next open finds either the first
//! form untouched (and moves it) or the move complete, never half of it.
//!
//! The test runs itself as the adapter: a child process of this test binary
//! opens the file and is SIGKILLed at a random moment of the move.

use crossgate_adapter::seen::Seen;
use rusqlite::Connection;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child: the file it opens.
const CHILD: &str = "CROSSGATE_TEST_SEEN_OPEN";
const IDS: u64 = 150_000;
const ROUNDS: usize = 6;

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

    // How long an open that moves the file takes, child start included.
    let path = dir.join("calibrate.db");
    first_form(&path);
    let started = Instant::now();
    let status = open_in_child(&path).wait().unwrap();
    assert!(status.success(), "the child's open failed: {status}");
    let whole = started.elapsed();

    let mut killed_midway = 0;
    for round in 0..ROUNDS {
        let path = dir.join(format!("round-{round}.db"));
        first_form(&path);
        let mut child = open_in_child(&path);
        let at = Duration::from_micros(random_below(whole.as_micros() as u64));
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_midway += 1;
        }

        // The next open: every id, in the order of the first form.
        let seen = Seen::open(&path, IDS * 2).expect("reopen");
        for n in [0, 1, IDS / 2, IDS - 1] {
            assert!(seen.contains(&id(n)), "round {round}: {} forgotten", id(n));
        }
        drop(seen);
        let conn = Connection::open(&path).unwrap();
        let old_table: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'delivered'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_table, 0, "round {round}: the first form is still there");
        let mut stmt = conn
            .prepare("SELECT delivery_id FROM remembered ORDER BY at")
            .unwrap();
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ids.len() as u64,
            IDS,
            "round {round} (killed after {at:?}): each id once"
        );
        // Oldest first: the first form's `at` ran backwards against the ids.
        assert!(
            ids.iter().zip((0..IDS).rev()).all(|(got, n)| *got == id(n)),
            "round {round}: the order of remembering is lost"
        );
    }
    // The moments fall within the open's duration: most kills land
    // before the child is done (a kill after it is a round that proves less).
    assert!(
        killed_midway >= ROUNDS / 2,
        "only {killed_midway} of {ROUNDS} kills landed before the open ended ({whole:?})"
    );
}
