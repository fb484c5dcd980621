//! `crossgate adapter`: run one department's adapter (and, unless told where
//! the department's own system is, a reference system seeded from fixtures).

use crate::ExitCode;
use crate::cmd::schema::{SchemasDir, load};
use clap::Args;
use crossgate_adapter::system::ReferenceSystem;
use crossgate_adapter::{Adapter, lazy_channel, serve, serve_system};
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
    /// Address to serve Ingress and Department on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The broker's address
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub broker: String,
    /// The department system's address [default: a reference system seeded
    /// from <config>/fixtures/<department>, run in this process]
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(args: AdapterArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crossgate: cannot start the async runtime: {e}");
            return ExitCode::Usage;
        }
    };
    runtime.block_on(run_async(args))
}

async fn run_async(args: AdapterArgs) -> ExitCode {
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
    let system_uri = match &args.system {
        Some(uri) => uri.clone(),
        None => {
            let system = ReferenceSystem::new();
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
    let (broker, system) = match (lazy_channel(&args.broker), lazy_channel(&system_uri)) {
        (Ok(b), Ok(s)) => (b, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("crossgate: bad address: {e}");
            return ExitCode::Usage;
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "crossgate: cannot listen on {}: {e}; is another crossgate running? choose another --listen",
                args.listen
            );
            return ExitCode::Usage;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "adapter {} listening on http://{addr} (Ingress, Department); broker {}",
        args.department, args.broker
    );
    let adapter = Adapter::new(mapping, registry, broker, system);
    match serve(adapter, listener, shutdown_signal()).await {
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
