//! Which characters must never reach a terminal raw, and how they are shown instead. One rule for
//! every side: the host escapes plugin-originated strings before printing them, and a plugin that
//! stores text from the network (koi-certmesh's audit log) escapes it the same way before storing
//! it. Unsafe are the C0 controls (ESC, BEL, CR, …), DEL, the C1 controls (U+0080–U+009F, e.g. the
//! 8-bit CSI U+009B), bidirectional marks, overrides and isolates (U+061C, U+200E/F,
//! U+202A–U+202E, U+2066–U+2069) and the line and paragraph separators (U+2028/9).

use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
}

/// Appends the visible form of the unsafe character `c` to `out`: `\n`, `\r`, `\t`, `\e` (ESC),
/// `\xNN` for other ASCII controls and DEL, `\u{NNNN}` for the rest.
pub fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{1b}' => out.push_str("\\e"),
        c if u32::from(c) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsafe_character_gets_a_visible_form() {
        let mut out = String::new();
        for c in "\u{1b}\u{7}\r\n\t\u{7f}\u{9b}\u{202e}\u{2028}".chars() {
            assert!(must_escape(c), "{c:?}");
            push_escaped(&mut out, c);
        }
        assert_eq!(out, "\\e\\x07\\r\\n\\t\\x7f\\u{9b}\\u{202e}\\u{2028}");
        assert!(!"plain café ✓ \\".chars().any(must_escape));
    }
}
