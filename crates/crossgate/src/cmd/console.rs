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
    /// Where to serve the pages: a loopback address, or any address with
    /// --tls-cert (HTTPS for auditors' certificates)
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (PEM, signed by the deployment's
    /// CA); clients must present an auditor's certificate of that CA
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Over a store, each page view is written to the log in a chain of
    /// this name (as the broker writes each reading through its Audit
    /// service); two consoles on one log need two names
    #[arg(long, default_value = "console")]
    pub writer: String,
    /// Over a store: the key of the log's record-id digests (from `crossgate
    /// certs id-key`) [default: derived from the secret in the certificate
    /// folder of --config's broker]
    #[arg(long, value_name = "FILE")]
    pub id_key: Option<std::path::PathBuf>,
    /// The key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
}

pub async fn run(args: ConsoleArgs) -> CliResult {
    let stop = crate::cmd::stop_signal();
    let telemetry = crate::telemetry("crossgate-console", None).await?;
    if !args.listen.ip().is_loopback() && args.tls_cert.is_none() {
        return Err(format!(
            "--listen {}: in plain HTTP the console serves this machine's loopback only (e.g. \
             127.0.0.1:7400); for a network give --tls-cert and --tls-key (HTTPS, auditors' \
             client certificates of the deployment's CA)",
            args.listen
        )
        .into());
    }
    let https = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(https(&args, cert, key)?),
        _ => None,
    };
    let (console, over) = match (&args.store, &args.conn.broker) {
        (Some(_), Some(_)) => {
            return Err("give --store or --broker, not both".into());
        }
        (None, Some(_)) if https.is_some() => {
            return Err(
                "over HTTPS give --store: the console then writes each auditor's page views under \
                 their name; through --broker every view would be logged under the console's own \
                 certificate"
                    .into(),
            );
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
            // Opened now, so that a wrong store is said at once; page
            // views are written to the console's own chain.
            let opened = crossgate_audit::open(&store).map_err(|e| {
                format!(
                    "cannot open the audit log {}: {e}",
                    crossgate_config::redact_url(&store)
                )
            })?;
            let readings = crossgate_audit::Writer::start(
                opened,
                args.writer.clone(),
                crossgate_audit::Durability::Durable,
                64,
            )
            .map_err(|e| format!("{e}; or give this console another --writer"))?;
            let over = format!(
                "{} (page views written to chain {})",
                crossgate_config::redact_url(&store),
                args.writer
            );
            let mut console =
                crossgate_console::Console::over_store(store).auditing_readings(readings);
            match crate::cmd::audit::record_id_key(&args.conn.config, args.id_key.as_deref()) {
                Ok(key) => console = console.with_record_id_key(key),
                // A key asked for and not usable is refused, not passed over.
                Err(why) if args.id_key.is_some() => return Err(why.into()),
                Err(why) => eprintln!(
                    "record ids: {why}; a search by record id finds only a digest as entries \
                     show it (id:...) and entries written before digests"
                ),
            }
            (console, over)
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
    let address = listener.local_addr()?;
    match https {
        Some((tls, admit)) => {
            println!(
                "audit console: https://{address}/ (read-only; auditors' client certificates) over {over}"
            );
            println!("Ctrl-C stops it.");
            crossgate_console::serve_tls(listener, console, tls, admit, stop).await;
        }
        None => {
            println!("audit console: http://{address}/ (read-only) over {over}");
            println!("Ctrl-C stops it.");
            crossgate_console::serve(listener, console, stop).await;
        }
    }
    telemetry.shutdown().await;
    Ok(ExitCode::Ok)
}

/// The HTTPS configuration (client certificates of the CA required) and
/// who is admitted: a party of partners.toml with the auditor role,
/// identified from its verified certificate (and, with broker.toml's crls,
/// not revoked).
fn https(
    args: &ConsoleArgs,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<
    (
        std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
        crossgate_console::Admit,
    ),
    crate::CliError,
> {
    let broker = crossgate_broker::BrokerConfig::load(&args.conn.config)?;
    let ca = args
        .conn
        .ca
        .clone()
        .unwrap_or_else(|| broker.certs.join("ca.pem"));
    let bundle = crossgate_tls::Bundle::from_files(cert, key, &ca)?;
    let tls = bundle.https_server()?;
    let revocation = crossgate_tls::revocation::Revocation::load(&bundle.ca_pem, &broker.crls)?
        .map(std::sync::Arc::new);
    let identities = crossgate_tls::peers::Identities::new(revocation);
    let auditors: std::collections::HashSet<String> =
        crossgate_broker::deployment::read_partners(&args.conn.config)?
            .into_iter()
            .filter(|p| p.role == crossgate_policy::Role::Auditor)
            .map(|p| p.id)
            .collect();
    let admit: crossgate_console::Admit = std::sync::Arc::new(move |chain| {
        let id = identities
            .identify(Some(chain))
            .map_err(|why| why.to_string())?;
        if auditors.contains(id.as_ref()) {
            Ok(id.to_string())
        } else {
            Err(format!("{id} is not an auditor in partners.toml"))
        }
    });
    Ok((tls, admit))
}
