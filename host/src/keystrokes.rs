//! The terminal work behind `host/keystrokes`: put the terminal into raw mode without echo, read
//! keystrokes one byte at a time with their arrival times, draw a progress bar on stderr, and put
//! the terminal back on every path (the [`RawMode`] guard restores it on drop, so errors and panics
//! are covered too). In raw mode Ctrl-C arrives as the byte 0x03 instead of a signal; it ends the
//! collection with [`Ended::Interrupted`] and the caller treats it as the user's Ctrl-C.
//!
//! Reading waits with `poll` in short slices, so the caller can make it give up (the command ended
//! for another reason) and the terminal is restored before `koi` exits.
//!
//! A person mashing the keyboard does not stop the instant the bar is full. Once enough keys are
//! in, the rest are read and thrown away until the keyboard has been quiet for [`QUIET`] (at most
//! [`DRAIN_LIMIT`]), and whatever is still queued is flushed (`tcflush`) before the terminal is
//! restored; otherwise those keys would land in the next prompt or in the shell.

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::termios::{
    InputModes, LocalModes, OptionalActions, QueueSelector, SpecialCodeIndex, Termios, tcflush,
    tcgetattr, tcsetattr,
};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use zeroize::{Zeroize, Zeroizing};

/// The byte a terminal in raw mode delivers for Ctrl-C.
const CTRL_C: u8 = 0x03;
/// How long one wait for input lasts before the give-up flag is checked again.
const POLL_SLICE: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};
/// After collecting, input is discarded until none arrives for this long…
const QUIET: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 300_000_000,
};
/// …or for at most this long in all.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Width of the progress bar, in cells.
const BAR_WIDTH: usize = 30;

/// What was typed: `bytes[i]` arrived `nanos[i]` nanoseconds after the prompt appeared.
pub struct Collected {
    /// The bytes, zeroized on drop.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Their arrival times.
    pub nanos: Zeroizing<Vec<u64>>,
}

/// Why collection stopped early.
#[derive(Debug)]
pub enum Ended {
    /// The user pressed Ctrl-C.
    Interrupted,
    /// The terminal reported end of input (hung up).
    Closed,
    /// The caller asked to give up.
    GaveUp,
    /// The terminal could not be set up or read.
    Failed(String),
}

/// Puts the terminal on `fd` into raw mode without echo until dropped.
struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    fn enter(fd: BorrowedFd<'fd>) -> rustix::io::Result<Self> {
        let saved = tcgetattr(fd)?;
        let mut raw = saved.clone();
        // Not cfmakeraw: output processing stays on, so "\n" still starts a new line on stderr.
        raw.local_modes
            .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ECHONL);
        raw.local_modes
            .remove(LocalModes::ISIG | LocalModes::IEXTEN);
        raw.input_modes
            .remove(InputModes::IXON | InputModes::ICRNL | InputModes::INLCR | InputModes::IGNCR);
        raw.special_codes[SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        // `Now`, not `Flush`: keys typed just before the prompt are kept, not silently dropped.
        tcsetattr(fd, OptionalActions::Now, &raw)?;
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(self.fd, OptionalActions::Now, &self.saved) {
            eprintln!("koi: could not restore the terminal ({e}); run `stty sane` to fix it");
        }
    }
}

/// The `[#####.....] 37/128` line on stderr, redrawn in place; ends its line when dropped.
struct Bar {
    total: usize,
    drawn: bool,
}

impl Bar {
    fn draw(&mut self, done: usize) {
        let filled = (done * BAR_WIDTH)
            .checked_div(self.total)
            .unwrap_or(BAR_WIDTH);
        let line = format!(
            "\r[{}{}] {done}/{}",
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            self.total
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
        self.drawn = true;
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Shows `message` and collects `count` keystrokes from standard input, which must be a terminal.
/// Draws a progress bar when `bar` is set (stderr is a terminal). Gives up when `give_up` is set.
pub fn collect(
    message: &str,
    count: usize,
    bar: bool,
    give_up: &AtomicBool,
) -> Result<Collected, Ended> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let raw = RawMode::enter(fd)
        .map_err(|e| Ended::Failed(format!("the terminal could not be put in raw mode: {e}")))?;
    eprintln!("{message}");
    let mut bar = bar.then_some(Bar {
        total: count,
        drawn: false,
    });
    if let Some(bar) = &mut bar {
        bar.draw(0);
    }
    let started = Instant::now();
    let mut collected = Collected {
        bytes: Zeroizing::new(Vec::with_capacity(count)),
        nanos: Zeroizing::new(Vec::with_capacity(count)),
    };
    let mut byte = [0u8; 1];
    let outcome = loop {
        if collected.bytes.len() == count {
            break Ok(());
        }
        if give_up.load(Ordering::Acquire) {
            break Err(Ended::GaveUp);
        }
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&POLL_SLICE)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                break Err(Ended::Failed(format!(
                    "waiting for the terminal failed: {e}"
                )));
            }
        }
        match rustix::io::read(fd, &mut byte) {
            Ok(0) => break Err(Ended::Closed),
            Ok(_) => {}
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => break Err(Ended::Failed(format!("reading the terminal failed: {e}"))),
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if byte[0] == CTRL_C {
            break Err(Ended::Interrupted);
        }
        collected.bytes.push(byte[0]);
        collected.nanos.push(nanos);
        if let Some(bar) = &mut bar {
            bar.draw(collected.bytes.len());
        }
    };
    byte.zeroize();
    if outcome.is_ok() {
        drain(fd);
    }
    drop(bar);
    drop(raw);
    outcome.map(|()| collected)
}

/// Discards keys typed past the end (see the module's doc): reads until the terminal has been
/// quiet for [`QUIET`] or [`DRAIN_LIMIT`] has passed, then flushes what is still queued.
fn drain(fd: BorrowedFd<'_>) {
    let started = Instant::now();
    let mut sink = Zeroizing::new([0u8; 64]);
    while started.elapsed() < DRAIN_LIMIT {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&QUIET)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => break,
        }
        match rustix::io::read(fd, &mut sink[..]) {
            Ok(0) => break,
            Ok(_) | Err(Errno::INTR | Errno::AGAIN) => {}
            Err(_) => break,
        }
    }
    let _ = tcflush(fd, QueueSelector::IFlush);
}
