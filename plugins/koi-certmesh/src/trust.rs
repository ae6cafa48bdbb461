//! `koi certmesh trust install|remove|status`: put this mesh's root into (or take it out of) the
//! machine's trust stores, under a name unique to the mesh. The store work itself is in
//! [`crate::truststore`]; this module finds the root and turns a failed store into an error that
//! carries the exact command to run. `remove` also works from a root's fingerprint or name alone
//! (after `koi certmesh leave`, or a mesh folder moved away by hand), and `status` lists every
//! koi root found in each store, recognised by the `koi-certmesh-` prefix of its name.

use crate::app::App;
use crate::error;
use crate::files::{CertFiles, Membership, anchor_name};
use crate::layout::Layout;
use crate::leave;
use crate::truststore::{self, Anchor, StoreReport, StoreState, TrustConfig, TrustReport};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How every koi root's trust-store name begins ([`anchor_name`] builds them).
pub const ANCHOR_PREFIX: &str = "koi-certmesh-";

/// What `trust` does.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustAction {
    /// Add the mesh root to every trust store found, then verify.
    Install,
    /// Remove this mesh's root, or the one named by --fingerprint or --name.
    Remove,
    /// Show where this mesh's root is installed, and every koi root found in each store.
    Status,
}

/// Params of `trust`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustParams {
    /// install, remove or status.
    pub action: TrustAction,
    /// remove: the root's SHA-256 fingerprint, as `trust status` lists it (works without a mesh).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// remove: the root's trust-store name (koi-certmesh-…), as `trust status` lists it.
    #[serde(default)]
    pub name: Option<String>,
}

/// What `trust` answers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TrustResult {
    /// status: what was found, in one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// One row per store changed or checked for the root concerned (and, for status, each store
    /// that could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreReport>,
    /// status: every koi root found in each store (system, NSS, Java).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub koi_roots: Option<Vec<KoiRoot>>,
}

/// A koi root found in a trust store.
#[derive(Debug, Serialize, JsonSchema)]
pub struct KoiRoot {
    /// `system (debian)`, `nss` or `java`.
    pub store: String,
    /// The anchor file, NSS database or keystore.
    pub location: String,
    /// The name it is stored under (`koi-certmesh-` and the fingerprint's first 16 digits).
    pub name: String,
    /// SHA-256 of the root; `trust remove --fingerprint` takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The mesh it belongs to, when known: this machine's, or one it left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// It is the root of the mesh this machine is in now.
    pub current: bool,
}

/// The trust-store settings from the environment, with this `KOI_HOME` for privileged retries.
fn trust_config(layout: &Layout) -> TrustConfig {
    TrustConfig {
        koi_home: Some(layout.home().to_path_buf()),
        ..TrustConfig::from_env()
    }
}

/// The mesh root this machine uses (from its membership) and its fingerprint.
fn root(layout: &Layout) -> Result<(String, String), MethodError> {
    let membership = Membership::load(layout)?.ok_or_else(|| {
        error::fail(
            "This machine is not in a mesh yet, so there is no root to trust.",
            "Run `koi certmesh create` or `koi certmesh join` first.",
        )
    })?;
    let files = CertFiles::at(layout, &membership.hostname);
    let pem = std::fs::read_to_string(&files.ca).map_err(|e| {
        // `join` refuses on the CA, whose root is also kept in its CA directory.
        let next = if layout.is_ca() {
            format!(
                "Copy the CA's own root {} to {}, then run the command again.",
                layout.ca_dir().join("ca.pem").display(),
                files.ca
            )
        } else {
            "Join the mesh again (`koi certmesh join`, with a fresh code) to restore it.".into()
        };
        error::fail(
            format!("Failed to read the mesh root {}: {e}.", files.ca),
            next,
        )
    })?;
    Ok((pem, membership.ca_fingerprint))
}

/// Runs trust-store work (files, `update-ca-certificates`, `certutil`, `keytool`: seconds at
/// worst) off the protocol workers.
async fn run_blocking(
    ctx: &Context,
    f: impl FnOnce() -> TrustReport + Send + 'static,
) -> Result<TrustReport, MethodError> {
    ctx.blocking("trust-store", move || Ok(f())).await
}

/// Installs the root of the mesh with `fingerprint` (after create or join). Store failures are
/// in the report, not an error: the mesh itself worked.
pub async fn install_root(
    ctx: &Context,
    layout: &Layout,
    fingerprint: &str,
) -> Result<TrustReport, MethodError> {
    let (pem, fp) = root(layout)?;
    if fp != fingerprint {
        return Err(error::fail(
            format!("The mesh root on disk ({fp}) is not the one just pinned ({fingerprint})."),
            "Join the mesh again (`koi certmesh join`).",
        ));
    }
    let config = trust_config(layout);
    run_blocking(ctx, move || {
        let name = anchor_name(&fp);
        truststore::install(
            &config,
            &Anchor {
                name: &name,
                cert_pem: &pem,
                fingerprint: &fp,
            },
        )
    })
    .await
}

/// The `trust` method.
pub async fn run(ctx: Context, p: TrustParams) -> Result<TrustResult, MethodError> {
    let layout = App::of(&ctx)?.authority().layout().clone();
    if !matches!(p.action, TrustAction::Remove) && (p.fingerprint.is_some() || p.name.is_some()) {
        return Err(error::fail(
            "--fingerprint and --name choose the root for `trust remove` only: install takes this machine's mesh root, and status shows every koi root.",
            "Run `koi certmesh trust status` or `koi certmesh trust install` without them.",
        ));
    }
    match p.action {
        TrustAction::Install => {
            let (pem, fp) = root(&layout)?;
            let config = trust_config(&layout);
            let report = run_blocking(&ctx, move || {
                let name = anchor_name(&fp);
                let anchor = Anchor {
                    name: &name,
                    cert_pem: &pem,
                    fingerprint: &fp,
                };
                truststore::install(&config, &anchor)
            })
            .await?;
            finish(report)
        }
        TrustAction::Remove => {
            let target = removal_target(&ctx, &layout, &p).await?;
            finish(remove_root(&ctx, &layout, target, None).await?)
        }
        TrustAction::Status => status(&ctx, &layout).await,
    }
}

/// A root to remove: its store name and, when known, its fingerprint.
#[derive(Debug, Clone)]
pub struct RemovalTarget {
    pub name: String,
    pub fingerprint: Option<String>,
}

/// Whether `fp` is a SHA-256 fingerprint (64 hex digits; colons and case tolerated).
fn normalize_fingerprint(fp: &str) -> Option<String> {
    let hex: String = fp
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// Which root `trust remove` takes out: --fingerprint, --name, else this mesh's root. Without
/// any of them and without a mesh, the koi roots still installed are listed in the error.
async fn removal_target(
    ctx: &Context,
    layout: &Layout,
    p: &TrustParams,
) -> Result<RemovalTarget, MethodError> {
    match (&p.fingerprint, &p.name) {
        (Some(_), Some(_)) => Err(error::fail(
            "`trust remove` takes --fingerprint or --name, not both.",
            "Run `koi certmesh trust remove --fingerprint FP` with the fingerprint `koi certmesh trust status` lists.",
        )),
        (Some(fp), None) => {
            let fp = normalize_fingerprint(fp).ok_or_else(|| {
                error::fail(
                    format!("--fingerprint {fp:?} is not a SHA-256 fingerprint (64 hex digits)."),
                    "Copy the fingerprint from `koi certmesh trust status`.",
                )
            })?;
            Ok(RemovalTarget {
                name: anchor_name(&fp),
                fingerprint: Some(fp),
            })
        }
        (None, Some(name)) => {
            if !name.starts_with(ANCHOR_PREFIX) || truststore::validate_name(name).is_err() {
                return Err(error::fail(
                    format!(
                        "--name {name:?} is not a koi root: koi removes only roots it installed, whose names start with {ANCHOR_PREFIX}."
                    ),
                    "Copy the name from `koi certmesh trust status`.",
                ));
            }
            let found = find_roots(ctx, layout).await?;
            let fingerprint = found
                .roots
                .iter()
                .find(|r| r.name == *name)
                .and_then(|r| r.fingerprint.clone());
            Ok(RemovalTarget {
                name: name.clone(),
                fingerprint,
            })
        }
        (None, None) => {
            if let Ok((_, fp)) = root(layout) {
                return Ok(RemovalTarget {
                    name: anchor_name(&fp),
                    fingerprint: Some(fp),
                });
            }
            let found = find_roots(ctx, layout).await?;
            // One entry per root, with every store that holds it.
            let mut listed: Vec<(String, Option<String>, Vec<String>)> = Vec::new();
            for r in &found.roots {
                let place = format!("{} {}", r.store, r.location);
                match listed
                    .iter_mut()
                    .find(|(n, f, _)| *n == r.name && *f == r.fingerprint)
                {
                    Some((_, _, places)) => places.push(place),
                    None => listed.push((r.name.clone(), r.fingerprint.clone(), vec![place])),
                }
            }
            let listed: Vec<String> = listed
                .iter()
                .map(|(name, fp, places)| {
                    format!(
                        "{name} ({}) in {}",
                        fp.as_deref().unwrap_or("no readable certificate"),
                        places.join(", ")
                    )
                })
                .collect();
            match found.roots.first() {
                None => Err(error::fail(
                    "This machine is not in a mesh and no koi root is installed in its trust stores: there is nothing to remove.",
                    "`koi certmesh trust status` shows every store that was checked.",
                )),
                Some(first) => {
                    let command = match &first.fingerprint {
                        Some(fp) => format!("`koi certmesh trust remove --fingerprint {fp}`"),
                        None => format!("`koi certmesh trust remove --name {}`", first.name),
                    };
                    Err(error::fail(
                        format!(
                            "This machine is not in a mesh, so there is no current root to remove, but koi roots are still installed: {}.",
                            listed.join("; ")
                        ),
                        format!(
                            "Say which one to remove: {command} (or --name NAME), as `koi certmesh trust status` lists them."
                        ),
                    ))
                }
            }
        }
    }
}

/// Takes `target` out of every store. `retry` is what a privileged retry runs (default: `trust
/// remove` with the target's flag).
pub async fn remove_root(
    ctx: &Context,
    layout: &Layout,
    target: RemovalTarget,
    retry: Option<String>,
) -> Result<TrustReport, MethodError> {
    let mut config = trust_config(layout);
    config.remove_command = retry.unwrap_or_else(|| match &target.fingerprint {
        Some(fp) => format!("koi certmesh trust remove --fingerprint {fp}"),
        None => format!("koi certmesh trust remove --name {}", target.name),
    });
    run_blocking(ctx, move || match &target.fingerprint {
        Some(fp) => truststore::remove_anchor(
            &config,
            &Anchor {
                name: &target.name,
                cert_pem: "",
                fingerprint: fp,
            },
        ),
        None => truststore::remove(&config, &target.name),
    })
    .await
}

async fn find_roots(ctx: &Context, layout: &Layout) -> Result<truststore::Found, MethodError> {
    let config = trust_config(layout);
    ctx.blocking("trust-store", move || {
        Ok(truststore::find(&config, ANCHOR_PREFIX))
    })
    .await
}

/// `trust status`: this mesh's root in each store (when in a mesh), and every koi root found.
async fn status(ctx: &Context, layout: &Layout) -> Result<TrustResult, MethodError> {
    let current = root(layout).ok();
    let mut stores = Vec::new();
    if let Some((pem, fp)) = current.clone() {
        let config = trust_config(layout);
        let report = run_blocking(ctx, move || {
            let name = anchor_name(&fp);
            truststore::status(
                &config,
                &Anchor {
                    name: &name,
                    cert_pem: &pem,
                    fingerprint: &fp,
                },
            )
        })
        .await?;
        stores = report.stores;
    }
    let found = find_roots(ctx, layout).await?;
    stores.extend(found.unreadable);
    let membership = Membership::load(layout).ok().flatten();
    let koi_roots = found
        .roots
        .into_iter()
        .map(|r| {
            let is_current = current
                .as_ref()
                .is_some_and(|(_, fp)| r.fingerprint.as_deref() == Some(fp.as_str()));
            let mesh = match (&membership, is_current) {
                (Some(m), true) if m.role == "primary" => {
                    Some("this machine's mesh (this machine is its CA)".to_owned())
                }
                (Some(m), true) => Some(format!(
                    "this machine's mesh (CA at {})",
                    m.ca_endpoint.as_deref().unwrap_or("an unknown address")
                )),
                _ => r
                    .fingerprint
                    .as_deref()
                    .and_then(|fp| leave::left_mesh(layout, fp)),
            };
            KoiRoot {
                store: r.store,
                location: r.location,
                name: r.name,
                fingerprint: r.fingerprint,
                mesh,
                current: is_current,
            }
        })
        .collect::<Vec<KoiRoot>>();
    let mut distinct: Vec<&str> = koi_roots.iter().map(|r| r.name.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let summary = match (&current, distinct.len()) {
        (None, 0) => {
            "This machine is not in a mesh, and no koi root was found in its trust stores."
                .to_owned()
        }
        (None, n) => format!(
            "This machine is not in a mesh, but {n} koi root(s) are still trusted; `koi certmesh trust remove --fingerprint FP` removes one."
        ),
        (Some(_), n) => format!(
            "{n} koi root(s) found in the trust stores; the rows marked current are this mesh's."
        ),
    };
    Ok(TrustResult {
        summary: Some(summary),
        stores,
        koi_roots: Some(koi_roots),
    })
}

/// The report as the answer, or the error naming what failed and the command to retry.
fn finish(report: TrustReport) -> Result<TrustResult, MethodError> {
    if !report.ok() {
        return Err(store_failure(
            &report,
            "Some trust stores could not be changed",
            "koi certmesh trust status",
        ));
    }
    Ok(TrustResult {
        summary: None,
        stores: report.stores,
        koi_roots: None,
    })
}

/// The error for a report with failed stores: each store's detail, and the command to retry
/// with privileges, else `then` to run once the stores' problems are fixed.
pub fn store_failure(report: &TrustReport, what: &str, then: &str) -> MethodError {
    let failed: Vec<String> = report
        .stores
        .iter()
        .filter(|s| s.state == StoreState::Failed)
        .map(|s| {
            format!(
                "{} ({}): {}",
                s.store,
                s.location,
                s.detail.clone().unwrap_or_default()
            )
        })
        .collect();
    let next = match report.command_to_run() {
        Some(command) => format!("Run `{command}` with the privilege it needs."),
        None => format!("Fix what each store reports above, then run `{then}`."),
    };
    error::fail(format!("{what}: {}.", failed.join("; ")), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_names_carry_the_prefix_status_looks_for() {
        assert!(anchor_name(&"ab".repeat(32)).starts_with(ANCHOR_PREFIX));
    }

    #[test]
    fn fingerprints_are_normalized_or_refused() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&fp), Some("ab".repeat(32)));
        assert_eq!(normalize_fingerprint("abc"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }
}
