//! Who a verified client certificate names, worked out once per certificate
//! and remembered. A client keeps its certificate for the life of its
//! connection, so parsing the X.509 (and checking it against the CRLs) on
//! every call repeated the same work for every request; here a call costs a
//! hash of the certificate's bytes and a map lookup.
//!
//! A remembered answer is kept at most [`REMEMBER`] (so a CRL past its next
//! update is noticed within that time) and never past the certificate's own
//! expiry; a certificate outside its validity period is never remembered.
//! Chains longer than the leaf are checked on every call (the development
//! CA issues leaves only). TLS has already verified the chain, dates
//! included, against the CA at the handshake; on a connection that outlives
//! its certificate, a call is refused for expiry only when CRLs are
//! configured (webpki checks the dates with the lists), as before.

use crate::revocation::Revocation;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::CertificateDer;

/// How long an answer about one certificate is kept.
pub const REMEMBER: Duration = Duration::from_secs(60);
/// The most certificates remembered; past it the memory starts over.
const MOST: usize = 4096;

/// Why a caller is nobody.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unidentified {
    #[error("a client certificate naming a crossgate party is required")]
    NoParty,
    #[error("{id}: {why}")]
    Revoked { id: String, why: String },
}

/// The party a verified client certificate names, remembered per certificate.
pub struct Identities {
    revocation: Option<Arc<Revocation>>,
    /// foldhash, not the standard SipHash: hashing a whole certificate
    /// with SipHash was about 650 instructions a call, four calls a query.
    /// Only certificates TLS has verified against the CA are ever keys, so
    /// a peer cannot fill the map with colliding ones.
    seen: Mutex<HashMap<Box<[u8]>, Seen, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("revocation", &self.revocation.is_some())
            .finish_non_exhaustive()
    }
}

struct Seen {
    verdict: Result<Arc<str>, Unidentified>,
    until: Instant,
}

impl Identities {
    /// Checking revocation against `revocation`'s lists when given.
    pub fn new(revocation: Option<Arc<Revocation>>) -> Self {
        Identities {
            revocation,
            seen: Mutex::new(HashMap::default()),
        }
    }

    /// The party `chain` (verified by TLS, leaf first) names.
    pub fn identify(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<Arc<str>, Unidentified> {
        let chain = chain.ok_or(Unidentified::NoParty)?;
        let [leaf] = chain else {
            return self.work_out(chain);
        };
        let now = Instant::now();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = seen.get(leaf.as_ref())
                && s.until > now
            {
                return s.verdict.clone();
            }
        }
        let verdict = self.work_out(chain);
        // A certificate outside its validity period is never remembered:
        // each call works it out again (and, with CRLs, webpki refuses it).
        let Some(until) = remember_until(leaf.as_ref(), now) else {
            return verdict;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MOST {
            seen.clear();
        }
        seen.insert(
            leaf.as_ref().into(),
            Seen {
                verdict: verdict.clone(),
                until,
            },
        );
        verdict
    }

    /// The verdict on `chain`, worked out in full.
    fn work_out(&self, chain: &[CertificateDer<'_>]) -> Result<Arc<str>, Unidentified> {
        let id = crate::peer_identity(chain).ok_or(Unidentified::NoParty)?;
        if let Some(revocation) = &self.revocation
            && let Err(why) = revocation.check(chain)
        {
            return Err(Unidentified::Revoked { id, why });
        }
        Ok(id.into())
    }
}

/// Until when an answer about the certificate `der` may be remembered:
/// [`REMEMBER`] from `now`, or its expiry if sooner; `None` when it is not
/// valid now (expired, or not yet valid) or cannot be read.
fn remember_until(der: &[u8], now: Instant) -> Option<Instant> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let left = cert.validity().time_to_expiration()?;
    let left = Duration::try_from(left).ok()?;
    Some(now + left.min(REMEMBER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from(
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .unwrap()
                .1
                .contents,
        )
    }

    #[test]
    fn a_certificate_is_worked_out_once_and_answers_alike() {
        let ca = DevCa::new("test CA").unwrap();
        let (education, _) = ca.issue("education", 1, 30).unwrap();
        let (two, _) = ca.issue_naming(&["education", "broker"], 1, 30).unwrap();
        let ids = Identities::new(None);
        let chain = [der(&education)];
        assert_eq!(ids.identify(Some(&chain)).unwrap().as_ref(), "education");
        assert_eq!(ids.identify(Some(&chain)).unwrap().as_ref(), "education");
        assert_eq!(ids.seen.lock().unwrap().len(), 1, "remembered once");
        let two = [der(&two)];
        assert_eq!(ids.identify(Some(&two)), Err(Unidentified::NoParty));
        assert_eq!(
            ids.identify(Some(&two)),
            Err(Unidentified::NoParty),
            "a remembered refusal is still a refusal"
        );
        assert_eq!(ids.identify(None), Err(Unidentified::NoParty));
        assert_eq!(ids.identify(Some(&[])), Err(Unidentified::NoParty));
    }

    #[test]
    fn a_revoked_certificate_stays_refused_when_remembered() {
        let ca = DevCa::new("test CA").unwrap();
        let (health, _) = ca.issue("health", 2, 30).unwrap();
        let (tax, _) = ca.issue("tax", 3, 30).unwrap();
        let dir = crossgate_testing::TempDir::new("peers-crl");
        let crl = dir.join("revoked.crl");
        std::fs::write(&crl, ca.revocation_list(&[&health]).unwrap()).unwrap();
        let revocation = Revocation::load(ca.pem(), &[crl]).unwrap().unwrap();
        let ids = Identities::new(Some(Arc::new(revocation)));
        for _ in 0..2 {
            let refused = ids.identify(Some(&[der(&health)])).unwrap_err();
            assert!(refused.to_string().starts_with("health: "), "{refused}");
            assert!(refused.to_string().contains("revoked"), "{refused}");
            assert_eq!(ids.identify(Some(&[der(&tax)])).unwrap().as_ref(), "tax");
        }
    }
}
