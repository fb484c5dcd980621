//! `crossgate schema validate|list`.

use crate::input::{documents, read_sources};
use crate::{CliError, ExitCode};
use clap::{Args, Subcommand};
use crossgate_schema::{Registry, Rejection};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Validate records (JSON or JSON Lines) against a canonical record type.
    /// Prints `<file>:<line>: <json-pointer>: <message>` for every fault.
    /// Exit 0: all valid; 1: some invalid; 2: usage or I/O error.
    Validate(ValidateArgs),
    /// List the record types with their titles.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct SchemasDir {
    /// Folder of canonical JSON Schemas [default: ./schemas, else the project's schemas/]
    #[arg(long, value_name = "DIR")]
    pub schemas: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Canonical record type, e.g. person.v1
    #[arg(long = "type", value_name = "RECORD_TYPE")]
    pub record_type: String,
    #[command(flatten)]
    pub dir: SchemasDir,
    /// Files to check; `-` or none reads stdin
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub dir: SchemasDir,
}

/// The schema folder: `--schemas`, else `./schemas` if present, else the
/// project's `schemas/` as built.
pub fn schemas_dir(arg: &SchemasDir) -> PathBuf {
    if let Some(dir) = &arg.schemas {
        return dir.clone();
    }
    let local = PathBuf::from("schemas");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"))
}

pub fn load(arg: &SchemasDir) -> Result<Registry, ExitCode> {
    Registry::load_dir(schemas_dir(arg)).map_err(|e| {
        eprintln!("crossgate: {e}");
        ExitCode::Usage
    })
}

pub fn run(cmd: SchemaCommand) -> ExitCode {
    match cmd {
        SchemaCommand::Validate(args) => validate(args),
        SchemaCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> ExitCode {
    let registry = match load(&args.dir) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    for info in registry.record_types() {
        let _ = writeln!(out, "{:<24} {}", info.record_type, info.title);
    }
    ExitCode::Ok
}

fn validate(args: ValidateArgs) -> ExitCode {
    let registry = match load(&args.dir) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !registry.contains(&args.record_type) {
        let known: Vec<&str> = registry.record_types().map(|s| s.record_type).collect();
        eprintln!(
            "crossgate: unknown record type {:?}; known types: {} (see `crossgate schema list`)",
            args.record_type,
            known.join(", ")
        );
        return ExitCode::Usage;
    }
    let sources = match read_sources(&args.files) {
        Ok(s) => s,
        Err(e) => return CliError::from(e).report(),
    };
    let (mut valid, mut invalid) = (0usize, 0usize);
    let mut out = std::io::stdout().lock();
    for source in &sources {
        for doc in documents(source) {
            match registry.parse_and_validate(&args.record_type, doc.bytes) {
                Ok(_) => valid += 1,
                Err(rejection) => {
                    invalid += 1;
                    let faults = match rejection {
                        Rejection::Invalid(f) => f,
                        other => other.faults(),
                    };
                    for fault in faults {
                        let _ = writeln!(out, "{}:{}: {fault}", source.label, doc.line);
                    }
                }
            }
        }
    }
    eprintln!(
        "{valid} valid, {invalid} invalid {} record(s)",
        args.record_type
    );
    if invalid == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    }
}
