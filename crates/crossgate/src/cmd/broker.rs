//! `crossgate broker`: run the broker from a config folder.

use crate::cmd::schema::{SchemasDir, load};
use crate::{CliError, CliResult, ExitCode};

use clap::Args;
use crossgate_broker::Broker;
use crossgate_broker::deployment::{AuditChoice, Deployment, Wiring};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Configuration folder (broker.toml, partners.toml, catalog.toml)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
    /// Override broker.toml's listen address
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Override broker.toml's certificate folder
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
}

pub async fn run(args: BrokerArgs) -> CliResult {
    let registry = Arc::new(load(&args.dir).map_err(CliError::exit)?);
    let mut dep = Deployment::load(&args.config, registry)?;
    if let Some(l) = args.listen {
        dep.config.listen = l;
    }
    if let Some(c) = args.certs {
        dep.config.certs = c;
    }
    let config = dep.config.clone();
    let telemetry = crate::telemetry("crossgate-broker", config.otlp_endpoint.clone()).await?;
    let tls = crossgate_tls::Bundle::load(&config.certs, "broker")?;
    let references = crossgate_broker::config::load_reference_key(&config.certs)?;
    let checkpoints = crossgate_broker::config::load_checkpoint_signer(&config.certs)?;
    // Signals are registered before the port opens: one sent as soon as it
    // answers is handled, not the default action (which ends the process).
    let stop = crate::cmd::stop_signal();
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let broker = Broker::from_deployment(
        dep,
        Wiring {
            tls: tls.clone(),
            references,
            checkpoints: Some(checkpoints.clone()),
            audit: AuditChoice::Store(config.audit.clone()),
            overrides_file: config
                .limits_overrides
                .clone()
                .unwrap_or_else(|| crossgate_broker::config::overrides_file(&args.config)),
            limiter: None,
            metrics: None,
        },
    )?;
    // The port opens once the broker is built: the configuration it holds
    // (and the digests a reload compares with) is then what any caller or
    // signal that sees the port open finds in force.
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e}; is another broker running? set listen in broker.toml or --listen",
            config.listen
        )
    })?;
    println!(
        "broker listening on https://{} (mutual TLS; certificates in {})",
        config.listen,
        config.certs.display()
    );
    println!(
        "audit log: {} ({}, chain {})",
        crossgate_config::redact_url(&config.audit.store),
        config.audit.durability,
        config.audit.writer
    );
    if let Some(cluster) = &config.cluster {
        println!(
            "replicas: limits and operators' changes shared through {} (namespace {}, {} replicas, \
             partners fail {} while it is unreachable{})",
            crossgate_config::redact_url(&cluster.redis),
            cluster.namespace,
            cluster.replicas,
            cluster.on_redis_down.as_str(),
            if cluster.on_redis_down_for.is_empty() {
                String::new()
            } else {
                format!(
                    "; {}",
                    cluster
                        .on_redis_down_for
                        .iter()
                        .map(|(p, m)| format!("{p} {}", m.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if config.audit.shares_store() {
        println!(
            "deliveries: leased to this replica for {:?} at a time (another takes them over if it dies)",
            config.delivery.lease
        );
    }
    if let Some(metrics) = config.metrics_address() {
        println!("metrics: http://{metrics}/metrics (Prometheus)");
    }
    if let Some(health) = config.health_listen {
        println!("health (grpc.health.v1 only, plain text) on {health}");
    }
    println!(
        "checkpoints signed by {} ({}), every {:?} into {}",
        checkpoints.public_key(),
        config
            .certs
            .join(crossgate_tls::CHECKPOINT_PUBLIC_FILE)
            .display(),
        config.audit.checkpoint_every,
        config.audit.checkpoints.display()
    );
    // SIGHUP re-reads limits.toml and catalog.toml; an invalid file is refused
    // and the old one stays.
    #[cfg(unix)]
    {
        let reloader = broker.clone();
        let mut hangups = hangups;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                for said in reloader.reload_on_signal().await {
                    match said {
                        Ok(applied) => tracing::info!("{applied}"),
                        Err(refused) => tracing::warn!("{refused}"),
                    }
                }
            }
        });
    }
    // SIGTERM or Ctrl-C: drain within broker.toml's shutdown_grace, exit 0.
    crossgate_broker::serve(broker, tls, listener, async {
        stop.await;
        tracing::info!(
            "stopping (up to {:?}): calls in flight finish, deliveries under way are recorded",
            config.shutdown_grace
        );
    })
    .await
    .map_err(|e| CliError {
        code: ExitCode::Failed,
        message: format!("broker stopped: {e}"),
    })?;
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}
