//! Reaching the broker from the command line.

use clap::Args;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Args)]
/// How to reach the broker with a certificate (an operator's or an auditor's).
pub struct Connection {
    /// The broker [default: https://<listen of broker.toml>]; several
    /// replicas separated by commas: the first that answers
    #[arg(long, global = true)]
    pub broker: Option<String>,
    /// Your certificate [default: <certs of broker.toml>/operations.pem for limits,
    /// audit-office.pem for audit]
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Your key [default: the certificate's path with .key]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The CA [default: ca.pem beside the certificate]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Configuration folder, for the defaults above
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "deploy/local"
    )]
    pub config: PathBuf,
}

impl Connection {
    /// A mutual-TLS channel to the broker, as party `default_id` unless
    /// `--cert` names another certificate.
    ///
    /// With several replicas (`--broker A,B`), the first that answers, in
    /// the order given.
    pub async fn channel(&self, default_id: &str) -> Result<Channel, String> {
        let mut failed = Vec::new();
        for endpoint in self.endpoints(default_id, "broker", None)? {
            match endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => failed.push(format!("{}: {e}", endpoint.uri())),
            }
        }
        Err(format!("cannot reach the broker at {}", failed.join("; ")))
    }

    /// One endpoint per address of `address` (or `--broker`), which may
    /// name several replicas separated by commas.
    pub fn endpoints(
        &self,
        default_id: &str,
        server: &str,
        address: Option<String>,
    ) -> Result<Vec<Endpoint>, String> {
        match address.or_else(|| self.broker.clone()) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| self.endpoint(default_id, server, Some(a.to_owned())))
                .collect(),
            None => Ok(vec![self.endpoint(default_id, server, None)?]),
        }
    }

    /// Where to reach party `server` (the broker at `--broker` unless
    /// `address` is given) as party `default_id`, unconnected: each
    /// `connect` opens a connection of its own.
    pub fn endpoint(
        &self,
        default_id: &str,
        server: &str,
        address: Option<String>,
    ) -> Result<Endpoint, String> {
        let config =
            crossgate_broker::BrokerConfig::load(&self.config).map_err(|e| e.to_string())?;
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| config.certs.join(format!("{default_id}.pem")));
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| cert.with_extension("key"));
        let ca = self.ca.clone().unwrap_or_else(|| {
            cert.parent()
                .unwrap_or(std::path::Path::new("."))
                .join("ca.pem")
        });
        let tls = crossgate_tls::Bundle::from_files(&cert, &key, &ca).map_err(|e| e.to_string())?;
        let url = address
            .or_else(|| self.broker.clone())
            .unwrap_or_else(|| format!("https://{}", config.listen));
        Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad address {url:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .tcp_nodelay(true)
            .tls_config(tls.client_for(server))
            .map_err(|e| e.to_string())
    }
}
