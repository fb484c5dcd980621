//! `crossgate adapter`: run one department's adapter (and, unless told where
//! the department's own system is, a reference system seeded from fixtures).

use crate::cmd::schema::{SchemasDir, load};
use crate::{CliError, CliResult, ExitCode};
use clap::Args;
use crossgate_adapter::seen::Seen;
use crossgate_adapter::system::ReferenceSystem;
use crossgate_adapter::{Adapter, Peers, lazy_channel, lazy_replicas, serve_system};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct AdapterArgs {
    /// Department id, e.g. customs
    #[arg(long)]
    pub department: String,
    /// Configuration folder
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
    /// Address to serve Ingress and Department on [default: the department's
    /// adapter address in partners.toml]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The broker's address [default: https://<listen of broker.toml>];
    /// several replicas separated by commas: calls go to each in turn, and
    /// one that stops answering is left out for a few seconds
    #[arg(long)]
    pub broker: Option<String>,
    /// Certificate folder: ca.pem, <department>.pem and .key
    /// [default: certs of broker.toml]
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Append what the reference system receives to this JSON Lines file
    #[arg(long, value_name = "FILE")]
    pub inbox: Option<PathBuf>,
    /// The department system's address [default: a reference system seeded
    /// from <config>/fixtures/<department>, run in this process]
    #[arg(long)]
    pub system: Option<String>,
    /// Folder for the adapter's own state: the delivery ids it has passed
    /// on (<department>.delivered.db), so a repeated delivery is passed on once
    #[arg(long, value_name = "DIR", default_value = ".crossgate/adapters")]
    pub state: PathBuf,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this address
    /// [default: none; the broker's default port is 9464]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn run(args: AdapterArgs) -> CliResult {
    let stop = crate::cmd::stop_signal();
    let registry = Arc::new(load(&args.dir).map_err(CliError::exit)?);
    let mapping =
        crossgate_adapter::config::load_department(&args.config, &args.department, &registry)?;
    let broker_config = crossgate_broker::BrokerConfig::load(&args.config)?;
    let telemetry = crate::telemetry(
        &format!("crossgate-adapter-{}", args.department),
        broker_config.otlp_endpoint.clone(),
    )
    .await?;
    let certs = args.certs.clone().unwrap_or(broker_config.certs.clone());
    let tls = crossgate_tls::Bundle::load(&certs, &args.department)?;
    let listen = match args.listen {
        Some(l) => l,
        None => crossgate_broker::deployment::read_partners(&args.config)
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.id == args.department))
            .and_then(|p| p.adapter)
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                format!(
                    "{} has no adapter address in {}; give --listen",
                    args.department,
                    args.config.join("partners.toml").display()
                )
            })?,
    };
    let broker_uri = args
        .broker
        .clone()
        .unwrap_or_else(|| format!("https://{}", broker_config.listen));
    // The configured port before the reference system picks a random one.
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        format!(
            "cannot listen on {listen}: {e}; is another crossgate running? choose another --listen"
        )
    })?;
    let system_uri = match &args.system {
        Some(uri) => uri.clone(),
        None => reference_system(&args).await?,
    };
    let broker = lazy_replicas(&broker_uri, Some(tls.client_for("broker")))
        .map_err(|e| format!("bad broker address {broker_uri}: {e}"))?;
    let system =
        lazy_channel(&system_uri).map_err(|e| format!("bad system address {system_uri}: {e}"))?;
    let addr = listener.local_addr()?;
    println!(
        "adapter {} listening on https://{addr} (Ingress, Department; mutual TLS); broker {broker_uri}",
        args.department
    );
    let seen = Seen::open(
        &args.state.join(format!("{}.delivered.db", args.department)),
        crossgate_adapter::seen::DEFAULT_CAPACITY,
    )
    .map_err(|e| format!("{e}; choose another --state folder"))?;
    let adapter = Adapter::new(mapping, registry.clone(), broker, system)
        .with_peers(Peers::new(
            "broker",
            crossgate_tls::revocation::Revocation::load(&tls.ca_pem, &broker_config.crls)?
                .map(Arc::new),
        ))
        .with_seen(seen);
    let metrics = match args.metrics_listen {
        Some(address) => {
            let partners = crossgate_broker::deployment::read_partners(&args.config)?;
            let metrics = crossgate_metrics::Metrics::new(
                partners.into_iter().map(|p| p.id),
                registry.record_types().map(|t| t.record_type.to_owned()),
            );
            let metrics_listener = TcpListener::bind(address)
                .await
                .map_err(|e| format!("cannot listen on {address} for metrics: {e}"))?;
            println!("metrics: http://{address}/metrics (Prometheus)");
            tokio::spawn(crossgate_metrics::serve(metrics_listener, metrics.clone()));
            Some(metrics)
        }
        None => None,
    };
    crossgate_adapter::serve_counted(adapter, listener, Some(tls.server()), stop, metrics)
        .await
        .map_err(|e| CliError {
            code: ExitCode::Failed,
            message: format!("adapter stopped: {e}"),
        })?;
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}

/// Without `--system`: a reference department system seeded from the
/// department's fixtures, on a loopback port; its address.
async fn reference_system(args: &AdapterArgs) -> Result<String, CliError> {
    let mut system = ReferenceSystem::new();
    if let Some(inbox) = &args.inbox {
        system = system.with_inbox(inbox.clone());
    }
    let seeds = args.config.join("fixtures").join(&args.department);
    let seeded = if seeds.is_dir() {
        system.seed_dir(&seeds).map_err(|e| {
            format!(
                "cannot seed the reference system from {}: {e}",
                seeds.display()
            )
        })?
    } else {
        0
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot open a loopback port for the reference system: {e}"))?;
    let uri = format!("http://{}", listener.local_addr()?);
    println!(
        "reference department system for {}: {uri} ({seeded} records)",
        args.department
    );
    tokio::spawn(serve_system(system, listener, crate::cmd::stop_signal()));
    Ok(uri)
}
