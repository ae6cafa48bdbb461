//! Encryption at rest of the CA store: round trip with the recommended Argon2id parameters,
//! wrong passphrase, permissions, and "no private key on disk in any readable form".

#![allow(clippy::unwrap_used)]

use koi_certmesh_core::*;
use time::OffsetDateTime;

fn new_ca() -> CertAuthority {
    CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", Scope::unrestricted()),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

#[test]
fn create_unlock_round_trip_with_recommended_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::new(dir.path().join("certmesh/ca"));
    let ca = new_ca();
    let fp = ca.fingerprint();
    let totp = TotpSecret::generate();
    let code = totp.code_at(1_800_000_000).unwrap();
    let pass = Passphrase::new("a long enough passphrase");
    store
        .create(ca, totp, &pass, KdfParams::RECOMMENDED)
        .unwrap();
    let un = store.unlock(&pass).unwrap();
    assert_eq!(un.ca().fingerprint(), fp);
    assert_eq!(un.totp_secret().code_at(1_800_000_000).unwrap(), code);
    let env = SealedEnvelope::read(&store.vault_path()).unwrap();
    assert_eq!(env.kdf.params, KdfParams::RECOMMENDED);
    assert_eq!(env.kdf.alg, "argon2id");
    // A second create refuses to overwrite.
    assert!(matches!(
        store.create(
            new_ca(),
            TotpSecret::generate(),
            &pass,
            KdfParams::INSECURE_FOR_TESTS
        ),
        Err(Error::AlreadyExists { .. })
    ));
}

#[test]
fn wrong_passphrase_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::new(dir.path().join("ca"));
    store
        .create(
            new_ca(),
            TotpSecret::generate(),
            &Passphrase::new("the right passphrase"),
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
    let e = store
        .unlock(&Passphrase::new("the wrong passphrase"))
        .unwrap_err();
    assert!(matches!(e, Error::WrongPassphrase { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("vault.sealed")
            && msg.contains("passphrase is wrong")
            && msg.contains("`koi certmesh leave`"),
        "{msg}"
    );
    assert!(!msg.contains("the wrong passphrase"));
}

#[test]
fn altered_vault_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::new(dir.path().join("ca"));
    let pass = Passphrase::new("the right passphrase");
    store
        .create(
            new_ca(),
            TotpSecret::generate(),
            &pass,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
    let mut env = SealedEnvelope::read(&store.vault_path()).unwrap();
    let mut ct =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &env.ciphertext)
            .unwrap();
    ct[5] ^= 1;
    env.ciphertext = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ct);
    env.write(&store.vault_path()).unwrap();
    assert!(matches!(
        store.unlock(&pass),
        Err(Error::WrongPassphrase { .. })
    ));
    std::fs::write(store.vault_path(), b"{ not json").unwrap();
    assert!(matches!(
        store.unlock(&pass),
        Err(Error::SealedFormat { .. })
    ));
}

#[cfg(unix)]
#[test]
fn files_are_0600_dir_0700_and_hold_no_private_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("certmesh/ca");
    let store = CaStore::new(&ca_dir);
    let ca = new_ca();
    // A device key PEM, to learn what the CA's key would look like encoded.
    let probe = ca
        .issue_for_device(&LeafRequest::new("probe"), OffsetDateTime::now_utc())
        .unwrap();
    assert!(probe.key_pem.contains("PRIVATE KEY"));
    let pass = Passphrase::new("the right passphrase");
    let mut un = store
        .create(
            ca,
            TotpSecret::generate(),
            &pass,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
    let secret_before = un.totp_secret().code_at(1_800_000_000).unwrap();
    un.rotate_totp_secret().unwrap();
    assert_ne!(
        un.totp_secret().code_at(1_800_000_000).unwrap(),
        secret_before
    );
    drop(un);

    assert_eq!(
        std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&ca_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
        assert!(
            !text.contains("PRIVATE KEY"),
            "{name} contains a PEM private key"
        );
        files += 1;
    }
    assert_eq!(files, 2);

    // The raw key bytes (PKCS#8 DER, plain or base64) appear nowhere on disk.
    let un = store.unlock(&pass).unwrap();
    let pem_of_ca_key_pub = un.ca().public_key_sec1();
    let vault = std::fs::read(store.vault_path()).unwrap();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    // The public point is public; the vault must not even carry it in the clear (all sealed).
    assert!(!contains(&vault, &pem_of_ca_key_pub));
}

#[test]
fn change_passphrase_reseals() {
    let dir = tempfile::tempdir().unwrap();
    let store = CaStore::new(dir.path().join("ca"));
    let old = Passphrase::new("old passphrase 1");
    let new = Passphrase::new("new passphrase 2");
    let mut un = store
        .create(
            new_ca(),
            TotpSecret::generate(),
            &old,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
    un.change_passphrase(&new, KdfParams::INSECURE_FOR_TESTS)
        .unwrap();
    assert!(matches!(
        store.unlock(&old),
        Err(Error::WrongPassphrase { .. })
    ));
    assert!(store.unlock(&new).is_ok());
}
