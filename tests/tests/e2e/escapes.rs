//! Remote data never reaches the terminal raw (finding 4 of issue 9, host side): the fixture
//! `koi-escapes` puts ESC[2J, BEL, CR, the 8-bit CSI U+009B and the bidi override U+202E into
//! every kind of string a plugin can make the host print — result keys, values and table cells,
//! `host/show` text, tables and captions, progress messages, streamed items, prompt and choice
//! questions and defaults, an error message and hint, stderr log lines (raw and structured) and
//! protocol traces (`KOI_TRACE_PROTOCOL=1`).
//! The host's output holds no raw control character (only its own line breaks) and shows visible
//! escapes instead; `--json` stays exact JSON for the same values.

use crate::support::{KoiEnv, Run};

/// What the fixture sends, as the host must show it.
const SHOWN: &str = "A\\e[2JB\\x07C\\rD\\u{9b}E\\u{202e}F";
/// What the fixture sends.
const NASTY: &str = "A\u{1b}[2JB\u{7}C\rD\u{9b}E\u{202e}F";

fn env() -> KoiEnv {
    KoiEnv::new().with_fixture("escapes")
}

/// Control characters (other than line breaks) and bidi controls found in `text`.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn assert_clean(run: &Run, what: &str) {
    for (stream, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        let found = raw_controls(text);
        assert!(
            found.is_empty(),
            "{what}: raw control characters {found:?} on {stream}:\n{text:?}"
        );
    }
}

#[test]
fn plugin_strings_in_results_shows_items_prompts_errors_and_logs_are_escaped() {
    let env = env();
    let render = env.run(&["--no-daemon", "escapes", "render"]);
    render.expect_code(0);
    assert_clean(&render, "render");
    for expected in [
        format!("Name:{}", " ".repeat(30)),
        format!("{SHOWN}  1"),          // a table cell, aligned
        format!("first line\n{SHOWN}"), // a multi-line value keeps its line break only
        format!("{SHOWN}, ok"),
        format!("Key{SHOWN}:"),
    ] {
        assert!(
            render.stdout.contains(&expected),
            "render: no {expected:?} in:\n{}",
            render.stdout
        );
    }

    let mut stream_env = env.command(&["--no-daemon", "escapes", "stream"]);
    stream_env
        .env("KOI_LOG", "debug")
        .env("KOI_TRACE_PROTOCOL", "1");
    let stream = Run::from(stream_env.output().expect("run koi"));
    stream.expect_code(0);
    assert_clean(&stream, "stream");
    for expected in [
        format!("shown\n{SHOWN}"),   // host/show text
        format!("COL{SHOWN}"),       // host/show table title
        format!("instance={SHOWN}"), // streamed item
        format!("Done: {SHOWN}"),    // result
    ] {
        assert!(
            stream.stdout.contains(&expected),
            "stream: no {expected:?} in:\n{}",
            stream.stdout
        );
    }
    for expected in [
        format!("raw log {SHOWN}"),    // an unstructured stderr line
        format!("structured {SHOWN}"), // a structured one (JSON-decoded first)
        format!("{SHOWN} current=1"),  // the progress message (logged: stderr is no terminal)
    ] {
        assert!(
            stream.stderr.contains(&expected),
            "stream: no {expected:?} in:\n{}",
            stream.stderr
        );
    }

    let ask = env.run_with_input(&["--no-daemon", "escapes", "ask"], "typed\n2\n");
    ask.expect_code(0);
    assert_clean(&ask, "ask");
    assert!(
        ask.stderr.contains(&format!("{SHOWN} [{SHOWN}]: ")),
        "prompt:\n{}",
        ask.stderr
    );
    assert!(
        ask.stderr.contains(&format!("  1) {SHOWN}")),
        "choice:\n{}",
        ask.stderr
    );

    let fail = env.run(&["--no-daemon", "escapes", "fail"]);
    assert_clean(&fail, "fail");
    assert!(
        fail.stderr
            .contains(&format!("error: escapes fail: {SHOWN}.")),
        "{}",
        fail.stderr
    );
    assert!(
        fail.stderr.contains(&format!("hint {SHOWN}")),
        "{}",
        fail.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn json_output_is_exact_json_with_no_raw_control_character() {
    let env = env();
    let render = env.run(&["--no-daemon", "--json", "escapes", "render"]);
    render.expect_code(0);
    assert_clean(&render, "render --json");
    let value = render.json();
    assert_eq!(value["name"], NASTY);
    assert_eq!(value["multi"], format!("first line\n{NASTY}"));
    assert_eq!(value["services"][0]["instance"], NASTY);
    assert_eq!(value[format!("key{NASTY}")], "value");

    let stream = env.run(&["--no-daemon", "--json", "escapes", "stream"]);
    stream.expect_code(0);
    assert_clean(&stream, "stream --json");
    let lines: Vec<serde_json::Value> = stream
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"instance": NASTY}),
            serde_json::json!({"done": NASTY})
        ]
    );
}

/// A hand-made mDNS announcement (PTR, SRV, TXT, A) of an `_http._tcp` instance whose name and
/// TXT value hold ESC[2J, BEL, CR and U+009B, multicast from port 5353 on the lab link every
/// 300 ms for `seconds` seconds. Plain Python, no mDNS library: the bytes are exactly these.
const RAW_MDNS_SENDER: &str = r#"
import socket, struct, sys, time
source_ip, seconds = sys.argv[1], float(sys.argv[2])
def name(*labels):
    out = b""
    for label in labels:
        data = label.encode("utf-8")
        out += bytes([len(data)]) + data
    return out + b"\x00"
instance = "Evil\x1b[2J\x07Printer\r\u009b31m"
service = name("_http", "_tcp", "local")
full = name(instance, "_http", "_tcp", "local")
target = name("evil-host", "local")
def record(owner, rtype, rclass, rdata):
    return owner + struct.pack("!HHIH", rtype, rclass, 120, len(rdata)) + rdata
txt = "note=\x1b]0;pwned\x07".encode("utf-8")
answers = [
    record(service, 12, 1, full),
    record(full, 33, 0x8001, struct.pack("!HHH", 0, 0, 8080) + target),
    record(full, 16, 0x8001, bytes([len(txt)]) + txt),
    record(target, 1, 0x8001, socket.inet_aton(source_ip)),
]
packet = struct.pack("!HHHHHH", 0, 0x8400, 0, len(answers), 0, 0) + b"".join(answers)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source_ip))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
end = time.time() + seconds
while time.time() < end:
    s.sendto(packet, ("224.0.0.251", 5353))
    time.sleep(0.3)
"#;

#[test]
fn an_mdns_instance_name_with_escape_sequences_is_shown_escaped_by_mdns_discover() {
    let test = "an_mdns_instance_name_with_escape_sequences_is_shown_escaped_by_mdns_discover";
    if !crate::support::root_or_skip(test) {
        return;
    }
    let lab = crate::support::netlab::NetLab::new("esc");
    lab.a
        .env
        .install(&crate::support::certmesh::mdns_bin(), "mdns");
    let mut sender = lab
        .b
        .command("python3", &["-c", RAW_MDNS_SENDER, &lab.b.ip, "12"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the raw mDNS sender");

    let human = lab
        .a
        .env
        .run(&["mdns", "discover", "_http._tcp", "--timeout", "3"]);
    let json = lab
        .a
        .env
        .run(&["--json", "mdns", "discover", "_http._tcp", "--timeout", "3"]);
    let _ = sender.kill();
    let _ = sender.wait();

    human.expect_code(0);
    assert_clean(&human, "mdns discover");
    assert!(
        human.stdout.contains("Evil\\e[2J\\x07Printer\\r\\u{9b}31m"),
        "the hostile instance is not shown escaped:\n{}",
        human.stdout
    );
    json.expect_code(0);
    assert_clean(&json, "mdns discover --json");
    let services = json.json()["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        services
            .iter()
            .any(|s| s["instance"] == "Evil\u{1b}[2J\u{7}Printer\r\u{9b}31m"),
        "--json lost the exact instance name: {}",
        json.stdout
    );
}
