//! Trust profiles (seed 000, Phase 2 step 4 and Phase 4): `personal`, `team`, `organization`.
//! A profile is chosen at `koi certmesh create`, stored in the roster, and supplies the defaults
//! for approval, enrollment state, operator attribution, scope and the compliance summary.
//! Seed 000 fixes one rule outright — "organization profile requires approval + operator +
//! scope" — and the rest is our reading, documented in [`TrustProfile::defaults`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scope::Scope;

/// Who the mesh is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustProfile {
    /// One person's machines at home.
    Personal,
    /// A small team or office.
    Team,
    /// An institution with audit duties.
    Organization,
}

/// How much the compliance summary shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComplianceDetail {
    /// A simple health check.
    Basic,
    /// Health plus enrollment and issuance counts.
    Standard,
    /// The full audit summary.
    Full,
}

/// The defaults a profile implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileDefaults {
    /// An operator on the CA must approve each enrollment.
    pub requires_approval: bool,
    /// Enrollment is open right after `create` (otherwise `open-enrollment` is needed).
    pub enrollment_open_at_create: bool,
    /// Default length of an `open-enrollment` window, in seconds (`None` = until closed).
    pub default_window_seconds: Option<u64>,
    /// `create`/`join` prompt for an operator name.
    pub prompts_for_operator: bool,
    /// An operator name is mandatory.
    pub requires_operator: bool,
    /// A scope (`--domain` / `--subnet`) is mandatory.
    pub requires_scope: bool,
    /// Compliance summary detail.
    pub compliance: ComplianceDetail,
}

impl TrustProfile {
    /// All profiles, in prompt order.
    pub const ALL: [TrustProfile; 3] = [
        TrustProfile::Personal,
        TrustProfile::Team,
        TrustProfile::Organization,
    ];

    /// The profile's defaults.
    ///
    /// | | personal | team | organization |
    /// |---|---|---|---|
    /// | approval | no | no | **yes** |
    /// | enrollment at create | open | closed | closed |
    /// | default window | until closed | 1 h | 15 min |
    /// | operator | not asked | asked, optional | **required** |
    /// | scope | optional | optional | **required** |
    /// | compliance | basic | standard | full |
    pub fn defaults(self) -> ProfileDefaults {
        match self {
            TrustProfile::Personal => ProfileDefaults {
                requires_approval: false,
                enrollment_open_at_create: true,
                default_window_seconds: None,
                prompts_for_operator: false,
                requires_operator: false,
                requires_scope: false,
                compliance: ComplianceDetail::Basic,
            },
            TrustProfile::Team => ProfileDefaults {
                requires_approval: false,
                enrollment_open_at_create: false,
                default_window_seconds: Some(3600),
                prompts_for_operator: true,
                requires_operator: false,
                requires_scope: false,
                compliance: ComplianceDetail::Standard,
            },
            TrustProfile::Organization => ProfileDefaults {
                requires_approval: true,
                enrollment_open_at_create: false,
                default_window_seconds: Some(900),
                prompts_for_operator: true,
                requires_operator: true,
                requires_scope: true,
                compliance: ComplianceDetail::Full,
            },
        }
    }

    /// The lower-case name (`personal`, `team`, `organization`).
    pub fn as_str(self) -> &'static str {
        match self {
            TrustProfile::Personal => "personal",
            TrustProfile::Team => "team",
            TrustProfile::Organization => "organization",
        }
    }

    /// What a `create` request lacks for this profile, every item at once (empty when none).
    pub fn missing(self, scope: &Scope, operator: Option<&str>) -> Vec<Requirement> {
        let d = self.defaults();
        let mut missing = Vec::new();
        if d.requires_scope && scope.is_unrestricted() {
            missing.push(Requirement::Scope);
        }
        if d.requires_operator && operator.is_none_or(|o| o.trim().is_empty()) {
            missing.push(Requirement::Operator);
        }
        missing
    }

    /// Checks a `create` request against the profile's requirements, naming every one unmet.
    pub fn check_create(self, scope: &Scope, operator: Option<&str>) -> Result<()> {
        self.refuse(&self.missing(scope, operator))
    }

    /// The error for `missing` requirements (`Ok` when there are none): all of them in one
    /// message, so the user fixes the command line once.
    pub fn refuse(self, missing: &[Requirement]) -> Result<()> {
        if missing.is_empty() {
            return Ok(());
        }
        let what: Vec<&str> = missing.iter().map(|r| r.what()).collect();
        let flags: Vec<&str> = missing.iter().map(|r| r.flags()).collect();
        Err(Error::ProfileRequirement {
            profile: self.as_str(),
            requirement: what.join(" and "),
            next: format!("Pass {} to `koi certmesh create`.", flags.join(", and ")),
        })
    }
}

/// Something a trust profile requires of `create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// A scope: `--domain` and/or `--subnet`.
    Scope,
    /// An operator name: `--operator`.
    Operator,
}

impl Requirement {
    fn what(self) -> &'static str {
        match self {
            Requirement::Scope => "a scope",
            Requirement::Operator => "an operator name",
        }
    }

    fn flags(self) -> &'static str {
        match self {
            Requirement::Scope => "--domain D and/or --subnet CIDR",
            Requirement::Operator => "--operator NAME (it is written to the audit log)",
        }
    }
}

impl fmt::Display for TrustProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrustProfile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "personal" | "just-me" => Ok(TrustProfile::Personal),
            "team" => Ok(TrustProfile::Team),
            "organization" | "organisation" | "org" => Ok(TrustProfile::Organization),
            _ => Err(Error::ProfileRequirement {
                profile: "requested",
                requirement: "one of: personal, team, organization".into(),
                next: "Pass --profile personal, team or organization.".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organization_requires_scope_and_operator() {
        let org = TrustProfile::Organization;
        assert!(org.defaults().requires_approval);
        assert!(
            org.check_create(&Scope::unrestricted(), Some("ana"))
                .is_err()
        );
        let both = org.check_create(&Scope::unrestricted(), None).unwrap_err();
        assert!(
            both.to_string()
                .contains("requires a scope and an operator name"),
            "{both}"
        );
        assert!(both.to_string().contains("--operator NAME"), "{both}");
        let scope = Scope::new(&["lab.example"], &[] as &[&str]).unwrap();
        assert!(org.check_create(&scope, None).is_err());
        assert!(org.check_create(&scope, Some("ana")).is_ok());
        assert!(
            TrustProfile::Personal
                .check_create(&Scope::unrestricted(), None)
                .is_ok()
        );
        assert_eq!("Org".parse::<TrustProfile>().unwrap(), org);
        assert!("corp".parse::<TrustProfile>().is_err());
    }
}
