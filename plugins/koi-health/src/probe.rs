//! Running one check: an HTTP(S) GET (reqwest over rustls, redirects not followed, so `--expect
//! 3xx` means what it says) or a TCP connect-and-close, each bounded by the check's timeout. HTTPS
//! trusts the system roots plus every mesh CA certmesh wrote (`$KOI_HOME/certs/<host>/ca.pem`), so
//! `https://grafana.lan` checks pass without an insecure flag. The client is rebuilt when a mesh
//! CA file appears or changes (looked at no more than every [`CA_RECHECK`]). Without
//! `--allow-remote`, names are resolved to LAN addresses only, at every run: a name that resolves
//! only to public addresses fails the check instead of sending it to the internet.

use crate::spec::{Check, Target, status_matches};
use crate::tracker::Outcome;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How often the mesh CA files are looked at again.
pub const CA_RECHECK: Duration = Duration::from_secs(10);

type CaStamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

struct Built {
    stamp: CaStamp,
    checked: Instant,
    /// Names resolving to LAN addresses only (checks without `--allow-remote`).
    lan: reqwest::Client,
    /// Any address (`--allow-remote`).
    any: reqwest::Client,
}

/// Resolves names for LAN-only checks: only private addresses are used, and a name that resolves
/// to public ones only is refused (so a LAN name cannot point a check at the internet).
struct LanResolver;

impl reqwest::dns::Resolve for LanResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| crate::spec::is_lan_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no LAN address (re-add the check with --allow-remote to allow public ones)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client, shared by every check.
pub struct Prober {
    koi_home: PathBuf,
    built: Mutex<Option<Built>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

fn mesh_cas(koi_home: &Path) -> CaStamp {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(koi_home.join("certs")) {
        for entry in entries.flatten().take(64) {
            let ca = entry.path().join("ca.pem");
            if let Ok(meta) = std::fs::metadata(&ca) {
                out.push((ca, meta.modified().ok(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

fn build_client(cas: &CaStamp, lan_only: bool) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for (path, _, len) in cas {
        if *len > 1024 * 1024 {
            continue;
        }
        use rustls::pki_types::pem::PemObject;
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&bytes).flatten() {
            if let Err(e) = roots.add(cert) {
                tracing::info!("mesh CA {} not trusted: {e}", path.display());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder();
    if lan_only {
        builder = builder.dns_resolver(Arc::new(LanResolver));
    }
    builder
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("koi-health/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|e| e.to_string())
}

impl Prober {
    /// A prober for the mesh CAs under `koi_home`.
    pub fn new(koi_home: &Path) -> Self {
        Self {
            koi_home: koi_home.to_owned(),
            built: Mutex::new(None),
        }
    }

    /// The client when no look at the CA files is due (no I/O).
    fn ready_client(&self, allow_remote: bool) -> Option<reqwest::Client> {
        let built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        built
            .as_ref()
            .filter(|b| b.checked.elapsed() < CA_RECHECK)
            .map(|b| {
                if allow_remote {
                    b.any.clone()
                } else {
                    b.lan.clone()
                }
            })
    }

    /// The client, rebuilt if the mesh CA files changed (blocking: file reads and the system
    /// roots, so it runs on the blocking pool).
    fn refreshed_client(&self, allow_remote: bool) -> Result<reqwest::Client, String> {
        let pick = |b: &Built| {
            if allow_remote {
                b.any.clone()
            } else {
                b.lan.clone()
            }
        };
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = built.as_mut() {
            if b.checked.elapsed() < CA_RECHECK {
                return Ok(pick(b));
            }
            let stamp = mesh_cas(&self.koi_home);
            b.checked = Instant::now();
            if stamp == b.stamp {
                return Ok(pick(b));
            }
        }
        let stamp = mesh_cas(&self.koi_home);
        let fresh = Built {
            lan: build_client(&stamp, true)?,
            any: build_client(&stamp, false)?,
            stamp,
            checked: Instant::now(),
        };
        let client = pick(&fresh);
        *built = Some(fresh);
        Ok(client)
    }

    /// Runs `check` once.
    pub async fn run(self: &Arc<Self>, check: &Check) -> Outcome {
        let timeout = check.timeout();
        match &check.target {
            Target::Http { url, expect } => {
                self.http(url, expect, timeout, check.allow_remote).await
            }
            Target::Tcp { host, port } => tcp(host, *port, timeout, check.allow_remote).await,
        }
    }

    async fn http(
        self: &Arc<Self>,
        url: &str,
        expect: &str,
        timeout: Duration,
        allow_remote: bool,
    ) -> Outcome {
        let client = match self.ready_client(allow_remote) {
            Some(c) => c,
            None => {
                let me = Arc::clone(self);
                match tokio::task::spawn_blocking(move || me.refreshed_client(allow_remote)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return fail(format!("cannot set up TLS: {e}")),
                    Err(e) => return fail(format!("cannot set up TLS: {e}")),
                }
            }
        };
        let shown = humantime::format_duration(timeout);
        match client.get(url).timeout(timeout).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                drop(response);
                if status_matches(expect, status) {
                    Outcome {
                        ok: true,
                        detail: format!("HTTP {status}"),
                    }
                } else {
                    fail(format!("HTTP {status} (expected {expect})"))
                }
            }
            Err(e) if e.is_timeout() => fail(format!("no answer within {shown}")),
            Err(e) => fail(describe(&e)),
        }
    }
}

fn fail(detail: String) -> Outcome {
    Outcome { ok: false, detail }
}

/// The innermost cause of a reqwest error, which names what went wrong (refused, TLS, …).
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let kind = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    crate::translog::field(&format!("{kind}: {cause}"), 200)
}

async fn tcp(host: &str, port: u16, timeout: Duration, allow_remote: bool) -> Outcome {
    let shown = humantime::format_duration(timeout);
    let attempt = async {
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
            .await?
            .filter(|a| allow_remote || crate::spec::is_lan_ip(a.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other(format!(
                "{host} resolves to no LAN address (re-add the check with --allow-remote to allow public ones)"
            )));
        }
        tokio::net::TcpStream::connect(&addrs[..]).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Outcome {
                ok: true,
                detail: format!("TCP port {port} open"),
            }
        }
        Ok(Err(e)) => fail(crate::translog::field(
            &format!("TCP port {port}: {e}"),
            200,
        )),
        Err(_) => fail(format!("TCP port {port}: no answer within {shown}")),
    }
}
