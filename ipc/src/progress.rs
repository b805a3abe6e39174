//! Progress of long host-side work: the image tool's builds and boots and
//! the benchmarks.
//!
//! A [`Reporter`] prints permanent lines (`<prefix>: <text>`, optionally
//! with the time since it started) and runs one [`Step`] at a time: one
//! line when the step starts and one when it ends. The lines are the same
//! everywhere. When the output is a terminal the running step is also a
//! live `indicatif` spinner, or a bar for counted work, showing its elapsed
//! time and latest news; everywhere else (CI logs, pipes) nothing is
//! printed between the lines. Redox builds are always plain.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a [`Reporter`] shows the running step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain lines: a step's start and its end.
    Lines,
    /// The same lines, and a live indicator for the running step.
    Live,
}

impl Mode {
    /// The mode for an output that is, or is not, a terminal: live only on
    /// a terminal, and never on Redox.
    pub fn for_output(is_terminal: bool) -> Mode {
        if is_terminal && cfg!(not(target_os = "redox")) {
            Mode::Live
        } else {
            Mode::Lines
        }
    }
}

/// The step a reporter is running.
struct Running {
    /// Tells this step from a later one (an old [`Step`] must not end it).
    id: u64,
    name: String,
    since: Instant,
    #[cfg(not(target_os = "redox"))]
    live: Option<indicatif::ProgressBar>,
}

/// Prints progress lines and runs one step at a time; see the
/// [module docs](self).
pub struct Reporter {
    prefix: String,
    /// Lines carry the time since this instant.
    stamped_since: Option<Instant>,
    mode: Mode,
    /// Live indicators draw on stderr (else they are hidden: tests).
    draw_on_stderr: bool,
    out: Mutex<Box<dyn Write + Send>>,
    running: Mutex<Option<Running>>,
    steps: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("running", &self.running())
            .finish()
    }
}

impl Reporter {
    /// A reporter on stderr, live when stderr is a terminal.
    pub fn stderr(prefix: &str) -> Reporter {
        let mode = Mode::for_output(std::io::stderr().is_terminal());
        let mut r = Reporter::to_writer(prefix, mode, Box::new(std::io::stderr()));
        r.draw_on_stderr = true;
        r
    }

    /// A reporter writing its lines to `out` in `mode`; a live indicator
    /// is kept (state, messages) but not drawn.
    pub fn to_writer(prefix: &str, mode: Mode, out: Box<dyn Write + Send>) -> Reporter {
        Reporter {
            prefix: prefix.to_string(),
            stamped_since: None,
            mode,
            draw_on_stderr: false,
            out: Mutex::new(out),
            running: Mutex::new(None),
            steps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Lines carry the time since now: `<prefix>: [  12.3 s] <text>`.
    pub fn stamped(mut self) -> Reporter {
        self.stamped_since = Some(Instant::now());
        self
    }

    /// How the running step is shown.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Time since the reporter started stamping (zero when it does not).
    pub fn elapsed(&self) -> Duration {
        self.stamped_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The name of the running step, if any.
    pub fn running(&self) -> Option<String> {
        self.lock_running().as_ref().map(|r| r.name.clone())
    }

    /// Prints one permanent line.
    pub fn say(&self, text: impl AsRef<str>) {
        let line = self.line(text.as_ref());
        self.suspend(|| {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        });
    }

    /// Runs `f` with the live indicator (if any) taken off the terminal,
    /// for output of its own (a guest's console, a benchmark's figures).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(not(target_os = "redox"))]
        {
            let bar = self.lock_running().as_ref().and_then(|r| r.live.clone());
            if let Some(bar) = bar {
                return bar.suspend(f);
            }
        }
        f()
    }

    /// Starts step `name`, announced by the line `text`. A step still
    /// running is ended first, as failed.
    pub fn begin(&self, name: &str, text: impl AsRef<str>) -> Step<'_> {
        self.start(name, text.as_ref(), None)
    }

    /// Runs `f` as step `name`, announced by the line `text`, and ends it
    /// with `<name>: done in <seconds>`.
    pub fn run<T>(&self, name: &str, text: impl AsRef<str>, f: impl FnOnce(&Step<'_>) -> T) -> T {
        let step = self.begin(name, text);
        let value = f(&step);
        step.finish(format!("{name}: done in {}", seconds(step.elapsed())));
        value
    }

    /// [`begin`](Self::begin) for work of `total` units; the live
    /// indicator is a bar that [`Step::advance`] moves.
    pub fn begin_counted(&self, name: &str, text: impl AsRef<str>, total: u64) -> Step<'_> {
        self.start(name, text.as_ref(), Some(total))
    }

    fn start(&self, name: &str, text: &str, total: Option<u64>) -> Step<'_> {
        // (The guard must be gone before `end` locks again.)
        let current = self.lock_running().as_ref().map(|r| r.id);
        if let Some(id) = current {
            self.end(id, None);
        }
        self.say(text);
        let id = self
            .steps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let running = Running {
            id,
            name: name.to_string(),
            since: Instant::now(),
            #[cfg(not(target_os = "redox"))]
            live: (self.mode == Mode::Live).then(|| self.live_bar(name, total)),
        };
        #[cfg(target_os = "redox")]
        let _ = total;
        *self.lock_running() = Some(running);
        Step { reporter: self, id }
    }

    #[cfg(not(target_os = "redox"))]
    fn live_bar(&self, name: &str, total: Option<u64>) -> indicatif::ProgressBar {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let target = if self.draw_on_stderr {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n), target),
                "{prefix}: {spinner} [{elapsed:>4}] {bar:24} {pos}/{len} {wide_msg}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{prefix}: {spinner} [{elapsed:>4}] {wide_msg}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(self.prefix.clone());
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Ends step `id` if it is still running: prints `text`, or that it
    /// failed.
    fn end(&self, id: u64, text: Option<&str>) {
        let running = {
            let mut slot = self.lock_running();
            if slot.as_ref().map(|r| r.id) != Some(id) {
                return;
            }
            slot.take()
        };
        let Some(running) = running else {
            return;
        };
        #[cfg(not(target_os = "redox"))]
        if let Some(bar) = running.live {
            bar.finish_and_clear();
        }
        match text {
            Some(text) => self.say(text),
            None => self.say(format!(
                "{}: failed after {}",
                running.name,
                seconds(running.since.elapsed())
            )),
        }
    }

    fn line(&self, text: &str) -> String {
        match self.stamped_since {
            Some(t) => stamped_line(&self.prefix, t.elapsed(), text),
            None => format!("{}: {text}", self.prefix),
        }
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A step of a [`Reporter`]. [`Step::finish`] ends it with a line;
/// dropped unfinished (an error on the way), it ends as failed.
#[derive(Debug)]
pub struct Step<'a> {
    reporter: &'a Reporter,
    id: u64,
}

impl Step<'_> {
    /// Shows `text` as the step's latest news (live only; plain output
    /// does not change).
    pub fn message(&self, text: impl AsRef<str>) {
        #[cfg(not(target_os = "redox"))]
        if let Some(bar) = self.live() {
            bar.set_message(text.as_ref().to_string());
        }
        #[cfg(target_os = "redox")]
        let _ = text;
    }

    /// Counts `n` more units done (live bars only).
    pub fn advance(&self, n: u64) {
        #[cfg(not(target_os = "redox"))]
        if let Some(bar) = self.live() {
            bar.inc(n);
        }
        #[cfg(target_os = "redox")]
        let _ = n;
    }

    /// Runs `f` with the live indicator off the terminal
    /// ([`Reporter::suspend`]).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.reporter.suspend(f)
    }

    /// Prints a result line on stdout, keeping a live indicator intact.
    pub fn print_result(&self, line: impl std::fmt::Display) {
        self.suspend(|| println!("{line}"));
    }

    /// Time since the step began.
    pub fn elapsed(&self) -> Duration {
        self.reporter
            .lock_running()
            .as_ref()
            .filter(|r| r.id == self.id)
            .map_or(Duration::ZERO, |r| r.since.elapsed())
    }

    /// Ends the step with the permanent line `text` (once: a step that
    /// has ended does nothing more).
    pub fn finish(&self, text: impl AsRef<str>) {
        self.reporter.end(self.id, Some(text.as_ref()));
    }

    #[cfg(not(target_os = "redox"))]
    fn live(&self) -> Option<indicatif::ProgressBar> {
        self.reporter
            .lock_running()
            .as_ref()
            .filter(|r| r.id == self.id)
            .and_then(|r| r.live.clone())
    }
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.reporter.end(self.id, None);
    }
}

/// `<prefix>: [  12.3 s] <text>`.
pub fn stamped_line(prefix: &str, since_start: Duration, text: &str) -> String {
    format!("{prefix}: [{:>7.1} s] {text}", since_start.as_secs_f64())
}

/// `40.6 s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Joins benchmark threads that each return the `(start, end)` of their own
/// timed run, and gives the wall time from the first start to the last end.
/// Each thread reads its own clock, so a main thread scheduled late does
/// not shorten the span.
///
/// # Panics
/// If a thread panicked, or there are no threads.
pub fn joined_span(threads: Vec<std::thread::JoinHandle<(Instant, Instant)>>) -> Duration {
    let spans: Vec<(Instant, Instant)> = threads
        .into_iter()
        .map(|t| t.join().expect("benchmark thread"))
        .collect();
    let first = spans.iter().map(|s| s.0).min().expect("no threads");
    let last = spans.iter().map(|s| s.1).max().expect("no threads");
    last - first
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn only_a_terminal_gets_a_live_indicator() {
        assert_eq!(Mode::for_output(false), Mode::Lines);
        assert_eq!(Mode::for_output(true), Mode::Live);
    }

    #[test]
    fn plain_steps_print_their_start_and_end_and_nothing_between() {
        let out = Shared::default();
        let r = Reporter::to_writer("image", Mode::Lines, Box::new(out.clone()));
        assert_eq!(r.running(), None);
        let step = r.begin("kernel", "kernel ...");
        assert_eq!(r.running().as_deref(), Some("kernel"));
        step.message("downloading");
        step.advance(3);
        r.say("a line of its own");
        step.finish("kernel: done");
        assert_eq!(r.running(), None);
        {
            let _failing = r.begin_counted("boot", "boot ...", 2);
            assert_eq!(r.running().as_deref(), Some("boot"));
        }
        assert_eq!(r.running(), None, "a dropped step has ended");
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "image: kernel ...",
                "image: a line of its own",
                "image: kernel: done",
                "image: boot ...",
                "image: boot: failed after 0.0 s",
            ]
        );
        assert_eq!(lines.len(), 5);
        assert!(!text.contains(['\r', '\x1b']), "{text:?}");
    }

    #[test]
    fn live_steps_print_the_same_lines_and_keep_the_same_state() {
        let out = Shared::default();
        let r = Reporter::to_writer("bench", Mode::Live, Box::new(out.clone()));
        let step = r.begin_counted("rounds", "rounds", 4);
        assert_eq!(r.running().as_deref(), Some("rounds"));
        step.advance(1);
        step.message("round 2 of 4");
        let seen = r.suspend(|| r.running());
        assert_eq!(seen.as_deref(), Some("rounds"), "suspend keeps the step");
        // A second step ends the first one as failed.
        let next = r.begin("next", "next");
        assert_eq!(r.running().as_deref(), Some("next"));
        drop(step);
        assert_eq!(
            r.running().as_deref(),
            Some("next"),
            "an old step ends nothing"
        );
        next.finish("next: ok");
        assert_eq!(r.running(), None);
        assert_eq!(
            out.text(),
            "bench: rounds\nbench: rounds: failed after 0.0 s\nbench: next\nbench: next: ok\n"
        );
    }

    #[test]
    fn stamped_lines_carry_the_time_since_the_start() {
        assert_eq!(
            stamped_line("redox", Duration::from_millis(12_345), "kernel: cached"),
            "redox: [   12.3 s] kernel: cached"
        );
        assert_eq!(seconds(Duration::from_millis(40_650)), "40.6 s");
        let out = Shared::default();
        let r = Reporter::to_writer("redox", Mode::Lines, Box::new(out.clone())).stamped();
        r.say("snapshot");
        assert_eq!(out.text(), "redox: [    0.0 s] snapshot\n");
    }

    /// The child half of the next two tests: a reporter on the real
    /// stderr, which the parent made a pipe or a terminal.
    #[test]
    fn child_reports_on_stderr() {
        let Ok(expected) = std::env::var("PDDGPU_PROGRESS_CHILD") else {
            return;
        };
        let r = Reporter::stderr("child");
        let mode = if expected == "live" {
            Mode::Live
        } else {
            Mode::Lines
        };
        assert_eq!(r.mode(), mode);
        let step = r.begin_counted("work", "work ...", 10);
        for i in 0..10 {
            step.advance(1);
            step.message(format!("unit {i}"));
            std::thread::sleep(Duration::from_millis(30));
        }
        step.finish("work: done");
    }

    fn child(mode: &str, under: Option<&str>) -> (bool, String) {
        let exe = std::env::current_exe().unwrap();
        let args = "--exact progress::tests::child_reports_on_stderr --nocapture";
        let mut cmd = match under {
            // `script` runs the child on a pseudo-terminal and copies what
            // it draws to its own stdout.
            Some(script) => {
                let mut c = std::process::Command::new(script);
                c.args(["-qec", &format!("{} {args}", exe.display()), "/dev/null"]);
                c
            }
            None => {
                let mut c = std::process::Command::new(exe);
                c.args(args.split(' '));
                c
            }
        };
        let out = cmd.env("PDDGPU_PROGRESS_CHILD", mode).output().unwrap();
        let text = String::from_utf8_lossy(if under.is_some() {
            &out.stdout
        } else {
            &out.stderr
        })
        .into_owned();
        (out.status.success(), text)
    }

    #[test]
    fn stderr_that_is_not_a_terminal_stays_line_oriented() {
        let (ok, err) = child("lines", None);
        assert!(ok, "{err}");
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("child: ")).collect();
        assert_eq!(ours, ["child: work ...", "child: work: done"], "{err}");
        assert!(!err.contains(['\r', '\x1b']), "{err:?}");
    }

    #[test]
    fn a_terminal_gets_the_same_lines_and_a_live_bar() {
        // bsdutils (Essential on Debian) provides `script`.
        let (ok, tty) = child("live", Some("/usr/bin/script"));
        assert!(ok, "{tty}");
        assert!(tty.contains("child: work ..."), "{tty:?}");
        assert!(tty.contains("child: work: done"), "{tty:?}");
        assert!(tty.contains("/10"), "the bar counts units: {tty:?}");
        assert!(tty.contains('\x1b'), "the bar is redrawn in place: {tty:?}");
    }
}
