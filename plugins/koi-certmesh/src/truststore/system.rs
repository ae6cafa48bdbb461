//! The Linux system trust store, per [`Family`]: where the anchor file goes, which tool rebuilds
//! the CA bundle (and how it is pointed at a root other than `/`), and where the bundle is read
//! back to verify by fingerprint. Debian's `update-ca-certificates` takes every directory as a
//! flag, so a temporary root is fully supported there; the other families' tools read fixed
//! paths, so under another root only the file is placed and the tool is left for the user to run
//! with `chroot`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::exec::{self, Cmd, Output};
use super::{Family, StoreReport, StoreState, Target, TrustConfig, io_failure, pem};

/// Everything that differs between families, as paths relative to the system root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    pub family: Family,
    /// Directory for administrator-added anchors.
    pub anchor_dir: &'static str,
    /// Extension the tool picks up there.
    pub extension: &'static str,
    /// The PEM bundle the tool produces.
    pub bundle: &'static str,
    /// The tool and its arguments on a normal run.
    pub tool: &'static str,
    pub tool_args: &'static [&'static str],
    /// The package that ships the tool, for "install X" advice.
    pub package: &'static str,
}

pub(crate) fn spec(family: Family) -> Spec {
    match family {
        Family::Debian => Spec {
            family,
            anchor_dir: "usr/local/share/ca-certificates",
            extension: "crt",
            bundle: "etc/ssl/certs/ca-certificates.crt",
            tool: "update-ca-certificates",
            tool_args: &[],
            package: "ca-certificates",
        },
        Family::Fedora => Spec {
            family,
            anchor_dir: "etc/pki/ca-trust/source/anchors",
            extension: "pem",
            bundle: "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            tool: "update-ca-trust",
            tool_args: &["extract"],
            package: "ca-certificates",
        },
        Family::Arch => Spec {
            family,
            anchor_dir: "etc/ca-certificates/trust-source/anchors",
            extension: "crt",
            bundle: "etc/ca-certificates/extracted/tls-ca-bundle.pem",
            tool: "trust",
            tool_args: &["extract-compat"],
            package: "p11-kit",
        },
        Family::OpenSuse => Spec {
            family,
            anchor_dir: "etc/pki/trust/anchors",
            extension: "pem",
            bundle: "var/lib/ca-certificates/ca-bundle.pem",
            tool: "update-ca-certificates",
            tool_args: &[],
            package: "ca-certificates",
        },
    }
}

impl Spec {
    pub fn anchor_path(&self, root: &Path, name: &str) -> PathBuf {
        root.join(self.anchor_dir)
            .join(format!("{name}.{}", self.extension))
    }

    pub fn bundle_path(&self, root: &Path) -> PathBuf {
        root.join(self.bundle)
    }

    fn store_name(&self) -> String {
        format!("system ({})", self.family)
    }

    /// The command that rebuilds the bundle under `cfg.system_root`, or, when the tool cannot be
    /// pointed there, `Err` with the command the user can run instead.
    pub fn refresh_command(
        &self,
        cfg: &TrustConfig,
        tool: &Path,
        fresh: bool,
    ) -> Result<Cmd, String> {
        let root = &cfg.system_root;
        let mut cmd = Cmd::new(tool).args(self.tool_args);
        if cfg.is_real_root() {
            if fresh && self.family == Family::Debian {
                cmd = cmd.arg("--fresh");
            }
            return Ok(cmd);
        }
        if self.family != Family::Debian {
            let mut parts = vec![
                "chroot".to_string(),
                exec::shell_quote(&root.to_string_lossy()),
                self.tool.to_string(),
            ];
            parts.extend(self.tool_args.iter().map(|a| a.to_string()));
            return Err(parts.join(" "));
        }
        // Every path update-ca-certificates uses, redirected (see /usr/sbin/update-ca-certificates;
        // TMPDIR is used only for two scratch files). Hooks in the root's own hooks directory,
        // normally absent, so the real machine's Java keystore hook never runs.
        for (flag, rel) in [
            ("--certsconf", "etc/ca-certificates.conf"),
            ("--certsdir", "usr/share/ca-certificates"),
            ("--localcertsdir", "usr/local/share/ca-certificates"),
            ("--etccertsdir", "etc/ssl/certs"),
            ("--hooksdir", "etc/ca-certificates/update.d"),
        ] {
            cmd = cmd.arg(flag).arg(root.join(rel));
        }
        if fresh {
            cmd = cmd.arg("--fresh");
        }
        Ok(cmd)
    }
}

/// What this module needs before it can act: the family and its spec, or a failed row.
pub(crate) fn resolve(cfg: &TrustConfig) -> Result<Spec, Box<StoreReport>> {
    match cfg.resolved_family() {
        Some(f) => Ok(spec(f)),
        None => Err(Box::new(StoreReport::failed(
            "system",
            cfg.system_root.display().to_string(),
            format!(
                "cannot tell which Linux family {} is: its etc/os-release names none Koi knows and no update-ca-certificates, update-ca-trust or trust tool was found; set KOI_TRUST_FAMILY=debian|fedora|arch|opensuse",
                cfg.system_root.display()
            ),
        ))),
    }
}

fn bundle_holds(bundle: &Path, fingerprint: &str) -> io::Result<bool> {
    Ok(pem::text_contains(
        &fs::read_to_string(bundle)?,
        fingerprint,
    ))
}

fn tool_missing(spec: &Spec, location: &str) -> StoreReport {
    StoreReport::failed(
        spec.store_name(),
        location,
        format!(
            "`{}` was not found on PATH or in /usr/sbin; install the `{}` package and try again",
            spec.tool, spec.package
        ),
    )
}

fn run_tool(
    cfg: &TrustConfig,
    spec: &Spec,
    cmd: &Cmd,
    location: &str,
    retry: &str,
) -> Result<Output, Box<StoreReport>> {
    let fail = |detail: String| Box::new(StoreReport::failed(spec.store_name(), location, detail));
    match exec::run(cmd, cfg.timeout) {
        Ok(out) if out.success() => Ok(out),
        Ok(out) if out.permission_denied() => Err(Box::new(
            StoreReport::failed(
                spec.store_name(),
                location,
                format!(
                    "{}; rebuilding the system bundle needs administrator rights",
                    out.failure()
                ),
            )
            .command(cfg.privileged_command(retry)),
        )),
        Ok(out) => Err(fail(format!(
            "{}; fix what it reports and run `{}` again",
            out.failure(),
            retry
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes `content` to `path` atomically and durably (`koi_sdk::store::write_atomic`: unique temporary
/// name, file and directory fsync), mode 0644. Returns whether the file changed.
fn write_atomically(path: &Path, content: &str) -> io::Result<bool> {
    if fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    koi_sdk::store::write_atomic(path, content.as_bytes(), 0o644)?;
    Ok(true)
}

/// Directories that must exist before the file is written and the tool runs. Under the real root
/// only the anchor directory is created (the rest belongs to the distribution's packages).
fn prepare_dirs(cfg: &TrustConfig, spec: &Spec) -> Result<(), (PathBuf, io::Error)> {
    let root = &cfg.system_root;
    let mut dirs = vec![root.join(spec.anchor_dir)];
    if !cfg.is_real_root() && spec.family == Family::Debian {
        dirs.push(root.join("etc/ssl/certs"));
        dirs.push(root.join("usr/share/ca-certificates"));
    }
    for d in dirs {
        fs::create_dir_all(&d).map_err(|e| (d.clone(), e))?;
    }
    if !cfg.is_real_root() && spec.family == Family::Debian {
        // An empty config is valid (the tool then rebuilds from scratch); without one it prints a
        // `sed: can't read` warning.
        let conf = root.join("etc/ca-certificates.conf");
        if !conf.exists() {
            fs::write(&conf, "").map_err(|e| (conf.clone(), e))?;
        }
    }
    Ok(())
}

pub(crate) fn install(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let spec = match resolve(cfg) {
        Ok(s) => s,
        Err(row) => return *row,
    };
    let (Some(fp), Some(pem_text)) = (target.fingerprint.as_deref(), target.pem.as_deref()) else {
        return StoreReport::failed(spec.store_name(), "", "no certificate to install");
    };
    let root = &cfg.system_root;
    let anchor = spec.anchor_path(root, target.name);
    let location = anchor.display().to_string();
    let bundle = spec.bundle_path(root);
    let retry = cfg.install_command.as_str();

    let tool = exec::which(spec.tool);
    let redirectable = cfg.is_real_root() || spec.family == Family::Debian;
    if tool.is_none() && redirectable {
        return tool_missing(&spec, &location);
    }
    if let Err((dir, e)) = prepare_dirs(cfg, &spec) {
        return io_failure(
            cfg,
            &spec.store_name(),
            &location,
            "create",
            &dir,
            &e,
            retry,
        );
    }
    let changed = match write_atomically(&anchor, pem_text) {
        Ok(c) => c,
        Err(e) => {
            return io_failure(
                cfg,
                &spec.store_name(),
                &location,
                "write",
                &anchor,
                &e,
                retry,
            );
        }
    };
    if !changed && bundle_holds(&bundle, fp).unwrap_or(false) {
        return StoreReport::new(spec.store_name(), location, StoreState::Installed)
            .verified()
            .bundle(&bundle)
            .detail("already installed");
    }
    let tool = tool.unwrap_or_else(|| PathBuf::from(spec.tool));
    let cmd = match spec.refresh_command(cfg, &tool, false) {
        Ok(c) => c,
        Err(instead) => {
            return StoreReport::failed(
                spec.store_name(),
                location,
                format!(
                    "placed the anchor, but `{}` reads only the real /etc, so it was not run for {}; run `{instead}` to rebuild {}",
                    spec.tool,
                    root.display(),
                    bundle.display()
                ),
            )
            .command(instead);
        }
    };
    if let Err(row) = run_tool(cfg, &spec, &cmd, &location, retry) {
        return *row;
    }
    match bundle_holds(&bundle, fp) {
        Ok(true) => StoreReport::new(spec.store_name(), location, StoreState::Installed)
            .verified()
            .bundle(&bundle),
        Ok(false) => StoreReport::failed(
            spec.store_name(),
            location,
            format!(
                "`{}` succeeded but {} does not contain certificate {fp}; check that the anchor file is readable and run `{}` by hand",
                cmd.display(),
                bundle.display(),
                cmd.display()
            ),
        ),
        Err(e) => StoreReport::failed(
            spec.store_name(),
            location,
            format!(
                "`{}` succeeded but its bundle {} cannot be read: {e}",
                cmd.display(),
                bundle.display()
            ),
        ),
    }
}

pub(crate) fn remove(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let spec = match resolve(cfg) {
        Ok(s) => s,
        Err(row) => return *row,
    };
    let root = &cfg.system_root;
    let anchor = spec.anchor_path(root, target.name);
    let location = anchor.display().to_string();
    let bundle = spec.bundle_path(root);
    let retry = cfg.remove_command.as_str();

    // The fingerprint to check for afterwards: the caller's, else the file's own.
    let file_fp = fs::read_to_string(&anchor)
        .ok()
        .and_then(|t| pem::fingerprints(&t).into_iter().next());
    let fp = target.fingerprint.clone().or(file_fp);
    let present = anchor.exists();
    let in_bundle = fp
        .as_deref()
        .is_some_and(|fp| bundle_holds(&bundle, fp).unwrap_or(false));
    if !present && !in_bundle {
        return StoreReport::new(spec.store_name(), location, StoreState::Absent)
            .verified()
            .detail(format!("no anchor named {} was installed", target.name));
    }
    let redirectable = cfg.is_real_root() || spec.family == Family::Debian;
    let tool = match exec::which(spec.tool) {
        Some(t) => t,
        None if redirectable => return tool_missing(&spec, &location),
        None => PathBuf::from(spec.tool),
    };
    if present {
        if let Err(e) = fs::remove_file(&anchor) {
            return io_failure(
                cfg,
                &spec.store_name(),
                &location,
                "delete",
                &anchor,
                &e,
                retry,
            );
        }
    }
    let cmd = match spec.refresh_command(cfg, &tool, false) {
        Ok(c) => c,
        Err(instead) => {
            return StoreReport::failed(
                spec.store_name(),
                location,
                format!(
                    "deleted the anchor, but `{}` reads only the real /etc, so it was not run for {}; run `{instead}` to rebuild {}",
                    spec.tool,
                    root.display(),
                    bundle.display()
                ),
            )
            .command(instead);
        }
    };
    if let Err(row) = run_tool(cfg, &spec, &cmd, &location, retry) {
        return *row;
    }
    let mut last = cmd;
    // update-ca-certificates rebuilds the bundle on every run but only drops the certificate's
    // symlinks in etc/ssl/certs (and their hash links) when something else changed; --fresh
    // rebuilds the links too.
    if spec.family == Family::Debian
        && dangling(
            &root
                .join("etc/ssl/certs")
                .join(format!("{}.pem", target.name)),
        )
    {
        match spec.refresh_command(cfg, &tool, true) {
            Ok(fresh) => {
                if let Err(row) = run_tool(cfg, &spec, &fresh, &location, retry) {
                    return *row;
                }
                last = fresh;
            }
            Err(instead) => {
                return StoreReport::failed(
                    spec.store_name(),
                    location,
                    format!("run `{instead}` to finish the removal"),
                )
                .command(instead);
            }
        }
    }
    match fp.as_deref().map(|fp| bundle_holds(&bundle, fp)) {
        Some(Ok(true)) => still_in_bundle(
            cfg,
            &spec,
            &location,
            &bundle,
            fp.as_deref().unwrap_or_default(),
            &last,
        ),
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => StoreReport::failed(
            spec.store_name(),
            location,
            format!("cannot read {} to check the removal: {e}", bundle.display()),
        ),
        Some(_) => StoreReport::new(spec.store_name(), location, StoreState::Removed).verified(),
        // Neither the caller nor the file said which certificate it was: the file is gone and the
        // tool ran, which is all that can be checked.
        None => StoreReport::new(spec.store_name(), location, StoreState::Removed)
            .detail("the anchor file held no readable certificate, so the bundle was not checked"),
    }
}

/// After a removal and a rebuild the bundle still holds the certificate. Either another source
/// file holds it (the user must decide), or — Debian — no certificate at all is left to trust:
/// `update-ca-certificates` then writes no new bundle and leaves the old one in place, so the
/// certificate is cut from the bundle here, which is the bundle the tool would have written.
fn still_in_bundle(
    cfg: &TrustConfig,
    spec: &Spec,
    location: &str,
    bundle: &Path,
    fp: &str,
    ran: &Cmd,
) -> StoreReport {
    let retry = cfg.remove_command.as_str();
    let root = &cfg.system_root;
    let source_dirs = match spec.family {
        Family::Debian => vec![
            root.join("usr/local/share/ca-certificates"),
            root.join("usr/share/ca-certificates"),
        ],
        _ => vec![root.join(spec.anchor_dir)],
    };
    let mut holders = Vec::new();
    let mut sources = 0usize;
    for dir in &source_dirs {
        scan_sources(dir, fp, &mut sources, &mut holders);
    }
    if let Some(holder) = holders.first() {
        return StoreReport::failed(
            spec.store_name(),
            location,
            format!(
                "`{}` ran but {} still contains the certificate, because {} holds it too; delete that file and run `{retry}` again",
                ran.display(),
                bundle.display(),
                holder.display()
            ),
        );
    }
    if spec.family != Family::Debian || sources > 0 {
        return StoreReport::failed(
            spec.store_name(),
            location,
            format!(
                "`{}` ran but {} still contains the certificate; run `{}` by hand and check its output",
                ran.display(),
                bundle.display(),
                ran.display()
            ),
        );
    }
    let cut = fs::read_to_string(bundle).map(|t| pem::without_certificate(&t, fp));
    match cut.and_then(|t| write_atomically(bundle, &t)) {
        Ok(_) if !bundle_holds(bundle, fp).unwrap_or(true) => {
            StoreReport::new(spec.store_name(), location, StoreState::Removed)
                .verified()
                .detail(format!(
                    "no other certificate is left, so `{}` kept its old bundle; the certificate was cut from {} directly",
                    spec.tool,
                    bundle.display()
                ))
        }
        Ok(_) => StoreReport::failed(
            spec.store_name(),
            location,
            format!("cut the certificate from {} but it is still there", bundle.display()),
        ),
        Err(e) => io_failure(cfg, &spec.store_name(), location, "rewrite", bundle, &e, retry),
    }
}

/// Counts `*.crt`/`*.pem` files under `dir` (recursively, following links like the tools do) and
/// collects those holding `fp`.
fn scan_sources(dir: &Path, fp: &str, count: &mut usize, holders: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            scan_sources(&path, fp, count, holders);
        } else if path.extension().is_some_and(|e| e == "crt" || e == "pem") {
            *count += 1;
            if fs::read_to_string(&path).is_ok_and(|t| pem::text_contains(&t, fp)) {
                holders.push(path);
            }
        }
    }
}

/// A symlink whose target no longer exists.
fn dangling(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && fs::metadata(path).is_err()
}

pub(crate) fn status(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let spec = match resolve(cfg) {
        Ok(s) => s,
        Err(row) => return *row,
    };
    let root = &cfg.system_root;
    let anchor = spec.anchor_path(root, target.name);
    let location = anchor.display().to_string();
    let bundle = spec.bundle_path(root);
    let Some(fp) = target.fingerprint.as_deref() else {
        return StoreReport::failed(spec.store_name(), location, "no fingerprint to look for");
    };
    match bundle_holds(&bundle, fp) {
        Ok(true) => {
            let row = StoreReport::new(spec.store_name(), location, StoreState::Installed)
                .verified()
                .bundle(&bundle);
            if anchor.exists() {
                row
            } else {
                row.detail(format!(
                    "the bundle trusts this certificate, but not through Koi's anchor file {}",
                    anchor.display()
                ))
            }
        }
        Ok(false) if anchor.exists() => {
            StoreReport::new(spec.store_name(), location, StoreState::Absent)
                .verified()
                .detail(format!(
                    "the anchor file is in place but {} was not rebuilt; run `{}`",
                    bundle.display(),
                    cfg.install_command
                ))
        }
        Ok(false) => StoreReport::new(spec.store_name(), location, StoreState::Absent).verified(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            StoreReport::new(spec.store_name(), location, StoreState::Absent)
                .detail(format!("{} does not exist", bundle.display()))
        }
        Err(e) => StoreReport::failed(
            spec.store_name(),
            location,
            format!("cannot read {}: {e}", bundle.display()),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn cfg(root: &str) -> TrustConfig {
        TrustConfig {
            system_root: root.into(),
            ..TrustConfig::default()
        }
    }

    #[test]
    fn paths_per_family() {
        let root = Path::new("/r");
        let cases = [
            (
                Family::Debian,
                "/r/usr/local/share/ca-certificates/n.crt",
                "/r/etc/ssl/certs/ca-certificates.crt",
            ),
            (
                Family::Fedora,
                "/r/etc/pki/ca-trust/source/anchors/n.pem",
                "/r/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            ),
            (
                Family::Arch,
                "/r/etc/ca-certificates/trust-source/anchors/n.crt",
                "/r/etc/ca-certificates/extracted/tls-ca-bundle.pem",
            ),
            (
                Family::OpenSuse,
                "/r/etc/pki/trust/anchors/n.pem",
                "/r/var/lib/ca-certificates/ca-bundle.pem",
            ),
        ];
        for (family, anchor, bundle) in cases {
            let s = spec(family);
            assert_eq!(s.anchor_path(root, "n"), PathBuf::from(anchor), "{family}");
            assert_eq!(s.bundle_path(root), PathBuf::from(bundle), "{family}");
        }
    }

    #[test]
    fn commands_under_the_real_root() {
        let real = cfg("/");
        let show = |f: Family, fresh: bool| {
            let s = spec(f);
            s.refresh_command(&real, Path::new(s.tool), fresh)
                .map(|c| c.display())
        };
        assert_eq!(
            show(Family::Debian, false).as_deref(),
            Ok("update-ca-certificates")
        );
        assert_eq!(
            show(Family::Debian, true).as_deref(),
            Ok("update-ca-certificates --fresh")
        );
        assert_eq!(
            show(Family::Fedora, false).as_deref(),
            Ok("update-ca-trust extract")
        );
        assert_eq!(
            show(Family::Arch, true).as_deref(),
            Ok("trust extract-compat")
        );
        assert_eq!(
            show(Family::OpenSuse, false).as_deref(),
            Ok("update-ca-certificates")
        );
    }

    #[test]
    fn commands_under_another_root() {
        let lab = cfg("/tmp/lab");
        let s = spec(Family::Debian);
        assert_eq!(
            s.refresh_command(&lab, Path::new("/usr/sbin/update-ca-certificates"), true)
                .map(|c| c.display())
                .as_deref(),
            Ok(
                "/usr/sbin/update-ca-certificates --certsconf /tmp/lab/etc/ca-certificates.conf --certsdir /tmp/lab/usr/share/ca-certificates --localcertsdir /tmp/lab/usr/local/share/ca-certificates --etccertsdir /tmp/lab/etc/ssl/certs --hooksdir /tmp/lab/etc/ca-certificates/update.d --fresh"
            )
        );
        let chroot = |f: Family| {
            let s = spec(f);
            s.refresh_command(&lab, Path::new(s.tool), false)
                .map(|c| c.display())
        };
        assert_eq!(
            chroot(Family::Fedora),
            Err("chroot /tmp/lab update-ca-trust extract".to_string())
        );
        assert_eq!(
            chroot(Family::Arch),
            Err("chroot /tmp/lab trust extract-compat".to_string())
        );
        assert_eq!(
            chroot(Family::OpenSuse),
            Err("chroot /tmp/lab update-ca-certificates".to_string())
        );
    }

    #[test]
    fn other_families_under_a_temporary_root_place_the_file_and_name_the_chroot_command() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let der = [0x30, 0x03, 0x02, 0x01, 0x01];
        let pem_text = pem::der_to_pem(&der);
        let fp = pem::sha256_hex(&der);
        for family in [Family::Fedora, Family::Arch, Family::OpenSuse] {
            let c = TrustConfig {
                system_root: root.to_path_buf(),
                family: Some(family),
                ..TrustConfig::default()
            };
            let t = Target {
                name: "koi-test",
                fingerprint: Some(fp.clone()),
                pem: Some(pem_text.clone()),
            };
            let row = install(&c, &t);
            assert_eq!(row.state, StoreState::Failed, "{family}: {row:?}");
            let path = spec(family).anchor_path(root, "koi-test");
            assert_eq!(fs::read_to_string(&path).unwrap(), pem_text);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o644
            );
            assert!(
                row.command_to_run
                    .as_deref()
                    .unwrap()
                    .starts_with("chroot "),
                "{row:?}"
            );
            assert_eq!(status(&c, &t).state, StoreState::Absent);
        }
    }
}
