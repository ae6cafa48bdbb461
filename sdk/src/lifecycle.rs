//! Process hygiene for plugins: recognising a launch by the host (and explaining ourselves to a
//! person who ran the binary by hand), and exiting when the host dies (PR_SET_PDEATHSIG on Linux,
//! plus a portable parent-pid watch).

use koi_protocol::{COOKIE_ENV, COOKIE_VALUE, Manifest, PROTOCOL_VERSION};
use std::fmt::Write as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether the host launched us (it sets the protocol cookie in the environment).
pub(crate) fn launched_by_host() -> bool {
    std::env::var(COOKIE_ENV).is_ok_and(|v| v == COOKIE_VALUE)
}

/// The text shown to a person who runs the plugin binary directly.
pub(crate) fn explain(manifest: &Manifest) -> String {
    let mut text = String::new();
    let name = &manifest.name;
    let _ = writeln!(
        text,
        "koi-{name} {} — {}",
        manifest.version, manifest.summary
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "This is a Koi plugin. It speaks Koi plugin protocol {PROTOCOL_VERSION} (JSON-RPC over"
    );
    let _ = writeln!(
        text,
        "stdin/stdout) and is started by the `koi` command, not by hand. Try:"
    );
    let _ = writeln!(text, "    koi {name} --help");
    let verbs: Vec<&str> = manifest
        .methods
        .iter()
        .filter(|m| m.cli.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if !verbs.is_empty() {
        let _ = writeln!(text, "Verbs: {}", verbs.join(", "));
    }
    let _ = writeln!(text, "To write your own plugin, see docs/protocol.md.");
    text
}

/// Arranges for the plugin to stop when the host dies: on Linux the kernel sends SIGTERM (which the
/// serve loop treats like `shutdown`); everywhere, [`watch_parent`] notices a changed parent pid.
pub(crate) fn exit_with_parent(stop: &CancellationToken) {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    }
    // The host may have died before the line above took effect.
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        stop.cancel();
    }
}

/// Polls the parent pid once a second and cancels `stop` when it changes (the host died and we
/// were re-parented).
pub(crate) fn watch_parent(stop: CancellationToken) {
    let original = rustix::process::getppid();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if rustix::process::getppid() != original {
                        tracing::warn!("the koi host died; exiting");
                        stop.cancel();
                        return;
                    }
                }
            }
        }
    });
}
