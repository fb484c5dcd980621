//! The national-code formats: GB 11643 identity numbers, GB 32100 unified
//! social credit codes and GB/T 2260 division codes.
//!
//! Each check has two forms: `is_*` (a bool, used by the compiled schemas on
//! the hot path, no allocation) and `explain_*` (the reason a value fails, for
//! the fault report; `None` when the value is valid).

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// The GB 11643 check character for the first 17 digits, or `None` if any of
/// them is not an ASCII digit.
pub fn resident_id_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (c, w) in first17.iter().zip(ID_WEIGHTS) {
        if !c.is_ascii_digit() {
            return None;
        }
        sum += u32::from(c - b'0') * w;
    }
    Some(ID_CHECK[(sum % 11) as usize])
}

/// The birth date inside an identity number, as (year, month, day), if it is a
/// real calendar day.
pub fn resident_id_birth_date(id: &str) -> Option<(u32, u32, u32)> {
    let b = id.as_bytes();
    if b.len() < 14 || !b[6..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        b[r].iter()
            .fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'))
    };
    let (y, m, d) = (num(6..10), num(10..12), num(12..14));
    is_real_date(y, m, d).then_some((y, m, d))
}

/// Whether y-m-d is a day of the proleptic Gregorian calendar (year 1 or later).
pub fn is_real_date(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && d >= 1 && d <= days
}

/// GB 11643: 18 characters, 17 digits then the check character (a digit or
/// upper-case `X`), a real birth date in digits 7–14.
pub fn is_resident_id(s: &str) -> bool {
    explain_resident_id(s).is_none()
}

/// Why `s` is not a GB 11643 identity number, or `None` if it is one.
pub fn explain_resident_id(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 18 {
        return Some(format!(
            "identity number must have 18 characters, has {}",
            s.chars().count()
        ));
    }
    if !b[..17].iter().all(u8::is_ascii_digit) {
        return Some("identity number: the first 17 characters must be digits".into());
    }
    if resident_id_birth_date(s).is_none() {
        return Some(format!(
            "identity number: birth date {} is not a real day",
            &s[6..14]
        ));
    }
    let expected = resident_id_check_char(&b[..17])?;
    if b[17] == b'x' && expected == b'X' {
        return Some("identity number: check character must be upper-case X".into());
    }
    if b[17] != expected {
        return Some(format!(
            "identity number: wrong check character {:?}, expected {:?}",
            char::from(b[17]),
            char::from(expected)
        ));
    }
    None
}

fn uscc_value(c: u8) -> Option<u32> {
    USCC_ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// The GB 32100 check character for the first 17 characters, or `None` if any
/// of them is outside the code's alphabet.
pub fn uscc_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (&c, w) in first17.iter().zip(USCC_WEIGHTS) {
        sum += uscc_value(c)? * w;
    }
    Some(USCC_ALPHABET[((31 - sum % 31) % 31) as usize])
}

/// GB 32100: 18 characters of `0-9A-Y` without I O S V Z, characters 3–8 a
/// division code shape, right check character.
pub fn is_uscc(s: &str) -> bool {
    explain_uscc(s).is_none()
}

/// Why `s` is not a GB 32100 unified social credit code, or `None` if it is one.
pub fn explain_uscc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 18 {
        return Some(format!(
            "credit code must have 18 characters, has {}",
            s.chars().count()
        ));
    }
    if let Some(bad) = b.iter().find(|&&c| uscc_value(c).is_none()) {
        return Some(format!(
            "credit code: character {:?} is not in the GB 32100 alphabet (0-9, A-Y without I O S V Z)",
            char::from(*bad)
        ));
    }
    if !is_division_code_bytes(&b[2..8]) {
        return Some(format!(
            "credit code: characters 3-8 ({}) are not a division code",
            &s[2..8]
        ));
    }
    let expected = uscc_check_char(&b[..17])?;
    if b[17] != expected {
        return Some(format!(
            "credit code: wrong check character {:?}, expected {:?}",
            char::from(b[17]),
            char::from(expected)
        ));
    }
    None
}

fn is_division_code_bytes(b: &[u8]) -> bool {
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let province = (b[0] - b'0') * 10 + (b[1] - b'0');
    (11..=82).contains(&province)
}

/// GB/T 2260 shape: six digits, province 11–82. Retired codes are not
/// rejected: identity numbers keep the code they were issued under.
pub fn is_division_code(s: &str) -> bool {
    is_division_code_bytes(s.as_bytes())
}

/// Why `s` is not a GB/T 2260 division code, or `None` if it is one.
pub fn explain_division_code(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
        return Some(format!("division code must be six digits, got {s:?}"));
    }
    if !is_division_code_bytes(b) {
        return Some(format!(
            "division code: province {} is outside 11-82",
            &s[..2]
        ));
    }
    None
}

/// Whether `s` is a `YYYY-MM-DD` date naming a real day.
pub fn is_plain_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    match (digits(0..4), digits(5..7), digits(8..10)) {
        (Some(y), Some(m), Some(d)) => is_real_date(y, m, d),
        _ => false,
    }
}

/// A format check: its name in schemas, the fast check, and the explanation.
pub type CustomFormat = (&'static str, fn(&str) -> bool, fn(&str) -> Option<String>);

/// The custom formats by the name schemas use in `format`.
pub const CUSTOM_FORMATS: &[CustomFormat] = &[
    ("cn-resident-id", is_resident_id, explain_resident_id),
    ("cn-uscc", is_uscc, explain_uscc),
    ("cn-division-code", is_division_code, explain_division_code),
];

#[cfg(test)]
mod tests;
