//! `crossgate demo`, the README's first command, plays all six scenarios and
//! exits 0; afterwards the auditor finds what education received, the log
//! verifies, and one changed byte in the file is found.

mod common;

use common::{ROOT, config_copy};

fn crossgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_plays_every_scenario_and_the_auditor_can_check_it() {
    let dir = crossgate_testing::TempDir::new("demo");
    config_copy(&dir);
    std::fs::copy(
        format!("{ROOT}/deploy/local/limits.toml"),
        dir.join("limits.toml"),
    )
    .unwrap();
    for dept in ["customs", "health", "market-regulation", "public-security"] {
        let from = format!("{ROOT}/deploy/local/fixtures/{dept}");
        let to = dir.join("fixtures").join(dept);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let config = dir.to_str().unwrap();
    let state = dir.join("state");
    let (code, text, err) = crossgate(&[
        "demo",
        "--config",
        config,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}{err}");
    for step in [
        "(a) the land port",
        "(b) newborn",
        "(c) school enrolment",
        "(d) a bad record",
        "(e) a burst over the limit",
        "(f) the auditor",
    ] {
        assert!(
            text.contains(&format!("  ok      {step}")),
            "{step}: {text}"
        );
    }
    assert!(text.contains(
        "-> border-inspection  delivered fields: declaration_id, declared_on, direction, port_code, transport"
    ));
    assert!(text.contains("rejected: GMSFHM: identity number: wrong check character"));

    // The auditor, with only the CLI and the config.
    let (code, found, _) = crossgate(&[
        "audit",
        "search",
        "--consumer",
        "education",
        "--decision",
        "allowed",
        "--config",
        config,
    ]);
    assert_eq!(code, Some(0));
    let household = found
        .lines()
        .find(|l| l.contains("household.v1"))
        .unwrap_or_else(|| panic!("{found}"));
    assert!(
        household.contains("school-enrolment") && household.contains("/members/-/id_number"),
        "{household}"
    );
    // The burst's throttled calls are in the log too: the demo waits for
    // the broker to write what it holds before it exits.
    let said_throttled: u64 = text
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" throttled"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(said_throttled > 0, "{text}");
    let (code, throttled, _) = crossgate(&[
        "audit",
        "search",
        "--decision",
        "throttled",
        "--format",
        "jsonl",
        "--config",
        config,
    ]);
    assert_eq!(code, Some(0));
    let logged: u64 = throttled
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = e["reason"].as_str().unwrap().to_owned();
            reason.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(logged, said_throttled, "{throttled}");
    // The land port's declaration, found by its id; no entry holds the id.
    let (code, named, err) = crossgate(&[
        "audit",
        "search",
        "--record-id",
        "440663864056324842",
        "--format",
        "jsonl",
        "--config",
        config,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let receivers: std::collections::BTreeSet<String> = named
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["consumer"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        receivers.into_iter().collect::<Vec<_>>(),
        ["border-inspection", "commerce"],
        "{named}"
    );
    let (_, everything, _) =
        crossgate(&["audit", "search", "--format", "jsonl", "--config", config]);
    assert!(!everything.contains("440663864056324842"), "{everything}");
    let (code, verified, _) = crossgate(&["audit", "verify", "--config", config]);
    assert_eq!(code, Some(0), "{verified}");

    // One byte of an education entry, changed in the file. (SQLite may keep stale copies of a
    // page; the first copy that verify reads is the live one.)
    let db = dir.join("audit.db");
    let original = std::fs::read(&db).unwrap();
    let places: Vec<usize> = original
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == b"school-enrolment")
        .map(|(i, _)| i)
        .collect();
    assert!(!places.is_empty(), "education's entries are in the file");
    let mut named = None;
    for at in places {
        let mut bytes = original.clone();
        bytes[at] = b'S';
        std::fs::write(&db, &bytes).unwrap();
        let (code, verified, _) = crossgate(&["audit", "verify", "--config", config]);
        if code == Some(1) {
            named = Some(verified);
            break;
        }
    }
    let verified = named.expect("a changed byte in a live entry is found");
    assert!(
        verified.contains("does not verify: its hash does not match its contents"),
        "{verified}"
    );

    // A decision crossgate never writes is damage: search stops there and
    // says where (exit 1); verify names the entry.
    let places: Vec<usize> = original
        .windows(7)
        .enumerate()
        .filter(|(_, w)| *w == b"allowed")
        .map(|(i, _)| i)
        .collect();
    let mut reported = None;
    for at in places {
        let mut bytes = original.clone();
        bytes[at + 6] = b'X';
        std::fs::write(&db, &bytes).unwrap();
        let (code, _, err) = crossgate(&["audit", "search", "--config", config]);
        if code == Some(1) {
            reported = Some(err);
            break;
        }
    }
    let err = reported.expect("a damaged decision in a live entry is reported");
    assert!(
        err.contains("is damaged: decision \"alloweX\" is not one crossgate writes"),
        "{err}"
    );
    let (code, verified, _) = crossgate(&["audit", "verify", "--config", config]);
    assert_eq!(code, Some(1), "{verified}");
    assert!(verified.contains("the entry is damaged"), "{verified}");
}
