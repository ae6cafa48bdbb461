//! Plugin state and the plugin's data directory.
//!
//! [`crate::Plugin::state`] registers a builder per type; the runtime builds every value once,
//! right after the first successful `initialize` and before the plugin answers anything else, and
//! handlers reach them with [`crate::Context::state`]. [`crate::Context::data_dir`] is
//! `$KOI_HOME/<moniker>/`, created with mode 0700 (never a symbolic link).

use crate::MethodError;
use koi_protocol::codes;
use koi_protocol::handshake::RunMode;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a state builder ([`crate::Plugin::state`]) may look at: the session the host opened.
#[derive(Debug)]
pub struct StateInit {
    pub(crate) mode: RunMode,
    pub(crate) koi_home: PathBuf,
    pub(crate) moniker: String,
}

impl StateInit {
    /// One-shot (started for one command) or daemon (kept running).
    pub fn mode(&self) -> RunMode {
        self.mode
    }

    /// `$KOI_HOME`, as the host gave it.
    pub fn koi_home(&self) -> &Path {
        &self.koi_home
    }

    /// The plugin's moniker (`mdns` for `koi-mdns`).
    pub fn moniker(&self) -> &str {
        &self.moniker
    }

    /// `$KOI_HOME/<moniker>/`, created 0700 if missing (see [`crate::Context::data_dir`]).
    pub fn data_dir(&self) -> Result<PathBuf, MethodError> {
        data_dir(&self.koi_home, &self.moniker)
    }
}

/// A built state value, type-erased.
pub(crate) type AnyState = Arc<dyn Any + Send + Sync>;

/// A registered builder: the type's id and name, and the function that builds it once.
pub(crate) struct StateBuilder {
    pub type_id: TypeId,
    pub type_name: &'static str,
    pub build: Box<dyn FnOnce(&StateInit) -> AnyState + Send>,
}

/// The built values, by type.
pub(crate) type States = HashMap<TypeId, AnyState>;

/// Builds every registered value. A builder that panics fails the handshake with its type named.
pub(crate) fn build_all(builders: Vec<StateBuilder>, init: &StateInit) -> Result<States, String> {
    let mut states = States::with_capacity(builders.len());
    for builder in builders {
        let StateBuilder {
            type_id,
            type_name,
            build,
        } = builder;
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(init)))
            .map_err(|_| {
                format!(
                    "koi-{}: building its `{type_name}` state panicked; the plugin's log (stderr) has the panic message",
                    init.moniker
                )
            })?;
        states.insert(type_id, value);
    }
    Ok(states)
}

/// The value of type `T` in `states`, or an internal error naming the type and the fix.
pub(crate) fn get<T: Send + Sync + 'static>(
    states: Option<&States>,
    moniker: &str,
) -> Result<Arc<T>, MethodError> {
    let missing = || {
        MethodError::with_code(
            codes::INTERNAL_ERROR,
            format!(
                "koi-{moniker} has no state of type `{}`: the plugin never registered it",
                std::any::type_name::<T>()
            ),
        )
        .hint("This is a bug in the plugin: register the type with `Plugin::state(|init| ...)` in its main.")
    };
    let value = states
        .and_then(|s| s.get(&TypeId::of::<T>()))
        .ok_or_else(missing)?;
    value.clone().downcast::<T>().map_err(|_| missing())
}

/// `koi_home/moniker/`: created with mode 0700 if missing; an existing one with group or other
/// permission bits is tightened (and logged); a symbolic link there is refused.
pub(crate) fn data_dir(koi_home: &Path, moniker: &str) -> Result<PathBuf, MethodError> {
    if koi_home.as_os_str().is_empty() {
        return Err(MethodError::with_code(
            codes::INTERNAL_ERROR,
            format!("koi-{moniker} has no data directory yet: the host has not sent `initialize`"),
        )
        .hint("Ask for the data directory from a method, status, service or state builder."));
    }
    let dir = koi_home.join(moniker);
    let failed = |what: &str, e: std::io::Error| {
        MethodError::new(format!("cannot {what} {}: {e}", dir.display())).hint(format!(
            "Check that {} exists and is writable by this user, then run the command again.",
            koi_home.display()
        ))
    };
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(MethodError::new(format!(
            "{} is a symbolic link; koi-{moniker} keeps its data only in a real directory",
            dir.display()
        ))
        .hint(format!(
            "Remove the link (`rm {}`) and run the command again; move any data it pointed at into the new directory.",
            dir.display()
        ))),
        Ok(meta) if !meta.is_dir() => Err(MethodError::new(format!(
            "{} is not a directory; koi-{moniker} keeps its data there",
            dir.display()
        ))
        .hint(format!(
            "Move the file away (`mv {0} {0}.old`) and run the command again.",
            dir.display()
        ))),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| failed("restrict the permissions of", e))?;
                tracing::warn!(
                    "{} was readable by other users (mode {mode:o}); restricted it to 0700",
                    dir.display()
                );
            }
            Ok(dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                Ok(()) => Ok(dir),
                Err(e) => Err(failed("create", e)),
            }
        }
        Err(e) => Err(failed("inspect", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_data_dir_is_created_0700_under_koi_home() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = data_dir(home.path(), "hello").expect("data dir");
        assert_eq!(dir, home.path().join("hello"));
        assert_eq!(mode(&dir), 0o700);
        // A second call finds it.
        assert_eq!(data_dir(home.path(), "hello").expect("again"), dir);
    }

    #[test]
    fn an_open_data_dir_is_tightened_to_0700() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("hello");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        data_dir(home.path(), "hello").expect("data dir");
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_symlinked_data_dir_is_refused_naming_the_path_and_the_fix() {
        let home = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let link = home.path().join("hello");
        std::os::unix::fs::symlink(elsewhere.path(), &link).expect("symlink");
        let err = data_dir(home.path(), "hello").expect_err("refused");
        assert!(err.message().contains(&link.display().to_string()));
        assert!(err.message().contains("symbolic link"));
        let hint = err.clone().into_error_object().hint().map(str::to_owned);
        assert!(hint.is_some_and(|h| h.contains("rm ")));
        // The link was left in place for the user to look at.
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("still there")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn states_are_built_once_by_type_and_a_missing_type_is_named() {
        let init = StateInit {
            mode: RunMode::Daemon,
            koi_home: PathBuf::from("/nonexistent"),
            moniker: "t".into(),
        };
        let builders = vec![
            StateBuilder {
                type_id: TypeId::of::<u32>(),
                type_name: "u32",
                build: Box::new(|i: &StateInit| Arc::new(i.moniker().len() as u32) as _),
            },
            StateBuilder {
                type_id: TypeId::of::<String>(),
                type_name: "String",
                build: Box::new(|_: &StateInit| Arc::new(String::from("s")) as _),
            },
        ];
        let states = build_all(builders, &init).expect("built");
        assert_eq!(*get::<u32>(Some(&states), "t").expect("u32"), 1);
        assert_eq!(&*get::<String>(Some(&states), "t").expect("string"), "s");
        let err = get::<u64>(Some(&states), "t").expect_err("missing");
        assert!(err.message().contains("u64"));
    }
}
