//! Opaque record references: what a consumer receives as `record_id` when
//! its grant names no key field.
//!
//! The reference is `hex(HMAC-SHA-256(secret, consumer ‖ provider ‖
//! record_type ‖ provider_id))`, truncated to [`REFERENCE_HEX_LEN`] hex
//! characters (128 bits), each part length-prefixed so that no two
//! different inputs share an encoding. It is stable for the same record and
//! consumer (a receiver recognises a repeat) and differs between consumers
//! (two consumers cannot join their data on it); without the broker's secret
//! it reveals nothing of the provider's id.

use ring::hmac;

/// Hex characters of a reference: 32, i.e. 128 bits of the HMAC.
pub const REFERENCE_HEX_LEN: usize = 32;

/// The broker's secret for record references.
pub struct ReferenceKey(hmac::Key);

impl std::fmt::Debug for ReferenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReferenceKey(..)")
    }
}

/// A secret too short to be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a record-reference secret is at least {min} bytes; this one is {len}")]
pub struct ReferenceKeyError {
    pub len: usize,
    pub min: usize,
}

impl ReferenceKey {
    /// The least secret length accepted: 32 bytes, the HMAC's output size.
    pub const MIN_BYTES: usize = 32;

    pub fn new(secret: &[u8]) -> Result<Self, ReferenceKeyError> {
        if secret.len() < Self::MIN_BYTES {
            return Err(ReferenceKeyError {
                len: secret.len(),
                min: Self::MIN_BYTES,
            });
        }
        Ok(ReferenceKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// A key from fresh random bytes, for a run whose references need not
    /// outlive it (tests, an in-memory CA).
    pub fn random() -> Result<Self, ring::error::Unspecified> {
        let secret: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
        Ok(ReferenceKey(hmac::Key::new(hmac::HMAC_SHA256, &secret)))
    }

    /// The reference `consumer` receives for `provider`'s record `provider_id`.
    pub fn reference(
        &self,
        consumer: &str,
        provider: &str,
        record_type: &str,
        provider_id: &str,
    ) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in [consumer, provider, record_type, provider_id] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = String::with_capacity(REFERENCE_HEX_LEN);
        for b in &tag.as_ref()[..REFERENCE_HEX_LEN / 2] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    /// A secret of its own for another use of this key (`label` names the
    /// use): `HMAC-SHA-256(secret, "crossgate derive" ‖ label)`. It cannot
    /// be told from random without the broker's secret, and no reference
    /// is ever equal to it (a reference is four length-prefixed parts).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"crossgate derive");
        ctx.update(&(label.len() as u64).to_be_bytes());
        ctx.update(label.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_stable_per_consumer_and_differ_between_consumers() {
        let key = ReferenceKey::new(&[7; 32]).unwrap();
        let a = key.reference(
            "education",
            "public-security",
            "person.v1",
            "110105198405049582",
        );
        assert_eq!(a.len(), REFERENCE_HEX_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            a,
            key.reference(
                "education",
                "public-security",
                "person.v1",
                "110105198405049582"
            )
        );
        assert_ne!(
            a,
            key.reference("tax", "public-security", "person.v1", "110105198405049582")
        );
        assert_ne!(
            a,
            key.reference(
                "education",
                "public-security",
                "person.v1",
                "110105198405049583"
            )
        );
        // Another secret, another reference.
        let other = ReferenceKey::new(&[8; 32]).unwrap();
        assert_ne!(
            a,
            other.reference(
                "education",
                "public-security",
                "person.v1",
                "110105198405049582"
            )
        );
        // Parts are length-prefixed: moving a boundary changes the reference.
        assert_ne!(
            key.reference("ab", "c", "t", "1"),
            key.reference("a", "bc", "t", "1")
        );
    }

    #[test]
    fn derived_secrets_differ_by_label_and_by_key() {
        let key = ReferenceKey::new(&[7; 32]).unwrap();
        let a = key.derive("audit record id");
        assert_eq!(a, key.derive("audit record id"));
        assert_ne!(a, key.derive("audit record ids"));
        assert_ne!(
            a,
            ReferenceKey::new(&[8; 32])
                .unwrap()
                .derive("audit record id")
        );
        assert_ne!(a, [7; 32]);
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert_eq!(
            ReferenceKey::new(&[1; 16]).unwrap_err(),
            ReferenceKeyError { len: 16, min: 32 }
        );
    }
}
