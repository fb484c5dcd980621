//! A scripted adapter on loopback, and the broker's clients for it.

use crossgate_broker::delivery::Adapters;
use crossgate_policy::{Partner, Role};
use crossgate_proto::department_server::{Department, DepartmentServer};
use std::time::Duration;

/// Serve `fake` as `partner`'s adapter (plain HTTP/2, decoding messages
/// up to `limit` bytes) and return the broker's clients for it.
pub async fn serve_as<D: Department>(fake: D, partner: &str, limit: usize) -> Adapters {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DepartmentServer::new(fake).max_decoding_message_size(limit))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let partners = [Partner {
        id: partner.into(),
        name: partner.into(),
        role: Role::Partner,
        adapter: Some(addr.to_string()),
    }];
    Adapters::new(&partners, None, Duration::from_secs(2)).expect("adapters")
}
