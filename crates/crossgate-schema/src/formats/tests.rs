use super::*;
use proptest::prelude::*;

#[test]
fn standard_vectors_are_valid() {
    assert!(is_resident_id("11010519491231002X"));
    assert!(is_resident_id("34052419800101001X"));
    assert!(is_uscc("91350100M000100Y43"));
    assert!(is_division_code("110105"));
}

#[test]
fn a_changed_check_character_is_invalid() {
    assert_eq!(
        explain_resident_id("110105194912310021").as_deref(),
        Some("identity number: wrong check character '1', expected 'X'")
    );
    assert_eq!(
        explain_uscc("91350100M000100Y44").as_deref(),
        Some("credit code: wrong check character '4', expected '3'")
    );
}

#[test]
fn lower_case_x_is_invalid_in_canonical_records() {
    assert_eq!(
        explain_resident_id("11010519491231002x").as_deref(),
        Some("identity number: check character must be upper-case X")
    );
}

#[test]
fn an_impossible_birth_date_is_invalid() {
    // 1999-02-30 with an otherwise right check character.
    let first17 = b"54020219990230587";
    let check = resident_id_check_char(first17).unwrap();
    let id = format!(
        "{}{}",
        std::str::from_utf8(first17).unwrap(),
        char::from(check)
    );
    assert_eq!(
        explain_resident_id(&id).as_deref(),
        Some("identity number: birth date 19990230 is not a real day")
    );
    assert!(is_real_date(2000, 2, 29));
    assert!(!is_real_date(1900, 2, 29));
}

#[test]
fn wrong_lengths_and_alphabets_are_explained() {
    assert!(
        explain_resident_id("12345")
            .unwrap()
            .contains("18 characters, has 5")
    );
    assert!(
        explain_uscc("91350100M000100O43")
            .unwrap()
            .contains("not in the GB 32100 alphabet")
    );
    assert!(explain_uscc("91990100M000100Y43").is_some());
    assert!(
        explain_division_code("11010")
            .unwrap()
            .contains("six digits")
    );
    assert!(
        explain_division_code("990101")
            .unwrap()
            .contains("outside 11-82")
    );
    assert!(is_division_code("820000"));
    assert!(!is_division_code("100000"));
}

prop_compose! {
    fn valid_resident_id()(
        province in 11u32..=82, rest in 0u32..10_000,
        y in 1900u32..2030, m in 1u32..=12, d in 1u32..=28, seq in 0u32..1000,
    ) -> String {
        let first17 = format!("{province:02}{rest:04}{y:04}{m:02}{d:02}{seq:03}");
        let check = resident_id_check_char(first17.as_bytes()).unwrap();
        format!("{first17}{}", char::from(check))
    }
}

prop_compose! {
    fn valid_uscc()(
        head in "[0-9A-HJ-NP-RTUWXY]{2}", province in 11u32..=82, rest in 0u32..10_000,
        tail in "[0-9A-HJ-NP-RTUWXY]{9}",
    ) -> String {
        let first17 = format!("{head}{province:02}{rest:04}{tail}");
        let check = uscc_check_char(first17.as_bytes()).unwrap();
        format!("{first17}{}", char::from(check))
    }
}

/// Every single-character replacement of `s` by a printable ASCII character.
fn one_char_changes(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..s.len() {
        for c in b' '..=b'~' {
            if c != s.as_bytes()[i] {
                let mut b = s.as_bytes().to_vec();
                b[i] = c;
                out.push(String::from_utf8(b).unwrap());
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn every_generated_resident_id_passes_and_every_one_char_change_fails(id in valid_resident_id()) {
        prop_assert!(is_resident_id(&id), "{id}");
        for changed in one_char_changes(&id) {
            prop_assert!(!is_resident_id(&changed), "{changed} (from {id}) passed");
        }
    }

    #[test]
    fn every_generated_uscc_passes_and_every_one_char_change_fails(code in valid_uscc()) {
        prop_assert!(is_uscc(&code), "{code}");
        for changed in one_char_changes(&code) {
            prop_assert!(!is_uscc(&changed), "{changed} (from {code}) passed");
        }
    }

    #[test]
    fn checks_never_panic(s in "\\PC{0,24}") {
        let _ = explain_resident_id(&s);
        let _ = explain_uscc(&s);
        let _ = explain_division_code(&s);
        let _ = resident_id_birth_date(&s);
    }
}
