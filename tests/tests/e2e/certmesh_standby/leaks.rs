//! What must never appear in a log, a trace or (in the clear) on the standby's disk: the TOTP
//! secret (base32 and raw), both passphrases, the code used, a PEM private key other than the
//! machine's own leaf key, and the CA key (its PKCS#8 carries the public point, so a plaintext
//! CA key on disk would contain those 65 bytes).

use std::path::Path;

use super::lab::{Mesh, STANDBY_PASSPHRASE, ca_public_point};
use crate::support::certmesh::{PASSPHRASE, files_under};

/// The secrets of one test's mesh.
pub struct Secrets {
    totp_base32: String,
    totp_raw: Vec<u8>,
    code: String,
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u64, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32 digit") as u64;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

impl Secrets {
    /// From the mesh's otpauth URI and the code the promotion used.
    pub fn of(mesh: &Mesh<'_>, code: &str) -> Self {
        let totp_base32 = mesh
            .uri
            .split("secret=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .expect("secret in the URI")
            .to_owned();
        let totp_raw = base32_decode(&totp_base32);
        assert!(
            totp_raw.len() >= 16,
            "a TOTP secret of {} bytes",
            totp_raw.len()
        );
        Secrets {
            totp_base32,
            totp_raw,
            code: code.to_owned(),
        }
    }

    /// No secret in any of `texts` (name, text).
    pub fn assert_absent_from_logs(&self, texts: &[(String, String)]) {
        for (name, text) in texts {
            for (what, needle) in [
                ("the TOTP secret", self.totp_base32.as_str()),
                ("the primary's passphrase", PASSPHRASE),
                ("the standby's passphrase", STANDBY_PASSPHRASE),
                ("a private key", "PRIVATE KEY"),
                ("the otpauth URI", "otpauth://"),
            ] {
                assert!(!text.contains(needle), "{what} appears in {name}");
            }
            // The code is six digits: look for it as a JSON string or an argument.
            for form in [
                format!("\"{}\"", self.code),
                format!("--code {}", self.code),
            ] {
                assert!(
                    !text.contains(&form),
                    "the promotion code appears in {name}"
                );
            }
        }
    }

    /// No secret in the clear anywhere under `home` (the standby's KOI_HOME); the machine's own
    /// leaf key (`certs/<host>/key.pem`) is the only PEM private key there.
    pub fn assert_absent_from_disk(&self, home: &Path, hostname: &str) {
        let point = ca_public_point(&home.join("certmesh/standby/ca/ca.pem"));
        let own_key = home.join("certs").join(hostname).join("key.pem");
        let files = files_under(home);
        assert!(
            files.iter().any(|f| f.ends_with("vault.sealed")),
            "the standby's vault is on disk: {files:?}"
        );
        for file in files {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            let name = file.display();
            if file != own_key {
                assert!(!has(b"PRIVATE KEY"), "a PEM private key in {name}");
            }
            assert!(
                !has(self.totp_base32.as_bytes()),
                "the TOTP secret (base32) in {name}"
            );
            assert!(!has(&self.totp_raw), "the TOTP secret (raw) in {name}");
            assert!(
                !has(&point),
                "the CA key's public point (a plaintext PKCS#8?) in {name}"
            );
            assert!(
                !has(STANDBY_PASSPHRASE.as_bytes()) || file.ends_with("standby-pass"),
                "the passphrase in {name}"
            );
        }
    }
}
