//! `crossgate`: the one binary of the cross-department data-sharing gateway.
#![forbid(unsafe_code)]

mod cmd;
mod input;

use clap::{Parser, Subcommand};

/// Exit codes scripts can trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything succeeded.
    Ok = 0,
    /// The command ran, and some record was invalid or some step failed.
    Failed = 1,
    /// Usage, configuration or I/O error: nothing was judged.
    Usage = 2,
}

#[derive(Debug, Parser)]
#[command(
    name = "crossgate",
    version,
    about = "Cross-department data-sharing gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Canonical record schemas: validate records, list record types.
    #[command(subcommand)]
    Schema(cmd::schema::SchemaCommand),
    /// Map a department's native records to canonical records (or back).
    Map(cmd::map::MapArgs),
    /// Run one department's adapter.
    Adapter(cmd::adapter::AdapterArgs),
    /// The sharing catalog: check what it decides.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Run the broker.
    Broker(cmd::broker::BrokerArgs),
    /// Per-partner rate limits, live, through the broker (operator role).
    Limits(cmd::limits::LimitsArgs),
    /// Run the broker and every department's adapter and system until Ctrl-C.
    Up(cmd::up::UpArgs),
    /// Start the whole system in this process and play the scenarios.
    Demo(cmd::demo::DemoArgs),
    /// The audit log: search it, verify its chains.
    Audit(cmd::audit::AuditArgs),
    /// Certificates: make development ones.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Schema(c) => cmd::schema::run(c),
        Command::Map(args) => cmd::map::run(args),
        Command::Adapter(args) => cmd::adapter::run(args),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Broker(args) => cmd::broker::run(args),
        Command::Certs(c) => cmd::certs::run(c),
        Command::Limits(args) => cmd::limits::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Up(args) => cmd::up::run(args),
    };
    std::process::ExitCode::from(code as u8)
}
