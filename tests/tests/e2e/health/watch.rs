//! `koi health watch` at a real terminal (a private tmux server): the live view redraws in place —
//! `capture-pane` with its history shows one screen, not a scroll — it follows a resize, Ctrl-C
//! exits 130 with the terminal restored (main screen back, cursor shown); `--json` streams the
//! transitions as NDJSON.

use super::{TestServer, add, daemon_env, wait_service};
use crate::support::{KoiEnv, wait_until};
use std::process::Command;
use std::time::Duration;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's text with wrapped lines joined, history included.
    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "w"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn shell_line(env: &KoiEnv, args: &str, status_file: &str) -> String {
    format!(
        "env -i PATH=/usr/bin:/bin TERM=xterm-256color HOME={} KOI_HOME={} KOI_PLUGIN_PATH={} {} {args}; echo $? > {status_file}; echo EXITED; sleep 60",
        env.dir.path().display(),
        env.home.display(),
        env.plugins.display(),
        env.koi.display()
    )
}

#[test]
fn watch_redraws_one_screen_follows_a_resize_and_ctrl_c_exits_130_restored() {
    let server = TestServer::start(200);
    let (env, _daemon) = daemon_env();
    let url = server.url();
    add(
        &env,
        &[
            "web",
            "--http",
            &url,
            "--interval",
            "1s",
            "--fail-after",
            "1",
            "--recover-after",
            "1",
        ],
    );
    wait_service(&env, "web", "up");
    let status_file = env.dir.path().join("watch.status").display().to_string();
    let tmux = Tmux {
        socket: format!("koi-health-{}", std::process::id()),
    };
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "120",
        "-y",
        "30",
        &shell_line(&env, "health watch", &status_file),
    ]);
    wait_until("the live view", Duration::from_secs(20), || {
        tmux.capture().contains("koi health —")
    });
    // Transitions redraw the same screen.
    for code in [502, 200, 502, 200] {
        server.set(code);
        wait_service(&env, "web", if code == 200 { "up" } else { "down" });
    }
    wait_until(
        "the view shows the last transitions",
        Duration::from_secs(20),
        || tmux.capture().matches("| web | ").count() >= 4,
    );
    let screen = tmux.capture();
    assert_eq!(
        screen.matches("koi health —").count(),
        1,
        "not one screen:\n{screen}"
    );
    assert!(screen.lines().any(|l| l.chars().count() > 60), "{screen}");
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{alternate_on}"])
            .trim(),
        "1"
    );

    // Narrower: every line is cut to the new width.
    tmux.run(&["resize-window", "-t", "w", "-x", "60", "-y", "20"]);
    wait_until(
        "the view follows the resize",
        Duration::from_secs(20),
        || {
            let s = tmux.capture();
            s.contains("koi health —") && s.lines().all(|l| l.chars().count() <= 60)
        },
    );
    let screen = tmux.capture();
    assert_eq!(
        screen.matches("koi health —").count(),
        1,
        "not one screen:\n{screen}"
    );

    tmux.run(&["send-keys", "-t", "w", "C-c"]);
    wait_until("watch exits", Duration::from_secs(20), || {
        std::fs::read_to_string(&status_file).is_ok()
    });
    let code = std::fs::read_to_string(&status_file).expect("status");
    assert_eq!(code.trim(), "130", "exit status");
    wait_until(
        "the shell prints after the view",
        Duration::from_secs(10),
        || tmux.capture().contains("EXITED"),
    );
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{alternate_on}"])
            .trim(),
        "0"
    );
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{cursor_flag}"])
            .trim(),
        "1"
    );
    let after = tmux.capture();
    assert!(
        !after.contains("koi health —"),
        "the view was left on the main screen:\n{after}"
    );
}

#[test]
fn watch_json_streams_transitions_as_ndjson() {
    let server = TestServer::start(200);
    let (env, _daemon) = daemon_env();
    let url = server.url();
    add(
        &env,
        &[
            "web",
            "--http",
            &url,
            "--interval",
            "1s",
            "--fail-after",
            "1",
            "--recover-after",
            "1",
        ],
    );
    wait_service(&env, "web", "up");
    let out_path = env.dir.path().join("watch.ndjson");
    let out = std::fs::File::create(&out_path).expect("out");
    let mut child = env
        .command(&["health", "watch", "--json"])
        .stdout(out)
        .spawn()
        .expect("watch");
    // Toggle until the stream has carried two transitions (the first toggle may come before
    // the watch has subscribed).
    for _ in 0..5 {
        server.set(502);
        wait_service(&env, "web", "down");
        server.set(200);
        wait_service(&env, "web", "up");
        if std::fs::read_to_string(&out_path).is_ok_and(|s| s.lines().count() >= 2) {
            break;
        }
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let _ = child.wait();
    let text = std::fs::read_to_string(&out_path).expect("ndjson");
    let items: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(items.len() >= 2, "{text}");
    for item in &items {
        assert_eq!(item["name"], "web", "{text}");
        assert_eq!(item["kind"], "service", "{text}");
        assert_ne!(item["old"], item["new"], "{text}");
    }
    for pair in items.windows(2) {
        assert_eq!(
            pair[0]["new"], pair[1]["old"],
            "transitions do not chain:\n{text}"
        );
    }
}
