use super::*;

fn parsed(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn counts_are_exact_and_names_a_deployment_does_not_know_are_other() {
    let m = Metrics::new(
        ["education".to_owned(), "public-security".to_owned()],
        ["person.v1".to_owned()],
    );
    for _ in 0..3 {
        m.decision("education", "public-security", "person.v1", "allowed");
    }
    m.decision("education", "made-up-provider", "made-up.v9", "denied");
    m.decision("education", "another-made-up", "x.v1", "denied");
    m.throttled("education", "query", "rate");
    m.throttled("education", "query", "calls_under_way");
    m.limit_in_force("education", "query", 20.0);
    m.delivery("public-security", DeliveryOutcome::Delivered);
    let scrape = parsed(&m.render());
    let allowed = [
        ("consumer", "education"),
        ("provider", "public-security"),
        ("record_type", "person.v1"),
        ("decision", "allowed"),
    ];
    assert_eq!(
        value(&scrape, "crossgate_decisions_total", &allowed),
        Some(3.0)
    );
    let other = [
        ("provider", "other"),
        ("record_type", "other"),
        ("decision", "denied"),
    ];
    assert_eq!(
        value(&scrape, "crossgate_decisions_total", &other),
        Some(2.0)
    );
    assert_eq!(
        value(
            &scrape,
            "crossgate_throttled_total",
            &[
                ("partner", "education"),
                ("mode", "query"),
                ("cause", "rate")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "crossgate_throttled_total",
            &[
                ("partner", "education"),
                ("mode", "query"),
                ("cause", "calls_under_way")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "crossgate_limit_rate", &[("partner", "education")]),
        Some(20.0)
    );
    assert_eq!(
        value(
            &scrape,
            "crossgate_deliveries_total",
            &[("receiver", "public-security"), ("outcome", "delivered")]
        ),
        Some(1.0)
    );
    assert!(
        !m.render().contains("made-up"),
        "a name the deployment does not know never becomes a label value"
    );
}
