//! `crossgate map` and `crossgate adapter` as a user runs them.

use std::process::{Command, Output};

use crossgate_testing::ROOT;

fn crossgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("crossgate runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn customs_declarations_map_to_valid_records_and_every_fault_is_listed() {
    let out = crossgate(&[
        "map",
        "--department",
        "customs",
        "deploy/local/fixtures/customs/declarations.valid.jsonl",
        "deploy/local/fixtures/customs/declarations.invalid.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 3);
    for line in stdout.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(doc["declaration_id"].as_str().unwrap().len() == 18);
    }
    // Each mapped line validates as customs-declaration.v1.
    let check = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["schema", "validate", "--type", "customs-declaration.v1"])
        .current_dir(ROOT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .as_ref()
        .unwrap()
        .write_all(stdout.as_bytes())
        .unwrap();
    assert_eq!(check.wait_with_output().unwrap().status.code(), Some(0));

    assert_eq!(
        text(&out.stderr),
        "deploy/local/fixtures/customs/declarations.invalid.jsonl:1: trafMode -> /transport/mode: unknown code \"Q\"; known codes: 2, 3, 4, 5\n\
         deploy/local/fixtures/customs/declarations.invalid.jsonl:1: goods -> /goods: [] has less than 1 item\n\
         3 mapped, 1 failed\n"
    );
}

#[test]
fn public_security_persons_pick_their_mapping_and_report_native_names() {
    let out = crossgate(&[
        "map",
        "--department",
        "public-security",
        "deploy/local/fixtures/public-security/persons.invalid.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "persons.invalid.jsonl:1: GMSFHM -> /id_number: identity number: wrong check character"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("persons.invalid.jsonl:2: XB -> /sex: sex is male but digit 17"),
        "{stderr}"
    );
    assert!(
        stderr.contains("persons.invalid.jsonl:3: CSRQ -> /birth_date: cannot read \"19990230\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("persons.invalid.jsonl:4: XM -> /name: is required"),
        "{stderr}"
    );
    assert!(
        stderr.contains("persons.invalid.jsonl:4: HJDZ_XZQH -> /registered_address/division_code"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("1 mapped, 4 failed\n") || stderr.ends_with("0 mapped, 4 failed\n"),
        "{stderr}"
    );
}

#[test]
fn outbound_maps_canonical_records_back_to_native() {
    let canonical = crossgate(&[
        "map",
        "--department",
        "health",
        "deploy/local/fixtures/health/births.valid.jsonl",
    ]);
    assert_eq!(canonical.status.code(), Some(0));
    let dir = crossgate_testing::TempDir::new("map");
    let file = dir.join("births.canonical.jsonl");
    std::fs::write(&file, &canonical.stdout).unwrap();
    let back = crossgate(&[
        "map",
        "--department",
        "health",
        "--direction",
        "outbound",
        file.to_str().unwrap(),
    ]);
    assert_eq!(back.status.code(), Some(0), "{}", text(&back.stderr));
    let original = std::fs::read_to_string(format!(
        "{ROOT}/deploy/local/fixtures/health/births.valid.jsonl"
    ))
    .unwrap();
    let a: Vec<serde_json::Value> = original
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let b: Vec<serde_json::Value> = text(&back.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(a, b);
}

#[test]
fn unknown_department_and_bad_config_exit_2_with_a_clear_message() {
    let out = crossgate(&["map", "--department", "educaton", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown department \"educaton\""));
    assert!(
        text(&out.stderr).contains(
            "configured departments: border-inspection, commerce, customs, education, health, human-resources, market-regulation, medical-insurance, public-security, tax"
        )
    );

    let dir = crossgate_testing::TempDir::new("badcfg");
    std::fs::create_dir_all(dir.join("departments")).unwrap();
    std::fs::write(
        dir.join("departments/tax.toml"),
        "department = \"tax\"\n\n[[record]]\nnative_type = \"t\"\nrecord_type = \"business.v1\"\n\n[[record.field]]\nnative = \"a\"\ncanonical = \"/capital\"\n",
    )
    .unwrap();
    let out = crossgate(&[
        "map",
        "--department",
        "tax",
        "--config",
        dir.to_str().unwrap(),
        "-",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("departments/tax.toml:9: /capital is not a field of business.v1"),
        "{stderr}"
    );
}

#[test]
fn an_adapter_on_a_taken_port_says_so_and_exits_2() {
    let certs = crossgate_testing::TempDir::new("taken");
    let made = crossgate(&["certs", "dev", "--out", certs.to_str().unwrap()]);
    assert_eq!(made.status.code(), Some(0), "{}", text(&made.stderr));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = crossgate(&[
        "adapter",
        "--department",
        "customs",
        "--listen",
        &addr,
        "--certs",
        certs.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("cannot listen on {addr}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_adapter_without_certificates_says_how_to_make_them() {
    let out = crossgate(&[
        "adapter",
        "--department",
        "customs",
        "--certs",
        "no/such/certs",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read no/such/certs/customs.pem"),
        "{stderr}"
    );
    assert!(stderr.contains("crossgate certs dev --out DIR"), "{stderr}");
}

#[test]
fn a_missing_config_folder_is_named() {
    let out = crossgate(&["broker", "--config", "no/such/config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read no/such/config/partners.toml"),
        "{}",
        text(&out.stderr)
    );
}
