//! The metrics endpoint: `GET /metrics` in OpenMetrics text; anything else
//! 404. Plain HTTP: bind it to loopback or a network only Prometheus reaches.

use crate::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(metrics: &Metrics, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let build = |status, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
        build(StatusCode::OK, CONTENT_TYPE, metrics.render())
    } else {
        build(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "crossgate serves GET /metrics here\n".into(),
        )
    }
}

/// Serve `metrics` on `listener` for as long as the task runs.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "the metrics listener could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(io, service);
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(30), serving).await
            {
                tracing::debug!(error = %e, "a metrics connection was closed");
            }
        });
    }
}
