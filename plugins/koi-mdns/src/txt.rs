//! TXT records (RFC 6763 §6): parsing `--txt key=value` arguments, enforcing the limits (each
//! `key=value` string at most 255 bytes, keys printable ASCII without `=`, unique ignoring case),
//! and turning received TXT data into a plain map. Pure functions.

use crate::error::MdnsError;
use std::collections::BTreeMap;

/// The most bytes one TXT string (`key=value`) may hold: its length is a single byte.
pub const MAX_ENTRY_BYTES: usize = 255;

/// One validated TXT entry. `value: None` is a boolean attribute (`key` with no `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtEntry {
    /// The key.
    pub key: String,
    /// The value, if any.
    pub value: Option<String>,
}

impl TxtEntry {
    /// The size of the entry on the wire, without its length byte.
    pub fn wire_len(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len() + 1)
    }
}

/// Parses one `key=value` (or bare `key`) argument.
pub fn parse_entry(given: &str) -> Result<TxtEntry, MdnsError> {
    let (key, value) = match given.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (given, None),
    };
    check(key, value)
}

/// Checks one key and value.
pub fn check(key: &str, value: Option<String>) -> Result<TxtEntry, MdnsError> {
    let shown = match &value {
        Some(v) => format!("{key}={v}"),
        None => key.to_owned(),
    };
    let malformed = |reason: &str| MdnsError::TxtMalformed {
        entry: shown.chars().take(80).collect(),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(malformed("the key is empty"));
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'=') {
        return Err(malformed("keys must be printable ASCII without `=`"));
    }
    let entry = TxtEntry {
        key: key.to_owned(),
        value,
    };
    let len = entry.wire_len();
    if len > MAX_ENTRY_BYTES {
        return Err(MdnsError::TxtEntryTooLong {
            key: key.to_owned(),
            len,
        });
    }
    Ok(entry)
}

/// Parses every `--txt` argument and rejects duplicate keys (compared ignoring ASCII case, as
/// RFC 6763 §6.4 says).
pub fn parse_all<'a, I: IntoIterator<Item = &'a str>>(
    entries: I,
) -> Result<Vec<TxtEntry>, MdnsError> {
    let mut out: Vec<TxtEntry> = Vec::new();
    for given in entries {
        let entry = parse_entry(given)?;
        if out.iter().any(|e| e.key.eq_ignore_ascii_case(&entry.key)) {
            return Err(MdnsError::TxtMalformed {
                entry: given.chars().take(80).collect(),
                reason: format!("the key `{}` is given twice", entry.key),
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// Validates a map (from another plugin's `advertise` call).
pub fn from_map(map: &BTreeMap<String, String>) -> Result<Vec<TxtEntry>, MdnsError> {
    let mut out: Vec<TxtEntry> = Vec::new();
    for (k, v) in map {
        let entry = check(k, Some(v.clone()))?;
        if out.iter().any(|e| e.key.eq_ignore_ascii_case(&entry.key)) {
            return Err(MdnsError::TxtMalformed {
                entry: k.clone(),
                reason: format!("the key `{k}` is given twice (keys ignore case)"),
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// Received TXT properties as a map: a boolean attribute maps to `""`; values that are not UTF-8
/// are shown with replacement characters. The first occurrence of a key wins (RFC 6763 §6.4).
pub fn to_map(props: &mdns_sd::TxtProperties) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for p in props.iter() {
        let value = p
            .val()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        map.entry(p.key().to_owned()).or_insert(value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_key_value_or_flag() {
        assert_eq!(
            parse_entry("path=/x"),
            Ok(TxtEntry {
                key: "path".into(),
                value: Some("/x".into())
            })
        );
        assert_eq!(
            parse_entry("a=b=c").map(|e| e.value),
            Ok(Some("b=c".into()))
        );
        assert_eq!(parse_entry("flag").map(|e| e.value), Ok(None));
        assert_eq!(parse_entry("empty=").map(|e| e.value), Ok(Some("".into())));
    }

    #[test]
    fn the_255_byte_limit_counts_key_equals_and_value() {
        let ok = format!("k={}", "v".repeat(253));
        assert_eq!(parse_entry(&ok).map(|e| e.wire_len()), Ok(255));
        let long = format!("k={}", "v".repeat(254));
        assert_eq!(
            parse_entry(&long),
            Err(MdnsError::TxtEntryTooLong {
                key: "k".into(),
                len: 256
            })
        );
        // Multi-byte characters count in bytes.
        let utf8 = format!("k={}", "é".repeat(127));
        assert!(matches!(
            parse_entry(&utf8),
            Err(MdnsError::TxtEntryTooLong { len: 256, .. })
        ));
    }

    #[test]
    fn bad_keys_and_duplicates_are_rejected() {
        assert!(matches!(
            parse_entry("=v"),
            Err(MdnsError::TxtMalformed { .. })
        ));
        assert!(matches!(
            parse_entry("ké=v"),
            Err(MdnsError::TxtMalformed { .. })
        ));
        assert!(matches!(
            parse_all(["a=1", "A=2"]),
            Err(MdnsError::TxtMalformed { reason, .. }) if reason.contains("twice")
        ));
        assert_eq!(parse_all(["a=1", "b=2"]).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn maps_from_other_plugins_are_checked_too() {
        let mut map = BTreeMap::new();
        map.insert("ca".to_owned(), "x".repeat(300));
        assert!(matches!(
            from_map(&map),
            Err(MdnsError::TxtEntryTooLong { .. })
        ));
    }
}
