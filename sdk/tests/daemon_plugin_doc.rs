//! docs/plugins.md shows the example daemon plugin `sdk/examples/koi-tally.rs` whole ("A complete
//! daemon plugin"). The example is what CI builds and tests; this test fails when the copy in the
//! docs differs from it, so the page never shows code that no longer compiles.

const DOC: &str = include_str!("../../docs/plugins.md");
const EXAMPLE: &str = include_str!("../examples/koi-tally.rs");
const BEGIN: &str = "<!-- sdk/examples/koi-tally.rs (begin) -->\n```rust\n";
const END: &str = "```\n<!-- sdk/examples/koi-tally.rs (end) -->";

#[test]
fn the_daemon_plugin_in_the_docs_is_the_example_verbatim() {
    let start = DOC
        .find(BEGIN)
        .expect("docs/plugins.md has the koi-tally begin marker")
        + BEGIN.len();
    let len = DOC[start..]
        .find(END)
        .expect("docs/plugins.md has the koi-tally end marker");
    let shown = &DOC[start..start + len];
    if shown != EXAMPLE {
        let line = shown
            .lines()
            .zip(EXAMPLE.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "at the end".to_owned(), |n| format!("at line {}", n + 1));
        panic!(
            "docs/plugins.md's copy of sdk/examples/koi-tally.rs differs {line}: paste the example into the docs again"
        );
    }
}
