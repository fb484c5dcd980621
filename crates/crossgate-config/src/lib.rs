//! Reading crossgate's configuration files. Every file is TOML read into
//! typed serde structs (`deny_unknown_fields`, values wrapped in
//! `toml::Spanned` where a later check may refuse them), and every refusal is
//! one [`ConfigError`]: `<file>:<line>: <what is wrong and the fix>`.
#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use std::ops::Range;

/// A config that cannot be used: `<file>:<line>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One configuration file's name and text, for parsing it and for pointing
/// at its lines.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source { file, text }
    }

    /// Parse the whole file; a TOML or shape error names its line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| ConfigError {
            file: self.file.to_owned(),
            line: e.span().map_or(0, |s| self.line_of(s.start)),
            message: e.message().trim().to_owned(),
        })
    }

    /// An error at the line where `span` (a `toml::Spanned` span) starts.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line_of(span.start),
            message: message.into(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        1 + self.text.as_bytes()[..offset.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
}

/// Publish (a subscription: the broker pushes records) or query (on demand):
/// grants are written for one, limits may differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Publish,
    Query,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Publish => "publish",
            Mode::Query => "query",
        }
    }

    /// `publish` or `query`, as configs and the CLI write them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "publish" => Some(Mode::Publish),
            "query" => Some(Mode::Query),
            _ => None,
        }
    }
}

/// A duration as configs write it: `500ms`, `2s`, `5min`, `1h`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "min" => std::time::Duration::from_secs(n.checked_mul(60)?),
        "h" => std::time::Duration::from_secs(n.checked_mul(3600)?),
        "d" => std::time::Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

/// The value of a `grpc-timeout` header: 1 to 8 ASCII digits and one unit,
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u`
/// (microseconds) or `n` (nanoseconds), as the gRPC over HTTP/2 spec writes
/// it. Anything else is `None`; the largest value (`99999999H`) fits.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: the multiplications below cannot overflow.
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A duration as [`parse_duration`] reads it back: in milliseconds, or in
/// seconds when it has more milliseconds than a `u64` holds (`"2s"` can be
/// read up to `u64::MAX` seconds, `"ms"` only up to `u64::MAX`
/// milliseconds). Below a millisecond is dropped.
fn duration_text(d: &std::time::Duration) -> String {
    match u64::try_from(d.as_millis()) {
        Ok(ms) => format!("{ms}ms"),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

/// `#[serde(with = "crossgate_config::duration")]`: a duration field written
/// as `"2s"` or `"500ms"`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration; write e.g. \"500ms\", \"2s\", \"5min\""
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::duration_text(d))
    }
}

/// `#[serde(with = "crossgate_config::durations")]`: a list of durations,
/// e.g. `["1s", "5s", "30s"]`.
pub mod durations {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// At least one duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        if texts.is_empty() {
            return Err(serde::de::Error::custom(
                "write at least one duration, e.g. [\"1s\", \"5s\"]",
            ));
        }
        texts
            .iter()
            .map(|text| {
                super::parse_duration(text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not a duration; write e.g. \"500ms\", \"2s\", \"5min\", \"1h\""
                    ))
                })
            })
            .collect()
    }

    pub fn serialize<S: Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ds.iter().map(super::duration_text))
    }
}

/// A UTC offset as configs write it: `+08:00`, `-05:30`, `Z` or `UTC`.
pub fn parse_utc_offset(text: &str) -> Option<chrono::FixedOffset> {
    if text == "Z" || text == "UTC" {
        return chrono::FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        name: toml::Spanned<String>,
        count: u32,
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let src = Source::new("x.toml", "name = \"a\"\ncount = \"three\"\n");
        let e = src.parse::<Shape>().unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("x.toml:2: "), "{e}");
        let src = Source::new("x.toml", "\n\nname = \"a\"\ncount = 3\ncolour = 1\n");
        assert_eq!(src.parse::<Shape>().unwrap_err().line, 5);
        let ok: Shape = Source::new("x.toml", "name = \"a\"\ncount = 3\n")
            .parse()
            .unwrap();
        assert_eq!(
            Source::new("x.toml", "name = \"a\"\ncount = 3\n")
                .error(ok.name.span(), "no")
                .to_string(),
            "x.toml:1: no"
        );
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "2", "s", "2 days", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_none(), "{bad}");
        }
    }

    /// Found by fuzzing (fuzz/ target `parsers`): `184467440737095516s`
    /// was written back as `184467440737095516000ms`, more milliseconds
    /// than parse_duration reads.
    #[test]
    fn durations_written_read_back() {
        use std::time::Duration;
        for d in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(u64::MAX),
            Duration::from_secs(184_467_440_737_095_516),
            Duration::from_secs(u64::MAX),
        ] {
            let text = duration_text(&d);
            assert_eq!(parse_duration(&text), Some(d), "{d:?} -> {text}");
        }
        assert_eq!(duration_text(&Duration::from_secs(2)), "2000ms");
        assert_eq!(
            duration_text(&Duration::from_secs(184_467_440_737_095_516)),
            "184467440737095516s"
        );
    }

    #[test]
    fn grpc_timeouts() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("0n"), Some(Duration::ZERO));
        assert_eq!(
            parse_grpc_timeout("00000005S"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600)),
            "the largest value fits"
        );
        for bad in [
            "",
            "S",
            "5",
            "123456789S",
            "5s",
            "5h",
            "5 S",
            " 5S",
            "5S ",
            "+5S",
            "-5S",
            "5.0S",
            "5SS",
            "٥S",
            "5é",
            "é",
            "0x5S",
            "99999999999999999999999H",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(
            parse_utc_offset("+08:00").unwrap().local_minus_utc(),
            8 * 3600
        );
        assert_eq!(
            parse_utc_offset("-05:30").unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        assert_eq!(parse_utc_offset("Z").unwrap().local_minus_utc(), 0);
        for bad in [
            "8",
            "+8:00",
            "+08",
            "Asia/Shanghai",
            "+15:00",
            "",
            "+-1:00",
            "+08:-5",
        ] {
            assert!(parse_utc_offset(bad).is_none(), "{bad}");
        }
    }
}

/// A URL fit to print: a password in it (`scheme://user:password@host`)
/// shown as `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn a_password_in_a_url_is_never_printed() {
        assert_eq!(
            redact_url("postgres://crossgate:s3cr3t@db:5432/crossgate?sslmode=require"),
            "postgres://crossgate:***@db:5432/crossgate?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:p@ss@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("sqlite:.crossgate/audit.db"),
            "sqlite:.crossgate/audit.db"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379?x=a@b"),
            "redis://127.0.0.1:6379?x=a@b"
        );
    }
}
