//! Making text from a recording safe to print in the auditor's terminal (everywhere but
//! `replay`, which plays output through [`crate::sanitize`]).
//!
//! Argv, working directories, paths, user and host names, gap reasons, anything the store holds
//! came from the recorded host, so it may carry escape sequences that would erase lines, move the
//! cursor or make the auditor's terminal answer as if typed, and bidirectional controls that make
//! a line read differently from what it holds. Printed through [`text`], every control character
//! is shown visibly and unambiguously: `\n`, `\r`, `\t`, `\\` for a backslash, `\x1b` for other
//! C0 controls and DEL, `\u{9b}` for C1 controls, `\u{202e}` for bidi, zero-width and other
//! invisible format characters, line and paragraph separators. Everything else prints as is.
//! JSON output goes through [`json`]: serde escapes C0 controls itself, [`json`] escapes the
//! rest (DEL, C1, bidi and invisible characters) as `\uXXXX`, so the JSON stays the same value.
use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` prints as itself.
fn plain(c: char) -> bool {
    !(c == '\\' || c.is_control() || invisible(c))
}

/// Format characters (Unicode category Cf) and separators that change how a line reads or
/// where it breaks without showing themselves.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}'                    // soft hyphen
        | '\u{61c}'                 // Arabic letter mark
        | '\u{180e}'                // Mongolian vowel separator
        | '\u{200b}'..='\u{200f}'   // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202e}'   // line/paragraph separators, bidi embeddings and overrides
        | '\u{2060}'..='\u{206f}'   // word joiner, invisible operators, bidi isolates
        | '\u{feff}'                // zero-width no-break space (BOM)
        | '\u{fff9}'..='\u{fffb}'   // interlinear annotation
    )
}

/// `s` with every control and invisible format character shown as an escape.
pub fn text(s: &str) -> Cow<'_, str> {
    if s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !plain(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON with the characters serde leaves raw (DEL, C1 controls, bidi and invisible
/// format characters, all in the Basic Multilingual Plane and only ever inside strings)
/// written as `\uXXXX` escapes: the same JSON value, safe on a terminal.
pub fn json(serialized: &str) -> Cow<'_, str> {
    if serialized
        .chars()
        .all(|c| c == '\\' || plain(c) || c == '\n')
    {
        return Cow::Borrowed(serialized);
    }
    let mut out = String::with_capacity(serialized.len() + 8);
    for c in serialized.chars() {
        if c == '\\' || c == '\n' || plain(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// [`text`] of an optional value, `-` when there is none.
pub fn or_dash(s: Option<&str>) -> Cow<'_, str> {
    s.map(text).unwrap_or(Cow::Borrowed("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for s in ["/srv/phi/caf\u{e9}.csv", "alice", "ls -la --color=auto", ""] {
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s));
        }
    }

    #[test]
    fn escape_sequences_and_controls_are_shown_not_sent() {
        assert_eq!(
            text("a\x1b[2K\x1b[1A\rb\nc\td\x07\x00\x7f"),
            "a\\x1b[2K\\x1b[1A\\rb\\nc\\td\\x07\\x00\\x7f"
        );
        // The 8-bit CSI and an OSC 52 clipboard write.
        assert_eq!(text("x\u{9b}6n"), "x\\u{9b}6n");
        assert_eq!(text("\x1b]52;c;ZXZpbA==\x07"), "\\x1b]52;c;ZXZpbA==\\x07");
    }

    #[test]
    fn bidi_and_invisible_characters_are_shown() {
        assert_eq!(text("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(
            text("a\u{2066}b\u{2069}\u{200b}\u{feff}\u{2028}"),
            "a\\u{2066}b\\u{2069}\\u{200b}\\u{feff}\\u{2028}"
        );
    }

    #[test]
    fn json_stays_the_same_value_without_raw_controls() {
        let value =
            serde_json::json!({"argv": ["a\x1b[2Kb", "c\u{9b}6n", "d\u{202e}e\u{7f}", "\\"]});
        let pretty = serde_json::to_string_pretty(&value).expect("serializes");
        let safe = json(&pretty);
        assert!(
            !safe.chars().any(|c| c != '\n' && !plain(c) && c != '\\'),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, value);
    }

    /// A recorded name cannot pose as an escape: backslashes are doubled.
    #[test]
    fn escaping_is_unambiguous() {
        assert_eq!(text("\\x1b"), "\\\\x1b");
        assert_ne!(text("\\x1b"), text("\x1b"));
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some("\x1bc")), "\\x1bc");
    }
}
