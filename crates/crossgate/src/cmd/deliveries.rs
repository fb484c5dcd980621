//! `crossgate deliveries list|replay|purge`: what the broker still owes
//! receivers, through its `Admin` service (operator role). Every action is
//! audited by the broker.

use crate::output::printable;
use crate::{CliError, CliResult, ExitCode};
use clap::{Args, Subcommand};
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::{ListUndeliveredRequest, PurgeRequest, ReplayRequest, Undelivered};

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    #[command(subcommand)]
    pub command: DeliveriesCommand,
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Undelivered items, oldest first: queued (being retried) and dead (given up).
    List {
        /// Only this receiver's items
        #[arg(long)]
        receiver: Option<String>,
        /// queued or dead [default: both]
        #[arg(long)]
        state: Option<String>,
        /// Only items at least this old, e.g. 10min, 2h
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// At most this many [default: 1000]
        #[arg(long)]
        limit: Option<u32>,
        /// table or jsonl
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Queue items again and try them at once: named items, a receiver's dead items, or everything undelivered since a time.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "receiver", "since"])))]
    Replay {
        /// A delivery id (repeatable)
        #[arg(long = "id", value_name = "DELIVERY_ID")]
        id: Vec<String>,
        /// Every dead item of this receiver
        #[arg(long)]
        receiver: Option<String>,
        /// Every undelivered item accepted since this RFC 3339 time
        #[arg(long)]
        since: Option<String>,
    },
    /// Drop undelivered items for good, with a reason (audited).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "receiver"])))]
    Purge {
        /// A delivery id (repeatable)
        #[arg(long = "id", value_name = "DELIVERY_ID")]
        id: Vec<String>,
        /// Every dead item of this receiver
        #[arg(long)]
        receiver: Option<String>,
        /// Why, for the audit log
        #[arg(long)]
        reason: String,
    },
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    crossgate_config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not an age; write e.g. 30s, 10min, 2h, 1d"))
}

fn print_table(items: &[Undelivered]) {
    println!(
        "{:<34} {:<18} {:<16} {:<24} {:<7} {:>8} {:<27} LAST ERROR",
        "DELIVERY", "RECEIVER", "PROVIDER", "TYPE", "STATE", "ATTEMPTS", "ACCEPTED"
    );
    for i in items {
        println!(
            "{:<34} {:<18} {:<16} {:<24} {:<7} {:>8} {:<27} {}",
            i.delivery_id,
            i.receiver,
            i.provider,
            i.record_type,
            i.state,
            i.attempts,
            i.created,
            printable(&i.last_error)
        );
    }
}

fn json_line(i: &Undelivered) -> String {
    serde_json::json!({
        "delivery_id": i.delivery_id, "receiver": i.receiver, "provider": i.provider,
        "record_type": i.record_type, "state": i.state, "attempts": i.attempts,
        "created": i.created, "next_attempt": i.next_attempt, "last_error": i.last_error,
        "request_id": i.request_id,
    })
    .to_string()
}

pub async fn run(args: DeliveriesArgs) -> CliResult {
    let mut admin = AdminClient::new(args.conn.channel("operations").await?);
    let refused = |status: tonic::Status| CliError {
        code: ExitCode::Failed,
        message: format!(
            "the broker refused: {:?}: {}",
            status.code(),
            status.message()
        ),
    };
    match args.command {
        DeliveriesCommand::List {
            receiver,
            state,
            older_than,
            limit,
            format,
        } => {
            if format != "table" && format != "jsonl" {
                return Err(CliError {
                    code: ExitCode::Usage,
                    message: format!("--format {format:?}: use table or jsonl"),
                });
            }
            let items = admin
                .list_undelivered(ListUndeliveredRequest {
                    receiver: receiver.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    min_age_seconds: older_than.map_or(0, |d| d.as_secs().max(1)),
                    limit: limit.unwrap_or(0),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .items;
            if format == "jsonl" {
                items.iter().for_each(|i| println!("{}", json_line(i)));
            } else {
                print_table(&items);
            }
        }
        DeliveriesCommand::Replay {
            id,
            receiver,
            since,
        } => {
            let reply = admin
                .replay(ReplayRequest {
                    delivery_ids: id,
                    receiver: receiver.unwrap_or_default(),
                    since: since.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            println!("{} item(s) queued again", reply.requeued);
            reply.delivery_ids.iter().for_each(|id| println!("{id}"));
        }
        DeliveriesCommand::Purge {
            id,
            receiver,
            reason,
        } => {
            let reply = admin
                .purge(PurgeRequest {
                    delivery_ids: id,
                    receiver: receiver.unwrap_or_default(),
                    reason,
                })
                .await
                .map_err(refused)?
                .into_inner();
            println!("{} item(s) purged", reply.purged);
            reply.delivery_ids.iter().for_each(|id| println!("{id}"));
        }
    }
    Ok(ExitCode::Ok)
}
