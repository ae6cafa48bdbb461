//! koi-health end to end (issue 14): service checks against loopback test servers under a private
//! `koi daemon` (thresholds, flapping, timeouts, TCP, HTTPS with a mesh certificate), bad input,
//! persistence across restarts and `kill -9`, and machine health in network namespaces. Shared
//! here: a tiny HTTP server whose answer the test controls, and readers for `state` and the log.

mod certs;
mod checks;
mod input;
mod machines;
mod watch;

use crate::support::{DaemonProc, KoiEnv, wait_until};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

/// What the test server answers.
pub const ALTERNATE: u16 = 1;
/// The test server accepts and never answers.
pub const HANG: u16 = 2;

/// A loopback HTTP server answering `status` (a code, [`ALTERNATE`] 200/502 per request, or [`HANG`]).
pub struct TestServer {
    pub port: u16,
    pub status: Arc<AtomicU16>,
    pub hits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let server = Self {
            port,
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (status, hits, stop) = (
            server.status.clone(),
            server.hits.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let n = hits.fetch_add(1, Ordering::SeqCst);
                        let code = match status.load(Ordering::SeqCst) {
                            ALTERNATE if n % 2 == 0 => 200,
                            ALTERNATE => 502,
                            code => code,
                        };
                        if code == HANG {
                            held.push(stream);
                        } else {
                            std::thread::spawn(move || answer(stream, code));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        server
    }

    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(mut stream: TcpStream, code: u16) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// An environment with koi-health only, and its daemon (threshold `threshold` for machines).
pub fn daemon_env() -> (KoiEnv, DaemonProc) {
    let env = KoiEnv::new().with_health();
    let daemon = env.start_daemon(&[]);
    (env, daemon)
}

/// `koi health state --json`.
pub fn state(env: &KoiEnv) -> serde_json::Value {
    let run = env.run(&["health", "state", "--json"]);
    run.expect_code(0);
    run.json()
}

/// The state of service `name` (`None` when it is not listed).
pub fn service_state(env: &KoiEnv, name: &str) -> Option<String> {
    state(env)["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["state"].as_str().unwrap_or_default().to_owned())
}

/// Waits until service `name` is in `want`.
#[track_caller]
pub fn wait_service(env: &KoiEnv, name: &str, want: &str) {
    wait_until(&format!("{name} {want}"), Duration::from_secs(30), || {
        service_state(env, name).as_deref() == Some(want)
    });
}

/// The raw lines of the transition log.
pub fn log_lines(env: &KoiEnv) -> Vec<String> {
    std::fs::read_to_string(env.home.join("health/transitions.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The log lines about `name`.
pub fn lines_of(env: &KoiEnv, name: &str) -> Vec<String> {
    log_lines(env)
        .into_iter()
        .filter(|l| l.split(" | ").nth(1) == Some(name))
        .collect()
}

/// `koi health add ARGS...`, expected to succeed.
pub fn add(env: &KoiEnv, args: &[&str]) {
    let mut all = vec!["health", "add"];
    all.extend_from_slice(args);
    env.run(&all).expect_code(0);
}
