//! Helpers for tests that run crossgate as separate processes.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Kills its processes when the test ends, pass or fail.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// deploy/local with every listen address moved to a free port.
pub fn config_copy(dir: &Path) -> (u16, Vec<(String, u16)>) {
    std::fs::create_dir_all(dir.join("departments")).unwrap();
    for entry in std::fs::read_dir(format!("{ROOT}/deploy/local/departments")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.join("departments").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(
        format!("{ROOT}/deploy/local/catalog.toml"),
        dir.join("catalog.toml"),
    )
    .unwrap();
    let broker_port = free_port();
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{broker_port}\"\ncerts = \"{}\"\n[audit]\nstore = \"sqlite:{}\"\n",
            dir.join("certs").display(),
            dir.join("audit.db").display()
        ),
    )
    .unwrap();
    let mut partners =
        std::fs::read_to_string(format!("{ROOT}/deploy/local/partners.toml")).unwrap();
    let mut ports = Vec::new();
    for line in partners.clone().lines() {
        if let Some(addr) = line
            .strip_prefix("adapter = \"")
            .and_then(|r| r.strip_suffix('"'))
        {
            let port = free_port();
            partners = partners.replace(addr, &format!("127.0.0.1:{port}"));
            ports.push(port);
        }
    }
    std::fs::write(dir.join("partners.toml"), &partners).unwrap();
    let ids: Vec<String> = partners
        .lines()
        .filter_map(|l| {
            l.strip_prefix("id = \"")
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_owned)
        })
        .collect();
    (broker_port, ids.into_iter().zip(ports).collect())
}

pub fn crossgate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(ROOT)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

pub fn wait_for(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
