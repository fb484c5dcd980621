//! `crossgate up`: everything on the configured addresses, certificates made
//! on first run, a clean stop on Ctrl-C, a clear refusal on a taken port.

mod common;

use common::{ROOT, config_copy};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn up_serves_every_party_and_stops_cleanly_on_ctrl_c() {
    let dir = crossgate_testing::TempDir::new("up");
    let (broker_port, adapters) = config_copy(&dir);
    std::fs::copy(
        format!("{ROOT}/deploy/local/limits.toml"),
        dir.join("limits.toml"),
    )
    .unwrap();
    let config = dir.to_str().unwrap();
    let state = dir.join("adapters");
    let mut up = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["up", "--config", config, "--state"])
        .arg(&state)
        .current_dir(ROOT)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crossgate_testing::wait_for_child(&mut up, broker_port, None);
    for (_, port) in &adapters {
        crossgate_testing::wait_for_child(&mut up, *port, None);
    }
    assert!(
        dir.join("certs/ca.pem").exists(),
        "certificates made on first run"
    );
    let list = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["limits", "list", "--config", config])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(
        list.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("education"));

    // A second `up` finds the ports taken and says so.
    let second = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["up", "--config", config, "--state"])
        .arg(&state)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains(&format!("cannot listen on 127.0.0.1:{broker_port}"))
    );

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = up.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "broker             https://127.0.0.1:{broker_port}"
        )),
        "{text}"
    );
    assert!(
        text.contains("auditor") && text.contains("audit-office.pem"),
        "{text}"
    );
    assert!(text.contains("stopping"), "{text}");
    // Each adapter kept its delivery ids in the folder given by --state.
    for (id, _) in &adapters {
        assert!(
            state.join(format!("{id}.delivered.db")).exists(),
            "{id}'s delivery ids in {}",
            state.display()
        );
    }
}
