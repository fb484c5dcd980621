//! How an entry names its records. A provider's record id is a value of
//! the record (for `person.v1` the citizen's identity number), and the log
//! holds digests, never values: an entry's `record_id` holds the keyed
//! digest of each id ([`RecordIdKey`]), `id:` and 32 hex characters, one
//! for a single record and, for an answer of several records, one for each,
//! comma-separated. A search by record id digests the id it is given with
//! the same key, so "who received this record" is still answered; without
//! the broker's secret the digests cannot be tried against a list of
//! candidate ids.
//!
//! Entries written before digests hold the ids themselves: first as given,
//! then (from the rule that a list splits back into its ids) with `,`
//! written `%2C` and `%` written `%25` inside an id. A search still finds
//! them by the id ([`record_id_member`]), and [`split_record_ids`] splits
//! any of the three forms.

use ring::hmac;
use std::borrow::Cow;

/// What starts a record id's digest in an entry.
pub const RECORD_ID_DIGEST_PREFIX: &str = "id:";

/// Hex characters of a record id's digest after its prefix (128 bits).
const DIGEST_HEX_LEN: usize = 32;

/// The key of the log's record-id digests. Every writer of one log uses the
/// same key (the broker derives it from its reference secret), so the same
/// id has the same digest in every chain.
#[derive(Clone)]
pub struct RecordIdKey(hmac::Key);

impl std::fmt::Debug for RecordIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordIdKey(..)")
    }
}

impl RecordIdKey {
    /// The key made from a 32-byte secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        RecordIdKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The key from its file's text (`crossgate certs id-key`): the secret
    /// as 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Option<Self> {
        let hex = text.trim().as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut secret = [0u8; 32];
        for (byte, pair) in secret.iter_mut().zip(hex.chunks(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(RecordIdKey::new(&secret))
    }

    /// `id`'s digest as an entry holds it: `id:` and the first 32 hex
    /// characters of HMAC-SHA-256(key, id). An empty id names no record and
    /// stays empty.
    pub fn digest(&self, id: &str) -> String {
        let mut out = String::with_capacity(RECORD_ID_DIGEST_PREFIX.len() + DIGEST_HEX_LEN);
        self.push_digest(&mut out, id);
        out
    }

    /// An entry's `record_id` for the records `ids`, in order: each id's
    /// digest, comma-separated.
    pub fn record_ids<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = String::new();
        for (n, id) in ids.into_iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            self.push_digest(&mut out, id);
        }
        out
    }

    fn push_digest(&self, out: &mut String, id: &str) {
        if id.is_empty() {
            return;
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let tag = hmac::sign(&self.0, id.as_bytes());
        out.push_str(RECORD_ID_DIGEST_PREFIX);
        for b in &tag.as_ref()[..DIGEST_HEX_LEN / 2] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Whether `s` is a record id's digest as entries show it (`id:` and 32
/// lowercase hex characters).
pub fn is_record_id_digest(s: &str) -> bool {
    s.strip_prefix(RECORD_ID_DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == DIGEST_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// An entry's `record_id` for the records `ids` as entries written before
/// digests held them (the ids themselves, escaped). Only for reading and
/// testing older logs: a writer uses [`RecordIdKey::record_ids`].
pub fn record_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (n, id) in ids.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        push_member(&mut out, id);
    }
    out
}

/// `id` as it stands among the ids of an entry written before digests.
pub fn record_id_member(id: &str) -> Cow<'_, str> {
    if !id.contains([',', '%']) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 4);
    push_member(&mut out, id);
    Cow::Owned(out)
}

/// The ids an entry's `record_id` names, as they were given to
/// [`record_ids`]. A `%` not followed by `2C` or `25` (an entry written
/// before the rule) is kept as it is.
pub fn split_record_ids(field: &str) -> impl Iterator<Item = Cow<'_, str>> {
    field.split(',').map(|member| {
        if !member.contains('%') {
            return Cow::Borrowed(member);
        }
        let mut out = String::with_capacity(member.len());
        let mut rest = member;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match after.get(..2) {
                Some("2C" | "2c") => out.push(','),
                Some("25") => out.push('%'),
                _ => {
                    out.push('%');
                    rest = after;
                    continue;
                }
            }
            rest = &after[2..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    })
}

fn push_member(out: &mut String, id: &str) {
    for c in id.chars() {
        match c {
            ',' => out.push_str("%2C"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(field: &str) -> Vec<String> {
        split_record_ids(field).map(Cow::into_owned).collect()
    }

    #[test]
    fn a_list_splits_back_into_the_ids_it_was_made_of() {
        for ids in [
            vec!["110105198405049582"],
            vec!["A,B", "C"],
            vec!["50%", "%2C", "%25", ",", "%", ""],
            vec!["", "7"],
            vec!["身份,证", "x%y,z"],
        ] {
            let field = record_ids(ids.iter().copied());
            assert_eq!(split(&field), ids, "{field:?}");
        }
    }

    #[test]
    fn plain_ids_are_written_as_they_are() {
        assert_eq!(
            record_ids(["110105198405049582", "110108198912063214"]),
            "110105198405049582,110108198912063214"
        );
        assert_eq!(record_ids(["A,B", "C"]), "A%2CB,C");
        assert_eq!(record_ids(["50%"]), "50%25");
        assert_eq!(record_ids(std::iter::empty()), "");
        assert!(matches!(record_id_member("P-7"), Cow::Borrowed("P-7")));
        assert_eq!(record_id_member("A,B"), "A%2CB");
    }

    #[test]
    fn a_digest_is_keyed_and_never_shows_the_id() {
        let key = RecordIdKey::new(&[7; 32]);
        let d = key.digest("110105198405049582");
        assert_eq!(d.len(), 3 + 32);
        assert!(d.starts_with("id:"));
        assert!(d[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!d.contains("110105198405049582"));
        assert_eq!(d, key.digest("110105198405049582"));
        assert_ne!(d, key.digest("110105198405049583"));
        assert_ne!(d, RecordIdKey::new(&[8; 32]).digest("110105198405049582"));
        assert_eq!(key.digest(""), "");
        assert!(is_record_id_digest(&d));
        assert!(!is_record_id_digest("110105198405049582"));
        assert!(!is_record_id_digest(&d.to_uppercase()));
        assert!(!is_record_id_digest(&d[..d.len() - 1]));
    }

    #[test]
    fn a_key_file_holds_the_secret_in_hex() {
        let secret = [0xa7; 32];
        let text = format!("{}\n", "a7".repeat(32));
        let key = RecordIdKey::from_hex(&text).expect("64 hex characters");
        assert_eq!(key.digest("7"), RecordIdKey::new(&secret).digest("7"));
        assert_eq!(
            RecordIdKey::from_hex(&"A7".repeat(32)).unwrap().digest("7"),
            key.digest("7")
        );
        for bad in [
            "",
            "a7",
            &"a7".repeat(33),
            &"g7".repeat(32),
            &"é".repeat(32),
        ] {
            assert!(RecordIdKey::from_hex(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_list_of_digests_splits_into_each_ids_digest() {
        let key = RecordIdKey::new(&[7; 32]);
        let ids = ["A,B", "C", "50%", "身份"];
        let field = key.record_ids(ids);
        assert!(!field.contains("A,B") && !field.contains("身份"), "{field}");
        let want: Vec<String> = ids.iter().map(|id| key.digest(id)).collect();
        assert_eq!(split(&field), want);
        assert_eq!(key.record_ids(std::iter::empty()), "");
    }

    #[test]
    fn a_member_never_holds_the_separator() {
        for id in ["A,B", ",", ",,", "%2C", "a%,b"] {
            assert!(!record_id_member(id).contains(','), "{id:?}");
        }
    }

    #[test]
    fn an_older_entry_with_a_bare_percent_reads_as_written() {
        assert_eq!(split("50%"), ["50%"]);
        assert_eq!(split("5%0,%"), ["5%0", "%"]);
        assert_eq!(split("a%2"), ["a%2"]);
    }
}
