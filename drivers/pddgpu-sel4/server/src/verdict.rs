//! The lines the host reads: `PDDGPU-SEL4: STEP <name>` when a step
//! starts, then exactly one of `PDDGPU-SEL4: PASS` or
//! `PDDGPU-SEL4: FAIL <step>: <reason>` (the prefix is the image tool's
//! `serial::SEL4` markers).

use alloc::string::String;
use core::fmt;

/// Starts every line meant for the host.
pub const PREFIX: &str = "PDDGPU-SEL4:";

/// Why the scenario stopped: the step and a one-line reason.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed.
    pub step: &'static str,
    /// What went wrong (one line).
    pub reason: String,
}

/// What every step returns.
pub type StepResult<T = ()> = Result<T, Failure>;

/// Announces `step` and runs it.
pub fn step<T>(name: &'static str, f: impl FnOnce() -> Result<T, String>) -> StepResult<T> {
    sel4::debug_println!("{PREFIX} STEP {name}");
    f().map_err(|reason| Failure { step: name, reason })
}

/// Prints a detail line of the current step (not a marker).
pub fn note(args: fmt::Arguments<'_>) {
    sel4::debug_println!("pddgpu-sel4: {args}");
}

/// The passing verdict.
pub fn pass() {
    sel4::debug_println!("{PREFIX} PASS");
}

/// The failing verdict; the reason is kept on one line.
pub fn fail(failure: &Failure) {
    let reason: String = failure
        .reason
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    sel4::debug_println!("{PREFIX} FAIL {}: {reason}", failure.step);
}

/// `Err(format!(…))` for the closures of [`step`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(alloc::format!($($arg)*))
    };
}

/// Fails the step unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}
