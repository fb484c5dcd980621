//! `crossgate bench` against a running `crossgate up`: what an operator
//! reads (rates, percentiles, errors by status, server CPU), and exit codes
//! a script can trust — 0 when every request succeeded, 1 when some failed,
//! 2 when the load could not start.

mod common;

use common::{ROOT, Up};
use std::process::{Command, Output};

fn bench(config: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .arg("bench")
        .args(args)
        .args(["--config", config])
        .current_dir(ROOT)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A canonical customs declaration: border inspection and commerce receive it.
const DECLARATION: &str = r#"{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}]}"#;

const LOOKUP: [&str; 8] = [
    "--provider",
    "public-security",
    "--type",
    "person.v1",
    "--purpose",
    "school-enrolment",
    "--criterion",
    "/id_number=110105198405049582",
];

/// A short closed-loop run of `secs` seconds over 2 connections × 4 streams.
fn window(secs: &str) -> [&str; 8] {
    [
        "--secs",
        secs,
        "--warmup",
        "0.2",
        "--conns",
        "2",
        "--streams",
        "4",
    ]
}

#[test]
fn bench_measures_queries_fetches_and_publishes_and_counts_refusals() {
    // Limits out of the way: the load is what is measured.
    let mut up = Up::start(
        "bench",
        "",
        "[default]\nrate = \"100000/s\"\nburst = 100000\n",
    );
    let config = &up.config().to_owned();
    let pid = up.child.id().to_string();
    let short = window("0.6");

    // Education's lookup through the broker, as the table an operator reads.
    let mut args = vec!["query"];
    args.extend(LOOKUP);
    args.extend(short);
    args.extend(["--pid", &pid]);
    let table = bench(config, &args);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(
        table.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(
        text.starts_with("Broker.Query public-security person.v1: 2 connections × 4 streams"),
        "{text}"
    );
    assert!(text.contains(" failed\nrate "), "{text}");
    assert!(text.contains("latency   p50 "), "{text}");
    assert!(text.contains("µs CPU per request"), "{text}");

    // The same as JSON, for scripts: every request succeeded, the
    // percentiles are in order, the server's CPU is counted.
    args.push("--json");
    let out = bench(config, &args);
    assert_eq!(out.status.code(), Some(0));
    let j = json(&out);
    assert!(j["ok"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["failed"], 0, "{j}");
    assert_eq!(j["errors"], serde_json::json!({}), "{j}");
    let (p50, p90, p99, max) = (
        j["p50_us"].as_u64().unwrap(),
        j["p90_us"].as_u64().unwrap(),
        j["p99_us"].as_u64().unwrap(),
        j["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{j}");
    assert!(j["server_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(
        j["server_cpu_us_per_req_by_pid"],
        serde_json::json!({}),
        "{j}"
    );

    // Two processes watched (the system, and this test's own): each one's
    // part, adding up to the whole.
    let me = std::process::id().to_string();
    let mut both = args.clone();
    both.extend(["--pid", &me]);
    let j = json(&bench(config, &both));
    let parts = j["server_cpu_us_per_req_by_pid"].as_object().unwrap();
    let part = |pid: &str| parts[pid].as_f64().unwrap_or_else(|| panic!("{pid}: {j}"));
    assert_eq!(parts.len(), 2, "{j}");
    // The system did the work; this test only waited for it.
    assert!(part(&pid) > part(&me) && part(&me) >= 0.0, "{j}");
    let total = j["server_cpu_us_per_req"].as_f64().unwrap();
    assert!((part(&pid) + part(&me) - total).abs() <= 0.2, "{j}");
    both.retain(|a| *a != "--json");
    let table = bench(config, &both);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("µs CPU per request (pid {pid}: "))
            && text.contains(&format!(", pid {me}: ")),
        "{text}"
    );

    // A process named twice would be counted twice: refused before any load.
    let mut twice = args.clone();
    twice.extend(["--pid", &pid]);
    let out = bench(config, &twice);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("--pid {pid} is given twice")),
        "{said}"
    );

    // At a fixed rate, about that many requests are sent.
    let mut paced = vec![
        "query", "--json", "--rate", "200", "--secs", "1", "--warmup", "0.2",
    ];
    paced.extend(LOOKUP);
    let j = json(&bench(config, &paced));
    assert_eq!(j["offered_rps"], 200.0, "{j}");
    let sent = j["ok"].as_u64().unwrap() + j["failed"].as_u64().unwrap();
    assert!((150..=250).contains(&sent), "{j}");

    // A rate so low that most streams' first turn falls after the run:
    // they send nothing and the run still ends when it should.
    let mut slow = vec![
        "query", "--json", "--rate", "1", "--secs", "1", "--warmup", "0",
    ];
    slow.extend(LOOKUP);
    let began = std::time::Instant::now();
    let j = json(&bench(config, &slow));
    assert!(
        began.elapsed() < std::time::Duration::from_secs(30),
        "a paced run waited for turns after its end: {j}"
    );
    assert!(j["ok"].as_u64().unwrap() <= 2, "{j}");

    // Straight to public-security's adapter, as the broker calls it.
    let mut fetch = vec!["fetch", "--json", "--consumer", "education"];
    fetch.extend(LOOKUP);
    fetch.extend(short);
    let out = bench(config, &fetch);
    let j = json(&out);
    assert_eq!(out.status.code(), Some(0), "{j}");
    assert!(
        j["target"]
            .as_str()
            .unwrap()
            .starts_with("Department.Fetch"),
        "{j}"
    );
    assert!(j["ok"].as_u64().unwrap() > 0, "{j}");

    // Publishes from customs: each a new record, delivered to its receivers.
    let record = up.dir.join("declaration.json");
    std::fs::write(&record, DECLARATION).unwrap();
    let record = record.to_str().unwrap();
    let mut publish = vec![
        "publish",
        "--json",
        "--type",
        "customs-declaration.v1",
        "--record",
        record,
    ];
    // A longer window than the others': a publish waits for two receivers
    // and a durable commit, and a debug build on a busy machine once
    // finished none within 0.6 s.
    publish.extend(window("2"));
    let out = bench(config, &publish);
    let j = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(j["ok"].as_u64().unwrap() > 0, "{j}");

    // A party without a grant: every request refused, counted by status,
    // and the exit code says some failed.
    let mut refused = vec!["query", "--json", "--as", "tax"];
    refused.extend(LOOKUP);
    refused.extend(short);
    let out = bench(config, &refused);
    let j = json(&out);
    assert_eq!(out.status.code(), Some(1), "{j}");
    assert_eq!(j["ok"], 0, "{j}");
    assert!(j["errors"]["PermissionDenied"].as_u64().unwrap() > 0, "{j}");

    // Nothing could start: exit 2 with the reason.
    let mut bad = vec!["query", "--conns", "0"];
    bad.extend(LOOKUP);
    let out = bench(config, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns"));
    for (flag, value, says) in [
        ("--secs", "NaN", "--secs must be"),
        ("--secs", "1e300", "--secs must be"),
        ("--warmup", "-1", "--warmup must be"),
        ("--rate", "1e-300", "--rate must"),
        ("--rate", "1e300", "--rate must"),
        ("--rate", "inf", "--rate must"),
        ("--pid", "999999999", "--pid 999999999"),
    ] {
        let given = format!("{flag}={value}");
        let mut bad = vec!["query", given.as_str()];
        bad.extend(LOOKUP);
        let out = bench(config, &bad);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {said}");
        assert!(said.contains(says), "{flag} {value}: {said}");
    }
    let mut bad = vec!["query", "--criterion", "no-equals-sign"];
    bad.extend(&LOOKUP[..6]);
    let out = bench(config, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PATH=VALUE"));
    up.kill();
    let mut gone = vec!["query"];
    gone.extend(LOOKUP);
    let out = bench(config, &gone);
    assert_eq!(out.status.code(), Some(2), "no broker to reach");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
