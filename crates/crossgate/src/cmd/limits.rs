//! `crossgate limits list|get|set|reset|reload`: an operator's view of, and
//! hand on, per-partner rate limits, through the broker's `Admin` service.

use crate::{CliError, CliResult, ExitCode};
use clap::{Args, Subcommand};
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::{
    GetLimitRequest, ListLimitsRequest, PartnerLimit, Rate, ReloadRequest, SetLimitRequest,
};

#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub command: LimitsCommand,
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Every partner: rate, burst, active window, calls allowed and throttled in the last minute.
    List,
    /// One partner's limits.
    Get { partner: String },
    /// Set a partner's limit, live (kept across restarts).
    Set {
        partner: String,
        /// e.g. 500/s, 12000/min
        #[arg(long)]
        rate: String,
        #[arg(long)]
        burst: u32,
        /// publish or query [default: both]
        #[arg(long)]
        mode: Option<String>,
    },
    /// Back to limits.toml for a partner.
    Reset { partner: String },
    /// Re-read limits.toml (an invalid file is refused and the old limits stay).
    Reload,
}

fn print_table(limits: &[PartnerLimit]) {
    println!(
        "{:<20} {:>10} {:>6} {:>10} {:>6} {:<13} {:>10} {:>10} SOURCE",
        "PARTNER", "RATE", "BURST", "QUERY", "BURST", "WINDOW", "ALLOWED/1m", "THROTTLED/1m"
    );
    let rate = |r: &Option<Rate>| {
        r.as_ref()
            .map(|r| (r.rate.clone(), r.burst))
            .unwrap_or_default()
    };
    for l in limits {
        let (pr, pb) = rate(&l.publish);
        let (qr, qb) = rate(&l.query);
        let window = if l.active_window.is_empty() {
            "-"
        } else {
            &l.active_window
        };
        println!(
            "{:<20} {:>10} {:>6} {:>10} {:>6} {:<13} {:>10} {:>12} {}",
            l.partner,
            pr,
            pb,
            qr,
            qb,
            window,
            l.allowed_last_minute,
            l.throttled_last_minute,
            l.source
        );
    }
}

pub async fn run(args: LimitsArgs) -> CliResult {
    let mut admin = AdminClient::new(args.conn.channel("operations").await?);
    let result = match args.command {
        LimitsCommand::List => admin
            .list_limits(ListLimitsRequest {})
            .await
            .map(|r| print_table(&r.into_inner().limits)),
        LimitsCommand::Get { partner } => admin
            .get_limit(GetLimitRequest { partner })
            .await
            .map(|r| print_table(&[r.into_inner()])),
        LimitsCommand::Set {
            partner,
            rate,
            burst,
            mode,
        } => admin
            .set_limit(SetLimitRequest {
                partner,
                mode: mode.unwrap_or_default(),
                limit: Some(Rate { rate, burst }),
            })
            .await
            .map(|r| print_table(&[r.into_inner()])),
        LimitsCommand::Reset { partner } => admin
            .reset_limit(GetLimitRequest { partner })
            .await
            .map(|r| print_table(&[r.into_inner()])),
        LimitsCommand::Reload => match admin.reload_limits(ReloadRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.applied {
                    println!("{}", r.message);
                    return Ok(ExitCode::Ok);
                }
                return Err(CliError {
                    code: ExitCode::Failed,
                    message: r.message,
                });
            }
            Err(s) => Err(s),
        },
    };
    result.map_err(|status| CliError {
        code: ExitCode::Failed,
        message: format!(
            "the broker refused: {:?}: {}",
            status.code(),
            status.message()
        ),
    })?;
    Ok(ExitCode::Ok)
}
