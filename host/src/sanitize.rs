//! Terminal safety for plugin-originated strings. Anything a plugin sends may hold remote data (an
//! mDNS instance name, a joining machine's host name in an audit log), so before the host prints
//! it, control characters become visible escapes: C0 controls (ESC, BEL, CR, …), DEL, C1 controls
//! (U+0080–U+009F, e.g. the 8-bit CSI U+009B), bidirectional overrides and isolates (U+202A–U+202E,
//! U+2066–U+2069, LRM/RLM/ALM) and line/paragraph separators (the rule and the escapes are
//! `koi_protocol::terminal`, shared with plugins). [`line`] is for one-line places
//! (table cells, keys, streamed items, prompts, progress, error messages, relayed log lines) and
//! also escapes `\n` and `\t`; [`text`] is for multi-line blocks (shown text, captions, hints,
//! multi-line result values) and keeps `\n` and `\t`. [`json`] prints JSON for `--json`: serde
//! already escapes C0; DEL, C1 and bidi characters are written as `\uXXXX` escapes too, which
//! denote the very same JSON value.

use koi_protocol::terminal::{must_escape as dangerous, push_escaped};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

fn escape(s: &str, keep_layout: bool) -> Cow<'_, str> {
    let keep = |c: char| keep_layout && (c == '\n' || c == '\t');
    if !s.chars().any(|c| dangerous(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !dangerous(c) || keep(c) {
            out.push(c);
        } else {
            push_escaped(&mut out, c);
        }
    }
    Cow::Owned(out)
}

/// `s` for a one-line place: every control character (including `\n` and `\t`) escaped.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// `s` for a multi-line block: `\n` and `\t` kept, every other control character escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// `value` as compact JSON in which no character that could act on a terminal appears raw.
pub fn json(value: &Value) -> String {
    let raw = value.to_string();
    // Outside strings JSON holds only ASCII punctuation, digits and letters, so every such
    // character found is inside a string, where `\uXXXX` denotes the same character.
    if !raw.chars().any(dangerous) {
        return raw;
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        if dangerous(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NASTY: &str = "a\u{1b}[2Jb\u{7}c\rd\u{9b}31me\u{202e}f\u{7f}g";

    fn raw_controls(s: &str) -> Vec<char> {
        s.chars().filter(|c| dangerous(*c)).collect()
    }

    #[test]
    fn one_line_places_escape_every_control_character_visibly() {
        let shown = line(NASTY);
        assert!(raw_controls(&shown).is_empty(), "{shown:?}");
        assert_eq!(shown, "a\\e[2Jb\\x07c\\rd\\u{9b}31me\\u{202e}f\\x7fg");
        assert_eq!(line("two\nlines\tand tab"), "two\\nlines\\tand tab");
        assert!(matches!(line("plain café ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn text_blocks_keep_newlines_and_tabs_only() {
        assert_eq!(text("one\n\ttwo\u{1b}]0;t\u{7}"), "one\n\ttwo\\e]0;t\\x07");
    }

    #[test]
    fn json_stays_the_same_value_without_raw_controls() {
        let value = json!({"name": NASTY, "list": ["\u{2066}x\u{2069}", 1, null]});
        let printed = json(&value);
        assert!(raw_controls(&printed).is_empty(), "{printed:?}");
        let parsed: Value = serde_json::from_str(&printed).expect("still JSON");
        assert_eq!(parsed, value);
    }
}
