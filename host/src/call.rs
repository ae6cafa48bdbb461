//! One verb's call, once `app` has parsed it: where it runs (`Target`: a plugin this command
//! started, or `koi daemon`), the manifest used to parse the command line for it, and the call
//! itself with Ctrl-C relayed as `$/cancel` (`call_with_interrupt`).

use crate::paths::KoiHome;
use crate::session::Session;
use crate::ui::Terminal;
use koi_protocol::{ErrorObject, Manifest, codes};
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// How long a cancelled call may take to answer before the host stops waiting.
const CANCEL_GRACE: Duration = Duration::from_millis(2500);

/// Runs one call; the first Ctrl-C sends `$/cancel` and waits briefly for the plugin to finish,
/// the second stops waiting (`interrupted` says whether Ctrl-C was pressed). Ctrl-C typed into a
/// question that reads the terminal in raw mode (`host/keystrokes`) arrives through `terminal`
/// instead of SIGINT and counts the same.
pub(crate) async fn call_with_interrupt(
    target: &Target,
    terminal: &Terminal,
    moniker: &str,
    method: &str,
    params: Value,
    interrupted: &mut bool,
) -> Result<Value, ErrorObject> {
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let call = target.call(moniker, method, params, terminal.interactive(), move |id| {
        let _ = id_tx.send(id);
    });
    tokio::pin!(call);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminal.interrupted() => {}
                }
            } => {
                *interrupted = true;
                if deadline.is_some() {
                    break;
                }
                if let Ok(id) = id_rx.try_recv() {
                    target.cancel(id).await;
                }
                let _ = writeln!(std::io::stderr(), "Cancelling… (press Ctrl-C again to stop waiting)");
                deadline = Some(tokio::time::Instant::now() + CANCEL_GRACE);
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }
    Err(ErrorObject::new(
        codes::REQUEST_CANCELLED,
        format!("cancelled; koi-{moniker} did not confirm in time and was stopped"),
    ))
}

/// Where a verb runs: a plugin this command started, or `koi daemon`.
pub(crate) enum Target {
    Direct(crate::connection::Connection),
    Daemon(Arc<crate::peer::Peer>),
}

impl Target {
    /// The manifest used to parse the command line. For a forwarded call the local manifest cache
    /// is used when valid for the plugin file this CLI finds (the daemon checks the params against
    /// its own manifest anyway); otherwise the daemon is asked and its answer cached, which saves
    /// the largest round trip of a forwarded call (docs/benchmarks.md).
    pub(crate) async fn manifest_for_parsing(
        &self,
        session: &Session,
        home: &KoiHome,
        moniker: &str,
    ) -> Result<Manifest, ErrorObject> {
        if let Target::Direct(c) = self {
            return Ok(c.manifest().clone());
        }
        let candidate = session.discovery.find(moniker);
        let mut cache = crate::cache::ManifestCache::load(home);
        if let Some((manifest, _)) = candidate.as_ref().and_then(|c| cache.get(c)) {
            return Ok(manifest.clone());
        }
        let manifest = self.manifest(moniker).await?;
        if let Some(candidate) = candidate {
            cache.put(&candidate, &manifest, koi_protocol::PROTOCOL_VERSION);
            cache.save();
        }
        Ok(manifest)
    }

    async fn manifest(&self, moniker: &str) -> Result<Manifest, ErrorObject> {
        match self {
            Target::Direct(c) => Ok(c.manifest().clone()),
            Target::Daemon(peer) => {
                let value = peer
                    .request(
                        crate::daemon::control::methods::MANIFEST,
                        serde_json::json!({ "plugin": moniker }),
                    )
                    .await?;
                serde_json::from_value(value).map_err(|e| {
                    ErrorObject::new(
                        codes::PLUGIN_UNAVAILABLE,
                        format!("koi daemon sent an unreadable manifest: {e}"),
                    )
                })
            }
        }
    }

    /// Calls `method`; `interactive` says whether this terminal can answer the plugin's
    /// questions for this call (the per-call context's `interactive`).
    async fn call(
        &self,
        moniker: &str,
        method: &str,
        params: Value,
        interactive: bool,
        on_id: impl FnOnce(u64),
    ) -> Result<Value, ErrorObject> {
        match self {
            // A one-shot run: the caller is this CLI process and its user. Under the daemon the
            // daemon reads the uid from the control socket itself (nothing sent here counts);
            // only this CLI can tell whether it has a terminal, so it says so with the call.
            Target::Direct(c) => {
                let me = koi_protocol::CallContext::cli(
                    Some(rustix::process::getuid().as_raw()),
                    interactive,
                );
                c.call_with_id_as(&me, method, params, on_id).await
            }
            Target::Daemon(peer) => {
                let request = serde_json::json!({ "plugin": moniker, "method": method,
                                                  "params": params, "interactive": interactive });
                peer.request_with_id(crate::daemon::control::methods::CALL, request, on_id)
                    .await
            }
        }
    }

    async fn cancel(&self, id: u64) {
        match self {
            Target::Direct(c) => c.cancel(id),
            Target::Daemon(peer) => {
                peer.notify(
                    koi_protocol::calls::CANCEL,
                    serde_json::json!({ "request": id }),
                )
                .await
            }
        }
    }
}
