//! The small text parsers of configs and the CLI, each with a round trip.
//!
//! Input: one selector byte (modulo 7), then the text (UTF-8):
//!
//! - 0: `crossgate_limits::Rate::parse`: a rate parses again from its own
//!   text, and from `<count>/<unit>`, to the same rate; a GCRA built from it
//!   (with a burst from the selector) lets a refused call through once its
//!   `retry_after` has passed.
//! - 1: `crossgate_config::parse_duration`: a duration written by
//!   `crossgate_config::duration::serialize` (as broker.toml would be
//!   written) parses back to the same duration.
//! - 2: `crossgate_config::parse_utc_offset`: the offset displayed
//!   (`+08:00`) parses back to itself; limits.toml's `time_zone` agrees.
//! - 3: a limits.toml schedule window (`HH:MM-HH:MM`, read through
//!   `crossgate_limits::parse_config`): rewritten as `%H:%M-%H:%M` it
//!   parses to the same window.
//! - 4: `crossgate_config::Mode::parse`: `as_str` parses back.
//! - 5: `crossgate_policy::Mask::parse` (project.rs): `keep-last-N` /
//!   `keep-first-N` written from the parsed mask parse back to it; applying
//!   a mask keeps the number of characters.
//! - 6: `crossgate_policy::ReleasedField::new` with the text as a JSON
//!   Pointer: `project` and `withheld` on a fixture record.
#![no_main]

use crossgate_config::{Mode, parse_duration, parse_utc_offset};
use crossgate_fuzz::selector;
use crossgate_limits::{Limit, LimitsConfig, PartnerLimits, Rate};
use crossgate_policy::{Mask, ReleasedField};
use governor::clock::FakeRelativeClock;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = selector(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 7 {
        0 => rate(text, u32::from(sel >> 3)),
        1 => duration(text),
        2 => offset(text),
        3 => window(text),
        4 => {
            if let Some(mode) = Mode::parse(text) {
                assert_eq!(mode.as_str(), text);
                assert_eq!(Mode::parse(mode.as_str()), Some(mode));
            }
        }
        5 => mask(text),
        _ => pointer(text),
    }
});

fn rate(text: &str, burst: u32) {
    let Ok(rate) = Rate::parse(text) else {
        return;
    };
    assert!(rate.count >= 1);
    assert_eq!(rate.text, text.trim());
    assert_eq!(Rate::parse(&rate.text).as_ref(), Ok(&rate), "{text:?}");
    let unit = match rate.per.as_secs() {
        1 => "s",
        60 => "min",
        3600 => "h",
        other => panic!("{text:?}: a rate per {other}s"),
    };
    let canonical = format!("{}/{unit}", rate.count);
    let again =
        Rate::parse(&canonical).unwrap_or_else(|e| panic!("{text:?} -> {canonical:?}: {e}"));
    assert_eq!((again.count, again.per), (rate.count, rate.per), "{text:?}");

    // The limiter built from it.
    let limit = Limit {
        rate,
        burst: burst.max(1),
    };
    let config = LimitsConfig {
        offset: chrono::FixedOffset::east_opt(0).expect("UTC"),
        default: PartnerLimits::uniform(limit),
        partners: BTreeMap::new(),
    };
    let clock = FakeRelativeClock::default();
    let limits =
        crossgate_limits::Limits::with_clocks(config, clock.clone(), Box::new(chrono::Utc::now));
    for _ in 0..=burst.max(1).min(64) {
        if let Err(throttled) = limits.check("p", Mode::Query) {
            clock.advance(throttled.retry_after);
            assert!(
                limits.check("p", Mode::Query).is_ok(),
                "{text:?} burst {burst}: still refused after waiting {:?}",
                throttled.retry_after
            );
            break;
        }
    }
    let _ = limits.last_minute("p");
}

fn duration(text: &str) {
    let Some(d) = parse_duration(text) else {
        return;
    };
    let written = crossgate_config::duration::serialize(&d, serde_json::value::Serializer)
        .unwrap_or_else(|e| panic!("{text:?} -> {d:?} cannot be written: {e}"));
    let Value::String(written) = written else {
        panic!("a duration is written as text");
    };
    assert_eq!(
        parse_duration(&written),
        Some(d),
        "{text:?} -> {d:?} -> {written:?}"
    );
    let list = crossgate_config::durations::serialize(&[d, d], serde_json::value::Serializer)
        .unwrap_or_else(|e| panic!("{text:?} -> {d:?} cannot be written in a list: {e}"));
    assert_eq!(list, json!([written, written]));
}

fn offset(text: &str) {
    let parsed = parse_utc_offset(text);
    if let Some(o) = parsed {
        let shown = o.to_string();
        assert_eq!(parse_utc_offset(&shown), Some(o), "{text:?} -> {shown:?}");
    }
    // limits.toml's time_zone is read by the same parser.
    let mut file = toml::Table::new();
    file.insert("time_zone".into(), toml::Value::String(text.to_owned()));
    let Ok(toml_text) = toml::to_string(&file) else {
        return;
    };
    match crossgate_limits::parse_config("limits.toml", &toml_text, &[]) {
        Ok(config) => assert_eq!(Some(config.offset), parsed, "{text:?}"),
        Err(e) => assert!(
            parsed.is_none(),
            "{text:?} parses but limits.toml refuses it: {e}"
        ),
    }
}

fn window(text: &str) {
    let Some(toml_text) = limits_with_window(text) else {
        return;
    };
    let Ok(config) = crossgate_limits::parse_config("limits.toml", &toml_text, &[]) else {
        return;
    };
    let w = &config.default.schedule[0];
    assert_ne!(w.start, w.end, "{text:?}: an empty window");
    assert_eq!(w.text, text);
    let rewritten = format!("{}-{}", w.start.format("%H:%M"), w.end.format("%H:%M"));
    let again = limits_with_window(&rewritten)
        .and_then(|t| crossgate_limits::parse_config("limits.toml", &t, &[]).ok())
        .unwrap_or_else(|| panic!("{text:?} -> {rewritten:?} is refused"));
    let w2 = &again.default.schedule[0];
    assert_eq!(
        (w2.start, w2.end),
        (w.start, w.end),
        "{text:?} -> {rewritten:?}"
    );
}

/// A limits.toml whose default has one schedule window with this text.
fn limits_with_window(window: &str) -> Option<String> {
    let mut w = toml::Table::new();
    w.insert("window".into(), toml::Value::String(window.to_owned()));
    w.insert("rate".into(), toml::Value::String("10/s".into()));
    w.insert("burst".into(), toml::Value::Integer(5));
    let mut default = toml::Table::new();
    default.insert("rate".into(), toml::Value::String("1/s".into()));
    default.insert("burst".into(), toml::Value::Integer(1));
    default.insert(
        "schedule".into(),
        toml::Value::Array(vec![toml::Value::Table(w)]),
    );
    let mut file = toml::Table::new();
    file.insert("default".into(), toml::Value::Table(default));
    toml::to_string(&file).ok()
}

fn mask(text: &str) {
    let (head, tail) = text.split_at(text.find('|').unwrap_or(text.len()));
    let Ok(mask) = Mask::parse(head) else {
        return;
    };
    let written = match &mask {
        Mask::KeepLast(n) => format!("keep-last-{n}"),
        Mask::KeepFirst(n) => format!("keep-first-{n}"),
    };
    assert_eq!(
        Mask::parse(&written).as_ref(),
        Ok(&mask),
        "{head:?} -> {written:?}"
    );
    let value = Value::String(tail.to_owned());
    let masked = mask.apply(&value);
    let masked = masked.as_str().expect("a mask gives text");
    assert_eq!(
        masked.chars().count(),
        tail.chars().count(),
        "{mask:?} on {tail:?}"
    );
    assert_eq!(mask.apply(&json!(12)), json!("*"));
}

fn pointer(text: &str) {
    let record = json!({
        "household_id": "11010567397679",
        "registered_address": {"division_code": "110105", "detail": "x"},
        "members": [
            {"name": "a", "relation": "head", "id_number": "11010519491231002X"},
            {"name": "b", "relation": "child"},
            "not an object",
        ],
        "a/b": {"~c": [1, [2, 3]]},
    });
    let masks = [None, Some(Mask::KeepLast(4)), Some(Mask::KeepFirst(1))];
    let fields: Vec<ReleasedField> = text
        .split('\n')
        .take(8)
        .enumerate()
        .map(|(i, p)| ReleasedField::new(p, masks[i % masks.len()].clone()))
        .collect();
    let projected = crossgate_policy::project(&record, &fields);
    let withheld = crossgate_policy::withheld(&record, &fields);
    let _ = crossgate_policy::withheld(&projected, &fields);
    let _ = (projected, withheld);
}
