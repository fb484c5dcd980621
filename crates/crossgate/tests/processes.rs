//! The broker and three adapters as separate processes, started from a copy
//! of deploy/local with development certificates, carry a customs
//! declaration to border inspection and commerce, each seeing only its part.

use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::{NativeRecord, SubmitRequest};
mod common;

use common::{Processes, ROOT, config_copy, crossgate, wait_for_child};

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_carry_a_declaration_to_each_receiver_its_part() {
    let dir = crossgate_testing::TempDir::new("processes");
    let (broker_port, adapters) = config_copy(&dir);
    let config = dir.to_str().unwrap().to_owned();
    let certs = dir.join("certs");
    let made = crossgate(&[
        "certs",
        "dev",
        "--config",
        &config,
        "--out",
        certs.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(made.success());

    let port_of = |id: &str| {
        adapters
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, port)| *port)
            .unwrap()
    };
    let mut running = Processes(vec![
        crossgate(&["broker", "--config", &config]).spawn().unwrap(),
    ]);
    for dept in ["customs", "border-inspection", "commerce"] {
        let inbox = dir.join(format!("{dept}.inbox.jsonl"));
        running.0.push(
            crossgate(&[
                "adapter",
                "--config",
                &config,
                "--department",
                dept,
                "--inbox",
                inbox.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
        );
    }
    wait_for_child(&mut running.0[0], broker_port, None);
    for (i, dept) in ["customs", "border-inspection", "commerce"]
        .iter()
        .enumerate()
    {
        wait_for_child(&mut running.0[i + 1], port_of(dept), None);
    }

    let tls = crossgate_tls::Bundle::load(&certs, "customs").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://127.0.0.1:{}",
        port_of("customs")
    ))
    .unwrap()
    .tls_config(tls.client())
    .unwrap()
    .connect()
    .await
    .unwrap();
    let declaration = std::fs::read_to_string(format!(
        "{ROOT}/deploy/local/fixtures/customs/declarations.valid.jsonl"
    ))
    .unwrap();
    let reply = IngressClient::new(channel)
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: declaration.lines().next().unwrap().as_bytes().to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<String> = reply
        .deliveries
        .iter()
        .map(|d| format!("{} {}", d.receiver, d.outcome))
        .collect();
    assert_eq!(
        outcomes,
        ["border-inspection delivered", "commerce delivered"]
    );

    let inbox = |dept: &str| -> serde_json::Value {
        let path = dir.join(format!("{dept}.inbox.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{dept}: {text}");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "{dept}'s inbox holds records: {mode:o}"
            );
        }
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    };
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let border = inbox("border-inspection");
    assert_eq!(border["provider"], "customs");
    assert_eq!(
        keys(&border["record"]),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "port_code",
            "transport"
        ]
    );
    let commerce = inbox("commerce");
    assert_eq!(
        keys(&commerce["record"]),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "goods",
            "trader_uscc"
        ]
    );

    // Through the broker, with the auditor's certificate; a partner's is refused.
    let via_broker = |cert: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossgate"))
            .arg("audit")
            .args(args)
            .args([
                "--config",
                &config,
                "--cert",
                certs.join(cert).to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, err) = via_broker("audit-office.pem", &["search", "--consumer", "commerce"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        table.lines().count(),
        3,
        "a header, the release to commerce (recorded before it was sent) and its delivery: {table}"
    );
    assert!(
        table.contains("allowed") && table.contains("delivered"),
        "{table}"
    );
    assert!(
        table.contains("trade-statistics") && table.contains("/trader_uscc"),
        "{table}"
    );
    let exported = dir.join("export.jsonl");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    std::fs::write(&exported, "an older export\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exported, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Refused by the broker (a partner reads no log): the file is left as it
    // was. The refusal is in the log, counted within the second; so is the
    // verify refused next (each waited for, so each is an entry of its own).
    let (code, _, err) = via_broker(
        "customs.pem",
        &["export", "--out", exported.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&exported).unwrap(),
        "an older export\n"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, _, err) = via_broker("customs.pem", &["verify"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("PermissionDenied"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, _, err) = via_broker(
        "audit-office.pem",
        &["export", "--out", exported.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines = std::fs::read_to_string(&exported).unwrap().lines().count();
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(
        lines, 8,
        "two releases, two deliveries, the search, customs' two refused calls and the export itself: {text}"
    );
    let refusals: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["consumer"] == "customs" && e["decision"] == "denied")
        .collect();
    assert_eq!(refusals.len(), 2, "{text}");
    for e in &refusals {
        assert_eq!(e["kind"], "audit", "{e}");
        let reason = e["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("1 call(s) refused from ")
                && reason
                    .ends_with("customs has the role partner; this call needs the role auditor"),
            "{reason}"
        );
    }
    assert_eq!(mode(&exported), 0o600, "the export is its owner's alone");
    let (code, verified, err) = via_broker("audit-office.pem", &["verify"]);
    assert_eq!(code, Some(0), "{verified}{err}");
    // The log names the declaration by its id's keyed digest: a search by
    // the id finds its entries, and no entry holds the id.
    let declaration_id = border["record"]["declaration_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, named, err) = via_broker(
        "audit-office.pem",
        &[
            "search",
            "--record-id",
            &declaration_id,
            "--format",
            "jsonl",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let named: Vec<serde_json::Value> = named
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(named.len(), 4, "two releases, two deliveries: {named:?}");
    let digest = named[0]["record_id"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("id:") && digest.len() == 35, "{digest}");
    assert!(named.iter().all(|e| e["record_id"] == digest.as_str()));

    // Directly on the file: the deliveries, with purposes and released
    // fields, in a log that verifies until one byte is changed.
    drop(running);
    let store = format!("sqlite:{}", dir.join("audit.db").display());
    let audit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossgate"))
            .arg("audit")
            .args(args)
            .args(["--store", &store])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, found) = audit(&["search", "--provider", "customs", "--format", "jsonl"]);
    assert_eq!(code, Some(0));
    let entries: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut receivers: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["consumer"].as_str().unwrap(),
                e["decision"].as_str().unwrap()
            )
        })
        .collect();
    receivers.sort();
    assert_eq!(
        receivers,
        [
            "border-inspection allowed",
            "border-inspection delivered",
            "commerce allowed",
            "commerce delivered"
        ]
    );
    assert!(
        entries
            .iter()
            .filter(|e| e["consumer"] == "commerce")
            .all(|e| e["purpose"] == "trade-statistics")
    );
    assert!(
        !found.contains("藏D"),
        "the log holds digests, never records"
    );
    let (code, everything) = audit(&["search", "--format", "jsonl"]);
    assert_eq!(code, Some(0));
    assert!(
        everything.contains(&digest) && !everything.contains(&declaration_id),
        "no entry, the auditor's search included, holds the id: {everything}"
    );
    // On the file, the id is digested with the key of the broker's
    // certificate folder; without it, a digest still finds the entries and
    // an id is refused (exit 2) rather than found nowhere.
    let (code, by_id) = audit(&[
        "search",
        "--record-id",
        &declaration_id,
        "--config",
        &config,
    ]);
    assert_eq!((code, by_id.lines().count()), (Some(0), 5), "{by_id}");
    // A folder with no broker.toml: no key (the defaults would name another
    // folder's secret, whose digests find nothing).
    let elsewhere = dir.join("certs");
    let elsewhere = elsewhere.to_str().unwrap();
    let (code, by_digest) = audit(&["search", "--record-id", &digest, "--config", elsewhere]);
    assert_eq!(
        (code, by_digest.lines().count()),
        (Some(0), 5),
        "{by_digest}"
    );
    let said = refused(&[
        "audit",
        "search",
        "--record-id",
        &declaration_id,
        "--store",
        &store,
        "--config",
        elsewhere,
    ]);
    assert!(
        said.contains("holds no broker.toml; give --config the folder of the broker"),
        "{said}"
    );
    // An auditor holding a copy of the store and the record-id key alone
    // (not the broker's secret) finds the declaration by its id.
    let id_key = dir.join("ids.key");
    // A key file left readable by all from before is narrowed before the
    // key is written into it.
    std::fs::write(&id_key, "an older file, readable by all\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&id_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Without the broker's folder there is no key to write: refused, and
    // the file is left as it was.
    let said = refused(&[
        "certs",
        "id-key",
        "--out",
        id_key.to_str().unwrap(),
        "--config",
        elsewhere,
    ]);
    assert!(
        said.contains("holds no broker.toml; give --config the folder of the broker"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&id_key).unwrap(),
        "an older file, readable by all\n"
    );
    let made = crossgate(&[
        "certs",
        "id-key",
        "--out",
        id_key.to_str().unwrap(),
        "--config",
        &config,
    ])
    .output()
    .unwrap();
    assert!(made.status.success(), "{made:?}");
    let text = std::fs::read_to_string(&id_key).unwrap();
    assert_eq!(text.trim().len(), 64, "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&id_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let (code, by_key) = audit(&[
        "search",
        "--record-id",
        &declaration_id,
        "--id-key",
        id_key.to_str().unwrap(),
        "--config",
        elsewhere,
    ]);
    assert_eq!((code, by_key.lines().count()), (Some(0), 5), "{by_key}");
    let bad_key = dir.join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let said = refused(&[
        "audit",
        "search",
        "--record-id",
        &declaration_id,
        "--store",
        &store,
        "--id-key",
        bad_key.to_str().unwrap(),
    ]);
    assert!(said.contains("bad.key is not a record-id key"), "{said}");
    let (code, verified) = audit(&["verify"]);
    assert_eq!(
        (code, verified.as_str()),
        (Some(0), "chain broker-1: 10 entries verified\n"),
        "2 releases, 2 deliveries, 4 readings and 2 refused readings"
    );

    let db = dir.join("audit.db");
    let mut bytes = std::fs::read(&db).unwrap();
    // Only entries' reasons hold "; delivery " (the outbox does not).
    let at = bytes
        .windows(11)
        .position(|w| w == b"; delivery ")
        .expect("a delivery's entry is in the file");
    bytes[at] ^= 0x01;
    std::fs::write(&db, bytes).unwrap();
    let (code, verified) = audit(&["verify"]);
    assert_eq!(code, Some(1), "{verified}");
    assert!(
        verified.starts_with("chain broker-1: entry ") && verified.contains("does not verify"),
        "{verified}"
    );
}

/// What crossgate says on stderr when it refuses `args`, which it must do
/// with exit 2.
fn refused(args: &[&str]) -> String {
    let out = crossgate(args)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "crossgate {args:?}: {said}");
    said
}
