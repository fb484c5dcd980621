//! `crossgate up` counts for Prometheus: after known traffic, `/metrics`
//! (scraped over HTTP, parsed with a Prometheus text parser) shows exactly
//! the calls the clients saw answered — the standard gRPC server series of
//! the broker and of the adapters, the decisions, the throttled calls, the
//! limit in force, the deliveries — and no label value a caller made up.

mod common;

use common::{ROOT, Up, person_lookup, wait_for};
use crossgate_proto::{PublishRequest, Record};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn scrape(port: u16) -> prometheus_parse::Scrape {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

const DECLARATION: &str = r#"{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}]}"#;

/// A scrape taken once both receivers' deliveries are counted and their
/// lanes hold nothing: a delivery ends after the publisher's answer, later on
/// a loaded machine, and a lane reports what it holds on its next turn (a
/// scrape short of that after 15 s is returned, for the assertions to name).
fn delivered_to_both(port: u16) -> prometheus_parse::Scrape {
    let settled = |m: &prometheus_parse::Scrape, receiver: &str| {
        value(
            m,
            "crossgate_deliveries_total",
            &[("receiver", receiver), ("outcome", "delivered")],
        ) >= 1.0
            && value(
                m,
                "crossgate_outbox_items",
                &[("receiver", receiver), ("state", "held")],
            ) == 0.0
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = scrape(port);
        let done = ["border-inspection", "commerce"]
            .iter()
            .all(|r| settled(&m, r));
        if done || std::time::Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_exactly_what_clients_saw_and_only_names_the_deployment_knows() {
    let metrics_port = crossgate_testing::free_port();
    // Education: 20/s with a burst of 10, so that a quick run is throttled.
    let up = Up::start(
        "metrics",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        "[default]\nrate = \"1000/s\"\nburst = 1000\n[partner.education]\nrate = \"20/s\"\nburst = 10\n",
    );
    wait_for(metrics_port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen: HashMap<tonic::Code, u32> = runtime.block_on(async {
        let client = |party: &str| up.client(party);
        let mut education = client("education");
        let mut seen = HashMap::new();
        let lookup = person_lookup;
        // 30 lookups at once: the first ten or so pass, the rest are throttled.
        for _ in 0..30 {
            let code = match education
                .query(lookup("public-security", "school-enrolment"))
                .await
            {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            };
            *seen.entry(code).or_insert(0) += 1;
        }
        // A partner searching the log: denied for its role; counted as the
        // log keeps it, one entry within the second (the wait below).
        let tls = crossgate_tls::Bundle::load(&up.dir.join("certs"), "tax").unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "https://127.0.0.1:{}",
            up.broker_port
        ))
        .unwrap()
        .tls_config(tls.client_for("broker"))
        .unwrap()
        .connect_lazy();
        let refused = crossgate_proto::audit_client::AuditClient::new(channel)
            .search(crossgate_proto::SearchRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A purpose no grant serves, and a provider nobody knows: denied.
        for provider in ["public-security", "nobody-by-this-name"] {
            let code = match education.query(lookup(provider, "curiosity")).await {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            };
            *seen.entry(code).or_insert(0) += 1;
        }
        // One declaration from customs: border inspection and commerce receive it.
        client("customs")
            .publish(PublishRequest {
                record: Some(Record {
                    record_type: "customs-declaration.v1".into(),
                    record_id: "E-metrics-1".into(),
                    json: DECLARATION.as_bytes().to_vec(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        seen
    });
    let ok = f64::from(seen.get(&tonic::Code::Ok).copied().unwrap_or(0));
    let throttled = f64::from(
        seen.get(&tonic::Code::ResourceExhausted)
            .copied()
            .unwrap_or(0),
    );
    let denied = f64::from(
        seen.get(&tonic::Code::PermissionDenied)
            .copied()
            .unwrap_or(0),
    );
    assert!(ok >= 10.0 && throttled >= 1.0 && denied == 2.0, "{seen:?}");

    let m = delivered_to_both(metrics_port);
    let broker_query = [
        ("grpc_service", "crossgate.v1.Broker"),
        ("grpc_method", "Query"),
    ];
    assert_eq!(value(&m, "grpc_server_started_total", &broker_query), 32.0);
    for (code, n) in [
        ("OK", ok),
        ("ResourceExhausted", throttled),
        ("PermissionDenied", denied),
    ] {
        let mut labels = broker_query.to_vec();
        labels.push(("grpc_code", code));
        assert_eq!(value(&m, "grpc_server_handled_total", &labels), n, "{code}");
    }
    assert_eq!(
        value(&m, "grpc_server_handling_seconds_count", &broker_query),
        32.0
    );
    // The adapter side of the same lookups, in the same process: messages
    // of the broker's one FetchStream, not a Fetch call each.
    let department = |method: &str| {
        value(
            &m,
            "grpc_server_started_total",
            &[
                ("grpc_service", "crossgate.v1.Department"),
                ("grpc_method", method),
            ],
        )
    };
    assert!(
        department("FetchStream") >= 1.0,
        "no FetchStream was opened"
    );
    assert_eq!(department("Fetch"), 0.0);
    let education = [("consumer", "education")];
    let decided = |decision: &str| {
        let mut labels = education.to_vec();
        labels.push(("decision", decision));
        value(&m, "crossgate_decisions_total", &labels)
    };
    assert_eq!(
        value(
            &m,
            "crossgate_decisions_total",
            &[("consumer", "tax"), ("decision", "denied")]
        ),
        1.0,
        "a partner's search of the log, as its entry"
    );
    assert_eq!(decided("allowed"), ok);
    assert_eq!(decided("throttled"), throttled);
    assert_eq!(decided("denied"), denied);
    assert_eq!(
        value(
            &m,
            "crossgate_decisions_total",
            &[
                ("consumer", "education"),
                ("provider", "other"),
                ("decision", "denied")
            ]
        ),
        1.0,
        "a provider nobody knows is counted as other"
    );
    assert_eq!(
        value(
            &m,
            "crossgate_throttled_total",
            &[("partner", "education"), ("mode", "query")]
        ),
        throttled
    );
    assert_eq!(
        value(
            &m,
            "crossgate_limit_rate",
            &[("partner", "education"), ("mode", "query")]
        ),
        20.0
    );
    for receiver in ["border-inspection", "commerce"] {
        assert_eq!(
            value(
                &m,
                "crossgate_deliveries_total",
                &[("receiver", receiver), ("outcome", "delivered")]
            ),
            1.0,
            "{receiver}"
        );
    }
    assert!(value(&m, "crossgate_audit_append_seconds_count", &[]) >= ok + denied);
    // Everything delivered: nothing held, nothing dead, nothing waiting
    // for the log's writer — and the series are there to alert on.
    for receiver in ["border-inspection", "commerce"] {
        for state in ["held", "dead"] {
            let series = m.samples.iter().find(|s| {
                s.metric == "crossgate_outbox_items"
                    && s.labels.get("receiver") == Some(receiver)
                    && s.labels.get("state") == Some(state)
            });
            assert!(
                series.is_some(),
                "crossgate_outbox_items {receiver} {state}"
            );
            assert_eq!(
                value(
                    &m,
                    "crossgate_outbox_items",
                    &[("receiver", receiver), ("state", state)]
                ),
                0.0
            );
        }
    }
    assert!(
        m.samples
            .iter()
            .any(|s| s.metric == "crossgate_audit_queue_depth"),
        "the audit queue depth is exported"
    );
    // An instant's reading: the broker's own periodic reads of the store
    // (dead-letter counts, lane sweeps) pass through the writer's queue too,
    // so a loaded machine can catch one waiting. With nothing sent it drains.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut depth = value(&m, "crossgate_audit_queue_depth", &[]);
    while depth != 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        depth = value(&scrape(metrics_port), "crossgate_audit_queue_depth", &[]);
    }
    assert_eq!(depth, 0.0);
    // Bounded: every partner-like label value is a party of partners.toml or "other".
    let partners = std::fs::read_to_string(up.dir.join("partners.toml")).unwrap();
    for sample in &m.samples {
        for key in ["consumer", "provider", "partner", "receiver"] {
            if let Some(v) = sample.labels.get(key) {
                assert!(
                    v.is_empty() || v == "other" || partners.contains(&format!("id = \"{v}\"")),
                    "{key}={v} in {}",
                    sample.metric
                );
            }
        }
    }
}

/// The issue's check: `crossgate demo --running` plays its scenarios
/// against a running `crossgate up`; then `/metrics` counts exactly the
/// decisions the audit log holds (per consumer and decision), and the
/// throttled calls exactly as many as the demo saw throttled.
#[test]
fn the_demo_against_a_running_up_is_counted_exactly() {
    let metrics_port = crossgate_testing::free_port();
    let up = Up::start(
        "metrics_demo",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        &std::fs::read_to_string(std::path::Path::new(ROOT).join("deploy/local/limits.toml"))
            .unwrap(),
    );
    wait_for(metrics_port);
    let config = up.config();
    let store = up.store();

    let demo = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["demo", "--running", "--config", config])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert_eq!(
        demo.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(
        said.contains("all six scenarios behaved as expected"),
        "{said}"
    );
    // "(e)": "N queries at education's limit of …: K throttled", twice.
    let throttled_seen: f64 = said
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" throttled"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(throttled_seen > 0.0, "{said}");

    // Throttled calls are written as one entry per partner and second:
    // wait until the last is in the log, then read it.
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["audit", "search", "--store", &store, "--format", "jsonl"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mut logged: HashMap<(String, String), f64> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let decision = e["decision"].as_str().unwrap().to_owned();
        if decision == "throttled" {
            continue;
        }
        let consumer = e["consumer"].as_str().unwrap().to_owned();
        *logged.entry((consumer, decision)).or_default() += 1.0;
    }
    assert!(logged.len() >= 3, "{logged:?}");

    let m = scrape(metrics_port);
    let mut counted: HashMap<(String, String), f64> = HashMap::new();
    for s in m
        .samples
        .iter()
        .filter(|s| s.metric == "crossgate_decisions_total")
    {
        let decision = s.labels.get("decision").unwrap().to_owned();
        if decision == "throttled" {
            continue;
        }
        let consumer = s.labels.get("consumer").unwrap().to_owned();
        if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) = s.value {
            *counted.entry((consumer, decision)).or_default() += v;
        }
    }
    counted.retain(|_, v| *v > 0.0);
    assert_eq!(counted, logged, "per consumer and decision");
    assert_eq!(
        value(
            &m,
            "crossgate_decisions_total",
            &[("decision", "throttled")]
        ),
        throttled_seen
    );
}
