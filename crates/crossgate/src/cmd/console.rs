//! `crossgate console`: the auditor's read-only web console over the
//! access log, on this machine's loopback.

use crate::{CliResult, ExitCode};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The log's store, e.g. sqlite:.crossgate/audit.db [default: [audit] store of broker.toml]
    #[arg(long)]
    pub store: Option<String>,
    /// Configuration folder (for the default store)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    /// Where to serve the pages: a loopback address
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
}

pub async fn run(args: ConsoleArgs) -> CliResult {
    let stop = crate::cmd::stop_signal();
    let telemetry = crate::telemetry("crossgate-console", None).await?;
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: the console serves this machine's loopback only (e.g. 127.0.0.1:7400); \
             serving it to a network, over HTTPS with auditors' client certificates, is not built yet",
            args.listen
        )
        .into());
    }
    let store = match args.store {
        Some(s) => s,
        None => {
            crossgate_broker::BrokerConfig::load(&args.config)?
                .audit
                .store
        }
    };
    // Opened once now, so that a wrong store is said at once.
    crossgate_audit::open(&store).map_err(|e| {
        format!(
            "cannot open the audit log {}: {e}",
            crossgate_config::redact_url(&store)
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; choose another --listen",
                args.listen
            )
        })?;
    println!(
        "audit console: http://{}/ (read-only) over {}",
        listener.local_addr()?,
        crossgate_config::redact_url(&store)
    );
    println!("Ctrl-C stops it.");
    crossgate_console::serve(listener, crossgate_console::Console { store }, stop).await;
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}
