//! `crossgate certs dev`: a development CA and a certificate for the broker
//! and every party in partners.toml.

use crate::{CliResult, ExitCode};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a development CA, and a certificate and key for the broker and for
    /// every partner, auditor and operator of partners.toml (valid one year).
    Dev(DevArgs),
    /// Write the key of the audit log's record-id digests (derived from the
    /// broker's record-reference secret), for an auditor who searches a
    /// copy of the store by record id without the broker's secret.
    IdKey(IdKeyArgs),
}

#[derive(Debug, Args)]
pub struct IdKeyArgs {
    /// File to write the key to (64 hex characters; readable by its owner only)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Configuration folder of the broker whose log it is
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder to write ca.pem, <id>.pem and <id>.key into
    #[arg(long, value_name = "DIR", default_value = ".crossgate/certs")]
    pub out: PathBuf,
    /// Configuration folder holding partners.toml
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
}

pub fn run(cmd: CertsCommand) -> CliResult {
    let args = match cmd {
        CertsCommand::Dev(args) => args,
        CertsCommand::IdKey(args) => return id_key(&args),
    };
    let partners = generate(&args.config, &args.out)?;
    println!(
        "wrote a development CA and {} certificates to {}:",
        partners.len() + 1,
        args.out.display()
    );
    for p in &partners {
        println!(
            "  {:<20} {:<9} {}/{}.pem",
            p.id,
            p.role.as_str(),
            args.out.display(),
            p.id
        );
    }
    println!(
        "  {:<20} {:<9} {}/broker.pem",
        "broker",
        "server",
        args.out.display()
    );
    println!(
        "  {:<20} {:<9} {}/{}",
        "record references",
        "secret",
        args.out.display(),
        crossgate_tls::REFERENCE_SECRET_FILE
    );
    Ok(ExitCode::Ok)
}

/// A development CA, and a certificate and key for the broker and for every
/// party of `config`'s partners.toml, written into `out`; the parties.
pub fn generate(
    config: &std::path::Path,
    out: &std::path::Path,
) -> Result<Vec<crossgate_policy::Partner>, crate::CliError> {
    let partners = crossgate_broker::deployment::read_partners(config)?;
    let mut ids: Vec<&str> = vec!["broker"];
    ids.extend(partners.iter().map(|p| p.id.as_str()));
    crossgate_tls::generate_dev(out, &ids)?;
    Ok(partners)
}

/// `crossgate certs id-key`: the record-id key, from the broker's secret.
fn id_key(args: &IdKeyArgs) -> CliResult {
    if !args.config.join("broker.toml").is_file() {
        return Err(format!(
            "{} holds no broker.toml; give --config the folder of the broker whose log it is",
            args.config.display()
        )
        .into());
    }
    let certs = crossgate_broker::BrokerConfig::load(&args.config)?.certs;
    let references = crossgate_broker::config::load_reference_key(&certs)?;
    let secret = crossgate_broker::config::record_id_secret(&references);
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    crossgate_tls::write_owner_only(&args.out, format!("{text}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "wrote the key of the audit log's record-id digests to {} (give it as --id-key to \
         `crossgate audit` or `crossgate console` over the store)",
        args.out.display()
    );
    Ok(ExitCode::Ok)
}
