//! The `koi` binary: a thin wrapper around [`koi_host::app::main`].

fn main() -> std::process::ExitCode {
    koi_host::app::main()
}
