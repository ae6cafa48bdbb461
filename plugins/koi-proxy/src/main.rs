//! The `koi-proxy` executable: hands control to the plugin defined in the library.
fn main() -> std::process::ExitCode {
    koi_proxy::plugin().run()
}
