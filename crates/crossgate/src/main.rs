//! `crossgate`: the one binary of the cross-department data-sharing gateway.
#![forbid(unsafe_code)]

mod cmd;
mod input;
mod output;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: under load the request path spent
/// about 12 % of its CPU in malloc/free and their arena locks (measured
/// figures in the README's performance section).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Why a command stopped early, with the exit code scripts see. Any error
/// converts into one (exit 2: nothing was judged), so commands use `?`.
#[derive(Debug)]
pub struct CliError {
    pub code: ExitCode,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            code: ExitCode::Usage,
            message: e.to_string(),
        }
    }
}

impl CliError {
    /// Print the message as `crossgate: …` and give the exit code, for a
    /// command that reports and goes on.
    pub fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("crossgate: {}", self.message);
        }
        self.code
    }

    /// Leave with `code`; what went wrong has been printed already.
    pub fn exit(code: ExitCode) -> Self {
        CliError {
            code,
            message: String::new(),
        }
    }
}

/// What a command ends with.
pub type CliResult = Result<ExitCode, CliError>;

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
    /// How log lines are written to stderr: text or json (one object per
    /// line); levels come from RUST_LOG [default: info]
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: crossgate_telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`, for the commands that set up logging.
static LOG_FORMAT: std::sync::OnceLock<crossgate_telemetry::LogFormat> = std::sync::OnceLock::new();

/// Logs (and, with an endpoint, traces) for a command that serves; call
/// on the runtime. `service` names the process in traces.
pub async fn telemetry(
    service: &str,
    otlp_endpoint: Option<String>,
) -> Result<crossgate_telemetry::Telemetry, CliError> {
    let telemetry = crossgate_telemetry::init(crossgate_telemetry::Settings {
        log_format: LOG_FORMAT.get().copied().unwrap_or_default(),
        service: service.to_owned(),
        otlp_endpoint,
    })?;
    if let Some(endpoint) = telemetry.endpoint() {
        println!("traces: OTLP to {endpoint} (service {service})");
    }
    Ok(telemetry)
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
    /// Submit native records to a department's adapter, as its system would.
    Submit(cmd::submit::SubmitArgs),
    /// The sharing catalog: check what it decides; reload it in the running broker.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Run the broker.
    Broker(cmd::broker::BrokerArgs),
    /// Per-partner rate limits, live, through the broker (operator role).
    Limits(cmd::limits::LimitsArgs),
    /// A live view per partner: calls/s, throttled/s, errors/s, p99 and the
    /// limit in force, redrawn every second (operator role).
    Top(cmd::top::TopArgs),
    /// Deliveries the broker still owes receivers: list, replay, purge (operator role).
    Deliveries(cmd::deliveries::DeliveriesArgs),
    /// Run the broker and every department's adapter and system until Ctrl-C.
    Up(cmd::up::UpArgs),
    /// Start the whole system in this process and play the scenarios.
    Demo(cmd::demo::DemoArgs),
    /// The audit log: search it, verify its chains.
    Audit(cmd::audit::AuditArgs),
    /// The auditor's read-only web console over the audit log (loopback).
    Console(cmd::console::ConsoleArgs),
    /// Load the broker or an adapter in a closed loop and measure it.
    Bench(cmd::bench::BenchArgs),
    /// Certificates: make development ones.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let outcome = match cli.command {
        Command::Schema(c) => Ok(cmd::schema::run(c)),
        Command::Map(args) => cmd::map::run(args),
        Command::Policy(cmd::policy::PolicyCommand::Check(args)) => cmd::policy::run(args),
        Command::Policy(cmd::policy::PolicyCommand::Reload(args)) => {
            on_runtime(cmd::policy::reload(args))
        }
        Command::Certs(c) => cmd::certs::run(c),
        Command::Adapter(args) => on_runtime(cmd::adapter::run(args)),
        Command::Submit(args) => on_runtime(cmd::submit::run(args)),
        Command::Broker(args) => on_runtime(cmd::broker::run(args)),
        Command::Limits(args) => on_runtime(cmd::limits::run(args)),
        Command::Top(args) => on_runtime(cmd::top::run(args)),
        Command::Deliveries(args) => on_runtime(cmd::deliveries::run(args)),
        Command::Audit(args) if args.through_broker() => {
            on_runtime(async { Ok(cmd::audit::through_broker(args).await) })
        }
        Command::Audit(args) => cmd::audit::on_store(args),
        Command::Demo(args) => on_runtime(cmd::demo::run(args)),
        Command::Console(args) => on_runtime(cmd::console::run(args)),
        Command::Up(args) => on_runtime(cmd::up::run(args)),
        Command::Bench(args) => on_runtime(cmd::bench::run(args)),
    };
    let code = outcome.unwrap_or_else(CliError::report);
    std::process::ExitCode::from(code as u8)
}

/// The one async runtime, for the commands that serve or call over the
/// network. (Reading an audit store stays off it: the PostgreSQL client runs
/// its own.)
fn on_runtime(command: impl std::future::Future<Output = CliResult>) -> CliResult {
    tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(command)
}
