//! Remote data never reaches the terminal raw (finding 4 of issue 9, host side): the fixture
//! `koi-escapes` puts ESC[2J, BEL, CR, the 8-bit CSI U+009B and the bidi override U+202E into
//! every kind of string a plugin can make the host print — result keys, values and table cells,
//! `host/show` text, tables and captions, progress messages, streamed items, prompt and choice
//! questions and defaults, an error message and hint, and stderr log lines (raw and structured).
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
    stream_env.env("KOI_LOG", "debug");
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
