use crate::{Fault, Registry, Rejection};
use serde_json::{Value, json};

fn registry() -> Registry {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
    Registry::load_dir(dir).expect("the project's schemas load")
}

/// The faults of `doc`, as (path, message) pairs sorted by path.
fn faults(record_type: &str, doc: Value) -> Vec<Fault> {
    match registry().validate(record_type, &doc) {
        Ok(()) => vec![],
        Err(Rejection::Invalid(mut f)) => {
            f.sort_by(|a, b| a.path.cmp(&b.path));
            f
        }
        Err(other) => panic!("expected faults, got {other}"),
    }
}

fn paths(faults: &[Fault]) -> Vec<&str> {
    faults.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn lists_every_shipped_record_type_with_its_title() {
    let reg = registry();
    let listed: Vec<(&str, &str)> = reg
        .record_types()
        .map(|s| (s.record_type, s.title))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("birth.v1", "Birth"),
            ("business.v1", "Business"),
            ("customs-declaration.v1", "Customs declaration"),
            ("household.v1", "Household"),
            ("person.v1", "Person"),
        ]
    );
}

#[test]
fn person_valid_and_every_fault_reported() {
    let valid = json!({
        "id_number": "11010519491231002X", "name": "张三", "sex": "female",
        "birth_date": "1949-12-31", "ethnicity": "01",
        "registered_address": {"division_code": "110105", "text": "北京市朝阳区"}
    });
    assert_eq!(faults("person.v1", valid), vec![]);

    let bad = json!({
        "id_number": "110105194912310021", "sex": "woman", "birth_date": "1949-02-30",
        "ethnicity": "1", "registered_address": {"text": "x"}, "nickname": "z"
    });
    let f = faults("person.v1", bad);
    assert_eq!(
        paths(&f),
        vec![
            "/birth_date",
            "/ethnicity",
            "/id_number",
            "/name",
            "/nickname",
            "/registered_address/division_code",
            "/sex"
        ]
    );
    assert_eq!(
        f[2].message,
        "identity number: wrong check character '1', expected 'X'"
    );
    assert_eq!(f[3].message, "is required");
}

#[test]
fn person_sex_and_birth_date_must_agree_with_id_number() {
    let doc = json!({
        "id_number": "11010519491231002X", "name": "张三", "sex": "male", "birth_date": "1950-01-01"
    });
    let f = faults("person.v1", doc);
    assert_eq!(paths(&f), vec!["/birth_date", "/sex"]);
    assert!(f[0].message.contains("1949-12-31"), "{}", f[0].message);
    assert!(f[1].message.contains("says female"), "{}", f[1].message);
    // unknown is allowed whatever digit 17 says
    let doc = json!({"id_number": "11010519491231002X", "name": "张三", "sex": "unknown", "birth_date": "1949-12-31"});
    assert_eq!(faults("person.v1", doc), vec![]);
}

#[test]
fn household_needs_exactly_one_head() {
    let member =
        |id: &str, relation: &str| json!({"id_number": id, "name": "n", "relation": relation});
    let ok = json!({
        "household_id": "1", "registered_address": {"division_code": "110105"},
        "members": [member("11010519491231002X", "head"), member("34052419800101001X", "spouse")]
    });
    assert_eq!(faults("household.v1", ok), vec![]);
    let two_heads = json!({
        "household_id": "1", "registered_address": {"division_code": "110105"},
        "members": [member("11010519491231002x", "head"), member("34052419800101001X", "head"), member("1", "cousin")]
    });
    let f = faults("household.v1", two_heads);
    assert_eq!(
        paths(&f),
        vec![
            "/members",
            "/members/0/id_number",
            "/members/2/id_number",
            "/members/2/relation"
        ]
    );
    assert!(f[0].message.contains("has 2"));
}

#[test]
fn birth_business_customs_report_every_path() {
    let birth = json!({
        "certificate_number": "q12", "child": {"name": "", "sex": "unknown", "born_at": "2025-13-01T00:00:00+08:00", "weight_grams": -5},
        "mother": {"id_number": "12345", "name": "m"}
    });
    assert_eq!(
        paths(&faults("birth.v1", birth)),
        vec![
            "/certificate_number",
            "/child/born_at",
            "/child/name",
            "/child/sex",
            "/child/weight_grams",
            "/mother/id_number"
        ]
    );
    let good_birth = json!({
        "certificate_number": "Q315668221",
        "child": {"name": "郭艳", "sex": "female", "born_at": "2025-07-07T17:29:00+08:00", "weight_grams": 3097},
        "mother": {"id_number": "11010519491231002X", "name": "m"},
        "place": {"division_code": "310115", "facility": "h"}
    });
    assert_eq!(faults("birth.v1", good_birth), vec![]);

    let business = json!({
        "uscc": "91350100M000100Y44", "name": "x", "kind": "llc", "established_on": "2025-02-30",
        "registered_capital": {"amount": -1, "currency": "rmb"}
    });
    assert_eq!(
        paths(&faults("business.v1", business)),
        vec![
            "/established_on",
            "/kind",
            "/registered_capital/amount",
            "/registered_capital/currency",
            "/uscc"
        ]
    );

    let customs = json!({
        "declaration_id": "44066386405632484", "direction": "import", "declared_on": "2025-07-22",
        "trader_uscc": "91350100M000100Y43", "transport": {"mode": "Q"}, "goods": []
    });
    assert_eq!(
        paths(&faults("customs-declaration.v1", customs)),
        vec!["/declaration_id", "/goods", "/transport/mode"]
    );
}

#[test]
fn bad_documents_get_a_clear_error_not_a_panic() {
    let reg = registry();
    assert!(matches!(
        reg.parse_and_validate("person.v9", b"{}"),
        Err(Rejection::UnknownType { known, .. }) if known.contains("person.v1")
    ));
    assert!(matches!(
        reg.parse_and_validate("person.v1", b"{\"name\": "),
        Err(Rejection::Malformed { line: 1, .. })
    ));
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(
        reg.parse_and_validate("person.v1", deep.as_bytes()),
        Err(Rejection::TooDeep { limit: 64 })
    );
    let big = format!("\"{}\"", "a".repeat(1024 * 1024));
    assert!(matches!(
        reg.parse_and_validate("person.v1", big.as_bytes()),
        Err(Rejection::TooLarge { .. })
    ));
    assert!(matches!(
        reg.parse_and_validate("person.v1", b"[]"),
        Err(Rejection::Invalid(f)) if f.len() == 1 && f[0].path.is_empty()
    ));
}

#[test]
fn schema_at_follows_properties_and_items() {
    let reg = registry();
    assert!(
        reg.schema_at("customs-declaration.v1", "/goods/0/value/amount")
            .is_some()
    );
    assert!(
        reg.schema_at("customs-declaration.v1", "/goods/-/unit")
            .is_some()
    );
    assert!(
        reg.schema_at("customs-declaration.v1", "/goods/x")
            .is_none()
    );
    assert!(
        reg.schema_at("person.v1", "/registered_address/division_code")
            .is_some()
    );
    assert!(reg.schema_at("person.v1", "/nope").is_none());
}

#[test]
fn a_broken_schema_folder_names_the_file() {
    let err = Registry::from_sources([("x/bad.v1.json".into(), "{\n  \"type\": ".to_owned())])
        .unwrap_err();
    assert!(err.to_string().starts_with("x/bad.v1.json:2:"), "{err}");
    let err = Registry::from_sources([("x/bad.v1.json".into(), r#"{"type": "strin"}"#.to_owned())])
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("x/bad.v1.json: not a usable JSON Schema"),
        "{err}"
    );
    let err =
        Registry::from_sources([("x/f.v1.json".into(), r#"{"format": "cn-nope"}"#.to_owned())])
            .unwrap_err();
    assert!(err.to_string().contains("cn-nope"), "{err}");
}

#[test]
fn faults_for_other_parties_carry_no_value_of_the_record() {
    let secrets = [
        "11010519491231002Y",
        "SECRET-ETHNICITY",
        "1999-02-30",
        "周建华-as-a-key",
    ];
    let doc = json!({
        "id_number": secrets[0], "name": "x", "sex": "female", "birth_date": secrets[2],
        "ethnicity": secrets[1], "周建华-as-a-key": 1,
        "registered_address": {"division_code": "110105", "text": "t"}
    });
    let rejection = registry().validate("person.v1", &doc).expect_err("invalid");
    let shown = rejection.without_values();
    for secret in secrets {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // The sender's own messages still say exactly what is wrong.
    let own: Vec<String> = rejection.faults().iter().map(|f| f.to_string()).collect();
    assert!(own.iter().any(|f| f.contains("1999-02-30")), "{own:?}");
    assert!(
        shown.contains("/id_number: is not a valid \"cn-resident-id\""),
        "{shown}"
    );
    assert!(
        shown.contains("(document): holds a field that is not in the schema"),
        "{shown}"
    );
}
