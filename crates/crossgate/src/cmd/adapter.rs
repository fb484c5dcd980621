//! `crossgate adapter`: run one department's adapter (and, unless told where
//! the department's own system is, a reference system seeded from fixtures).

use crate::ExitCode;
use crate::cmd::schema::{SchemasDir, load};
use clap::Args;
use crossgate_adapter::system::ReferenceSystem;
use crossgate_adapter::{Adapter, Peers, lazy_channel, lazy_tls_channel, serve_system, serve_tls};
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
    /// The broker's address [default: https://<listen of broker.toml>]
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
}

pub async fn run(args: AdapterArgs) -> ExitCode {
    let registry = match load(&args.dir) {
        Ok(r) => Arc::new(r),
        Err(code) => return code,
    };
    let mapping =
        match crossgate_adapter::config::load_department(&args.config, &args.department, &registry)
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("crossgate: {e}");
                return ExitCode::Usage;
            }
        };
    let broker_config = match crossgate_broker::BrokerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crossgate: {e}");
            return ExitCode::Usage;
        }
    };
    let certs = args.certs.clone().unwrap_or(broker_config.certs.clone());
    let tls = match crossgate_tls::Bundle::load(&certs, &args.department) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("crossgate: {e}");
            return ExitCode::Usage;
        }
    };
    let listen = match args.listen {
        Some(l) => l,
        None => {
            let configured = crossgate_broker::deployment::read_partners(&args.config)
                .ok()
                .and_then(|ps| ps.into_iter().find(|p| p.id == args.department))
                .and_then(|p| p.adapter)
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match configured {
                Some(a) => a,
                None => {
                    eprintln!(
                        "crossgate: {} has no adapter address in {}; give --listen",
                        args.department,
                        args.config.join("partners.toml").display()
                    );
                    return ExitCode::Usage;
                }
            }
        }
    };
    let broker_uri = args
        .broker
        .clone()
        .unwrap_or_else(|| format!("https://{}", broker_config.listen));
    let system_uri = match &args.system {
        Some(uri) => uri.clone(),
        None => {
            let mut system = ReferenceSystem::new();
            if let Some(inbox) = &args.inbox {
                system = system.with_inbox(inbox.clone());
            }
            let seeds = args.config.join("fixtures").join(&args.department);
            let seeded = if seeds.is_dir() {
                match system.seed_dir(&seeds) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!(
                            "crossgate: cannot seed the reference system from {}: {e}",
                            seeds.display()
                        );
                        return ExitCode::Usage;
                    }
                }
            } else {
                0
            };
            let listener = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "crossgate: cannot open a loopback port for the reference system: {e}"
                    );
                    return ExitCode::Usage;
                }
            };
            let uri = match listener.local_addr() {
                Ok(a) => format!("http://{a}"),
                Err(e) => {
                    eprintln!("crossgate: {e}");
                    return ExitCode::Usage;
                }
            };
            println!(
                "reference department system for {}: {uri} ({seeded} records)",
                args.department
            );
            tokio::spawn(serve_system(system, listener, shutdown_signal()));
            uri
        }
    };
    let (broker, system) = match (
        lazy_tls_channel(&broker_uri, Some(tls.client())),
        lazy_channel(&system_uri),
    ) {
        (Ok(b), Ok(s)) => (b, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("crossgate: bad address: {e}");
            return ExitCode::Usage;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "crossgate: cannot listen on {listen}: {e}; is another crossgate running? choose another --listen"
            );
            return ExitCode::Usage;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "adapter {} listening on https://{addr} (Ingress, Department; mutual TLS); broker {broker_uri}",
        args.department
    );
    let adapter = Adapter::new(mapping, registry, broker, system).with_peers(Peers {
        broker: "broker".into(),
    });
    match serve_tls(adapter, listener, Some(tls.server()), shutdown_signal()).await {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("crossgate: adapter stopped: {e}");
            ExitCode::Failed
        }
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
