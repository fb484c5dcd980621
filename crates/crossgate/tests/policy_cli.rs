//! `crossgate policy check` as an operator runs it.

use std::process::{Command, Output};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["policy", "check", "--date", "2026-11-22"])
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("crossgate runs")
}

#[test]
fn an_allowed_query_lists_the_released_fields_and_masks() {
    let out = check(&[
        "--consumer",
        "education",
        "--provider",
        "public-security",
        "--type",
        "household.v1",
        "--purpose",
        "school-enrolment",
        "--approval",
        "EDU-2025-0001",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "allow: education may query public-security for household.v1 for \"school-enrolment\" under grant education-household\n\
         \x20 approval: EDU-2025-0001 (valid 2025-01-01 to 2030-12-31)\n\
         \x20 releases /household_id\n\
         \x20 releases /registered_address\n\
         \x20 releases /members/-/name\n\
         \x20 releases /members/-/relation\n\
         \x20 releases /members/-/id_number (masked: KeepLast(4))\n"
    );
}

#[test]
fn a_denied_query_says_why_and_exits_1() {
    let out = check(&[
        "--consumer",
        "education",
        "--provider",
        "public-security",
        "--type",
        "household.v1",
        "--purpose",
        "school-enrolment",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("deny: household.v1 of public-security is shared on condition"),
        "{text}"
    );
    assert!(
        text.ends_with("  rule: catalog:public-security/household.v1\n"),
        "{text}"
    );
}

#[test]
fn a_missing_config_exits_2() {
    let out = check(&[
        "--consumer",
        "a",
        "--provider",
        "b",
        "--type",
        "person.v1",
        "--purpose",
        "p",
        "--config",
        "no-such-dir",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read no-such-dir/partners.toml"));
}
