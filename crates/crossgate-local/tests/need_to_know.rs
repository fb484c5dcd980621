//! Need to know, end to end through the broker: a consumer receives only
//! what its grant releases — in the body, in `record_id`, in status messages
//! and details — looks records up only by the grant's lookups and receives at
//! most its `max_records`; an approval opens its own subject only; a provider
//! record with a bad value leaves no trace of the value in the reply or the
//! log. Each refusal is audited.

use crossgate_broker::audit::{Decision, Entry};
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::*;
use crossgate_testing::TempDir;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crossgate_testing::ROOT;
const CHILD: &str = "540202198107103540";
const HOUSEHOLD: &str = "11010567397679";

async fn start_with(config: PathBuf) -> LocalSystem {
    let mut opts = Options::project_defaults();
    opts.config = config;
    opts.departments = Some(
        [
            "public-security",
            "customs",
            "border-inspection",
            "commerce",
            "health",
            "medical-insurance",
            "market-regulation",
            "tax",
            "human-resources",
        ]
        .map(String::from)
        .to_vec(),
    );
    LocalSystem::start(opts).await.expect("local system")
}

async fn start() -> LocalSystem {
    start_with(Path::new(ROOT).join("deploy/local")).await
}

async fn broker_as(sys: &LocalSystem, id: &str) -> BrokerClient<Channel> {
    BrokerClient::new(sys.channel(&sys.broker_addr, id).await.expect("channel"))
}

fn audit(sys: &LocalSystem) -> Vec<Entry> {
    sys.memory_audit.as_ref().expect("memory audit").entries()
}

fn ask(record_type: &str, approval: &str, criteria: &[(&str, &str)]) -> QueryRequest {
    QueryRequest {
        provider: "public-security".into(),
        record_type: record_type.into(),
        purpose: "school-enrolment".into(),
        approval_reference: approval.into(),
        criteria: criteria
            .iter()
            .map(|(p, v)| Criterion {
                path: (*p).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

/// The rule a refusal names, from its `google.rpc.ErrorInfo`.
fn rule(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Everything an answer carries to the caller, as text.
fn reply_text(reply: &QueryResponse) -> String {
    let mut out = format!("{:?} {}", reply.withheld_fields, reply.request_id);
    for r in &reply.records {
        out.push_str(&format!(
            " {} {} {}",
            r.record_type,
            r.record_id,
            String::from_utf8_lossy(&r.json)
        ));
    }
    out
}

/// Everything a status carries to the caller, as text.
fn status_text(status: &tonic::Status) -> String {
    format!(
        "{} {}",
        status.message(),
        String::from_utf8_lossy(status.details())
    )
}

#[tokio::test]
async fn a_person_comes_back_with_released_fields_and_an_opaque_reference() {
    let sys = start().await;
    let mut education = broker_as(&sys, "education").await;
    let reply = education
        .query(ask("person.v1", "", &[("/id_number", CHILD)]))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(reply.records.len(), 1);
    let record = &reply.records[0];
    let doc: Value = serde_json::from_slice(&record.json).expect("JSON");
    assert_eq!(
        doc.as_object().expect("object").keys().collect::<Vec<_>>(),
        ["birth_date", "name", "registered_address"]
    );
    // Not the identity number, not a part of it: 32 hex digits.
    assert_eq!(record.record_id.len(), 32);
    assert!(record.record_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let everything = reply_text(&reply);
    for withheld in [CHILD, "\"male\"", "\"sex\":", "\"ethnicity\":"] {
        assert!(
            !everything.contains(withheld),
            "{withheld} reached education: {everything}"
        );
    }
    // The same record, the same reference: education recognises a repeat.
    let again = education
        .query(ask("person.v1", "", &[("/id_number", CHILD)]))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(again.records[0].record_id, record.record_id);
    // The auditor sees the provider's id as its keyed digest, never the
    // identity number.
    let log = audit(&sys);
    assert_eq!(log[0].decision, Decision::Allowed);
    assert_eq!(log[0].record_id, sys.record_ids.digest(CHILD));
    assert!(!format!("{log:?}").contains(CHILD), "{log:?}");
}

#[tokio::test]
async fn queries_without_criteria_or_by_a_withheld_field_are_refused_and_audited() {
    let sys = start().await;
    let mut education = broker_as(&sys, "education").await;
    let everyone = education
        .query(ask("person.v1", "", &[]))
        .await
        .expect_err("no criteria");
    assert_eq!(everyone.code(), Code::PermissionDenied);
    assert_eq!(rule(&everyone), "grant:education-person");
    assert_eq!(
        everyone.message(),
        "grant education-person answers lookups by /id_number only; a query without criteria is refused"
    );
    let oracle = education
        .query(ask("person.v1", "", &[("/ethnicity", "05")]))
        .await
        .expect_err("by a withheld field");
    assert_eq!(oracle.code(), Code::PermissionDenied);
    assert_eq!(rule(&oracle), "grant:education-person");
    assert_eq!(
        oracle.message(),
        "grant education-person allows lookups by /id_number, not by /ethnicity"
    );
    // The same answer whether or not anyone has that value: no oracle.
    let nobody = education
        .query(ask("person.v1", "", &[("/ethnicity", "zz")]))
        .await
        .expect_err("by a withheld field");
    assert_eq!(
        status_text(&nobody),
        status_text(&oracle).replace("05", "zz")
    );
    let log = audit(&sys);
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|e| e.decision == Decision::Denied
        && e.reason.contains("(rule grant:education-person)")
        && e.record_id.is_empty()));
}

#[tokio::test]
async fn an_answer_over_max_records_releases_nothing() {
    let sys = start().await;
    // Public security holds the child twice (a duplicate in its register).
    let twin = json!({"GMSFHM": CHILD, "XM": "吴勇", "XB": "1", "CSRQ": "19810710", "MZ": "01",
                      "HJDZ_XZQH": "540202", "HJDZ": "日喀则市桑珠孜区解放路3号"});
    sys.systems["public-security"].insert("persons", twin);
    let mut education = broker_as(&sys, "education").await;
    let status = education
        .query(ask("person.v1", "", &[("/id_number", CHILD)]))
        .await
        .expect_err("two records, one allowed");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(rule(&status), "grant:education-person");
    assert!(
        status.message().contains("at most 1 record(s) per answer"),
        "{}",
        status.message()
    );
    assert!(!status_text(&status).contains("吴勇"));
    let log = audit(&sys);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].decision, Decision::Denied);
    assert!(log[0].released_fields.is_empty());
}

#[tokio::test]
async fn the_approval_opens_its_household_and_no_other() {
    let sys = start().await;
    let mut education = broker_as(&sys, "education").await;
    let reply = education
        .query(ask(
            "household.v1",
            "EDU-2025-0001",
            &[("/household_id", HOUSEHOLD)],
        ))
        .await
        .expect("the approved household")
        .into_inner();
    // The grant names /household_id as its key: released anyway.
    assert_eq!(reply.records[0].record_id, HOUSEHOLD);

    let other = education
        .query(ask(
            "household.v1",
            "EDU-2025-0001",
            &[("/household_id", "54020239576099")],
        ))
        .await
        .expect_err("another household");
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(rule(&other), "approval:EDU-2025-0001");
    assert_eq!(
        other.message(),
        "approval EDU-2025-0001 covers household 11010567397679, not household 54020239576099"
    );
    // The log says why without either household's number.
    let denied = audit(&sys).pop().expect("the denial's entry");
    assert_eq!(denied.decision, Decision::Denied);
    assert_eq!(
        denied.reason,
        "approval EDU-2025-0001 covers another household than the one looked up \
         (rule approval:EDU-2025-0001)"
    );
    let none = education
        .query(ask("household.v1", "EDU-2025-0001", &[]))
        .await
        .expect_err("every household");
    assert_eq!(rule(&none), "grant:education-household");
    let decisions: Vec<Decision> = audit(&sys).iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        [Decision::Allowed, Decision::Denied, Decision::Denied]
    );
}

#[tokio::test]
async fn a_provider_record_with_a_bad_value_leaves_no_trace_of_it() {
    let sys = start().await;
    let secret = "SECRET-ETHNICITY";
    sys.systems["public-security"].insert(
        "persons",
        json!({"GMSFHM": "11010519491231002X", "XM": "张秀英", "XB": "2", "CSRQ": "19491231",
               "MZ": secret, "HJDZ_XZQH": "110105", "HJDZ": "北京市朝阳区解放路172号"}),
    );
    let mut education = broker_as(&sys, "education").await;
    let reply = education
        .query(ask(
            "person.v1",
            "",
            &[("/id_number", "11010519491231002X")],
        ))
        .await;
    // The record is not released but counted; the value stays home.
    let text = match &reply {
        Ok(r) => reply_text(r.get_ref()),
        Err(s) => status_text(s),
    };
    assert!(!text.contains(secret) && !text.contains("张秀英"), "{text}");
    let reply = reply.expect("an answer").into_inner();
    assert!(reply.records.is_empty());
    assert_eq!(reply.withheld_records, 1);
    let log = audit(&sys);
    assert!(!format!("{log:?}").contains(secret));
    assert!(
        log[0]
            .reason
            .contains("1 provider record(s) withheld by the provider's adapter"),
        "{}",
        log[0].reason
    );
}

/// The shipped config in a temporary folder, with `edit` applied to catalog.toml.
fn config_with(edit: impl FnOnce(String) -> String) -> TempDir {
    let dir = TempDir::new("need-to-know");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &dir);
    let catalog = dir.join("catalog.toml");
    let text = std::fs::read_to_string(&catalog).expect("catalog");
    std::fs::write(&catalog, edit(text)).expect("write catalog");
    dir
}

/// Canonical fixture records of `dept` (mapped with its own mapping file).
fn canonical_fixtures(dept: &str, native_type: &str) -> Vec<(Vec<u8>, Value)> {
    let registry = crossgate_testing::registry();
    let mapping = crossgate_adapter::config::load_department(
        &crossgate_testing::deploy_local(),
        dept,
        registry,
    )
    .expect("mapping");
    let m = mapping.native(native_type).expect("native type");
    crossgate_testing::fixture_lines(dept, &format!("{native_type}.valid.jsonl"))
        .iter()
        .map(|l| {
            let native: Value = serde_json::from_str(l).expect("JSON");
            let doc = m.inbound(&native, registry).expect("maps").document;
            (l.as_bytes().to_vec(), doc)
        })
        .collect()
}

/// Leaf values of `doc` under `paths` (lists as `-`), as text.
fn values_at(doc: &Value, path: &str) -> Vec<String> {
    fn walk(v: &Value, segs: &[&str], out: &mut Vec<String>) {
        match segs.split_first() {
            None => match v {
                Value::String(s) => out.push(s.clone()),
                Value::Object(_) | Value::Array(_) => {}
                other => out.push(other.to_string()),
            },
            Some((&"-", rest)) => {
                for item in v.as_array().into_iter().flatten() {
                    walk(item, rest, out);
                }
            }
            Some((seg, rest)) => {
                if let Some(next) = v.get(*seg) {
                    walk(next, rest, out);
                }
            }
        }
    }
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let mut out = Vec::new();
    walk(doc, &segs, &mut out);
    out
}

#[tokio::test]
async fn every_published_fixture_reaches_each_receiver_without_withheld_values() {
    // Commerce's grant loses its key: it receives opaque references instead.
    let config = config_with(|c| {
        c.replacen(
            "fields = [\"/declaration_id\", \"/direction\", \"/declared_on\", \"/trader_uscc\", \"/goods\"]\nkey = \"/declaration_id\"\n",
            "fields = [\"/declaration_id\", \"/direction\", \"/declared_on\", \"/trader_uscc\", \"/goods\"]\n",
            1,
        )
    });
    let sys = start_with(config.to_path_buf()).await;
    let mut customs = IngressClient::new(
        sys.channel(&sys.adapter_addrs["customs"], "customs")
            .await
            .expect("channel"),
    );
    let declarations = canonical_fixtures("customs", "declarations");
    for (native, _) in &declarations {
        customs
            .submit(SubmitRequest {
                record: Some(NativeRecord {
                    native_type: "declarations".into(),
                    record_id: String::new(),
                    json: native.clone(),
                }),
                ..Default::default()
            })
            .await
            .expect("published");
    }
    // Border inspection never sees the trader or the goods; commerce never
    // the vehicle or driver; neither sees the other's part in any field.
    let withheld_from = |receiver: &str| -> &[&str] {
        match receiver {
            "border-inspection" => &["/trader_uscc", "/goods/-/hs_code"],
            _ => &[
                "/port_code",
                "/transport/vehicle_plate",
                "/transport/driver_id_number",
            ],
        }
    };
    for receiver in ["border-inspection", "commerce"] {
        let got = sys.systems[receiver].received();
        assert_eq!(got.len(), declarations.len(), "{receiver}");
        for (r, (_, doc)) in got.iter().zip(&declarations) {
            let seen = format!("{} {}", r.record_id, r.document);
            for path in withheld_from(receiver) {
                for value in values_at(doc, path) {
                    assert!(
                        value.len() < 4 || !seen.contains(&value),
                        "{receiver} received {path} = {value}: {seen}"
                    );
                }
            }
            let id = values_at(doc, "/declaration_id").remove(0);
            if receiver == "border-inspection" {
                assert_eq!(r.record_id, id, "the key field");
            } else {
                assert_eq!(r.record_id.len(), 32, "an opaque reference");
                assert_ne!(r.record_id, id);
            }
        }
    }
    // The log names each provider record by its id's keyed digest.
    let ids: Vec<String> = declarations
        .iter()
        .map(|(_, d)| {
            sys.record_ids
                .digest(&values_at(d, "/declaration_id").remove(0))
        })
        .collect();
    assert!(audit(&sys).iter().all(|e| ids.contains(&e.record_id)));
}

#[tokio::test]
async fn every_person_education_looks_up_comes_back_without_withheld_values() {
    let sys = start().await;
    let mut education = broker_as(&sys, "education").await;
    let persons = canonical_fixtures("public-security", "persons");
    let mut references = Vec::new();
    for (_, doc) in &persons {
        let id = values_at(doc, "/id_number").remove(0);
        let reply = education
            .query(ask("person.v1", "", &[("/id_number", &id)]))
            .await;
        let seen = match &reply {
            Ok(r) => reply_text(r.get_ref()),
            Err(s) => status_text(s),
        };
        for path in ["/id_number", "/sex", "/ethnicity"] {
            for value in values_at(doc, path) {
                let quoted = format!("{value:?}");
                assert!(
                    !seen.contains(&quoted) && (value.len() < 6 || !seen.contains(&value)),
                    "{path} = {value} reached education: {seen}"
                );
            }
        }
        let reply = reply.expect("allowed").into_inner();
        references.push(reply.records[0].record_id.clone());
    }
    // One reference per person, none repeated.
    let mut unique = references.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), persons.len());
}
