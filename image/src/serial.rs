//! Reading a guest's serial console: the markers the guest's scenario
//! prints, and the verdict they add up to.
//!
//! The guest prints one marker per scenario step and exactly one result
//! line, all starting with its [`Markers::prefix`] (`PDDGPU-IMAGE:` for the
//! Linux guest, `PDDGPU-REDOX:` for the Redox one). The host never trusts
//! the guest to end cleanly: a kernel panic, a timeout or a guest that stops
//! without a result line are all failures, reported with the last step the
//! guest had started.

use std::fmt;
use std::time::Duration;

/// The marker prefix one kind of guest prints, and the lines its kernel
/// prints when it panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Markers {
    /// Starts every marker line: `<prefix> STEP <name>`, `<prefix> PASS`,
    /// `<prefix> FAIL <step>: <reason>`.
    pub prefix: &'static str,
    /// Text that only appears in the console when the guest kernel panics.
    pub panics: &'static [&'static str],
}

/// The Linux guest (its `/init` script and `pddgpu-guest`).
pub const LINUX: Markers = Markers {
    prefix: MARKER,
    panics: &[PANIC_MARKER],
};

/// The Redox guest (`pddgpu-redox-guest`). The Redox kernel's panic handler
/// prints `KERNEL PANIC: <info>` (kernel `src/panic.rs`).
pub const REDOX: Markers = Markers {
    prefix: "PDDGPU-REDOX:",
    panics: &["KERNEL PANIC:"],
};

/// The seL4 root task (`drivers/pddgpu-sel4`). A debug seL4 kernel prints
/// `seL4 called fail` when it cannot boot, and reports a thread fault that
/// has no handler (`vm fault on …`, `Caught cap fault …`); rust-sel4's panic
/// handler prints `panicked at`. The root task has no fault handler, so any
/// of these ends the run.
pub const SEL4: Markers = Markers {
    prefix: "PDDGPU-SEL4:",
    panics: &[
        "seL4 called fail",
        "vm fault on",
        "Caught cap fault",
        "panicked at",
    ],
};

/// The file name of a boot's serial log: the boot with a display device
/// (`gpu`) or the one without (every guest boots both).
pub fn log_file_name(gpu: bool) -> &'static str {
    if gpu {
        "serial-gpu.log"
    } else {
        "serial-no-gpu.log"
    }
}

/// Prefix of every line the Linux guest's `/init` prints for the host.
pub const MARKER: &str = "PDDGPU-IMAGE:";
/// Printed by the guest when a scenario step starts: `PDDGPU-IMAGE: STEP <name>`.
pub const STEP_MARKER: &str = "PDDGPU-IMAGE: STEP ";
/// Printed by the guest when every step passed.
pub const PASS_MARKER: &str = "PDDGPU-IMAGE: PASS";
/// Printed by the guest when a step failed: `PDDGPU-IMAGE: FAIL <step>: <reason>`.
pub const FAIL_MARKER: &str = "PDDGPU-IMAGE: FAIL ";
/// What the Linux kernel prints when it panics (also when `/init` dies).
/// The Linux guest's [`Markers`] are [`LINUX`].
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// What the guest said about the scenario, as far as the serial log shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every step passed.
    Pass,
    /// A step failed; `reason` is what the guest printed after the step name.
    Fail {
        /// The step that failed.
        step: String,
        /// The guest's explanation.
        reason: String,
    },
    /// The guest kernel panicked.
    Panic {
        /// The panic line.
        line: String,
    },
}

/// Consumes serial lines one at a time and decides the [`Verdict`].
///
/// The first decisive line wins: a FAIL after a PASS (or the other way
/// round) cannot change the verdict, but a panic after a PASS does (the
/// guest must also shut down cleanly).
#[derive(Debug)]
pub struct SerialWatch {
    markers: Markers,
    verdict: Option<Verdict>,
    last_step: Option<String>,
    steps: Vec<String>,
}

impl Default for SerialWatch {
    fn default() -> Self {
        Self::with_markers(LINUX)
    }
}

impl SerialWatch {
    /// A watch for the Linux guest that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A watch for a guest that prints `markers`.
    pub fn with_markers(markers: Markers) -> Self {
        Self {
            markers,
            verdict: None,
            last_step: None,
            steps: Vec::new(),
        }
    }

    /// Feeds one line (without its newline). Returns the verdict if this
    /// line decided it.
    pub fn feed(&mut self, line: &str) -> Option<&Verdict> {
        if self.markers.panics.iter().any(|p| line.contains(p)) {
            if !matches!(self.verdict, Some(Verdict::Panic { .. })) {
                self.verdict = Some(Verdict::Panic {
                    line: line.trim().to_string(),
                });
                return self.verdict.as_ref();
            }
            return None;
        }
        let at = line.find(self.markers.prefix)?;
        // What follows the prefix: `STEP <name>`, `PASS` or `FAIL <step>: <reason>`.
        let marker = line[at + self.markers.prefix.len()..].trim();
        if let Some(step) = marker.strip_prefix("STEP ") {
            let step = step.trim().to_string();
            self.steps.push(step.clone());
            self.last_step = Some(step);
            return None;
        }
        if self.verdict.is_some() {
            return None;
        }
        if let Some(rest) = marker.strip_prefix("FAIL ") {
            let (step, reason) = match rest.split_once(": ") {
                Some((step, reason)) => (step.trim(), reason.trim()),
                None => (rest.trim(), ""),
            };
            self.verdict = Some(Verdict::Fail {
                step: step.to_string(),
                reason: reason.to_string(),
            });
            return self.verdict.as_ref();
        }
        if marker == "PASS" {
            self.verdict = Some(Verdict::Pass);
            return self.verdict.as_ref();
        }
        None
    }

    /// The verdict so far, if any line decided one.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// The last step the guest announced.
    pub fn last_step(&self) -> Option<&str> {
        self.last_step.as_deref()
    }

    /// Every step the guest announced, in order.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// Turns what was seen into the outcome of a run that ended the way
    /// `end` says.
    pub fn outcome(&self, end: RunEnd) -> Outcome {
        let last_step = self.last_step.clone();
        match (&self.verdict, end) {
            (Some(Verdict::Pass), RunEnd::Exited { .. } | RunEnd::StoppedAfterVerdict) => {
                Outcome::Pass
            }
            (Some(Verdict::Pass), RunEnd::TimedOut { after }) => Outcome::Timeout {
                after,
                last_step: Some("power off after PASS".to_string()),
            },
            (Some(Verdict::Fail { step, reason }), _) => Outcome::Fail {
                step: step.clone(),
                reason: reason.clone(),
            },
            (Some(Verdict::Panic { line }), _) => Outcome::Panic {
                line: line.clone(),
                last_step,
            },
            (None, RunEnd::TimedOut { after }) => Outcome::Timeout { after, last_step },
            (None, RunEnd::Exited { status }) => Outcome::NoResult { status, last_step },
            (None, RunEnd::StoppedAfterVerdict) => Outcome::NoResult {
                status: None,
                last_step,
            },
        }
    }
}

/// How the QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// QEMU exited by itself with this status code (`None`: killed by a signal).
    Exited {
        /// QEMU's exit code.
        status: Option<i32>,
    },
    /// The host stopped QEMU once the verdict was in, for a guest that
    /// cannot power the machine off itself (the Redox guest).
    StoppedAfterVerdict,
    /// The host gave up waiting and killed QEMU.
    TimedOut {
        /// How long it waited.
        after: Duration,
    },
}

/// The final result of one boot, as the tool reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest printed PASS and powered off.
    Pass,
    /// A scenario step failed.
    Fail {
        /// The step that failed.
        step: String,
        /// The guest's explanation.
        reason: String,
    },
    /// The guest kernel panicked.
    Panic {
        /// The panic line.
        line: String,
        /// The step running at the time.
        last_step: Option<String>,
    },
    /// The guest did not finish in time.
    Timeout {
        /// How long the host waited.
        after: Duration,
        /// The step running at the time.
        last_step: Option<String>,
    },
    /// QEMU exited without the guest printing a result.
    NoResult {
        /// QEMU's exit code.
        status: Option<i32>,
        /// The last step the guest started.
        last_step: Option<String>,
    },
}

impl Outcome {
    /// Whether this is a pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass)
    }
}

fn step_suffix(step: &Option<String>) -> String {
    match step {
        Some(step) => format!(" (during step `{step}`)"),
        None => " (before the first step)".to_string(),
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => write!(f, "PASS"),
            Outcome::Fail { step, reason } => write!(f, "FAIL at step `{step}`: {reason}"),
            Outcome::Panic { line, last_step } => {
                write!(
                    f,
                    "FAIL: guest kernel panic{}: {line}",
                    step_suffix(last_step)
                )
            }
            Outcome::Timeout { after, last_step } => write!(
                f,
                "FAIL: timeout after {:.0} s{}",
                after.as_secs_f64(),
                step_suffix(last_step)
            ),
            Outcome::NoResult { status, last_step } => write!(
                f,
                "FAIL: QEMU exited (status {}) without a result line{}",
                status.map_or_else(|| "signal".to_string(), |s| s.to_string()),
                step_suffix(last_step)
            ),
        }
    }
}

/// Makes a raw serial line printable on the host terminal: drops the
/// carriage returns and terminal escape sequences (SeaBIOS clears the
/// screen) and any other control characters.
pub fn sanitize(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e); other escapes: ESC + one char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(lines: &[&str]) -> SerialWatch {
        let mut w = SerialWatch::new();
        for l in lines {
            w.feed(l);
        }
        w
    }

    #[test]
    fn pass_after_steps() {
        let w = watch(&[
            "[    0.000] Linux version 6.1",
            "PDDGPU-IMAGE: STEP probe",
            "bochs-display 64 MiB",
            "PDDGPU-IMAGE: STEP cat stats",
            "PDDGPU-IMAGE: PASS",
        ]);
        assert_eq!(w.verdict(), Some(&Verdict::Pass));
        assert_eq!(w.steps(), ["probe", "cat stats"]);
        assert_eq!(w.outcome(RunEnd::Exited { status: Some(0) }), Outcome::Pass);
    }

    #[test]
    fn fail_line_names_step_and_reason() {
        let w = watch(&[
            "PDDGPU-IMAGE: STEP start pddgpud",
            "pddgpud: no PDDGPU-compatible device",
            "PDDGPU-IMAGE: FAIL start pddgpud: pddgpud exited with status 1",
            "PDDGPU-IMAGE: PASS",
        ]);
        let outcome = w.outcome(RunEnd::Exited { status: Some(0) });
        assert_eq!(
            outcome,
            Outcome::Fail {
                step: "start pddgpud".into(),
                reason: "pddgpud exited with status 1".into()
            }
        );
        assert!(!outcome.is_pass());
        assert!(outcome.to_string().contains("start pddgpud"));
    }

    #[test]
    fn marker_found_after_interleaved_kernel_text() {
        let mut w = SerialWatch::new();
        let decided = w.feed("[    3.1] random: crng init done\u{1b}[0mPDDGPU-IMAGE: PASS\r");
        assert_eq!(decided, Some(&Verdict::Pass));
    }

    #[test]
    fn panic_overrides_pass_and_keeps_step() {
        let w = watch(&[
            "PDDGPU-IMAGE: STEP clients",
            "PDDGPU-IMAGE: PASS",
            "[    4.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
        ]);
        match w.outcome(RunEnd::Exited { status: Some(0) }) {
            Outcome::Panic { line, last_step } => {
                assert!(line.contains("Attempted to kill init"));
                assert_eq!(last_step.as_deref(), Some("clients"));
            }
            other => panic!("expected a panic outcome, got {other:?}"),
        }
    }

    #[test]
    fn silence_is_a_failure() {
        let w = watch(&["PDDGPU-IMAGE: STEP mount"]);
        assert_eq!(w.verdict(), None);
        let timeout = w.outcome(RunEnd::TimedOut {
            after: Duration::from_secs(90),
        });
        assert!(timeout.to_string().contains("timeout after 90 s"));
        assert!(timeout.to_string().contains("mount"));
        let gone = w.outcome(RunEnd::Exited { status: Some(0) });
        assert!(matches!(gone, Outcome::NoResult { .. }));
        assert!(!gone.is_pass());
    }

    #[test]
    fn pass_without_power_off_is_a_timeout() {
        let w = watch(&["PDDGPU-IMAGE: PASS"]);
        let o = w.outcome(RunEnd::TimedOut {
            after: Duration::from_secs(5),
        });
        assert!(!o.is_pass());
    }

    #[test]
    fn redox_markers_and_kernel_panic() {
        let mut w = SerialWatch::with_markers(REDOX);
        // A Linux marker means nothing to a Redox watch.
        assert_eq!(w.feed("PDDGPU-IMAGE: PASS"), None);
        w.feed("PDDGPU-REDOX: STEP ls /scheme/pddgpu");
        w.feed("init: running /scheme/initfs/bin/pddgpu-redox-guest");
        assert_eq!(
            w.feed("PDDGPU-REDOX: FAIL driver: pddgpud not started (no /scheme/pddgpu)"),
            Some(&Verdict::Fail {
                step: "driver".into(),
                reason: "pddgpud not started (no /scheme/pddgpu)".into()
            })
        );
        assert_eq!(w.steps(), ["ls /scheme/pddgpu"]);

        let mut w = SerialWatch::with_markers(REDOX);
        w.feed("PDDGPU-REDOX: STEP clients");
        w.feed("PDDGPU-REDOX: PASS");
        assert_eq!(
            w.outcome(RunEnd::StoppedAfterVerdict),
            Outcome::Pass,
            "a Redox guest that passed is stopped by the host"
        );
        w.feed("KERNEL PANIC: panicked at src/context/memory.rs:12:5: oops");
        match w.outcome(RunEnd::StoppedAfterVerdict) {
            Outcome::Panic { line, last_step } => {
                assert!(line.starts_with("KERNEL PANIC: panicked"), "{line}");
                assert_eq!(last_step.as_deref(), Some("clients"));
            }
            other => panic!("expected a panic outcome, got {other:?}"),
        }
        // The Linux panic text is not a Redox panic.
        let mut w = SerialWatch::with_markers(REDOX);
        assert_eq!(w.feed("Kernel panic - not syncing: x"), None);
    }

    #[test]
    fn sanitize_drops_escapes_and_cr() {
        assert_eq!(sanitize(b"\x1b[?7l\x1b[2J\x1b[0mBooting\r"), "Booting");
        assert_eq!(sanitize(b"a\tb\x07c"), "a\tbc");
        assert_eq!(sanitize(&[0x66, 0xff, 0x6f]), "f\u{fffd}o");
    }
}
