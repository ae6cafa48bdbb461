//! Which Linux family's system trust store applies: read from `<root>/etc/os-release` (`ID`, then
//! each `ID_LIKE` entry), falling back to which update tool exists. Kept apart from the store code
//! so the decision is plain data that tests can drive with a fake root.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::Serialize;

use super::exec;

/// A Linux family whose system trust store works one way (see [`super`] for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Debian, Ubuntu and derivatives: `update-ca-certificates`.
    Debian,
    /// Fedora, RHEL, CentOS, Rocky, Alma, Amazon Linux: `update-ca-trust extract`.
    Fedora,
    /// Arch, Manjaro, EndeavourOS: `trust extract-compat`.
    Arch,
    /// openSUSE and SLES: `update-ca-certificates` (the p11-kit based one).
    OpenSuse,
}

impl Family {
    /// The lowercase name used in reports and in `KOI_TRUST_FAMILY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Debian => "debian",
            Family::Fedora => "fedora",
            Family::Arch => "arch",
            Family::OpenSuse => "opensuse",
        }
    }

    /// The family of the system under `root`: `os-release` first, then the tools on PATH.
    pub fn detect(root: &Path) -> Option<Family> {
        Self::from_os_release_file(root).or_else(|| Self::from_tools(root))
    }

    /// The family named by `<root>/etc/os-release` (or `<root>/usr/lib/os-release`).
    pub fn from_os_release_file(root: &Path) -> Option<Family> {
        ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|rel| std::fs::read_to_string(root.join(rel)).ok())
            .and_then(|text| Self::from_os_release(&text))
    }

    /// The family named by os-release text: `ID` first, then `ID_LIKE` in order.
    pub fn from_os_release(text: &str) -> Option<Family> {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
                Some(
                    value
                        .trim()
                        .trim_matches(|c| c == '"' || c == '\'')
                        .to_string(),
                )
            })
        };
        let mut ids: Vec<String> = Vec::new();
        if let Some(id) = field("ID") {
            ids.push(id);
        }
        if let Some(like) = field("ID_LIKE") {
            ids.extend(like.split_whitespace().map(str::to_string));
        }
        ids.iter().find_map(|id| Self::from_id(id))
    }

    fn from_id(id: &str) -> Option<Family> {
        let id = id.to_ascii_lowercase();
        Some(match id.as_str() {
            "debian" | "ubuntu" | "raspbian" | "linuxmint" | "pop" | "elementary" | "kali"
            | "devuan" => Family::Debian,
            "fedora" | "rhel" | "centos" | "rocky" | "almalinux" | "amzn" | "ol" => Family::Fedora,
            "arch" | "archarm" | "manjaro" | "endeavouros" | "garuda" => Family::Arch,
            "suse" | "sles" | "sled" => Family::OpenSuse,
            other if other.starts_with("opensuse") => Family::OpenSuse,
            _ => return None,
        })
    }

    /// Guess from the update tools, as mkcert does: each family ships a different one (Debian's
    /// and openSUSE's share a name, so openSUSE is told apart by its anchor directory).
    fn from_tools(root: &Path) -> Option<Family> {
        if exec::which("update-ca-trust").is_some() {
            Some(Family::Fedora)
        } else if exec::which("trust").is_some()
            && root.join("etc/ca-certificates/trust-source").is_dir()
        {
            Some(Family::Arch)
        } else if exec::which("update-ca-certificates").is_some() {
            if root.join("etc/pki/trust").is_dir() {
                Some(Family::OpenSuse)
            } else {
                Some(Family::Debian)
            }
        } else {
            None
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `KOI_TRUST_FAMILY` was set to something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Linux family {0:?}: use one of debian, fedora, arch, opensuse")]
pub struct UnknownFamily(pub String);

impl FromStr for Family {
    type Err = UnknownFamily;

    /// Accepts the four family names and any distribution id [`Family::from_os_release`] knows
    /// (`ubuntu`, `rhel`, `manjaro`, `opensuse-tumbleweed`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_id(s.trim()).ok_or_else(|| UnknownFamily(s.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn os_release_id_then_id_like() {
        let ubuntu = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(Family::from_os_release(ubuntu), Some(Family::Debian));
        let rocky = "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
        assert_eq!(Family::from_os_release(rocky), Some(Family::Fedora));
        let derived = "ID=someos\nID_LIKE=\"arch\"\n";
        assert_eq!(Family::from_os_release(derived), Some(Family::Arch));
        let tw = "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n";
        assert_eq!(Family::from_os_release(tw), Some(Family::OpenSuse));
        // VERSION_ID must not be read as ID.
        assert_eq!(Family::from_os_release("VERSION_ID=12\n"), None);
        assert_eq!(Family::from_os_release("ID=plan9\n"), None);
    }

    #[test]
    fn parse_names() {
        assert_eq!("Fedora".parse::<Family>(), Ok(Family::Fedora));
        assert_eq!("opensuse".parse::<Family>(), Ok(Family::OpenSuse));
        assert!("beos".parse::<Family>().is_err());
    }
}
