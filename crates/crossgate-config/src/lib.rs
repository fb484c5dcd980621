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
    if h.len() != 2 || m.len() != 2 {
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
        for bad in ["8", "+8:00", "+08", "Asia/Shanghai", "+15:00", ""] {
            assert!(parse_utc_offset(bad).is_none(), "{bad}");
        }
    }
}
