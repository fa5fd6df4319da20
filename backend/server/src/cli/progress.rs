//! Progress bars: drawn in place on a terminal; written as plain lines to a log. When stderr is a pipe or a
//! file (`nohup`, a job runner, the lanes of `repdiff reproduce`), a bar would otherwise draw nothing at all
//! until the command ends.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a bar writes its state as a line when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// A progress bar of `total` items on stderr with the given indicatif template.
pub fn progress_bar(total: u64, template: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::<ProgressLines>::default(), 1)
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// A "terminal" that writes a bar's rendered state to stderr as one line: at most one every
/// [`LINE_EVERY`], and the last one when the bar goes away (unless it was cleared).
#[derive(Debug)]
struct ProgressLines {
    state: Mutex<LineState>,
}

#[derive(Debug)]
struct LineState {
    /// What the draw under way has written so far.
    drawing: String,
    /// The last complete state, and whether it was written.
    latest: String,
    written: bool,
    last_write: Instant,
}

impl Default for ProgressLines {
    fn default() -> Self {
        let state =
            LineState { drawing: String::new(), latest: String::new(), written: true, last_write: Instant::now() };
        ProgressLines { state: Mutex::new(state) }
    }
}

impl ProgressLines {
    fn state(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TermLike for ProgressLines {
    fn width(&self) -> u16 {
        100
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.state().drawing.push_str(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// The end of a draw: its text is the bar's new state.
    fn flush(&self) -> std::io::Result<()> {
        let mut state = self.state();
        let line = std::mem::take(&mut state.drawing).replace('\r', "").trim().to_string();
        if line.is_empty() {
            // Cleared (`finish_and_clear`): the command reports its end itself, so a state still pending
            // would only be stale.
            state.written = true;
            return Ok(());
        }
        if line == state.latest {
            return Ok(());
        }
        state.latest = line;
        state.written = false;
        if state.last_write.elapsed() >= LINE_EVERY {
            eprintln!("{}", state.latest);
            state.written = true;
            state.last_write = Instant::now();
        }
        Ok(())
    }
}

impl Drop for ProgressLines {
    fn drop(&mut self) {
        let state = self.state();
        if !state.written && !state.latest.is_empty() {
            eprintln!("{}", state.latest);
        }
    }
}
