//! A broker killed at any moment of its audit writer's work, while it
//! commits or while it rests and copies SQLite's log into the database
//! file, loses no entry it acknowledged, and its chain still verifies.
//!
//! The test runs itself as the broker: a child process of this test binary
//! appends entries in bursts of 64 awaited commits (the writer copies its log
//! into the file at the rest after each 64th), pausing between bursts,
//! prints how many were acknowledged as it goes,
//! and is SIGKILLed: in even rounds as soon as the database file grows (a
//! checkpoint is copying pages into it), in odd rounds at a random moment.
//! Every round appends to the same log, so each starts on what the kill
//! before it left.

use crossgate_audit::{Decision, Durability, Entry, Kind, SqliteStore, Writer, digest, verify};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child: the log it writes.
const CHILD: &str = "CROSSGATE_TEST_AUDIT_REST_KILL";
const ROUNDS: usize = 16;
/// Commits between the writer's checkpoints at rest.
const BURST: u64 = 64;

fn entry(n: u64) -> Entry {
    Entry {
        time: format!("2026-12-07T08:{:02}:{:02}.000000Z", (n / 60) % 60, n % 60),
        request_id: format!("r-{n}"),
        kind: Kind::Query,
        consumer: "education".into(),
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        record_id: format!("opaque-{n}"),
        purpose: "school-enrolment".into(),
        approval_reference: "EDU-2025-0001".into(),
        decision: Decision::Allowed,
        // Long, so that each commit writes several pages and a checkpoint
        // has many to copy.
        reason: format!("grant education-person; {}", "x".repeat(900)),
        released_fields: vec!["/name".into(), "/birth_date".into()],
        record_digest: digest(format!("record {n}").as_bytes()),
        latency_micros: n,
    }
}

/// The child: append forever in bursts, printing the count acknowledged
/// after each acknowledgement.
fn child(path: &Path) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let writer = Writer::start(
        Box::new(SqliteStore::open(path).expect("open")),
        "broker-a".into(),
        Durability::Durable,
        64,
    )
    .expect("writer");
    let mut out = std::io::stdout().lock();
    runtime.block_on(async {
        let mut acknowledged = 0u64;
        loop {
            for _ in 0..BURST {
                writer
                    .append(entry(acknowledged + 1))
                    .await
                    .expect("append");
                acknowledged += 1;
                writeln!(out, "acknowledged {acknowledged}").unwrap();
                out.flush().unwrap();
            }
            // The writer rests after each awaited commit, and after the
            // 64th since its last copy it copies the log into the file;
            // the pause lets that copy run with nothing after it.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

fn random_below(n: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % n.max(1)
}

/// Whether the process died inside a checkpoint's copy, by SQLite's
/// shared index (the `-shm` file, which outlives the process): a copy
/// records the frames it sets out to copy (`nBackfillAttempted`, at byte
/// 128) before it starts and the frames copied (`nBackfill`, at byte 96)
/// once they are in the file and it is synced.
fn copy_interrupted(db: &Path) -> bool {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let Ok(bytes) = std::fs::read(shm) else {
        return false;
    };
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    word(128) > word(96)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_writer_killed_while_it_commits_or_copies_its_log_loses_no_acknowledged_entry() {
    if let Ok(path) = std::env::var(CHILD) {
        child(Path::new(&path));
    }
    let dir = crossgate_testing::TempDir::new("audit-rest-kill");
    let path = dir.join("audit.db");
    // Made before the first round, so that any growth of the file is a
    // checkpoint's.
    drop(SqliteStore::open(&path).unwrap());
    let mut acknowledged = 0u64;
    let mut during_copy = 0;
    // Further rounds, all aimed at a copy, while fewer than two kills have
    // landed inside one (a slow or busy machine may miss some).
    let mut round = 0;
    while round < ROUNDS || (during_copy < 2 && round < 3 * ROUNDS) {
        // The parent's last close copied the whole log in: the file's size
        // now is what the next checkpoint grows.
        let before = file_len(&path);
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_writer_killed_while_it_commits_or_copies_its_log_loses_no_acknowledged_entry",
                "--test-threads=1",
            ])
            .env(CHILD, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed on drop, should an assertion end the test first.
        let mut children = crossgate_testing::Processes(vec![child]);
        let child = &mut children.0[0];
        // Read as it comes (a full pipe would stall the child).
        let stdout = child.stdout.take().unwrap();
        let told = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // The first may follow the test harness's own words.
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .last()
                .unwrap_or(0)
        });
        let by_copy = round % 2 == 0 || round >= ROUNDS;
        let deadline = if by_copy {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(50 + random_below(400))
        };
        let started = Instant::now();
        let copying = loop {
            let grew = file_len(&path) > before;
            if (by_copy && grew) || started.elapsed() >= deadline {
                break grew;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: the child ended by itself: {status}");
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        if by_copy && copying && copy_interrupted(&path) {
            during_copy += 1;
        }
        // What the child had been told was committed before it died.
        acknowledged += told.join().unwrap();

        let mut store = SqliteStore::open(&path).expect("the log opens after the kill");
        let reports = verify(&mut store).unwrap();
        let kept = match reports.as_slice() {
            // Killed before its first commit, with nothing before it.
            [] => 0,
            [chain] => {
                assert_eq!(chain.broken, None, "round {round}");
                chain.checked
            }
            more => panic!("round {round}: one chain expected: {more:?}"),
        };
        assert!(
            kept >= acknowledged,
            "round {round}: {kept} entries kept, {acknowledged} acknowledged"
        );
        // Whatever was committed but not yet told counts from now on: the
        // next child continues the chain after it.
        acknowledged = kept;
        round += 1;
    }
    eprintln!("{during_copy} kills in {round} rounds came inside a copy");
    // Some of the kills aimed at a checkpoint came inside its copy.
    assert!(
        during_copy >= 2,
        "only {during_copy} kills in {round} rounds came while the log was being copied"
    );
}
