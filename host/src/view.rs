//! Live views (`$/view`, docs/protocol.md §10): a screen a plugin replaces while its request runs
//! (`koi health watch`), drawn in place on the alternate screen of a terminal — one screen, never
//! a scroll — cut to the terminal's width and height, redrawn when the terminal is resized, and
//! left (cursor shown, main screen back) when the call ends, whatever ended it. Nothing is drawn
//! under `--json` or when stdout is not a terminal: the request's streamed items are printed
//! instead. Generic: the host knows nothing of what a view shows.

use crate::render::{self, Style};
use crate::sanitize;
use koi_protocol::calls::ShowContent;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// The live view of the current call, if one is shown.
#[derive(Debug, Default)]
pub struct LiveView {
    shown: Mutex<Option<String>>,
}

fn size() -> (usize, usize) {
    terminal_size::terminal_size_of(std::io::stdout())
        .map_or((80, 24), |(w, h)| (usize::from(w.0), usize::from(h.0)))
}

/// The screen for `text`, cut to `width` × `height`, drawn from the top-left corner.
pub fn frame(text: &str, width: usize, height: usize) -> String {
    let mut out = String::from("\x1b[H");
    for (i, line) in text.lines().take(height.max(1)).enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        out.extend(line.chars().take(width.max(1)));
        out.push_str("\x1b[K");
    }
    out.push_str("\x1b[J");
    out
}

impl LiveView {
    /// Whether a view may be drawn here: a terminal on stdout and no `--json`.
    pub fn possible(json: bool) -> bool {
        !json && std::io::stdout().is_terminal()
    }

    /// Whether a view is on the screen.
    pub fn active(&self) -> bool {
        crate::schema::lock(&self.shown).is_some()
    }

    /// Replaces the view with `content` and draws it.
    pub fn show(&self, content: &ShowContent) {
        let text = match content {
            ShowContent::Text { text } => sanitize::text(text).into_owned(),
            ShowContent::Table { columns, rows } => render::table(Style::new(false), columns, rows),
            ShowContent::Qr { .. } => return,
        };
        let mut shown = crate::schema::lock(&self.shown);
        let first = shown.is_none();
        let (w, h) = size();
        let mut out = std::io::stdout().lock();
        if first {
            let _ = out.write_all(ENTER.as_bytes());
        }
        let _ = out.write_all(frame(&text, w, h).as_bytes());
        let _ = out.flush();
        *shown = Some(text);
    }

    /// Draws the view again at the terminal's current size (on SIGWINCH).
    pub fn redraw(&self) {
        let shown = crate::schema::lock(&self.shown);
        if let Some(text) = shown.as_ref() {
            let (w, h) = size();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(frame(text, w, h).as_bytes());
            let _ = out.flush();
        }
    }

    /// Leaves the view, restoring the terminal; returns whether one was shown.
    pub fn finish(&self) -> bool {
        let was = crate::schema::lock(&self.shown).take().is_some();
        if was {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(LEAVE.as_bytes());
            let _ = out.flush();
        }
        was
    }
}

/// While a call runs: redraws its live view whenever the terminal is resized (SIGWINCH). `None`
/// when no view can be drawn (`--json`, or stdout not a terminal). Abort the task after the call.
pub fn follow_resizes(
    terminal: &std::sync::Arc<crate::ui::Terminal>,
    json: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let terminal = terminal.clone();
    LiveView::possible(json).then(|| {
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut winch) = signal(SignalKind::window_change()) {
                while winch.recv().await.is_some() {
                    terminal.live.redraw();
                }
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fit_the_terminal() {
        let f = frame("abcdef\nsecond\nthird", 3, 2);
        assert_eq!(f, "\x1b[Habc\x1b[K\r\nsec\x1b[K\x1b[J");
    }
}
