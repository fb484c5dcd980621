//! `crossgate schema` as a user runs it: output lines and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crossgate_testing::ROOT;

fn crossgate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crossgate starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_wrong_check_character_and_a_missing_name_are_both_reported() {
    let out = crossgate(
        &["schema", "validate", "--type", "person.v1"],
        r#"{"id_number": "110105194912310021", "sex": "female", "birth_date": "1949-12-31"}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "<stdin>:1: /name: is required\n\
         <stdin>:1: /id_number: identity number: wrong check character '1', expected 'X'\n"
    );
}

#[test]
fn shipped_examples_give_file_and_line_of_each_fault() {
    let ok = crossgate(
        &[
            "schema",
            "validate",
            "--type",
            "person.v1",
            "examples/person.v1.valid.jsonl",
        ],
        "",
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert_eq!(stdout(&ok), "");

    let bad = crossgate(
        &[
            "schema",
            "validate",
            "--type",
            "person.v1",
            "examples/person.v1.invalid.jsonl",
        ],
        "",
    );
    assert_eq!(bad.status.code(), Some(1));
    let lines: Vec<String> = stdout(&bad)
        .lines()
        .map(|l| l.split(": ").take(2).collect::<Vec<_>>().join(": "))
        .collect();
    assert_eq!(
        lines,
        vec![
            "examples/person.v1.invalid.jsonl:2: /name",
            "examples/person.v1.invalid.jsonl:2: /id_number",
            "examples/person.v1.invalid.jsonl:3: /birth_date",
            "examples/person.v1.invalid.jsonl:3: /ethnicity",
            "examples/person.v1.invalid.jsonl:3: /sex",
        ]
    );
}

#[test]
fn malformed_and_oversized_records_are_faults_not_crashes() {
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(1024 * 1024 + 1));
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let input = format!("{{\"name\":\n{big}\n{deep}\n");
    let out = crossgate(&["schema", "validate", "--type", "person.v1", "-"], &input);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("<stdin>:1: (document): not valid JSON"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("<stdin>:2: (document): document is 1048589 bytes, over the limit"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "<stdin>:3: (document): document nests objects and arrays deeper than 64 levels"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let unknown = crossgate(&["schema", "validate", "--type", "person.v9"], "{}");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown record type \"person.v9\""));

    let missing = crossgate(
        &[
            "schema",
            "validate",
            "--type",
            "person.v1",
            "no/such/file.jsonl",
        ],
        "",
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.jsonl: cannot read"));

    let no_type = crossgate(&["schema", "validate"], "");
    assert_eq!(no_type.status.code(), Some(2));

    let bad_dir = crossgate(&["schema", "list", "--schemas", "no-such-dir"], "");
    assert_eq!(bad_dir.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad_dir.stderr).contains("cannot read schema folder no-such-dir")
    );
}

#[test]
fn list_prints_each_record_type_with_its_title() {
    let out = crossgate(&["schema", "list"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("customs-declaration.v1   Customs declaration\n"));
    assert_eq!(stdout(&out).lines().count(), 5);
}
