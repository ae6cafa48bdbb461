//! [`JsonFile`]: one versioned JSON document on disk, loaded with clear errors and saved
//! atomically.
//!
//! The on-disk form is `{"version": N, "data": …}`. A file written by an older build is brought up
//! to the current version by chained migration steps (`N → N+1 → … → current`) before `data` is
//! deserialised; a newer file is refused, never guessed at.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::StoreError;
use crate::atomic::{PRIVATE_FILE_MODE, create_private_dir_all, open_error, write_atomic};

/// One migration step: the `data` of version N in, the `data` of version N+1 out.
type Step = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// A typed, versioned JSON file. Build it once (often in the plugin's state) and call
/// [`load`](Self::load) / [`save`](Self::save) as needed.
///
/// ```
/// use koi_store::JsonFile;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default, PartialEq, Debug)]
/// struct Settings { zones: Vec<String>, ttl: u32 }
///
/// # let dir = tempfile::tempdir().unwrap();
/// // Version 1 had `{"zone": "lab"}`; version 2 has a list and a TTL.
/// let file = JsonFile::<Settings>::new(dir.path().join("settings.json"))
///     .version(2)
///     .migrate(1, |mut v| {
///         let zone = v.get("zone").cloned().ok_or("no `zone`")?;
///         v = serde_json::json!({"zones": [zone], "ttl": 60});
///         Ok(v)
///     });
/// assert_eq!(file.load()?, None);
/// let s = Settings { zones: vec!["lab".into()], ttl: 60 };
/// file.save(&s)?;
/// assert_eq!(file.load_or_default()?, s);
/// # Ok::<(), koi_store::StoreError>(())
/// ```
pub struct JsonFile<T> {
    path: PathBuf,
    version: u32,
    mode: u32,
    steps: BTreeMap<u32, Step>,
    _data: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for JsonFile<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("migrations_from", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    /// The file at `path`, at schema version 1, saved with mode 0600.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            version: 1,
            mode: PRIVATE_FILE_MODE,
            steps: BTreeMap::new(),
            _data: PhantomData,
        }
    }

    /// Sets the current schema version (what [`save`](Self::save) writes and what
    /// [`load`](Self::load) migrates up to). Versions start at 1.
    pub fn version(mut self, current: u32) -> Self {
        self.version = current.max(1);
        self
    }

    /// Sets the mode [`save`](Self::save) gives the file (default 0600, owner only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Registers the step that turns the `data` of version `from` into that of `from + 1`. Steps
    /// chain: a version-1 file is loaded into version 3 by the steps from 1 and from 2. A step's
    /// `Err(reason)` becomes [`StoreError::Migration`].
    pub fn migrate(
        mut self,
        from: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert(from, Box::new(step));
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file: `Ok(None)` when it does not exist. First sweeps the temporary files of this
    /// file that dead writers left (best effort: a leftover that cannot be removed is harmless
    /// and is tried again next time). Refuses a symbolic link, a file that is not JSON, a version
    /// newer than [`version`](Self::version), and data that does not fit `T`, each with an error
    /// naming the file and what to do.
    pub fn load(&self) -> Result<Option<T>, StoreError> {
        let _ = crate::remove_stale_temp_files_of(&self.path);
        let Some(bytes) = self.read()? else {
            return Ok(None);
        };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| StoreError::NotJson {
            path: self.path.clone(),
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        let data = self.upgrade(doc)?;
        serde_json::from_value(data)
            .map(Some)
            .map_err(|e| self.shape(format!("its data does not match this koi's format ({e})")))
    }

    /// [`load`](Self::load), with `T::default()` when the file does not exist. Errors are not
    /// hidden: a damaged file is an error, not a silent reset.
    pub fn load_or_default(&self) -> Result<T, StoreError>
    where
        T: Default,
    {
        Ok(self.load()?.unwrap_or_default())
    }

    /// Saves `value` as `{"version": current, "data": value}` atomically and durably (see
    /// [`write_atomic`]), with the file's mode. Creates a missing parent directory 0700.
    pub fn save(&self, value: &T) -> Result<(), StoreError> {
        #[derive(Serialize)]
        struct Envelope<'a, T> {
            version: u32,
            data: &'a T,
        }
        let mut bytes = serde_json::to_vec_pretty(&Envelope {
            version: self.version,
            data: value,
        })
        .map_err(|e| StoreError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let dir = crate::atomic::parent_dir(&self.path);
        create_private_dir_all(&dir)
            .map_err(|e| StoreError::io("create the directory", &dir, e))?;
        write_atomic(&self.path, &bytes, self.mode)
    }

    /// The file's bytes, `None` if absent; refuses links and non-files.
    fn read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_error("open", &self.path, e)),
        };
        let meta = f
            .metadata()
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                path: self.path.clone(),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        f.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        Ok(Some(bytes))
    }

    /// Checks the envelope and runs the migration steps; returns the current version's data.
    fn upgrade(&self, doc: Value) -> Result<Value, StoreError> {
        let Value::Object(mut doc) = doc else {
            return Err(self.shape("it is not a JSON object".into()));
        };
        let Some(found) = doc.get("version").and_then(Value::as_u64) else {
            return Err(self.shape("it has no numeric \"version\" field".into()));
        };
        let Some(mut data) = doc.remove("data") else {
            return Err(self.shape("it has no \"data\" field".into()));
        };
        if found > u64::from(self.version) {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: self.version,
            });
        }
        if found == 0 {
            return Err(self.shape("its version is 0; versions start at 1".into()));
        }
        for from in found..u64::from(self.version) {
            let step = u32::try_from(from).ok().and_then(|f| self.steps.get(&f));
            let Some(step) = step else {
                return Err(StoreError::Migration {
                    path: self.path.clone(),
                    from,
                    reason: format!("this koi has no step from version {from} to {}", from + 1),
                });
            };
            data = step(data).map_err(|reason| StoreError::Migration {
                path: self.path.clone(),
                from,
                reason,
            })?;
        }
        Ok(data)
    }

    fn shape(&self, reason: String) -> StoreError {
        StoreError::Shape {
            path: self.path.clone(),
            reason,
        }
    }
}
