//! Signed checkpoints: the log cannot be shortened unnoticed.
//!
//! A hash chain shows an edit, an insertion or a gap, but not a chain cut
//! short together with its recorded head: whoever can write the store can
//! delete the last entries and move the head back. A checkpoint is the
//! broker's signed statement "chain W held entry N with hash H at time T"
//! for every chain; kept outside the store (by the auditor, or in the
//! broker's checkpoint folder), it makes [`vouched`] fail when the log no
//! longer holds what it vouched for: truncated, head rewritten, wiped.
//!
//! What stays undetectable: entries written after the newest checkpoint the
//! auditor holds can still be cut off; whoever holds the broker's signing
//! key can sign a checkpoint of a rewritten log; a checkpoint says nothing
//! about a chain it does not name (a writer added later).
//!
//! The signature is Ed25519 over a length-prefixed encoding of every field
//! ([`Checkpoint::signed_bytes`]); the file is JSON.

use crate::entry::hex;
use crate::{Filter, Store, StoreError};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The file format's name and version, first in every checkpoint.
pub const FORMAT: &str = "crossgate-checkpoint/1";

/// One chain's head as the checkpoint vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub writer: String,
    pub sequence: u64,
    /// The entry's hash, 64 hex digits.
    pub hash: String,
}

/// A signed statement of every chain's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    /// Who signed: the broker's identity.
    pub signed_by: String,
    /// RFC 3339.
    pub signed_at: String,
    /// `ed25519:` and the public key, 64 hex digits.
    pub key: String,
    pub heads: Vec<Head>,
    /// Ed25519 signature over [`Checkpoint::signed_bytes`], 128 hex digits.
    pub signature: String,
}

/// Why a checkpoint cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a crossgate checkpoint: {0}")]
    Malformed(String),
    #[error(
        "the checkpoint's signature does not verify with the trusted key {trusted}: the file was altered or signed by another key"
    )]
    BadSignature { trusted: String },
    #[error("not an Ed25519 key: {0}")]
    BadKey(String),
}

/// The broker's checkpoint signing key.
pub struct Signer {
    key: Ed25519KeyPair,
    signed_by: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("signed_by", &self.signed_by)
            .field("key", &self.public_key())
            .finish()
    }
}

impl Signer {
    /// The key from its 32-byte seed.
    pub fn from_seed(seed: &[u8], signed_by: &str) -> Result<Self, CheckpointError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| CheckpointError::BadKey(format!("a seed of {} bytes", seed.len())))?;
        Ok(Signer {
            key,
            signed_by: signed_by.to_owned(),
        })
    }

    /// A fresh key, for a run whose keys live in memory only.
    pub fn generate(signed_by: &str) -> Result<Self, CheckpointError> {
        let seed: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .map_err(|_| CheckpointError::BadKey("no random bytes for a seed".into()))?
            .expose();
        Self::from_seed(&seed, signed_by)
    }

    /// `ed25519:<hex>`: what auditors pin.
    pub fn public_key(&self) -> String {
        format!("ed25519:{}", hex(self.key.public_key().as_ref()))
    }

    /// Sign `heads` (writer → (sequence, hash)) as of `signed_at`.
    pub fn sign(&self, heads: &BTreeMap<String, (u64, [u8; 32])>, signed_at: &str) -> Checkpoint {
        let mut c = Checkpoint {
            format: FORMAT.into(),
            signed_by: self.signed_by.clone(),
            signed_at: signed_at.to_owned(),
            key: self.public_key(),
            heads: heads
                .iter()
                .map(|(writer, (sequence, hash))| Head {
                    writer: writer.clone(),
                    sequence: *sequence,
                    hash: hex(hash),
                })
                .collect(),
            signature: String::new(),
        };
        c.signature = hex(self.key.sign(&c.signed_bytes()).as_ref());
        c
    }
}

impl Checkpoint {
    /// What is signed: every field but the signature, each as its length,
    /// `:` and its bytes, so that no two checkpoints encode alike.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut field = |s: &str| {
            out.extend_from_slice(s.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(s.as_bytes());
        };
        field(&self.format);
        field(&self.signed_by);
        field(&self.signed_at);
        field(&self.key);
        field(&self.heads.len().to_string());
        for h in &self.heads {
            field(&h.writer);
            field(&h.sequence.to_string());
            field(&h.hash);
        }
        out
    }

    /// The checkpoint as its file holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Read a checkpoint file's text; shape only, not the signature.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let c: Checkpoint =
            serde_json::from_str(text).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        if c.format != FORMAT {
            return Err(CheckpointError::Malformed(format!(
                "format {:?}, expected {FORMAT:?}",
                c.format
            )));
        }
        if c.heads.is_empty() {
            return Err(CheckpointError::Malformed(
                "it vouches for no chain: a checkpoint of an empty log proves nothing".into(),
            ));
        }
        for h in &c.heads {
            if h.sequence == 0 || h.sequence > i64::MAX as u64 {
                return Err(CheckpointError::Malformed(format!(
                    "chain {}: sequence {} is not one a log holds",
                    h.writer, h.sequence
                )));
            }
            if parse_hex::<32>(&h.hash).is_none() {
                return Err(CheckpointError::Malformed(format!(
                    "chain {}: hash {:?} is not 64 hex digits",
                    h.writer, h.hash
                )));
            }
        }
        Ok(c)
    }

    /// Check the signature against the key the auditor trusts
    /// (`ed25519:<hex>`), not the key the file names.
    pub fn check_signature(&self, trusted: &str) -> Result<(), CheckpointError> {
        let public = public_key_bytes(trusted)?;
        let signature = parse_hex::<64>(&self.signature).ok_or_else(|| {
            CheckpointError::Malformed("the signature is not 128 hex digits".into())
        })?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&self.signed_bytes(), &signature)
            .map_err(|_| CheckpointError::BadSignature {
                trusted: trusted.trim().to_owned(),
            })
    }
}

/// `ed25519:<64 hex digits>` (as in `checkpoint.pub`) to the key's bytes.
pub fn public_key_bytes(text: &str) -> Result<[u8; 32], CheckpointError> {
    let text = text.trim();
    text.strip_prefix("ed25519:")
        .and_then(parse_hex::<32>)
        .ok_or_else(|| {
            CheckpointError::BadKey(format!(
                "expected ed25519: and 64 hex digits, found {} characters",
                text.len()
            ))
        })
}

/// Exactly `2N` lower-case hex digits (one spelling per value).
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A vouched head the log no longer holds as vouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub writer: String,
    pub sequence: u64,
    pub why: String,
}

/// Check that the log still holds every head in `heads`: the entry at that
/// sequence of that chain, with that hash. (That the chain up to it is
/// intact is [`crate::verify`]'s part.)
pub fn vouched(store: &mut dyn Store, heads: &[Head]) -> Result<Vec<Shortfall>, StoreError> {
    let recorded = store.heads()?;
    let mut short = Vec::new();
    for h in heads {
        let mut found = None;
        let filter = Filter {
            chain_order: true,
            from_sequence: h.sequence,
            to_sequence: h.sequence,
            ..Filter::default()
        };
        store.scan_rows(&filter, &mut |row| {
            if let Ok(s) = row
                && s.writer == h.writer
                && s.sequence == h.sequence
            {
                found = Some(hex(&s.entry_hash));
                return false;
            }
            true
        })?;
        let why = match (found, recorded.get(&h.writer)) {
            (Some(hash), _) if hash == h.hash => continue,
            (Some(hash), _) => format!(
                "the checkpoint vouches for hash {}, the log holds {hash}: the entry was rewritten",
                h.hash
            ),
            (None, None) if recorded.is_empty() => {
                "the log holds no chains at all: it was wiped or replaced".into()
            }
            (None, None) => "the log no longer holds this chain: it was removed".into(),
            (None, Some((last, _))) => format!(
                "the log's chain ends at {last}: entries up to the vouched {} were cut off",
                h.sequence
            ),
        };
        short.push(Shortfall {
            writer: h.writer.clone(),
            sequence: h.sequence,
            why,
        });
    }
    Ok(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> BTreeMap<String, (u64, [u8; 32])> {
        BTreeMap::from([("broker-1".to_owned(), (7, [9u8; 32]))])
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_its_key_and_no_other() {
        let signer = Signer::from_seed(&[1; 32], "broker").unwrap();
        let c = signer.sign(&heads(), "2026-11-23T00:00:00Z");
        let back = Checkpoint::parse(&c.to_json()).unwrap();
        assert_eq!(back, c);
        back.check_signature(&signer.public_key()).unwrap();

        let other = Signer::from_seed(&[2; 32], "broker").unwrap();
        assert!(matches!(
            back.check_signature(&other.public_key()),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn an_altered_checkpoint_fails_its_signature() {
        let signer = Signer::from_seed(&[1; 32], "broker").unwrap();
        let c = signer.sign(&heads(), "2026-11-23T00:00:00Z");
        let mut lowered = c.clone();
        lowered.heads[0].sequence = 3;
        assert!(lowered.check_signature(&signer.public_key()).is_err());
        let mut renamed = c.clone();
        renamed.heads[0].writer = "broker-2".into();
        assert!(renamed.check_signature(&signer.public_key()).is_err());
        let mut dropped = c;
        dropped.heads.clear();
        assert!(dropped.check_signature(&signer.public_key()).is_err());
    }

    #[test]
    fn malformed_files_and_keys_are_named() {
        assert!(matches!(
            Checkpoint::parse("{}"),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(matches!(
            Checkpoint::parse("not json"),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(public_key_bytes("ed25519:zz").is_err());
        assert!(public_key_bytes("rsa:00").is_err());
        assert!(parse_hex::<2>("é1").is_none());
        assert!(parse_hex::<1>("+a").is_none());
        assert!(parse_hex::<1>("AB").is_none());
    }
}
