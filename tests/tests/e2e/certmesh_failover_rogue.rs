//! A rogue MEMBER claims a higher term (issue 11 item 7, the forged-term hole): in a three-host
//! lab, A is the primary (unlocked), M a joined member that turns rogue and C an honest member.
//! M runs a fake CA API on port 5999 that answers `/v1/certmesh/health` with `term: 99` over TLS
//! with ITS OWN mesh leaf (which chains to the root, so the pinned-root check alone passes), and
//! advertises `koi certmesh CA on M` with `role=primary term=99` and the mesh fingerprint. M is
//! not a standby in anyone's roster, so nobody believes it: A stays primary and unlocked (not
//! fenced), and C keeps A as its CA. A second advertisement from M claims to come from a host
//! that is not in the rosters either ("fo-ghost"), also refused.

use crate::support::certmesh::join_host;
use std::process::Stdio;
use std::time::Duration;

use crate::support::certmesh::{ca_on, certmesh_status as status, fresh_code, install_mesh};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::root_or_skip;

/// The fake CA: a TLS server presenting M's own leaf + root, answering every GET with a health
/// document that claims `term` 99.
const FAKE_CA: &str = r#"
import http.server, json, ssl, sys
fullchain, key, fp, host = sys.argv[1:5]
body = json.dumps({"status": "ok", "api_version": 1, "locked": False, "enrollment_open": False,
    "mesh": {"ca_fingerprint": fp, "profile": "just-me", "zone": "lan", "primary": host,
             "roster_version": 1, "term": 99}}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        sys.stderr.write("fake CA answered\n")
        sys.stderr.flush()
srv = http.server.HTTPServer(("0.0.0.0", 5999), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(fullchain, key)
ctx.set_alpn_protocols(["http/1.1"])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

use crate::support::KillOnDrop;

use crate::support::wait_for;

fn join(host: &LabHost, ca: &LabHost, fingerprint: &str, code: &str) {
    join_host(host, &ca.ip, fingerprint, code).expect_code(0);
}

#[test]
fn a_rogue_member_answering_with_its_own_leaf_cannot_claim_a_higher_term() {
    if !root_or_skip("a_rogue_member_answering_with_its_own_leaf_cannot_claim_a_higher_term") {
        return;
    }
    let lab = SwitchLab::new("fr", 3);
    install_mesh(&lab);
    let (a, m, c) = (lab.host(0), lab.host(1), lab.host(2));
    let (a_daemon, ca) = ca_on(a, &[("KOI_LOG", "debug")], &["--no-trust", "--json"]);
    let (uri, fingerprint) = (ca.uri, ca.fingerprint);
    let mut last_step = i64::MIN;
    join(m, a, &fingerprint, &fresh_code(&uri, &mut last_step));
    join(c, a, &fingerprint, &fresh_code(&uri, &mut last_step));
    let _m_daemon = m.env.start_daemon(&[]);
    let c_daemon = c
        .env
        .start_daemon(&[("KOI_TEST_HEARTBEAT_SECS", "2"), ("KOI_LOG", "debug")]);
    let a_api = format!("{}:5641", a.ip);
    // C has beaten against A at least once (it holds A's roster, and term 1).
    wait_for(
        "C's heartbeat reads term 1",
        Duration::from_secs(30),
        || {
            let s = status(c);
            if s["details"]["heartbeat"]["ok"] == true && s["details"]["heartbeat"]["term"] == 1 {
                Ok(())
            } else {
                Err(s)
            }
        },
    );

    // M turns rogue: its own leaf (under the root) behind a fake health answer with term 99.
    let certs = m.env.home.join("certs").join(&m.hostname);
    let mut fake = m
        .command(
            "python3",
            &[
                "-c",
                FAKE_CA,
                &certs.join("fullchain.pem").display().to_string(),
                &certs.join("key.pem").display().to_string(),
                &fingerprint,
                &m.hostname,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fake CA");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("fake CA output");
    let _fake = KillOnDrop(fake);
    assert_eq!(ready.trim(), "ready");
    // Its TLS answer really chains to the root and claims term 99 (what the old check believed).
    let probe = c.command(
        "curl",
        &[
            "-sk",
            "--max-time",
            "5",
            &format!("https://{}:5999/v1/certmesh/health", m.ip),
        ],
    );
    let out = { probe }.output().expect("curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"term\": 99"),
        "{out:?}"
    );
    for name in [
        format!("koi certmesh CA on {}", m.hostname),
        "koi certmesh CA on fo-ghost".to_owned(),
    ] {
        m.env
            .run(&[
                "mdns",
                "announce",
                &name,
                "_certmesh._tcp",
                "5999",
                "--txt",
                &format!("fp={fingerprint}"),
                "--txt",
                "role=primary",
                "--txt",
                "term=99",
            ])
            .expect_code(0);
    }

    // A judges the claim (before the fix: it believed it and stopped signing).
    wait_for("A judges the rogue claim", Duration::from_secs(40), || {
        let log = a_daemon.log_text();
        if log.contains("did not confirm it") || log.contains("stops signing") {
            Ok(())
        } else {
            Err(serde_json::json!("no word of the term-99 claim in A's log"))
        }
    });
    // C judges it too (before the fix: it moved its renewal and heartbeat to M).
    wait_for("C judges the rogue claim", Duration::from_secs(40), || {
        let log = c_daemon.log_text();
        if (log.contains("did not confirm it") && log.contains(&m.hostname))
            || log.contains("following the primary")
        {
            Ok(())
        } else {
            Err(serde_json::json!("no word of the term-99 claim in C's log"))
        }
    });
    let a_log = a_daemon.log_text();
    assert!(!a_log.contains("stops signing"), "A was fenced: {a_log}");
    assert!(
        a_log.contains("is not a standby CA in this machine's roster"),
        "A's reason: {a_log}"
    );
    let a_now = status(a);
    assert_eq!(a_now["details"]["role"], "primary", "{a_now}");
    assert_eq!(a_now["details"]["locked"], false, "{a_now}");
    assert_eq!(a_now["details"]["term"], 1, "{a_now}");
    let c_now = status(c);
    assert_eq!(
        c_now["details"]["ca_endpoint"],
        a_api.as_str(),
        "C moved: {c_now}"
    );
    // A still signs: C renews against it.
    c.env
        .run(&["certmesh", "renew", "--now", "--json"])
        .expect_code(0);
    assert!(
        !c_daemon.log_text().contains("following the primary"),
        "C followed the rogue"
    );
}
