use super::*;
use chrono::TimeZone;
use governor::clock::FakeRelativeClock;
use std::sync::atomic::{AtomicI64, Ordering};

const PARTNERS: &[&str] = &["education", "tax", "customs"];

fn config(text: &str) -> LimitsConfig {
    parse_config("limits.toml", text, PARTNERS).unwrap_or_else(|e| panic!("{e}"))
}

/// Limits with a fake GCRA clock and a settable wall clock (seconds since the epoch).
fn limits(text: &str, wall: Arc<AtomicI64>) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let w = wall.clone();
    let l = Limits::with_clocks(
        config(text),
        clock.clone(),
        Box::new(move || {
            Utc.timestamp_opt(w.load(Ordering::SeqCst), 0)
                .single()
                .unwrap_or_default()
        }),
    );
    (l, clock)
}

/// 2026-11-22 at `hh:mm` in UTC+8, as seconds since the epoch.
fn at(hh: u32, mm: u32) -> i64 {
    chrono::FixedOffset::east_opt(8 * 3600)
        .unwrap()
        .with_ymd_and_hms(2026, 11, 22, hh, mm, 0)
        .unwrap()
        .timestamp()
}

const FILE: &str = r#"
time_zone = "+08:00"

[default]
rate = "100/s"
burst = 10

[partner.education]
rate = "10/s"
burst = 5
query = { rate = "2/s", burst = 1 }

[[partner.education.schedule]]
window = "08:00-10:00"
rate = "50/s"
burst = 20
"#;

fn count_allowed<C: Clock + Clone>(
    l: &Limits<C>,
    partner: &str,
    mode: Mode,
    tries: usize,
) -> usize {
    (0..tries)
        .filter(|_| l.check(partner, mode).is_ok())
        .count()
}

#[test]
fn a_burst_passes_then_calls_wait_the_gcra_interval() {
    let (l, clock) = limits(FILE, Arc::new(AtomicI64::new(at(12, 0))));
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 20), 5);
    assert_eq!(
        l.check("education", Mode::Publish),
        Err(Throttled {
            retry_after: Duration::from_millis(100)
        })
    );
    clock.advance(Duration::from_millis(100));
    assert!(l.check("education", Mode::Publish).is_ok());
    // One second refills at 10/s up to the burst of 5.
    clock.advance(Duration::from_secs(1));
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 20), 5);
}

#[test]
fn modes_and_partners_are_limited_separately_and_others_get_the_default() {
    let (l, _) = limits(FILE, Arc::new(AtomicI64::new(at(12, 0))));
    assert_eq!(count_allowed(&l, "education", Mode::Query, 10), 1);
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 10), 5);
    assert_eq!(count_allowed(&l, "tax", Mode::Publish, 50), 10);
    assert_eq!(count_allowed(&l, "customs", Mode::Publish, 50), 10);
}

#[test]
fn a_schedule_window_switches_at_its_edge() {
    let wall = Arc::new(AtomicI64::new(at(7, 59)));
    let (l, clock) = limits(FILE, wall.clone());
    assert_eq!(
        l.effective("education", Mode::Publish),
        (config(FILE).partners["education"].publish.clone(), None)
    );
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 100), 5);
    wall.store(at(8, 0), Ordering::SeqCst);
    let (limit, window) = l.effective("education", Mode::Publish);
    assert_eq!(
        (limit.rate.text.as_str(), limit.burst, window.as_deref()),
        ("50/s", 20, Some("08:00-10:00"))
    );
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 100), 20);
    clock.advance(Duration::from_secs(1));
    wall.store(at(10, 0), Ordering::SeqCst);
    assert_eq!(l.effective("education", Mode::Publish).1, None);
    assert_eq!(count_allowed(&l, "education", Mode::Publish, 100), 5);
}

#[test]
fn a_change_takes_effect_for_the_next_call() {
    let (l, _) = limits(FILE, Arc::new(AtomicI64::new(at(12, 0))));
    assert_eq!(count_allowed(&l, "education", Mode::Query, 10), 1);
    l.set(
        "education",
        None,
        Limit {
            rate: Rate::parse("500/s").unwrap(),
            burst: 100,
        },
    );
    assert_eq!(count_allowed(&l, "education", Mode::Query, 200), 100);
}

#[test]
fn rates_parse_and_bad_files_are_refused_with_line_and_reason() {
    assert_eq!(
        Rate::parse("12000/min").unwrap().per,
        Duration::from_secs(60)
    );
    assert!(
        Rate::parse("fast")
            .unwrap_err()
            .contains("N/s, N/min or N/h")
    );
    // Nothing hidden between the parts: an operator's typo or a forged
    // value never reaches the overrides file.
    for bad in ["5\n/s", "5 /s", "5/ s", "+5/s", "5/s\u{0}", "/s", "5/"] {
        assert!(Rate::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(Rate::parse(" 200/s ").unwrap().text, "200/s");
    let err = |text: &str| {
        parse_config("limits.toml", text, PARTNERS)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("[partner.educaton]\nrate = \"1/s\"\nburst = 1\n"),
        "limits.toml:2: [partner.educaton]: unknown partner; partners are listed in partners.toml: education, tax, customs"
    );
    assert_eq!(
        err("[default]\nrate = \"10/day\"\nburst = 1\n"),
        "limits.toml:2: rate \"10/day\" is not N/s, N/min or N/h (e.g. \"200/s\")"
    );
    assert_eq!(
        err("[default]\nrate = \"1/s\"\nburst = 0\n"),
        "limits.toml:3: burst must be at least 1"
    );
    assert!(err("[default]\nrate = \"1/s\"\nburst = 1\n[[default.schedule]]\nwindow = \"8-10\"\nrate = \"1/s\"\nburst = 1\n")
        .starts_with("limits.toml:5: window \"8-10\" is not HH:MM-HH:MM"));
    assert!(err("time_zone = \"Asia/Shanghai\"\n").starts_with("limits.toml:1: time zone"));
}

#[test]
fn overrides_win_reset_goes_back_and_they_round_trip_through_their_file() {
    let (l, _) = limits(FILE, Arc::new(AtomicI64::new(at(12, 0))));
    assert_eq!(l.partner_limits("education").1, Source::Config);
    assert_eq!(l.partner_limits("tax").1, Source::Default);
    let before = l.set(
        "education",
        Some(Mode::Query),
        Limit {
            rate: Rate::parse("7/s").unwrap(),
            burst: 3,
        },
    );
    assert_eq!(before.query.rate.text, "2/s");
    let (now, source) = l.partner_limits("education");
    assert_eq!(
        (
            now.query.rate.text.as_str(),
            now.publish.rate.text.as_str(),
            source
        ),
        ("7/s", "10/s", Source::Override)
    );
    let back = parse_config(
        "limits.overrides.toml",
        &l.overrides_toml().unwrap(),
        PARTNERS,
    )
    .unwrap();
    assert_eq!(back.partners["education"], now);
    assert!(l.reset("education"));
    assert_eq!(l.partner_limits("education").1, Source::Config);
}

#[test]
fn the_last_minute_counts_allowed_and_throttled_calls() {
    let wall = Arc::new(AtomicI64::new(at(12, 0)));
    let (l, _) = limits(FILE, wall.clone());
    count_allowed(&l, "education", Mode::Publish, 8);
    assert_eq!(l.last_minute("education"), (5, 3));
    wall.store(at(12, 0) + 30, Ordering::SeqCst);
    l.check("education", Mode::Publish).ok();
    assert_eq!(l.last_minute("education"), (5, 4));
    wall.store(at(12, 0) + 61, Ordering::SeqCst);
    assert_eq!(l.last_minute("education"), (0, 1));
}

#[test]
fn an_odd_rate_text_cannot_break_the_overrides_file() {
    let (l, _) = limits(FILE, Arc::new(AtomicI64::new(at(12, 0))));
    // A newline inside a rate is refused before it can reach the file;
    // what is accepted is written so that it reads back the same.
    assert!(Rate::parse("5\n/s").is_err());
    let odd = Rate::parse(" 5/s ").unwrap();
    l.set(
        "tax",
        None,
        Limit {
            rate: odd,
            burst: 2,
        },
    );
    let text = l.overrides_toml().unwrap();
    let back = parse_config("limits.overrides.toml", &text, PARTNERS).unwrap();
    assert_eq!(back.partners["tax"].query.rate.count, 5);
    assert_eq!(back.partners["tax"].query.burst, 2);
}

#[test]
fn the_former_timezone_key_is_still_read() {
    let config = parse_config(
        "limits.toml",
        "timezone = \"+08:00\"\n[default]\nrate = \"1/s\"\nburst = 1\n",
        PARTNERS,
    )
    .unwrap();
    let again = parse_config(
        "limits.toml",
        "time_zone = \"+08:00\"\n[default]\nrate = \"1/s\"\nburst = 1\n",
        PARTNERS,
    )
    .unwrap();
    assert_eq!(format!("{config:?}"), format!("{again:?}"));
}

#[test]
fn an_override_travels_as_one_line_and_comes_back_the_same() {
    let limit = |rate: &str, burst| Limit {
        rate: Rate::parse(rate).unwrap(),
        burst,
    };
    let o = PartnerLimits {
        publish: limit("100/s", 10),
        query: limit("12000/min", 3),
        schedule: Vec::new(),
    };
    assert_eq!(o.to_line(), "publish 100/s 10 query 12000/min 3");
    assert_eq!(PartnerLimits::from_line(&o.to_line()), Ok(o));
    for bad in [
        "",
        "publish 100/s 10",
        "publish 100/s 0 query 1/s 1",
        "query 100/s 1 publish 1/s 1",
        "publish 100/x 1 query 1/s 1",
        "publish 100/s 1 query 1/s 1 extra",
    ] {
        assert!(PartnerLimits::from_line(bad).is_err(), "{bad:?}");
    }
}
