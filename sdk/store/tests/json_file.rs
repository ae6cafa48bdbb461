//! `JsonFile`: what a damaged, foreign or old file does on load — each error names the file and a
//! next step that works — and that versions migrate 1 → 3 and a newer version is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use koi_store::{JsonFile, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct Settings {
    zones: Vec<String>,
    ttl: u32,
}

/// Version 1: `{"zone": "lab"}`; 2: `{"zones": ["lab"]}`; 3: `{"zones": [...], "ttl": 60}`.
fn settings(path: &std::path::Path) -> JsonFile<Settings> {
    JsonFile::new(path)
        .version(3)
        .migrate(1, |v| {
            let zone = v
                .get("zone")
                .cloned()
                .ok_or("version 1 data has no \"zone\"")?;
            Ok(json!({ "zones": [zone] }))
        })
        .migrate(2, |mut v| {
            v["ttl"] = json!(60);
            Ok(v)
        })
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_corrupted_file_is_an_error_naming_the_file_and_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.json");
    let f = settings(&path);
    f.save(&Settings::default()).unwrap();
    // Torn by something that did not use the store: half a document.
    let whole = fs::read(&path).unwrap();
    fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let err = f.load().unwrap_err();
    assert!(matches!(err, StoreError::NotJson { .. }), "{err:?}");
    let msg = err.to_string();
    let shown = path.display().to_string();
    assert!(msg.contains(&shown), "{msg}");
    assert!(msg.contains("line "), "{msg}");
    let next = format!("mv {shown} {shown}.bad");
    assert!(msg.contains(&next), "{msg}");
    assert!(
        f.load_or_default().is_err(),
        "a damaged file must not reset silently"
    );
    // The step it names works: after it, the plugin starts from empty state.
    fs::rename(&path, format!("{shown}.bad")).unwrap();
    assert_eq!(f.load_or_default().unwrap(), Settings::default());

    // JSON, but not ours.
    fs::write(&path, b"[1, 2, 3]").unwrap();
    let msg = f.load().unwrap_err().to_string();
    assert!(msg.contains(&shown) && msg.contains(&next), "{msg}");
    fs::write(&path, br#"{"version": 3, "data": {"zones": 7}}"#).unwrap();
    let err = f.load().unwrap_err();
    assert!(matches!(err, StoreError::Shape { .. }), "{err:?}");
    assert!(err.to_string().contains(&next), "{err}");
}

#[test]
fn version_1_migrates_to_3_and_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.json");
    fs::write(&path, br#"{"version": 1, "data": {"zone": "lab"}}"#).unwrap();
    let f = settings(&path);
    let want = Settings {
        zones: vec!["lab".into()],
        ttl: 60,
    };
    assert_eq!(f.load().unwrap(), Some(want));
    fs::write(&path, br#"{"version": 2, "data": {"zones": ["a", "b"]}}"#).unwrap();
    assert_eq!(f.load().unwrap().unwrap().zones, ["a", "b"]);

    // Saving writes the current version.
    f.save(&Settings::default()).unwrap();
    let on_disk: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk["version"], 3);

    // Written by a newer koi: refused, never guessed at.
    fs::write(
        &path,
        br#"{"version": 4, "data": {"zones": [], "ttl": 1, "new": true}}"#,
    )
    .unwrap();
    let err = f.load().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 4,
                supported: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("Upgrade koi"),
        "{msg}"
    );

    // A failing step names its version and the reason.
    fs::write(&path, br#"{"version": 1, "data": {"name": "lab"}}"#).unwrap();
    let err = f.load().unwrap_err();
    assert!(
        matches!(err, StoreError::Migration { from: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no \"zone\""), "{err}");
    // No step registered for an old version.
    let f2 = JsonFile::<Settings>::new(&path).version(3);
    let err = f2.load().unwrap_err();
    assert!(
        matches!(err, StoreError::Migration { from: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_symlink_is_refused_and_files_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    let f = settings(&real);
    f.save(&Settings::default()).unwrap();
    assert_eq!(mode(&real), 0o600);
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = settings(&link).load().unwrap_err();
    assert!(matches!(err, StoreError::Symlink { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&link.display().to_string()),
        "{err}"
    );
    // A directory where the file should be.
    let d = dir.path().join("dir.json");
    fs::create_dir(&d).unwrap();
    let err = settings(&d).load().unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
}

#[test]
fn save_creates_a_missing_parent_directory_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koi-home/dns/zones.json");
    settings(&path).save(&Settings::default()).unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}
