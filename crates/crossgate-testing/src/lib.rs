//! Test support shared by crossgate's crates (a dev-dependency only): where
//! the project's files are, the shipped fixtures, temporary folders that
//! remove themselves, copies of `deploy/local` on free ports, and child
//! processes that are killed when a test ends, pass or fail.
#![forbid(unsafe_code)]
// Test support: a failure here is a broken test setup and should stop the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossgate_schema::Registry;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The project's root folder (where `schemas/` and `deploy/` are).
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Every party of the shipped `deploy/local/partners.toml`, for compiling
/// the shipped catalog and limits in tests and benchmarks.
pub const PARTNERS: &[&str] = &[
    "customs",
    "border-inspection",
    "commerce",
    "health",
    "public-security",
    "medical-insurance",
    "market-regulation",
    "tax",
    "human-resources",
    "education",
    "audit-office",
    "operations",
];

pub fn root() -> &'static Path {
    Path::new(ROOT)
}

/// The shipped configuration: `deploy/local`.
pub fn deploy_local() -> PathBuf {
    root().join("deploy/local")
}

/// The project's schemas, loaded once per test binary.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::load_dir(root().join("schemas")).expect("the project's schemas"))
}

/// The non-empty lines of a shipped fixture file, e.g.
/// `fixture_lines("customs", "declarations.valid.jsonl")`.
pub fn fixture_lines(department: &str, file: &str) -> Vec<String> {
    let path = deploy_local().join("fixtures").join(department).join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Line `n` (from 0) of a shipped fixture file, as bytes.
pub fn fixture_line(department: &str, file: &str, n: usize) -> Vec<u8> {
    fixture_lines(department, file)
        .into_iter()
        .nth(n)
        .unwrap_or_else(|| panic!("{department}/{file} has no line {n}"))
        .into_bytes()
}

/// A fresh folder under the system's temporary folder, removed (with what
/// is in it) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "crossgate-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copy a folder tree (without operators' `limits.overrides.toml`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "limits.overrides.toml" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A port nothing listens on right now. For tests that start separate
/// processes, which must bind the port themselves: another process could
/// take it in between, so in-process tests bind port 0 instead.
///
/// The port is drawn below the kernel's ephemeral range, never from it: a
/// port the kernel hands out for port 0 is also the kind it gives every
/// outgoing connection, so while the child process starts, another test's
/// client could be connected from that very port and the child would find
/// it taken. Within one test process no port is handed out twice.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let Some((low, high)) = below_ephemeral() else {
        // No room below the range: let the kernel choose.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    };
    let span = u32::from(high - low);
    let mut pick = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    );
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..span {
        pick = pick.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = low + u16::try_from((pick >> 8) % span).unwrap();
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Ports below the kernel's ephemeral range (`ip_local_port_range`), above
/// the well-known and common service ports; `None` when there is no room.
fn below_ephemeral() -> Option<(u16, u16)> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (first_ephemeral > 22_000).then_some((20_000, first_ephemeral))
}

/// `deploy/local` copied into `dir` with the broker and every adapter on a
/// free port, certificates in `dir/certs` and the audit log in
/// `dir/audit.db`. Returns the broker's port and each adapter's (id, port).
pub fn config_copy(dir: &Path) -> (u16, Vec<(String, u16)>) {
    let from = deploy_local();
    copy_dir(&from.join("departments"), &dir.join("departments"));
    std::fs::copy(from.join("catalog.toml"), dir.join("catalog.toml")).unwrap();
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
    let mut partners = std::fs::read_to_string(from.join("partners.toml")).unwrap();
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

/// Wait (up to 20 s) until something listens on `port`.
pub fn wait_for(port: u16) {
    assert!(listening(port), "nothing listens on port {port}");
}

/// Wait (up to 20 s) until `child` listens on `port`; if it exits first,
/// or never listens, fail with its exit status and what it printed to
/// stderr (when that is piped, or written to `stderr_file`). A child that
/// never listens is killed before the test fails.
pub fn wait_for_child(child: &mut Child, port: u16, stderr_file: Option<&Path>) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() >= until {
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let mut said = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut said);
            }
            if let Some(file) = stderr_file {
                said.push_str(&std::fs::read_to_string(file).unwrap_or_default());
            }
            match exited {
                Some(status) => {
                    panic!("exited ({status}) before listening on port {port}:\n{said}")
                }
                None => panic!("nothing listens on port {port} after 20 s:\n{said}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something listens on `port` within 20 s.
pub fn listening(port: u16) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_folder_removes_itself() {
        let kept;
        {
            let dir = TempDir::new("self-test");
            std::fs::write(dir.path().join("f"), "x").unwrap();
            kept = dir.path().to_path_buf();
            assert!(kept.join("f").exists());
        }
        assert!(!kept.exists());
        assert!(!fixture_lines("customs", "declarations.valid.jsonl").is_empty());
        assert!(registry().contains("person.v1"));
    }
}
