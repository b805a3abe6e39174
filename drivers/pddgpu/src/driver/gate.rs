//! The operation gate: device-state checks at the start of every operation,
//! draining at shutdown, and quiescing one domain for recovery or an audit
//! — all without locks on the fast path.
//!
//! Operations run in one of three lanes (VRAM, GTT, other). Entering a lane
//! bumps its `started` counter and then checks the device state (and, for a
//! domain lane, whether that domain is being recovered); leaving bumps
//! `finished`. Both sides use sequentially consistent operations, so a
//! shutdown or recovery that sets its flag and then sees `started ==
//! finished` knows that every operation that missed the flag is done, and
//! every later one will see it.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::error::DriverError;
use crate::device::{DeviceState, DeviceStateCell, Domain};

/// An operation lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Touches VRAM allocator state.
    Domain(Domain),
    /// Touches no allocator state (info, I/O, export, import).
    Other,
}

/// What to do when the lane's domain is being recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fail with the manager's not-ready error (allocations).
    FailFast,
    /// Wait until recovery is over (frees, which must not fail).
    Wait,
}

/// One lane's operation counts; each lane's pair sits on its own cache line
/// (see `Gate::lanes`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub started: AtomicU64,
    pub finished: AtomicU64,
}

impl Counters {
    /// True when no operation was in the lane at some instant between the
    /// two loads (`finished` is loaded first).
    pub fn is_idle(&self) -> bool {
        let f = self.finished.load(Ordering::SeqCst);
        self.started.load(Ordering::SeqCst) == f
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Gate {
    pub state: DeviceStateCell,
    /// One cache line per lane, so threads in different lanes do not
    /// contend on a shared line.
    lanes: [CachePadded<Counters>; 3],
    recovering: [AtomicBool; 2],
}

/// Proof of being inside a lane; leaving happens on drop.
pub(crate) struct Pass<'a> {
    counters: &'a Counters,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let finished = self.counters.finished.fetch_add(1, Ordering::SeqCst);
        debug_assert!(
            finished < self.counters.started.load(Ordering::SeqCst),
            "a lane finished more operations than it started"
        );
    }
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Domain(d) => d.index(),
        Lane::Other => 2,
    }
}

impl Gate {
    pub fn new() -> Self {
        Gate {
            state: DeviceStateCell::new(DeviceState::INITIALIZING),
            lanes: Default::default(),
            recovering: Default::default(),
        }
    }

    pub fn counters(&self, lane: Lane) -> &Counters {
        &self.lanes[lane_index(lane)]
    }

    /// Enters `lane` if the device is READY (and, for a domain lane, the
    /// domain is not being recovered, per `mode`).
    pub fn enter(&self, lane: Lane, mode: Mode) -> Result<Pass<'_>, DriverError> {
        let counters = self.counters(lane);
        loop {
            counters.started.fetch_add(1, Ordering::SeqCst);
            let pass = Pass { counters };
            let state = self.state.get();
            if state != DeviceState::READY {
                return Err(if state.contains(DeviceState::SHUTDOWN) {
                    DriverError::ShuttingDown
                } else {
                    DriverError::NotReady
                });
            }
            let Lane::Domain(d) = lane else {
                return Ok(pass);
            };
            if !self.recovering[d.index()].load(Ordering::SeqCst) {
                return Ok(pass);
            }
            drop(pass);
            match mode {
                Mode::FailFast => {
                    return Err(DriverError::WrongState {
                        action: "allocate in",
                        domain: d,
                        reason: "the domain is being recovered",
                    })
                }
                Mode::Wait => {
                    while self.recovering[d.index()].load(Ordering::SeqCst) {
                        core::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// Waits until no operation that missed a flag set before this call is
    /// still in `lane`.
    pub fn drain(&self, lane: Lane) {
        while !self.counters(lane).is_idle() {
            core::hint::spin_loop();
        }
    }

    /// Marks `domain` as being recovered; false if it already was.
    pub fn begin_recovery(&self, domain: Domain) -> bool {
        self.recovering[domain.index()]
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Ends a recovery begun with [`begin_recovery`](Self::begin_recovery).
    pub fn end_recovery(&self, domain: Domain) {
        self.recovering[domain.index()].store(false, Ordering::SeqCst);
    }

    /// READY → READY|SHUTDOWN; false if the device was not READY.
    pub fn begin_shutdown(&self) -> bool {
        self.state
            .transition(
                DeviceState::READY,
                DeviceState::READY | DeviceState::SHUTDOWN,
            )
            .is_ok()
    }

    /// Waits for every lane to drain.
    pub fn drain_all(&self) {
        for lane in [
            Lane::Domain(Domain::Vram),
            Lane::Domain(Domain::Gtt),
            Lane::Other,
        ] {
            self.drain(lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_checks_state_and_recovery() {
        let g = Gate::new();
        assert_eq!(
            g.enter(Lane::Other, Mode::Wait).err(),
            Some(DriverError::NotReady)
        );
        g.state.set(DeviceState::READY);
        let p = g.enter(Lane::Domain(Domain::Gtt), Mode::FailFast).unwrap();
        assert!(!g.counters(Lane::Domain(Domain::Gtt)).is_idle());
        drop(p);
        assert!(g.counters(Lane::Domain(Domain::Gtt)).is_idle());
        assert!(g.begin_recovery(Domain::Vram));
        assert!(!g.begin_recovery(Domain::Vram));
        assert!(matches!(
            g.enter(Lane::Domain(Domain::Vram), Mode::FailFast),
            Err(DriverError::WrongState { .. })
        ));
        assert!(g.enter(Lane::Domain(Domain::Gtt), Mode::FailFast).is_ok());
        g.end_recovery(Domain::Vram);
        assert!(g.enter(Lane::Domain(Domain::Vram), Mode::Wait).is_ok());
        assert!(g.counters(Lane::Domain(Domain::Vram)).is_idle());
        assert!(g.begin_shutdown());
        assert!(!g.begin_shutdown());
        assert_eq!(
            g.enter(Lane::Other, Mode::Wait).err(),
            Some(DriverError::ShuttingDown)
        );
        g.drain_all();
    }
}
