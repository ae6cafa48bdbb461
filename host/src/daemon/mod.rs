//! `koi daemon`: the same host, kept alive. It supervises every discovered plugin in daemon mode,
//! routes events between them, answers the CLI on a control socket and local programs on a REST
//! API, talks to systemd, reloads `config.toml` on SIGHUP and shuts down gracefully on
//! SIGTERM/SIGINT. `docs/daemon.md` states its invariants and the tests that prove them.
//!
//! Modules: [`config`] (config.toml), [`core`] (shared state, host services, REST backend),
//! [`supervisor`] (one plugin's life), [`bus`] (events), [`control`] (the Unix socket),
//! [`systemd`] (sd_notify).

pub mod bus;
pub mod config;
pub mod control;
pub mod core;
pub mod supervisor;
pub mod systemd;

use crate::connection::LaunchOptions;
use crate::discovery::Discovery;
use crate::paths::KoiHome;
use crate::services::HostServices;
use config::Config;
use core::{Daemon, RestBackend};
use koi_protocol::handshake::RunMode;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use supervisor::{OnStart, Supervised};
use tokio::signal::unix::{SignalKind, signal};

/// The control socket of `home`.
pub fn socket_path(home: &KoiHome) -> PathBuf {
    home.root().join("run").join("koi.sock")
}

/// Holds `run/koi.lock` for the daemon's lifetime: one daemon per `KOI_HOME`.
struct InstanceLock {
    _file: std::fs::File,
}

fn acquire_lock(path: &Path) -> Result<InstanceLock, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(format!(
            "another koi daemon (pid {}) is already running for KOI_HOME={}. Stop it first (`kill {}`), or use another KOI_HOME",
            if pid.is_empty() { "unknown" } else { pid },
            path.parent()
                .and_then(Path::parent)
                .map_or_else(String::new, |p| p.display().to_string()),
            if pid.is_empty() { "<pid>" } else { pid },
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(InstanceLock { _file: file })
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub async fn run(home: KoiHome, launch_template: LaunchOptions) -> u8 {
    let run_dir = home.root().join("run");
    if let Err(e) = crate::paths::create_private_dir_all(&run_dir)
        .and_then(|()| std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)))
    {
        eprintln!(
            "error: koi daemon cannot create {}: {e}.",
            run_dir.display()
        );
        return 1;
    }
    let _lock = match acquire_lock(&run_dir.join("koi.lock")) {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("error: {message}.");
            return 1;
        }
    };
    let config_path = home.root().join("config.toml");
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: koi daemon: {e}");
            return crate::app::EXIT_USAGE;
        }
    };
    let discovery = Discovery::from_env(&home);
    let plugins: Vec<Arc<Supervised>> = discovery
        .active()
        .iter()
        .map(|c| Supervised::new(&c.moniker, c.path.clone()))
        .collect();
    let socket = socket_path(&home);
    let listener = match control::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: koi daemon cannot listen on {}: {e}.",
                socket.display()
            );
            return 1;
        }
    };
    let daemon = Daemon::new(
        home.root().to_owned(),
        socket.clone(),
        config.clone(),
        plugins,
    );
    let stop = daemon.stop.clone();

    if config.rest_enabled {
        let rest_config = koi_rest::RestConfig {
            bind: config.rest_bind,
            allow_non_loopback: config.rest_allow_non_loopback,
            max_body_bytes: config.rest_max_body_bytes,
            ..koi_rest::RestConfig::default()
        };
        match koi_rest::RestServer::bind(rest_config).await {
            Ok(server) => {
                *crate::schema::lock(&daemon.rest_addr) = Some(server.local_addr());
                let backend: Arc<dyn koi_rest::DaemonApi> =
                    Arc::new(RestBackend(Arc::downgrade(&daemon)));
                tokio::spawn(server.run(backend, stop.clone()));
            }
            Err(e) => {
                eprintln!("error: koi daemon: {e}");
                let _ = std::fs::remove_file(&socket);
                return 1;
            }
        }
    }

    let launch = LaunchOptions {
        mode: RunMode::Daemon,
        interactive: false,
        ..launch_template
    };
    let weak_daemon = Arc::downgrade(&daemon);
    let services: Weak<dyn HostServices> = weak_daemon.clone();
    let on_start: OnStart = {
        let weak = weak_daemon.clone();
        let started_once = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
        Arc::new(
            move |plugin: &Arc<Supervised>, connection: &crate::connection::Connection| {
                if let Some(d) = weak.upgrade() {
                    let queue = crate::schema::lock(&d.config).subscriber_queue;
                    d.bus.subscribe(
                        plugin,
                        connection.manifest().subscribes.clone(),
                        connection.event_gaps(),
                        queue,
                        &d.stop,
                    );
                    let first = crate::schema::lock(&started_once).insert(plugin.moniker.clone());
                    publish_started(&d, plugin, connection, first);
                }
            },
        )
    };
    let mut supervisors = tokio::task::JoinSet::new();
    for plugin in &daemon.plugins {
        supervisors.spawn(plugin.clone().supervise(
            launch.clone(),
            services.clone(),
            daemon.config.clone(),
            on_start.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(control::serve(listener, weak_daemon.clone(), stop.clone()));
    {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            for plugin in &daemon.plugins {
                plugin.wait_first_attempt().await;
            }
            systemd::ready();
            let names: Vec<&str> = daemon.plugins.iter().map(|p| p.moniker.as_str()).collect();
            tracing::info!(plugins = %names.join(", "), "koi daemon ready");
        });
    }
    systemd::spawn_watchdog(stop.clone());
    eprintln!(
        "koi daemon {} (pid {}): KOI_HOME={}, socket {}, REST {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        home.root().display(),
        socket.display(),
        crate::schema::lock(&daemon.rest_addr)
            .map_or_else(|| "off".to_owned(), |a| format!("http://{a}")),
    );

    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("error: koi daemon cannot install its signal handlers.");
        return 1;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&daemon, &config_path),
        }
    }
    tracing::info!("koi daemon stopping");
    systemd::stopping();
    // Supervisors stop their plugins concurrently, so the wait is the slowest plugin's: its grace,
    // then SIGTERM's step, then SIGKILL's reap (5 s), plus a margin.
    let slowest = daemon
        .plugins
        .iter()
        .filter_map(|p| p.manifest())
        .map(|m| crate::connection::shutdown_grace(&m))
        .max()
        .unwrap_or(crate::connection::SHUTDOWN_STEP);
    let limit = slowest + crate::connection::SHUTDOWN_STEP + Duration::from_secs(6);
    stop.cancel();
    let _ = tokio::time::timeout(limit, async {
        while supervisors.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    0
}

/// Publishes `host.plugin.started` (first start) or `host.plugin.restarted` (any later start),
/// so that plugins which keep state in another plugin (certmesh's mDNS advertisement in koi-mdns)
/// can put it back after a crash took it away.
fn publish_started(
    daemon: &Daemon,
    plugin: &Supervised,
    connection: &crate::connection::Connection,
    first: bool,
) {
    use koi_protocol::context::host_events;
    let payload = host_events::PluginStarted {
        plugin: plugin.moniker.clone(),
        pid: connection.pid(),
        restarts: plugin.supervision_json()["restarts"].as_u64().unwrap_or(0),
    };
    let topic = if first {
        host_events::PLUGIN_STARTED
    } else {
        host_events::PLUGIN_RESTARTED
    };
    let delivered = daemon.bus.publish(&koi_protocol::calls::EventDelivery::new(
        topic,
        host_events::SOURCE,
        serde_json::to_value(payload).unwrap_or_default(),
    ));
    tracing::debug!(plugin = %plugin.moniker, topic, delivered, "host event published");
}

fn reload(daemon: &Daemon, path: &Path) {
    systemd::reloading();
    match Config::load(path) {
        Ok(new) => {
            let mut current = crate::schema::lock(&daemon.config);
            if new.rest_bind != current.rest_bind || new.rest_enabled != current.rest_enabled {
                tracing::warn!("config.toml: [rest] changes take effect when the daemon restarts");
            }
            *current = new;
            tracing::info!("config.toml reloaded");
        }
        Err(e) => {
            tracing::error!("config.toml reload failed; keeping the configuration in force: {e}")
        }
    }
    systemd::ready();
}
