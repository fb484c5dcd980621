use crate::*;

fn entry(n: u64) -> Entry {
    Entry {
        time: format!("2026-11-22T08:00:{:02}.000000Z", n % 60),
        request_id: format!("r-{n}"),
        kind: crate::Kind::Query,
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

/// Where a test's log lives: SQLite always; PostgreSQL too when
/// CROSSGATE_TEST_DATABASE_URL is set (each test in a schema of its own).
enum Backend {
    /// The log is `audit.db` in this folder (removed when the test ends).
    Sqlite(crossgate_testing::TempDir),
    Postgres {
        url: String,
        schema: String,
    },
}

impl Backend {
    fn all(name: &str) -> Vec<Backend> {
        let mut out = vec![Backend::Sqlite(crossgate_testing::TempDir::new(&format!(
            "audit-{name}"
        )))];
        if let Ok(url) = std::env::var("CROSSGATE_TEST_DATABASE_URL") {
            let schema = format!("audit_{name}_{}", std::process::id());
            let mut client =
                ::postgres::Client::connect(&url, ::postgres::NoTls).expect("the test database");
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .unwrap();
            out.push(Backend::Postgres { url, schema });
        }
        out
    }

    fn open(&self) -> Box<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Box::new(SqliteStore::open(&dir.join("audit.db")).unwrap()),
            Backend::Postgres { url, schema } => {
                Box::new(PostgresStore::connect(url, Some(schema)).unwrap())
            }
        }
    }

    /// Change the table behind the log's back.
    fn tamper(&self, sql: &str) {
        match self {
            Backend::Sqlite(dir) => SqliteStore::open(&dir.join("audit.db"))
                .unwrap()
                .connection()
                .execute_batch(sql)
                .unwrap(),
            Backend::Postgres { url, schema } => PostgresStore::connect(url, Some(schema))
                .unwrap()
                .client()
                .batch_execute(sql)
                .unwrap(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// Append `n` entries as writer "broker-a" through the group-commit writer.
fn log(b: &Backend, n: u64) {
    log_as(b, "broker-a", n);
}

fn log_as(b: &Backend, writer: &str, n: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let writer = Writer::start(b.open(), writer.into(), Durability::Durable, 64).unwrap();
    runtime.block_on(async {
        for i in 1..=n {
            writer.append(entry(i)).await.unwrap();
        }
    });
    writer.close();
}

fn broken(b: &Backend) -> Option<(u64, String)> {
    let reports = verify(b.open().as_mut()).unwrap();
    assert_eq!(reports.len(), 1, "{}", b.name());
    reports[0].broken.clone()
}

#[test]
fn an_untouched_log_verifies_and_keeps_its_entries_in_order() {
    for b in Backend::all("clean") {
        log(&b, 20);
        let mut store = b.open();
        let reports = verify(store.as_mut()).unwrap();
        assert_eq!(
            reports,
            vec![ChainReport {
                writer: "broker-a".into(),
                checked: 20,
                broken: None
            }],
            "{}",
            b.name()
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
        drop(store);
        // A writer that restarts continues its chain.
        log(&b, 1);
        assert_eq!(broken(&b), None, "{}", b.name());
    }
}

#[test]
fn an_edited_field_is_found_at_its_entry() {
    for b in Backend::all("edit") {
        log(&b, 10);
        b.tamper("UPDATE audit_entries SET purpose = 'marketing' WHERE sequence = 6");
        assert_eq!(
            broken(&b),
            Some((
                6,
                "its hash does not match its contents: the entry was edited".into()
            )),
            "{}",
            b.name()
        );
    }
}

#[test]
fn a_damaged_row_is_reported_where_it_stands_never_read_as_a_plausible_value() {
    for (i, (sql, what)) in [
        (
            "UPDATE audit_entries SET decision = 'approved' WHERE sequence = 4",
            "decision \"approved\" is not one crossgate writes",
        ),
        (
            "UPDATE audit_entries SET released_fields = 'none' WHERE sequence = 4",
            "released_fields is not a list of field paths",
        ),
        (
            "UPDATE audit_entries SET entry_hash = 'zz' WHERE sequence = 4",
            "entry_hash is not 64 hex digits",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        for b in Backend::all(&format!("damage{i}")) {
            log(&b, 10);
            b.tamper(sql);
            assert_eq!(
                broken(&b),
                Some((4, format!("the entry is damaged: {what}"))),
                "{}",
                b.name()
            );
            // Reading it otherwise says what is damaged, and where.
            let read = b.open().scan(&Filter::default(), &mut |_| true);
            assert_eq!(
                read.unwrap_err().to_string(),
                format!("audit store: entry 4 of chain broker-a is damaged: {what}"),
                "{}",
                b.name()
            );
        }
    }
}

#[test]
fn a_damaged_row_in_one_chain_leaves_the_other_chains_verified() {
    for b in Backend::all("damage_two") {
        log_as(&b, "broker-a", 5);
        log_as(&b, "broker-b", 5);
        b.tamper(
            "UPDATE audit_entries SET decision = 'approved' WHERE writer = 'broker-a' AND sequence = 2;
             UPDATE audit_heads SET sequence = 3 WHERE writer = 'broker-b';",
        );
        let reports = verify(b.open().as_mut()).unwrap();
        let by_writer: Vec<(&str, Option<u64>)> = reports
            .iter()
            .map(|r| (r.writer.as_str(), r.broken.as_ref().map(|x| x.0)))
            .collect();
        // broker-b is still checked after broker-a's damage: its head was moved.
        assert_eq!(
            by_writer,
            [("broker-a", Some(2)), ("broker-b", Some(4))],
            "{}",
            b.name()
        );
    }
}

#[test]
fn a_deleted_row_is_found() {
    for b in Backend::all("delete") {
        log(&b, 10);
        b.tamper("DELETE FROM audit_entries WHERE sequence = 4");
        assert_eq!(
            broken(&b),
            Some((4, "sequence 4 is missing: an entry was deleted".into())),
            "{}",
            b.name()
        );
    }
}

#[test]
fn two_swapped_rows_are_found() {
    for b in Backend::all("swap") {
        log(&b, 10);
        b.tamper(
            "UPDATE audit_entries SET sequence = -1 WHERE sequence = 3;
             UPDATE audit_entries SET sequence = 3 WHERE sequence = 7;
             UPDATE audit_entries SET sequence = 7 WHERE sequence = -1;",
        );
        let (at, why) = broken(&b).unwrap();
        assert_eq!(at, 3, "{}: {why}", b.name());
    }
}

#[test]
fn a_cut_off_tail_is_found() {
    for b in Backend::all("truncate") {
        log(&b, 10);
        b.tamper("DELETE FROM audit_entries WHERE sequence > 8");
        assert_eq!(
            broken(&b),
            Some((
                9,
                "the chain ends at 8 but its head records 10: entries were cut off the end".into()
            )),
            "{}",
            b.name()
        );
    }
}

#[test]
fn a_forged_row_with_a_recomputed_hash_is_found() {
    for b in Backend::all("forge") {
        log(&b, 10);
        // The forger copies entry 5, adds a released field, and recomputes
        // the row's own hash, linking it to entry 4 as if it belonged there.
        let mut store = b.open();
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
        // The store refuses a second entry 5 of a chain: the forger, with
        // the database in hand, drops that index first.
        b.tamper("DROP INDEX audit_entries_chain_unique");
        let mut forged = entry(5);
        forged.released_fields.push("/members/-/id_number".into());
        store
            .append(&[Stored::seal(
                "broker-a",
                5,
                four.unwrap().entry_hash,
                forged,
            )])
            .unwrap();
        drop(store);
        assert_eq!(
            broken(&b),
            Some((5, "sequence 5 appears again: an inserted entry".into())),
            "{}",
            b.name()
        );
    }
}

#[test]
fn two_writers_sharing_one_log_each_keep_a_chain_that_verifies() {
    for b in Backend::all("replicas") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let a = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 64).unwrap();
        let c = Writer::start(b.open(), "broker-b".into(), Durability::Durable, 64).unwrap();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for i in 1..=200 {
                for w in [a.clone(), c.clone()] {
                    tasks.push(tokio::spawn(async move { w.append(entry(i)).await }));
                }
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        let reports = verify(b.open().as_mut()).unwrap();
        let summary: Vec<(String, u64, bool)> = reports
            .iter()
            .map(|r| (r.writer.clone(), r.checked, r.broken.is_none()))
            .collect();
        assert_eq!(
            summary,
            [
                ("broker-a".into(), 200, true),
                ("broker-b".into(), 200, true)
            ],
            "{}",
            b.name()
        );
    }
}

#[test]
fn one_changed_byte_in_the_file_is_found_at_its_entry() {
    let b = Backend::all("byte").remove(0);
    log(&b, 10);
    let Backend::Sqlite(dir) = &b else {
        unreachable!("the first backend is SQLite")
    };
    let path = &dir.join("audit.db");
    // Change one byte of entry 7's stored reason, straight in the file.
    let wal_free = {
        let store = SqliteStore::open(path).unwrap();
        store
            .connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        std::fs::read(path).unwrap()
    };
    let needle = b"r-7";
    let at = wal_free
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("entry 7 is in the file");
    let mut bytes = wal_free.clone();
    bytes[at + 2] = b'8';
    std::fs::write(path, bytes).unwrap();
    let (seq, _) = broken(&b).unwrap();
    assert_eq!(seq, 7);
}

#[test]
fn a_range_verifies_on_its_own_and_names_a_bad_entry_inside_it() {
    for b in Backend::all("range") {
        log(&b, 10);
        b.tamper("UPDATE audit_entries SET reason = 'x' WHERE sequence = 6");
        let range = |from, to| {
            verify_range(b.open().as_mut(), from, to).unwrap()[0]
                .broken
                .clone()
        };
        assert_eq!(range(1, 5), None, "{}", b.name());
        assert_eq!(range(7, 0), None, "{}", b.name());
        assert_eq!(range(4, 8).map(|f| f.0), Some(6), "{}", b.name());
    }
}

fn item(id: &str, receiver: &str) -> Item {
    Item {
        delivery_id: id.into(),
        request_id: format!("req-{id}"),
        receiver: receiver.into(),
        provider: "customs".into(),
        record_type: "declaration.v1".into(),
        record_id: "D-1".into(),
        grant: "g".into(),
        purpose: "inspection".into(),
        released_fields: vec!["/declaration_id".into()],
        record_digest: digest(b"record"),
        payload: b"payload".to_vec(),
        state: State::Queued,
        attempts: 0,
        created: format!("2026-11-22T08:00:0{}.000000Z", id.len() % 10),
        next_attempt: "2026-11-22T08:00:00.000000Z".into(),
        last_error: String::new(),
        lease_owner: String::new(),
    }
}

fn claim(key: &str, request: &str) -> Claim {
    Claim {
        provider: "customs".into(),
        key: key.into(),
        request_id: request.into(),
        record_digest: digest(b"record"),
        created: "2026-11-22T08:00:00.000000Z".into(),
    }
}

fn repeat_entry() -> outbox::OnRepeat {
    Box::new(|prior: &Prior| {
        let mut e = entry(99);
        e.reason = format!("repeat of {}", prior.request_id);
        vec![e]
    })
}

#[test]
fn an_outbox_commit_keeps_entries_items_and_claims_together_and_a_repeat_changes_nothing() {
    for b in Backend::all("outbox") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let writer = Writer::start(b.open(), "broker-a".into(), Durability::Async, 64).unwrap();
        runtime.block_on(async {
            let first = writer
                .commit(Commit {
                    entries: vec![entry(1), entry(2)],
                    ops: vec![
                        Op::Enqueue(Box::new(item("d1", "border"))),
                        Op::Enqueue(Box::new(item("d2", "tax"))),
                    ],
                    claim: Some((claim("k", "req-1"), repeat_entry())),
                })
                .await
                .unwrap();
            assert_eq!(first, Committed::Applied, "{}", b.name());
            // The same key again, in the same batch or later: a repeat.
            let again = writer
                .commit(Commit {
                    entries: vec![entry(3)],
                    ops: vec![Op::Enqueue(Box::new(item("d3", "border")))],
                    claim: Some((claim("k", "req-2"), repeat_entry())),
                })
                .await
                .unwrap();
            assert_eq!(
                again,
                Committed::Repeat(Prior {
                    request_id: "req-1".into(),
                    record_digest: digest(b"record"),
                }),
                "{}",
                b.name()
            );
            // The same delivery id again is kept once.
            writer
                .commit(Commit {
                    entries: vec![entry(4)],
                    ops: vec![Op::Enqueue(Box::new(item("d1", "border")))],
                    claim: None,
                })
                .await
                .unwrap();
            writer
                .commit(Commit {
                    entries: vec![entry(5)],
                    ops: vec![Op::Update {
                        delivery_id: "d1".into(),
                        state: State::Delivered,
                        attempts: 1,
                        next_attempt: String::new(),
                        last_error: String::new(),
                    }],
                    claim: None,
                })
                .await
                .unwrap();
        });
        let mut store = b.open();
        let all = store.outbox(&OutboxFilter::default()).unwrap();
        let ids: Vec<&str> = all.iter().map(|i| i.delivery_id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"], "{}", b.name());
        assert_eq!(all[0].state, State::Delivered);
        assert!(all[0].payload.is_empty(), "a delivered payload is erased");
        assert!(all[0].record_id.is_empty(), "and its record's id");
        assert_eq!(all[1], item("d2", "tax"), "{}", b.name());
        let undelivered = store
            .outbox(&OutboxFilter {
                undelivered: true,
                receiver: Some("tax".into()),
                ..OutboxFilter::default()
            })
            .unwrap();
        assert_eq!(undelivered.len(), 1);
        // Counted per receiver and state, without reading items.
        assert_eq!(
            store.count_outbox(State::Queued).unwrap(),
            vec![("tax".to_owned(), 1)],
            "{}",
            b.name()
        );
        assert_eq!(store.count_outbox(State::Delivered).unwrap().len(), 1);
        assert!(store.count_outbox(State::Dead).unwrap().is_empty());
        // The repeat's entry replaced the commit's own.
        let mut reasons = Vec::new();
        store
            .scan(&Filter::default(), &mut |s| {
                reasons.push(s.entry.reason.clone());
                true
            })
            .unwrap();
        assert!(
            reasons.contains(&"repeat of req-1".to_owned()),
            "{reasons:?}"
        );
        assert_eq!(reasons.len(), 5, "{}", b.name());
        drop(store);
        assert_eq!(broken(&b), None, "{}", b.name());

        // A delivered item is never revived or purged; an undelivered one is purged.
        runtime.block_on(async {
            writer
                .commit(Commit {
                    entries: vec![entry(6)],
                    ops: vec![
                        Op::Update {
                            delivery_id: "d1".into(),
                            state: State::Queued,
                            attempts: 0,
                            next_attempt: String::new(),
                            last_error: String::new(),
                        },
                        Op::Purge {
                            delivery_id: "d1".into(),
                        },
                        Op::Purge {
                            delivery_id: "d2".into(),
                        },
                    ],
                    claim: None,
                })
                .await
                .unwrap();
            let left = writer
                .read(|store| store.outbox(&OutboxFilter::default()))
                .await
                .unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].state, State::Delivered);
            // Pruning forgets delivered items and keys older than the bound.
            writer
                .commit(Commit {
                    entries: vec![entry(7)],
                    ops: vec![Op::Prune {
                        before: "2026-11-23T00:00:00Z".into(),
                    }],
                    claim: None,
                })
                .await
                .unwrap();
            let key = writer
                .read(|store| store.find_claim("customs", "k"))
                .await
                .unwrap();
            assert_eq!(key, None);
        });
    }
}

#[test]
fn a_second_writer_of_the_same_chain_is_refused_while_the_first_holds_it() {
    for b in Backend::all("writerlock") {
        let first = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 8).unwrap();
        let second = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 8);
        assert!(
            matches!(second, Err(StoreError::WriterInUse(ref w)) if w == "broker-a"),
            "{}",
            b.name()
        );
        // Another chain on the same log is fine.
        assert!(Writer::start(b.open(), "broker-b".into(), Durability::Durable, 8).is_ok());
        drop(first);
    }
}

/// A checkpoint of the log as it stands now, signed by a test key.
fn checkpoint_of(b: &Backend) -> checkpoint::Checkpoint {
    let signer = checkpoint::Signer::from_seed(&[7; 32], "broker").unwrap();
    let heads = b.open().heads().unwrap();
    signer.sign(&heads, "2026-11-23T00:00:00Z")
}

fn broken_vouched(b: &Backend, c: &checkpoint::Checkpoint) -> Vec<Option<(u64, String)>> {
    verify_vouched(b.open().as_mut(), &c.heads)
        .unwrap()
        .into_iter()
        .map(|r| r.broken)
        .collect()
}

#[test]
fn a_deleted_head_row_is_found_even_without_a_checkpoint() {
    for b in Backend::all("headless") {
        log(&b, 10);
        b.tamper("DELETE FROM audit_heads");
        assert_eq!(
            broken(&b),
            Some((
                10,
                "the chain has no recorded head: its head was deleted".into()
            )),
            "{}",
            b.name()
        );
    }
}

#[test]
fn a_checkpoint_catches_a_tail_cut_off_together_with_its_head_moved_back() {
    for b in Backend::all("vouched_cut") {
        log(&b, 10);
        let c = checkpoint_of(&b);
        assert_eq!(broken_vouched(&b, &c), vec![None], "{}", b.name());
        // The attacker deletes the tail and moves the head to the new last
        // entry: the chain alone still verifies.
        b.tamper(
            "DELETE FROM audit_entries WHERE sequence > 7;
             UPDATE audit_heads SET sequence = 7,
               entry_hash = (SELECT entry_hash FROM audit_entries WHERE sequence = 7)",
        );
        assert_eq!(
            broken(&b),
            None,
            "{}: the chain alone cannot tell",
            b.name()
        );
        assert_eq!(
            broken_vouched(&b, &c),
            vec![Some((
                10,
                "the log's chain ends at 7: entries up to the vouched 10 were cut off (checkpoint)"
                    .into()
            ))],
            "{}",
            b.name()
        );
    }
}

#[test]
fn a_checkpoint_catches_a_rewritten_head_and_a_wiped_log() {
    for b in Backend::all("vouched_wipe") {
        log(&b, 5);
        let c = checkpoint_of(&b);
        // More entries after the checkpoint are fine.
        log(&b, 2);
        assert_eq!(broken_vouched(&b, &c), vec![None], "{}", b.name());
        b.tamper("UPDATE audit_entries SET entry_hash = previous_hash WHERE sequence = 5");
        let found = broken_vouched(&b, &c);
        assert_eq!(found.len(), 1, "{}", b.name());
        assert!(found[0].is_some(), "{}: {found:?}", b.name());

        b.tamper("DELETE FROM audit_entries; DELETE FROM audit_heads");
        assert!(verify(b.open().as_mut()).unwrap().is_empty());
        assert_eq!(
            broken_vouched(&b, &c),
            vec![Some((
                5,
                "the log holds no chains at all: it was wiped or replaced (checkpoint)".into()
            ))],
            "{}",
            b.name()
        );
    }
}

#[test]
fn an_entry_of_any_size_is_kept_within_its_bounds_and_still_verifies() {
    for b in Backend::all("bounded") {
        let mut huge = entry(1);
        huge.reason = "é".repeat(3_000_000);
        huge.record_id = "9".repeat(3_000_000);
        huge.released_fields = vec!["/goods/-/x".into(); 300_000];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let writer = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 8).unwrap();
        runtime.block_on(async { writer.append(huge).await.unwrap() });
        writer.close();
        let mut stored = Vec::new();
        b.open()
            .scan(&Filter::default(), &mut |s| {
                stored.push(s);
                true
            })
            .unwrap();
        let e = &stored[0].entry;
        assert!(e.reason.len() <= entry::MAX_REASON, "{}", e.reason.len());
        assert!(
            e.reason.ends_with("... (cut from 6000000 bytes)"),
            "{}",
            &e.reason[e.reason.len() - 40..]
        );
        // Cut at its bound, not before.
        assert!(
            (entry::MAX_RECORD_IDS - 64..=entry::MAX_RECORD_IDS).contains(&e.record_id.len()),
            "{}",
            e.record_id.len()
        );
        assert_eq!(e.released_fields.len(), entry::MAX_RELEASED);
        assert_eq!(e.released_fields.last().unwrap(), "... and 299001 more");
        assert!(stored[0].to_json_line().len() < 64 * 1024, "{}", b.name());
        assert_eq!(broken(&b), None, "{}", b.name());
    }
}

/// A TLS-terminating proxy in front of the test database: it answers the
/// client's SSLRequest, completes TLS with `cert`, and forwards the
/// decrypted stream to `upstream`. Returns its port and a count of the
/// connections it carried.
fn tls_proxy(
    runtime: &tokio::runtime::Runtime,
    upstream: String,
    cert: &str,
    key: &str,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let carried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = carried.clone();
    runtime.spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (acceptor, upstream, count) = (acceptor.clone(), upstream.clone(), count.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                // SSLRequest: length 8, code 80877103.
                if request != [0, 0, 0, 8, 4, 210, 22, 47] {
                    return Ok::<(), std::io::Error>(());
                }
                client.write_all(b"S").await?;
                let mut tls = acceptor.accept(client).await?;
                let mut server = tokio::net::TcpStream::connect(&upstream).await?;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                Ok(())
            });
        }
    });
    (port, carried)
}

#[test]
fn the_store_reaches_postgresql_over_verified_tls_and_refuses_a_server_it_cannot_verify() {
    let Ok(url) = std::env::var("CROSSGATE_TEST_DATABASE_URL") else {
        return;
    };
    // postgres://USER@HOST:PORT/DB
    let rest = url.split_once("://").unwrap().1;
    let (user, rest) = rest.split_once('@').unwrap();
    let (upstream, db) = rest.split_once('/').unwrap();
    let db = db.split('?').next().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ca = crossgate_tls::DevCa::new("database CA").unwrap();
    let (cert, key) = ca.issue("database", 1, 30).unwrap();
    let (port, carried) = tls_proxy(&runtime, upstream.to_owned(), &cert, &key);
    let dir = crossgate_testing::TempDir::new("audit-pg-tls");
    let ca_file = dir.join("database-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let tls_url = |ca: &std::path::Path| {
        format!(
            "postgres://{user}@localhost:{port}/{db}?sslmode=require&sslrootcert={}",
            ca.display()
        )
    };
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    client
        .batch_execute("DROP SCHEMA IF EXISTS audit_tls CASCADE")
        .unwrap();
    let store = PostgresStore::connect(&tls_url(&ca_file), Some("audit_tls")).unwrap();
    let writer = Writer::start(Box::new(store), "broker-a".into(), Durability::Durable, 8).unwrap();
    let appender = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    appender.block_on(async {
        for i in 1..=3 {
            writer.append(entry(i)).await.unwrap();
        }
    });
    writer.close();
    assert!(carried.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let mut store = PostgresStore::connect(&tls_url(&ca_file), Some("audit_tls")).unwrap();
    let reports = verify(&mut store).unwrap();
    assert_eq!(reports[0].checked, 3);
    assert_eq!(reports[0].broken, None);

    // A server whose certificate another CA signed is refused.
    let other = crossgate_tls::DevCa::new("another CA").unwrap();
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, other.pem()).unwrap();
    let Err(StoreError::Failed(why)) =
        PostgresStore::connect(&tls_url(&other_file), Some("audit_tls"))
    else {
        panic!("a server signed by another CA was accepted");
    };
    assert!(why.contains("certificate"), "{why}");
    client
        .batch_execute("DROP SCHEMA audit_tls CASCADE")
        .unwrap();
}

#[test]
fn entries_committed_while_a_verify_runs_are_not_taken_for_tampering() {
    for b in Backend::all("verify_live") {
        log(&b, 5);
        let before = b.open().heads().unwrap();
        // The broker goes on writing while the scan runs.
        log(&b, 3);
        let after = b.open().heads().unwrap();
        let run = |after: &std::collections::BTreeMap<String, (u64, [u8; 32])>| {
            let mut v = Verifier::new();
            v.stop_at(&before);
            b.open()
                .scan(
                    &Filter {
                        chain_order: true,
                        ..Filter::default()
                    },
                    &mut |s| {
                        v.feed(&s);
                        true
                    },
                )
                .unwrap();
            v.settle(&before, after);
            v.finish(&before)
        };
        let reports = run(&after);
        assert_eq!(reports[0].broken, None, "{}", b.name());
        assert_eq!(reports[0].checked, 5, "{}", b.name());
        // Entries past a head that no read ever recorded: the head was moved back.
        let reports = run(&before);
        assert_eq!(
            reports[0].broken,
            Some((6, "entries after the recorded head 5".into())),
            "{}",
            b.name()
        );
    }
}

/// Replicas sharing a PostgreSQL store lease the queued items their lanes
/// read: each takes its own and those no live replica holds, never another
/// live replica's, all of a dead replica's once its lease has run out (in
/// order), and skips rows another replica is claiming at that instant.
#[test]
fn replicas_lease_queued_items_and_take_over_a_dead_ones_when_its_lease_runs_out() {
    let Ok(url) = std::env::var("CROSSGATE_TEST_DATABASE_URL") else {
        return;
    };
    let schema = format!("audit_leases_{}", std::process::id());
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let mut a = PostgresStore::connect(&url, Some(&schema)).unwrap();
    let mut b = PostgresStore::connect(&url, Some(&schema)).unwrap();
    let at = |s: u32| format!("2026-11-22T08:00:{s:02}.000000Z");
    let renew = |store: &mut PostgresStore, owner: &str, until: u32| {
        store
            .commit(
                &[],
                &[Op::Renew {
                    owner: owner.into(),
                    until: at(until),
                }],
                &[],
            )
            .unwrap();
    };
    renew(&mut a, "a", 10);
    renew(&mut b, "b", 10);
    let held = |id: &str, owner: &str| {
        let mut i = item(id, "tax");
        i.lease_owner = owner.into();
        i
    };
    let ops: Vec<Op> = [
        held("d1", "a"),
        held("d2", "a"),
        held("d3", ""),
        held("d4", "a"),
        held("d5", "gone-long-ago"),
    ]
    .into_iter()
    .map(|i| Op::Enqueue(Box::new(i)))
    .collect();
    a.commit(&[], &ops, &[]).unwrap();
    a.commit(
        &[],
        &[Op::Update {
            delivery_id: "d4".into(),
            state: State::Delivered,
            attempts: 1,
            next_attempt: String::new(),
            last_error: String::new(),
        }],
        &[],
    )
    .unwrap();
    let claim = |store: &mut PostgresStore, owner: &str, now: u32| -> Vec<String> {
        store
            .outbox(&OutboxFilter {
                receiver: Some("tax".into()),
                state: Some(State::Queued),
                lease: Some(crate::outbox::Lease {
                    owner: owner.into(),
                    now: at(now),
                }),
                ..OutboxFilter::default()
            })
            .unwrap()
            .into_iter()
            .map(|i| i.delivery_id)
            .collect()
    };
    assert_eq!(
        claim(&mut b, "b", 5),
        ["d3", "d5"],
        "b takes what no live replica holds"
    );
    assert_eq!(claim(&mut a, "a", 5), ["d1", "d2"], "a keeps its own");
    renew(&mut a, "a", 30);
    renew(&mut b, "b", 40);
    assert_eq!(
        claim(&mut b, "b", 20),
        ["d3", "d5"],
        "a's renewed lease holds"
    );
    assert_eq!(
        claim(&mut b, "b", 31),
        ["d1", "d2", "d3", "d5"],
        "a stopped renewing: b takes its items over, oldest first"
    );
    assert_eq!(
        claim(&mut a, "a", 32),
        Vec::<String>::new(),
        "a, back, finds them b's"
    );
    // A row under another replica's claim right now is skipped, not waited for.
    let mut other = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    other
        .batch_execute(&format!("SET search_path TO {schema}"))
        .unwrap();
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM outbox WHERE delivery_id = 'd1' FOR UPDATE",
        &[],
    )
    .unwrap();
    assert_eq!(
        claim(&mut a, "a", 50),
        ["d2", "d3", "d5"],
        "b's lease ran out at :40"
    );
    tx.rollback().unwrap();
    // An operator's replay of a dead item makes it anyone's; of a queued
    // one, it stays with its holder (who tries it again at once).
    a.commit(
        &[],
        &[
            Op::Update {
                delivery_id: "d2".into(),
                state: State::Dead,
                attempts: 9,
                next_attempt: String::new(),
                last_error: "gave up".into(),
            },
            Op::Requeue {
                delivery_id: "d2".into(),
                at: at(55),
                note: "replayed".into(),
            },
            Op::Requeue {
                delivery_id: "d3".into(),
                at: at(55),
                note: "replayed".into(),
            },
        ],
        &[],
    )
    .unwrap();
    renew(&mut a, "a", 59);
    renew(&mut b, "b", 59);
    assert_eq!(
        claim(&mut b, "b", 56),
        ["d1", "d2"],
        "d1 is b's; d2 anyone's; d3 stays a's"
    );
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}

#[test]
fn a_hash_is_written_as_lower_case_hex_and_read_back_as_the_same_bytes() {
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
    let written = crate::entry::hex(&bytes);
    assert_eq!(written.len(), 64);
    assert_eq!(&written[..8], "a580efca");
    assert_eq!(crate::entry::unhex32(&written), Some(bytes));
    assert_eq!(crate::entry::hex(&[0x00, 0x0f, 0xf0, 0xff]), "000ff0ff");
}

/// The server forgets the statements the store prepared while the
/// connection stays open (`DEALLOCATE ALL`, as a pooler that switches its
/// server connection does): the next commit prepares them again and
/// succeeds, and the chain goes on.
#[test]
fn a_server_that_forgot_the_prepared_statements_does_not_fail_the_next_commit() {
    let Ok(url) = std::env::var("CROSSGATE_TEST_DATABASE_URL") else {
        return;
    };
    let schema = format!("audit_deallocated_{}", std::process::id());
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
    let mut store = PostgresStore::connect(&url, Some(&schema)).unwrap();
    let first = Stored::seal("broker-a", 1, [0; 32], entry(1));
    store
        .commit(
            std::slice::from_ref(&first),
            &[Op::Enqueue(Box::new(item("d1", "tax")))],
            &[],
        )
        .unwrap();
    store.client().batch_execute("DEALLOCATE ALL").unwrap();
    let second = Stored::seal("broker-a", 2, first.entry_hash, entry(2));
    store
        .commit(
            std::slice::from_ref(&second),
            &[Op::Enqueue(Box::new(item("d2", "tax")))],
            &[],
        )
        .expect("prepared again");
    assert_eq!(
        store.head("broker-a").unwrap(),
        Some((2, second.entry_hash))
    );
    let queued = store
        .outbox(&OutboxFilter {
            receiver: Some("tax".into()),
            ..OutboxFilter::default()
        })
        .unwrap();
    assert_eq!(queued.len(), 2);
}

/// Frames in `store`'s log now (asking checkpoints it, so this ends a case).
fn frames_in_log(store: &SqliteStore) -> i64 {
    store
        .connection()
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap()
}

/// `commits` single-entry commits on a new SQLite log in `dir`, a rest,
/// then one more commit: what the log holds then.
fn frames_after_a_rest(dir: &crossgate_testing::TempDir, commits: u64) -> i64 {
    let mut store = SqliteStore::open(&dir.join(format!("after-{commits}.db"))).unwrap();
    let mut previous = [0; 32];
    let mut commit = |store: &mut SqliteStore, n: u64| {
        let sealed = Stored::seal("broker-a", n, previous, entry(n));
        previous = sealed.entry_hash;
        store.append(&[sealed]).unwrap();
    };
    for n in 1..=commits {
        commit(&mut store, n);
    }
    store.rest();
    // A log copied into the file in full starts again at its first frame
    // with the next commit.
    commit(&mut store, commits + 1);
    frames_in_log(&store)
}

#[test]
fn sqlite_copies_its_log_into_the_file_at_a_rest_once_64_commits_have_come() {
    let dir = crossgate_testing::TempDir::new("audit-rest-store");
    // Each commit writes at least two pages (its entry's and the chain's
    // head).
    let not_yet = frames_after_a_rest(&dir, 63);
    assert!(
        not_yet >= 2 * 64,
        "{not_yet} frames: copied before 64 commits"
    );
    let copied = frames_after_a_rest(&dir, 64);
    assert!(
        (1..=16).contains(&copied),
        "{copied} frames: the rest did not copy the log (one commit writes a few)"
    );
}

#[test]
fn the_writer_rests_when_nothing_waits_for_it() {
    let dir = crossgate_testing::TempDir::new("audit-rest-writer");
    let path = dir.join("audit.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let writer = Writer::start(
        Box::new(SqliteStore::open(&path).unwrap()),
        "broker-a".into(),
        Durability::Durable,
        64,
    )
    .unwrap();
    let file_size = || std::fs::metadata(&path).unwrap().len();
    let before = file_size();
    runtime.block_on(async {
        for i in 1..=64 {
            writer.append(entry(i)).await.unwrap();
        }
        // Nothing more is sent: the writer rests, and copies the log's
        // pages into the file (SQLite's own checkpoint waits for 10,000).
        let began = std::time::Instant::now();
        while file_size() <= before {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(10),
                "the log was not copied into the file while the writer rested"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    writer.close();
    assert_eq!(
        verify(&mut SqliteStore::open(&path).unwrap()).unwrap()[0].checked,
        64
    );
}

/// One entry naming each of `record_ids`, in order, through the writer.
fn write_record_ids(b: &Backend, record_ids: &[&str]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let writer = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 64).unwrap();
    runtime.block_on(async {
        for (n, id) in (1..).zip(record_ids) {
            let mut e = entry(n);
            e.record_id = (*id).into();
            writer.append(e).await.unwrap();
        }
    });
    writer.close();
}

/// An answer of several records names them all in one entry,
/// comma-separated: a search by record id finds it there too, and finds
/// nothing that merely contains the id.
#[test]
fn a_search_by_record_id_finds_the_answers_that_name_it_among_others() {
    // Ids holding the list's separator or its escape, as the broker writes them.
    let comma = crate::record_ids(["A,B", "C"]);
    let percent = crate::record_ids(["50%"]);
    for b in Backend::all("record_search") {
        let ids = [
            "110105198405049582",
            "110105198405049582,110108198912063214",
            "110108198912063214,110105198405049582,7",
            "1101051984050495821",
            "x110105198405049582",
            "110108198912063214",
            "7",
            "",
            "7,",
            &comma,
            &percent,
            // Written before ids were escaped: one id each.
            "older,one",
            "older%",
        ];
        write_record_ids(&b, &ids);
        let mut store = b.open();
        let mut found = |id: &str| {
            record_ids_found(
                store.as_mut(),
                Filter {
                    record_id: Some(id.into()),
                    ..Filter::default()
                },
            )
        };
        assert_eq!(found("110105198405049582"), ids[..3], "{}", b.name());
        assert_eq!(found("7"), [ids[2], ids[6], ids[8]], "{}", b.name());
        // No id is an entry without one.
        assert_eq!(found(""), [ids[7]], "{}", b.name());
        // An id with a comma is one id, never part of a list. It is also
        // looked for as the whole field, as entries written before ids were
        // escaped hold it, so a list of exactly its parts is found too.
        assert_eq!(
            found("110105198405049582,110108198912063214"),
            [ids[1]],
            "{}",
            b.name()
        );
        assert!(found("110108198912063214,7").is_empty(), "{}", b.name());
        assert_eq!(found("A,B"), [comma.as_str()], "{}", b.name());
        assert_eq!(found("C"), [comma.as_str()], "{}", b.name());
        assert!(found("A").is_empty(), "{}", b.name());
        assert!(found("B").is_empty(), "{}", b.name());
        assert_eq!(found("50%"), [percent.as_str()], "{}", b.name());
        assert_eq!(found("older,one"), ["older,one"], "{}", b.name());
        assert_eq!(found("older%"), ["older%"], "{}", b.name());
        assert_eq!(
            found("110108198912063214"),
            [ids[1], ids[2], ids[5]],
            "{}",
            b.name()
        );
        // Patterns are not ids.
        for not_an_id in ["%", "_", "1101%", "%110105198405049582"] {
            assert!(found(not_an_id).is_empty(), "{not_an_id:?} {}", b.name());
        }
    }
}

/// Entries name records by their ids' keyed digests: a search gives the id
/// and its digest, and finds the digest among an answer's, the digest given
/// as entries show it, and the id itself in entries written before digests.
#[test]
fn a_search_by_record_id_finds_its_digest_and_older_entries_naming_the_id() {
    let key = crate::RecordIdKey::new(&[5; 32]);
    let other_key = crate::RecordIdKey::new(&[6; 32]);
    const ID: &str = "110105198405049582";
    for b in Backend::all("record_digests") {
        let alone = key.record_ids([ID]);
        let among = key.record_ids(["110108198912063214", ID]);
        let neighbour = key.record_ids(["110108198912063214"]);
        let other = other_key.record_ids([ID]);
        let ids = [
            alone.as_str(),
            among.as_str(),
            neighbour.as_str(),
            other.as_str(),
            ID,
        ];
        write_record_ids(&b, &ids);
        let mut store = b.open();
        let mut found = |id: &str, digest: Option<String>| {
            record_ids_found(
                store.as_mut(),
                Filter {
                    record_id: Some(id.into()),
                    record_id_digest: digest,
                    ..Filter::default()
                },
            )
        };
        let name = b.name();
        // With the key: its digest alone and among others, and the older
        // entry holding the id; not another key's digest.
        assert_eq!(
            found(ID, Some(key.digest(ID))),
            [ids[0], ids[1], ID],
            "{name}"
        );
        // Without it: only the older entry.
        assert_eq!(found(ID, None), [ID], "{name}");
        // A digest as entries show it finds itself.
        assert_eq!(found(&key.digest(ID), None), [ids[0], ids[1]], "{name}");
        assert!(found("id:", None).is_empty(), "{name}");
    }
}

/// An answer of as many records as a grant may release names every one:
/// none of its ids' or records' digests is cut, and the last is found.
#[test]
fn an_answer_of_the_most_records_a_grant_allows_names_them_all() {
    let key = crate::RecordIdKey::new(&[5; 32]);
    let ids: Vec<String> = (0..entry::MAX_RECORDS_NAMED)
        .map(|n| format!("1101051984{n:08}"))
        .collect();
    let mut answer = entry(1);
    answer.record_id = key.record_ids(ids.iter().map(String::as_str));
    answer.record_digest = ids
        .iter()
        .map(|id| digest(id.as_bytes()))
        .collect::<Vec<_>>()
        .join(",");
    for b in Backend::all("most_records") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let writer = Writer::start(b.open(), "broker-a".into(), Durability::Durable, 8).unwrap();
        runtime.block_on(async { writer.append(answer.clone()).await.unwrap() });
        writer.close();
        let last = ids.last().unwrap();
        let mut found = Vec::new();
        b.open()
            .scan(
                &Filter {
                    record_id: Some(last.clone()),
                    record_id_digest: Some(key.digest(last)),
                    ..Filter::default()
                },
                &mut |s| {
                    found.push(s.entry);
                    true
                },
            )
            .unwrap();
        assert_eq!(found.len(), 1, "{}", b.name());
        assert_eq!(found[0].record_id, answer.record_id, "{}", b.name());
        assert_eq!(found[0].record_digest, answer.record_digest, "{}", b.name());
    }
}

#[cfg(unix)]
#[test]
fn a_new_sqlite_log_is_its_owners_alone_and_an_older_one_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = crossgate_testing::TempDir::new("log-mode");
    // Made here: its outbox holds records waiting for delivery.
    let path = dir.join("audit.db");
    let store = SqliteStore::open(&path).unwrap();
    let writer =
        Writer::start(Box::new(store), "broker-a".into(), Durability::Durable, 64).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async { writer.append(entry(1)).await.unwrap() });
    assert_eq!(mode(&path), 0o600);
    let wal = dir.join("audit.db-wal");
    assert!(wal.exists(), "the log was written through its WAL");
    assert_eq!(mode(&wal), 0o600, "SQLite gives the WAL the file's mode");
    drop(writer);
    // An operator's own choice (a group that reads it) is left as it is,
    // and the log opens.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o640);
}

/// The record ids of the entries `filter` finds, in order.
fn record_ids_found(store: &mut dyn Store, filter: Filter) -> Vec<String> {
    let mut named = Vec::new();
    store
        .scan(&filter, &mut |s| {
            named.push(s.entry.record_id.clone());
            true
        })
        .unwrap();
    named
}
