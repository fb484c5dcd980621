//! `crossgate submit`: hand native records to a department's adapter as
//! that department's system would (`Ingress.Submit`, with the department's
//! certificate), and print where each went.

use crate::{CliError, CliResult, ExitCode};
use clap::Args;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::{NativeRecord, SubmitRequest};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The submitting department, e.g. customs
    #[arg(long)]
    pub department: String,
    /// Configuration folder (partners.toml for the adapter's address, broker.toml for certificates)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    /// The adapter [default: the department's address in partners.toml]
    #[arg(long)]
    pub adapter: Option<String>,
    /// Certificate folder with <department>.pem/.key and ca.pem [default: certs of broker.toml]
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Native type of the records [default: found from each record]
    #[arg(long = "type", value_name = "NATIVE_TYPE")]
    pub native_type: Option<String>,
    /// JSON Lines file of native records
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// One line per record: `record <n>: request <id>: <receiver> <outcome>, ...`;
/// a refused record as `<file>:<line>: refused: ...` on stderr.
/// Exit 0 when every record was accepted, 1 when one was refused, 2 on usage errors.
pub async fn run(args: SubmitArgs) -> CliResult {
    let config = crossgate_broker::BrokerConfig::load(&args.config)?;
    let certs = args.certs.clone().unwrap_or(config.certs.clone());
    let tls = crossgate_tls::Bundle::load(&certs, &args.department)?;
    let address = match &args.adapter {
        Some(a) => a.clone(),
        None => crossgate_broker::deployment::read_partners(&args.config)?
            .into_iter()
            .find(|p| p.id == args.department)
            .and_then(|p| p.adapter)
            .map(|a| format!("https://{a}"))
            .ok_or_else(|| {
                format!(
                    "{} has no adapter address in {}; give --adapter",
                    args.department,
                    args.config.join("partners.toml").display()
                )
            })?,
    };
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .map_err(|e| format!("bad adapter address {address:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tls_config(tls.client_for(&args.department))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot reach the adapter at {address}: {e}"))?;
    let mut ingress = IngressClient::new(channel);
    let mut refused = 0;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{}:{}", args.file.display(), n + 1);
        let record = format!("record {}", n + 1);
        let reply = ingress
            .submit(SubmitRequest {
                record: Some(NativeRecord {
                    native_type: args.native_type.clone().unwrap_or_default(),
                    record_id: String::new(),
                    json: line.as_bytes().to_vec(),
                }),
                ..Default::default()
            })
            .await;
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                let went: Vec<String> = reply
                    .deliveries
                    .iter()
                    .map(|d| format!("{} {}", d.receiver, d.outcome))
                    .collect();
                println!(
                    "{record}: request {}{}: {}",
                    reply.request_id,
                    if reply.repeat { " (a repeat)" } else { "" },
                    if went.is_empty() {
                        "no receiver".to_owned()
                    } else {
                        went.join(", ")
                    }
                );
            }
            Err(status) => {
                refused += 1;
                eprintln!("{at}: refused: {:?}: {}", status.code(), status.message());
            }
        }
    }
    if refused > 0 {
        return Err(CliError {
            code: ExitCode::Failed,
            message: format!("{refused} record(s) refused"),
        });
    }
    Ok(ExitCode::Ok)
}
