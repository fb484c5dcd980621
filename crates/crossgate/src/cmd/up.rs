//! `crossgate up`: the broker, every department's adapter and its reference
//! system, on the configured loopback addresses, until Ctrl-C.

use crate::{CliResult, ExitCode};
use clap::Args;
use crossgate_local::{LocalSystem, Options};
use crossgate_policy::Role;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Configuration folder (broker.toml, partners.toml, catalog.toml, limits.toml, departments/)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    /// Folder for the adapters' own state: the delivery ids each has passed
    /// on (<department>.delivered.db). Two `up`s with one folder share these
    /// files: give each its own.
    #[arg(long, value_name = "DIR", default_value = ".crossgate/adapters")]
    pub state: PathBuf,
}

/// Development certificates (and, on first start, the broker's secrets
/// beside them) in the configured folder, made if it holds none.
pub fn dev_certificates(
    dir: &std::path::Path,
    config: &crossgate_broker::BrokerConfig,
) -> Result<(), crate::CliError> {
    if !config.certs.join("ca.pem").exists() {
        crate::cmd::certs::generate(dir, &config.certs)?;
        println!(
            "made development certificates in {}",
            config.certs.display()
        );
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> CliResult {
    let stop = crate::cmd::stop_signal();
    let config = crossgate_broker::BrokerConfig::load(&args.config)?;
    let telemetry = crate::telemetry("crossgate", config.otlp_endpoint.clone()).await?;
    let partners = crossgate_broker::deployment::read_partners(&args.config)?;
    dev_certificates(&args.config, &config)?;
    let mut opts = Options::project_defaults();
    opts.config = args.config.clone();
    if std::path::Path::new("schemas").is_dir() {
        opts.schemas = PathBuf::from("schemas");
    }
    opts.certs = Some(config.certs.clone());
    opts.ephemeral_ports = false;
    opts.audit_store = Some(config.audit.store.clone());
    opts.adapter_state = Some(args.state.clone());
    let sys = LocalSystem::start(opts).await?;
    println!(
        "crossgate is up (mutual TLS everywhere; certificates in {})",
        config.certs.display()
    );
    println!("  broker             https://{}", sys.broker_addr);
    let mut adapters: Vec<(&String, &String)> = sys.adapter_addrs.iter().collect();
    adapters.sort();
    for (id, addr) in adapters {
        println!("  adapter {id:<18} https://{addr}   (department system: {id}.pem)");
    }
    println!(
        "  audit log          {}",
        crossgate_config::redact_url(&config.audit.store)
    );
    if let Some(metrics) = config.metrics_address() {
        println!("  metrics            http://{metrics}/metrics (Prometheus; broker and adapters)");
    }
    for p in partners.iter().filter(|p| p.role != Role::Partner) {
        println!(
            "  {:<18} {}/{}.pem",
            p.role.as_str(),
            config.certs.display(),
            p.id
        );
    }
    println!("Ctrl-C stops it.");
    stop.await;
    println!(
        "stopping (up to {:?}): in-flight calls finish, deliveries under way are recorded",
        config.shutdown_grace
    );
    sys.stop().await;
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}
