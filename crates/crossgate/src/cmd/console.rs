//! `crossgate console`: the auditor's read-only web console over the
//! access log, on this machine's loopback — read from the store, or
//! through the broker's Audit service with an auditor's certificate (then
//! the broker writes each page's reading to the log).

use crate::{CliResult, ExitCode};
use clap::Args;
use std::net::SocketAddr;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The log's store, e.g. sqlite:.crossgate/audit.db [default: [audit]
    /// store of broker.toml]; leave it out and give --broker to read
    /// through the broker
    #[arg(long)]
    pub store: Option<String>,
    /// Where to serve the pages: a loopback address
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
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
    let (console, over) = match (&args.store, &args.conn.broker) {
        (Some(_), Some(_)) => {
            return Err("give --store or --broker, not both".into());
        }
        (None, Some(broker)) => {
            let channel = args.conn.channel("audit-office").await?;
            (
                crossgate_console::Console::over_broker(
                    crossgate_proto::audit_client::AuditClient::new(channel),
                ),
                format!("the broker at {broker} (each page's reading is audited)"),
            )
        }
        (store, None) => {
            let store = match store {
                Some(s) => s.clone(),
                None => {
                    crossgate_broker::BrokerConfig::load(&args.conn.config)?
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
            let over = crossgate_config::redact_url(&store);
            (crossgate_console::Console::over_store(store), over)
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; choose another --listen",
                args.listen
            )
        })?;
    println!(
        "audit console: http://{}/ (read-only) over {over}",
        listener.local_addr()?
    );
    println!("Ctrl-C stops it.");
    crossgate_console::serve(listener, console, stop).await;
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}
