//! Cross-field rules that JSON Schema cannot state: they run after the schema
//! passes its own checks, on the record types that have them.

use crate::Fault;
use crate::formats::{is_resident_id, resident_id_birth_date};
use serde_json::Value;

/// A rule over a whole document, adding a fault for each violation it finds.
pub(crate) type Rule = fn(&Value, &mut Vec<Fault>);

/// Each rule declared for the exact record types it was written for. A new
/// version (`person.v2`) gets none until it is listed here on purpose.
const RULES: &[(&str, &[Rule])] = &[
    ("person.v1", &[person_agrees_with_id_number]),
    ("household.v1", &[household_has_one_head]),
];

/// The cross-field rules of `record_type`.
pub(crate) fn rules_for(record_type: &str) -> &'static [Rule] {
    RULES
        .iter()
        .find(|(t, _)| *t == record_type)
        .map_or(&[], |(_, rules)| rules)
}

/// person: `sex` agrees with digit 17 of `id_number` (odd male, even female)
/// unless `unknown`; `birth_date` equals the date inside `id_number`. Skipped
/// when `id_number` itself is invalid: its own fault already says so.
fn person_agrees_with_id_number(doc: &Value, faults: &mut Vec<Fault>) {
    let Some(id) = doc.get("id_number").and_then(Value::as_str) else {
        return;
    };
    if !is_resident_id(id) {
        return;
    }
    let digit17 = id.as_bytes()[16] - b'0';
    let id_sex = if digit17 % 2 == 1 { "male" } else { "female" };
    if let Some(sex) = doc.get("sex").and_then(Value::as_str)
        && (sex == "male" || sex == "female")
        && sex != id_sex
    {
        faults.push(Fault::quoting(
            "/sex",
            format!("sex is {sex} but digit 17 of id_number ({digit17}) says {id_sex}"),
            "disagrees with digit 17 of id_number",
        ));
    }
    if let (Some(birth), Some((y, m, d))) = (
        doc.get("birth_date").and_then(Value::as_str),
        resident_id_birth_date(id),
    ) {
        let expected = format!("{y:04}-{m:02}-{d:02}");
        if birth != expected && crate::formats::is_plain_date(birth) {
            faults.push(Fault::quoting(
                "/birth_date",
                format!("birth_date {birth} does not match {expected} in id_number"),
                "disagrees with the date in id_number",
            ));
        }
    }
}

/// household: exactly one member has relation `head`.
fn household_has_one_head(doc: &Value, faults: &mut Vec<Fault>) {
    let Some(members) = doc.get("members").and_then(Value::as_array) else {
        return;
    };
    if members.is_empty() {
        return; // minItems reports it
    }
    let heads = members
        .iter()
        .filter(|m| m.get("relation").and_then(Value::as_str) == Some("head"))
        .count();
    if heads != 1 {
        faults.push(Fault::quoting(
            "/members",
            format!("a household has exactly one member with relation head, this one has {heads}"),
            "a household has exactly one member with relation head",
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_are_chosen_by_the_whole_record_type() {
        assert_eq!(super::rules_for("person.v1").len(), 1);
        assert_eq!(super::rules_for("household.v1").len(), 1);
        assert!(super::rules_for("person.v2").is_empty());
        assert!(super::rules_for("person").is_empty());
        assert!(super::rules_for("birth.v1").is_empty());
    }
}
