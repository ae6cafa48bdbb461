//! The terminal side of plugin→host calls: questions (`host/prompt`, `host/secret`,
//! `host/confirm`, `host/choose`, `host/keystrokes`), progress bars, shown text/tables/QR codes and
//! streamed items.
//!
//! A QR code is drawn only when stderr is a terminal; otherwise its data (an otpauth URI) is printed
//! alone on one line of stdout, and not at all under `--json` (stderr may be a log). Traces redact
//! it either way (`crate::trace`).
//!
//! Questions are asked on stderr and answered on stdin, one at a time. Secrets are read without
//! echo when stdin is a terminal and are zeroized after use. When stdin is not a terminal, answers
//! are read line by line from it (scripts can pipe them); at end of input the plugin gets a clear
//! error. Keystrokes (`crate::keystrokes`) need a terminal: their timings cannot be piped. Ctrl-C
//! while collecting them is reported through [`Terminal::interrupted`], so the command ends as on
//! any Ctrl-C. With `--json`, everything except the result goes to stderr so stdout stays
//! machine-readable. Every plugin-supplied string (question, option, default, progress message,
//! shown text, item) is printed through [`crate::sanitize`], so no control character from a plugin
//! reaches the terminal raw.

use crate::render::{self, Style};
use crate::sanitize;
use koi_protocol::calls::*;
use koi_protocol::{ErrorObject, codes};
use serde_json::Value;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// How many times a secret with `confirm` is asked when the two entries differ.
const SECRET_TRIES: usize = 3;

/// Output and input settings for one CLI run.
pub struct Terminal {
    /// `--json`: stdout holds only results.
    pub json: bool,
    /// Colour allowed.
    pub style: Style,
    stdin_tty: bool,
    stderr_tty: bool,
    input: Mutex<()>,
    progress: Mutex<Option<indicatif::ProgressBar>>,
    /// Signalled when the user pressed Ctrl-C inside a question (raw mode: no SIGINT).
    interrupt: tokio::sync::Notify,
    /// Set when the command's call is over: a question still waiting for keys gives up.
    questions_over: AtomicBool,
    /// Set while keystrokes are being collected (the terminal is in raw mode).
    collecting: AtomicBool,
    /// The current call's live view (`$/view`), drawn in place.
    pub live: crate::view::LiveView,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Settings from the environment.
    pub fn new(json: bool, color: bool) -> Self {
        Self {
            json,
            style: Style::new(color),
            stdin_tty: std::io::stdin().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            input: Mutex::new(()),
            progress: Mutex::new(None),
            interrupt: tokio::sync::Notify::new(),
            questions_over: AtomicBool::new(false),
            collecting: AtomicBool::new(false),
            live: crate::view::LiveView::default(),
        }
    }

    /// Resolves when the user pressed Ctrl-C while answering a question in raw mode (where it
    /// arrives as a byte rather than SIGINT); treat it as Ctrl-C.
    pub async fn interrupted(&self) {
        self.interrupt.notified().await;
    }

    /// Ends questioning for this run: a question still collecting keystrokes stops and restores
    /// the terminal (the call it served is over). Waits briefly for that, so what is printed next
    /// starts on its own line of a cooked terminal.
    pub async fn end_questions(&self) {
        self.questions_over.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.collecting.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Whether a person can answer questions at a terminal: standard input (where answers are
    /// read) and standard error (where questions are shown) are both terminals. Sent with every
    /// call as the per-call context's `interactive`.
    pub fn interactive(&self) -> bool {
        self.stdin_tty && self.stderr_tty
    }

    /// Answers a question (`host/prompt`, `host/secret`, `host/confirm`, `host/choose`,
    /// `host/keystrokes`) from `plugin` without blocking the runtime.
    pub async fn answer(
        self: &Arc<Self>,
        plugin: &str,
        method: String,
        params: Value,
    ) -> Result<Value, ErrorObject> {
        let terminal = self.clone();
        let plugin = plugin.to_owned();
        tokio::task::spawn_blocking(move || terminal.ask(&plugin, &method, params))
            .await
            .unwrap_or_else(|e| {
                Err(ErrorObject::new(
                    codes::INTERNAL_ERROR,
                    format!("prompt failed: {e}"),
                ))
            })
    }

    /// Shows a user-facing notification (`$/progress`, `host/show`, `$/item`); returns false for
    /// any other method or an unreadable payload.
    pub fn relay(&self, method: &str, params: Value) -> bool {
        match method {
            PROGRESS => serde_json::from_value::<ProgressParams>(params)
                .map(|p| self.progress(&p))
                .is_ok(),
            SHOW => serde_json::from_value::<ShowParams>(params)
                .map(|p| self.show(&p.content))
                .is_ok(),
            ITEM => params.get("item").map(|item| self.item(item)).is_some(),
            VIEW => serde_json::from_value::<ViewParams>(params)
                .map(|p| {
                    if crate::view::LiveView::possible(self.json) {
                        self.live.show(&p.content);
                    }
                })
                .is_ok(),
            _ => false,
        }
    }

    /// Answers one question request from `plugin` (blocking: call from `spawn_blocking`).
    pub fn ask(&self, plugin: &str, method: &str, params: Value) -> Result<Value, ErrorObject> {
        let _turn = crate::schema::lock(&self.input);
        let bar = crate::schema::lock(&self.progress).clone();
        let answer = || match method {
            PROMPT => {
                let p: PromptParams = parse(method, params)?;
                let message = sanitize::line(&p.message);
                let label = match &p.default {
                    Some(d) => format!("{message} [{}]: ", sanitize::line(d)),
                    None => format!("{message}: "),
                };
                let line = self.read_line(plugin, &label, false)?;
                let value = if line.is_empty() {
                    p.default.unwrap_or_default()
                } else {
                    line.to_string()
                };
                Ok(serde_json::json!(PromptResult { value }))
            }
            SECRET => {
                let p: SecretParams = parse(method, params)?;
                let message = sanitize::line(&p.message);
                // A confirmation that does not match asks for both entries again, a few times.
                for _ in 0..SECRET_TRIES {
                    let first = self.read_line(plugin, &format!("{message}: "), true)?;
                    if !p.confirm {
                        return Ok(serde_json::json!({ "value": first.as_str() }));
                    }
                    let second = self.read_line(plugin, &format!("{message} (again): "), true)?;
                    if *first == *second {
                        return Ok(serde_json::json!({ "value": first.as_str() }));
                    }
                    eprintln!("The two entries did not match. Type it again.");
                }
                Err(no_answer(
                    plugin,
                    &p.message,
                    &format!("the two entries did not match {SECRET_TRIES} times"),
                ))
            }
            CONFIRM => {
                let p: ConfirmParams = parse(method, params)?;
                let label = format!(
                    "{} [{}]: ",
                    sanitize::line(&p.message),
                    if p.default { "Y/n" } else { "y/N" }
                );
                for _ in 0..3 {
                    let line = self.read_line(plugin, &label, false)?;
                    match line.to_ascii_lowercase().as_str() {
                        "" => {
                            return Ok(serde_json::json!(ConfirmResult {
                                confirmed: p.default
                            }));
                        }
                        "y" | "yes" => {
                            return Ok(serde_json::json!(ConfirmResult { confirmed: true }));
                        }
                        "n" | "no" => {
                            return Ok(serde_json::json!(ConfirmResult { confirmed: false }));
                        }
                        _ => eprintln!("Please answer y or n."),
                    }
                }
                Err(no_answer(
                    plugin,
                    &p.message,
                    "no valid yes/no answer after three tries",
                ))
            }
            CHOOSE => {
                let p: ChooseParams = parse(method, params)?;
                if p.options.is_empty() {
                    return Err(ErrorObject::new(
                        codes::INVALID_PARAMS,
                        "host/choose needs at least one option",
                    ));
                }
                eprintln!("{}", sanitize::line(&p.message));
                for (i, option) in p.options.iter().enumerate() {
                    eprintln!("  {}) {}", i + 1, sanitize::line(option));
                }
                let label = match p.default {
                    Some(d) if d < p.options.len() => {
                        format!("Choose 1-{} [{}]: ", p.options.len(), d + 1)
                    }
                    _ => format!("Choose 1-{}: ", p.options.len()),
                };
                for _ in 0..3 {
                    let line = self.read_line(plugin, &label, false)?;
                    let index = if line.is_empty() {
                        p.default.filter(|d| *d < p.options.len())
                    } else {
                        line.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=p.options.len()).contains(n))
                            .map(|n| n - 1)
                            .or_else(|| {
                                p.options.iter().position(|o| o.eq_ignore_ascii_case(&line))
                            })
                    };
                    if let Some(index) = index {
                        return Ok(serde_json::json!(ChooseResult {
                            index,
                            value: p.options[index].clone()
                        }));
                    }
                    eprintln!("Please enter a number from 1 to {}.", p.options.len());
                }
                Err(no_answer(
                    plugin,
                    &p.message,
                    "no valid choice after three tries",
                ))
            }
            KEYSTROKES => {
                let p: KeystrokesParams = parse(method, params)?;
                self.keystrokes(plugin, &p)
            }
            other => Err(ErrorObject::new(
                codes::METHOD_NOT_FOUND,
                format!("unknown host method `{other}`"),
            )),
        };
        match bar {
            Some(bar) => bar.suspend(answer),
            None => answer(),
        }
    }

    /// `host/keystrokes`: raw keystrokes and their timings, at a terminal only.
    fn keystrokes(&self, plugin: &str, p: &KeystrokesParams) -> Result<Value, ErrorObject> {
        if !(1..=MAX_KEYSTROKES).contains(&p.count) {
            return Err(ErrorObject::new(
                codes::INVALID_PARAMS,
                format!(
                    "koi-{plugin} asked for {} keystrokes; host/keystrokes takes 1 to {MAX_KEYSTROKES}",
                    p.count
                ),
            ));
        }
        if !self.stdin_tty {
            return Err(ErrorObject::new(
                codes::USER_INPUT_UNAVAILABLE,
                format!(
                    "koi-{plugin} asked \"{}\" but got no answer: keystrokes can only be typed at a terminal, and standard input is not one",
                    sanitize::line(&p.message)
                ),
            )
            .with_hint("Run the command in a terminal (keystroke timings cannot be piped), or use the verb's flags instead of prompts."));
        }
        let count = usize::try_from(p.count).unwrap_or(usize::MAX);
        self.collecting.store(true, Ordering::Release);
        let message = sanitize::line(&p.message);
        let collected =
            crate::keystrokes::collect(&message, count, self.stderr_tty, &self.questions_over);
        self.collecting.store(false, Ordering::Release);
        let collected = collected.map_err(|ended| {
            let cause = match ended {
                crate::keystrokes::Ended::Interrupted => {
                    self.interrupt.notify_one();
                    return ErrorObject::new(
                        codes::REQUEST_CANCELLED,
                        format!(
                            "cancelled: Ctrl-C was pressed while koi-{plugin} collected keystrokes"
                        ),
                    );
                }
                crate::keystrokes::Ended::Closed => "the terminal closed".to_owned(),
                crate::keystrokes::Ended::GaveUp => "the command ended".to_owned(),
                crate::keystrokes::Ended::Failed(e) => e,
            };
            no_answer(plugin, &message, &cause)
        })?;
        let keystrokes: Vec<Value> = collected
            .bytes
            .iter()
            .zip(collected.nanos.iter())
            .map(|(byte, nanos)| serde_json::json!({ "byte": byte, "nanos": nanos }))
            .collect();
        Ok(serde_json::json!({ "keystrokes": keystrokes }))
    }

    fn read_line(
        &self,
        plugin: &str,
        label: &str,
        secret: bool,
    ) -> Result<Zeroizing<String>, ErrorObject> {
        let mut stderr = std::io::stderr();
        if secret && self.stdin_tty {
            let _ = write!(stderr, "{label}");
            let _ = stderr.flush();
            return rpassword::read_password().map(Zeroizing::new).map_err(|e| {
                no_answer(
                    plugin,
                    label.trim_end_matches([':', ' ']),
                    &format!("reading the terminal failed: {e}"),
                )
            });
        }
        let _ = write!(stderr, "{label}");
        let _ = stderr.flush();
        let mut line = Zeroizing::new(String::new());
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) => Err(no_answer(
                plugin,
                label.trim_end_matches([':', ' ']),
                "standard input is closed",
            )),
            Ok(_) => {
                if !self.stdin_tty {
                    let _ = writeln!(stderr);
                }
                let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
                Ok(trimmed)
            }
            Err(e) => Err(no_answer(
                plugin,
                label.trim_end_matches([':', ' ']),
                &e.to_string(),
            )),
        }
    }

    /// Shows `$/progress` on stderr when it is a terminal.
    pub fn progress(&self, p: &ProgressParams) {
        if !self.stderr_tty {
            tracing::debug!(
                message = %sanitize::line(p.message.as_deref().unwrap_or("")),
                current = p.current,
                total = p.total,
                "progress"
            );
            return;
        }
        let mut slot = crate::schema::lock(&self.progress);
        let bar = slot.get_or_insert_with(|| {
            let bar = match p.total {
                Some(total) => indicatif::ProgressBar::new(total),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let template = if p.total.is_some() {
                "{msg} [{bar:30}] {pos}/{len}"
            } else {
                "{spinner} {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        if let Some(total) = p.total {
            bar.set_length(total);
        }
        if let Some(current) = p.current {
            bar.set_position(current);
        } else {
            bar.tick();
        }
        if let Some(message) = &p.message {
            bar.set_message(sanitize::line(message).into_owned());
        }
    }

    /// Removes any progress bar (at the end of a call).
    pub fn finish_progress(&self) {
        if let Some(bar) = crate::schema::lock(&self.progress).take() {
            bar.finish_and_clear();
        }
    }

    /// Renders `host/show` content.
    pub fn show(&self, content: &ShowContent) {
        let text = match content {
            ShowContent::Text { text } => format!("{}\n", sanitize::text(text)),
            ShowContent::Table { columns, rows } => render::table(self.style, columns, rows),
            // A QR code is for a person at a screen: without a terminal on stderr (a pipe, a log,
            // a CI job) the data is printed on its own line of stdout instead. With `--json` it
            // is not printed at all: stdout holds only the result, and stderr may be a log (the
            // data is often a secret; a plugin puts it in its result too, as certmesh does).
            ShowContent::Qr { .. } if !self.stderr_tty && self.json => return,
            ShowContent::Qr { data, .. } if !self.stderr_tty => {
                format!("{}\n", sanitize::line(data))
            }
            ShowContent::Qr { data, caption } => {
                let mut out = match qrcode::QrCode::new(data.as_bytes()) {
                    Ok(code) => code
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .dark_color(qrcode::render::unicode::Dense1x2::Light)
                        .light_color(qrcode::render::unicode::Dense1x2::Dark)
                        .quiet_zone(true)
                        .build(),
                    Err(e) => format!("(cannot draw a QR code for this data: {e})"),
                };
                out.push('\n');
                if let Some(caption) = caption {
                    out.push_str(&sanitize::text(caption));
                    out.push('\n');
                }
                out
            }
        };
        self.print_aside(&text);
    }

    /// Prints one streamed item: an NDJSON line with `--json`, else a `key=value` line.
    pub fn item(&self, item: &Value) {
        if !self.json && self.live.active() {
            return; // the live view shows what the items say
        }
        let line = if self.json {
            sanitize::json(item)
        } else {
            render::inline(item)
        };
        self.suspend(|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        });
    }

    /// Prints text that is not the result: stdout normally, stderr under `--json`.
    pub fn print_aside(&self, text: &str) {
        self.suspend(|| {
            if self.json {
                let _ = std::io::stderr().write_all(text.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        });
    }

    fn suspend(&self, f: impl FnOnce()) {
        let bar = crate::schema::lock(&self.progress).clone();
        match bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(method: &str, params: Value) -> Result<T, ErrorObject> {
    serde_json::from_value(params).map_err(|e| {
        ErrorObject::new(
            codes::INVALID_PARAMS,
            format!("invalid {method} params: {e}"),
        )
    })
}

fn no_answer(plugin: &str, question: &str, cause: &str) -> ErrorObject {
    ErrorObject::new(
        codes::USER_INPUT_UNAVAILABLE,
        format!(
            "koi-{plugin} asked \"{}\" but got no answer: {cause}",
            sanitize::line(question)
        ),
    )
    .with_hint("Run the command in a terminal, or pipe the answers on standard input, or use the verb's flags instead of prompts.")
}
