//! Reaching department adapters: one lazily connected mutual-TLS channel per
//! adapter, and the delivery queue every published record goes through.

use crate::error::BrokerError;
use crossgate_policy::{Partner, Role};
use crossgate_proto::DeliverRequest;
use crossgate_proto::department_client::DepartmentClient;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Status;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Clients for every partner's adapter.
#[derive(Clone)]
pub struct Adapters {
    clients: HashMap<String, DepartmentClient<Channel>>,
}

impl Adapters {
    /// One channel per partner with an adapter address. Channels connect on
    /// first use; a connect timeout keeps a down adapter from hanging callers.
    pub fn new(
        partners: &[Partner],
        tls: Option<ClientTlsConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let mut clients = HashMap::new();
        for p in partners.iter().filter(|p| p.role == Role::Partner) {
            let Some(addr) = &p.adapter else { continue };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| BrokerError::AdapterAddress {
                    partner: p.id.clone(),
                    address: addr.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(connect_timeout);
            if let Some(tls) = &tls {
                endpoint =
                    endpoint
                        .tls_config(tls.clone())
                        .map_err(|e| BrokerError::AdapterTls {
                            partner: p.id.clone(),
                            reason: e.to_string(),
                        })?;
            }
            clients.insert(p.id.clone(), DepartmentClient::new(endpoint.connect_lazy()));
        }
        Ok(Adapters { clients })
    }

    pub fn get(&self, partner: &str) -> Result<DepartmentClient<Channel>, Status> {
        self.clients.get(partner).cloned().ok_or_else(|| {
            Status::unavailable(format!("{partner} has no adapter address in partners.toml"))
        })
    }
}

/// Where published records go on their way to receivers. Today records are
/// delivered directly; a durable outbox can take this place without changing
/// the request path.
#[tonic::async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    async fn deliver(&self, receiver: &str, request: DeliverRequest) -> Result<(), Status>;
}

/// Deliver at once, each delivery bounded by a timeout.
pub struct DirectDelivery {
    pub adapters: Adapters,
    pub timeout: Duration,
}

#[tonic::async_trait]
impl DeliveryQueue for DirectDelivery {
    async fn deliver(&self, receiver: &str, request: DeliverRequest) -> Result<(), Status> {
        let mut client = self.adapters.get(receiver)?;
        let mut req = tonic::Request::new(request);
        req.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.deliver(req)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{receiver} did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}
