//! `broker.toml` and the files it points at.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the broker listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder with `ca.pem`, `broker.pem`/`broker.key` and the parties' certificates.
    #[serde(default = "default_certs")]
    pub certs: PathBuf,
    /// Largest gRPC message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Deadline for a call whose caller set none, in milliseconds.
    #[serde(default = "default_deadline")]
    pub default_deadline_ms: u64,
    /// How long a delivery to one adapter may take, in milliseconds.
    #[serde(default = "default_delivery")]
    pub delivery_timeout_ms: u64,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]` of broker.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `sqlite:PATH` (the embedded default) or `postgres://...` (shared by replicas).
    #[serde(default = "default_store")]
    pub store: String,
    /// `durable` (reply after the entry is committed) or `async`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// This broker's chain in the log; replicas sharing a store need distinct ids.
    #[serde(default = "default_writer")]
    pub writer: String,
}

fn default_store() -> String {
    "sqlite:.crossgate/audit.db".into()
}
fn default_durability() -> String {
    "durable".into()
}
fn default_writer() -> String {
    "broker-1".into()
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            store: default_store(),
            durability: default_durability(),
            writer: default_writer(),
        }
    }
}

/// Open an audit store named like `sqlite:PATH` or `postgres://...`.
pub fn open_store(spec: &str) -> Result<Box<dyn crossgate_audit::Store>, String> {
    crossgate_audit::open(spec).map_err(|e| e.to_string())
}

impl AuditConfig {
    /// Start the log's writer for this broker.
    pub fn start(&self) -> Result<crossgate_audit::Writer, String> {
        let durability = match self.durability.as_str() {
            "durable" => crossgate_audit::Durability::Durable,
            "async" => crossgate_audit::Durability::Async,
            other => return Err(format!("audit durability {other:?}: use durable or async")),
        };
        crossgate_audit::Writer::start(
            open_store(&self.store)?,
            self.writer.clone(),
            durability,
            4096,
        )
        .map_err(|e| e.to_string())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}
fn default_certs() -> PathBuf {
    PathBuf::from(".crossgate/certs")
}
fn default_max_message() -> usize {
    4 * 1024 * 1024
}
fn default_deadline() -> u64 {
    5_000
}
fn default_delivery() -> u64 {
    2_000
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: default_listen(),
            certs: default_certs(),
            max_message_bytes: default_max_message(),
            default_deadline_ms: default_deadline(),
            delivery_timeout_ms: default_delivery(),
            audit: AuditConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Read `<dir>/broker.toml`; a missing file means the defaults.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("broker.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file = path.display().to_string();
        crossgate_config::Source::new(&file, &text)
            .parse()
            .map_err(|e| e.to_string())
    }

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// Read `<dir>/limits.toml`, checked against the partner ids; `None` when
/// there is no such file (then nobody is limited).
pub fn load_limits(
    dir: &Path,
    partners: &[&str],
) -> Result<Option<crossgate_limits::LimitsConfig>, String> {
    let path = dir.join("limits.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    crossgate_limits::parse_config(&path.display().to_string(), &text, partners)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Where operators' live limit changes are kept, beside the config.
pub fn overrides_file(dir: &Path) -> PathBuf {
    dir.join("limits.overrides.toml")
}

/// The limits of a config folder: `limits.toml` with the operators'
/// overrides (from `overrides`, usually `limits.overrides.toml` beside it) on
/// top. `None` without limits.toml.
pub fn open_limits(
    dir: &Path,
    overrides: &Path,
    partners: &[&str],
) -> Result<Option<std::sync::Arc<crossgate_limits::Limits>>, String> {
    let Some(config) = load_limits(dir, partners)? else {
        return Ok(None);
    };
    let limits = crossgate_limits::Limits::new(config);
    let path = overrides.to_path_buf();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let overrides =
                crossgate_limits::parse_config(&path.display().to_string(), &text, partners)
                    .map_err(|e| e.to_string())?;
            limits.set_overrides(overrides.partners);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    Ok(Some(std::sync::Arc::new(limits)))
}

/// The broker's record-reference secret, `reference.key` in its certificate folder.
pub fn load_reference_key(certs: &Path) -> Result<crossgate_policy::ReferenceKey, String> {
    let secret = crossgate_tls::read_reference_secret(certs).map_err(|e| e.to_string())?;
    crossgate_policy::ReferenceKey::new(&secret).map_err(|e| {
        format!(
            "{}: {e}",
            certs.join(crossgate_tls::REFERENCE_SECRET_FILE).display()
        )
    })
}
