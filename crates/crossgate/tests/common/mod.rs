//! Helpers for tests that run crossgate as separate processes; the rest of
//! the test support is `crossgate-testing`.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use crossgate_testing::{Processes, ROOT, TempDir, config_copy, wait_for};
use std::process::{Command, Stdio};

/// The crossgate binary under test, run from the project root, quiet.
pub fn crossgate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(ROOT)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}
