//! The `koi-health` executable: hands control to the plugin defined in the library.
fn main() -> std::process::ExitCode {
    koi_health::plugin().run()
}
