//! The shipped department configs against the shipped fixtures.

use crate::{DepartmentMapping, MapFault, compile};
use crossgate_schema::Registry;
use serde_json::Value;
use std::sync::OnceLock;

use crossgate_testing::ROOT;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::load_dir(format!("{ROOT}/schemas")).unwrap())
}

fn department(id: &str) -> DepartmentMapping {
    let file = format!("{ROOT}/deploy/local/departments/{id}.toml");
    compile(&file, &std::fs::read_to_string(&file).unwrap(), registry())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fixture(dept: &str, name: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(format!("{ROOT}/deploy/local/fixtures/{dept}/{name}")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn map_all(dept: &DepartmentMapping, records: &[Value]) -> Vec<Result<Value, Vec<MapFault>>> {
    records
        .iter()
        .map(|r| {
            let m = dept.detect_native(r).expect("a mapping for the record");
            m.inbound(r, registry()).map(|ok| ok.document)
        })
        .collect()
}

const VALID: &[(&str, &str)] = &[
    ("public-security", "persons.valid.jsonl"),
    ("public-security", "households.valid.jsonl"),
    ("health", "births.valid.jsonl"),
    ("market-regulation", "businesses.valid.jsonl"),
    ("customs", "declarations.valid.jsonl"),
];

#[test]
fn every_valid_fixture_maps_to_valid_canonical_records() {
    for (dept, file) in VALID {
        let d = department(dept);
        for (i, result) in map_all(&d, &fixture(dept, file)).into_iter().enumerate() {
            if let Err(faults) = result {
                panic!("{dept}/{file}:{}: {faults:?}", i + 1);
            }
        }
    }
}

#[test]
fn persons_map_with_code_tables_dates_and_upper_case() {
    let d = department("public-security");
    let out = map_all(&d, &fixture("public-security", "persons.valid.jsonl"));
    let fourth = out[3].as_ref().unwrap();
    assert_eq!(
        fourth,
        &serde_json::json!({
            "id_number": "14030219890903420X", "name": "徐军", "sex": "female", "birth_date": "1989-09-03",
            "ethnicity": "01", "registered_address": {"division_code": "140302", "text": "阳泉市城区建国路23号"}
        })
    );
}

#[test]
fn amounts_and_slashed_dates_in_business_records() {
    let d = department("market-regulation");
    let out = map_all(&d, &fixture("market-regulation", "businesses.valid.jsonl"));
    let third = out[2].as_ref().unwrap();
    assert_eq!(
        third["registered_capital"],
        serde_json::json!({"amount": 500000, "currency": "USD"})
    );
    assert_eq!(third["established_on"], "2025-02-17");
    assert_eq!(third["kind"], "sole-proprietor");
}

fn fault_lines(result: &Result<Value, Vec<MapFault>>) -> Vec<String> {
    let mut lines: Vec<String> = result
        .as_ref()
        .expect_err("the record is rejected")
        .iter()
        .map(|f| format!("{} -> {}", f.native, f.canonical))
        .collect();
    lines.sort();
    lines
}

#[test]
fn every_invalid_fixture_is_rejected_with_all_its_faults() {
    let persons = map_all(
        &department("public-security"),
        &fixture("public-security", "persons.invalid.jsonl"),
    );
    assert_eq!(fault_lines(&persons[0]), ["GMSFHM -> /id_number"]);
    assert_eq!(fault_lines(&persons[1]), ["XB -> /sex"]);
    assert_eq!(fault_lines(&persons[2]), ["CSRQ -> /birth_date"]);
    assert_eq!(
        fault_lines(&persons[3]),
        [
            "HJDZ_XZQH -> /registered_address/division_code",
            "XM -> /name"
        ]
    );

    let births = map_all(
        &department("health"),
        &fixture("health", "births.invalid.jsonl"),
    );
    assert_eq!(
        fault_lines(&births[0]),
        [
            "birthTime -> /child/born_at",
            "birthWeightG -> /child/weight_grams"
        ]
    );
    assert_eq!(fault_lines(&births[1]), ["motherIdNo -> /mother/id_number"]);

    let businesses = map_all(
        &department("market-regulation"),
        &fixture("market-regulation", "businesses.invalid.jsonl"),
    );
    assert_eq!(fault_lines(&businesses[0]), ["uniscid -> /uscc"]);
    assert_eq!(
        fault_lines(&businesses[1]),
        [
            "estDate -> /established_on",
            "regCap -> /registered_capital"
        ]
    );

    let declarations = map_all(
        &department("customs"),
        &fixture("customs", "declarations.invalid.jsonl"),
    );
    assert_eq!(
        fault_lines(&declarations[0]),
        ["goods -> /goods", "trafMode -> /transport/mode"]
    );
    let unknown_code = &declarations[0].as_ref().unwrap_err()[0];
    assert_eq!(
        unknown_code.message,
        "unknown code \"Q\"; known codes: 2, 3, 4, 5"
    );
}

#[test]
fn list_item_faults_name_the_element() {
    let d = department("customs");
    let mut rec = fixture("customs", "declarations.valid.jsonl").remove(0);
    rec["goods"][1]["unit"] = "999".into();
    rec["goods"][1]["codeTs"] = "12".into();
    let r = d
        .detect_native(&rec)
        .unwrap()
        .inbound(&rec, registry())
        .map(|m| m.document);
    assert_eq!(
        fault_lines(&r),
        [
            "goods[1].codeTs -> /goods/1/hs_code",
            "goods[1].unit -> /goods/1/unit"
        ]
    );
}

#[test]
fn round_trip_gives_back_the_same_values() {
    for (dept, file) in VALID {
        let d = department(dept);
        for native in fixture(dept, file) {
            let m = d.detect_native(&native).unwrap();
            assert!(m.outbound, "{dept} has outbound mappings");
            let canonical = m.inbound(&native, registry()).unwrap().document;
            let back = m.outbound(&canonical).unwrap();
            let again = m.inbound(&back, registry()).unwrap().document;
            assert_eq!(again, canonical, "{dept}/{file}");
            // Where every transform is exact, the native record itself comes back.
            if *dept == "customs" || *dept == "health" {
                assert_eq!(back, native, "{dept}/{file}");
            }
        }
    }
}

#[test]
fn outbound_leaves_out_withheld_fields() {
    let d = department("customs");
    let m = d.native("declarations").unwrap();
    let partial = serde_json::json!({"declaration_id": "440663864056324842", "transport": {"mode": "road", "vehicle_plate": "藏D96371"}});
    assert_eq!(
        m.outbound(&partial).unwrap(),
        serde_json::json!({"entryId": "440663864056324842", "trafMode": "4", "vehiclePlate": "藏D96371"})
    );
}

fn config_error(text: &str) -> String {
    compile("dept.toml", text, registry())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_reason() {
    let head = "department = \"x\"\n[[record]]\nnative_type = \"p\"\nrecord_type = \"person.v1\"\n[[record.field]]\n";
    assert_eq!(
        config_error(&format!("{head}native = \"XM\"\ncanonical = \"/nmae\"\n")),
        "dept.toml:7: /nmae is not a field of person.v1; see schemas/person.v1.json"
    );
    assert_eq!(
        config_error(&format!(
            "{head}native = \"XB\"\ncanonical = \"/sex\"\ncodes = {{ \"1\" = \"man\" }}\n"
        )),
        "dept.toml:8: code \"1\" maps to \"man\", which /sex does not allow; allowed: \"male\", \"female\", \"unknown\""
    );
    assert!(
        config_error(&format!(
            "{head}native = \"CSRQ\"\ncanonical = \"/birth_date\"\ndate = \"%Y%Q\"\n"
        ))
        .starts_with("dept.toml:8: date format \"%Y%Q\" is not a valid strftime format")
    );
    assert!(
        config_error(&format!(
            "{head}native = \"CSRQ\"\ncanonical = \"/birth_date\"\ndate = \"%Y\"\n"
        ))
        .starts_with("dept.toml:8: date format \"%Y\" cannot parse what it writes")
    );
    // A date format with a time field made check_date_format panic in
    // chrono's Display (found writing the fuzz targets; the toml_configs
    // target reproduces it from fuzz/seeds/toml_configs/date-with-hour).
    assert_eq!(
        config_error(&format!(
            "{head}native = \"CSRQ\"\ncanonical = \"/birth_date\"\ndate = \"%Y%m%d%H\"\n"
        )),
        "dept.toml:8: date format \"%Y%m%d%H\" asks for a time or an offset, which a date does not have; use datetime = \"...\" for those"
    );
    assert!(
        config_error(&format!("{head}nativ = \"XM\"\ncanonical = \"/name\"\n"))
            .starts_with("dept.toml:6: unknown field `nativ`")
    );
    assert!(
        config_error(
            "department = \"x\"\n[[record]]\nnative_type = \"p\"\nrecord_type = \"person.v7\"\n"
        )
        .starts_with("dept.toml:4: unknown record type \"person.v7\"")
    );
    assert!(config_error("department = \"x\"\n[[record]\n").starts_with("dept.toml:2:"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("19990230"),
                Just("1"),
                Just("007"),
                Just("100万元"),
                Just("x")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("goods".to_owned()),
                        Just("unit".to_owned()),
                        Just("CY".to_owned()),
                        Just("XB".to_owned()),
                        Just("regCap".to_owned()),
                        Just("declDate".to_owned()),
                        Just("birthTime".to_owned()),
                        "[a-zA-Z]{1,6}".prop_map(String::from),
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_engine_never_panics_on_arbitrary_json(doc in arb_json()) {
            for dept in ["public-security", "health", "market-regulation", "customs"] {
                let d = department(dept);
                for m in &d.records {
                    let _ = m.inbound(&doc, registry());
                    let _ = m.outbound(&doc);
                }
            }
        }
    }
}

#[test]
fn two_fields_filling_one_path_are_refused_at_load() {
    let text = "department = \"x\"\n[[record]]\nnative_type = \"p\"\nrecord_type = \"person.v1\"\n\
                [[record.field]]\nnative = \"XM\"\ncanonical = \"/name\"\n\
                [[record.field]]\nnative = \"NAME\"\ncanonical = \"/name\"\n";
    assert_eq!(
        config_error(text),
        "dept.toml:10: /name overlaps the path of another field; each canonical path may be filled by one field"
    );
}
