//! The OpenAPI document checked against the running fake server by `schemathesis` (property-based
//! requests generated from the document): no server errors and no response that breaks the
//! documented schemas, statuses, content types or `Allow` headers.
//!
//! Run it by hand with `pip install schemathesis`, then
//! `cargo test -p koi-rest --test rest schemathesis -- --nocapture`. Skipped with a message when
//! `schemathesis` is not installed, unless `KOI_REQUIRE_ROOT_TESTS=1`.

use crate::fake::TestServer;
use crate::tools::available;
use std::process::Command;

/// Operations left out: they answer 5xx (or block) on purpose.
/// - `/v1/other-plug/fail` returns whatever error code it is given (502, 503, 504 included).
/// - `/v1/other-plug/wait` blocks until a test releases it.
const EXCLUDED_PATHS: &str = "^/v1/other-plug/(fail|wait)$";

#[test]
fn schemathesis_finds_no_server_error_or_schema_mismatch() {
    if !available("schemathesis", "pip install schemathesis") {
        return;
    }
    let server = TestServer::start();
    let workdir = tempfile::tempdir().expect("tempdir");
    let output = Command::new("schemathesis")
        .current_dir(workdir.path())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .args([
            "run",
            &server.url("/v1/openapi.json"),
            "--checks",
            "all",
            "--exclude-path-regex",
            EXCLUDED_PATHS,
            "--max-examples",
            "40",
            "--seed",
            "7240",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--max-redirects",
            "0",
        ])
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
}
