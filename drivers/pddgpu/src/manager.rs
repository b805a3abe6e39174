//! What the VRAM and GTT managers share: their state machine, their error
//! type and their retry policy.
//!
//! Both managers follow the seed's life cycle, `INITIALIZING → READY →
//! SHUTDOWN`, with `ERROR` reachable from `READY` (a detected inconsistency
//! or an injected fault) and left only through recovery. Every operation
//! checks the state first and fails with [`ManagerError::NotReady`] when the
//! manager cannot serve it.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// Life-cycle state of a memory manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ManagerState {
    /// Being built; not yet serving requests.
    Initializing = 0,
    /// Serving requests.
    Ready = 1,
    /// Shut down for good; nothing is served any more.
    Shutdown = 2,
    /// An inconsistency was detected (or injected); only recovery is allowed.
    Error = 3,
}

impl ManagerState {
    /// The lower-case name used in stats files and logs (`ready`, `error`, …).
    pub const fn name(self) -> &'static str {
        match self {
            ManagerState::Initializing => "initializing",
            ManagerState::Ready => "ready",
            ManagerState::Shutdown => "shutdown",
            ManagerState::Error => "error",
        }
    }

    const fn from_u8(raw: u8) -> Self {
        match raw {
            0 => ManagerState::Initializing,
            1 => ManagerState::Ready,
            2 => ManagerState::Shutdown,
            _ => ManagerState::Error,
        }
    }
}

impl fmt::Display for ManagerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An atomically updated [`ManagerState`], readable without any lock.
///
/// Transitions are compare-and-swap so that two racing callers cannot both
/// "win" a transition (for example two concurrent recoveries).
#[derive(Debug)]
pub struct StateCell(AtomicU8);

impl StateCell {
    /// A cell holding `state`.
    pub const fn new(state: ManagerState) -> Self {
        StateCell(AtomicU8::new(state as u8))
    }

    /// The current state.
    pub fn get(&self) -> ManagerState {
        ManagerState::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Unconditionally moves to `state`.
    pub fn set(&self, state: ManagerState) {
        self.0.store(state as u8, Ordering::Release);
    }

    /// Moves from `from` to `to`; on failure returns the state actually found.
    pub fn transition(&self, from: ManagerState, to: ManagerState) -> Result<(), ManagerState> {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(ManagerState::from_u8)
    }

    /// Records a detected (or injected) inconsistency: READY or
    /// INITIALIZING → ERROR. A manager already in ERROR or shut down stays
    /// as it is. Returns whether this call made the transition.
    pub fn fail(&self) -> bool {
        loop {
            let state = self.get();
            if matches!(state, ManagerState::Error | ManagerState::Shutdown) {
                return false;
            }
            if self.transition(state, ManagerState::Error).is_ok() {
                return true;
            }
        }
    }

    /// Finishes bring-up: INITIALIZING → READY. Fails with
    /// [`ManagerError::WrongState`] from any other state.
    pub fn start(&self) -> Result<(), ManagerError> {
        self.transition(ManagerState::Initializing, ManagerState::Ready)
            .map_err(|state| ManagerError::WrongState {
                action: "start",
                state,
            })
    }

    /// Starts a recovery: ERROR → INITIALIZING, so that nothing else is
    /// served while the allocator is rebuilt. Fails with
    /// [`ManagerError::WrongState`] from any other state.
    pub fn begin_recovery(&self) -> Result<(), ManagerError> {
        self.transition(ManagerState::Error, ManagerState::Initializing)
            .map_err(|state| ManagerError::WrongState {
                action: "recover",
                state,
            })
    }

    /// Succeeds only when the manager is [`ManagerState::Ready`].
    pub fn ensure_ready(&self) -> Result<(), ManagerError> {
        match self.get() {
            ManagerState::Ready => Ok(()),
            state => Err(ManagerError::NotReady { state }),
        }
    }
}

/// How a caller should retry an allocation that failed for lack of space.
///
/// The managers never sleep: they return [`ManagerError::NoSpace`] carrying
/// this policy, and the caller (a front end serving many clients) decides how
/// to wait — typically by parking the request until memory is freed or the
/// delay has passed — without stalling anyone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// How many more attempts a caller may make after the first failure.
    pub count: u32,
    /// How long to wait between attempts, in milliseconds.
    pub delay_ms: u32,
}

impl RetryPolicy {
    /// The seed's VRAM policy: 3 tries, 10 ms apart.
    pub const VRAM_DEFAULT: RetryPolicy = RetryPolicy {
        count: 3,
        delay_ms: 10,
    };
    /// The seed's GTT policy: 3 tries, 5 ms apart.
    pub const GTT_DEFAULT: RetryPolicy = RetryPolicy {
        count: 3,
        delay_ms: 5,
    };
}

/// A [`RetryPolicy`] that can be read and changed at run time without a lock.
#[derive(Debug)]
pub struct RetryCell {
    count: core::sync::atomic::AtomicU32,
    delay_ms: core::sync::atomic::AtomicU32,
}

impl RetryCell {
    /// A cell holding `policy`.
    pub const fn new(policy: RetryPolicy) -> Self {
        RetryCell {
            count: core::sync::atomic::AtomicU32::new(policy.count),
            delay_ms: core::sync::atomic::AtomicU32::new(policy.delay_ms),
        }
    }

    /// The current policy.
    pub fn get(&self) -> RetryPolicy {
        RetryPolicy {
            count: self.count.load(Ordering::Relaxed),
            delay_ms: self.delay_ms.load(Ordering::Relaxed),
        }
    }

    /// Replaces the policy.
    pub fn set(&self, policy: RetryPolicy) {
        self.count.store(policy.count, Ordering::Relaxed);
        self.delay_ms.store(policy.delay_ms, Ordering::Relaxed);
    }
}

/// Errors of the VRAM and GTT managers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The manager is not in [`ManagerState::Ready`].
    #[error("manager is {state}, not ready")]
    NotReady {
        /// The state the manager was found in.
        state: ManagerState,
    },
    /// Not enough free space right now; the caller may retry per `retry`.
    #[error("no space for {size} bytes (retry up to {} times, {} ms apart)", retry.count, retry.delay_ms)]
    NoSpace {
        /// The size that could not be placed.
        size: u64,
        /// How the caller may retry.
        retry: RetryPolicy,
    },
    /// A request parameter is invalid (zero or oversize size, bad alignment,
    /// empty or out-of-bounds range, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A free or remove named memory that is not a live allocation of this
    /// manager (double free, foreign or forged handle, misaligned input).
    #[error("invalid free: {0}")]
    InvalidFree(&'static str),
    /// An exact reservation overlaps memory already in use.
    #[error("range {start:#x}+{size:#x} is already in use")]
    RangeBusy {
        /// Start of the requested range.
        start: u64,
        /// Size of the requested range.
        size: u64,
    },
    /// A state change was asked for from a state that does not allow it
    /// (e.g. recovery of a manager that is not in ERROR).
    #[error("cannot {action} while {state}")]
    WrongState {
        /// What was attempted.
        action: &'static str,
        /// The state the manager was in.
        state: ManagerState,
    },
    /// Recovery found the list of live allocations inconsistent (overlap,
    /// out of bounds, misaligned); the manager stays in ERROR.
    #[error("recovery failed: {0}")]
    RecoveryFailed(&'static str),
}

impl ManagerError {
    /// True when retrying later may succeed (only [`ManagerError::NoSpace`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ManagerError::NoSpace { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_compare_and_swap() {
        let cell = StateCell::new(ManagerState::Initializing);
        assert_eq!(
            cell.ensure_ready(),
            Err(ManagerError::NotReady {
                state: ManagerState::Initializing
            })
        );
        assert!(cell
            .transition(ManagerState::Initializing, ManagerState::Ready)
            .is_ok());
        assert_eq!(
            cell.transition(ManagerState::Initializing, ManagerState::Ready),
            Err(ManagerState::Ready)
        );
        assert!(cell.ensure_ready().is_ok());
        cell.set(ManagerState::Error);
        assert_eq!(cell.get(), ManagerState::Error);
    }

    #[test]
    fn fail_and_recovery_transitions() {
        let cell = StateCell::new(ManagerState::Ready);
        assert_eq!(
            cell.begin_recovery(),
            Err(ManagerError::WrongState {
                action: "recover",
                state: ManagerState::Ready
            })
        );
        assert!(cell.fail());
        assert!(!cell.fail(), "already failed");
        assert_eq!(cell.begin_recovery(), Ok(()));
        assert_eq!(cell.get(), ManagerState::Initializing);
        assert_eq!(cell.start(), Ok(()));
        assert_eq!(
            cell.start(),
            Err(ManagerError::WrongState {
                action: "start",
                state: ManagerState::Ready
            })
        );
        cell.fail();
        cell.set(ManagerState::Shutdown);
        assert!(!cell.fail(), "a shut-down manager stays shut down");
        assert_eq!(cell.get(), ManagerState::Shutdown);
    }

    #[test]
    fn retry_cell_round_trips() {
        let cell = RetryCell::new(RetryPolicy::VRAM_DEFAULT);
        assert_eq!(
            cell.get(),
            RetryPolicy {
                count: 3,
                delay_ms: 10
            }
        );
        cell.set(RetryPolicy::GTT_DEFAULT);
        assert_eq!(
            cell.get(),
            RetryPolicy {
                count: 3,
                delay_ms: 5
            }
        );
        assert!(ManagerError::NoSpace {
            size: 1,
            retry: RetryPolicy::GTT_DEFAULT
        }
        .is_retryable());
        assert!(!ManagerError::InvalidArgument("x").is_retryable());
    }
}
