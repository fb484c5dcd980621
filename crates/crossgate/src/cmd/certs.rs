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
    let CertsCommand::Dev(args) = cmd;
    let partners = crossgate_broker::deployment::read_partners(&args.config)?;
    let mut ids: Vec<&str> = vec!["broker"];
    ids.extend(partners.iter().map(|p| p.id.as_str()));
    crossgate_tls::generate_dev(&args.out, &ids)?;
    println!(
        "wrote a development CA and {} certificates to {}:",
        ids.len(),
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
