//! Every `cargo run --release -- ...` command in the README's shell blocks is
//! run, in order, as `crossgate ...` in a copy of the project (free ports), so
//! the README cannot rot. Servers (`up`, `broker`, `adapter`) run in the
//! background until the next `up` or the end; other commands must exit 0, or
//! 1 where the README shows the faults they report, and those fault lines must
//! appear in what they print.

mod common;

use common::{Processes, ROOT, config_copy};
use std::path::Path;
use std::process::{Command, Stdio};

/// A command of the README and the output lines it shows after it.
struct Example {
    args: Vec<String>,
    shown: Vec<String>,
}

fn examples() -> Vec<Example> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let mut out: Vec<Example> = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_shell = !in_shell && line.trim() == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        if let Some(shown) = line.strip_prefix("# ") {
            if let Some(last) = out.last_mut() {
                last.shown.push(shown.to_owned());
            }
            continue;
        }
        let code = line.split(" #").next().unwrap_or_default().trim_end();
        pending.push_str(code.trim_end_matches('\\'));
        pending.push(' ');
        if code.ends_with('\\') {
            continue;
        }
        if let Some(rest) = pending.trim().strip_prefix("cargo run --release -- ") {
            out.push(Example {
                args: rest.split_whitespace().map(str::to_owned).collect(),
                shown: Vec::new(),
            });
        }
        pending.clear();
    }
    out
}

#[test]
fn every_readme_command_runs() {
    let project = crossgate_testing::TempDir::new("readme");
    let config = project.join("deploy/local");
    let (broker_port, adapters) = config_copy(&config);
    std::fs::write(
        config.join("broker.toml"),
        format!("listen = \"127.0.0.1:{broker_port}\"\ncerts = \".crossgate/certs\"\n[audit]\nstore = \"sqlite:.crossgate/audit.db\"\n"),
    )
    .unwrap();
    std::fs::copy(
        format!("{ROOT}/deploy/local/limits.toml"),
        config.join("limits.toml"),
    )
    .unwrap();
    crossgate_testing::copy_dir(
        Path::new(&format!("{ROOT}/deploy/local/fixtures")),
        &config.join("fixtures"),
    );
    crossgate_testing::copy_dir(
        Path::new(&format!("{ROOT}/schemas")),
        &project.join("schemas"),
    );
    crossgate_testing::copy_dir(
        Path::new(&format!("{ROOT}/examples")),
        &project.join("examples"),
    );
    let port_of = |id: &str| {
        adapters
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, port)| *port)
    };

    let examples = examples();
    assert!(examples.len() >= 20, "the README's commands were not found");
    let mut servers = Processes(Vec::new());
    for example in &examples {
        let args: Vec<&str> = example.args.iter().map(String::as_str).collect();
        let command = args.join(" ");
        let crossgate = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
            c.args(&args).current_dir(&project);
            c
        };
        match args.first().copied() {
            Some("up" | "broker" | "adapter") => {
                if args[0] == "up" {
                    // `up` runs everything itself: stop the separate pieces first.
                    drop(std::mem::replace(&mut servers, Processes(Vec::new())));
                }
                // What a server says goes to a file, shown if it does not come up.
                let log = project.join(format!("server-{}.log", servers.0.len()));
                let stderr = std::fs::File::create(&log).unwrap();
                servers.0.push(
                    crossgate()
                        .stdout(Stdio::null())
                        .stderr(stderr)
                        .spawn()
                        .unwrap(),
                );
                let port = match args.first().copied() {
                    Some("adapter") => port_of(args[2]).unwrap(),
                    _ => broker_port,
                };
                assert!(
                    crossgate_testing::listening(port),
                    "`crossgate {command}` did not listen on port {port}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            _ => {
                let out = crossgate().output().unwrap();
                let printed = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                // Commands the README shows fault lines for report faults (exit 1); the rest succeed.
                let reports_faults = example.shown.iter().any(|s| s.contains(".jsonl:"));
                let expected = if reports_faults { 1 } else { 0 };
                assert_eq!(
                    out.status.code(),
                    Some(expected),
                    "`crossgate {command}`:\n{printed}"
                );
                for shown in example.shown.iter().filter(|s| s.contains(".jsonl:")) {
                    assert!(
                        printed.contains(shown.as_str()),
                        "`crossgate {command}` did not print {shown:?}:\n{printed}"
                    );
                }
                if args.starts_with(&["deliveries", "replay"]) {
                    each_arrived_once(&project.join("border-inspection.jsonl"), 3);
                }
            }
        }
    }
}

/// The receiver that was down has `count` records, each delivery once.
fn each_arrived_once(inbox: &Path, count: usize) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let read = || std::fs::read_to_string(inbox).unwrap_or_default();
    while read().lines().count() < count && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let text = read();
    let ids: std::collections::HashSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["delivery_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        (text.lines().count(), ids.len()),
        (count, count),
        "each declaration arrives once:\n{text}"
    );
}
