//! Logs and traces of a crossgate process.
//!
//! - **Logs** go to stderr as text or as JSON lines (`--log-format`), with
//!   levels from `RUST_LOG` (default `info`). Events name requests, partners
//!   and record types, never a record's contents or a secret.
//! - **Traces** go to an OpenTelemetry collector over OTLP/gRPC when an
//!   endpoint is set (configuration, or `OTEL_EXPORTER_OTLP_ENDPOINT`);
//!   otherwise no span is even built. Each pipeline step is a child span
//!   ([`step`]); a call to another process carries the W3C `traceparent`
//!   of the step that makes it ([`inject`]).
//! - **Department boundaries.** A call from a partner starts a trace of the
//!   broker's own, *linked* to the caller's span ([`edge_span`]): the
//!   caller's trace id, sampling flag and `tracestate` never reach another
//!   department, and a partner cannot choose the trace the gateway's spans
//!   land in. Within the gateway (broker → adapter) and within a department
//!   (its system → its adapter, its adapter → its system) a call's span is
//!   the child of the caller's ([`server_span`]).
//!
//! Only spans with the target [`TRACE`] are exported: log events never
//! become span events, so nothing a log line holds leaves through traces.
#![forbid(unsafe_code)]

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::str::FromStr;
use std::time::Duration;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

/// The target of every span that is exported as a trace.
pub const TRACE: &str = "crossgate::trace";

/// The environment variable OpenTelemetry's SDKs read for the endpoint.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: write text or json")),
        }
    }
}

/// Why logs or traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "RUST_LOG={value:?} is not a valid filter ({reason}); write e.g. RUST_LOG=info or RUST_LOG=warn,crossgate_broker=debug"
    )]
    Filter { value: String, reason: String },
    #[error(
        "OTLP endpoint {endpoint:?}: {reason}; set the http:// URL of an OTLP/gRPC collector (e.g. http://127.0.0.1:4317), or leave it unset for no traces"
    )]
    Endpoint { endpoint: String, reason: String },
}

/// What a process sets up: its log format, its service name in traces and
/// the collector's endpoint (`None`: `OTEL_EXPORTER_OTLP_ENDPOINT`, and
/// without it no traces).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub log_format: LogFormat,
    pub service: String,
    pub otlp_endpoint: Option<String>,
}

/// Keeps the trace exporter; [`Telemetry::shutdown`] sends what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// Where traces go, if anywhere, without a password the URL holds.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint.as_deref().map(crossgate_config::redact_url)
    }

    /// Send the spans still buffered (waiting at most 5 s for the
    /// collector), then stop exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // Bounded inside too: the runtime waits for this thread as it stops.
        let flush = tokio::task::spawn_blocking(move || {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(3));
        });
        let _ = tokio::time::timeout(Duration::from_secs(4), flush).await;
    }
}

/// Install the process's logger and, with an endpoint, its trace exporter.
/// Call once, inside the tokio runtime (the exporter's gRPC channel lives
/// on it). A second call in the same process keeps the first's logger.
pub fn init(settings: Settings) -> Result<Telemetry, TelemetryError> {
    let logs = log_filter()?;
    let endpoint = settings.otlp_endpoint.clone().or_else(|| {
        std::env::var(OTLP_ENDPOINT_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
    });
    let provider = match &endpoint {
        Some(endpoint) => Some(exporter(endpoint, &settings.service)?),
        None => None,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(logs)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(logs)
            .boxed(),
    };
    let mut layers = vec![fmt];
    if let Some(provider) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("crossgate"))
                .with_filter(Targets::new().with_target(TRACE, Level::TRACE))
                .boxed(),
        );
    }
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layers));
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panicked = true, "{}", describe_panic(info));
    }));
    Ok(Telemetry { provider, endpoint })
}

/// A panic as the log tells it: where, on which thread, and the backtrace
/// when `RUST_BACKTRACE` asks for one, but not the panic's message, which
/// may quote a record (an `unwrap` of a parse error does). The default hook
/// would print that message to stderr beside the log.
pub fn describe_panic(info: &std::panic::PanicHookInfo<'_>) -> String {
    let at = info.location().map_or_else(
        || "an unknown place".to_owned(),
        |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
    );
    let thread = std::thread::current();
    let mut line = format!(
        "a panic at {at} on thread {} (its message is withheld: it may quote a record)",
        thread.name().unwrap_or("unnamed")
    );
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        line.push_str(&format!("\n{backtrace}"));
    }
    line
}

/// `RUST_LOG`, or `info`. Trace spans stay out of the log lines unless
/// `RUST_LOG` names their target.
fn log_filter() -> Result<EnvFilter, TelemetryError> {
    let value = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    let mut directives = value.clone();
    if !value.contains(TRACE) {
        directives.push_str(",crossgate::trace=off");
    }
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| TelemetryError::Filter {
            value,
            reason: e.to_string(),
        })
}

fn exporter(endpoint: &str, service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let refuse = |reason: &str| TelemetryError::Endpoint {
        // A password in the URL is not repeated.
        endpoint: crossgate_config::redact_url(endpoint),
        reason: reason.to_owned(),
    };
    if endpoint.starts_with("https://") {
        return Err(refuse(
            "TLS to the collector is not built in; run the collector beside the process (loopback) and use http://",
        ));
    }
    if !endpoint.starts_with("http://") {
        return Err(refuse("not an http:// URL"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| refuse(&e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// The span of one gRPC call from a trusted caller (the broker, or the
/// department's own system), a child of its `traceparent` if it sent a
/// valid one. `name` is `package.Service/Method`.
pub fn server_span(name: &'static str, metadata: &MetadataMap) -> Span {
    let span = rpc_span(name);
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// The span of one gRPC call from a partner department: the root of a
/// trace of the broker's own, linked to the caller's span if it sent a
/// valid `traceparent` (its tracing can find the gateway's trace; nothing
/// of it is passed on).
pub fn edge_span(name: &'static str, metadata: &MetadataMap) -> Span {
    let span = rpc_span(name);
    if !span.is_disabled() {
        // An explicit empty parent: a root, whatever span is current.
        let _ = span.set_parent(opentelemetry::Context::new());
        let caller = TraceContextPropagator::new().extract(&Metadata(metadata));
        let caller = caller.span().span_context().clone();
        if caller.is_valid() {
            span.add_link(caller);
        }
    }
    span
}

/// Where a piece of work started, to continue its trace later in another
/// task (a delivery sent by the outbox after the publish was accepted).
#[derive(Clone, Debug, Default)]
pub struct TraceParent(Option<opentelemetry::Context>);

impl TraceParent {
    /// The current span's context (nothing when traces are off).
    pub fn current() -> Self {
        let span = Span::current();
        if span.is_disabled() {
            return TraceParent(None);
        }
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceParent(Some(cx))
        } else {
            TraceParent(None)
        }
    }

    /// A client step under this parent (or a new trace without one).
    pub fn client_step(&self, name: &'static str) -> Span {
        let span = client_step(name);
        if !span.is_disabled() {
            let _ = span.set_parent(self.0.clone().unwrap_or_default());
        }
        span
    }
}

/// A served call's span, its parent not set yet.
fn rpc_span(name: &'static str) -> Span {
    tracing::info_span!(
        target: TRACE,
        "rpc",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        request_id = tracing::field::Empty,
    )
}

/// A pipeline step's span, a child of the current one.
pub fn step(name: &'static str) -> Span {
    tracing::info_span!(target: TRACE, "step", otel.name = name)
}

/// A step that calls another process: its span is the parent of the span
/// the other process starts from the `traceparent` [`inject`] writes.
pub fn client_step(name: &'static str) -> Span {
    tracing::info_span!(target: TRACE, "step", otel.name = name, otel.kind = "client")
}

/// Write the current span's `traceparent` into an outgoing call's metadata
/// (nothing when traces are off).
pub fn inject(metadata: &mut MetadataMap) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataMut(metadata));
    }
}

/// The current span's `traceparent` as text, for a message that carries it
/// in a field rather than in a call's metadata (empty when traces are off).
pub fn traceparent() -> String {
    let mut metadata = MetadataMap::new();
    inject(&mut metadata);
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The same, for a call written as an HTTP request (a tower service in the
/// client's stack).
pub fn inject_headers(headers: &mut tonic::codegen::http::HeaderMap) {
    let mut metadata = MetadataMap::from_headers(std::mem::take(headers));
    inject(&mut metadata);
    *headers = metadata.into_headers();
}

/// The trace id of the current span (32 hex digits), when traces are on.
pub fn current_trace_id() -> Option<String> {
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataMut<'a>(&'a mut MetadataMap);

impl Injector for MetadataMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_told_by_its_place_not_its_words() {
        static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            TOLD.lock().unwrap().push(describe_panic(info));
        }));
        let line = line!() + 1;
        let teller = || panic!("invalid type: string \"540202198107103540\"");
        let panicked = std::thread::Builder::new()
            .name("teller".into())
            .spawn(teller)
            .unwrap()
            .join();
        std::panic::set_hook(before);
        assert!(panicked.is_err());
        let told = TOLD.lock().unwrap().clone();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].starts_with(&format!("a panic at {}:{line}:", file!())),
            "{}",
            told[0]
        );
        assert!(told[0].contains("on thread teller"), "{}", told[0]);
        assert!(!told[0].contains("540202198107103540"), "{}", told[0]);
    }

    #[test]
    fn log_formats_parse_and_others_are_refused_with_the_choices() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("text or json"), "{err}");
    }

    #[test]
    fn an_endpoint_that_is_not_http_is_refused_with_the_fix() {
        for bad in ["https://collector:4317", "127.0.0.1:4317", "grpc://x"] {
            let err = exporter(bad, "t").unwrap_err().to_string();
            assert!(err.contains("http://"), "{err}");
        }
    }

    #[test]
    fn without_traces_nothing_is_injected_and_there_is_no_trace_id() {
        let mut md = MetadataMap::new();
        let _g = step("s").entered();
        inject(&mut md);
        assert!(md.get("traceparent").is_none());
        assert_eq!(current_trace_id(), None);
    }

    #[test]
    fn a_valid_traceparent_is_read_and_a_forged_one_ignored() {
        let mut md = MetadataMap::new();
        md.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = TraceContextPropagator::new().extract(&Metadata(&md));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        md.insert("traceparent", "00-zz-not-hex-01".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Metadata(&md));
        assert!(!cx.span().span_context().is_valid());
    }
}
