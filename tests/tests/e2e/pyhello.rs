//! The Python plugin `tests/fixtures/koi-pyhello`, written from `docs/protocol.md` alone, works
//! with the host without further setup.

use crate::support::{KoiEnv, fixture};
use serde_json::json;

fn env() -> KoiEnv {
    let env = KoiEnv::new();
    env.install(&fixture("koi-pyhello"), "pyhello");
    env
}

#[test]
fn verbs_help_list_and_status_work() {
    let env = env();
    let add = env.run(&["pyhello", "add", "2", "3", "--json"]);
    add.expect_code(0);
    assert_eq!(add.json(), json!({"sum": 5}));
    env.run(&["pyhello", "add", "2", "x"]).expect_code(2);
    let echo = env.run(&["pyhello", "echo", "hi", "--times", "2", "--json"]);
    echo.expect_code(0);
    assert!(
        echo.json()["text"]
            .as_str()
            .is_some_and(|t| t.contains("hi")),
        "{}",
        echo.stdout
    );
    env.run(&["pyhello", "echo", ""]).expect_code(1);
    let greet = env.run_with_input(&["pyhello", "greet", "--json"], "Ada\n");
    greet.expect_code(0);
    assert_eq!(greet.json(), json!({"greeting": "Hello, Ada!"}));
    let count = env.run(&["pyhello", "count", "2", "--json"]);
    count.expect_code(0);
    assert_eq!(count.stdout.lines().count(), 3, "{}", count.stdout);
    let help = env.run(&["help", "pyhello"]);
    help.expect_code(0);
    assert!(
        help.stdout.contains("add") && help.stdout.contains("echo"),
        "{}",
        help.stdout
    );
    let list = env.run(&["plugins", "list", "--json"]);
    list.expect_code(0);
    assert_eq!(list.json()["plugins"][0]["state"], "ok");
    let status = env.run(&["status", "--json"]);
    status.expect_code(0);
    assert_eq!(status.json()["plugins"][0]["name"], "pyhello");
}
