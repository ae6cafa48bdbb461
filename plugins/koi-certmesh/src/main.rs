//! The `koi-certmesh` executable: hands control to the plugin defined in the library.
fn main() -> std::process::ExitCode {
    koi_certmesh::plugin().run()
}
