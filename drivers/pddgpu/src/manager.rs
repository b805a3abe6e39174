//! What the VRAM and GTT managers share, written once: [`Manager`], an
//! allocator behind a lock with the life-cycle state machine, the retry
//! policy handed to callers, and the recovery procedure; plus the error
//! type and [`RetryPolicy`].
//!
//! Life cycle: `INITIALIZING → READY → SHUTDOWN`, with `ERROR` reachable
//! from `READY` (a detected inconsistency or an injected fault) and left
//! only through recovery (`ERROR → INITIALIZING → READY`). Every operation
//! checks the state first and again under the allocator lock, and fails
//! with [`ManagerError::NotReady`] when the manager cannot serve it; so no
//! operation slips into an allocator that a recovery is replacing.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Life-cycle state of a memory manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ManagerState {
    /// Being built; not yet serving requests.
    Initializing,
    /// Serving requests.
    Ready,
    /// Shut down for good; nothing is served any more.
    Shutdown,
    /// An inconsistency was detected (or injected); only recovery is allowed.
    Error,
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

    /// The state stored as `raw` (`state as u8`) in a [`StateCell`].
    const fn from_u8(raw: u8) -> Self {
        const INITIALIZING: u8 = ManagerState::Initializing as u8;
        const READY: u8 = ManagerState::Ready as u8;
        const SHUTDOWN: u8 = ManagerState::Shutdown as u8;
        match raw {
            INITIALIZING => ManagerState::Initializing,
            READY => ManagerState::Ready,
            SHUTDOWN => ManagerState::Shutdown,
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

    /// Finishes bring-up or a recovery: INITIALIZING → READY. Fails with
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// How many more attempts a caller may make after the first failure.
    pub count: u32,
    /// How long to wait between attempts, in milliseconds.
    pub delay_ms: u32,
}

impl RetryPolicy {
    /// The default VRAM policy: 3 retries, 10 ms apart.
    pub const VRAM_DEFAULT: RetryPolicy = RetryPolicy {
        count: 3,
        delay_ms: 10,
    };
    /// The default GTT policy: 3 retries, 5 ms apart.
    pub const GTT_DEFAULT: RetryPolicy = RetryPolicy {
        count: 3,
        delay_ms: 5,
    };
}

/// A [`RetryPolicy`] that can be read and changed at run time without a lock.
#[derive(Debug)]
pub struct RetryCell {
    count: AtomicU32,
    delay_ms: AtomicU32,
}

impl RetryCell {
    /// A cell holding `policy`.
    pub const fn new(policy: RetryPolicy) -> Self {
        RetryCell {
            count: AtomicU32::new(policy.count),
            delay_ms: AtomicU32::new(policy.delay_ms),
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

impl ManagerError {
    /// "No space for `size` bytes"; [`Manager::with_ready`] fills in the
    /// retry policy.
    pub const fn no_space(size: u64) -> Self {
        ManagerError::NoSpace {
            size,
            retry: RetryPolicy {
                count: 0,
                delay_ms: 0,
            },
        }
    }
}

/// An allocator behind a lock, with the life cycle, retry policy and
/// recovery procedure every memory manager shares (see the module docs).
/// The VRAM and GTT managers are each one of these over their allocator,
/// plus their own lock-free counters (they deref to it).
#[derive(Debug)]
pub struct Manager<A> {
    name: &'static str,
    state: StateCell,
    retry: RetryCell,
    allocator: spin::Mutex<A>,
}

impl<A> Manager<A> {
    /// A manager named `name` (in logs) over `allocator`, INITIALIZING
    /// until [`start`](Self::start).
    pub fn new(name: &'static str, allocator: A, retry: RetryPolicy) -> Self {
        Manager {
            name,
            state: StateCell::new(ManagerState::Initializing),
            retry: RetryCell::new(retry),
            allocator: spin::Mutex::new(allocator),
        }
    }

    /// Finishes bring-up: INITIALIZING → READY.
    pub fn start(&self) -> Result<(), ManagerError> {
        self.state.start()
    }

    /// The current state (lock-free).
    pub fn state(&self) -> ManagerState {
        self.state.get()
    }

    /// The retry policy handed out with [`ManagerError::NoSpace`].
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.get()
    }

    /// Changes the retry policy.
    pub fn set_retry_policy(&self, policy: RetryPolicy) {
        self.retry.set(policy);
    }

    /// Records a detected (or injected) inconsistency: READY or
    /// INITIALIZING → ERROR. A shut-down manager stays shut down.
    pub fn mark_error(&self) {
        if self.state.fail() {
            log::warn!("{}: manager marked as failed", self.name);
        }
    }

    /// Shuts the manager down for good (from any state).
    pub fn shutdown(&self) {
        self.state.set(ManagerState::Shutdown);
    }

    /// Fails with [`ManagerError::NotReady`] unless READY (lock-free; for
    /// cheap checks before the real work).
    pub fn ensure_ready(&self) -> Result<(), ManagerError> {
        self.state.ensure_ready()
    }

    /// Runs `op` on the allocator, under its lock, if the manager is READY
    /// — checked again under the lock, so that an error marked or a
    /// recovery started meanwhile stops it. A [`ManagerError::NoSpace`]
    /// from `op` leaves with the retry policy in force.
    pub fn with_ready<T>(
        &self,
        op: impl FnOnce(&mut A) -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        self.state.ensure_ready()?;
        let mut allocator = self.allocator.lock();
        self.state.ensure_ready()?;
        let result = op(&mut allocator);
        drop(allocator);
        result.map_err(|mut e| {
            if let ManagerError::NoSpace { retry, .. } = &mut e {
                *retry = self.retry.get();
            }
            e
        })
    }

    /// Runs `f` on the allocator under its lock, whatever the state.
    pub fn inspect<T>(&self, f: impl FnOnce(&A) -> T) -> T {
        f(&self.allocator.lock())
    }

    /// Recovers from ERROR. The manager is INITIALIZING (serving nothing)
    /// while `rebuild` runs with the allocator locked; `rebuild` builds a
    /// fresh allocator holding exactly the live allocations, verifies it,
    /// and installs it (with the manager's counters) — or fails and leaves
    /// the old one. Then the manager is READY again, or back in ERROR with
    /// `rebuild`'s error.
    ///
    /// The lock is held from rebuild to swap: an operation that passed its
    /// state check before the recovery started either completed before
    /// (and its allocation must then be among the live ones if still held)
    /// or sees the new state under the lock and fails.
    ///
    /// Only from ERROR ([`ManagerError::WrongState`] otherwise).
    pub fn recover(
        &self,
        rebuild: impl FnOnce(&mut A) -> Result<(), ManagerError>,
    ) -> Result<(), ManagerError> {
        self.state.begin_recovery()?;
        let mut allocator = self.allocator.lock();
        let rebuilt = rebuild(&mut allocator);
        drop(allocator);
        match rebuilt {
            Ok(()) => {
                self.state.start().map_err(|e| match e {
                    ManagerError::WrongState { state, .. } => ManagerError::WrongState {
                        action: "finish recovery",
                        state,
                    },
                    e => e,
                })?;
                log::info!("{}: recovered", self.name);
                Ok(())
            }
            Err(e) => {
                let _ = self
                    .state
                    .transition(ManagerState::Initializing, ManagerState::Error);
                Err(e)
            }
        }
    }
}

/// External fragmentation in per mille: how much of `free` bytes is *not*
/// in the largest free run of `largest_free` bytes (0 when everything free
/// is one run, or nothing is free). The same measure for both domains.
pub fn fragmentation_permille(free: u64, largest_free: u64) -> u64 {
    if free == 0 {
        return 0;
    }
    let outside = u128::from(free - largest_free.min(free));
    (outside * 1000 / u128::from(free)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ManagerState::{Error, Initializing, Ready, Shutdown};

    fn not_ready(state: ManagerState) -> ManagerError {
        ManagerError::NotReady { state }
    }

    fn wrong_state(action: &'static str, state: ManagerState) -> ManagerError {
        ManagerError::WrongState { action, state }
    }

    #[test]
    fn transitions_are_compare_and_swap() {
        let cell = StateCell::new(Initializing);
        assert_eq!(cell.ensure_ready(), Err(not_ready(Initializing)));
        assert!(cell.transition(Initializing, Ready).is_ok());
        assert_eq!(cell.transition(Initializing, Ready), Err(Ready));
        assert!(cell.ensure_ready().is_ok());
        cell.set(Error);
        assert_eq!(cell.get(), Error);
    }

    #[test]
    fn fail_and_recovery_transitions() {
        let cell = StateCell::new(Ready);
        assert_eq!(cell.begin_recovery(), Err(wrong_state("recover", Ready)));
        assert!(cell.fail());
        assert!(!cell.fail(), "already failed");
        assert_eq!(cell.begin_recovery(), Ok(()));
        assert_eq!(cell.get(), Initializing);
        assert_eq!(cell.start(), Ok(()));
        assert_eq!(cell.start(), Err(wrong_state("start", Ready)));
        cell.fail();
        cell.set(Shutdown);
        assert!(!cell.fail(), "a shut-down manager stays shut down");
        assert_eq!(cell.get(), Shutdown);
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

    #[test]
    fn the_manager_serves_only_when_ready_and_recovers_only_from_error() {
        let m = Manager::new("test", 10u64, RetryPolicy::GTT_DEFAULT);
        assert_eq!(m.with_ready(|a| Ok(*a)), Err(not_ready(Initializing)));
        m.start().unwrap();
        assert_eq!(m.with_ready(|a| Ok(*a + 1)), Ok(11));
        assert_eq!(
            m.with_ready(|_| Err::<(), _>(ManagerError::no_space(8))),
            Err(ManagerError::NoSpace {
                size: 8,
                retry: RetryPolicy::GTT_DEFAULT
            }),
            "no space leaves with the policy in force"
        );
        assert!(matches!(
            m.recover(|_| Ok(())),
            Err(ManagerError::WrongState { .. })
        ));
        m.mark_error();
        assert_eq!(m.with_ready(|a| Ok(*a)), Err(not_ready(Error)));
        // A failed rebuild keeps the old allocator and the ERROR state.
        assert_eq!(
            m.recover(|a| {
                assert_eq!(m.state(), Initializing);
                assert_eq!(*a, 10);
                Err(ManagerError::RecoveryFailed("no"))
            }),
            Err(ManagerError::RecoveryFailed("no"))
        );
        assert_eq!(m.state(), Error);
        assert_eq!(m.inspect(|a| *a), 10);
        assert_eq!(
            m.recover(|a| {
                *a = 20;
                Ok(())
            }),
            Ok(())
        );
        assert_eq!(m.with_ready(|a| Ok(*a)), Ok(20));
        m.shutdown();
        m.mark_error();
        assert_eq!(m.state(), Shutdown);
    }
}
