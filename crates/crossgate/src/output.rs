//! Text for auditors' and operators' eyes and tools: what a partner wrote
//! into a field (a purpose, a record id) cannot forge a row of a table or
//! run as a formula in a spreadsheet.

/// Control characters (newlines, escapes, …) shown escaped (`\n`,
/// `\u{1b}`), so that one entry is one line and no terminal sequence runs.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    // The CSV escaping lives with the log's entries (the console writes
    // the same); checked here as the CLI's output.
    use crossgate_audit::entry::csv_cell;

    #[test]
    fn a_newline_or_an_escape_cannot_forge_a_row_or_drive_a_terminal() {
        assert_eq!(printable("audit\nforged row"), "audit\\nforged row");
        assert_eq!(printable("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(printable("入学 ok"), "入学 ok");
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_cell("plain"), "\"plain\"");
        assert_eq!(csv_cell("a,\"b\"\nc"), "\"a,\"\"b\"\"\nc\"");
        for f in ["=HYPERLINK(\"x\")", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            let cell = csv_cell(f);
            assert!(cell.starts_with("\"'"), "{f:?} -> {cell}");
        }
    }
}
