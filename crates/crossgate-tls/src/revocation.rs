//! Certificate revocation lists: a party whose certificate the CA has
//! revoked is refused by every server that was given the CA's CRL files
//! (`crls` in broker.toml; `--crl` of `crossgate adapter`), checked with
//! webpki against the CA (the CRL's signature, its issuer, the serial) on
//! each call's verified client certificate.

use crate::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The CA's revocation lists, ready to check a peer's certificate.
pub struct Revocation {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revocation")
    }
}

impl Revocation {
    /// The CRLs in `files` (PEM or DER), issued by the CA in `ca_pem`;
    /// `None` when no file is given. A file that cannot be read or holds
    /// no CRL is an error naming it.
    pub fn load(ca_pem: &str, files: &[PathBuf]) -> Result<Option<Self>, TlsError> {
        if files.is_empty() {
            return Ok(None);
        }
        let mut crls = Vec::new();
        for file in files {
            crls.extend(read_crls(file)?);
        }
        Self::from_crls(ca_pem, crls).map(Some)
    }

    /// The same from CRLs in memory.
    pub fn from_crls(
        ca_pem: &str,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsError> {
        let bad = |why: String| TlsError::Crl {
            path: PathBuf::from("ca.pem"),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(crls)
        // A list past its next update is stale: a certificate revoked
        // since may be missing from it.
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| bad(e.to_string()))?;
        Ok(Revocation { verifier })
    }

    /// `Err` naming why when the CA revoked the chain's certificate, or
    /// its status cannot be told from the lists (no list of its issuer).
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no client certificate".into());
        };
        match self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                Err("the certificate was revoked by the CA".into())
            }
            Err(e) => Err(format!("the certificate's revocation status: {e}")),
        }
    }
}

fn read_crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::Crl {
        path: file.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if crls.is_empty() {
            return Err(bad("it holds no X509 CRL block".into()));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_revoked_certificate_is_refused_and_the_others_pass() {
        let ca = DevCa::new("test CA").unwrap();
        let (kept, _) = ca.issue("tax", 1, 30).unwrap();
        let (revoked, _) = ca.issue("education", 1, 30).unwrap();
        let crl = ca.revocation_list(&[&revoked]).unwrap();
        let dir = crossgate_testing::TempDir::new("crl");
        let file = dir.join("revoked.crl.pem");
        std::fs::write(&file, crl).unwrap();
        let check = Revocation::load(ca.pem(), &[file]).unwrap().unwrap();
        assert_eq!(check.check(&[der(&kept)]), Ok(()));
        assert_eq!(
            check.check(&[der(&revoked)]),
            Err("the certificate was revoked by the CA".into())
        );
    }

    #[test]
    fn a_list_from_another_ca_revokes_nothing_of_ours_and_a_bad_file_is_named() {
        let ca = DevCa::new("test CA").unwrap();
        let other = DevCa::new("other CA").unwrap();
        let (cert, _) = ca.issue("tax", 1, 30).unwrap();
        let (theirs, _) = other.issue("tax", 1, 30).unwrap();
        let dir = crossgate_testing::TempDir::new("crl-other");
        let file = dir.join("other.crl.pem");
        std::fs::write(&file, other.revocation_list(&[&theirs]).unwrap()).unwrap();
        let check = Revocation::load(ca.pem(), &[file]).unwrap().unwrap();
        // No list of our CA: the status cannot be told, so the call is refused.
        assert!(check.check(&[der(&cert)]).is_err());

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "-----BEGIN NOTHING-----\n-----END NOTHING-----\n").unwrap();
        let err = Revocation::load(ca.pem(), std::slice::from_ref(&junk)).unwrap_err();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        assert!(Revocation::load(ca.pem(), &[]).unwrap().is_none());
    }
}
