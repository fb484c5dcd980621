//! The standard gRPC server series, from a tower layer on a tonic server.

use crate::{Handled, Method, Metrics};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// The services a crossgate process serves: any other path is `unknown`,
/// so a caller cannot grow the series with made-up names.
const SERVICES: [(&str, &[&str]); 8] = [
    ("crossgate.v1.Broker", &["Publish", "Query", "ListSchemas"]),
    (
        "crossgate.v1.Admin",
        &[
            "ListLimits",
            "GetLimit",
            "SetLimit",
            "ResetLimit",
            "ReloadLimits",
            "ReloadCatalog",
            "ListUndelivered",
            "Replay",
            "Purge",
            "Top",
        ],
    ),
    (
        "crossgate.v1.Audit",
        &["Search", "Verify", "Export", "Checkpoint"],
    ),
    (
        "crossgate.v1.Department",
        &["Deliver", "DeliverStream", "Fetch", "FetchStream"],
    ),
    ("crossgate.v1.Ingress", &["Submit", "Lookup"]),
    ("crossgate.v1.DepartmentSystem", &["Receive", "Find"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

/// Streaming methods (the rest are unary).
const STREAMING: [&str; 4] = ["Search", "Export", "Watch", "ServerReflectionInfo"];

/// Methods streaming both ways.
const BIDI_STREAMING: [&str; 2] = ["DeliverStream", "FetchStream"];

/// `(service, method, type)` of a request path, from the known list.
fn method_of(path: &str) -> (&'static str, &'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    for (s, methods) in SERVICES {
        if s == service {
            for m in methods {
                if *m == method {
                    let kind = if BIDI_STREAMING.contains(m) {
                        "bidi_stream"
                    } else if STREAMING.contains(m) {
                        "server_stream"
                    } else {
                        "unary"
                    };
                    return (s, m, kind);
                }
            }
            return (s, "unknown", "unknown");
        }
    }
    ("unknown", "unknown", "unknown")
}

/// The name of a gRPC status code, as the standard series write it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Counts and times every call of the server it wraps (`None`: nothing).
#[derive(Clone, Debug)]
pub struct GrpcLayer {
    metrics: Option<Arc<Metrics>>,
}

impl GrpcLayer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        GrpcLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for GrpcService<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let (grpc_service, grpc_method, grpc_type) = method_of(request.uri().path());
        let method = Method {
            grpc_service,
            grpc_method,
            grpc_type,
        };
        metrics.started.get_or_create(&method).inc();
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // An error answer comes at once, its status in the headers
            // (trailers only); an answer with a body ends with its status
            // in trailers, OK for every unary answer crossgate sends.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(tonic::Code::from_i32(c))),
                Err(_) => "Unavailable",
            };
            metrics
                .handled
                .get_or_create(&Handled {
                    grpc_service,
                    grpc_method,
                    grpc_type,
                    grpc_code: code,
                })
                .inc();
            metrics
                .handling
                .get_or_create(&method)
                .observe(start.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_label_values() {
        assert_eq!(
            method_of("/crossgate.v1.Broker/Query"),
            ("crossgate.v1.Broker", "Query", "unary")
        );
        assert_eq!(
            method_of("/crossgate.v1.Audit/Search"),
            ("crossgate.v1.Audit", "Search", "server_stream")
        );
        assert_eq!(
            method_of("/crossgate.v1.Broker/Anything"),
            ("crossgate.v1.Broker", "unknown", "unknown")
        );
        assert_eq!(
            method_of("/evil.Service/x\ny"),
            ("unknown", "unknown", "unknown")
        );
        assert_eq!(method_of(""), ("unknown", "unknown", "unknown"));
    }
}
