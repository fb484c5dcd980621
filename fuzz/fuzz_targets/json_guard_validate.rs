//! The JSON structure guards on raw bytes, then parsing and validation
//! against the repository's real schemas.
//!
//! Input: one selector byte (which record type, modulo the registry's
//! types), then the document's bytes.
//!
//! Checked: nothing panics; a document the byte guards refuse is refused
//! by `parse_and_validate` before parsing; a document accepted as valid is
//! still valid when validated again as a value and when re-serialised and
//! parsed again; the national-code format checks agree with their
//! explanations.
#![no_main]

use crossgate_fuzz::{record_types, registry, selector};
use crossgate_schema::{Rejection, formats, guard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((sel, doc)) = selector(data) else {
        return;
    };
    let registry = registry();
    let types = record_types();
    let record_type = &types[usize::from(sel) % types.len()];

    let wide = guard::too_wide(doc);
    let deep = guard::nesting_depth(doc, guard::MAX_DEPTH);
    assert!(deep <= guard::MAX_DEPTH + 1, "depth is capped at limit + 1");

    let result = registry.parse_and_validate(record_type, doc);
    if doc.len() > guard::MAX_DOCUMENT_BYTES || deep > guard::MAX_DEPTH || wide.is_some() {
        assert!(
            matches!(
                result,
                Err(Rejection::TooLarge { .. }
                    | Rejection::TooDeep { .. }
                    | Rejection::TooWide { .. })
            ),
            "a document over a byte limit reached the parser: {result:?}"
        );
        return;
    }
    match result {
        Ok(value) => {
            assert!(
                registry.validate(record_type, &value).is_ok(),
                "valid as bytes but not as a value"
            );
            let again = serde_json::to_vec(&value).expect("a parsed value serialises");
            let back = registry.parse_and_validate(record_type, &again);
            assert!(
                back.is_ok(),
                "valid, but invalid once re-serialised: {back:?}"
            );
        }
        Err(rejection) => {
            let _ = rejection.to_string();
            let _ = rejection.without_values();
            for fault in rejection.faults() {
                let _ = fault.to_string();
                let _ = fault.without_value();
            }
        }
    }

    // The format checks on the document's text as one value.
    if let Ok(text) = std::str::from_utf8(doc) {
        for (name, check, explain) in formats::CUSTOM_FORMATS {
            assert_eq!(
                check(text),
                explain(text).is_none(),
                "{name}: the check and its explanation disagree on {text:?}"
            );
        }
        let _ = formats::resident_id_birth_date(text);
        let _ = formats::is_plain_date(text);
        if text.len() >= 17 {
            let _ = formats::resident_id_check_char(&text.as_bytes()[..17]);
            let _ = formats::uscc_check_char(&text.as_bytes()[..17]);
        }
    }
});
