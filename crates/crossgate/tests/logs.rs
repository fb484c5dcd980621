//! `--log-format json`: every line the broker writes to stderr is one JSON
//! object with a level and a message; a bad `RUST_LOG` is refused at start
//! with the fix, exit 2.

mod common;

use common::{TempDir, config_copy, wait_for};
use std::process::{Command, Stdio};

fn crossgate(dir: &TempDir, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn json_logs_are_one_object_per_line_and_a_bad_filter_is_refused() {
    let dir = TempDir::new("logs_json");
    let (broker_port, _) = config_copy(&dir);
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{broker_port}\"\ncerts = \"certs\"\nmetrics_listen = \"off\"\n\
             [audit]\nstore = \"sqlite:audit.db\"\n"
        ),
    )
    .unwrap();
    let made = crossgate(&dir, &["certs", "dev", "--config", ".", "--out", "certs"])
        .status()
        .unwrap();
    assert!(made.success());

    let broker = crossgate(&dir, &["--log-format", "json", "broker", "--config", "."])
        .spawn()
        .unwrap();
    wait_for(broker_port);
    let _ = Command::new("kill")
        .args(["-TERM", &broker.id().to_string()])
        .status();
    let out = broker.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "the stop is logged");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("stopping (up to")),
        "{stderr}"
    );

    let bad = crossgate(&dir, &["broker", "--config", "."])
        .env("RUST_LOG", "crossgate=loud")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("RUST_LOG=\"crossgate=loud\""), "{said}");
    assert!(said.contains("RUST_LOG=info"), "{said}");

    let unknown = crossgate(&dir, &["--log-format", "yaml", "broker"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("text or json"),
        "{unknown:?}"
    );
}
