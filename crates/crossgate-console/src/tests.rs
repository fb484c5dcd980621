//! Each page and filter over a log written by the audit crate's own writer,
//! and the HTTP rules (loopback Host only, read-only) over a real socket.

use super::*;
use crossgate_audit::{Decision, Durability, Entry, Kind, Writer};

struct Log {
    /// Removed when the log is dropped.
    _dir: crossgate_testing::TempDir,
    store: String,
    db: std::path::PathBuf,
}

fn entry(
    day: u32,
    n: u32,
    consumer: &str,
    provider: &str,
    decision: Decision,
    purpose: &str,
    record_id: &str,
) -> Entry {
    Entry {
        time: format!("2026-11-{day:02}T08:{:02}:{:02}.000000Z", n / 60, n % 60),
        request_id: format!("r-{day}-{n}"),
        kind: Kind::Query,
        consumer: consumer.into(),
        provider: provider.into(),
        record_type: "person.v1".into(),
        record_id: record_id.into(),
        purpose: purpose.into(),
        approval_reference: String::new(),
        decision,
        reason: "grant g-1".into(),
        released_fields: vec!["/name".into()],
        record_digest: crossgate_audit::digest(b"record"),
        latency_micros: 800,
    }
}

/// 20 education lookups allowed on the 21st and 20 on the 22nd, 5 denied,
/// a declaration queued and 6 deliveries to commerce, a lookup by tax
/// answered with two records, and one entry a hostile partner wrote into.
fn log() -> Log {
    // A folder of its own for each log, by a counter: tests that started
    // in the same nanosecond once shared one, and SQLite refused the second
    // to open it ("database is locked").
    let mut entries = Vec::new();
    for n in 0..20 {
        entries.push(entry(
            21,
            n,
            "education",
            "public-security",
            Decision::Allowed,
            "school-enrolment",
            "P-1",
        ));
        entries.push(entry(
            22,
            n,
            "education",
            "public-security",
            Decision::Allowed,
            "school-enrolment",
            "P-2",
        ));
    }
    for n in 20..25 {
        entries.push(entry(
            22,
            n,
            "education",
            "public-security",
            Decision::Denied,
            "curiosity",
            "",
        ));
    }
    for n in 30..36 {
        let mut e = entry(
            22,
            n,
            "commerce",
            "customs",
            Decision::Delivered,
            "trade-statistics",
            "D-9",
        );
        e.kind = Kind::Publish;
        e.record_type = "customs-declaration.v1".into();
        entries.push(e);
    }
    // Queued for commerce, then delivered (above): one release, not two.
    let mut queued = entry(
        22,
        29,
        "commerce",
        "customs",
        Decision::Allowed,
        "trade-statistics",
        "D-9",
    );
    queued.kind = Kind::Publish;
    entries.push(queued);
    // An answer of three records names them all, one of them an id
    // holding a comma.
    entries.push(entry(
        22,
        40,
        "tax",
        "public-security",
        Decision::Allowed,
        "tax-audit",
        &crossgate_audit::record_ids(["P-7", "D-9", "F,1"]),
    ));
    entries.push(entry(
        22,
        50,
        "health",
        "public-security",
        Decision::Invalid,
        "<script>alert(1)</script>",
        "=HYPERLINK(\"http://x\")",
    ));
    written("console", entries)
}

/// A log of `entries` alone, in a folder of its own named after `name`.
fn written(name: &str, entries: Vec<Entry>) -> Log {
    let dir = crossgate_testing::TempDir::new(name);
    let db = dir.join("audit.db");
    let store = format!("sqlite:{}", db.display());
    let writer = Writer::start(
        crossgate_audit::open(&store).unwrap(),
        "broker-a".into(),
        Durability::Durable,
        64,
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for e in entries {
            writer.append(e).await.unwrap();
        }
    });
    writer.close();
    Log {
        _dir: dir,
        store,
        db,
    }
}

fn page(log: &Log, path: &str, query: &str) -> Page {
    Console::over_store(log.store.clone()).page(path, query)
}

#[test]
fn search_filters_pages_and_links_keep_the_filters() {
    let log = log();
    let all = page(&log, "/", "");
    assert_eq!(all.status, StatusCode::OK);
    assert!(
        all.body.contains("54 entries match; page 1 of 2"),
        "{}",
        all.body
    );
    assert_eq!(all.body.matches("class=\"entry-link\"").count(), PAGE_SIZE);

    let second = page(&log, "/", "page=2");
    assert!(second.body.contains("page 2 of 2"));
    assert_eq!(second.body.matches("class=\"entry-link\"").count(), 4);

    let denied = page(&log, "/", "consumer=education&decision=denied");
    assert!(denied.body.contains("5 entries match"), "{}", denied.body);
    assert!(
        denied.body.contains("option value=\"denied\" selected"),
        "the form shows the filter in force"
    );
    // The export links carry the same filter.
    assert!(
        denied
            .body
            .contains("href=\"/export.csv?consumer=education&amp;decision=denied\"")
    );

    let day = page(
        &log,
        "/",
        "since=2026-11-22&until=2026-11-23&provider=public-security",
    );
    assert!(day.body.contains("27 entries match"), "{}", day.body);
    let nothing = page(&log, "/", "consumer=nobody");
    assert!(nothing.body.contains("0 entries match"));
}

#[test]
fn what_a_partner_wrote_is_shown_as_text_never_as_markup() {
    let log = log();
    let body = page(&log, "/", "consumer=health").body;
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>"));
    let csv = page(&log, "/export.csv", "consumer=health");
    // A formula is neutralised as the CLI does it.
    assert!(
        csv.body.contains("\"'=HYPERLINK(\"\"http://x\"\")\""),
        "{}",
        csv.body
    );
}

#[test]
fn an_entry_shows_every_field_its_place_and_its_hashes() {
    let log = log();
    let mut store = crossgate_audit::open(&log.store).unwrap();
    let mut third = None;
    store
        .scan(
            &crossgate_audit::Filter {
                chain_order: true,
                from_sequence: 3,
                to_sequence: 3,
                ..Default::default()
            },
            &mut |s| {
                third = Some(s);
                true
            },
        )
        .unwrap();
    let third = third.unwrap();
    let shown = page(&log, "/entry", "writer=broker-a&sequence=3");
    assert_eq!(shown.status, StatusCode::OK);
    for value in [
        crossgate_audit::entry::hex(&third.entry_hash),
        crossgate_audit::entry::hex(&third.previous_hash),
        third.entry.request_id.clone(),
        third.entry.time.clone(),
        "school-enrolment".into(),
    ] {
        assert!(shown.body.contains(&value), "{value} in {}", shown.body);
    }
    assert!(
        shown.body.contains("position in chain</dt><dd>3</dd>"),
        "{}",
        shown.body
    );
    assert_eq!(
        page(&log, "/entry", "writer=broker-a&sequence=999").status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        page(&log, "/entry", "writer=nobody&sequence=3").status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn who_received_a_record_lists_its_releases_apart_from_other_decisions() {
    let log = log();
    let body = page(&log, "/received", "record_id=D-9").body;
    // Six deliveries and the answer naming it among two; the queued
    // publish is not a release.
    assert!(body.contains("7 releases"), "{body}");
    assert!(body.contains("1 other decisions"), "{body}");
    assert!(body.contains("tax-audit"));
    assert!(body.contains("trade-statistics"));
    let asks = page(&log, "/received", "").body;
    assert!(asks.contains("name=\"record_id\""));
    // The answer of two records links to each on its own.
    let listed = page(&log, "/", "consumer=tax").body;
    assert!(
        listed.contains("href=\"/received?record_id=P-7\""),
        "{listed}"
    );
    assert!(
        listed.contains("href=\"/received?record_id=D-9\""),
        "{listed}"
    );
    assert!(!listed.contains("record_id=P-7%2CD-9"), "{listed}");
    // The id with a comma is shown and linked as itself, and its page finds
    // the answer that named it.
    assert!(
        listed.contains("href=\"/received?record_id=F%2C1\">F,1</a>"),
        "{listed}"
    );
    let f1 = page(&log, "/received", "record_id=F%2C1").body;
    assert!(f1.contains("1 releases"), "{f1}");
    assert!(
        page(&log, "/received", "record_id=F")
            .body
            .contains("0 releases")
    );
}

#[test]
fn partners_and_charts_count_the_log() {
    let log = log();
    let body = page(&log, "/partners", "").body;
    // education as consumer: 40 allowed, 5 denied.
    let row = body
        .split("<tr>")
        .find(|r| r.contains(">education<") && r.contains("consumer"))
        .unwrap();
    let cells: Vec<&str> = row
        .split("<td class=\"num\">")
        .skip(1)
        .map(|c| c.split('<').next().unwrap())
        .collect();
    assert_eq!(cells[..3], ["40", "5", "0"], "{row}");

    let charts = page(&log, "/charts", "").body;
    assert_eq!(charts.matches("<svg").count(), 4);
    assert!(charts.contains("Accesses per day by consumer"));
    // Two days of accesses by education, with their counts in the tooltips.
    assert!(charts.contains("2026-11-21 education: 20"), "{charts}");
    assert!(charts.contains("2026-11-22 education: 20"));
    assert!(
        charts.contains("2026-11-22 commerce: 6"),
        "deliveries, not the queued publish"
    );
    assert!(charts.contains("2026-11-22 denied: 5"));
    let range = page(&log, "/charts", "since=2026-11-22").body;
    assert!(!range.contains("2026-11-21 education"));
}

#[test]
fn verify_says_intact_then_names_the_first_edited_entry() {
    let log = log();
    let body = page(&log, "/verify", "").body;
    assert!(body.contains("Every chain verifies"), "{body}");
    assert!(body.contains(">54<"), "entries checked: {body}");
    let db = rusqlite::Connection::open(&log.db).unwrap();
    db.execute(
        "UPDATE audit_entries SET purpose = 'tax-audit' WHERE sequence = 7",
        [],
    )
    .unwrap();
    drop(db);
    let body = page(&log, "/verify", "").body;
    assert!(body.contains("The log was tampered with"), "{body}");
    assert!(body.contains("first bad entry"));
    assert!(
        body.contains("href=\"/entry?writer=broker-a&amp;sequence=7\""),
        "{body}"
    );
}

#[test]
fn exports_hold_exactly_the_filtered_entries() {
    let log = log();
    let csv = page(&log, "/export.csv", "decision=denied");
    assert_eq!(csv.download, Some("crossgate-audit.csv"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], crossgate_audit::entry::CSV_HEADER);
    assert_eq!(lines.len(), 6);
    let jsonl = page(
        &log,
        "/export.jsonl",
        "consumer=commerce&decision=delivered",
    );
    let entries: Vec<serde_json::Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e["decision"] == "delivered"));
}

#[test]
fn over_http_only_loopback_hosts_and_only_reading() {
    let log = log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(
            listener,
            Console::over_store(log.store.clone()),
            std::future::pending(),
        ));
        let ask = |request: String| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let ok = ask(format!(
            "GET /?consumer=education HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("content-security-policy: default-src 'none'"), "{ok}");
        assert!(ok.contains("45 entries match"));
        let rebound = ask(
            "GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".into(),
        )
        .await;
        assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
        assert!(!rebound.contains("entries match"));
        let post = ask(format!(
            "POST /verify HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("allow: GET, HEAD"));
        let cross = ask(format!(
            "GET /export.csv HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(cross.starts_with("HTTP/1.1 403"), "{cross}");
        assert!(!cross.contains("time,writer"), "no export for another site's page");
        let foreign = ask(format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
        let own = ask(format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(own.starts_with("HTTP/1.1 200"), "{own}");
        let download = ask(format!(
            "GET /export.csv HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(download.contains("content-disposition: attachment; filename=\"crossgate-audit.csv\""));
    });
}

#[test]
fn hosts_are_loopback_only_by_name_or_address() {
    for host in [
        "localhost",
        "localhost:7400",
        "127.0.0.1:7400",
        "[::1]:7400",
        "[::1]",
    ] {
        assert!(loopback_host(host), "{host}");
    }
    for host in [
        "",
        "evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil:80",
        "[::2]:80",
        "10.0.0.1",
    ] {
        assert!(!loopback_host(host), "{host}");
    }
}

#[test]
fn a_record_is_found_by_its_id_through_the_logs_digest_only_with_the_key() {
    const ID: &str = "110105198405049582";
    let key = crossgate_audit::RecordIdKey::new(&[9; 32]);
    // An answer naming the citizen among two records, by digests, and an
    // entry written before digests, naming the id itself.
    let digested = key.record_ids([ID, "X-2"]);
    let log = written(
        "console-digests",
        [(1, "tax", digested.as_str()), (2, "health", ID)]
            .into_iter()
            .map(|(n, consumer, ids)| {
                entry(
                    23,
                    n,
                    consumer,
                    "public-security",
                    Decision::Allowed,
                    "p",
                    ids,
                )
            })
            .collect(),
    );
    let store = log.store.clone();
    let with_key = || Console::over_store(store.clone()).with_record_id_key(key.clone());
    let received = |console: Console, id: &str| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("record_id", id)
            .finish();
        console.page("/received", &query).body
    };
    let both = received(with_key(), ID);
    assert!(both.contains("2 releases"), "{both}");
    assert!(both.contains("tax") && both.contains("health"), "{both}");
    // Without the key only the older entry names the id.
    let older = received(Console::over_store(store.clone()), ID);
    assert!(older.contains("1 releases"), "{older}");
    // The digest as entries show it finds itself, key or not; the list
    // links each record by its digest.
    let digest = key.digest(ID);
    let by_digest = received(Console::over_store(store.clone()), &digest);
    assert!(by_digest.contains("1 releases"), "{by_digest}");
    let listed = with_key().page("/", "consumer=tax").body;
    assert!(listed.contains(&digest[3..]), "{listed}");
}

#[test]
fn a_page_views_entry_keeps_a_searched_id_as_its_digest() {
    let key = crossgate_audit::RecordIdKey::new(&[9; 32]);
    let digest = key.digest("110105198405049582");
    let encoded = |d: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("record_id", d)
            .finish()
    };
    assert_eq!(
        reading_query("record_id=110105198405049582&consumer=tax", Some(&key)),
        format!("{}&consumer=tax", encoded(&digest))
    );
    // Spelt another way, the same parameter.
    assert_eq!(
        reading_query("record%5Fid=110105198405049582", Some(&key)),
        encoded(&digest)
    );
    let without = reading_query("record_id=110105198405049582", None);
    assert!(!without.contains("110105198405049582"), "{without}");
    assert_eq!(reading_query(&encoded(&digest), None), encoded(&digest));
    assert_eq!(
        reading_query("consumer=tax&page=2", None),
        "consumer=tax&page=2"
    );
}
