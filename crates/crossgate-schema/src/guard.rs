//! Limits checked on raw bytes before a document is parsed, so that a peer
//! cannot make the parser allocate without bound or recurse deeply.

/// Largest accepted document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest accepted nesting of objects and arrays.
pub const MAX_DEPTH: usize = 64;
/// Most items of one array.
pub const MAX_ARRAY_ITEMS: usize = 5_000;
/// Most values in one document (every object member and array item counts).
pub const MAX_VALUES: usize = 50_000;

/// Hand each byte outside JSON strings to `visit`, until it returns false.
fn outside_strings(bytes: &[u8], mut visit: impl FnMut(u8) -> bool) {
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
        if b == b'"' {
            in_string = true;
        } else if !visit(b) {
            return;
        }
    }
}

/// Which structure limit `bytes` breaks, if any: an array with more than
/// [`MAX_ARRAY_ITEMS`] items, or more than [`MAX_VALUES`] values. Counted
/// on the raw bytes (separators and containers outside strings), before
/// anything is parsed or validated.
pub fn too_wide(bytes: &[u8]) -> Option<(&'static str, usize)> {
    // For each open container: whether it is an array, and its separators.
    let mut open: Vec<(bool, usize)> = Vec::new();
    let mut values = 0usize;
    let mut broken = None;
    outside_strings(bytes, |b| {
        match b {
            b'[' | b'{' => {
                open.push((b == b'[', 0));
                values += 1;
            }
            b']' | b'}' => {
                open.pop();
            }
            b',' => {
                values += 1;
                if let Some((is_array, separators)) = open.last_mut() {
                    *separators += 1;
                    if *is_array && *separators >= MAX_ARRAY_ITEMS {
                        broken = Some(("an array of more items", MAX_ARRAY_ITEMS));
                    }
                }
            }
            _ => {}
        }
        if values > MAX_VALUES {
            broken = Some(("more values", MAX_VALUES));
        }
        broken.is_none()
    });
    broken
}

/// The deepest nesting of `[`/`{` in `bytes`, ignoring brackets inside strings.
/// Stops counting once `limit` is exceeded and returns `limit + 1`.
pub fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    outside_strings(bytes, |b| {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        max <= limit
    });
    max.min(limit + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_arrays_and_too_many_values_are_found_on_the_bytes() {
        let items = |n: usize| format!("{{\"goods\":[{}]}}", vec!["{}"; n].join(","));
        assert_eq!(too_wide(items(MAX_ARRAY_ITEMS).as_bytes()), None);
        assert_eq!(
            too_wide(items(MAX_ARRAY_ITEMS + 1).as_bytes()),
            Some(("an array of more items", MAX_ARRAY_ITEMS))
        );
        assert_eq!(
            too_wide(b"[\"a,b,c,d\"]"),
            None,
            "commas in strings do not count"
        );
        let many: String = (0..=MAX_VALUES)
            .map(|i| format!("\"k{i}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            too_wide(format!("{{{many}}}").as_bytes()),
            Some(("more values", MAX_VALUES))
        );
    }

    #[test]
    fn counts_nesting_outside_strings_only() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#, 64), 3);
        assert_eq!(nesting_depth(br#""\"[[""#, 64), 0);
        assert_eq!(nesting_depth(&[b'['; 1000], 64), 65);
    }
}
