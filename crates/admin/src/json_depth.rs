//! The nesting depth of JSON text, measured in one pass over its bytes, without recursion.
//!
//! Values are kept as their raw JSON text (`RawValue`), which serde_json reads with an explicit
//! stack and no depth limit: a 100,000-deep array parses, and would be stored and served to
//! readers that cannot parse it. This scan finds the depth with a single counter, so no input
//! can make it use more than constant memory or any stack. It must not validate JSON: it runs on
//! text serde_json already accepted.

/// The deepest nesting of arrays and objects in `text`: 0 for a scalar, 1 for `[]` or `{}`, 2 for
/// `[[]]` or `{"a":[]}`. Brackets inside strings are not structure, and an escaped quote does not
/// end a string. On text that is not JSON it still ends, never panics, and counts unmatched
/// closing brackets as nothing.
pub(crate) fn nesting_depth(text: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Depth counts nested arrays and objects, and nothing inside strings (brackets, escaped
    /// quotes, escaped backslashes before a closing quote).
    #[test]
    fn depth_counts_structure_outside_strings() {
        let cases: [(&str, usize); 12] = [
            ("1", 0),
            ("\"[{\"", 0),
            ("null", 0),
            ("[]", 1),
            ("{}", 1),
            ("[1,[2,[3]],[4]]", 3),
            (r#"{"a":{"b":[{}]},"c":[]}"#, 4),
            (r#"["\"[[[["]"#, 1),
            (r#"["\\",[["x"]]]"#, 3),
            (r#"["\\\"]]]"]"#, 1),
            (r#"{"k\"}":[{"\u005b":1}]}"#, 3),
            ("[[]][[[]]]", 3),
        ];
        for (text, depth) in cases {
            assert_eq!(nesting_depth(text.as_bytes()), depth, "{text}");
        }
    }

    /// Arbitrary bytes never panic, and stray closers do not go below zero or hide later depth.
    #[test]
    fn non_json_input_is_harmless() {
        assert_eq!(nesting_depth(b"]]]]}}[["), 2);
        assert_eq!(nesting_depth(b"\"unterminated [[["), 0);
        assert_eq!(nesting_depth(b"\\\\[\xff\xfe{"), 2);
        assert_eq!(nesting_depth(b""), 0);
    }

    /// A 100,000-deep array is measured exactly, in constant stack.
    #[test]
    fn very_deep_input_is_measured_without_recursion() {
        let n = 100_000;
        let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(nesting_depth(text.as_bytes()), n);
    }
}
