//! Canonical DNS names: the one form in which every name is compared, stored and certified.
//! `NAS.LAN`, `nas.lan.` and `nas.lan` are the same name; `bücher.lan` is `xn--bcher-kva.lan`.
//! [`canonical_name`] trims, drops one trailing dot, maps through IDNA (UTS 46, via the `idna`
//! crate) to lower-case A-labels, then checks host-name syntax (RFC 1123 labels). Join, issue,
//! the scope checks and the roster's ownership query all go through it, so two spellings of one
//! name can never become two certificates or two roster entries.

use crate::error::{Error, Result};

/// The canonical form of a DNS name, or [`Error::InvalidName`] saying why it is not one.
pub fn canonical_name(raw: &str) -> Result<String> {
    canonical(raw).map_err(|reason| Error::InvalidName {
        name: raw.to_owned(),
        reason,
    })
}

/// [`canonical_name`] with the reason as a plain string (for the scope's own error kinds).
pub(crate) fn canonical(raw: &str) -> std::result::Result<String, String> {
    let trimmed = raw.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err("it is empty".into());
    }
    if trimmed.contains('*') {
        return Err("wildcard names are not issued; ask for each host name".into());
    }
    let ascii = idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| "it is not a valid international domain name (IDNA refused it)".to_owned())?;
    let ascii = ascii.to_ascii_lowercase();
    validate_dns_name(&ascii)?;
    Ok(ascii)
}

/// The canonical form when there is one, else the trimmed lower-case text (for comparing names
/// stored by older builds, which may not be canonical).
pub fn comparable(raw: &str) -> String {
    canonical(raw).unwrap_or_else(|_| raw.trim().trim_end_matches('.').to_ascii_lowercase())
}

/// Host-name syntax (RFC 1123 labels): 1–63 of `[a-z0-9-]`, no edge hyphens, ≤ 253 in total.
/// Expects lower-case ASCII input.
pub(crate) fn validate_dns_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    if name.contains('*') {
        return Err("wildcard names are not issued; ask for each host name".into());
    }
    if name.ends_with('.') {
        return Err("remove the trailing dot".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label '{label}' is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "the label '{label}' has characters other than letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label '{label}' starts or ends with '-'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_trailing_dot_and_idna_meet_in_one_form() {
        for spelling in ["nas.lan", "NAS.LAN", "nas.lan.", " Nas.Lan. "] {
            assert_eq!(canonical_name(spelling).unwrap(), "nas.lan", "{spelling}");
        }
        assert_eq!(canonical_name("bücher.lan").unwrap(), "xn--bcher-kva.lan");
        assert_eq!(canonical_name("BÜCHER.lan.").unwrap(), "xn--bcher-kva.lan");
        assert_eq!(
            canonical_name("xn--bcher-kva.lan").unwrap(),
            "xn--bcher-kva.lan"
        );
        // Full-width letters are mapped by UTS 46 to their ASCII form.
        assert_eq!(canonical_name("ｎａｓ.lan").unwrap(), "nas.lan");
    }

    #[test]
    fn non_names_are_refused_with_a_reason() {
        for bad in [
            "", ".", "*.lan", "a..b", "-x.lan", "x_y.lan", "host..", "a b.lan", "a/b.lan",
        ] {
            assert!(canonical_name(bad).is_err(), "{bad:?} accepted");
        }
        let e = canonical_name("*.lan").unwrap_err().to_string();
        assert!(e.contains("wildcard"), "{e}");
    }

    #[test]
    fn comparable_never_fails() {
        assert_eq!(comparable("NAS.LAN."), "nas.lan");
        assert_eq!(comparable("Odd_Name."), "odd_name");
    }
}
