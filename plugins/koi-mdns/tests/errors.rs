//! Every error case of the issue, asserting the message and its next step: an invalid service
//! type, port 0, a TXT entry over 255 bytes, an instance name over 63 bytes, no usable interface,
//! and port 5353 held by a stack that does not share it. (The name conflict is in
//! `two_hosts.rs`; coexistence with Avahi, which does share the port, in `avahi_interop.rs`.)

mod support;

use std::time::Duration;
use support::{Lab, have_or_skip, root_or_skip};

fn fails_with(lab: &Lab, args: &[&str], code: i32, message: &str, hint: &str) {
    let out = lab.run(lab.a(), args, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected `{message}` in {stderr}"
    );
    assert!(
        stderr.contains(hint),
        "{args:?}: expected hint `{hint}` in {stderr}"
    );
}

#[test]
fn invalid_input_is_refused_with_the_next_step() {
    if !root_or_skip("invalid_input_is_refused_with_the_next_step") {
        return;
    }
    let lab = Lab::pair();
    fails_with(
        &lab,
        &["mdns", "discover", "http"],
        2,
        "`http` is not a valid DNS-SD service type: a service type has exactly two labels",
        "Write it as `_name._tcp` or `_name._udp`",
    );
    fails_with(
        &lab,
        &["mdns", "announce", "web", "_http._tcp", "0"],
        2,
        // The params schema declares the range, so the host says it in the user's words.
        "<PORT> must be 1–65535",
        "Run `koi mdns announce --help`",
    );
    let long_txt = format!("note={}", "x".repeat(300));
    fails_with(
        &lab,
        &[
            "mdns",
            "announce",
            "web",
            "_http._tcp",
            "80",
            "--txt",
            &long_txt,
        ],
        2,
        "the TXT entry `note=…` is 305 bytes; a DNS-SD TXT entry (key=value) holds at most 255 bytes",
        "split it across several keys",
    );
    let long_name = "n".repeat(64);
    fails_with(
        &lab,
        &["mdns", "announce", &long_name, "_http._tcp", "80"],
        2,
        "is 64 bytes; an instance name is one DNS label of at most 63 bytes",
        "Choose a shorter instance name",
    );
}

#[test]
fn no_usable_interface_is_explained() {
    if !root_or_skip("no_usable_interface_is_explained") {
        return;
    }
    let lab = Lab::isolated();
    fails_with(
        &lab,
        &["mdns", "discover", "_http._tcp", "--timeout", "0.5"],
        1,
        "no usable network interface for mDNS: lo (loopback)",
        "name one explicitly with `--interface IF`",
    );
}

#[test]
fn port_5353_held_without_sharing_is_reported() {
    if !root_or_skip("port_5353_held_without_sharing_is_reported")
        || !have_or_skip("port_5353_held", "python3")
    {
        return;
    }
    let lab = Lab::pair();
    let holder = lab.spawn_in(
        lab.a(),
        "python3",
        &[
            "-c",
            "import socket,sys,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',5353))\n\
             print('bound',flush=True)\n\
             time.sleep(60)",
        ],
        &[],
    );
    assert!(
        holder
            .wait_stdout(Duration::from_secs(10), |l| l == "bound")
            .is_some(),
        "{}",
        holder.stderr_text()
    );
    fails_with(
        &lab,
        &["mdns", "discover", "_http._tcp", "--timeout", "0.5"],
        1,
        "UDP port 5353 (IPv4) is held by another mDNS stack that does not share it",
        "ss -ulpn 'sport = :5353'",
    );
}
