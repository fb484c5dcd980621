//! `crossgate_config::parse_grpc_timeout`, the `grpc-timeout` header parser
//! the broker takes callers' deadlines from.
//!
//! Input: the header value's bytes (non-UTF-8 is skipped: the broker reads
//! only values that are visible ASCII).
//!
//! Checked: nothing panics or overflows; the parser agrees with a plain
//! reference reading of the gRPC spec (1 to 8 ASCII digits and one of
//! `H M S m u n`, computed in nanoseconds as u128); a parsed duration
//! written back in the coarsest exact unit (as a client would send it)
//! parses to the same duration.
#![no_main]

use crossgate_config::parse_grpc_timeout;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// Nanoseconds per unit, coarsest first.
const UNITS: [(char, u128); 6] = [
    ('H', 3_600_000_000_000),
    ('M', 60_000_000_000),
    ('S', 1_000_000_000),
    ('m', 1_000_000),
    ('u', 1_000),
    ('n', 1),
];

fn reference(value: &str) -> Option<u128> {
    let mut chars = value.chars();
    let unit = chars.next_back()?;
    let digits = chars.as_str();
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, per) = UNITS.iter().find(|(u, _)| *u == unit)?;
    Some(digits.parse::<u128>().ok()? * per)
}

/// `d` in the coarsest unit that holds it exactly in at most 8 digits.
fn encode(d: Duration) -> Option<String> {
    let nanos = d.as_nanos();
    UNITS.iter().find_map(|(unit, per)| {
        (nanos % per == 0 && nanos / per <= 99_999_999).then(|| format!("{}{unit}", nanos / per))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_grpc_timeout(value);
    assert_eq!(parsed.map(|d| d.as_nanos()), reference(value), "{value:?}");
    if let Some(d) = parsed {
        let written = encode(d).unwrap_or_else(|| panic!("{value:?} -> {d:?} has no encoding"));
        assert!(written.len() <= 9, "{written:?}");
        assert_eq!(
            parse_grpc_timeout(&written),
            Some(d),
            "{value:?} -> {written:?}"
        );
        // As the broker uses it: capped by its default deadline.
        let default = Duration::from_secs(5);
        assert!(d.min(default) <= default);
    }
});
