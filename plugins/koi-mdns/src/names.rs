//! Names on the wire: DNS-SD service types (RFC 6763 §7), instance names (one DNS label) and mDNS
//! host names. Pure functions, checked before anything touches the network, so a bad name is a
//! clear error instead of a silent drop inside the engine.

use crate::error::MdnsError;

/// The enumeration meta-type (RFC 6763 §9): browsing it lists the service types on the link.
pub const SERVICES_META_TYPE: &str = "_services._dns-sd._udp.local.";

/// A validated service type such as `_http._tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceType {
    name: String,
    udp: bool,
}

impl ServiceType {
    /// Parses `_name._tcp`, `_name._udp`, optionally followed by `.local` or `.local.`.
    pub fn parse(given: &str) -> Result<Self, MdnsError> {
        let bad = |reason: &str| MdnsError::InvalidServiceType {
            given: given.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = given.trim();
        let lower = trimmed.to_ascii_lowercase();
        let core = lower
            .strip_suffix(".local.")
            .or_else(|| lower.strip_suffix(".local"))
            .unwrap_or(&lower);
        let core = core.strip_suffix('.').unwrap_or(core);
        if core.is_empty() {
            return Err(bad("it is empty"));
        }
        let labels: Vec<&str> = core.split('.').collect();
        if labels.len() != 2 {
            return Err(bad(
                "a service type has exactly two labels, the service and the protocol",
            ));
        }
        let udp = match labels[1] {
            "_tcp" => false,
            "_udp" => true,
            _ => return Err(bad("the protocol label must be `_tcp` or `_udp`")),
        };
        let Some(name) = labels[0].strip_prefix('_') else {
            return Err(bad("the service label must start with `_`"));
        };
        if name.is_empty() || name.len() > 15 {
            return Err(bad("the service name must be 1 to 15 characters"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad(
                "the service name may hold only letters, digits and hyphens",
            ));
        }
        if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
            return Err(bad(
                "hyphens may not start or end the service name, nor stand next to each other",
            ));
        }
        if !name.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err(bad("the service name needs at least one letter"));
        }
        Ok(Self {
            name: name.to_owned(),
            udp,
        })
    }

    /// `_http._tcp`.
    pub fn short(&self) -> String {
        format!("_{}._{}", self.name, if self.udp { "udp" } else { "tcp" })
    }

    /// `_http._tcp.local.`, the form the engine and the wire use.
    pub fn fqdn(&self) -> String {
        format!("{}.local.", self.short())
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// Strips `.local.`/`.local` from a service type received from the network (`_http._tcp.local.`
/// → `_http._tcp`). Unknown shapes are returned unchanged.
pub fn short_type(ty_domain: &str) -> String {
    ty_domain
        .strip_suffix(".local.")
        .or_else(|| ty_domain.strip_suffix(".local"))
        .unwrap_or(ty_domain)
        .to_owned()
}

/// Checks an instance name: non-empty, at most 63 bytes of UTF-8 (one DNS label), no control
/// characters. Returns it trimmed.
pub fn instance_name(given: &str) -> Result<String, MdnsError> {
    let name = given.trim();
    if name.is_empty() {
        return Err(MdnsError::InstanceNameEmpty);
    }
    if name.len() > 63 {
        return Err(MdnsError::InstanceNameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(MdnsError::InstanceNameInvalid {
            name: name.escape_debug().to_string(),
            reason: "it contains control characters".into(),
        });
    }
    Ok(name.to_owned())
}

/// The instance part of a full name (`web (2)._http._tcp.local.` → `web (2)`), undoing the
/// engine's escaping of dots and backslashes.
pub fn instance_of(fullname: &str, ty_domain: &str) -> String {
    let suffix = format!(".{ty_domain}");
    let raw = if fullname.len() > suffix.len()
        && fullname
            .to_ascii_lowercase()
            .ends_with(&suffix.to_ascii_lowercase())
    {
        &fullname[..fullname.len() - suffix.len()]
    } else {
        fullname
    };
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Normalises a host name to `name.local.`: accepts `nas`, `nas.local`, `nas.local.`; each label
/// 1–63 letters, digits or hyphens.
pub fn host_name(given: &str) -> Result<String, MdnsError> {
    let bad = |reason: &str| MdnsError::InvalidHostName {
        given: given.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = given.trim().to_ascii_lowercase();
    let core = lower
        .strip_suffix(".local.")
        .or_else(|| lower.strip_suffix(".local"))
        .unwrap_or(&lower);
    if core.is_empty() {
        return Err(bad("it is empty"));
    }
    for label in core.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("use only letters, digits and hyphens"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label may not start or end with a hyphen"));
        }
    }
    Ok(format!("{core}.local."))
}

/// This machine's host name as an mDNS name (`nodename.local.`), from the kernel's UTS name
/// (so `unshare --uts` gives a lab host its own name). Falls back to `koi.local.`.
pub fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| host_name(h.trim().split('.').next().unwrap_or("")).ok())
        .unwrap_or_else(|| "koi.local.".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_types_accept_the_usual_spellings() {
        for given in [
            "_http._tcp",
            "_http._tcp.local",
            "_http._tcp.local.",
            "_HTTP._TCP",
        ] {
            let t = ServiceType::parse(given).expect(given);
            assert_eq!(t.short(), "_http._tcp");
            assert_eq!(t.fqdn(), "_http._tcp.local.");
        }
        assert_eq!(
            ServiceType::parse("_certmesh._tcp").map(|t| t.short()),
            Ok("_certmesh._tcp".into())
        );
        assert_eq!(
            ServiceType::parse("_dns-sd._udp").map(|t| t.short()),
            Ok("_dns-sd._udp".into())
        );
        assert!(ServiceType::parse("_a1._udp").is_ok());
    }

    #[test]
    fn service_types_reject_what_rfc_6763_forbids() {
        for (given, needle) in [
            ("", "empty"),
            ("http", "two labels"),
            ("http._tcp", "start with `_`"),
            ("_http._sctp", "`_tcp` or `_udp`"),
            ("_a._b._tcp", "two labels"),
            ("_._tcp", "1 to 15"),
            ("_averyveryverylongname._tcp", "1 to 15"),
            ("_ht tp._tcp", "letters, digits and hyphens"),
            ("_-http._tcp", "hyphens"),
            ("_ht--tp._tcp", "hyphens"),
            ("_123._tcp", "at least one letter"),
        ] {
            match ServiceType::parse(given) {
                Err(MdnsError::InvalidServiceType { reason, .. }) => {
                    assert!(reason.contains(needle), "{given}: {reason}")
                }
                other => panic!("{given}: {other:?}"),
            }
        }
    }

    #[test]
    fn instance_names_are_one_label() {
        assert_eq!(instance_name(" My NAS ").as_deref(), Ok("My NAS"));
        assert_eq!(instance_name(""), Err(MdnsError::InstanceNameEmpty));
        assert!(instance_name(&"a".repeat(63)).is_ok());
        assert!(matches!(
            instance_name(&"a".repeat(64)),
            Err(MdnsError::InstanceNameTooLong { len: 64, .. })
        ));
        // 32 two-byte characters are 64 bytes.
        assert!(matches!(
            instance_name(&"é".repeat(32)),
            Err(MdnsError::InstanceNameTooLong { len: 64, .. })
        ));
    }

    #[test]
    fn instances_are_cut_from_full_names() {
        assert_eq!(
            instance_of("web (2)._http._tcp.local.", "_http._tcp.local."),
            "web (2)"
        );
        assert_eq!(
            instance_of("a\\.b._http._tcp.local.", "_http._tcp.local."),
            "a.b"
        );
        assert_eq!(instance_of("odd", "_http._tcp.local."), "odd");
    }

    #[test]
    fn host_names_normalise_to_local() {
        assert_eq!(host_name("nas").as_deref(), Ok("nas.local."));
        assert_eq!(host_name("NAS.local").as_deref(), Ok("nas.local."));
        assert_eq!(host_name("nas.local.").as_deref(), Ok("nas.local."));
        assert!(host_name("").is_err());
        assert!(host_name("na_s").is_err());
        assert!(host_name("-nas").is_err());
    }
}
