//! `crossgate audit search|verify`: the auditor's tools, working directly on
//! a log's store.

use crate::ExitCode;
use clap::{Args, Subcommand, ValueEnum};
use crossgate_audit::{Filter, Stored, entry::hex};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
    /// The log's store, e.g. sqlite:.crossgate/audit.db [default: [audit] store of broker.toml]
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// Configuration folder, for the default store
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "deploy/local"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Entries matching every given filter, oldest first.
    Search {
        #[command(flatten)]
        filter: Box<FilterArgs>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Check every chain; exit 1 naming the first bad entry if anything was
    /// edited, deleted, inserted or reordered.
    Verify,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// From this instant (RFC 3339, inclusive)
    #[arg(long)]
    since: Option<String>,
    /// Until this instant (RFC 3339, exclusive)
    #[arg(long)]
    until: Option<String>,
    /// As consumer or provider
    #[arg(long)]
    partner: Option<String>,
    #[arg(long)]
    consumer: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long = "type")]
    record_type: Option<String>,
    #[arg(long)]
    record_id: Option<String>,
    #[arg(long)]
    purpose: Option<String>,
    /// allowed, denied, throttled, invalid, delivered, failed, changed
    #[arg(long)]
    decision: Option<String>,
}

fn json_line(s: &Stored) -> String {
    let e = &s.entry;
    serde_json::json!({
        "writer": s.writer, "sequence": s.sequence, "time": e.time, "request_id": e.request_id,
        "kind": e.kind, "consumer": e.consumer, "provider": e.provider, "record_type": e.record_type,
        "record_id": e.record_id, "purpose": e.purpose, "approval_reference": e.approval_reference,
        "decision": e.decision.as_str(), "reason": e.reason, "released_fields": e.released_fields,
        "record_digest": e.record_digest, "latency_micros": e.latency_micros,
        "previous_hash": hex(&s.previous_hash), "entry_hash": hex(&s.entry_hash),
    })
    .to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn run(args: AuditArgs) -> ExitCode {
    let spec = match &args.store {
        Some(s) => s.clone(),
        None => match crossgate_broker::BrokerConfig::load(&args.config) {
            Ok(c) => c.audit.store,
            Err(e) => {
                eprintln!("crossgate: {e}");
                return ExitCode::Usage;
            }
        },
    };
    let mut store = match crossgate_broker::config::open_store(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crossgate: {e}");
            return ExitCode::Usage;
        }
    };
    match args.command {
        AuditCommand::Verify => match crossgate_audit::verify(store.as_mut()) {
            Ok(reports) => {
                let mut ok = true;
                for r in &reports {
                    match &r.broken {
                        None => println!("chain {}: {} entries verified", r.writer, r.checked),
                        Some((sequence, why)) => {
                            ok = false;
                            println!(
                                "chain {}: entry {sequence} does not verify: {why}",
                                r.writer
                            );
                        }
                    }
                }
                if reports.is_empty() {
                    println!("the log is empty");
                }
                if ok { ExitCode::Ok } else { ExitCode::Failed }
            }
            Err(e) => {
                eprintln!("crossgate: {e}");
                ExitCode::Usage
            }
        },
        AuditCommand::Search { filter, format } => {
            let f = Filter {
                since: filter.since,
                until: filter.until,
                partner: filter.partner,
                consumer: filter.consumer,
                provider: filter.provider,
                record_type: filter.record_type,
                record_id: filter.record_id,
                purpose: filter.purpose,
                decision: filter.decision,
                chain_order: false,
            };
            let mut out = std::io::stdout().lock();
            match format {
                Format::Table => {
                    let _ = writeln!(
                        out,
                        "{:<27} {:<6} {:<18} {:<18} {:<22} {:<18} {:<10} RELEASED",
                        "TIME", "KIND", "CONSUMER", "PROVIDER", "TYPE", "PURPOSE", "DECISION"
                    );
                }
                Format::Csv => {
                    let _ = writeln!(
                        out,
                        "time,writer,sequence,kind,consumer,provider,record_type,record_id,purpose,approval_reference,decision,reason,released_fields,record_digest"
                    );
                }
                Format::Jsonl => {}
            }
            let result = store.scan(&f, &mut |s| {
                let e = &s.entry;
                let line = match format {
                    Format::Jsonl => json_line(&s),
                    Format::Table => format!(
                        "{:<27} {:<6} {:<18} {:<18} {:<22} {:<18} {:<10} {}",
                        e.time,
                        e.kind,
                        e.consumer,
                        e.provider,
                        e.record_type,
                        e.purpose,
                        e.decision.as_str(),
                        e.released_fields.join(" ")
                    ),
                    Format::Csv => [
                        e.time.clone(),
                        s.writer.clone(),
                        s.sequence.to_string(),
                        e.kind.clone(),
                        e.consumer.clone(),
                        e.provider.clone(),
                        e.record_type.clone(),
                        e.record_id.clone(),
                        e.purpose.clone(),
                        e.approval_reference.clone(),
                        e.decision.as_str().to_owned(),
                        e.reason.clone(),
                        e.released_fields.join(" "),
                        e.record_digest.clone(),
                    ]
                    .iter()
                    .map(|f| csv_field(f))
                    .collect::<Vec<_>>()
                    .join(","),
                };
                writeln!(out, "{line}").is_ok()
            });
            match result {
                Ok(()) => ExitCode::Ok,
                Err(e) => {
                    eprintln!("crossgate: {e}");
                    ExitCode::Usage
                }
            }
        }
    }
}
