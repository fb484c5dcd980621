use crate::{Ask, Policy, compile, project, withheld};
use chrono::NaiveDate;
use serde_json::json;

use crossgate_testing::PARTNERS;
use crossgate_testing::ROOT;

use crossgate_testing::registry;

fn shipped() -> Policy {
    let file = format!("{ROOT}/deploy/local/catalog.toml");
    compile(
        &file,
        &std::fs::read_to_string(&file).unwrap(),
        PARTNERS,
        registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

const TODAY: &str = "2026-11-22";

/// The demo's household and a child's identity number.
const HOUSEHOLD: &[(&str, &str)] = &[("/household_id", "11010567397679")];
const PERSON: &[(&str, &str)] = &[("/id_number", "540202198107103540")];

fn ask<'a>(
    consumer: &'a str,
    provider: &'a str,
    record_type: &'a str,
    purpose: &'a str,
    approval: Option<&'a str>,
    criteria: &'a [(&'a str, &'a str)],
) -> Ask<'a> {
    Ask {
        consumer,
        provider,
        record_type,
        purpose,
        approval,
        criteria,
    }
}

#[test]
fn education_queries_households_with_purpose_and_approval() {
    let p = shipped();
    let release = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "household.v1",
                "school-enrolment",
                Some("EDU-2025-0001"),
                HOUSEHOLD,
            ),
            day(TODAY),
        )
        .unwrap();
    assert_eq!(release.grant.id, "education-household");
    assert_eq!(release.approval.unwrap().reference, "EDU-2025-0001");
    let household = json!({
        "household_id": "11010567397679",
        "registered_address": {"division_code": "110105", "text": "北京市朝阳区解放路172号"},
        "members": [{"id_number": "110105198405049582", "name": "周建华", "relation": "head"}]
    });
    assert_eq!(
        project(&household, release.fields()),
        json!({
            "household_id": "11010567397679",
            "registered_address": {"division_code": "110105", "text": "北京市朝阳区解放路172号"},
            "members": [{"id_number": "**************9582", "name": "周建华", "relation": "head"}]
        })
    );
}

#[test]
fn every_denial_says_why_and_names_its_rule() {
    let p = shipped();
    let today = day(TODAY);
    let wrong_purpose = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "person.v1",
                "marketing",
                None,
                PERSON,
            ),
            today,
        )
        .unwrap_err();
    assert_eq!(wrong_purpose.rule, "grant:education-person");
    assert_eq!(
        wrong_purpose.reason,
        "grant education-person serves the purposes school-enrolment, not \"marketing\""
    );

    let no_approval = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "household.v1",
                "school-enrolment",
                None,
                HOUSEHOLD,
            ),
            today,
        )
        .unwrap_err();
    assert_eq!(no_approval.rule, "catalog:public-security/household.v1");
    assert!(
        no_approval
            .reason
            .contains("an approval reference is required")
    );

    let bad_approval = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "household.v1",
                "school-enrolment",
                Some("EDU-9"),
                HOUSEHOLD,
            ),
            today,
        )
        .unwrap_err();
    assert_eq!(
        bad_approval.reason,
        "approval EDU-9 is not on record for education"
    );

    let no_grant = p
        .decide_query(
            &ask(
                "tax",
                "public-security",
                "person.v1",
                "school-enrolment",
                None,
                PERSON,
            ),
            today,
        )
        .unwrap_err();
    assert_eq!(no_grant.rule, "default-deny");
    assert_eq!(
        no_grant.reason,
        "no grant lets tax query public-security for person.v1"
    );

    let expired = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "person.v1",
                "school-enrolment",
                None,
                PERSON,
            ),
            day("2031-01-01"),
        )
        .unwrap_err();
    assert_eq!(
        expired.reason,
        "grant education-person is valid from 2025-01-01 to 2030-12-31; today is 2031-01-01"
    );

    let unlisted = p
        .decide_query(
            &ask("education", "customs", "person.v1", "x", None, PERSON),
            today,
        )
        .unwrap_err();
    assert_eq!(
        unlisted.reason,
        "the sharing catalog does not list person.v1 for customs"
    );
}

#[test]
fn a_declaration_is_routed_to_border_inspection_and_commerce_each_with_its_part() {
    let p = shipped();
    let routes = p
        .publish_routes("customs", "customs-declaration.v1", day(TODAY))
        .unwrap();
    let receivers: Vec<&str> = routes.iter().map(|r| r.grant.consumer.as_str()).collect();
    assert_eq!(receivers, ["border-inspection", "commerce"]);
    let declaration = json!({
        "declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22",
        "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508",
        "transport": {"mode": "road", "vehicle_plate": "藏D96371"},
        "goods": [{"line": 1, "hs_code": "6746284797", "quantity": 191, "unit": "kg"}]
    });
    let border = project(&declaration, routes[0].fields());
    assert!(border.get("goods").is_none() && border.get("trader_uscc").is_none());
    assert_eq!(border["transport"]["vehicle_plate"], "藏D96371");
    let commerce = project(&declaration, routes[1].fields());
    assert!(commerce.get("transport").is_none());
    assert_eq!(commerce["goods"][0]["hs_code"], "6746284797");
    assert_eq!(
        withheld(&declaration, routes[1].fields()),
        vec!["/port_code", "/transport/mode", "/transport/vehicle_plate"]
    );

    assert!(
        p.publish_routes("customs", "person.v1", day(TODAY))
            .is_err()
    );
    assert!(
        p.publish_routes("customs", "customs-declaration.v1", day("2035-01-01"))
            .unwrap()
            .is_empty()
    );
}

fn error(text: &str) -> String {
    compile("catalog.toml", text, PARTNERS, registry())
        .unwrap_err()
        .to_string()
}

const ENTRY: &str = "[[catalog]]\nprovider = \"public-security\"\nrecord_type = \"person.v1\"\nclass = \"unconditional\"\n";

fn grant(consumer: &str, fields: &str, purposes: &str) -> String {
    format!(
        "[[grant]]\nid = \"g-{consumer}-{}\"\nconsumer = \"{consumer}\"\nprovider = \"public-security\"\nrecord_type = \"person.v1\"\n\
         mode = \"query\"\npurposes = {purposes}\nfields = {fields}\nvalid_from = \"2025-01-01\"\nvalid_until = \"2030-12-31\"\nlookup = [\"/id_number\"]\n",
        fields.len()
    )
}

#[test]
fn bad_catalogs_are_refused_with_file_line_and_reason() {
    assert_eq!(
        error(&format!(
            "{ENTRY}{}",
            grant("educaton", "[\"/name\"]", "[\"x\"]")
        )),
        "catalog.toml:7: unknown partner \"educaton\"; partners are listed in partners.toml: customs, border-inspection, commerce, health, public-security, medical-insurance, market-regulation, tax, human-resources, education, audit-office, operations"
    );
    assert!(
        error("[[catalog]]\nprovider = \"health\"\nrecord_type = \"birth.v9\"\nclass = \"unconditional\"\n")
            .starts_with("catalog.toml:3: unknown record type \"birth.v9\"")
    );
    assert_eq!(
        error(&format!(
            "{ENTRY}{}",
            grant("education", "[\"/name\", \"/nickname\"]", "[\"x\"]")
        )),
        "catalog.toml:12: /nickname is not a field of person.v1; see schemas/person.v1.json (write lists as /goods/-/hs_code)"
    );
    let overlapping = format!(
        "{ENTRY}{}{}",
        grant("education", "[\"/name\"]", "[\"a\", \"b\"]"),
        grant("education", "[\"/name\", \"/birth_date\"]", "[\"b\"]")
    );
    let e = error(&overlapping);
    assert!(
        e.starts_with("catalog.toml:17: grants g-education-9 and g-education-24 overlap"),
        "{e}"
    );
    assert!(error("[[catalog]]\nprovider = \"health\"\nrecord_type = \"birth.v1\"\nclass = \"conditional\"\n").contains("needs `condition"));
    assert!(error("[[grant]\n").starts_with("catalog.toml:1:"));
}

#[test]
fn shipped_partners_load_and_bad_ones_are_refused() {
    let file = format!("{ROOT}/deploy/local/partners.toml");
    let partners =
        crate::compile_partners(&file, &std::fs::read_to_string(&file).unwrap()).unwrap();
    let ids: Vec<&str> = partners.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, PARTNERS);
    let err = crate::compile_partners(
        "partners.toml",
        "[[partner]]\nid = \"tax\"\nname = \"t\"\nrole = \"admin\"\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "partners.toml:4: unknown role \"admin\"; use partner, auditor or operator"
    );
}

#[test]
fn a_masked_field_is_listed_once_among_the_released_paths() {
    let p = shipped();
    let release = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "household.v1",
                "school-enrolment",
                Some("EDU-2025-0001"),
                HOUSEHOLD,
            ),
            day(TODAY),
        )
        .unwrap();
    assert_eq!(
        release.field_paths(),
        [
            "/household_id",
            "/registered_address",
            "/members/-/name",
            "/members/-/relation",
            "/members/-/id_number"
        ]
    );
}

#[test]
fn a_query_names_lookups_the_grant_allows_and_nothing_else() {
    let p = shipped();
    let today = day(TODAY);
    let person = |criteria| {
        p.decide_query(
            &ask(
                "education",
                "public-security",
                "person.v1",
                "school-enrolment",
                None,
                criteria,
            ),
            today,
        )
    };
    assert_eq!(person(PERSON).unwrap().grant.max_records, 1);

    let none = person(&[]).unwrap_err();
    assert_eq!(none.rule, "grant:education-person");
    assert_eq!(
        none.reason,
        "grant education-person answers lookups by /id_number only; a query without criteria is refused"
    );
    // A field education never receives cannot be used as an oracle.
    let oracle = person(&[("/ethnicity", "05")]).unwrap_err();
    assert_eq!(oracle.rule, "grant:education-person");
    assert_eq!(
        oracle.reason,
        "grant education-person allows lookups by /id_number, not by /ethnicity"
    );
    let empty = person(&[("/id_number", "")]).unwrap_err();
    assert_eq!(empty.rule, "grant:education-person");
    assert!(empty.reason.contains("has no value"), "{}", empty.reason);
    // Nor alongside an allowed one.
    let both = person(&[("/id_number", "540202198107103540"), ("/sex", "male")]).unwrap_err();
    assert!(both.reason.ends_with("not by /sex"), "{}", both.reason);

    let grant = &p.grants()[p
        .grants()
        .iter()
        .position(|g| g.id == "education-person")
        .unwrap()];
    // What education is told it did not get comes from the schema, the
    // same for every person, whatever fields a record happens to hold.
    assert_eq!(grant.withheld, ["/ethnicity", "/id_number", "/sex"]);
    assert!(grant.check_answer_size(1).is_ok());
    let over = grant.check_answer_size(2).unwrap_err();
    assert_eq!(over.rule, "grant:education-person");
    assert!(
        over.reason.contains("at most 1 record(s)"),
        "{}",
        over.reason
    );
}

#[test]
fn an_approval_opens_its_own_subject_and_no_other() {
    let p = shipped();
    let today = day(TODAY);
    let household = |approval, criteria| {
        p.decide_query(
            &ask(
                "education",
                "public-security",
                "household.v1",
                "school-enrolment",
                approval,
                criteria,
            ),
            today,
        )
    };
    let release = household(Some("EDU-2025-0001"), HOUSEHOLD).unwrap();
    let approval = release.approval.unwrap();
    assert_eq!(approval.provider, "public-security");
    assert_eq!(
        approval.authority.as_deref(),
        Some("Chaoyang District Education Commission")
    );

    let other = household(
        Some("EDU-2025-0001"),
        &[("/household_id", "11010500000001")],
    )
    .unwrap_err();
    assert_eq!(other.rule, "approval:EDU-2025-0001");
    assert_eq!(
        other.reason,
        "approval EDU-2025-0001 covers household 11010567397679, not household 11010500000001"
    );
    assert_eq!(
        other.logged(),
        "approval EDU-2025-0001 covers another household than the one looked up \
         (rule approval:EDU-2025-0001)"
    );
    // The subject twice with another value beside it is not the subject.
    let padded = household(
        Some("EDU-2025-0001"),
        &[
            ("/household_id", "11010567397679"),
            ("/household_id", "11010500000001"),
        ],
    )
    .unwrap_err();
    assert_eq!(padded.rule, "approval:EDU-2025-0001");
    // Lookups are checked before the approval, so no criteria names the grant.
    assert_eq!(
        household(Some("EDU-2025-0001"), &[]).unwrap_err().rule,
        "grant:education-household"
    );
}

#[test]
fn dates_are_judged_in_the_catalogs_time_zone() {
    use chrono::TimeZone;
    let p = shipped();
    // 2030-12-31 16:30 UTC is already 2031-01-01 in Beijing: the grants have ended.
    let now = chrono::Utc
        .with_ymd_and_hms(2030, 12, 31, 16, 30, 0)
        .unwrap();
    assert_eq!(p.today(now), day("2031-01-01"));
    let denial = p
        .decide_query(
            &ask(
                "education",
                "public-security",
                "person.v1",
                "school-enrolment",
                None,
                PERSON,
            ),
            p.today(now),
        )
        .unwrap_err();
    assert!(
        denial.reason.contains("today is 2031-01-01"),
        "{}",
        denial.reason
    );

    let utc = compile("catalog.toml", "time_zone = \"Z\"\n", PARTNERS, registry()).unwrap();
    assert_eq!(utc.today(now), day("2030-12-31"));
    assert_eq!(
        error("time_zone = \"Asia/Shanghai\"\n"),
        "catalog.toml:1: \"Asia/Shanghai\" is not a UTC offset; write it as +08:00 (the catalog's dates are judged in this zone)"
    );
}

#[test]
fn lookups_keys_and_approvals_are_checked_at_load() {
    let no_lookup = format!(
        "{ENTRY}[[grant]]\nid = \"g\"\nconsumer = \"education\"\nprovider = \"public-security\"\nrecord_type = \"person.v1\"\n\
         mode = \"query\"\npurposes = [\"x\"]\nfields = [\"/name\"]\nvalid_from = \"2025-01-01\"\nvalid_until = \"2030-12-31\"\n"
    );
    assert_eq!(
        error(&no_lookup),
        "catalog.toml:10: query grant g needs `lookup = [\"/...\"]`: the fields education may look person.v1 records up by"
    );
    let bad_lookup = format!("{no_lookup}lookup = [\"/nickname\"]\n");
    assert!(
        error(&bad_lookup)
            .starts_with("catalog.toml:15: lookup /nickname is not a field of person.v1"),
        "{}",
        error(&bad_lookup)
    );
    let zero = format!("{no_lookup}lookup = [\"/id_number\"]\nmax_records = 0\n");
    assert_eq!(
        error(&zero),
        "catalog.toml:16: max_records of grant g is a whole number from 1 to 1000"
    );
    // More than one entry can name is refused too; the most is taken.
    let over = format!("{no_lookup}lookup = [\"/id_number\"]\nmax_records = 1001\n");
    assert_eq!(
        error(&over),
        "catalog.toml:16: max_records of grant g is a whole number from 1 to 1000"
    );
    let most = format!("{no_lookup}lookup = [\"/id_number\"]\nmax_records = 1000\n");
    let policy = compile("catalog.toml", &most, PARTNERS, registry()).expect("1000 is accepted");
    assert_eq!(policy.grants()[0].max_records, 1000);
    let withheld_key = format!("{no_lookup}lookup = [\"/id_number\"]\nkey = \"/id_number\"\n");
    assert_eq!(
        error(&withheld_key),
        "catalog.toml:16: key /id_number of grant g must be one of its released fields, unmasked and outside a list"
    );
    let publish_lookup =
        no_lookup.replace("\"query\"", "\"publish\"") + "lookup = [\"/id_number\"]\n";
    assert!(error(&publish_lookup).contains("publish grant g takes no lookup"));

    let approval = |subject: &str| {
        format!(
            "{no_lookup}lookup = [\"/id_number\"]\n[[approval]]\nreference = \"A-1\"\nconsumer = \"education\"\nprovider = \"public-security\"\n\
             record_type = \"person.v1\"\npurpose = \"x\"\nsubject = {subject}\nvalid_from = \"2025-01-01\"\nvalid_until = \"2030-12-31\"\n"
        )
    };
    assert!(
        compile(
            "catalog.toml",
            &approval("{ \"/id_number\" = \"1\" }"),
            PARTNERS,
            registry()
        )
        .is_ok()
    );
    assert_eq!(
        error(&approval("{ \"/name\" = \"张三\" }")),
        "catalog.toml:22: approval A-1 names /name, which no query grant lets education look person.v1 of public-security up by"
    );
    assert!(error(&approval("{}")).contains("approval A-1 names no subject"));

    // A list element by index cannot be masked or released on its own: the
    // projection works on every element (`-`), so the mask would hide nothing.
    let indexed = "[[catalog]]\nprovider = \"public-security\"\nrecord_type = \"household.v1\"\nclass = \"unconditional\"\n\
         [[grant]]\nid = \"h\"\nconsumer = \"education\"\nprovider = \"public-security\"\nrecord_type = \"household.v1\"\n\
         mode = \"query\"\npurposes = [\"x\"]\nfields = [\"/members\"]\nmasks = { \"/members/0/id_number\" = \"keep-last-4\" }\n\
         lookup = [\"/household_id\"]\nvalid_from = \"2025-01-01\"\nvalid_until = \"2030-12-31\"\n"
    .to_owned();
    assert!(
        error(&indexed).contains("mask on /members/0/id_number, which is not a field of household.v1; write lists as /members/-/id_number"),
        "{}",
        error(&indexed)
    );
    let indexed_field = indexed.replace(
        "fields = [\"/members\"]\nmasks = { \"/members/0/id_number\" = \"keep-last-4\" }",
        "fields = [\"/members/0/name\"]",
    );
    assert!(error(&indexed_field).contains("/members/0/name is not a field of household.v1"));
    // A huge keep-last is the whole value, not an overflow.
    assert_eq!(
        crate::Mask::KeepLast(usize::MAX).apply(&serde_json::json!("abc")),
        serde_json::json!("abc")
    );
}
