//! Reading records from files or stdin: one JSON document, or JSON Lines.

use std::io::Read;
use std::path::PathBuf;

/// Where a record came from, for `<file>:<line>:` prefixes.
pub struct Source {
    pub label: String,
    pub text: String,
}

/// One record of a source: its first line number and its bytes.
pub struct Document<'a> {
    pub line: usize,
    pub bytes: &'a [u8],
}

/// Read each FILE (`-` or none: stdin). An I/O error names the file.
pub fn read_sources(files: &[PathBuf]) -> Result<Vec<Source>, String> {
    if files.is_empty() {
        return Ok(vec![read_stdin()?]);
    }
    files
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return read_stdin();
            }
            let label = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| format!("{label}: cannot read: {e}"))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                format!(
                    "{label}: not UTF-8 text (byte {})",
                    e.utf8_error().valid_up_to()
                )
            })?;
            Ok(Source { label, text })
        })
        .collect()
}

fn read_stdin() -> Result<Source, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("<stdin>: cannot read: {e}"))?;
    Ok(Source {
        label: "<stdin>".into(),
        text,
    })
}

/// Split a source into documents: the whole text if it is one JSON document
/// (possibly spread over several lines), otherwise one document per non-blank
/// line (JSON Lines).
pub fn documents(source: &Source) -> Vec<Document<'_>> {
    let trimmed = source.text.trim_start();
    let lead = source.text.len() - trimmed.len();
    if !trimmed.is_empty() && is_single_document(trimmed) {
        let line = 1 + source.text[..lead].matches('\n').count();
        return vec![Document {
            line,
            bytes: trimmed.trim_end().as_bytes(),
        }];
    }
    source
        .text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Document {
            line: i + 1,
            bytes: l.trim().as_bytes(),
        })
        .collect()
}

/// A text spread over several lines that parses as exactly one JSON value.
fn is_single_document(text: &str) -> bool {
    text.trim_end().contains('\n') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(usize, String)> {
        let s = Source {
            label: "t".into(),
            text: text.into(),
        };
        documents(&s)
            .into_iter()
            .map(|d| (d.line, String::from_utf8_lossy(d.bytes).into_owned()))
            .collect()
    }

    #[test]
    fn json_lines_keep_their_line_numbers() {
        assert_eq!(
            lines("{\"a\":1}\n\n{\"b\":2}\n"),
            vec![(1, "{\"a\":1}".into()), (3, "{\"b\":2}".into())]
        );
    }

    #[test]
    fn a_pretty_printed_document_is_one_record() {
        assert_eq!(
            lines("\n{\n  \"a\": 1\n}\n"),
            vec![(2, "{\n  \"a\": 1\n}".into())]
        );
    }

    #[test]
    fn broken_json_lines_are_still_split_per_line() {
        assert_eq!(
            lines("{\"a\":\n{\"b\":2}"),
            vec![(1, "{\"a\":".into()), (2, "{\"b\":2}".into())]
        );
    }
}
