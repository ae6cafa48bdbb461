//! The `koi-dns` executable: the host starts it and speaks JSON-RPC over stdio.

fn main() -> std::process::ExitCode {
    koi_dns::plugin().run()
}
