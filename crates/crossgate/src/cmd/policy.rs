//! `crossgate policy check`: what the catalog decides, and why.

use crate::ExitCode;
use crate::cmd::schema::{SchemasDir, load};
use clap::{Args, Subcommand};
use crossgate_policy::{Policy, compile, compile_partners};
use crossgate_schema::Registry;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide a query as the broker would: allow (with the released fields)
    /// or deny (with the rule and the reason). Exit 0 allow, 1 deny, 2 config error.
    Check(CheckArgs),
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
    /// Decide as of this day (YYYY-MM-DD) [default: today, UTC]
    #[arg(long)]
    pub date: Option<chrono::NaiveDate>,
    /// Configuration folder (partners.toml, catalog.toml)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
}

/// Read and compile `partners.toml` and `catalog.toml` of a config folder.
pub fn load_policy(config: &Path, registry: &Registry) -> Result<Policy, String> {
    let read = |name: &str| {
        let path = config.join(name);
        std::fs::read_to_string(&path)
            .map(|text| (path.display().to_string(), text))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (pfile, ptext) = read("partners.toml")?;
    let partners = compile_partners(&pfile, &ptext).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = partners.iter().map(|p| p.id.as_str()).collect();
    let (cfile, ctext) = read("catalog.toml")?;
    compile(&cfile, &ctext, &ids, registry).map_err(|e| e.to_string())
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    let PolicyCommand::Check(args) = cmd;
    let registry = match load(&args.dir) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let policy = match load_policy(&args.config, &registry) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("crossgate: {e}");
            return ExitCode::Usage;
        }
    };
    let today = args.date.unwrap_or_else(|| chrono::Utc::now().date_naive());
    match policy.decide_query(
        &args.consumer,
        &args.provider,
        &args.record_type,
        &args.purpose,
        args.approval.as_deref(),
        today,
    ) {
        Ok(release) => {
            println!(
                "allow: {} may query {} for {} for {:?} under grant {}",
                args.consumer, args.provider, args.record_type, args.purpose, release.grant.id
            );
            if let Some(a) = release.approval {
                println!(
                    "  approval: {} (valid {} to {})",
                    a.reference, a.valid_from, a.valid_until
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
            ExitCode::Ok
        }
        Err(denial) => {
            println!("deny: {}", denial.reason);
            println!("  rule: {}", denial.rule);
            ExitCode::Failed
        }
    }
}
