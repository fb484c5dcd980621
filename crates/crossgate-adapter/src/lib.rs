//! The department adapter service. It serves `Ingress` to its own
//! department's system (native records in, canonical records to the broker)
//! and `Department` to the broker (canonical records in, native records to
//! the department's system), mapping with the department's declarative file.
#![forbid(unsafe_code)]

pub mod config;
mod replicas;
pub mod seen;
mod service;
pub mod system;

pub use replicas::Replicas;
pub use service::{Adapter, FETCHES_MAX, HAND_OVERS_MAX, Peers, faults_status};

use crossgate_proto::department_server::DepartmentServer;
use crossgate_proto::department_system_server::DepartmentSystemServer;
use crossgate_proto::ingress_server::IngressServer;
use std::future::Future;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

pub use crossgate_proto::standard::ServeError;

/// Serve an adapter's `Ingress` and `Department` on `listener` until
/// `shutdown`, with gRPC health checking and server reflection beside them.
pub async fn serve(
    adapter: Adapter,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_tls(adapter, listener, None, shutdown).await
}

/// As [`serve`], over mutual TLS when `tls` is given.
pub async fn serve_tls(
    adapter: Adapter,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_counted(adapter, listener, tls, shutdown, None).await
}

/// [`serve_tls`], every call counted in `metrics` (the standard gRPC
/// server series).
pub async fn serve_counted(
    adapter: Adapter,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Option<std::sync::Arc<crossgate_metrics::Metrics>>,
) -> Result<(), ServeError> {
    let (reporter, health) = crossgate_proto::standard::health_reporter();
    reporter.set_serving::<IngressServer<Adapter>>().await;
    reporter.set_serving::<DepartmentServer<Adapter>>().await;
    let reflection = crossgate_proto::standard::reflection()?;
    // The broker's streams end when the drain starts; they would hold it open.
    let closing = adapter.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close_streams();
    };
    // The same connection, stream and time limits as the broker's defaults.
    let limits = crossgate_tls::serving::ServerLimits::default();
    let mut builder = limits
        .builder()
        .layer(crossgate_metrics::GrpcLayer::new(metrics));
    if let Some(tls) = tls {
        builder = builder.tls_config(limits.tls(tls))?;
    }
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(IngressServer::new(adapter.clone()))
        .add_service(DepartmentServer::new(adapter))
        .serve_with_incoming_shutdown(limits.incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// Serve a reference department system on `listener` until `shutdown`.
pub async fn serve_system(
    system: system::ReferenceSystem,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(DepartmentSystemServer::new(system))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// A lazily connected plain-HTTP/2 channel to `http://addr`, with a short
/// connect timeout so that a peer that is down answers `UNAVAILABLE` quickly.
pub fn lazy_channel(uri: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    lazy_tls_channel(uri, None)
}

/// As [`lazy_channel`], over mutual TLS when `tls` is given (`https://...`).
pub fn lazy_tls_channel(
    uri: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut endpoint =
        Endpoint::from_shared(uri.to_owned())?.connect_timeout(std::time::Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

/// Broker replicas at `uris` (comma-separated), lazily connected: calls go
/// to each in turn, and one that went away is left out for a while (see
/// [`Replicas`]).
pub fn lazy_replicas(
    uris: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Replicas, tonic::transport::Error> {
    let channels = uris
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| lazy_tls_channel(u, tls.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    if channels.is_empty() {
        // Endpoint::from_shared reports the empty address.
        return lazy_tls_channel("", tls).map(Replicas::from);
    }
    Ok(Replicas::new(channels))
}
