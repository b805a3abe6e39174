//! Telling whoever started pddgpud that it is ready: the readiness handshake
//! of Redox's init and pcid-spawner.
//!
//! Follows `daemon/src/lib.rs` of `redox-os/base` as in the Redox snapshot
//! this project boots (`../shared/redox`). The starter (init's `notify`,
//! or pcid-spawner for a driver) makes a pipe, passes its write end to the
//! new process by number in the environment variable `INIT_NOTIFY`, and
//! blocks reading one byte from it:
//!
//! - `0`: ready; the starter goes on (boot continues only once the scheme
//!   is registered, so later programs find `/scheme/pddgpu`);
//! - any other byte: failed with that code (the starter logs it);
//! - end of file (the process exited or closed the pipe without writing):
//!   "exited without notifying readiness".
//!
//! The daemon does not fork: the process that was started is the one that
//! serves. (The crates.io `redox-daemon` crate speaks an older protocol: it
//! forks and the parent waits on a private pipe, which this init and
//! pcid-spawner do not know about.)
//!
//! Plain data over [`Write`], so it is tested on the host; only taking the
//! inherited descriptor is Redox-only.

use std::fmt;
use std::io::{self, Write};

/// The environment variable that holds the pipe's descriptor number.
pub const NOTIFY_ENV: &str = "INIT_NOTIFY";

/// The byte that means "ready".
pub const READY: u8 = 0;

/// The byte pddgpud sends when it gives up before being ready.
pub const FAILED: u8 = 1;

/// Why the readiness pipe could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyError {
    /// `INIT_NOTIFY` is not a descriptor number.
    BadValue(String),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::BadValue(v) => {
                write!(f, "{NOTIFY_ENV}={v:?} is not a descriptor number")
            }
        }
    }
}

impl std::error::Error for NotifyError {}

/// Parses the value of `INIT_NOTIFY`: `Ok(None)` when unset (pddgpud was
/// started by hand, nobody waits).
pub fn parse_notify_fd(value: Option<&str>) -> Result<Option<i32>, NotifyError> {
    match value {
        None => Ok(None),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(fd) if fd >= 0 => Ok(Some(fd)),
            _ => Err(NotifyError::BadValue(v.to_string())),
        },
    }
}

/// The write end of the readiness pipe, used exactly once.
#[derive(Debug)]
pub struct Notifier<W: Write> {
    pipe: Option<W>,
}

impl<W: Write> Notifier<W> {
    /// A notifier writing to `pipe`.
    pub fn new(pipe: W) -> Self {
        Notifier { pipe: Some(pipe) }
    }

    /// A notifier for a process nobody waits for.
    pub fn none() -> Self {
        Notifier { pipe: None }
    }

    /// Whether someone waits for the answer.
    pub fn is_waited_for(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reports ready and closes the pipe.
    pub fn ready(self) -> io::Result<()> {
        self.send(READY)
    }

    /// Reports failure and closes the pipe.
    pub fn fail(self) -> io::Result<()> {
        self.send(FAILED)
    }

    fn send(mut self, byte: u8) -> io::Result<()> {
        match self.pipe.take() {
            Some(mut pipe) => {
                pipe.write_all(&[byte])?;
                pipe.flush()
            }
            None => Ok(()),
        }
    }
}

#[cfg(target_os = "redox")]
/// Takes the readiness pipe named by `INIT_NOTIFY`, if any, and removes the
/// variable so nothing pddgpud might start inherits it.
pub fn notifier_from_env() -> Result<Notifier<std::fs::File>, NotifyError> {
    use std::os::fd::FromRawFd;
    let value = std::env::var(NOTIFY_ENV).ok();
    // At start-up, before pddgpud starts any thread.
    std::env::remove_var(NOTIFY_ENV);
    Ok(match parse_notify_fd(value.as_deref())? {
        // SAFETY: the starter hands this descriptor to this process and
        // nothing else here owns it; the variable is read once, here.
        Some(fd) => Notifier::new(unsafe { std::fs::File::from_raw_fd(fd) }),
        None => Notifier::none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_number_from_the_environment_value() {
        assert_eq!(parse_notify_fd(None), Ok(None));
        assert_eq!(parse_notify_fd(Some("5")), Ok(Some(5)));
        assert_eq!(parse_notify_fd(Some(" 9\n")), Ok(Some(9)));
        for bad in ["", "-1", "x", "99999999999"] {
            let err = parse_notify_fd(Some(bad)).unwrap_err();
            assert!(err.to_string().contains(NOTIFY_ENV), "{err}");
        }
    }

    #[test]
    fn ready_writes_one_zero_byte() {
        let mut out = Vec::new();
        let n = Notifier::new(&mut out);
        assert!(n.is_waited_for());
        n.ready().unwrap();
        assert_eq!(out, [READY]);
    }

    #[test]
    fn failure_writes_one_non_zero_byte() {
        let mut out = Vec::new();
        Notifier::new(&mut out).fail().unwrap();
        assert_eq!(out.len(), 1);
        assert_ne!(out[0], READY);
    }

    #[test]
    fn nobody_waiting_is_not_an_error() {
        let n = Notifier::<Vec<u8>>::none();
        assert!(!n.is_waited_for());
        n.ready().unwrap();
    }

    #[test]
    fn a_closed_pipe_is_reported() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = Notifier::new(Closed).ready().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
