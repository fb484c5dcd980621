//! `crossgate policy check`: what the catalog decides, and why;
//! `crossgate policy reload`: the running broker re-reads catalog.toml.

use crate::cmd::schema::{SchemasDir, load};
use crate::{CliError, CliResult, ExitCode};
use clap::{Args, Subcommand};
use crossgate_broker::deployment::Deployment;
use crossgate_policy::Ask;
use crossgate_proto::ReloadRequest;
use crossgate_proto::admin_client::AdminClient;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide a query as the broker would: allow (with the released fields)
    /// or deny (with the rule and the reason). Exit 0 allow, 1 deny, 2 config error.
    Check(CheckArgs),
    /// Make the running broker re-read catalog.toml (operator role); an
    /// invalid file is refused with its line and the old catalog stays.
    /// Exit 0 reloaded, 1 refused, 2 cannot connect.
    Reload(ReloadArgs),
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
}

/// `crossgate policy reload`, through the broker's `Admin` service.
pub async fn reload(args: ReloadArgs) -> CliResult {
    let mut admin = AdminClient::new(args.conn.channel("operations").await?);
    let reply = admin
        .reload_catalog(ReloadRequest {})
        .await
        .map_err(|s| CliError {
            code: ExitCode::Failed,
            message: format!("the broker refused: {:?}: {}", s.code(), s.message()),
        })?
        .into_inner();
    if !reply.applied {
        return Err(CliError {
            code: ExitCode::Failed,
            message: reply.message,
        });
    }
    println!("{}", reply.message);
    Ok(ExitCode::Ok)
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub consumer: String,
    #[arg(long)]
    pub provider: String,
    #[arg(long = "type", value_name = "RECORD_TYPE")]
    pub record_type: String,
    #[arg(long)]
    pub purpose: String,
    /// Approval reference, for conditionally shared data
    #[arg(long)]
    pub approval: Option<String>,
    /// A lookup criterion, as the query would send it: a canonical field and
    /// the value, e.g. /household_id=11010567397679 (repeatable)
    #[arg(long = "lookup", value_name = "PATH=VALUE", value_parser = parse_lookup)]
    pub lookups: Vec<(String, String)>,
    /// Decide as of this day (YYYY-MM-DD) [default: today in the catalog's time zone]
    #[arg(long)]
    pub date: Option<chrono::NaiveDate>,
    /// Configuration folder (partners.toml, catalog.toml)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
}

fn parse_lookup(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((path, value)) if path.starts_with('/') => Ok((path.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{text:?}: write a lookup as PATH=VALUE, e.g. /id_number=110105198405049582"
        )),
    }
}

pub fn run(args: CheckArgs) -> CliResult {
    let registry = load(&args.dir).map_err(crate::CliError::exit)?;
    let policy = Deployment::load(&args.config, std::sync::Arc::new(registry))?.policy;
    let today = args
        .date
        .unwrap_or_else(|| policy.today(chrono::Utc::now()));
    let criteria: Vec<(&str, &str)> = args
        .lookups
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_str()))
        .collect();
    let ask = Ask {
        consumer: &args.consumer,
        provider: &args.provider,
        record_type: &args.record_type,
        purpose: &args.purpose,
        approval: args.approval.as_deref(),
        criteria: &criteria,
    };
    match policy.decide_query(&ask, today) {
        Ok(release) => {
            let grant = release.grant;
            println!(
                "allow: {} may query {} for {} for {:?} under grant {}",
                args.consumer, args.provider, args.record_type, args.purpose, grant.id
            );
            println!("  lookups allowed: {}", grant.lookup.join(", "));
            println!("  at most {} record(s) per answer", grant.max_records);
            match &grant.key {
                Some(key) => println!("  record_id: the released field {key}"),
                None => println!(
                    "  record_id: an opaque reference, stable for {} and different for every other consumer",
                    args.consumer
                ),
            }
            if let Some(a) = release.approval {
                println!(
                    "  approval: {} covers {} (valid {} to {}; {}{})",
                    a.reference,
                    a.describe_subject(),
                    a.valid_from,
                    a.valid_until,
                    a.uses
                        .map_or("uses not counted".to_owned(), |n| format!("{n} use(s)")),
                    a.authority
                        .as_ref()
                        .map_or(String::new(), |by| format!("; approved by {by}")),
                );
            }
            let fields = release.fields();
            for (i, f) in fields.iter().enumerate() {
                // A masked field is listed once, with its mask.
                if f.mask.is_none() && fields[i + 1..].iter().any(|g| g.pointer == f.pointer) {
                    continue;
                }
                match &f.mask {
                    Some(m) => println!("  releases {} (masked: {m:?})", f.pointer),
                    None => println!("  releases {}", f.pointer),
                }
            }
            Ok(ExitCode::Ok)
        }
        Err(denial) => {
            println!("deny: {}", denial.reason);
            println!("  rule: {}", denial.rule);
            Ok(ExitCode::Failed)
        }
    }
}
