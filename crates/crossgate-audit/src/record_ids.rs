//! How an entry names its records. An entry's `record_id` holds one
//! provider record id or, for an answer of several records, each of them,
//! comma-separated. A provider's id may itself hold a comma, so inside the
//! list `,` is written `%2C` and `%` is written `%25`: the list splits back
//! into exactly the ids it was made of, and a search for one id finds the
//! entries that name it and never one that names an id containing it.
//!
//! Entries written before this rule hold ids as given; they differ only for
//! ids holding `,` or `%`, which a search now looks for escaped.

use std::borrow::Cow;

/// An entry's `record_id` for the records `ids`, in order.
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

/// `id` as it stands among the ids of an entry's `record_id`.
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
