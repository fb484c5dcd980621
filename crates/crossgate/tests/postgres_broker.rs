//! `crossgate broker` on a PostgreSQL audit log (the store replicas share):
//! it starts, an auditor reads the log through it, and an operator's catalog
//! reload is counted against the log. Runs where CROSSGATE_TEST_DATABASE_URL
//! names a database (`.ci/run` sets it).

mod common;

use common::{Processes, TempDir, config_copy, wait_for_child};
use std::process::{Command, Stdio};

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_broker_runs_on_a_postgresql_audit_log() {
    let Ok(url) = std::env::var("CROSSGATE_TEST_DATABASE_URL") else {
        eprintln!("CROSSGATE_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let dir = TempDir::new("postgres-broker");
    let (port, _) = config_copy(&dir);
    let writer = format!("pg-broker-{}", std::process::id());
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ncerts = \"{}\"\n[audit]\nstore = \"{url}\"\nwriter = \"{writer}\"\n",
            dir.join("certs").display()
        ),
    )
    .unwrap();
    let config = dir.to_str().unwrap();
    let certs = dir.join("certs");
    let certs = certs.to_str().unwrap();
    assert_eq!(
        run(&["certs", "dev", "--config", config, "--out", certs]).0,
        Some(0)
    );
    let log = dir.join("broker.log");
    let mut broker = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["broker", "--config", config])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_child(&mut broker, port, Some(&log));
    let _broker = Processes(vec![broker]);
    let broker = format!("https://127.0.0.1:{port}");
    let party = |id: &str| {
        [
            "--broker".to_owned(),
            broker.clone(),
            "--cert".to_owned(),
            format!("{certs}/{id}.pem"),
            "--key".to_owned(),
            format!("{certs}/{id}.key"),
            "--ca".to_owned(),
            format!("{certs}/ca.pem"),
        ]
    };
    let mut reload = vec!["policy".to_owned(), "reload".to_owned()];
    reload.extend(party("operations"));
    let reload: Vec<&str> = reload.iter().map(String::as_str).collect();
    let (code, said) = run(&reload);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reloaded "), "{said}");

    let mut search = vec!["audit".to_owned(), "search".to_owned()];
    search.extend(party("audit-office"));
    let search: Vec<&str> = search.iter().map(String::as_str).collect();
    let (code, found) = run(&search);
    assert_eq!(code, Some(0), "{found}");
    assert!(
        found.contains("operations") && found.contains("admin"),
        "the reload is in the shared log: {found}"
    );
}
