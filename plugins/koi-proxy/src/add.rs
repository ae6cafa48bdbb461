//! `koi proxy add NAME --listen PORT --backend URL [--backend-remote] [--host NAME.ZONE]`:
//! checks the entry (name, host, ports, the backend resolving to loopback unless
//! `--backend-remote`), stores it, asks certmesh for its name on the certificate, and — under
//! `koi daemon` — the service starts serving it at once. Without the daemon the entry is stored
//! and the answer says it is served once `koi daemon` runs. Either way the complete list is then
//! mirrored in this machine's roster entry ([`crate::mirror`]).

use crate::backend::{is_loopback, resolve};
use crate::certs::{HotCert, covers};
use crate::config::{self, Entry, MAX_ENTRIES, MAX_TRUSTED};
use crate::state::Proxy;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_listen() -> u16 {
    443
}

/// Params of `add`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddParams {
    /// The entry's name, one DNS label (`grafana`); clients use `NAME.<zone>` unless --host.
    pub name: String,
    /// The HTTPS port; entries may share one (chosen by SNI).
    #[serde(default = "default_listen")]
    #[schemars(range(min = 1))]
    pub listen: u16,
    /// The plain-HTTP backend, `http://HOST:PORT` (must be this machine unless --backend-remote).
    pub backend: String,
    /// Allow a backend on another machine (its traffic is unencrypted).
    #[serde(default)]
    pub backend_remote: bool,
    /// The host name clients use (default `NAME.<zone>`, the zone from certmesh or `lan`).
    #[serde(default)]
    pub host: Option<String>,
    /// A plain-HTTP port that redirects to HTTPS (off by default).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub redirect_http: Option<u16>,
    /// The certificate directory under KOI_HOME/certs/ (default: this machine's).
    #[serde(default)]
    pub cert_host: Option<String>,
    /// A peer (address or CIDR) whose X-Forwarded-*/Forwarded headers are kept; repeatable.
    #[serde(default)]
    pub trusted_proxy: Vec<String>,
    /// Seconds to wait for the backend's answer before a 504 (default 60).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u64>,
}

/// Result of `add`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Added {
    /// The stored entry.
    pub entry: Entry,
    /// Whether it is being served now (under `koi daemon`).
    pub serving: bool,
    /// The certificate: whether it covers the host name, or which name is missing.
    pub certificate: String,
    /// certmesh's answer to the name request.
    pub names_request: String,
    /// Whether the entries are mirrored in this machine's roster entry (certmesh), in words.
    pub roster: String,
    /// What to do next, if anything.
    pub note: String,
}

/// Checks that the backend is this machine unless remote backends are allowed.
pub async fn check_backend(url: &str, remote: bool) -> Result<config::Backend, MethodError> {
    let backend = config::parse_backend(url)?;
    if remote {
        tracing::warn!("Backend traffic to {} is unencrypted", backend.host);
        return Ok(backend);
    }
    let refused = |why: String| {
        MethodError::invalid_params(format!(
            "The backend {url} is refused: {why}. The proxy forwards only to this machine unless \
             you pass --backend-remote (traffic to the backend is then unencrypted)."
        ))
    };
    match backend.ip() {
        Some(ip) if !is_loopback(ip) => Err(refused(format!("{ip} is not a loopback address"))),
        Some(_) => Ok(backend),
        None => resolve(&backend.host, backend.port, false)
            .await
            .map(|_| backend)
            .map_err(|e| refused(e.to_string())),
    }
}

/// `add`.
pub async fn run(ctx: Context, p: AddParams) -> Result<Added, MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    config::check_label("entry name", &p.name)?;
    if let Some(h) = &p.cert_host {
        config::check_label("certificate host", h)?;
    }
    if p.listen == 0 || p.redirect_http == Some(0) || p.redirect_http == Some(p.listen) {
        return Err(MethodError::invalid_params(
            "The ports must be 1–65535 and the redirect port must differ from --listen.",
        ));
    }
    if p.trusted_proxy.len() > MAX_TRUSTED {
        return Err(MethodError::invalid_params(format!(
            "At most {MAX_TRUSTED} --trusted-proxy values are allowed; use CIDR ranges."
        )));
    }
    for t in &p.trusted_proxy {
        config::Cidr::parse(t)?;
    }
    let host = match &p.host {
        Some(h) => config::check_host(h)?,
        None => format!("{}.{}", p.name, crate::names::zone(&ctx).await),
    };
    let backend = check_backend(&p.backend, p.backend_remote).await?;
    let entry = Entry {
        name: p.name.clone(),
        host: host.clone(),
        listen_port: p.listen,
        backend: backend.url(),
        backend_remote: p.backend_remote,
        redirect_port: p.redirect_http,
        cert_host: p.cert_host.clone(),
        trusted_proxies: p.trusted_proxy.clone(),
        timeout_secs: p
            .timeout_secs
            .unwrap_or(config::DEFAULT_TIMEOUT_SECS)
            .clamp(1, 3600),
    };
    let stored = entry.clone();
    proxy
        .update(&ctx, move |entries| {
            if entries.iter().any(|e| e.name == stored.name) {
                return Err(MethodError::invalid_params(format!(
                    "An entry named {} exists: `koi proxy remove {}` first, or pick another name.",
                    stored.name, stored.name
                )));
            }
            if let Some(e) = entries
                .iter()
                .find(|e| e.host == stored.host && e.listen_port == stored.listen_port)
            {
                return Err(MethodError::invalid_params(format!(
                    "{} on port {} is already served by the entry {}: remove it first or use \
                     another --host.",
                    stored.host, stored.listen_port, e.name
                )));
            }
            let clash = entries.iter().any(|e| {
                Some(e.listen_port) == stored.redirect_port
                    || e.redirect_port == Some(stored.listen_port)
            });
            if clash {
                return Err(MethodError::invalid_params(
                    "A port cannot be both an HTTPS port and a plain-HTTP redirect port: pick \
                     another --listen or --redirect-http.",
                ));
            }
            if entries.len() >= MAX_ENTRIES {
                return Err(MethodError::invalid_params(format!(
                    "This machine has {MAX_ENTRIES} entries, the most it serves: remove one first."
                )));
            }
            entries.push(stored);
            Ok(())
        })
        .await?;
    crate::names::request(&ctx, &proxy, std::slice::from_ref(&entry)).await;
    let roster = crate::mirror::send(&ctx, &proxy).await;
    let names_request = crate::state::lock(&proxy.names)
        .get(&host)
        .cloned()
        .unwrap_or_default();
    let dir = proxy.cert_dir(&entry);
    let certificate = ctx
        .blocking("read the certificate", move || {
            Ok(certificate_note(&dir, &host))
        })
        .await?;
    let serving = ctx.mode() == RunMode::Daemon;
    let mut note = if serving {
        String::new()
    } else {
        "Stored. A proxy is served by `koi daemon`: start it (or restart it) and the entry is \
         served at once."
            .to_owned()
    };
    if p.backend_remote {
        note.push_str(&format!(
            "{}Backend traffic to {} is unencrypted.",
            if note.is_empty() { "" } else { " " },
            backend.host
        ));
    }
    Ok(Added {
        entry,
        serving,
        certificate,
        names_request,
        roster,
        note,
    })
}

/// Whether the certificate in `dir` covers `host`, in words.
pub fn certificate_note(dir: &std::path::Path, host: &str) -> String {
    let cert = HotCert::new(dir.to_path_buf());
    match cert.info() {
        Some(info) if covers(&info.names, host) => format!("covers {host}"),
        Some(_) => format!(
            "{host} is missing from the certificate in {} until its next renewal (`koi certmesh \
             renew --now` applies it at once)",
            dir.display()
        ),
        None => cert.last_error().unwrap_or_default(),
    }
}
