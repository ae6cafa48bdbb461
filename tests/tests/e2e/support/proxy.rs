//! koi-proxy in a test environment: the plugin binary and `KoiEnv::with_proxy`.

use super::{KoiEnv, bin_dir, built};
use std::path::PathBuf;

/// The built `koi-proxy`.
pub fn proxy_bin() -> PathBuf {
    built(bin_dir().join("koi-proxy"))
}

impl KoiEnv {
    /// Installs koi-proxy.
    pub fn with_proxy(self) -> Self {
        self.install(&proxy_bin(), "proxy");
        self
    }
}
