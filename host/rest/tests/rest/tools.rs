//! External tools the tests drive (`curl`, `schemathesis`): whether they are installed, and the
//! skip-or-fail rule — a missing tool skips the test with a message, unless
//! `KOI_REQUIRE_ROOT_TESTS=1` (CI), where it fails the test.

use std::process::{Command, Stdio};

/// Whether `program --version` runs. When it does not: fails the test under
/// `KOI_REQUIRE_ROOT_TESTS=1`, otherwise prints why the test is skipped and returns false.
pub fn available(program: &str, install: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let message = format!("`{program}` is not installed ({install}); this test needs it");
    if std::env::var("KOI_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{message}, and KOI_REQUIRE_ROOT_TESTS=1 forbids skipping it");
    }
    eprintln!("SKIPPED: {message}. Set KOI_REQUIRE_ROOT_TESTS=1 to make this a failure.");
    false
}
