//! Traces over OTLP: a broker and three adapters, each its own process,
//! export to a collector run by the test (a tonic server implementing the
//! OTLP trace service).
//!
//! - One Query, sent with the caller's own `traceparent`, is one trace of
//!   the broker's own, linked to the caller's span (the caller's trace id
//!   reaches no other process): its steps are the call span's children, the
//!   provider adapter's Fetch span is a child of the broker's forward step,
//!   and the adapter's call to the department system a child of that.
//! - One Publish: each delivery is a child of the publish's forward step,
//!   and each receiver adapter's Deliver span a child of its delivery.
//! - The audit entry's request id ends in the trace id.

mod common;

use common::{ROOT, TempDir, broker_client, config_copy, person_lookup, wait_for_child};
use crossgate_proto::{PublishRequest, Record};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One exported span, as the collector received it.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    /// (trace, span) of each linked span.
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Seen>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.push(Seen {
                    service: service.clone(),
                    name: span.name,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn crossgate(dir: &TempDir, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(dir.path())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

const DECLARATION: &str = r#"{"declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22", "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508", "transport": {"mode": "road", "vehicle_plate": "D96371", "driver_id_number": "110108198912063214"}, "goods": [{"line": 1, "hs_code": "6746284797", "description": "carpet", "quantity": 191, "unit": "kg", "value": {"amount": 16340.78, "currency": "CNY"}}]}"#;

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

#[test]
fn a_query_and_a_publish_are_each_one_trace_across_the_broker_and_the_adapters() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let collector_port = listener.local_addr().unwrap().port();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = TempDir::new("traces");
    let (broker_port, adapters) = config_copy(&dir);
    crossgate_testing::copy_dir(
        &std::path::Path::new(ROOT).join("deploy/local/fixtures"),
        &dir.join("fixtures"),
    );
    // The endpoint from broker.toml, which the adapter reads as well.
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{broker_port}\"\ncerts = \"certs\"\nmetrics_listen = \"off\"\n\
             otlp_endpoint = \"http://127.0.0.1:{collector_port}\"\n\
             [audit]\nstore = \"sqlite:audit.db\"\n"
        ),
    )
    .unwrap();
    let made = crossgate(&dir, &["certs", "dev", "--config", ".", "--out", "certs"])
        .status()
        .unwrap();
    assert!(made.success());
    let mut running = Running(vec![]);
    // Each child's stderr goes to a file, which a child that dies before
    // it listens is reported with.
    let start = |args: &[&str], port: u16, name: &str| {
        let log = dir.join(format!("{name}.log"));
        let mut child = crossgate(&dir, args)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_child(&mut child, port, Some(&log));
        child
    };
    running
        .0
        .push(start(&["broker", "--config", "."], broker_port, "broker"));
    // The provider of the query, and the receivers of a declaration.
    for dept in ["public-security", "border-inspection", "commerce"] {
        let port = adapters.iter().find(|(id, _)| id == dept).unwrap().1;
        running.0.push(start(
            &[
                "adapter",
                "--config",
                ".",
                "--department",
                dept,
                "--state",
                "state",
            ],
            port,
            dept,
        ));
    }

    let certs = dir.join("certs");
    let query = |traceparent: &'static str| {
        let certs = certs.clone();
        async move {
            let mut request =
                tonic::Request::new(person_lookup("public-security", "school-enrolment"));
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse().unwrap());
            broker_client(&certs, "education", broker_port)
                .query(request)
                .await
        }
    };
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = runtime
        .block_on(query(traceparent))
        .expect("the query is answered")
        .into_inner();
    assert_eq!(answer.records.len(), 1);
    let trace = answer.request_id.rsplit('-').next().unwrap().to_owned();
    assert_eq!(
        trace.len(),
        32,
        "the request id ends in a trace id: {}",
        answer.request_id
    );
    assert_ne!(
        trace, CALLER_TRACE,
        "the broker's own trace, not the caller's"
    );

    // A forged traceparent is ignored: the call is answered and starts a
    // trace of its own.
    let forged = runtime
        .block_on(query("00-not-a-trace-id-01"))
        .expect("a forged traceparent does not fail the call")
        .into_inner();
    let own_trace = forged.request_id.rsplit('-').next().unwrap().to_owned();
    assert_eq!(own_trace.len(), 32, "{}", forged.request_id);
    assert!(own_trace.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(own_trace, CALLER_TRACE);

    // Customs publishes a declaration: border inspection and commerce get it.
    let published = runtime
        .block_on(async {
            broker_client(&certs, "customs", broker_port)
                .publish(PublishRequest {
                    record: Some(Record {
                        record_type: "customs-declaration.v1".into(),
                        record_id: "E-traces-1".into(),
                        json: DECLARATION.as_bytes().to_vec(),
                    }),
                    ..Default::default()
                })
                .await
        })
        .expect("the publish is accepted")
        .into_inner();
    assert_eq!(published.deliveries.len(), 2);
    let publish_trace = published.request_id.rsplit('-').next().unwrap().to_owned();

    // Every process exports within a moment (batches every 100 ms).
    let spans_of = |trace: &str| -> Vec<Seen> {
        collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect()
    };
    let wanted = || {
        let query = spans_of(&trace);
        let publish = spans_of(&publish_trace);
        query
            .iter()
            .any(|s| s.name == "crossgate.v1.Department/Fetch")
            && query.iter().any(|s| s.name == "audit")
            && publish
                .iter()
                .filter(|s| s.name == "crossgate.v1.Department/Deliver")
                .count()
                == 2
    };
    let until = Instant::now() + Duration::from_secs(20);
    while !wanted() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        spans_of(CALLER_TRACE).is_empty(),
        "the caller's trace id is in no span: {:#?}",
        spans_of(CALLER_TRACE)
    );
    let spans = spans_of(&trace);
    let one = |service: &str, name: &str| -> Seen {
        let found: Vec<&Seen> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "one {name} span of {service} in {spans:#?}");
        found[0].clone()
    };
    let call = one("crossgate-broker", "crossgate.v1.Broker/Query");
    assert_eq!(
        call.parent, "",
        "a partner's call starts the broker's own trace"
    );
    assert_eq!(
        call.links,
        vec![(CALLER_TRACE.to_owned(), CALLER_SPAN.to_owned())],
        "linked to the caller's span"
    );
    for step in ["authorise", "screen", "audit"] {
        assert_eq!(
            one("crossgate-broker", step).parent,
            call.id,
            "{step} is a step of the call"
        );
    }
    let forward = one("crossgate-broker", "forward");
    assert_eq!(forward.parent, call.id);
    let fetch = one(
        "crossgate-adapter-public-security",
        "crossgate.v1.Department/Fetch",
    );
    assert_eq!(fetch.parent, forward.id, "the adapter's span is linked");
    assert_eq!(
        one("crossgate-adapter-public-security", "system").parent,
        fetch.id
    );
    assert_eq!(
        one("crossgate-adapter-public-security", "map").parent,
        fetch.id
    );
    let forged_call: Vec<Seen> = spans_of(&own_trace)
        .into_iter()
        .filter(|s| s.name == "crossgate.v1.Broker/Query")
        .collect();
    assert_eq!(forged_call.len(), 1);
    assert!(
        forged_call[0].links.is_empty(),
        "a forged traceparent links nothing"
    );

    // The publish: each delivery under the publish's forward step, each
    // receiver's Deliver span under its delivery.
    let publish = spans_of(&publish_trace);
    let named = |name: &str| -> Vec<&Seen> { publish.iter().filter(|s| s.name == name).collect() };
    let call = named("crossgate.v1.Broker/Publish");
    assert_eq!(call.len(), 1, "{publish:#?}");
    let forward = named("forward");
    assert_eq!(forward.len(), 1);
    assert_eq!(forward[0].parent, call[0].id);
    let deliveries = named("deliver");
    assert_eq!(deliveries.len(), 2, "{publish:#?}");
    for d in &deliveries {
        assert_eq!(d.parent, forward[0].id);
    }
    for receiver in ["border-inspection", "commerce"] {
        let service = format!("crossgate-adapter-{receiver}");
        let delivered: Vec<&Seen> = named("crossgate.v1.Department/Deliver")
            .into_iter()
            .filter(|s| s.service == service)
            .collect();
        assert_eq!(delivered.len(), 1, "{receiver}: {publish:#?}");
        assert!(
            deliveries.iter().any(|d| d.id == delivered[0].parent),
            "{receiver}'s Deliver span is a child of a delivery"
        );
    }

    // The auditor's entry leads to the trace.
    let out = crossgate(
        &dir,
        &[
            "audit",
            "search",
            "--store",
            "sqlite:audit.db",
            "--format",
            "jsonl",
        ],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let entry: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["request_id"] == answer.request_id.as_str())
        .unwrap_or_else(|| panic!("the entry of {} in {log}", answer.request_id));
    assert_eq!(entry["decision"], "allowed");
}
