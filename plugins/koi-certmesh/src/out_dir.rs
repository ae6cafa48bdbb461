//! Where `koi certmesh issue` may write a device's files, and writing them there safely.
//!
//! Rules (docs/certmesh.md, "Where issue writes"):
//! - Never through a symbolic link: the directory is reached with `openat(O_NOFOLLOW)` one
//!   component at a time (below `/` for `--out`, below `KOI_HOME` for the default), and every
//!   file is created with `O_EXCL | O_NOFOLLOW` under a temporary name and renamed into place
//!   inside that opened directory. A link anywhere on the way, or a link in place of a file, is
//!   refused — with `--force` too.
//! - Never into another entry's certificate folder (`KOI_HOME/certs/<other entry>`), nor into the
//!   mesh's own state (`KOI_HOME/certmesh`).
//! - Never over files koi did not write, unless `--force`: existing files are koi's when the
//!   folder's `cert.pem` is a certificate signed by this mesh's CA for this same device (a
//!   re-issue); anything else is someone's file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use koi_certmesh_core::Roster;
use koi_sdk::MethodError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

use crate::error;
use crate::files::{CertFiles, FILE_NAMES, write_in_order};
use crate::layout::Layout;

/// An opened, checked output directory.
#[derive(Debug)]
pub struct OutDir {
    fd: OwnedFd,
    /// The paths reported to the user.
    pub files: CertFiles,
}

/// Opens (creating what is missing, 0700) the directory for `device`'s files: `given` (absolute)
/// or `KOI_HOME/certs/<device>`. Refuses links, other entries' folders, the mesh's state, and —
/// without `force` — files koi did not write for this device.
pub fn open(
    layout: &Layout,
    roster: &Roster,
    device: &str,
    given: Option<&Path>,
    ca_pem: &str,
    force: bool,
) -> Result<OutDir, MethodError> {
    let (base, rel) = match given {
        Some(dir) => (PathBuf::from("/"), dir.to_path_buf()),
        None => (
            layout.home().to_path_buf(),
            PathBuf::from("certs").join(device),
        ),
    };
    let dir = base.join(&rel);
    let (fd, canonical) = walk(&base, &rel, &dir)?;
    refuse_foreign_folder(layout, roster, device, &canonical, &dir)?;
    let out = OutDir {
        fd,
        files: CertFiles::in_dir(&dir),
    };
    out.refuse_foreign_files(device, ca_pem, force)?;
    Ok(out)
}

fn link_refusal(path: &Path) -> MethodError {
    error::fail(
        format!(
            "{} is a symbolic link (or not a directory); koi never writes through links.",
            path.display()
        ),
        "Pass the real directory with --out (e.g. the output of `realpath`).",
    )
}

/// Opens `base`, then each component of `rel` with O_NOFOLLOW, creating missing ones (0700).
fn walk(base: &Path, rel: &Path, dir: &Path) -> Result<(OwnedFd, PathBuf), MethodError> {
    let io = |what: &str, p: &Path, e: Errno| {
        error::fail(
            format!("Failed to {what} {}: {e}.", p.display()),
            "Check that the directory exists and that you may write there, or pass another --out.",
        )
    };
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut fd =
        rustix::fs::open(base, dir_flags, Mode::empty()).map_err(|e| io("open", base, e))?;
    let mut canonical = std::fs::canonicalize(base).map_err(|e| {
        error::fail(
            format!("Failed to resolve {}: {e}.", base.display()),
            "Check that the directory exists.",
        )
    })?;
    let mut at = base.to_path_buf();
    let mut created_last = false;
    for comp in rel.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => {
                return Err(error::fail(
                    format!("--out {} contains `.` or `..`.", dir.display()),
                    "Pass a plain absolute path.",
                ));
            }
        };
        at.push(name);
        created_last = match rustix::fs::mkdirat(&fd, name, Mode::RWXU) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io("create", &at, e)),
        };
        fd = match rustix::fs::openat(&fd, name, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::LOOP | Errno::NOTDIR) => return Err(link_refusal(&at)),
            Err(e) => return Err(io("open", &at, e)),
        };
        canonical.push(name);
    }
    if created_last {
        rustix::fs::fchmod(&fd, Mode::RWXU).map_err(|e| io("restrict", dir, e))?;
    }
    Ok((fd, canonical))
}

/// Refuses the mesh's state directory and every other entry's certificate folder.
fn refuse_foreign_folder(
    layout: &Layout,
    roster: &Roster,
    device: &str,
    canonical: &Path,
    shown: &Path,
) -> Result<(), MethodError> {
    // KOI_HOME itself may sit below a link (e.g. a temporary directory): compare real paths.
    let home = std::fs::canonicalize(layout.home()).unwrap_or_else(|_| layout.home().to_path_buf());
    let state = home.join("certmesh");
    if canonical.starts_with(&state) {
        return Err(error::fail(
            format!(
                "{} is inside the mesh's own state ({}); issue never writes there.",
                shown.display(),
                state.display()
            ),
            "Pass another --out, or none for KOI_HOME/certs/<name>.",
        ));
    }
    let own = koi_certmesh_core::names::comparable(device);
    for m in &roster.members {
        if koi_certmesh_core::names::comparable(&m.hostname) == own {
            continue;
        }
        let folder = home.join("certs").join(&m.hostname);
        if canonical.starts_with(&folder) {
            return Err(error::fail(
                format!(
                    "{} is the certificate folder of {} ({} certificate, serial {}); issue never writes into another entry's folder.",
                    shown.display(),
                    m.hostname,
                    crate::wire::serde_name(&m.role),
                    m.serial
                ),
                "Pass another --out, or none for KOI_HOME/certs/<name>.",
            ));
        }
    }
    Ok(())
}

impl OutDir {
    fn refuse_foreign_files(
        &self,
        device: &str,
        ca_pem: &str,
        force: bool,
    ) -> Result<(), MethodError> {
        let mut existing = Vec::new();
        for name in FILE_NAMES {
            let path = Path::new(&self.files.dir).join(name);
            match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        return Err(error::fail(
                            format!(
                                "{} is a symbolic link or not a regular file; koi never writes through or replaces one.",
                                path.display()
                            ),
                            "Remove it, or pass another --out.",
                        ));
                    }
                    existing.push(path);
                }
                Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(error::fail(
                        format!("Failed to inspect {}: {e}.", path.display()),
                        "Check the directory's permissions, or pass another --out.",
                    ));
                }
            }
        }
        if existing.is_empty() || force || self.holds_our_cert(device, ca_pem) {
            return Ok(());
        }
        let list: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        Err(error::fail(
            format!(
                "{} already exist(s), and koi did not write them for {device} (there is no cert.pem from this mesh's CA for {device}); issue will not overwrite them.",
                list.join(", ")
            ),
            "Pass --force to overwrite them, or pass another --out.",
        ))
    }

    /// Whether the folder's `cert.pem` is a certificate signed by this CA for `device`.
    fn holds_our_cert(&self, device: &str, ca_pem: &str) -> bool {
        let Some(pem) = self.read_small("cert.pem") else {
            return false;
        };
        let (Some(der), Some(ca_der)) = (crate::x509::der(&pem), crate::x509::der(ca_pem)) else {
            return false;
        };
        let (Ok((_, cert)), Ok((_, ca))) = (
            X509Certificate::from_der(&der),
            X509Certificate::from_der(&ca_der),
        ) else {
            return false;
        };
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            return false;
        }
        let want = koi_certmesh_core::names::comparable(device);
        matches!(cert.subject_alternative_name(), Ok(Some(san))
            if san.value.general_names.iter().any(|g| matches!(g,
                GeneralName::DNSName(n) if koi_certmesh_core::names::comparable(n) == want)))
    }

    /// Reads `name` in this directory (opened with O_NOFOLLOW; at most 64 KiB, which is far more
    /// than a certificate or key), or `None` if it is missing, a link or unreadable. The text is
    /// zeroized on drop (it may be a private key).
    pub fn read_small(&self, name: &str) -> Option<Zeroizing<String>> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut text = Zeroizing::new(String::new());
        File::from(fd)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    /// Writes the four files (key first, cert last), each under a fresh name created with
    /// O_EXCL|O_NOFOLLOW and renamed into place inside the opened directory.
    pub fn write(
        &self,
        cert_pem: &str,
        key_pem: &Zeroizing<String>,
        ca_pem: &str,
    ) -> Result<(), MethodError> {
        write_in_order(cert_pem, key_pem, ca_pem, |name, bytes| {
            self.write_one(name, bytes)
        })?;
        rustix::fs::fsync(&self.fd).map_err(|e| {
            error::fail(
                format!("Failed to flush {}: {e}.", self.files.dir),
                "Check the disk.",
            )
        })
    }

    fn write_one(&self, name: &str, bytes: &[u8]) -> Result<(), MethodError> {
        let path = Path::new(&self.files.dir).join(name);
        let fail = |what: &str, e: std::io::Error| {
            error::fail(
                format!("Failed to {what} {}: {e}.", path.display()),
                "Check the disk and the directory's permissions.",
            )
        };
        let tmp = format!(".{name}.koi-tmp-{}", std::process::id());
        let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.fd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| fail("create a temporary file beside", e.into()))?;
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", e))?;
        rustix::fs::renameat(&self.fd, &tmp, &self.fd, name)
            .map_err(|e| fail("move into place", e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koi_certmesh_core::{
        CaOptions, CertAuthority, LeafRequest, Member, Role, Scope, TrustProfile,
    };
    use time::OffsetDateTime;

    struct Mesh {
        _tmp: tempfile::TempDir,
        work: PathBuf,
        layout: Layout,
        roster: Roster,
        ca: CertAuthority,
    }

    fn mesh() -> Mesh {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("certmesh")).unwrap();
        let now = OffsetDateTime::now_utc();
        let ca = CertAuthority::create(&CaOptions::new("t", Scope::unrestricted()), now).unwrap();
        let mut roster = Roster::new(
            TrustProfile::Personal,
            ca.fingerprint(),
            Scope::unrestricted(),
            "stone-a".into(),
            None,
            now,
        );
        let own = ca
            .issue_for_device(&LeafRequest::new("stone-a.lan"), now)
            .unwrap();
        roster.upsert(Member::from_issued(
            "stone-a",
            &own.cert,
            Role::Primary,
            None,
        ));
        Mesh {
            work: tmp.path().to_path_buf(),
            layout: Layout::new(&home),
            _tmp: tmp,
            roster,
            ca,
        }
    }

    impl Mesh {
        fn open(&self, device: &str, dir: Option<&Path>, force: bool) -> Result<OutDir, String> {
            open(
                &self.layout,
                &self.roster,
                device,
                dir,
                self.ca.cert_pem(),
                force,
            )
            .map_err(|e| e.message().to_owned())
        }

        fn issue_into(&self, device: &str, dir: &Path, force: bool) -> Result<(), String> {
            let out = self.open(device, Some(dir), force)?;
            let b = self
                .ca
                .issue_for_device(&LeafRequest::new(device), OffsetDateTime::now_utc())
                .unwrap();
            out.write(&b.cert.cert_pem, &b.key_pem, &b.cert.ca_pem)
                .map_err(|e| e.message().to_owned())
        }
    }

    #[test]
    fn links_are_refused_on_the_way_and_in_place_of_a_file() {
        let m = mesh();
        let real = m.work.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, m.work.join("link")).unwrap();
        for dir in [m.work.join("link"), m.work.join("link/below")] {
            let e = m.open("printer.lan", Some(&dir), true).unwrap_err();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
        let trap = m.work.join("trap");
        std::fs::create_dir(&trap).unwrap();
        std::os::unix::fs::symlink(m.work.join("victim"), trap.join("cert.pem")).unwrap();
        let e = m.open("printer.lan", Some(&trap), true).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!m.work.join("victim").exists());
    }

    #[test]
    fn other_entries_folders_and_the_mesh_state_are_refused() {
        let m = mesh();
        let home = m.layout.home().to_path_buf();
        for dir in [
            home.join("certs/stone-a"),
            home.join("certs/stone-a/deeper"),
            home.join("certmesh/ca"),
        ] {
            assert!(m.open("printer.lan", Some(&dir), true).is_err(), "{dir:?}");
        }
        // The device's own default folder is fine, and is created 0700.
        let out = m.open("printer.lan", None, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out.files.dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn foreign_files_need_force_and_a_reissue_does_not() {
        let m = mesh();
        let dir = m.work.join("out");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), "not ours").unwrap();
        let e = m.issue_into("printer.lan", &dir, false).unwrap_err();
        assert!(e.contains("will not overwrite"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("key.pem")).unwrap(),
            "not ours"
        );
        m.issue_into("printer.lan", &dir, true).unwrap();
        let mode = std::fs::metadata(dir.join("key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Ours now: the same device again needs no --force, another device does.
        m.issue_into("PRINTER.lan", &dir, false).unwrap();
        assert!(m.issue_into("scanner.lan", &dir, false).is_err());
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }
}
