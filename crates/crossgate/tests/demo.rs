//! `crossgate demo`, the README's first command, plays all six scenarios and exits 0.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn the_demo_plays_every_scenario_and_exits_0() {
    let state = std::env::temp_dir().join(format!("crossgate-demo-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["demo", "--state", state.to_str().unwrap()])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "(a) the land port",
        "(b) newborn",
        "(c) school enrolment",
        "(d) a bad record",
        "(e) a burst over the limit",
        "(f) the auditor",
    ] {
        assert!(
            text.contains(&format!("  ok      {step}")),
            "{step}: {text}"
        );
    }
    assert!(text.contains("-> border-inspection  delivered fields: declaration_id, declared_on, direction, port_code, transport"));
    assert!(text.contains("rejected: GMSFHM: identity number: wrong check character"));
    assert!(state.join("audit.db").exists());
}
