//! `crossgate audit search|verify|export|checkpoint`: the auditor's tools, working
//! directly on a log's store (`--store`) or through a broker (`--broker`,
//! `--cert`, `--key`: the auditor's certificate).

use crate::{CliError, CliResult, ExitCode};
use clap::{Args, Subcommand, ValueEnum};
use crossgate_audit::checkpoint::Checkpoint;
use crossgate_audit::{Filter, Stored};
use crossgate_proto::audit_client::AuditClient;
use crossgate_proto::{CheckpointRequest, SearchRequest, VerifyRequest, VouchedHead};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
    /// The log's store, e.g. sqlite:.crossgate/audit.db [default: [audit] store of broker.toml]
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// On the store: the key of the log's record-id digests (from `crossgate
    /// certs id-key`) [default: derived from the secret in the certificate
    /// folder of --config's broker]
    #[arg(long, global = true, value_name = "FILE")]
    pub id_key: Option<PathBuf>,
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
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
    Verify {
        /// From this sequence number (0: the start)
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// To this sequence number (0: the end, including the chain's recorded head)
        #[arg(long, default_value_t = 0)]
        to: u64,
        #[command(flatten)]
        vouched: CheckpointArgs,
    },
    /// Save a checkpoint: every chain's head, signed by the broker's
    /// checkpoint key. Keep it outside the log; `verify --checkpoint FILE`
    /// later fails if the log was cut short, rewritten or wiped.
    Checkpoint {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write matching entries to a JSON Lines file (progress shown on a terminal).
    Export {
        #[command(flatten)]
        filter: Box<FilterArgs>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Also check that the log still holds every head this checkpoint vouches for
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// The broker's checkpoint.pub to check the checkpoint's signature with
    /// [default: <certs of broker.toml>/checkpoint.pub]
    #[arg(long, value_name = "FILE", requires = "checkpoint")]
    checkpoint_key: Option<PathBuf>,
}

impl CheckpointArgs {
    /// The checkpoint, its signature checked against the key the auditor
    /// trusts, and said so; `None` without `--checkpoint`.
    fn load(&self, config: &std::path::Path) -> Result<Option<Checkpoint>, CliError> {
        let Some(file) = &self.checkpoint else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the checkpoint {}: {e}", file.display()))?;
        let c = Checkpoint::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let key_file = match &self.checkpoint_key {
            Some(k) => k.clone(),
            None => crossgate_broker::BrokerConfig::load(config)
                .map_err(|e| {
                    format!("{e}; or pass --checkpoint-key FILE (the broker's checkpoint.pub)")
                })?
                .certs
                .join(crossgate_tls::CHECKPOINT_PUBLIC_FILE),
        };
        let trusted = std::fs::read_to_string(&key_file).map_err(|e| {
            format!(
                "cannot read the trusted checkpoint key {}: {e}; pass --checkpoint-key FILE (the broker's checkpoint.pub, kept by the auditor)",
                key_file.display()
            )
        })?;
        c.check_signature(&trusted).map_err(|e| CliError {
            code: ExitCode::Failed,
            message: format!("{}: {e}", file.display()),
        })?;
        println!(
            "checkpoint {} signed by {} at {}: signature verified with {}",
            file.display(),
            printable(&c.signed_by),
            printable(&c.signed_at),
            key_file.display()
        );
        let heads: Vec<String> = c
            .heads
            .iter()
            .map(|h| format!("{} up to entry {}", printable(&h.writer), h.sequence))
            .collect();
        println!(
            "it vouches for chain {}; entries after those (and chains it does not name) are checked by the chain alone",
            heads.join(", chain ")
        );
        if self.checkpoint_key.is_none() {
            eprintln!(
                "crossgate: the trusted key is the broker's own {}; keep your own copy and pass --checkpoint-key",
                key_file.display()
            );
        }
        Ok(Some(c))
    }
}

/// Write a checkpoint file whole or not at all.
fn save_checkpoint(c: &Checkpoint, out: &std::path::Path) -> CliResult {
    let partial = out.with_extension("partial");
    std::fs::write(&partial, c.to_json())
        .and_then(|()| std::fs::rename(&partial, out))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let heads: Vec<String> = c
        .heads
        .iter()
        .map(|h| format!("{}@{}", printable(&h.writer), h.sequence))
        .collect();
    println!(
        "checkpoint of {} chain(s) [{}] signed at {} by {} written to {}",
        c.heads.len(),
        heads.join(", "),
        printable(&c.signed_at),
        printable(&c.key),
        out.display()
    );
    Ok(ExitCode::Ok)
}

/// Print each chain's report; exit 1 if any is broken.
fn print_reports(
    reports: impl IntoIterator<Item = (String, u64, Option<(u64, String)>)>,
) -> ExitCode {
    let mut ok = true;
    let mut any = false;
    for (writer, checked, broken) in reports {
        any = true;
        match broken {
            None => println!("chain {}: {checked} entries verified", printable(&writer)),
            Some((sequence, why)) => {
                ok = false;
                println!(
                    "chain {}: entry {sequence} does not verify: {}",
                    printable(&writer),
                    printable(&why)
                );
            }
        }
    }
    if !any {
        println!("the log is empty");
    }
    if ok { ExitCode::Ok } else { ExitCode::Failed }
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
    /// Entries naming this record, alone or among the records of one answer
    #[arg(long)]
    record_id: Option<String>,
    #[arg(long)]
    purpose: Option<String>,
    /// allowed, denied, throttled, invalid, delivered, failed, dead, changed
    #[arg(long)]
    decision: Option<String>,
}

use crate::output::printable;

impl FilterArgs {
    fn to_filter(&self) -> Filter {
        Filter {
            since: self.since.clone(),
            until: self.until.clone(),
            partner: self.partner.clone(),
            consumer: self.consumer.clone(),
            provider: self.provider.clone(),
            record_type: self.record_type.clone(),
            record_id: self.record_id.clone(),
            purpose: self.purpose.clone(),
            decision: self.decision.clone(),
            ..Filter::default()
        }
    }

    /// The filter for reading a store directly: a record id is found by its
    /// digest, made with the key derived from the broker's reference
    /// secret in the certificate folder of `config`'s broker.
    fn to_store_filter(
        &self,
        config: &std::path::Path,
        id_key: Option<&std::path::Path>,
    ) -> Result<Filter, CliError> {
        let mut f = self.to_filter();
        if let Some(id) = f
            .record_id
            .as_deref()
            .filter(|id| !id.is_empty() && !crossgate_audit::is_record_id_digest(id))
        {
            let key = record_id_key(config, id_key).map_err(|e| {
                format!(
                    "--record-id: the log holds record ids as digests keyed by the broker's \
                     reference secret, and it cannot be had here ({e}); run where the broker's \
                     certificate folder is readable, give --id-key (crossgate certs id-key), ask \
                     the broker (crossgate audit --cert FILE search ...), or give the id's digest \
                     as entries show it (id:...)"
                )
            })?;
            f.record_id_digest = Some(key.digest(id));
        }
        Ok(f)
    }

    fn to_request(&self) -> SearchRequest {
        let f = self.to_filter();
        SearchRequest {
            since: f.since.unwrap_or_default(),
            until: f.until.unwrap_or_default(),
            partner: f.partner.unwrap_or_default(),
            consumer: f.consumer.unwrap_or_default(),
            provider: f.provider.unwrap_or_default(),
            record_type: f.record_type.unwrap_or_default(),
            record_id: f.record_id.unwrap_or_default(),
            purpose: f.purpose.unwrap_or_default(),
            decision: f.decision.unwrap_or_default(),
            limit: 0,
        }
    }
}

/// The key of the log's record-id digests: from `id_key` (a file `crossgate
/// certs id-key` wrote), else derived from the reference secret in the
/// certificate folder of the broker configured in `config`.
/// Only a folder that holds a broker.toml is taken: without one the
/// defaults would point at another folder's secret, whose digests find
/// nothing.
pub fn record_id_key(
    config: &std::path::Path,
    id_key: Option<&std::path::Path>,
) -> Result<crossgate_audit::RecordIdKey, String> {
    if let Some(file) = id_key {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --id-key {}: {e}", file.display()))?;
        return crossgate_audit::RecordIdKey::from_hex(&text).ok_or_else(|| {
            format!(
                "--id-key {} is not a record-id key (64 hex characters, as `crossgate certs \
                 id-key` writes)",
                file.display()
            )
        });
    }
    if !config.join("broker.toml").is_file() {
        return Err(format!(
            "{} holds no broker.toml; give --config the folder of the broker that wrote the log",
            config.display()
        ));
    }
    let certs = crossgate_broker::BrokerConfig::load(config)
        .map_err(|e| e.to_string())?
        .certs;
    let key = crossgate_broker::config::load_reference_key(&certs).map_err(|e| e.to_string())?;
    Ok(crossgate_broker::config::record_id_key(&key))
}

impl AuditArgs {
    /// Read through the broker's `Audit` service rather than a store.
    pub fn through_broker(&self) -> bool {
        self.conn.broker.is_some() || self.conn.cert.is_some()
    }
}

/// Read the store directly (no async runtime: its clients bring their own).
pub fn on_store(args: AuditArgs) -> CliResult {
    let spec = match &args.store {
        Some(s) => s.clone(),
        None => {
            crossgate_broker::BrokerConfig::load(&args.conn.config)?
                .audit
                .store
        }
    };
    let mut store = crossgate_audit::open(&spec)?;
    Ok(match args.command {
        AuditCommand::Verify { from, to, vouched } => {
            let reports = match vouched.load(&args.conn.config)? {
                Some(c) if from == 0 && to == 0 => {
                    crossgate_audit::verify_vouched(store.as_mut(), &c.heads)?
                }
                Some(_) => {
                    return Err(
                        "--checkpoint checks the whole log: leave out --from and --to".into(),
                    );
                }
                None => crossgate_audit::verify_range(store.as_mut(), from, to)?,
            };
            print_reports(reports.into_iter().map(|r| (r.writer, r.checked, r.broken)))
        }
        AuditCommand::Checkpoint { out } => {
            // Signed here with the broker's key: only where the broker's
            // certificate folder is readable.
            let certs = crossgate_broker::BrokerConfig::load(&args.conn.config)?.certs;
            let seed = crossgate_tls::read_checkpoint_seed(&certs).map_err(|e| {
                format!("{e}; or ask the broker: crossgate audit --cert FILE checkpoint")
            })?;
            let signer = crossgate_audit::checkpoint::Signer::from_seed(&seed, "broker")
                .map_err(|e| e.to_string())?;
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let c = signer.sign(&store.heads()?, &now);
            return save_checkpoint(&c, &out);
        }
        AuditCommand::Export { filter, out } => {
            // Before the file is made: a filter that cannot be applied
            // leaves an existing file as it was.
            let filter = filter.to_store_filter(&args.conn.config, args.id_key.as_deref())?;
            let mut file = std::io::BufWriter::new(
                crossgate_tls::open_owner_only(&out, crossgate_tls::Opening::Replace)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?,
            );
            let mut n = 0u64;
            let result = store.scan(&filter, &mut |s| {
                n += 1;
                progress(n, 0);
                writeln!(file, "{}", s.to_json_line()).is_ok()
            });
            if let Err(e @ crossgate_audit::StoreError::Damaged { .. }) = &result {
                return Err(damaged(e));
            }
            finish_export(result.map_err(|e| e.to_string()), file, n, &out)
        }
        AuditCommand::Search { filter, format } => {
            let f = filter.to_store_filter(&args.conn.config, args.id_key.as_deref())?;
            let mut out = std::io::stdout().lock();
            write_header(&mut out, format);
            let result = store.scan(&f, &mut |s| {
                let line = entry_line(format, &s);
                writeln!(out, "{line}").is_ok()
            });
            match result {
                Ok(()) => ExitCode::Ok,
                Err(e @ crossgate_audit::StoreError::Damaged { .. }) => return Err(damaged(&e)),
                Err(e) => return Err(e.into()),
            }
        }
    })
}

/// A damaged log is a finding (as verify's, exit 1), not a failure to read.
fn damaged(e: &impl std::fmt::Display) -> CliError {
    CliError {
        code: ExitCode::Failed,
        message: format!("{e}; run `crossgate audit verify`"),
    }
}

/// `\rexported N of M entries` on a terminal, nothing otherwise.
fn progress(sent: u64, total: u64) {
    use std::io::IsTerminal;
    if sent.is_multiple_of(1000) && std::io::stderr().is_terminal() {
        if total > 0 {
            eprint!("\rexported {sent} of {total} entries");
        } else {
            eprint!("\rexported {sent} entries");
        }
    }
}

fn finish_export(
    result: Result<(), String>,
    mut file: impl Write,
    n: u64,
    out: &std::path::Path,
) -> ExitCode {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r");
    }
    match result.and_then(|()| file.flush().map_err(|e| e.to_string())) {
        Ok(()) => {
            eprintln!("exported {n} entries to {}", out.display());
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("crossgate: {e}");
            ExitCode::Usage
        }
    }
}

pub async fn through_broker(args: AuditArgs) -> ExitCode {
    let channel = match args.conn.channel("audit-office").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crossgate: {e}");
            return ExitCode::Usage;
        }
    };
    let mut client = AuditClient::new(channel);
    let refused = |s: tonic::Status| {
        eprintln!(
            "crossgate: the broker refused: {:?}: {}",
            s.code(),
            s.message()
        );
        ExitCode::Failed
    };
    match args.command {
        AuditCommand::Verify { from, to, vouched } => {
            let vouched = match vouched.load(&args.conn.config) {
                Ok(c) => c.map(|c| c.heads).unwrap_or_default(),
                Err(e) => {
                    eprintln!("crossgate: {}", e.message);
                    return e.code;
                }
            };
            let vouched = vouched
                .into_iter()
                .map(|h| VouchedHead {
                    writer: h.writer,
                    sequence: h.sequence,
                    entry_hash: h.hash,
                })
                .collect();
            match client
                .verify(VerifyRequest {
                    from_sequence: from,
                    to_sequence: to,
                    vouched,
                })
                .await
            {
                Ok(r) => print_reports(r.into_inner().chains.into_iter().map(|c| {
                    let broken = (!c.ok).then_some((c.first_bad_sequence, c.reason));
                    (c.writer, c.entries_checked, broken)
                })),
                Err(s) => refused(s),
            }
        }
        AuditCommand::Checkpoint { out } => {
            let text = match client.checkpoint(CheckpointRequest {}).await {
                Ok(r) => r.into_inner().checkpoint,
                Err(s) => return refused(s),
            };
            let saved = Checkpoint::parse(&text)
                .map_err(|e| CliError::from(format!("the broker sent {e}")))
                .and_then(|c| save_checkpoint(&c, &out));
            match saved {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("crossgate: {}", e.message);
                    e.code
                }
            }
        }
        AuditCommand::Search { filter, format } => {
            let mut stream = match client.search(filter.to_request()).await {
                Ok(s) => s.into_inner(),
                Err(s) => return refused(s),
            };
            let mut out = std::io::stdout().lock();
            write_header(&mut out, format);
            loop {
                match stream.message().await {
                    Ok(Some(e)) => match crossgate_broker::audit_service::from_message(e) {
                        Ok(entry) => {
                            let _ = writeln!(out, "{}", entry_line(format, &entry));
                        }
                        Err(damage) => {
                            eprintln!("crossgate: {damage}; run `crossgate audit verify`");
                            return ExitCode::Failed;
                        }
                    },
                    Ok(None) => return ExitCode::Ok,
                    Err(s) => return refused(s),
                }
            }
        }
        AuditCommand::Export { filter, out } => {
            // The file is opened (and an existing one cut) only once the
            // broker has taken the export: a refusal leaves it as it was.
            let mut stream = match client.export(filter.to_request()).await {
                Ok(s) => s.into_inner(),
                Err(s) => return refused(s),
            };
            let mut file =
                match crossgate_tls::open_owner_only(&out, crossgate_tls::Opening::Replace) {
                    Ok(f) => std::io::BufWriter::new(f),
                    Err(e) => {
                        eprintln!("crossgate: cannot write {}: {e}", out.display());
                        return ExitCode::Usage;
                    }
                };
            let mut n = 0;
            let result = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        n = chunk.entries_sent;
                        progress(n - n % 1000, chunk.entries_total);
                        if let Err(e) = file.write_all(&chunk.jsonl) {
                            break Err(e.to_string());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(s) => return refused(s),
                }
            };
            finish_export(result, file, n, &out)
        }
    }
}

fn write_header(out: &mut impl Write, format: Format) {
    let header = match format {
        Format::Table => format!(
            "{:<27} {:<6} {:<18} {:<18} {:<22} {:<18} {:<10} RELEASED",
            "TIME", "KIND", "CONSUMER", "PROVIDER", "TYPE", "PURPOSE", "DECISION"
        ),
        Format::Csv => crossgate_audit::entry::CSV_HEADER.to_owned(),
        Format::Jsonl => return,
    };
    let _ = writeln!(out, "{header}");
}

fn entry_line(format: Format, s: &Stored) -> String {
    let e = &s.entry;
    match format {
        Format::Jsonl => s.to_json_line(),
        // Every field a partner could have written is escaped.
        Format::Table => format!(
            "{:<27} {:<6} {:<18} {:<18} {:<22} {:<18} {:<10} {}",
            printable(&e.time),
            e.kind,
            printable(&e.consumer),
            printable(&e.provider),
            printable(&e.record_type),
            printable(&e.purpose),
            e.decision.as_str(),
            printable(&e.released_fields.join(" "))
        ),
        Format::Csv => s.to_csv_line(),
    }
}
