//! `crossgate broker`: run the broker from a config folder.

use crate::ExitCode;
use crate::cmd::schema::{SchemasDir, load};
use clap::Args;
use crossgate_broker::Broker;
use crossgate_broker::deployment::{AuditChoice, Deployment, Wiring, read_partners};
use crossgate_policy::Partner;
use std::path::{Path, PathBuf};
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

pub fn load_partners(config: &Path) -> Result<Vec<Partner>, String> {
    read_partners(config).map_err(|e| e.to_string())
}

pub fn run(args: BrokerArgs) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run_async(args)),
        Err(e) => {
            eprintln!("crossgate: cannot start the async runtime: {e}");
            ExitCode::Usage
        }
    }
}

async fn run_async(args: BrokerArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("crossgate: {e}");
        ExitCode::Usage
    };
    let registry = match load(&args.dir) {
        Ok(r) => Arc::new(r),
        Err(code) => return code,
    };
    let mut dep = match Deployment::load(&args.config, registry) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(l) = args.listen {
        dep.config.listen = l;
    }
    if let Some(c) = args.certs {
        dep.config.certs = c;
    }
    let config = dep.config.clone();
    let tls = match crossgate_tls::Bundle::load(&config.certs, "broker") {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let references = match crossgate_broker::config::load_reference_key(&config.certs) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "cannot listen on {}: {e}; is another broker running? set listen in broker.toml or --listen",
                config.listen
            ));
        }
    };
    println!(
        "broker listening on https://{} (mutual TLS; certificates in {})",
        config.listen,
        config.certs.display()
    );
    let broker = match Broker::from_deployment(
        dep,
        Wiring {
            tls: tls.clone(),
            references,
            audit: AuditChoice::Store(config.audit.clone()),
            overrides_file: crossgate_broker::config::overrides_file(&args.config),
            limiter: None,
        },
    ) {
        Ok(b) => b,
        Err(e) => return fail(e.to_string()),
    };
    println!(
        "audit log: {} ({}, chain {})",
        config.audit.store, config.audit.durability, config.audit.writer
    );
    // SIGHUP re-reads limits.toml; an invalid file is refused and the old limits stay.
    #[cfg(unix)]
    {
        let reloader = broker.clone();
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hangups.recv().await.is_some() {
                match reloader.reload_limits_file() {
                    Ok(m) => eprintln!("crossgate: {m}"),
                    Err(e) => eprintln!("crossgate: limits not reloaded: {e}"),
                }
            }
        });
    }
    match crossgate_broker::serve(broker, tls, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("crossgate: broker stopped: {e}");
            ExitCode::Failed
        }
    }
}
