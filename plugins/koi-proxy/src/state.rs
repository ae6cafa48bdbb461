//! The plugin's state ([`Proxy`], one per process): the stored entries, and — under `koi daemon`
//! — what the service built from them: the routing table listeners read on every handshake and
//! request ([`Routes`], swapped atomically when entries change), each entry's runtime
//! ([`EntryRt`]: certificate, pooled client, counters, backend health) and the listeners' state.

use crate::backend::{BackendEvent, Health};
use crate::certs::HotCert;
use crate::config::{self, Backend, Cidr, Entries, Entry};
use arc_swap::ArcSwap;
use koi_sdk::store::JsonFile;
use koi_sdk::{MethodError, StateInit};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, watch};

/// Locks a std mutex, ignoring poisoning (the data stays usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Request, error and connection counts of one entry.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Answers with a 5xx status (the proxy's 502/504 included).
    pub errors: AtomicU64,
    /// TLS connections open now whose SNI chose this entry.
    pub active: AtomicI64,
}

/// A connection counted in its entry's [`Stats::active`] until dropped.
#[derive(Debug)]
pub struct ActiveMark(Arc<EntryRt>);

impl ActiveMark {
    /// Counts one more connection for `entry`.
    pub fn new(entry: Arc<EntryRt>) -> Self {
        entry.stats.active.fetch_add(1, Ordering::Relaxed);
        Self(entry)
    }
}

impl Drop for ActiveMark {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One entry at run time.
#[derive(Debug)]
pub struct EntryRt {
    /// The stored entry.
    pub entry: Entry,
    /// The backend taken apart.
    pub backend: Backend,
    /// `http://host:port`, the base of every backend URL.
    pub base: String,
    /// Trusted proxy ranges.
    pub trusted: Vec<Cidr>,
    /// The certificate handshakes for this entry get.
    pub cert: Arc<HotCert>,
    /// Counters.
    pub stats: Stats,
    /// Backend health from traffic.
    pub health: Health,
    /// Where up/down transitions go (the service publishes them).
    pub events: mpsc::Sender<(&'static str, BackendEvent)>,
}

impl EntryRt {
    /// Records a backend failure, queueing `proxy.backend.down` on a change.
    pub fn backend_failed(&self, reason: &str) {
        if self.health.down() {
            tracing::warn!(entry = %self.entry.name, "backend down: {reason}");
            self.send(crate::backend::DOWN, Some(reason.to_owned()));
        }
    }

    /// Records a backend answer, queueing `proxy.backend.up` after a failure.
    pub fn backend_answered(&self) {
        if self.health.up() {
            tracing::info!(entry = %self.entry.name, "backend up again");
            self.send(crate::backend::UP, None);
        }
    }

    fn send(&self, topic: &'static str, reason: Option<String>) {
        let _ = self.events.try_send((
            topic,
            BackendEvent {
                entry: self.entry.name.clone(),
                host: self.entry.host.clone(),
                backend: self.entry.backend.clone(),
                reason,
            },
        ));
    }

    /// Counts one answer with `status`.
    pub fn count(&self, status: u16) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What listeners route by: port → host name → entry.
#[derive(Debug, Default)]
pub struct Routes {
    /// HTTPS ports.
    pub tls: HashMap<u16, HashMap<String, Arc<EntryRt>>>,
    /// Plain-HTTP redirect ports.
    pub redirect: HashMap<u16, HashMap<String, Arc<EntryRt>>>,
}

impl Routes {
    /// The entry for `host` on HTTPS port `port`.
    pub fn tls_entry(&self, port: u16, host: &str) -> Option<&Arc<EntryRt>> {
        self.tls.get(&port)?.get(host)
    }
}

/// A listener's state, for `status`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ListenerState {
    /// Whether it accepts connections.
    pub listening: bool,
    /// Why it does not, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The plugin's state.
#[derive(Debug)]
pub struct Proxy {
    /// `$KOI_HOME`.
    pub home: PathBuf,
    /// The entries file, or why it cannot be used.
    pub file: Result<Arc<JsonFile<Entries>>, String>,
    /// The entries as stored.
    pub entries: Mutex<Vec<Entry>>,
    /// One save at a time.
    pub saving: tokio::sync::Mutex<()>,
    /// Bumped on every change of `entries` (the service rebuilds then).
    pub changed: watch::Sender<u64>,
    /// The routing table.
    pub routes: ArcSwap<Routes>,
    /// Listener state by port (HTTPS and redirect).
    pub listeners: Mutex<BTreeMap<u16, ListenerState>>,
    /// certmesh's answer to the last name request, by host name.
    pub names: Mutex<BTreeMap<String, String>>,
    /// Whether the service runs (daemon mode, started).
    pub serving: std::sync::atomic::AtomicBool,
    /// Connection caps shared by every listener.
    pub caps: Arc<crate::limits::Caps>,
    /// Whether certmesh's silence was logged already (it is logged once at info).
    pub certmesh_silent: std::sync::atomic::AtomicBool,
    /// The entries mirrored in this machine's roster entry (`certmesh/set-proxy-entries`).
    pub mirror: crate::mirror::Mirror,
    /// Woken when certificates should be read again (`certmesh.cert.renewed`, file changes).
    pub reload: tokio::sync::Notify,
}

impl Proxy {
    /// Loads the entries (a missing file is none; a damaged one is reported and never overwritten).
    pub fn load(init: &StateInit) -> Self {
        let file = init
            .data_dir()
            .map(|dir| Arc::new(config::entries_file(&dir)))
            .map_err(|e| e.message().to_owned());
        let (file, entries) = match file {
            Ok(f) => match f.load_or_default() {
                Ok(e) => (Ok(f), e.entries),
                Err(e) => {
                    tracing::warn!("the proxy entries cannot be read and will not be saved: {e}");
                    (Err(e.to_string()), Vec::new())
                }
            },
            Err(e) => (Err(e), Vec::new()),
        };
        Self {
            home: init.koi_home().to_path_buf(),
            file,
            entries: Mutex::new(entries),
            saving: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            routes: ArcSwap::from_pointee(Routes::default()),
            listeners: Mutex::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
            serving: std::sync::atomic::AtomicBool::new(false),
            caps: Arc::new(crate::limits::Caps::default()),
            reload: tokio::sync::Notify::new(),
            certmesh_silent: std::sync::atomic::AtomicBool::new(false),
            mirror: crate::mirror::Mirror::default(),
        }
    }

    /// A copy of the entries.
    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.entries).clone()
    }

    /// The certificate directory of an entry.
    pub fn cert_dir(&self, entry: &Entry) -> PathBuf {
        let host = entry
            .cert_host
            .clone()
            .unwrap_or_else(crate::certs::machine_host);
        self.home.join("certs").join(host)
    }

    /// Applies `change` to the entries and saves them (atomically, off the protocol loop);
    /// on a failed save the entries in memory are left as they were.
    pub async fn update<R: Send + 'static>(
        &self,
        ctx: &koi_sdk::Context,
        change: impl FnOnce(&mut Vec<Entry>) -> Result<R, MethodError>,
    ) -> Result<R, MethodError> {
        let file = self.file.clone().map_err(|e| {
            MethodError::new(format!("The proxy entries cannot be saved: {e}"))
                .hint("Move the damaged file aside, then add the entries again.")
        })?;
        let _one = self.saving.lock().await;
        let mut next = self.entries();
        let result = change(&mut next)?;
        let saved = next.clone();
        ctx.blocking("save the proxy entries", move || {
            file.save(&Entries { entries: saved })
                .map_err(|e| MethodError::new(e.to_string()))
        })
        .await?;
        *lock(&self.entries) = next;
        self.changed.send_modify(|v| *v += 1);
        Ok(result)
    }
}
