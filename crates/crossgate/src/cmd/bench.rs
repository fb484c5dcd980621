//! `crossgate bench`: the operator's load tool, in the spirit of pgbench.
//! A closed loop over N connections × M streams, with mutual TLS as a given
//! party, against the broker's Query or Publish or a department adapter's
//! Fetch; prints requests per second, latency percentiles and errors by
//! gRPC status, and with `--pid` the server's CPU time per request.

use crate::cmd::connect::Connection;
use crate::{CliError, CliResult, ExitCode};
use clap::{Args, Subcommand};
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::department_client::DepartmentClient;
use crossgate_proto::{Criterion, FetchRequest, PublishRequest, QueryRequest, Record};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: Target,
    #[command(flatten)]
    pub load: Load,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct Load {
    /// Connections to open
    #[arg(long, default_value_t = 4, global = true)]
    pub conns: usize,
    /// Requests in flight on each connection
    #[arg(long, default_value_t = 16, global = true)]
    pub streams: usize,
    /// Seconds measured
    #[arg(long, default_value_t = 5.0, global = true)]
    pub secs: f64,
    /// Seconds of load before measuring
    #[arg(long, default_value_t = 1.0, global = true)]
    pub warmup: f64,
    /// The party whose certificate is used [default: education for query,
    /// customs for publish, broker for fetch]
    #[arg(long = "as", value_name = "PARTY", global = true)]
    pub party: Option<String>,
    /// Requests per second to send in all, spread evenly over the streams
    /// (an open loop; latency counts from when each request was due, so a
    /// server that falls behind shows it). Without it, each stream sends its
    /// next request as soon as the last is answered.
    #[arg(long, global = true)]
    pub rate: Option<f64>,
    /// Server process(es) whose CPU time per request to report (repeatable;
    /// with several, each one's part too)
    #[arg(long, value_name = "PID", global = true)]
    pub pid: Vec<u32>,
    /// One JSON object instead of the table, for scripts
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Target {
    /// The broker's Query: a consumer's lookup
    Query(Ask),
    /// The broker's Publish: a provider's record to its receivers; each
    /// request a new record (in the record file and id, `$N` is replaced by
    /// the request's number and `$RUN` by this run's id)
    Publish(Publish),
    /// A department adapter's Fetch, directly (as the broker calls it)
    Fetch(Fetch),
}

#[derive(Debug, Args)]
pub struct Ask {
    /// The department that holds the record
    #[arg(long)]
    pub provider: String,
    /// Canonical record type, e.g. person.v1
    #[arg(long = "type", value_name = "RECORD_TYPE")]
    pub record_type: String,
    /// The purpose asked under
    #[arg(long)]
    pub purpose: String,
    /// A lookup, PATH=VALUE, e.g. /id_number=110105198405049582 (repeatable)
    #[arg(long = "criterion", value_name = "PATH=VALUE")]
    pub criteria: Vec<String>,
    /// An approval reference, for conditional grants
    #[arg(long)]
    pub approval: Option<String>,
}

#[derive(Debug, Args)]
pub struct Publish {
    /// Canonical record type, e.g. customs-declaration.v1
    #[arg(long = "type", value_name = "RECORD_TYPE")]
    pub record_type: String,
    /// The canonical record (JSON); `$N` is replaced by the request's
    /// number, `$RUN` by this run's id
    #[arg(long, value_name = "FILE")]
    pub record: PathBuf,
    /// The record id; `$N` is replaced by the request's number, `$RUN` by
    /// this run's id. Keep both: a record id of an earlier run with the same
    /// record is a repeat, which the broker answers without delivering again
    #[arg(long, default_value = "bench-$RUN-$N")]
    pub record_id: String,
}

#[derive(Debug, Args)]
pub struct Fetch {
    /// The adapter, e.g. https://127.0.0.1:7105 [default: the provider's
    /// address in partners.toml]
    #[arg(long)]
    pub adapter: Option<String>,
    /// The consumer named in the request
    #[arg(long)]
    pub consumer: String,
    /// The most records to answer with (0: no limit)
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    #[command(flatten)]
    pub ask: Ask,
}

/// What one closed loop measured.
#[derive(Debug, Default)]
struct Tally {
    /// Latency of each successful request, in microseconds.
    latencies: Vec<u32>,
    /// Failed requests by gRPC status.
    errors: BTreeMap<String, u64>,
}

/// The longest run or warm-up, in seconds (a day).
const LONGEST: f64 = 86_400.0;

/// Runs the load and prints what it measured. Exit 0 when every request
/// succeeded, 1 when some failed or none was answered in the run, 2 when
/// the load could not start.
pub async fn run(args: BenchArgs) -> CliResult {
    let load = &args.load;
    if load.conns == 0 || load.streams == 0 {
        return Err("--conns and --streams must be at least 1".into());
    }
    let seconds = |name: &str, value: f64, least: f64| {
        (value >= least && value <= LONGEST)
            .then(|| Duration::try_from_secs_f64(value).ok())
            .flatten()
            .ok_or_else(|| format!("{name} must be from {least} to {LONGEST} seconds"))
    };
    let secs = seconds("--secs", load.secs, 0.001)?;
    let warmup = seconds("--warmup", load.warmup, 0.0)?;
    let workers = load.conns.saturating_mul(load.streams);
    // Each stream's turn comes every `interval`; streams start spread over one.
    let interval = match load.rate {
        None => None,
        Some(rate) => Some(
            (rate.is_finite() && rate > 0.0)
                .then(|| Duration::try_from_secs_f64(workers as f64 / rate).ok())
                .flatten()
                .filter(|i| *i >= Duration::from_micros(1) && i.as_secs_f64() <= 2.0 * LONGEST)
                .ok_or_else(|| {
                    format!(
                        "--rate must give each of the {workers} streams a turn between once a \
                         microsecond and once in two days"
                    )
                })?,
        ),
    };
    // A process to watch must exist before the load starts, and be named
    // once (twice would count it twice in the whole).
    if let Some(pid) = load
        .pid
        .iter()
        .enumerate()
        .find_map(|(i, pid)| load.pid[..i].contains(pid).then_some(pid))
    {
        return Err(format!("--pid {pid} is given twice; name each process once").into());
    }
    cpu_ticks(&load.pid)?;
    let (party, server, address, label) = target_of(&args)?;
    // A server that stops answering shows as DeadlineExceeded, not a hang.
    // Several replicas: connections are spread over them in turn.
    let endpoints: Vec<_> = args
        .connection
        .endpoints(&party, &server, address)?
        .into_iter()
        .map(|e| e.timeout(Duration::from_secs(10)))
        .collect();
    if endpoints.is_empty() {
        return Err("--broker names no address".to_owned().into());
    }
    let mut channels = Vec::with_capacity(load.conns);
    for i in 0..load.conns {
        let endpoint = &endpoints[i % endpoints.len()];
        // Each connect opens its own connection.
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot reach {}: {e}", endpoint.uri()))?,
        );
    }
    let call = Arc::new(Call::build(&args.target)?);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    // Paced streams send nothing due after the run's end.
    let end = start + warmup + secs;
    let streams = channels
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, load.streams));
    for (w, channel) in streams.enumerate() {
        let (call, channel) = (call.clone(), channel.clone());
        let (measuring, stop, counter) = (measuring.clone(), stop.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut due = interval.map(|i| start + i.mul_f64(w as f64 / workers as f64));
            while !stop.load(Ordering::Relaxed) {
                let started = match (due, interval) {
                    (Some(at), Some(every)) => {
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        due = Some(at + every);
                        at
                    }
                    _ => Instant::now(),
                };
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let result = call.once(channel.clone(), n).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(()) => tally
                        .latencies
                        .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(code) => *tally.errors.entry(format!("{code:?}")).or_default() += 1,
                }
            }
            tally
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu_before = cpu_ticks(&load.pid)?;
    let began = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(secs).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(&load.pid)?;
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| format!("a load task failed: {e}"))?;
        all.latencies.extend(tally.latencies);
        for (code, n) in tally.errors {
            *all.errors.entry(code).or_default() += n;
        }
    }
    let report = Report::of(label, load, all, elapsed, cpu_before.zip(cpu_after));
    if load.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.failed == 0 && report.ok > 0 {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    })
}

/// The party to present, the server's expected identity, the address and a label.
fn target_of(args: &BenchArgs) -> Result<(String, String, Option<String>, String), CliError> {
    let party = |default: &str| args.load.party.clone().unwrap_or_else(|| default.into());
    Ok(match &args.target {
        Target::Query(ask) => (
            party("education"),
            "broker".into(),
            None,
            format!("Broker.Query {} {}", ask.provider, ask.record_type),
        ),
        Target::Publish(p) => (
            party("customs"),
            "broker".into(),
            None,
            format!("Broker.Publish {}", p.record_type),
        ),
        Target::Fetch(f) => {
            let address = match &f.adapter {
                Some(a) => a.clone(),
                None => crossgate_broker::deployment::read_partners(&args.connection.config)?
                    .into_iter()
                    .find(|p| p.id == f.ask.provider)
                    .and_then(|p| p.adapter)
                    .map(|a| format!("https://{a}"))
                    .ok_or_else(|| {
                        format!("{} has no adapter address; give --adapter", f.ask.provider)
                    })?,
            };
            (
                party("broker"),
                f.ask.provider.clone(),
                Some(address),
                format!("Department.Fetch {} {}", f.ask.provider, f.ask.record_type),
            )
        }
    })
}

/// One request of the run, built once.
enum Call {
    Query(QueryRequest),
    Publish {
        record_type: String,
        json: String,
        record_id: String,
    },
    Fetch(FetchRequest),
}

impl Call {
    fn build(target: &Target) -> Result<Call, CliError> {
        Ok(match target {
            Target::Query(ask) => Call::Query(QueryRequest {
                provider: ask.provider.clone(),
                record_type: ask.record_type.clone(),
                purpose: ask.purpose.clone(),
                criteria: criteria(&ask.criteria)?,
                approval_reference: ask.approval.clone().unwrap_or_default(),
            }),
            Target::Publish(p) => {
                // Microseconds since 1970 and the process: no two runs alike.
                let run = format!(
                    "{}.{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros(),
                    std::process::id()
                );
                let json = std::fs::read_to_string(&p.record)
                    .map_err(|e| format!("cannot read {}: {e}", p.record.display()))?;
                Call::Publish {
                    record_type: p.record_type.clone(),
                    json: json.replace("$RUN", &run),
                    record_id: p.record_id.replace("$RUN", &run),
                }
            }
            Target::Fetch(f) => Call::Fetch(FetchRequest {
                request_id: "bench".into(),
                consumer: f.consumer.clone(),
                record_type: f.ask.record_type.clone(),
                purpose: f.ask.purpose.clone(),
                criteria: criteria(&f.ask.criteria)?,
                limit: f.limit,
            }),
        })
    }

    /// Request number `n`; the status code when it fails.
    async fn once(&self, channel: Channel, n: u64) -> Result<(), tonic::Code> {
        let done = match self {
            Call::Query(q) => BrokerClient::new(channel).query(q.clone()).await.map(drop),
            Call::Publish {
                record_type,
                json,
                record_id,
            } => {
                let n = n.to_string();
                BrokerClient::new(channel)
                    .publish(PublishRequest {
                        record: Some(Record {
                            record_type: record_type.clone(),
                            record_id: record_id.replace("$N", &n),
                            json: json.replace("$N", &n).into_bytes(),
                        }),
                        idempotency_key: String::new(),
                    })
                    .await
                    .map(drop)
            }
            Call::Fetch(f) => DepartmentClient::new(channel)
                .fetch(f.clone())
                .await
                .map(drop),
        };
        done.map_err(|status| status.code())
    }
}

fn criteria(given: &[String]) -> Result<Vec<Criterion>, CliError> {
    given
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(path, value)| Criterion {
                    path: path.into(),
                    value: value.into(),
                })
                .ok_or_else(|| format!("--criterion {c:?}: write PATH=VALUE").into())
        })
        .collect()
}

/// CPU time (user + system) of each process so far, in clock ticks of
/// 1/100 s (Linux's USER_HZ), in the order given; `None` without `--pid`.
fn cpu_ticks(pids: &[u32]) -> Result<Option<Vec<u64>>, CliError> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut each = Vec::with_capacity(pids.len());
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat =
            std::fs::read_to_string(&path).map_err(|e| format!("--pid {pid}: {path}: {e}"))?;
        // Fields after the command name (which may hold spaces): state is
        // the first, utime the 12th, stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (tick(11), tick(12)) {
            (Some(user), Some(system)) => each.push(user + system),
            _ => return Err(format!("--pid {pid}: cannot read CPU times from {path}").into()),
        }
    }
    Ok(Some(each))
}

struct Report {
    label: String,
    conns: usize,
    streams: usize,
    /// The rate asked for with `--rate`.
    offered: Option<f64>,
    secs: f64,
    ok: u64,
    failed: u64,
    rps: f64,
    /// p50, p90, p99, max in microseconds.
    percentiles: [u32; 4],
    errors: BTreeMap<String, u64>,
    cpu_us_per_request: Option<f64>,
    /// Each process's part of it, with more than one `--pid` (a broker and
    /// its adapters run apart: whose CPU a request costs).
    cpu_by_pid: Vec<(u32, f64)>,
}

impl Report {
    fn of(
        label: String,
        load: &Load,
        mut tally: Tally,
        secs: f64,
        cpu: Option<(Vec<u64>, Vec<u64>)>,
    ) -> Report {
        tally.latencies.sort_unstable();
        let at = |q: f64| -> u32 {
            let l = &tally.latencies;
            if l.is_empty() {
                return 0;
            }
            l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1]
        };
        let ok = tally.latencies.len() as u64;
        let failed: u64 = tally.errors.values().sum();
        let per_request = |ticks: u64| ticks as f64 * 10_000.0 / (ok + failed).max(1) as f64;
        let used: Option<Vec<u64>> = cpu.map(|(before, after)| {
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| a.saturating_sub(*b))
                .collect()
        });
        let cpu_by_pid = match &used {
            Some(each) if each.len() > 1 => load
                .pid
                .iter()
                .zip(each)
                .map(|(pid, ticks)| (*pid, per_request(*ticks)))
                .collect(),
            _ => Vec::new(),
        };
        Report {
            label,
            conns: load.conns,
            streams: load.streams,
            offered: load.rate,
            secs,
            ok,
            failed,
            rps: ok as f64 / secs,
            percentiles: [at(0.50), at(0.90), at(0.99), at(1.0)],
            errors: tally.errors,
            cpu_us_per_request: used.map(|each| per_request(each.iter().sum())),
            cpu_by_pid,
        }
    }

    fn table(&self) -> String {
        let ms = |us: u32| f64::from(us) / 1000.0;
        let [p50, p90, p99, max] = self.percentiles;
        let mut out = format!(
            "{}: {} connections × {} streams{}, {:.1} s\n\
             requests  {} ok, {} failed\n\
             rate      {:.0} req/s\n\
             latency   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            self.label,
            self.conns,
            self.streams,
            self.offered
                .map(|r| format!(", {r:.0} req/s offered"))
                .unwrap_or_default(),
            self.secs,
            self.ok,
            self.failed,
            self.rps,
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
        );
        if !self.errors.is_empty() {
            let listed: Vec<String> = self
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            out.push_str(&format!("errors    {}\n", listed.join(", ")));
        }
        if let Some(cpu) = self.cpu_us_per_request {
            let parts: Vec<String> = self
                .cpu_by_pid
                .iter()
                .map(|(pid, cpu)| format!("pid {pid}: {cpu:.0}"))
                .collect();
            let parts = if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            };
            out.push_str(&format!("server    {cpu:.0} µs CPU per request{parts}\n"));
        }
        out
    }

    fn json(&self) -> String {
        let [p50, p90, p99, max] = self.percentiles;
        let tenths = |c: f64| (c * 10.0).round() / 10.0;
        serde_json::json!({
            "target": self.label,
            "conns": self.conns,
            "streams": self.streams,
            "offered_rps": self.offered,
            "secs": self.secs,
            "ok": self.ok,
            "failed": self.failed,
            "rps": (self.rps * 10.0).round() / 10.0,
            "p50_us": p50,
            "p90_us": p90,
            "p99_us": p99,
            "max_us": max,
            "errors": self.errors,
            "server_cpu_us_per_req": self.cpu_us_per_request.map(tenths),
            "server_cpu_us_per_req_by_pid": self
                .cpu_by_pid
                .iter()
                .map(|(pid, cpu)| (pid.to_string(), serde_json::json!(tenths(*cpu))))
                .collect::<serde_json::Map<_, _>>(),
        })
        .to_string()
    }
}
