//! The plugin's state: the three sources (static entries, certmesh members, mDNS services), the
//! table built from them and shared with the server, the running server, and what has been
//! logged or asked already. Every change to a source ends in [`Dns::rebuild`], which builds a
//! new table off the hot path and swaps it in; the caller then publishes alias events and sends
//! SAN requests ([`crate::sources::after_rebuild`]).

use crate::config::{self, ServeParams};
use crate::records::{self, Alias, Member, Sources};
use crate::server::{Running, Shared};
use crate::snapshot::Snapshot;
use crate::wire::Acl;
use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use koi_mdns_api::ServiceRecord;
use koi_sdk::StateInit;
use koi_sdk::store::JsonFile;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Most static names.
pub const MAX_STATIC: usize = 4096;
/// Most addresses per static name.
pub const MAX_STATIC_ADDRS: usize = 32;
/// Most mDNS services kept.
pub const MAX_SERVICES: usize = 4096;
/// Most certmesh members kept.
pub const MAX_MEMBERS: usize = 4096;
/// Most names remembered as "already logged" or "already requested".
pub const MAX_REMEMBERED: usize = 4096;

/// What `static.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct StaticFile {
    /// Name → addresses.
    pub entries: BTreeMap<String, Vec<IpAddr>>,
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every writer replaces it).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Certmesh as a source: the members and how the last fetch went.
#[derive(Debug, Default)]
pub struct Mesh {
    /// Members (bounded).
    pub members: Vec<Member>,
    /// `ok`, or why there are none (not installed, not in a mesh, an error).
    pub note: String,
    /// Roster version last read.
    pub roster_version: u64,
    /// Whether "certmesh unavailable" was logged already.
    pub logged_unavailable: bool,
}

/// The state.
pub struct Dns {
    /// `$KOI_HOME/dns`, or why it cannot be used.
    pub data_dir: Result<PathBuf, String>,
    /// `static.json`.
    pub static_file: Result<Arc<JsonFile<StaticFile>>, String>,
    /// `serve.json`.
    pub serve_file: Result<Arc<JsonFile<ServeParams>>, String>,
    /// Static entries.
    pub statics: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    /// Why static entries could not be loaded, if so.
    pub static_problem: Option<String>,
    /// Certmesh members.
    pub mesh: Mutex<Mesh>,
    /// mDNS services by full name.
    pub services: Mutex<BTreeMap<String, ServiceRecord>>,
    /// Held while mDNS events are applied or a snapshot is taken, so none falls between.
    pub mdns_order: tokio::sync::Mutex<()>,
    /// One save of static entries at a time.
    pub saving: tokio::sync::Mutex<()>,
    /// The table and ACL the server reads.
    pub shared: Arc<Shared>,
    /// The zone in use.
    pub zone: Mutex<Name>,
    /// RFC 6598 allowed.
    pub cgnat: AtomicBool,
    /// The running server.
    pub server: tokio::sync::Mutex<Option<Running>>,
    /// Current service aliases.
    pub aliases: Mutex<BTreeMap<String, Alias>>,
    /// Overlapping names already logged.
    pub logged: Mutex<BTreeSet<String>>,
    /// `host alias` pairs certmesh accepted (or already had).
    pub requested: Mutex<BTreeSet<String>>,
    /// Why the last SAN request failed, if it did.
    pub san_note: Mutex<String>,
    serial: AtomicU32,
}

/// Alias changes of one rebuild.
#[derive(Debug, Default)]
pub struct AliasDiff {
    /// New aliases.
    pub created: Vec<Alias>,
    /// Aliases gone.
    pub removed: Vec<Alias>,
}

impl Dns {
    /// Loads static entries and the zone of a saved serve configuration.
    pub fn load(init: &StateInit) -> Self {
        Self::open(init.data_dir().map_err(|e| e.message().to_owned()))
    }

    /// [`Self::load`] for a data directory (or why there is none).
    pub fn open(data_dir: Result<PathBuf, String>) -> Self {
        let static_file = data_dir
            .clone()
            .map(|d| Arc::new(JsonFile::<StaticFile>::new(d.join("static.json")).version(1)));
        let serve_file = data_dir
            .clone()
            .map(|d| Arc::new(JsonFile::<ServeParams>::new(d.join("serve.json")).version(1)));
        let (statics, static_problem) = match &static_file {
            Ok(f) => match f.load_or_default() {
                Ok(s) => (s.entries, None),
                Err(e) => {
                    tracing::warn!("static DNS entries not loaded: {e}");
                    (BTreeMap::new(), Some(e.to_string()))
                }
            },
            Err(e) => (BTreeMap::new(), Some(e.clone())),
        };
        let saved = serve_file
            .as_ref()
            .ok()
            .and_then(|f| f.load().ok().flatten());
        let zone = saved
            .as_ref()
            .and_then(|p| p.zone.as_deref())
            .and_then(|z| config::zone(z).ok())
            .or_else(|| config::zone(config::DEFAULT_ZONE).ok())
            .map_or_else(Name::root, |(n, _)| n);
        let serial = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(1);
        let dns = Self {
            data_dir,
            static_file,
            serve_file,
            statics: Mutex::new(statics),
            static_problem,
            mesh: Mutex::default(),
            services: Mutex::default(),
            mdns_order: tokio::sync::Mutex::new(()),
            saving: tokio::sync::Mutex::new(()),
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::empty(zone.clone(), serial)),
                acl: ArcSwap::from_pointee(Acl::default()),
            }),
            zone: Mutex::new(zone),
            cgnat: AtomicBool::new(saved.is_some_and(|p| p.allow_cgnat)),
            server: tokio::sync::Mutex::new(None),
            aliases: Mutex::default(),
            logged: Mutex::default(),
            requested: Mutex::default(),
            san_note: Mutex::default(),
            serial: AtomicU32::new(serial),
        };
        dns.rebuild();
        dns
    }

    /// Builds a new table from the sources and swaps it in; returns the alias changes.
    pub fn rebuild(&self) -> AliasDiff {
        let zone = lock(&self.zone).clone();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let (snap, built) = {
            let statics = lock(&self.statics);
            let mesh = lock(&self.mesh);
            let services = lock(&self.services);
            records::build(
                &zone,
                serial,
                &Sources {
                    statics: Some(&statics),
                    members: &mesh.members,
                    services: Some(&services),
                    cgnat: self.cgnat.load(Ordering::Relaxed),
                },
            )
        };
        self.shared.snapshot.store(Arc::new(snap));
        {
            let mut logged = lock(&self.logged);
            for (name, kept, dropped) in built.overlaps {
                if logged.len() < MAX_REMEMBERED && logged.insert(name.clone()) {
                    tracing::info!(
                        "{name} is wanted by {kept} and by {dropped}: {kept} wins (static > \
                         certmesh > mDNS host > mDNS alias; docs/dns.md)"
                    );
                }
            }
        }
        let mut aliases = lock(&self.aliases);
        let mut diff = AliasDiff::default();
        for (k, a) in &built.aliases {
            if aliases.get(k) != Some(a) && !aliases.contains_key(k) {
                diff.created.push(a.clone());
            }
        }
        for (k, a) in aliases.iter() {
            if !built.aliases.contains_key(k) {
                diff.removed.push(a.clone());
            }
        }
        *aliases = built.aliases;
        diff
    }

    /// Whether a server runs in this process.
    pub async fn serving(&self) -> bool {
        self.server.lock().await.is_some()
    }
}
