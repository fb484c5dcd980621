//! Why a broker cannot start or reload: each names the file or the party,
//! and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration file that cannot be used: file, line and fix.
    #[error(transparent)]
    Config(#[from] crossgate_config::ConfigError),
    #[error(transparent)]
    Store(#[from] crossgate_audit::StoreError),
    #[error(transparent)]
    Tls(#[from] crossgate_tls::TlsError),
    #[error("{path}: {source}")]
    ReferenceKey {
        path: PathBuf,
        source: crossgate_policy::ReferenceKeyError,
    },
    #[error("audit durability {0:?} in broker.toml: use durable or async")]
    Durability(String),
    #[error("partner {partner}: adapter address {address:?} cannot be used: {reason}")]
    AdapterAddress {
        partner: String,
        address: String,
        reason: String,
    },
    #[error("partner {partner}: cannot set up TLS towards its adapter: {reason}")]
    AdapterTls { partner: String, reason: String },
    #[error("cannot count approval uses in the audit log: {0}")]
    ApprovalUses(crossgate_audit::StoreError),
    #[error("{0} is gone; the old limits stay")]
    LimitsGone(PathBuf),
    #[error("this broker runs without limits.toml: nothing to tune")]
    NoLimits,
    #[error("this broker was not started from a catalog file: nothing to reload")]
    NoCatalogFile,
    #[error("{file}: {message}")]
    Cluster { file: PathBuf, message: String },
}

impl BrokerError {
    /// The error as the audit log keeps it: a configuration file's fault by
    /// file and line only, since its message may quote the file's values
    /// (an approval's subject is a citizen's identity number); the operator
    /// who asked is told the whole message.
    pub fn logged(&self) -> String {
        match self {
            BrokerError::Config(e) => format!(
                "{}:{}: refused (the operator was told why; the file's values are not logged)",
                e.file, e.line
            ),
            other => other.to_string(),
        }
    }
}

/// Read a file that may be missing: `None` when it is.
pub(crate) fn read_optional(path: &std::path::Path) -> Result<Option<String>, BrokerError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BrokerError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}
