//! Need to know, at the unit level: over every grant of the shipped catalog
//! and every fixture record it covers, and over generated records, no value
//! the grant withholds appears in what the consumer receives.

use super::*;
use crossgate_policy::{Mask, Policy, ReleasedField};
use crossgate_proto::Record;
use proptest::prelude::*;
use std::sync::OnceLock;

use crossgate_testing::ROOT;

use crossgate_testing::registry;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::path::Path::new(ROOT).join("deploy/local");
        let ptext = std::fs::read_to_string(dir.join("partners.toml")).expect("partners");
        let partners =
            crossgate_policy::compile_partners("partners.toml", &ptext).expect("partners");
        let ids: Vec<&str> = partners.iter().map(|p| p.id.as_str()).collect();
        let ctext = std::fs::read_to_string(dir.join("catalog.toml")).expect("catalog");
        crossgate_policy::compile("catalog.toml", &ctext, &ids, registry()).expect("catalog")
    })
}

fn ask(record_type: &str, criteria: &[(&str, &str)]) -> QueryRequest {
    QueryRequest {
        record_type: record_type.into(),
        criteria: criteria
            .iter()
            .map(|(p, v)| crossgate_proto::Criterion {
                path: (*p).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn key() -> ReferenceKey {
    ReferenceKey::new(&[42; 32]).expect("key")
}

/// (provider, provider's id, canonical record) for every valid fixture record.
fn fixture_records() -> Vec<(String, String, Record)> {
    let config = std::path::Path::new(ROOT).join("deploy/local");
    let mut out = Vec::new();
    for dept in ["customs", "health", "market-regulation", "public-security"] {
        let mapping = crossgate_adapter::config::load_department(&config, dept, registry())
            .expect("department mapping");
        for m in &mapping.records {
            let file = config.join(format!("fixtures/{dept}/{}.valid.jsonl", m.native_type));
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let native: Value = serde_json::from_str(line).expect("fixture JSON");
                let mapped = m.inbound(&native, registry()).expect("fixture maps");
                out.push((
                    dept.to_owned(),
                    mapped.record_id.clone().unwrap_or_default(),
                    Record {
                        record_type: mapped.record_type,
                        record_id: mapped.record_id.unwrap_or_default(),
                        json: serde_json::to_vec(&mapped.document).expect("JSON"),
                    },
                ));
            }
        }
    }
    assert!(
        out.len() >= 20,
        "the fixtures hold records of every provider"
    );
    out
}

/// Every leaf of `doc` as (path with `-` for list elements, text of the value).
fn leaves(doc: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                path.push("-".into());
                for item in items {
                    walk(item, path, out);
                }
                path.pop();
            }
            Value::String(s) => out.push((pointer(path), s.clone())),
            other => out.push((pointer(path), other.to_string())),
        }
    }
    fn pointer(path: &[String]) -> String {
        path.iter().map(|s| format!("/{s}")).collect()
    }
    let mut out = Vec::new();
    walk(doc, &mut Vec::new(), &mut out);
    out
}

fn covers(field: &ReleasedField, path: &str) -> bool {
    path == field.pointer || path.starts_with(&format!("{}/", field.pointer))
}

/// Values the consumer must not see: leaves no field releases, and the
/// whole value of masked leaves — unless the same text is also released
/// unmasked elsewhere in the record, or is part of a released value (a
/// division code inside a released identity number).
fn secrets(doc: &Value, fields: &[ReleasedField]) -> Vec<String> {
    let all = leaves(doc);
    let released_plain: Vec<&str> = all
        .iter()
        .filter(|(p, _)| {
            fields.iter().any(|f| covers(f, p))
                && !fields.iter().any(|f| f.mask.is_some() && covers(f, p))
        })
        .map(|(_, v)| v.as_str())
        .collect();
    all.iter()
        .filter(|(p, _)| {
            let released = fields.iter().any(|f| covers(f, p));
            let masked = fields.iter().any(|f| f.mask.is_some() && covers(f, p));
            !released || masked
        })
        .map(|(_, v)| v.clone())
        .filter(|v| !released_plain.iter().any(|r| r.contains(v.as_str())))
        .collect()
}

/// What the consumer sees, as text: the reference and the body.
fn seen(record: &Record) -> String {
    format!(
        "{} {}",
        record.record_id,
        String::from_utf8_lossy(&record.json)
    )
}

/// A secret leaks if it appears whole: as a leaf value of what is seen, or,
/// for values long enough not to occur by chance, anywhere in the text.
fn assert_no_leak(secret_values: &[String], record: &Record, context: &str) {
    let text = seen(record);
    let body: Value = serde_json::from_slice(&record.json).expect("released JSON");
    let seen_leaves: Vec<String> = leaves(&body).into_iter().map(|(_, v)| v).collect();
    for secret in secret_values {
        assert!(
            record.record_id != *secret && !seen_leaves.contains(secret),
            "{context}: withheld value {secret:?} reached the consumer: {text}"
        );
        if secret.chars().count() >= 6 {
            assert!(
                !text.contains(secret.as_str()),
                "{context}: withheld value {secret:?} reached the consumer: {text}"
            );
        }
    }
}

#[test]
fn no_grant_releases_a_withheld_value_of_any_fixture_record() {
    let records = fixture_records();
    let mut checked = 0;
    for grant in policy().grants() {
        let release = crossgate_policy::Release {
            grant,
            approval: None,
        };
        for (provider, id, record) in &records {
            if *provider != grant.provider || record.record_type != grant.record_type {
                continue;
            }
            let document: Value = serde_json::from_slice(&record.json).expect("JSON");
            let screened = screen(
                registry(),
                &release,
                &key(),
                &ask(&grant.record_type, &[]),
                vec![record.clone()],
            );
            assert!(screened.invalid.is_empty(), "fixture records are valid");
            assert_eq!(screened.provider_ids, std::slice::from_ref(id));
            let out = &screened.records[0];
            let context = format!("grant {} on {} record {id}", grant.id, grant.record_type);
            assert_no_leak(&secrets(&document, release.fields()), out, &context);
            // The reference is the key field, or opaque: never the provider's id.
            match &grant.key {
                Some(k) => assert_eq!(
                    Some(out.record_id.as_str()),
                    document.pointer(k).and_then(Value::as_str),
                    "{context}"
                ),
                None => {
                    assert_ne!(out.record_id, *id, "{context}");
                    assert_eq!(out.record_id.len(), crossgate_policy::REFERENCE_HEX_LEN);
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 30,
        "only {checked} grant × record pairs were checked"
    );
}

#[test]
fn references_are_stable_for_a_consumer_and_differ_between_consumers() {
    let grants = policy().grants();
    let person = grants
        .iter()
        .find(|g| g.id == "education-person")
        .expect("grant");
    let mut other = person.clone();
    other.consumer = "tax".into();
    let doc = serde_json::json!({"name": "周建华"});
    let release = |g| crossgate_policy::Release {
        grant: g,
        approval: None,
    };
    let a = released(
        &release(person),
        &key(),
        "person.v1",
        "110105198405049582",
        &doc,
    );
    let b = released(
        &release(person),
        &key(),
        "person.v1",
        "110105198405049582",
        &doc,
    );
    let c = released(
        &release(&other),
        &key(),
        "person.v1",
        "110105198405049582",
        &doc,
    );
    assert_eq!(a.record_id, b.record_id);
    assert_ne!(a.record_id, c.record_id);
    assert!(!a.record_id.contains("9582"));
}

/// Education's person grant, released without an approval.
fn education_person() -> crossgate_policy::Release<'static> {
    let grant = policy()
        .grants()
        .iter()
        .find(|g| g.id == "education-person")
        .expect("grant");
    crossgate_policy::Release {
        grant,
        approval: None,
    }
}

/// A person.v1 record that validates, found by a lookup of its identity number.
fn valid_person() -> Value {
    serde_json::json!({
        "id_number": "110105198405049582", "name": "周建华", "sex": "female",
        "birth_date": "1984-05-04", "ethnicity": "01",
        "registered_address": {"division_code": "110105", "text": "北京市朝阳区解放路172号"}
    })
}

#[test]
fn records_without_a_provider_id_never_share_a_reference() {
    let release = education_person();
    let a = released(
        &release,
        &key(),
        "person.v1",
        "",
        &serde_json::json!({"name": "甲"}),
    );
    let b = released(
        &release,
        &key(),
        "person.v1",
        "",
        &serde_json::json!({"name": "乙"}),
    );
    assert_ne!(a.record_id, b.record_id);
}

#[test]
fn an_invalid_provider_record_is_left_out_and_counted_without_its_value() {
    let release = education_person();
    let good = valid_person();
    let mut bad = good.clone();
    bad["ethnicity"] = Value::String("SECRET-ETHNICITY-VALUE".into());
    let record = |doc: &Value, id: &str, record_type: &str| Record {
        record_type: record_type.into(),
        record_id: id.into(),
        json: serde_json::to_vec(doc).expect("JSON"),
    };
    let mut other = good.clone();
    other["id_number"] = Value::String("540202198107103540".into());
    other["birth_date"] = Value::String("1981-07-10".into());
    let screened = screen(
        registry(),
        &release,
        &key(),
        &ask("person.v1", &[("/id_number", "110105198405049582")]),
        vec![
            record(&bad, "110105198405049582", "person.v1"),
            record(&good, "110105198405049582", "person.v1"),
            record(&good, "110105198405049582", "household.v1"),
            // A provider's looser search (a neighbour, a case-folded match)
            // releases nothing the lookup did not ask for.
            record(&other, "540202198107103540", "person.v1"),
        ],
    );
    assert_eq!(screened.records.len(), 1);
    assert_eq!(screened.invalid.len(), 2);
    // The neighbour is dropped and not counted towards the consumer.
    assert_eq!(screened.unrelated, 1);
    assert_eq!(screened.withheld_count(), 2);
    let summary = screened.invalid_summary().expect("summary");
    assert!(
        summary.starts_with("2 provider record(s) withheld: invalid (/ethnicity: "),
        "{summary}"
    );
    assert!(
        summary.ends_with("1 provider record(s) did not equal the lookup and were dropped"),
        "{summary}"
    );
    assert!(!summary.contains("SECRET"), "{summary}");
    assert!(!format!("{screened:?}").contains("SECRET"));
}

#[test]
fn an_answer_of_records_whose_ids_hold_commas_is_logged_as_whole_ids() {
    let release = education_person();
    let person = valid_person();
    let record = |id: &str| Record {
        record_type: "person.v1".into(),
        record_id: id.into(),
        json: serde_json::to_vec(&person).expect("JSON"),
    };
    let screened = screen(
        registry(),
        &release,
        &key(),
        &ask("person.v1", &[("/id_number", "110105198405049582")]),
        vec![record("P-1,P-2"), record("P-3")],
    );
    assert_eq!(screened.records.len(), 2);
    // Joined as they are, the entry would name P-1, P-2 and P-3.
    let logged = screened.logged_ids();
    assert_eq!(logged, "P-1%2CP-2,P-3");
    let ids: Vec<_> = crate::audit::split_record_ids(&logged).collect();
    assert_eq!(ids, ["P-1,P-2", "P-3"]);
}

/// A generated person: random text in every field.
fn person() -> impl Strategy<Value = Value> {
    let text = "[A-Za-z0-9\\u{4e00}-\\u{4e20}]{8,24}";
    (text, text, text, text, text, text, text).prop_map(
        |(id, name, sex, birth, eth, code, addr)| {
            serde_json::json!({
                "id_number": id, "name": name, "sex": sex, "birth_date": birth, "ethnicity": eth,
                "registered_address": {"division_code": code, "text": addr}
            })
        },
    )
}

/// A generated household with members.
fn household() -> impl Strategy<Value = Value> {
    let text = "[A-Za-z0-9]{8,24}";
    let member = (text, text, text).prop_map(|(id, name, relation)| {
        serde_json::json!({"id_number": id, "name": name, "relation": relation})
    });
    (text, text, text, prop::collection::vec(member, 1..5)).prop_map(|(hh, code, addr, members)| {
        serde_json::json!({
            "household_id": hh,
            "registered_address": {"division_code": code, "text": addr},
            "members": members
        })
    })
}

proptest! {
    #[test]
    fn generated_persons_keep_their_withheld_values(doc in person(), id in "[0-9]{18}") {
        for grant in policy().grants().iter().filter(|g| g.record_type == "person.v1") {
            let release = crossgate_policy::Release { grant, approval: None };
            let out = released(&release, &key(), "person.v1", &id, &doc);
            assert_no_leak(&secrets(&doc, release.fields()), &out, &grant.id);
            prop_assert!(!seen(&out).contains(&id));
        }
    }

    #[test]
    fn generated_households_keep_their_withheld_values(doc in household()) {
        for grant in policy().grants().iter().filter(|g| g.record_type == "household.v1") {
            let release = crossgate_policy::Release { grant, approval: None };
            let out = released(&release, &key(), "household.v1", "provider-id", &doc);
            assert_no_leak(&secrets(&doc, release.fields()), &out, &grant.id);
            // Masked identity numbers keep only their last four characters.
            let body: Value = serde_json::from_slice(&out.json).expect("JSON");
            if grant.fields.iter().any(|f| f.mask == Some(Mask::KeepLast(4))) {
                for m in body["members"].as_array().into_iter().flatten() {
                    let shown = m["id_number"].as_str().unwrap_or_default();
                    prop_assert!(shown.chars().rev().skip(4).all(|c| c == '*'));
                }
            }
        }
    }
}
