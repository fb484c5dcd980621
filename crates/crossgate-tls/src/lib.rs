//! Mutual TLS for crossgate.
//!
//! - A party's identity is the SAN URI `spiffe://crossgate/partner/<id>` of
//!   its verified client certificate ([`peer_identity`]); nothing in a
//!   request body can claim another.
//! - [`generate_dev`] makes a development CA and one certificate per party
//!   (usable as client and as loopback server certificate).
//! - [`Bundle`] loads a party's certificate, key and the CA, and builds the
//!   tonic server and client TLS configs.
#![forbid(unsafe_code)]

pub mod peers;
pub mod revocation;
pub mod serving;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The SAN URI prefix that names a party.
pub const IDENTITY_PREFIX: &str = "spiffe://crossgate/partner/";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read {path}: {source}; make development certificates with `crossgate certs dev --out DIR`"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a usable identity: lower-case letters, digits and '-' only")]
    BadId(String),
    #[error("cannot make random bytes for a secret")]
    Random,
    #[error(
        "{path}: the broker's record-reference secret is missing or unreadable ({why}); make one with `crossgate certs dev --out DIR` (development) or write 32 random bytes as 64 hex digits (`openssl rand -hex 32`), readable only by the broker; keep it: changing it changes every reference consumers hold"
    )]
    Secret { path: PathBuf, why: String },
    #[error(
        "{path}: the broker's checkpoint signing key is unreadable ({why}); it is 64 hex digits (an Ed25519 seed), readable only by the broker; move it away and the broker makes a new one (auditors must then pin the new checkpoint.pub)"
    )]
    CheckpointKey { path: PathBuf, why: String },
    #[error(
        "{path}: not a usable certificate revocation list ({why}); give the CA's CRL files (PEM or DER) in broker.toml's crls or the adapter's --crl"
    )]
    Crl { path: PathBuf, why: String },
    #[error(
        "not a usable TLS server identity ({0}): give a PEM certificate and its key, signed by the deployment's CA"
    )]
    Https(String),
}

/// The file, beside the broker's certificate, holding the secret behind
/// opaque record references: 64 hex digits (32 bytes).
pub const REFERENCE_SECRET_FILE: &str = "reference.key";

/// Write `<dir>/reference.key` with 32 fresh random bytes unless it exists:
/// an existing secret is kept, since every reference consumers hold depends
/// on it. Returns the file.
pub fn ensure_reference_secret(dir: &Path) -> Result<PathBuf, TlsError> {
    let path = dir.join(REFERENCE_SECRET_FILE);
    if path.exists() {
        return Ok(path);
    }
    let bytes: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| TlsError::Random)?
        .expose();
    write_private(&path, &format!("{}\n", hex(&bytes)))?;
    Ok(path)
}

/// Read `<dir>/reference.key`: the secret's bytes.
pub fn read_reference_secret(dir: &Path) -> Result<Vec<u8>, TlsError> {
    let path = dir.join(REFERENCE_SECRET_FILE);
    read_hex(&path).map_err(|why| TlsError::Secret { path, why })
}

/// A file of 64 or more hex digits, as bytes.
fn read_hex(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let text = text.trim();
    if text.len() < 64 || text.len() % 2 != 0 {
        return Err(format!(
            "it holds {} characters, not 64 or more hex digits",
            text.len()
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("xx"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| "it holds something other than hex digits".into())
}

/// The broker's checkpoint signing key, beside its certificate: an Ed25519
/// seed as 64 hex digits (see `crossgate_audit::checkpoint`).
pub const CHECKPOINT_KEY_FILE: &str = "checkpoint.key";
/// Its public half, `ed25519:<hex>`: what auditors keep and pin.
pub const CHECKPOINT_PUBLIC_FILE: &str = "checkpoint.pub";

/// Make `<dir>/checkpoint.key` (and `checkpoint.pub`) unless the key exists:
/// an existing key is kept, since auditors pin its public half. Returns the
/// key's seed.
pub fn ensure_checkpoint_key(dir: &Path) -> Result<[u8; 32], TlsError> {
    let path = dir.join(CHECKPOINT_KEY_FILE);
    if !path.exists() {
        let seed: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| TlsError::Random)?
            .expose();
        write_private(&path, &format!("{}\n", hex(&seed)))?;
    }
    let seed = read_checkpoint_seed(dir)?;
    let public = checkpoint_public_key(&seed).map_err(|why| TlsError::CheckpointKey {
        path: path.clone(),
        why,
    })?;
    let public_file = dir.join(CHECKPOINT_PUBLIC_FILE);
    let line = format!("{public}\n");
    // Written only when missing or stale: a read-only folder of a key made
    // elsewhere is fine.
    if std::fs::read_to_string(&public_file).ok().as_deref() != Some(line.as_str())
        && let Err(e) = write(public_file, &line)
    {
        // The key signs on; auditors get its public half from the broker's
        // start-up line or `crossgate audit checkpoint` output instead.
        eprintln!("crossgate: {e}; checkpoints are signed by {public}");
    }
    Ok(seed)
}

/// Read `<dir>/checkpoint.key`: the seed.
pub fn read_checkpoint_seed(dir: &Path) -> Result<[u8; 32], TlsError> {
    let path = dir.join(CHECKPOINT_KEY_FILE);
    read_hex(&path)
        .and_then(|bytes| {
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("it holds {} bytes, not 32", bytes.len()))
        })
        .map_err(|why| TlsError::CheckpointKey { path, why })
}

/// `ed25519:<hex>` of a seed's public key.
pub fn checkpoint_public_key(seed: &[u8; 32]) -> Result<String, String> {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| "not an Ed25519 seed".to_owned())?;
    Ok(format!("ed25519:{}", hex(pair.public_key().as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// A CA able to issue party certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "crossgate development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A CRL (PEM) revoking the certificates `revoked` (PEM), valid a week.
    pub fn revocation_list(&self, revoked: &[&str]) -> Result<String, TlsError> {
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
        let mut revoked_certs = Vec::new();
        for pem in revoked {
            let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
                .map_err(|e| TlsError::Crl {
                    path: PathBuf::from("(certificate)"),
                    why: e.to_string(),
                })?;
            let (_, cert) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Crl {
                    path: PathBuf::from("(certificate)"),
                    why: e.to_string(),
                })?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.tbs_certificate.raw_serial()),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - std::time::Duration::from_secs(60),
            next_update: now + std::time::Duration::from_secs(7 * 86_400),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issue a certificate for party `id`, valid `days_before` days ago until
    /// `days_after` days from now (negative `days_after`: already expired).
    /// It names the party by SAN URI and serves `localhost` / `127.0.0.1`.
    pub fn issue(
        &self,
        id: &str,
        days_before: i64,
        days_after: i64,
    ) -> Result<(String, String), TlsError> {
        self.issue_naming(&[id], days_before, days_after)
    }

    /// A certificate naming every one of `ids` (tests: parties must refuse
    /// a certificate with more than one crossgate identity).
    pub fn issue_naming(
        &self,
        ids: &[&str],
        days_before: i64,
        days_after: i64,
    ) -> Result<(String, String), TlsError> {
        // Each party's name as a DNS name too (`<id>.crossgate`): a client
        // that expects a party checks it as the server name, so another
        // party's certificate cannot stand in for it.
        let mut names = vec!["localhost".to_owned()];
        names.extend(ids.iter().map(|id| server_name(id)));
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        for id in ids {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(TlsError::BadId((*id).to_owned()));
            }
            params
                .subject_alt_names
                .push(SanType::URI(format!("{IDENTITY_PREFIX}{id}").try_into()?));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ids.join(","));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
        params.not_before =
            now - std::time::Duration::from_secs(days_before.max(0) as u64 * 86_400);
        params.not_after = if days_after >= 0 {
            now + std::time::Duration::from_secs(days_after as u64 * 86_400)
        } else {
            now - std::time::Duration::from_secs(days_after.unsigned_abs() * 86_400)
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// How [`open_owner_only`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Emptied: the caller writes the whole file.
    Replace,
    /// Kept: the caller adds to its end.
    Append,
}

/// Open `path` for writing (made if missing), readable by its owner only
/// where the system has such modes: for files that hold keys or record
/// contents. A file of its own that was there before keeps its mode when
/// opened, so one that others may read is narrowed before anything is
/// written into it. Narrowing is as far as the file system allows (one
/// without modes, e.g. a FAT stick, refuses it): [`write_owner_only`] is
/// strict, for keys. A pipe or a device (`--out /dev/stdout`) is written as
/// it is, neither narrowed nor cut. A reader that opened the file before
/// it was narrowed keeps reading it.
pub fn open_owner_only(path: &Path, opening: Opening) -> std::io::Result<std::fs::File> {
    open_narrowed(path, opening, false)
}

/// Write `bytes` to `path`, replacing what it held, readable by its owner
/// only ([`open_owner_only`]); refused where the file cannot be made so,
/// before anything in it is cut or written.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    open_narrowed(path, Opening::Replace, true)?.write_all(bytes)
}

/// [`open_owner_only`]; `strict`: a file left wider than its owner's is an
/// error, raised before the file is cut.
fn open_narrowed(path: &Path, opening: Opening, strict: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    match opening {
        Opening::Replace => options.write(true),
        Opening::Append => options.append(true),
    };
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(file);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let wide = |f: &std::fs::File| -> std::io::Result<bool> {
            Ok(f.metadata()?.permissions().mode() & 0o077 != 0)
        };
        if wide(&file)? {
            let narrowed = file.set_permissions(std::fs::Permissions::from_mode(0o600));
            if strict && (narrowed.is_err() || wide(&file)?) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "it cannot be made readable by its owner only (mode 0600) here; write it \
                     to a file system that keeps file modes",
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = strict;
    if opening == Opening::Replace {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Whether users other than the owner and the owner's group may read the
/// file `path` (one that should hold a secret or records for its owner);
/// false where the system has no such modes, or `path` is no file.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// A private key: readable by its owner only.
fn write_key(path: PathBuf, text: &str) -> Result<PathBuf, TlsError> {
    write_owner_only(&path, text.as_bytes()).map_err(|source| TlsError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, TlsError> {
    std::fs::write(&path, text).map_err(|source| TlsError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Make `ca.pem` and `<id>.pem` / `<id>.key` for every id in `out` (created
/// if missing). Certificates are valid for a year. Returns the files written.
pub fn generate_dev(out: &Path, ids: &[&str]) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    DevCa::new("crossgate development CA")?.write_folder(out, ids)
}

impl DevCa {
    /// Write `ca.pem`, `<id>.pem` / `<id>.key` for every id, the reference
    /// secret and the checkpoint key into `out` (which must exist).
    pub fn write_folder(&self, out: &Path, ids: &[&str]) -> Result<Vec<PathBuf>, TlsError> {
        let mut written = vec![write(out.join("ca.pem"), self.pem())?];
        for id in ids {
            let (cert, key) = self.issue(id, 1, 365)?;
            written.push(write(out.join(format!("{id}.pem")), &cert)?);
            written.push(write_key(out.join(format!("{id}.key")), &key)?);
        }
        written.push(ensure_reference_secret(out)?);
        ensure_checkpoint_key(out)?;
        written.push(out.join(CHECKPOINT_KEY_FILE));
        written.push(out.join(CHECKPOINT_PUBLIC_FILE));
        Ok(written)
    }
}

/// A party's certificate and key, and the CA that vouches for its peers.
#[derive(Clone)]
pub struct Bundle {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Bundle {
    /// `<dir>/<id>.pem`, `<dir>/<id>.key` and `<dir>/ca.pem`.
    pub fn load(dir: &Path, id: &str) -> Result<Self, TlsError> {
        Self::from_files(
            &dir.join(format!("{id}.pem")),
            &dir.join(format!("{id}.key")),
            &dir.join("ca.pem"),
        )
    }

    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(Bundle {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: read(ca)?,
        })
    }

    /// Server side: present this certificate, require a client certificate
    /// signed by the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// A rustls server configuration for HTTPS (the auditor's console on a
    /// network): present this certificate, require a client certificate
    /// signed by the CA (`http/1.1` only).
    pub fn https_server(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: &dyn std::fmt::Display| TlsError::Https(e.to_string());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(&e))?;
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// Client side towards party `expected`: present this certificate, trust
    /// only the CA, and accept only a server whose certificate names
    /// `expected` (as `<expected>.crossgate`) — not any party of the CA.
    pub fn client_for(&self, expected: &str) -> ClientTlsConfig {
        self.client().domain_name(server_name(expected))
    }

    /// Client side: present this certificate, trust only the CA; servers are
    /// reached as `localhost` (every development certificate names it), so
    /// any party of the CA is accepted. Use [`Bundle::client_for`] to reach
    /// a known party.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name("localhost")
    }
}

/// The DNS name a party's certificate carries besides its SAN URI, checked
/// by clients as the server name: `<id>.crossgate`.
pub fn server_name(id: &str) -> String {
    format!("{id}.crossgate")
}

/// The party id named by a verified peer certificate chain (leaf first), or
/// `None` when there is no certificate, or it names no crossgate party, or
/// more than one.
pub fn peer_identity(chain: &[tonic::transport::CertificateDer<'_>]) -> Option<String> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(IDENTITY_PREFIX),
            _ => None,
        });
    let id = ids.next()?;
    // A certificate naming two parties names none: no first-one-wins.
    if ids.next().is_some() {
        return None;
    }
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_party() {
        let ca = DevCa::new("test CA").unwrap();
        let (cert, _key) = ca.issue("education", 1, 30).unwrap();
        let der = x509_parser::pem::parse_x509_pem(cert.as_bytes())
            .unwrap()
            .1
            .contents;
        let chain = [tonic::transport::CertificateDer::from(der)];
        assert_eq!(peer_identity(&chain).as_deref(), Some("education"));
        assert_eq!(peer_identity(&[]), None);
        let (two, _key) = ca.issue_naming(&["education", "broker"], 1, 30).unwrap();
        let der = x509_parser::pem::parse_x509_pem(two.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(
            peer_identity(&[tonic::transport::CertificateDer::from(der)]),
            None,
            "a certificate with two crossgate identities names nobody"
        );
        assert!(matches!(ca.issue("Bad Id", 1, 1), Err(TlsError::BadId(_))));
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_files_are_narrowed_replaced_or_added_to() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = crossgate_testing::TempDir::new("owner-only");
        let path = dir.join("out");
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        std::fs::write(&path, "an older, longer text\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(readable_by_others(&path));
        write_owner_only(&path, b"one\n").unwrap();
        assert_eq!(
            (mode(), std::fs::read_to_string(&path).unwrap()),
            (0o600, "one\n".into())
        );
        assert!(!readable_by_others(&path));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        open_owner_only(&path, Opening::Append)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(
            (mode(), std::fs::read_to_string(&path).unwrap()),
            (0o600, "one\ntwo\n".into())
        );
        std::fs::remove_file(&path).unwrap();
        open_owner_only(&path, Opening::Append).unwrap();
        assert_eq!(mode(), 0o600, "made owner-only");
        // A group that reads it is left as it is, and is no warning's
        // business; a file every user may read is; a folder is no file.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(!readable_by_others(&path));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(readable_by_others(&path));
        assert!(!readable_by_others(&dir));
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crossgate_testing::TempDir::new("key-modes");
        // One key left readable by all, as a copy or an older build may leave it.
        std::fs::write(dir.join("health.key"), "old").unwrap();
        std::fs::set_permissions(
            dir.join("health.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        generate_dev(&dir, &["broker", "health"]).unwrap();
        for file in [
            "broker.key",
            "health.key",
            REFERENCE_SECRET_FILE,
            CHECKPOINT_KEY_FILE,
        ] {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
        }
        let key = std::fs::read_to_string(dir.join("health.key")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }

    #[test]
    fn the_reference_secret_is_made_once_and_kept() {
        let dir = crossgate_testing::TempDir::new("secret");
        let missing = read_reference_secret(&dir).unwrap_err().to_string();
        assert!(missing.contains("reference.key"), "{missing}");
        assert!(missing.contains("openssl rand -hex 32"), "{missing}");

        ensure_reference_secret(&dir).unwrap();
        let first = read_reference_secret(&dir).unwrap();
        assert_eq!(first.len(), 32);
        // Made again: the existing secret is kept.
        ensure_reference_secret(&dir).unwrap();
        assert_eq!(read_reference_secret(&dir).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(REFERENCE_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by the broker only");
        }

        std::fs::write(dir.join(REFERENCE_SECRET_FILE), "not hex at all").unwrap();
        let bad = read_reference_secret(&dir).unwrap_err().to_string();
        assert!(bad.contains("not 64 or more hex digits"), "{bad}");
        std::fs::write(dir.join(REFERENCE_SECRET_FILE), "zz".repeat(32)).unwrap();
        let bad = read_reference_secret(&dir).unwrap_err().to_string();
        assert!(bad.contains("other than hex digits"), "{bad}");
    }
}
