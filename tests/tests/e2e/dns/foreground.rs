//! Without a daemon, `koi dns serve` serves in the foreground until Ctrl-C: on loopback and a
//! high port (nothing leaves the machine), static entries added by another `koi dns add` answer
//! at once, `lookup` and `status` from other runs find the foreground server, and Ctrl-C stops it.

use super::{SOON, addresses, status};
use crate::support::{KoiEnv, dns_bin, free_port, wait_until};
use std::process::{Command, Stdio};
use std::time::Duration;

fn dig_local(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "+tries=1",
            "+time=2",
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            name,
        ])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_foreground_server_answers_live_entries_is_found_by_lookup_and_stops_on_ctrl_c() {
    let env = KoiEnv::new();
    env.install(&dns_bin(), "dns");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // The upstream is a closed loopback port: nothing is ever forwarded off the machine.
    let mut serve = env
        .command(&[
            "dns",
            "serve",
            "--listen",
            &listen,
            "--upstream",
            "127.0.0.1:9",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("koi dns serve");
    wait_until("the foreground server answers", SOON, || {
        status(&dig_local(port, "none.lan")) == "NXDOMAIN"
    });
    env.run(&["dns", "add", "nas", "10.1.2.3"]).expect_code(0);
    wait_until("a static entry added by another run answers", SOON, || {
        addresses(&dig_local(port, "nas.lan")) == vec!["10.1.2.3"]
    });
    let looked = env.run(&["dns", "lookup", "nas.lan", "--json"]);
    looked.expect_code(0);
    let v = looked.json();
    assert_eq!(v["via"], format!("udp {listen}"), "{v}");
    assert_eq!(v["source"], "static", "{v}");
    let st = env.run(&["dns", "status", "--json"]);
    assert!(
        st.stdout.contains(&listen),
        "status names the foreground server: {}",
        st.stdout
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(serve.id() as i32).expect("pid"),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let deadline = std::time::Instant::now() + SOON;
    while serve.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "koi dns serve did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status(&dig_local(port, "nas.lan")),
        "NO ANSWER",
        "still answering after Ctrl-C"
    );
    assert!(
        !env.home.join("dns/running.json").exists(),
        "running.json left behind"
    );
    let looked = env.run(&["dns", "lookup", "nas.lan", "--json"]);
    assert_eq!(looked.json()["via"], "in-process", "{}", looked.stdout);
}
