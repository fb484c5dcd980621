//! `crossgate map`: a department's native records to canonical ones, or back.

use crate::cmd::schema::{SchemasDir, load};
use crate::input::{documents, read_sources};
use crate::{CliError, CliResult, ExitCode};
use clap::{Args, ValueEnum};
use crossgate_mapping::MapFault;
use crossgate_schema::parse_document;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// native → canonical (validated)
    Inbound,
    /// canonical → native
    Outbound,
}

#[derive(Debug, Args)]
pub struct MapArgs {
    /// Department id, e.g. customs (its file: <config>/departments/<id>.toml)
    #[arg(long)]
    pub department: String,
    #[arg(long, value_enum, default_value = "inbound")]
    pub direction: Direction,
    /// Native record type (inbound) or canonical record type (outbound) when
    /// the department maps several [default: found from each record's id field]
    #[arg(long = "type", value_name = "TYPE")]
    pub record_type: Option<String>,
    /// Configuration folder
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
    /// JSON or JSON Lines files; `-` or none reads stdin
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Map each record; one JSON document per line on stdout for each record that
/// maps cleanly, `<file>:<line>: <native> -> <pointer>: <message>` on stderr
/// for each fault. Exit 0 all mapped, 1 some failed, 2 usage or config error.
pub fn run(args: MapArgs) -> CliResult {
    let registry = load(&args.dir).map_err(CliError::exit)?;
    let dept =
        crossgate_adapter::config::load_department(&args.config, &args.department, &registry)?;
    let forced = match &args.record_type {
        None => None,
        Some(t) => {
            let found = match args.direction {
                Direction::Inbound => dept.native(t),
                Direction::Outbound => dept.canonical(t).filter(|m| m.outbound),
            };
            Some(found.ok_or_else(|| {
                format!(
                    "department {} has no {:?} mapping for {t:?}",
                    dept.department, args.direction
                )
            })?)
        }
    };
    let sources = read_sources(&args.files)?;
    let (mut mapped, mut failed) = (0usize, 0usize);
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for source in &sources {
        for doc in documents(source) {
            let result = parse_document(doc.bytes)
                .map_err(|r| {
                    r.faults()
                        .into_iter()
                        .map(|f| MapFault {
                            native: "(record)".into(),
                            canonical: f.path,
                            message: f.message,
                        })
                        .collect::<Vec<_>>()
                })
                .and_then(|value| {
                    let mapping = forced.or_else(|| match args.direction {
                        Direction::Inbound => dept.detect_native(&value),
                        Direction::Outbound => dept.detect_canonical(&value).filter(|m| m.outbound),
                    });
                    let Some(mapping) = mapping else {
                        return Err(vec![MapFault {
                            native: "(record)".into(),
                            canonical: String::new(),
                            message: format!(
                                "no mapping of {} fits this record; name one with --type",
                                dept.department
                            ),
                        }]);
                    };
                    match args.direction {
                        Direction::Inbound => {
                            mapping.inbound_owned(value, &registry).map(|m| m.document)
                        }
                        Direction::Outbound => mapping.outbound(&value),
                    }
                });
            match result {
                Ok(value) => {
                    mapped += 1;
                    let _ = writeln!(out, "{value}");
                }
                Err(faults) => {
                    failed += 1;
                    for fault in faults {
                        let _ = writeln!(err, "{}:{}: {fault}", source.label, doc.line);
                    }
                }
            }
        }
    }
    let _ = writeln!(err, "{mapped} mapped, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    })
}
