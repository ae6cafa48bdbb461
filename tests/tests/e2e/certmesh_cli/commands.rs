//! Every `koi …` command that the code tells a user to run must exist. This scans the string
//! literals of every `.rs` file under `host/`, `plugins/` and `sdk/` (not their `tests/`),
//! extracts each backticked `` `koi …` `` and runs it with `--help` appended through the real
//! `koi` (with koi-certmesh, koi-mdns, koi-health, koi-dns, koi-proxy and the SDK example installed). clap reads the words in
//! order, so an unknown command or flag, or a value a flag refuses, fails before `--help` is
//! reached and exits 2. Missing required arguments are not checked: a mention may name just the
//! verb (`koi certmesh issue`).
//!
//! Conventions for placeholders inside a backticked command:
//! - UPPER-CASE words (`FP`, `NAME`, `HOST:PORT`, `HOST.local`) stand for a value and parse as
//!   one;
//! - a `{…}` format argument also stands for one value (it is replaced by `X`), except in the
//!   plugin position (`koi {moniker} …`), which makes the mention a template that is skipped;
//! - `…` or `...` as a word means "more arguments" and is dropped; double quotes group words.

use std::path::{Path, PathBuf};

use crate::support::certmesh::{certmesh_bin, mdns_bin};
use crate::support::netlab::NetLab;
use crate::support::{example, root_or_skip};

/// The string literals of one Rust source file, with escapes and line continuations applied.
pub(crate) fn string_literals(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            // A char literal ('x', '\n', '"') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && (i == 0 || !ident(b[i - 1])) && {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let mut j = start;
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            b.get(j) == Some(&'"')
        } {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let mut j = start;
            while b[j] == '#' {
                j += 1;
            }
            let hashes = j - start;
            let mut text = String::new();
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    break;
                }
                text.push(b[j]);
                j += 1;
            }
            out.push(text);
            i = j + 1 + hashes;
        } else if c == '"' {
            let mut text = String::new();
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                if b[j] == '\\' {
                    match b.get(j + 1) {
                        Some('\n') => {
                            j += 2;
                            while j < b.len() && b[j].is_whitespace() {
                                j += 1;
                            }
                            continue;
                        }
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some(other) => text.push(*other),
                        None => {}
                    }
                    j += 2;
                } else {
                    text.push(b[j]);
                    j += 1;
                }
            }
            out.push(text);
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The backticked `koi …` commands in a piece of text.
pub(crate) fn koi_commands(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| *s == "koi" || s.starts_with("koi "))
        .map(str::to_owned)
        .collect()
}

/// A mention's words after `koi`, placeholders applied; `None` for a template.
pub(crate) fn words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in command.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = Vec::new();
    for (index, word) in words.into_iter().enumerate().skip(1) {
        if word == "…" || word == "..." {
            continue;
        }
        if word.contains('{') {
            if index == 1 {
                return None;
            }
            let mut replaced = String::new();
            let mut depth = 0;
            for c in word.chars() {
                match c {
                    '{' => {
                        if depth == 0 {
                            replaced.push('X');
                        }
                        depth += 1;
                    }
                    '}' => depth -= 1,
                    c if depth == 0 => replaced.push(c),
                    _ => {}
                }
            }
            out.push(replaced);
        } else {
            out.push(word);
        }
    }
    Some(out)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "tests" && name != "target" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every backticked `koi …` command in the sources, with the files it appears in.
fn mentions() -> Vec<(String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let mut files = Vec::new();
    for dir in ["host", "plugins", "sdk"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for file in files {
        let src = std::fs::read_to_string(&file).expect("read source");
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for literal in string_literals(&src) {
            for command in koi_commands(&literal) {
                match found.iter_mut().find(|(c, _)| *c == command) {
                    Some((_, where_)) if !where_.contains(&rel) => where_.push(rel.clone()),
                    Some(_) => {}
                    None => found.push((command, vec![rel.clone()])),
                }
            }
        }
    }
    found
}

#[test]
fn the_extractor_reads_literals_continuations_and_placeholders() {
    let src = r##"
        // `koi not-in-a-comment`
        let a = "Run `koi certmesh \
                 unlock` now"; let c = '"'; let l: &'static str = r#"`koi mdns discover`"#;
        let f = format!("`koi mdns resolve {}` or `koi {moniker} {}` or `koi certmesh log …`", x);
    "##;
    let commands: Vec<String> = string_literals(src)
        .iter()
        .flat_map(|l| koi_commands(l))
        .collect();
    assert_eq!(
        commands,
        [
            "koi certmesh unlock",
            "koi mdns discover",
            "koi mdns resolve {}",
            "koi {moniker} {}",
            "koi certmesh log …"
        ]
    );
    assert_eq!(
        words("koi mdns resolve {}").expect("words"),
        ["mdns", "resolve", "X"]
    );
    assert_eq!(words("koi {moniker} {}"), None);
    assert_eq!(
        words("koi certmesh log …").expect("words"),
        ["certmesh", "log"]
    );
    assert_eq!(
        words("koi mdns announce \"Living room\" _http._tcp 80").expect("words"),
        ["mdns", "announce", "Living room", "_http._tcp", "80"]
    );
}

#[test]
fn every_backticked_koi_command_in_the_sources_parses() {
    if !root_or_skip("every_backticked_koi_command_in_the_sources_parses") {
        return;
    }
    let found = mentions();
    // The scan must see the certmesh advice, or it proves nothing.
    assert!(
        found.len() > 30
            && found.iter().any(|(c, _)| c == "koi certmesh leave")
            && found
                .iter()
                .any(|(c, _)| c.starts_with("koi mdns announce")),
        "too few mentions found: {found:?}"
    );
    // A lab host: koi-mdns is inspected for its manifest inside a namespace of its own.
    let lab = NetLab::new("cmds");
    let env = &lab.a.env;
    env.install(&certmesh_bin(), "certmesh");
    env.install(&mdns_bin(), "mdns");
    env.install(&example("koi-hello"), "hello");
    env.install(&crate::support::bin_dir().join("koi-health"), "health");
    env.install(&crate::support::dns_bin(), "dns");
    env.install(&crate::support::proxy::proxy_bin(), "proxy");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (command, files) in &found {
        let Some(mut args) = words(command) else {
            continue;
        };
        args.push("--help".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = env.run(&argv);
        checked += 1;
        if run.code != Some(0) {
            failures.push(format!(
                "`{command}` (in {}): {}",
                files.join(", "),
                run.stderr.lines().next().unwrap_or("").trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} suggested command(s) do not parse against the current CLI:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 30, "only {checked} commands checked");
}
