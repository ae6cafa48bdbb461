//! `koi certmesh trust install|remove|status`: put this mesh's root into (or take it out of) the
//! machine's trust stores, under a name unique to the mesh. The store work itself is in
//! [`crate::truststore`]; this module finds the root and turns a failed store into an error that
//! carries the exact command to run.

use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

use crate::app::App;
use crate::error;
use crate::files::{CertFiles, Membership, anchor_name};
use crate::layout::Layout;
use crate::truststore::{self, Anchor, StoreState, TrustConfig, TrustReport};

/// What `trust` does.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustAction {
    /// Add the mesh root to every trust store found, then verify.
    Install,
    /// Remove it (by its mesh-unique name).
    Remove,
    /// Show where it is installed.
    Status,
}

/// Params of `trust`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustParams {
    /// install, remove or status.
    pub action: TrustAction,
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
        error::fail(
            format!("Failed to read the mesh root {}: {e}.", files.ca),
            "Join the mesh again (`koi certmesh join`) to restore it.",
        )
    })?;
    Ok((pem, membership.ca_fingerprint))
}

async fn run_blocking(
    f: impl FnOnce() -> TrustReport + Send + 'static,
) -> Result<TrustReport, MethodError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MethodError::new(format!("The trust-store task failed: {e}")))
}

/// Installs the root of the mesh with `fingerprint` (after create or join). Store failures are
/// in the report, not an error: the mesh itself worked.
pub async fn install_root(layout: &Layout, fingerprint: &str) -> Result<TrustReport, MethodError> {
    let (pem, fp) = root(layout)?;
    if fp != fingerprint {
        return Err(error::fail(
            format!("The mesh root on disk ({fp}) is not the one just pinned ({fingerprint})."),
            "Join the mesh again (`koi certmesh join`).",
        ));
    }
    let config = trust_config(layout);
    run_blocking(move || {
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
pub async fn run(app: Arc<App>, ctx: Context, p: TrustParams) -> Result<TrustReport, MethodError> {
    let layout = app.authority(&ctx).layout().clone();
    let (pem, fp) = root(&layout)?;
    let config = trust_config(&layout);
    let report = run_blocking(move || {
        let name = anchor_name(&fp);
        let anchor = Anchor {
            name: &name,
            cert_pem: &pem,
            fingerprint: &fp,
        };
        match p.action {
            TrustAction::Install => truststore::install(&config, &anchor),
            TrustAction::Remove => truststore::remove(&config, &name),
            TrustAction::Status => truststore::status(&config, &anchor),
        }
    })
    .await?;
    if matches!(p.action, TrustAction::Status) || report.ok() {
        return Ok(report);
    }
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
        None => {
            "See each store's detail above; `koi certmesh trust status` shows where the root is."
                .to_owned()
        }
    };
    Err(error::fail(
        format!(
            "Some trust stores could not be changed: {}.",
            failed.join("; ")
        ),
        next,
    ))
}
