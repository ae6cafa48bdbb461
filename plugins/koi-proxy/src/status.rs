//! `koi proxy status` (the plugin's `status` answer; the fields below are its `details`): for each entry, whether it listens, whether its backend answers (from
//! traffic; a one-second TCP probe only when there was none yet), the certificate's names and
//! expiry and which name it is missing, certmesh's answer to the name request, request and
//! error counts, active connections; and the limits in force.

use crate::certs::{CertInfo, HotCert, covers};
use crate::limits;
use crate::state::{EntryRt, Proxy, lock};
use koi_sdk::protocol::calls::{HealthState, StatusReport};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One entry's state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EntryStatus {
    /// The entry's name.
    pub name: String,
    /// The host name clients use.
    pub host: String,
    /// The HTTPS port.
    pub listen_port: u16,
    /// Whether the port accepts connections.
    pub listening: bool,
    /// Why it does not, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_error: Option<String>,
    /// The backend URL.
    pub backend: String,
    /// `up`/`down` from traffic, or `reachable`/`unreachable` from a probe.
    pub backend_state: String,
    /// The certificate in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertInfo>,
    /// Why no certificate is in use, or why the last reload was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_error: Option<String>,
    /// The host name the certificate lacks (until a renewal adds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_name: Option<String>,
    /// certmesh's answer to the name request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names_request: Option<String>,
    /// Requests answered.
    pub requests: u64,
    /// 5xx answers (the proxy's 502/504 included).
    pub errors: u64,
    /// TLS connections open now.
    pub active_connections: i64,
}

/// The limits in force (docs/proxy.md, "Limits").
#[derive(Debug, Serialize, JsonSchema)]
pub struct Limits {
    /// TLS handshake timeout, seconds.
    pub tls_handshake_secs: u64,
    /// Request header read timeout, seconds.
    pub header_read_secs: u64,
    /// Idle connection timeout, seconds.
    pub idle_secs: u64,
    /// Request head size cap, bytes.
    pub max_head_bytes: usize,
    /// Header count cap.
    pub max_headers: usize,
    /// Connections per client address.
    pub per_client: usize,
    /// Connections in total.
    pub total: usize,
}

/// Result of `status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Status {
    /// Whether the entries are served (under `koi daemon`).
    pub serving: bool,
    /// What to do when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the entries are mirrored in this machine's roster entry (certmesh), in words.
    pub roster: String,
    /// Each entry.
    pub entries: Vec<EntryStatus>,
    /// Connections open now.
    pub connections_open: usize,
    /// Connections refused by a cap since the start.
    pub connections_refused: u64,
    /// The limits.
    pub limits: Limits,
}

async fn probe(rt: &EntryRt) -> &'static str {
    let b = &rt.backend;
    let connect = async {
        let addrs = crate::backend::resolve(&b.host, b.port, rt.entry.backend_remote).await?;
        tokio::net::TcpStream::connect(&addrs[..]).await
    };
    match tokio::time::timeout(Duration::from_secs(1), connect).await {
        Ok(Ok(_)) => "reachable",
        _ => "unreachable",
    }
}

/// The `status` answer: `ok` when every entry listens with a certificate covering its name and
/// no backend is down, else `degraded`; the details are [`Status`].
pub async fn report(ctx: Context) -> StatusReport {
    let status = match collect(&ctx).await {
        Ok(s) => s,
        Err(e) => {
            return StatusReport {
                state: HealthState::Failed,
                summary: e.message().to_owned(),
                details: serde_json::Map::new(),
            };
        }
    };
    let listening = status.entries.iter().filter(|e| e.listening).count();
    let troubled = status.entries.iter().any(|e| {
        !e.listening
            || e.missing_name.is_some()
            || e.certificate.is_none()
            || e.backend_state == "down"
    });
    let summary = if status.serving {
        format!("{} entries, {listening} listening", status.entries.len())
    } else {
        format!(
            "{} entries, not served without koi daemon",
            status.entries.len()
        )
    };
    let details = match serde_json::to_value(&status) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    StatusReport {
        state: if troubled && status.serving {
            HealthState::Degraded
        } else {
            HealthState::Ok
        },
        summary,
        details,
    }
}

/// Gathers the state of every entry.
pub async fn collect(ctx: &Context) -> Result<Status, MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    let serving = proxy.serving.load(Ordering::Acquire);
    let routes = proxy.routes.load_full();
    let listeners = lock(&proxy.listeners).clone();
    let names = lock(&proxy.names).clone();
    let mut entries = Vec::new();
    for entry in proxy.entries() {
        let rt: Option<Arc<EntryRt>> = routes
            .tls_entry(entry.listen_port, &entry.host)
            .filter(|rt| rt.entry == entry)
            .cloned();
        let cert = match &rt {
            Some(rt) => Arc::clone(&rt.cert),
            None => {
                let dir = proxy.cert_dir(&entry);
                ctx.blocking("read the certificate", move || Ok(HotCert::new(dir)))
                    .await?
            }
        };
        let info = cert.info();
        let missing_name = info
            .as_ref()
            .filter(|i| !covers(&i.names, &entry.host))
            .map(|_| entry.host.clone());
        let listener = listeners.get(&entry.listen_port);
        let backend_state = match &rt {
            Some(rt) if !rt.health.is_unknown() => rt.health.label().to_owned(),
            Some(rt) => probe(rt).await.to_owned(),
            None => "unknown".to_owned(),
        };
        let stat = |f: fn(&EntryRt) -> u64| rt.as_deref().map_or(0, f);
        entries.push(EntryStatus {
            listening: serving && listener.is_some_and(|l| l.listening),
            listen_error: listener.and_then(|l| l.error.clone()),
            backend_state,
            certificate: info,
            certificate_error: cert.last_error(),
            missing_name,
            names_request: names.get(&entry.host).cloned(),
            requests: stat(|r| r.stats.requests.load(Ordering::Relaxed)),
            errors: stat(|r| r.stats.errors.load(Ordering::Relaxed)),
            active_connections: rt
                .as_deref()
                .map_or(0, |r| r.stats.active.load(Ordering::Relaxed).max(0)),
            name: entry.name,
            host: entry.host,
            listen_port: entry.listen_port,
            backend: entry.backend,
        });
    }
    Ok(Status {
        serving,
        note: (!serving).then(|| {
            "Not served: a proxy runs under `koi daemon`; start it and these entries are served."
                .to_owned()
        }),
        roster: proxy.mirror.outcome(),
        entries,
        connections_open: proxy.caps.open(),
        connections_refused: proxy.caps.refused.load(Ordering::Relaxed),
        limits: Limits {
            tls_handshake_secs: limits::TLS_HANDSHAKE.as_secs(),
            header_read_secs: limits::HEADER_READ.as_secs(),
            idle_secs: limits::IDLE.as_secs(),
            max_head_bytes: limits::MAX_HEAD_BYTES,
            max_headers: limits::MAX_HEADERS,
            per_client: limits::PER_CLIENT,
            total: limits::TOTAL,
        },
    })
}
