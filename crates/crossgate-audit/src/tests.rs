use crate::*;
use std::path::PathBuf;

fn entry(n: u64) -> Entry {
    Entry {
        time: format!("2026-11-22T08:00:{:02}.000000Z", n % 60),
        request_id: format!("r-{n}"),
        kind: "query".into(),
        consumer: "education".into(),
        provider: "public-security".into(),
        record_type: "household.v1".into(),
        record_id: format!("{n}"),
        purpose: "school-enrolment".into(),
        approval_reference: "EDU-2025-0001".into(),
        decision: Decision::Allowed,
        reason: "grant education-household".into(),
        released_fields: vec!["/household_id".into(), "/members/-/name".into()],
        record_digest: digest(format!("record {n}").as_bytes()),
        latency_micros: 100 + n,
    }
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crossgate-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("audit.db")
}

/// A log of `n` entries by writer "broker-a", through the group-commit writer.
fn log(name: &str, n: u64) -> PathBuf {
    let path = temp_db(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let writer = Writer::start(
        Box::new(SqliteStore::open(&path).unwrap()),
        "broker-a".into(),
        Durability::Durable,
        64,
    )
    .unwrap();
    runtime.block_on(async {
        let appends: Vec<_> = (1..=n).map(|i| writer.append(entry(i))).collect();
        for a in appends {
            a.await.unwrap();
        }
    });
    path
}

fn broken(path: &std::path::Path) -> Option<(u64, String)> {
    let mut store = SqliteStore::open(path).unwrap();
    let reports = verify(&mut store).unwrap();
    assert_eq!(reports.len(), 1);
    reports[0].broken.clone()
}

fn tamper(path: &std::path::Path, sql: &str) {
    SqliteStore::open(path)
        .unwrap()
        .connection()
        .execute_batch(sql)
        .unwrap();
}

#[test]
fn an_untouched_log_verifies_and_keeps_its_entries_in_order() {
    let path = log("clean", 20);
    let mut store = SqliteStore::open(&path).unwrap();
    let reports = verify(&mut store).unwrap();
    assert_eq!(
        reports,
        vec![ChainReport {
            writer: "broker-a".into(),
            checked: 20,
            broken: None
        }]
    );
    let mut seen = Vec::new();
    store
        .scan(
            &Filter {
                consumer: Some("education".into()),
                ..Filter::default()
            },
            &mut |s| {
                seen.push((s.sequence, s.entry.clone()));
                true
            },
        )
        .unwrap();
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[4], (5, entry(5)));
    // A writer that restarts continues its chain.
    drop(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let writer = Writer::start(
        Box::new(SqliteStore::open(&path).unwrap()),
        "broker-a".into(),
        Durability::Durable,
        8,
    )
    .unwrap();
    runtime.block_on(writer.append(entry(21))).unwrap();
    assert_eq!(broken(&path), None);
}

#[test]
fn an_edited_field_is_found_at_its_entry() {
    let path = log("edit", 10);
    tamper(
        &path,
        "UPDATE audit_entries SET purpose = 'marketing' WHERE sequence = 6",
    );
    assert_eq!(
        broken(&path),
        Some((
            6,
            "its hash does not match its contents: the entry was edited".into()
        ))
    );
}

#[test]
fn a_deleted_row_is_found() {
    let path = log("delete", 10);
    tamper(&path, "DELETE FROM audit_entries WHERE sequence = 4");
    assert_eq!(
        broken(&path),
        Some((4, "sequence 4 is missing: an entry was deleted".into()))
    );
}

#[test]
fn two_swapped_rows_are_found() {
    let path = log("swap", 10);
    tamper(
        &path,
        "UPDATE audit_entries SET sequence = -1 WHERE sequence = 3;
         UPDATE audit_entries SET sequence = 3 WHERE sequence = 7;
         UPDATE audit_entries SET sequence = 7 WHERE sequence = -1;",
    );
    let (at, why) = broken(&path).unwrap();
    assert_eq!(at, 3, "{why}");
}

#[test]
fn a_cut_off_tail_is_found() {
    let path = log("truncate", 10);
    tamper(&path, "DELETE FROM audit_entries WHERE sequence > 8");
    assert_eq!(
        broken(&path),
        Some((
            9,
            "the chain ends at 8 but its head records 10: entries were cut off the end".into()
        ))
    );
}

#[test]
fn a_forged_row_with_a_recomputed_hash_is_found() {
    let path = log("forge", 10);
    // The forger copies entry 5, changes what was released, and recomputes
    // the row's own hash, linking it to entry 4 as if it belonged there.
    let mut store = SqliteStore::open(&path).unwrap();
    let mut four = None;
    store
        .scan(
            &Filter {
                chain_order: true,
                ..Filter::default()
            },
            &mut |s| {
                if s.sequence == 4 {
                    four = Some(s);
                }
                true
            },
        )
        .unwrap();
    let four = four.unwrap();
    let mut forged_entry = entry(5);
    forged_entry
        .released_fields
        .push("/members/-/id_number".into());
    let forged = Stored::seal("broker-a", 5, four.entry_hash, forged_entry);
    let e = &forged.entry;
    store
        .connection()
        .execute(
            "INSERT INTO audit_entries VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
            rusqlite::params![
                forged.writer, 5i64, e.time, e.request_id, e.kind, e.consumer, e.provider, e.record_type, e.record_id,
                e.purpose, e.approval_reference, e.decision.as_str(), e.reason,
                serde_json::to_string(&e.released_fields).unwrap(), e.record_digest, e.latency_micros as i64,
                entry::hex(&forged.previous_hash), entry::hex(&forged.entry_hash)
            ],
        )
        .unwrap();
    drop(store);
    assert_eq!(
        broken(&path),
        Some((5, "sequence 5 appears again: an inserted entry".into()))
    );
}

#[test]
fn one_changed_byte_in_the_file_is_found_at_its_entry() {
    let path = log("byte", 10);
    // Change one byte of entry 7's stored reason, straight in the file.
    let wal_free = {
        let store = SqliteStore::open(&path).unwrap();
        store
            .connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        std::fs::read(&path).unwrap()
    };
    let needle = b"r-7";
    let at = wal_free
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("entry 7 is in the file");
    let mut bytes = wal_free.clone();
    bytes[at + 2] = b'8';
    std::fs::write(&path, bytes).unwrap();
    let (seq, _) = broken(&path).unwrap();
    assert_eq!(seq, 7);
}
