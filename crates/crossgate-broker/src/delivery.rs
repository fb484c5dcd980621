//! Reaching department adapters: one lazily connected mutual-TLS channel per
//! adapter (deliveries go through the outbox's lanes, `outbox.rs`).

use crate::error::BrokerError;
use crossgate_policy::{Partner, Role};
use crossgate_proto::department_client::DepartmentClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// Clients for every partner's adapter.
#[derive(Clone)]
pub struct Adapters {
    /// Shared: every delivery attempt holds the set, and copying ten
    /// channels for each was measurable.
    clients: Arc<HashMap<String, DepartmentClient<Channel>>>,
}

impl Adapters {
    /// One channel per partner with an adapter address. Channels connect on
    /// first use; a connect timeout keeps a down adapter from hanging callers.
    /// `tls`: the broker's certificate; each adapter must present its own
    /// party's certificate (checked as the server name), not just any of the CA.
    pub fn new(
        partners: &[Partner],
        tls: Option<&crossgate_tls::Bundle>,
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
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls.client_for(&p.id)).map_err(|e| {
                    BrokerError::AdapterTls {
                        partner: p.id.clone(),
                        reason: e.to_string(),
                    }
                })?;
            }
            clients.insert(p.id.clone(), DepartmentClient::new(endpoint.connect_lazy()));
        }
        Ok(Adapters {
            clients: Arc::new(clients),
        })
    }

    pub fn get(&self, partner: &str) -> Result<DepartmentClient<Channel>, Status> {
        self.clients.get(partner).cloned().ok_or_else(|| {
            Status::unavailable(format!("{partner} has no adapter address in partners.toml"))
        })
    }
}
