//! What koi-dns refuses and how it fails: clients from a foreign subnet (local and forwarded
//! names), a flooding client (while an exempt and another client are answered), the `local`
//! zone, port 53 without the privilege; and forwarding through a dnsmasq upstream in its own
//! lab host, with SERVFAIL within the timeout once it is gone.

use super::lab::DnsLab;
use super::{SOON, addresses, dig, status};
use crate::support::{KoiEnv, dns_bin, root_or_skip, wait_until};
use std::time::{Duration, Instant};

fn sh(host: &crate::support::netlab::LabHost, script: &str) -> String {
    let out = host.command("sh", &["-c", script]).output().expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn foreign_subnets_are_refused_and_a_flood_is_refused_while_others_are_answered() {
    if !root_or_skip("foreign_subnets_are_refused_and_a_flood_is_refused_while_others_are_answered")
    {
        return;
    }
    let dl = DnsLab::new(&[]);
    let (a, b, c) = (dl.lab.host(0), dl.lab.host(1), dl.lab.host(2));
    let at = dl.at_a();
    dl.serve(&[
        "--upstream",
        &b.ip,
        "--rate-limit",
        "5",
        "--burst",
        "5",
        "--exempt",
        &b.ip,
    ]);
    a.env.run(&["dns", "add", "nas", "10.1.2.3"]).expect_code(0);
    // C also has 10.99.0.3, in a subnet A does not serve; A routes back to it.
    sh(c, "ip addr add 10.99.0.3/24 dev veth0");
    sh(
        a,
        &format!("ip route add 10.99.0.0/24 via {} dev veth0", c.ip),
    );
    for name in ["nas.lan", "example.com"] {
        let out = dig(c, &["-b", "10.99.0.3", &at, name]);
        assert_eq!(
            status(&out),
            "REFUSED",
            "{name} from a foreign subnet: {out}"
        );
    }
    let flood = (0..60).map(|_| "nas.lan").collect::<Vec<_>>().join("\n");
    let names_path = c.env.dir.path().join("flood-names");
    std::fs::write(&names_path, &flood).expect("names");
    let names = names_path.to_str().expect("utf-8 path");
    let out = dig(c, &[&at, "-f", names]);
    let refused = out.matches("status: REFUSED").count();
    let answered = out.matches("status: NOERROR").count();
    assert!(
        refused >= 20 && answered >= 5,
        "flood: {answered} answered, {refused} refused"
    );
    let out = dig(b, &[&at, "-f", names]);
    assert_eq!(
        out.matches("status: NOERROR").count(),
        60,
        "the exempt client is always answered"
    );
    let out = dig(a, &[&at, "nas.lan"]);
    assert_eq!(status(&out), "NOERROR", "another client is answered: {out}");
    let st = a.env.run(&["dns", "status", "--json"]);
    st.expect_code(0);
    assert!(st.stdout.contains("\"rate_limited\""), "{}", st.stdout);
}

#[test]
fn forwarding_goes_through_the_upstream_and_servfails_in_time_without_it() {
    if !root_or_skip("forwarding_goes_through_the_upstream_and_servfails_in_time_without_it") {
        return;
    }
    let dl = DnsLab::new(&[]);
    let (b, c) = (dl.lab.host(1), dl.lab.host(2));
    let at = dl.at_a();
    let mut upstream = b
        .command(
            "dnsmasq",
            &[
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={}", b.ip),
                "--address=/example.test/10.44.0.7",
                "--pid-file=",
            ],
        )
        .spawn()
        .expect("dnsmasq");
    dl.serve(&["--upstream", &b.ip, "--upstream-timeout-ms", "800"]);
    wait_until("www.example.test answers through dnsmasq", SOON, || {
        addresses(&dig(c, &[&at, "www.example.test"])) == vec!["10.44.0.7"]
    });
    let _ = upstream.kill();
    let _ = upstream.wait();
    let t0 = Instant::now();
    let out = dig(c, &["+time=5", &at, "www.example.test"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "SERVFAIL came before dig gave up"
    );
}

#[test]
fn the_local_zone_is_refused_and_port_53_without_privilege_names_the_fix() {
    if !root_or_skip("the_local_zone_is_refused_and_port_53_without_privilege_names_the_fix") {
        return;
    }
    let env = KoiEnv::new();
    env.install(&dns_bin(), "dns");
    let run = env.run(&["dns", "serve", "--zone", "local", "--listen", "127.0.0.1:0"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("`local` is refused") && run.stderr.contains("home.arpa"),
        "{}",
        run.stderr
    );

    let lab = crate::support::netlab::SwitchLab::new("dns53", 1);
    let a = lab.host(0);
    a.env.install(&dns_bin(), "dns");
    // Root without CAP_NET_BIND_SERVICE in its bounding set: what an unprivileged user meets.
    let cmd = a
        .env
        .command(&["dns", "serve", "--listen", &format!("{}:53", a.ip)]);
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let mut wrapped = std::process::Command::new("setpriv");
    wrapped
        .args(["--bounding-set", "-net_bind_service", "--inh-caps", "-all"])
        .arg(program)
        .args(args);
    wrapped.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let out = wrapped.output().expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bound 53 without the capability");
    for fix in [
        "setcap cap_net_bind_service=+ep",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "dist/koi.service",
        ":5300",
    ] {
        assert!(stderr.contains(fix), "the fix `{fix}` is missing: {stderr}");
    }
}
