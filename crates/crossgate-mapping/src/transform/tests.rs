use super::*;
use serde_json::json;

#[test]
fn chinese_amounts_become_amount_and_currency() {
    assert_eq!(
        parse_amount("100万元人民币"),
        Ok(json!({"amount": 1000000, "currency": "CNY"}))
    );
    assert_eq!(
        parse_amount("50万美元"),
        Ok(json!({"amount": 500000, "currency": "USD"}))
    );
    assert_eq!(
        parse_amount("1000.5万元"),
        Ok(json!({"amount": 10005000, "currency": "CNY"}))
    );
    assert_eq!(
        parse_amount("3000000元"),
        Ok(json!({"amount": 3000000, "currency": "CNY"}))
    );
    assert_eq!(
        parse_amount("12.34元"),
        Ok(json!({"amount": 12.34, "currency": "CNY"}))
    );
    assert_eq!(
        parse_amount("1.5亿元"),
        Ok(json!({"amount": 150000000, "currency": "CNY"}))
    );
}

#[test]
fn unreadable_amounts_say_why() {
    assert!(
        parse_amount("一百万")
            .unwrap_err()
            .contains("expected digits")
    );
    assert!(
        parse_amount("100万")
            .unwrap_err()
            .contains("names no currency")
    );
    assert!(
        parse_amount("100万卢布")
            .unwrap_err()
            .contains("unknown currency")
    );
    assert!(
        parse_amount("99999999999999999999999万元")
            .unwrap_err()
            .contains("too large")
    );
}

#[test]
fn amounts_go_back_out() {
    let t = Transform::Amount;
    assert_eq!(
        t.outbound(&json!({"amount": 500000, "currency": "USD"})),
        Ok(json!("500000美元"))
    );
    let back = t
        .outbound(&json!({"amount": 3000000, "currency": "CNY"}))
        .unwrap();
    assert_eq!(
        t.inbound(&back, TextOptions::default()),
        Ok(json!({"amount": 3000000, "currency": "CNY"}))
    );
}

/// Found by fuzzing (fuzz/ target `mapping`): `0.000001,元` read as 1e-6 was
/// written back as `1e-6元`, which no department (nor parse_amount) reads;
/// and a fraction with more digits than a float holds was rounded silently,
/// or wrapped round when it was whole (`99999999999999999999999.00000000元`).
#[test]
fn fractional_amounts_go_back_out_as_plain_decimals_and_read_back() {
    let t = Transform::Amount;
    for text in [
        "0.000001,元",
        "0.5港币",
        "12.34元",
        "1.00000001元",
        "99999999999999.9美元",
    ] {
        let amount = parse_amount(text).unwrap();
        let native = t.outbound(&amount).unwrap();
        assert!(
            !native.as_str().unwrap().contains('e'),
            "{text:?} -> {native}"
        );
        assert_eq!(
            parse_amount(native.as_str().unwrap()),
            Ok(amount),
            "{text:?} -> {native}"
        );
    }
    assert_eq!(
        t.outbound(&json!({"amount": 1e-6, "currency": "CNY"})),
        Ok(json!("0.000001元"))
    );
    assert!(
        parse_amount("1234567890123456.5元")
            .unwrap_err()
            .contains("more than 15 significant digits")
    );
    assert!(
        parse_amount("99999999999999999999999.00000000元")
            .unwrap_err()
            .contains("too large")
    );
}

/// A format asking for what the value does not have makes chrono's
/// Display fail; writing it is an error, not a panic.
#[test]
fn unwritable_formats_are_errors() {
    let date = Transform::Date("%Y%m%d%H".into());
    assert!(
        date.outbound(&json!("2025-07-22"))
            .unwrap_err()
            .contains("cannot write")
    );
    let datetime = Transform::DateTime(Some("%Y %Q".into()));
    assert!(
        datetime
            .outbound(&json!("2025-07-07T17:29:00+08:00"))
            .unwrap_err()
            .contains("cannot write")
    );
}

#[test]
fn dates_in_both_directions() {
    let t = Transform::Date("%Y%m%d".into());
    assert_eq!(
        t.inbound(&json!("19840504"), TextOptions::default()),
        Ok(json!("1984-05-04"))
    );
    assert!(
        t.inbound(&json!("19990230"), TextOptions::default())
            .unwrap_err()
            .contains("\"19990230\"")
    );
    assert_eq!(t.outbound(&json!("1984-05-04")), Ok(json!("19840504")));
    let slash = Transform::Date("%Y/%m/%d".into());
    assert_eq!(
        slash.inbound(&json!("2025/04/04"), TextOptions::default()),
        Ok(json!("2025-04-04"))
    );
    let rfc = Transform::DateTime(None);
    assert_eq!(
        rfc.inbound(&json!("2025-07-07T17:29:00+08:00"), TextOptions::default()),
        Ok(json!("2025-07-07T17:29:00+08:00"))
    );
    assert!(
        rfc.inbound(&json!("2025-13-01T00:00:00+08:00"), TextOptions::default())
            .is_err()
    );
}

#[test]
fn codes_and_text_options() {
    let t = Transform::Codes {
        inbound: [
            ("1".to_owned(), json!("male")),
            ("9".to_owned(), json!("unknown")),
            ("0".to_owned(), json!("unknown")),
        ]
        .into_iter()
        .collect(),
        outbound: [
            ("male".to_owned(), "1".to_owned()),
            ("unknown".to_owned(), "9".to_owned()),
        ]
        .into_iter()
        .collect(),
        listed: "1, 9, 0".into(),
    };
    assert_eq!(
        t.inbound(&json!("1"), TextOptions::default()),
        Ok(json!("male"))
    );
    assert_eq!(
        t.inbound(&json!(1), TextOptions::default()),
        Ok(json!("male"))
    );
    assert_eq!(
        t.inbound(&json!("7"), TextOptions::default()),
        Err("unknown code \"7\"; known codes: 1, 9, 0".into())
    );
    assert_eq!(t.outbound(&json!("unknown")), Ok(json!("9")));
    let upper = TextOptions {
        trim: true,
        upper: true,
    };
    assert_eq!(
        Transform::Text.inbound(&json!(" 14030219890903420x "), upper),
        Ok(json!("14030219890903420X"))
    );
    assert_eq!(
        Transform::Integer.inbound(&json!("3097"), upper),
        Ok(json!(3097))
    );
    assert_eq!(
        Transform::Integer.inbound(&json!(3097.0), upper),
        Ok(json!(3097))
    );
    assert!(Transform::Integer.inbound(&json!("3.5kg"), upper).is_err());
    assert_eq!(
        Transform::Number.inbound(&json!("16340.78"), upper),
        Ok(json!(16340.78))
    );
}
