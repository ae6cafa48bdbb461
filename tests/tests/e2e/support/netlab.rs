//! Network labs: [`NetLab`], two hosts joined by one veth pair, and [`SwitchLab`], any number of
//! hosts on one bridge (a "switch" namespace of its own), for three-host scenarios (dns server,
//! announcer and client; CA, standby and member). Each host is a network namespace made for the test (names
//! carry the test process's pid and a counter so parallel tests never collide), joined by a veth
//! pair on 10.77.<n>.0/24, with its own UTS host name (every `koi` runs under `unshare --uts`) and
//! its own [`KoiEnv`] (KOI_HOME, plugins, and a private trust-store root). All traffic a test
//! causes stays inside these namespaces. Dropping the lab (also when a test fails) kills what runs
//! in the namespaces and deletes them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::KoiEnv;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One lab host.
pub struct LabHost {
    /// Namespace name.
    pub ns: String,
    /// IPv4 address on the lab link.
    pub ip: String,
    /// UTS host name.
    pub hostname: String,
    /// Its koi installation; every command runs inside the namespace.
    pub env: KoiEnv,
    /// Root of its private trust stores (KOI_TRUST_ROOT).
    pub trust_root: PathBuf,
}

impl LabHost {
    /// A command (not koi) run inside this host's namespace and host name.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "unshare", "--uts", "sh", "-c"])
            .arg("hostname \"$0\" && exec \"$@\"")
            .arg(&self.hostname)
            .arg(program)
            .args(args);
        c
    }
}

/// Two hosts, `a` (10.77.n.1) and `b` (10.77.n.2).
pub struct NetLab {
    /// The CA-side host.
    pub a: LabHost,
    /// The member-side host.
    pub b: LabHost,
}

fn host(ns: String, ip: String, hostname: String) -> LabHost {
    let mut env = KoiEnv::new();
    let trust_root = env.dir.path().join("trust-root");
    std::fs::create_dir_all(&trust_root).expect("trust root");
    env.prefix = [
        "ip",
        "netns",
        "exec",
        &ns,
        "unshare",
        "--uts",
        "sh",
        "-c",
        "hostname \"$0\" && exec \"$@\"",
        &hostname,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    env.extra_env = vec![
        ("KOI_TRUST_ROOT".into(), trust_root.display().to_string()),
        ("KOI_TRUST_FAMILY".into(), "debian".into()),
        (
            "KOI_TRUST_HOME".into(),
            env.dir.path().join("user-home").display().to_string(),
        ),
    ];
    LabHost {
        ns,
        ip,
        hostname,
        env,
        trust_root,
    }
}

impl NetLab {
    /// Creates the namespaces and the link. Needs root.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = 100 + (pid as usize * 7 + n) % 150;
        let ns_a = format!("koi-{tag}-{pid}-{n}-a");
        let ns_b = format!("koi-{tag}-{pid}-{n}-b");
        let lab = NetLab {
            a: host(
                ns_a.clone(),
                format!("10.77.{subnet}.1"),
                format!("{tag}-a"),
            ),
            b: host(
                ns_b.clone(),
                format!("10.77.{subnet}.2"),
                format!("{tag}-b"),
            ),
        };
        run_ok(&["ip", "netns", "add", &ns_a]);
        run_ok(&["ip", "netns", "add", &ns_b]);
        run_ok(&[
            "ip", "-n", &ns_a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
            "netns", &ns_b,
        ]);
        for h in [&lab.a, &lab.b] {
            run_ok(&[
                "ip",
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                "veth0",
            ]);
            run_ok(&["ip", "-n", &h.ns, "link", "set", "veth0", "up"]);
            run_ok(&["ip", "-n", &h.ns, "link", "set", "lo", "up"]);
        }
        lab
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for h in [&self.a, &self.b] {
            delete_namespace(&h.ns);
        }
    }
}

/// N hosts (10.78.n.1, .2, …) on one bridge that lives in a namespace of its own. Multicast
/// (mDNS) crosses the bridge; nothing leaves the lab. Dropping it kills what runs in every
/// namespace and deletes them all.
pub struct SwitchLab {
    /// The hosts, in the order asked for; host i has address 10.78.n.(i+1) and host name
    /// `<tag>-<letter>` (a, b, c, …).
    pub hosts: Vec<LabHost>,
    switch_ns: String,
}

impl SwitchLab {
    /// Creates `count` (1..=20) hosts on one bridge. Needs root.
    pub fn new(tag: &str, count: usize) -> Self {
        assert!((1..=20).contains(&count), "SwitchLab takes 1 to 20 hosts");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = 100 + (pid as usize * 7 + n) % 150;
        let switch_ns = format!("koi-{tag}-{pid}-{n}-sw");
        let mut lab = SwitchLab {
            hosts: Vec::new(),
            switch_ns: switch_ns.clone(),
        };
        run_ok(&["ip", "netns", "add", &switch_ns]);
        run_ok(&[
            "ip", "-n", &switch_ns, "link", "add", "br0", "type", "bridge",
        ]);
        // Snooping would hold back multicast to ports that never sent an IGMP report.
        run_ok(&[
            "ip",
            "-n",
            &switch_ns,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        run_ok(&["ip", "-n", &switch_ns, "link", "set", "br0", "up"]);
        for i in 0..count {
            let letter = (b'a' + i as u8) as char;
            let ns = format!("koi-{tag}-{pid}-{n}-{letter}");
            let h = host(
                ns.clone(),
                format!("10.78.{subnet}.{}", i + 1),
                format!("{tag}-{letter}"),
            );
            // Pushed before it is configured, so Drop cleans it up if a step fails.
            lab.hosts.push(h);
            run_ok(&["ip", "netns", "add", &ns]);
            let port = format!("p{i}");
            run_ok(&[
                "ip", "-n", &switch_ns, "link", "add", &port, "type", "veth", "peer", "name",
                "veth0", "netns", &ns,
            ]);
            run_ok(&[
                "ip", "-n", &switch_ns, "link", "set", &port, "master", "br0",
            ]);
            run_ok(&["ip", "-n", &switch_ns, "link", "set", &port, "up"]);
            let ip = format!("10.78.{subnet}.{}/24", i + 1);
            run_ok(&["ip", "-n", &ns, "addr", "add", &ip, "dev", "veth0"]);
            run_ok(&["ip", "-n", &ns, "link", "set", "veth0", "up"]);
            run_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &LabHost {
        &self.hosts[i]
    }
}

fn delete_namespace(ns: &str) {
    // Anything still running in the namespace dies with it.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

impl Drop for SwitchLab {
    fn drop(&mut self) {
        for h in &self.hosts {
            delete_namespace(&h.ns);
        }
        delete_namespace(&self.switch_ns);
    }
}
