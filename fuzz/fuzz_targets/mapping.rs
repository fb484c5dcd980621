//! Native-record mapping with the deployment's real department files
//! (`deploy/local/departments/*.toml`, compiled once against `schemas/`),
//! and the text parsers of `crossgate_mapping::transform`.
//!
//! Input: one selector byte, then the rest. The selector's top two bits
//! choose the mode, its low six bits a record mapping (or a transform):
//!
//! - 0: the rest is a native record (JSON). If it maps inbound to a valid
//!   canonical record and the mapping has an outbound direction, mapping
//!   that record back to native must work and map inbound again to the same
//!   canonical record.
//! - 1: the rest is a canonical record (JSON). Mapped outbound and inbound
//!   again, once more must change nothing (a fixpoint after one pass that
//!   may trim, upper-case or fill defaults).
//! - 2: the rest is text for the value transforms: `parse_amount` (whose
//!   result formatted outbound must parse back to itself), dates and
//!   date-times in the deployment's formats (inbound, outbound, inbound
//!   again: the same), integers, numbers, booleans, text options, codes.
//! - 3: the rest is JSON for `detect_native`, `detect_canonical`, and text
//!   for `native_for` and `native_criterion`.
//!
//! Nothing may panic.
#![no_main]

use crossgate_fuzz::{departments, registry, selector};
use crossgate_mapping::RecordMapping;
use crossgate_mapping::transform::{DateFormat, TextOptions, Transform, parse_amount};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

fn records() -> &'static [&'static RecordMapping] {
    static RECORDS: OnceLock<Vec<&'static RecordMapping>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        departments()
            .iter()
            .flat_map(|d| d.records.iter())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = selector(data) else {
        return;
    };
    let mode = sel >> 6;
    let pick = usize::from(sel & 0x3f);
    match mode {
        0 => native_first(records()[pick % records().len()], rest),
        1 => canonical_first(records()[pick % records().len()], rest),
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                transforms(pick, text);
            }
        }
        _ => lookups(pick, rest),
    }
});

fn native_first(rm: &RecordMapping, rest: &[u8]) {
    let Ok(native) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let (_, _) = rm.to_canonical(&native);
    let _ = rm.record_id(&native);
    let Ok(mapped) = rm.inbound(&native, registry()) else {
        return;
    };
    assert_eq!(mapped.record_type, rm.record_type);
    assert!(
        registry()
            .validate(&rm.record_type, &mapped.document)
            .is_ok(),
        "inbound returned an invalid canonical record"
    );
    if !rm.outbound {
        return;
    }
    let back = rm.outbound(&mapped.document).unwrap_or_else(|faults| {
        panic!(
            "{}: a valid canonical record does not map back to native: {faults:?}\n{}",
            rm.native_type, mapped.document
        )
    });
    let again = rm.inbound(&back, registry()).unwrap_or_else(|faults| {
        panic!(
            "{}: native written by outbound does not map inbound: {faults:?}\nnative: {back}\ncanonical: {}",
            rm.native_type, mapped.document
        )
    });
    assert_eq!(
        again.document, mapped.document,
        "{}: canonical -> native -> canonical changed the record (native {back})",
        rm.native_type
    );
}

fn canonical_first(rm: &RecordMapping, rest: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let _ = registry().validate(&rm.record_type, &doc);
    let Ok(native) = rm.outbound(&doc) else {
        return;
    };
    let (c1, faults) = rm.to_canonical(&native);
    if !faults.is_empty() {
        return;
    }
    let n2 = rm.outbound(&c1).unwrap_or_else(|faults| {
        panic!(
            "{}: a record mapped inbound does not map outbound: {faults:?}\n{c1}",
            rm.native_type
        )
    });
    let (c2, faults) = rm.to_canonical(&n2);
    assert!(
        faults.is_empty(),
        "{}: native written by outbound does not map inbound: {faults:?}\n{n2}",
        rm.native_type
    );
    assert_eq!(
        c2, c1,
        "{}: a second outbound/inbound pass changed the record",
        rm.native_type
    );
}

/// The date formats of the deployment and of the mapping crate's docs.
const DATE_FORMATS: &[&str] = &["%Y%m%d", "%Y/%m/%d", "%Y-%m-%d", "%d.%m.%Y"];
const DATETIME_FORMATS: &[&str] = &["%Y-%m-%d %H:%M:%S %z", "%Y%m%d%H%M%S%z"];

fn transforms(pick: usize, text: &str) {
    let options = TextOptions {
        trim: pick & 1 == 1,
        upper: pick & 2 == 2,
    };
    let value = Value::String(text.to_owned());

    // Amounts: 100万元人民币 <-> {"amount": 1000000, "currency": "CNY"}.
    if let Ok(amount) = parse_amount(text) {
        let native = Transform::Amount
            .outbound(&amount)
            .unwrap_or_else(|e| panic!("{text:?} -> {amount} cannot be written back: {e}"));
        let native = native.as_str().expect("an amount is written as text");
        let back = parse_amount(native).unwrap_or_else(|e| {
            panic!("{text:?} -> {amount} -> {native:?}, which does not parse: {e}")
        });
        assert_eq!(back, amount, "{text:?} -> {amount} -> {native:?} -> {back}");
    }

    // Scalars: the owned and borrowed paths agree.
    for t in [
        Transform::Text,
        Transform::Integer,
        Transform::Number,
        Transform::Boolean,
        Transform::Amount,
    ] {
        let borrowed = t.inbound(&value, options);
        let owned = t.inbound_owned(value.clone(), options);
        assert_eq!(borrowed, owned, "{t:?} on {text:?}");
        if let Ok(v) = &borrowed {
            let _ = t.outbound(v);
        }
    }
    // Numbers given as JSON numbers.
    if let Ok(n @ Value::Number(_)) = serde_json::from_str::<Value>(text) {
        for t in [
            Transform::Text,
            Transform::Integer,
            Transform::Number,
            Transform::Boolean,
        ] {
            let _ = t.inbound(&n, options);
        }
    }

    // Dates: inbound, outbound, inbound again.
    let date = Transform::Date(DateFormat::from(DATE_FORMATS[pick % DATE_FORMATS.len()]));
    round_trip(&date, &value, options);
    let datetime = match pick % (DATETIME_FORMATS.len() + 1) {
        0 => Transform::DateTime(None),
        n => Transform::DateTime(Some(DATETIME_FORMATS[n - 1].to_owned())),
    };
    round_trip(&datetime, &value, options);

    // A code table with a canonical value listed twice.
    let codes = Transform::Codes {
        inbound: vec![
            ("1".into(), Value::String("male".into())),
            ("2".into(), Value::String("female".into())),
            ("9".into(), Value::String("male".into())),
        ],
        outbound: vec![("male".into(), "1".into()), ("female".into(), "2".into())],
        listed: "1, 2, 9".into(),
    };
    round_trip(&codes, &value, options);
}

/// If `value` maps inbound, its canonical value maps outbound and back to itself.
fn round_trip(t: &Transform, value: &Value, options: TextOptions) {
    let Ok(canonical) = t.inbound(value, options) else {
        return;
    };
    let native = t
        .outbound(&canonical)
        .unwrap_or_else(|e| panic!("{t:?}: {value} -> {canonical} cannot be written back: {e}"));
    let back = t.inbound(&native, options).unwrap_or_else(|e| {
        panic!("{t:?}: {value} -> {canonical} -> {native}, which does not map: {e}")
    });
    assert_eq!(
        back, canonical,
        "{t:?}: {value} -> {canonical} -> {native} -> {back}"
    );
}

fn lookups(pick: usize, rest: &[u8]) {
    let department = &departments()[pick % departments().len()];
    if let Ok(doc) = serde_json::from_slice::<Value>(rest) {
        let _ = department.detect_native(&doc);
        let _ = department.detect_canonical(&doc);
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    for rm in &department.records {
        let _ = rm.native_for(text);
        let (canonical, value) = text.split_once('=').unwrap_or((text, ""));
        let _ = rm.native_criterion(canonical, value);
        let _ = rm.id_canonical_path();
    }
    let _ = crossgate_mapping::NativePath::parse(text);
}
