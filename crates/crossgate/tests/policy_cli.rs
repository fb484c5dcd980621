//! `crossgate policy check` as an operator runs it.

use std::process::{Command, Output};

use crossgate_testing::ROOT;

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
        "--lookup",
        "/household_id=11010567397679",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "allow: education may query public-security for household.v1 for \"school-enrolment\" under grant education-household\n\
         \x20 lookups allowed: /household_id\n\
         \x20 at most 1 record(s) per answer\n\
         \x20 record_id: the released field /household_id\n\
         \x20 approval: EDU-2025-0001 covers household 11010567397679 (valid 2025-01-01 to 2030-12-31; uses not counted; approved by Chaoyang District Education Commission)\n\
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
        "--lookup",
        "/household_id=11010567397679",
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
fn lookups_outside_the_grant_and_other_subjects_are_denied_naming_the_rule() {
    let person = |lookup: &[&str]| {
        let mut args = vec![
            "--consumer",
            "education",
            "--provider",
            "public-security",
            "--type",
            "person.v1",
            "--purpose",
            "school-enrolment",
        ];
        args.extend_from_slice(lookup);
        check(&args)
    };
    let out = person(&["--lookup", "/id_number=540202198107103540"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  record_id: an opaque reference, stable for education and different for every other consumer\n"),
        "{text}"
    );
    assert!(!text.contains("releases /id_number"), "{text}");

    let out = person(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deny: grant education-person answers lookups by /id_number only; a query without criteria is refused\n\
         \x20 rule: grant:education-person\n"
    );
    let out = person(&["--lookup", "/ethnicity=05"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deny: grant education-person allows lookups by /id_number, not by /ethnicity\n\
         \x20 rule: grant:education-person\n"
    );

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
        "--lookup",
        "/household_id=11010500000001",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deny: approval EDU-2025-0001 covers household 11010567397679, not household 11010500000001\n\
         \x20 rule: approval:EDU-2025-0001\n"
    );
    let out = person(&["--lookup", "id_number"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("write a lookup as PATH=VALUE"));
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
