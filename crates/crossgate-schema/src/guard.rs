//! Limits checked on raw bytes before a document is parsed, so that a peer
//! cannot make the parser allocate without bound or recurse deeply.

/// Largest accepted document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest accepted nesting of objects and arrays.
pub const MAX_DEPTH: usize = 64;

/// The deepest nesting of `[`/`{` in `bytes`, ignoring brackets inside strings.
/// Stops counting once `limit` is exceeded and returns `limit + 1`.
pub fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return limit + 1;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nesting_outside_strings_only() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#, 64), 3);
        assert_eq!(nesting_depth(br#""\"[[""#, 64), 0);
        assert_eq!(nesting_depth(&[b'['; 1000], 64), 65);
    }
}
