//! Device events and what the driver does about them, recovery of a
//! domain in ERROR, and shutdown (see the module docs of [`super`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::gate::Lane;
use super::{Driver, DriverError};
use crate::bo::Placement;
use crate::device::{DeviceEvents, DeviceState, Domain};
use crate::leak::AuditVerdict;
use crate::manager::{ManagerError, ManagerState};
use crate::vram::VramAllocation;
#[cfg(feature = "fault-injection")]
use {super::faults::Faults, crate::bo::BoFlags, crate::range::InsertMode};

/// Size of an allocation leaked by corruption injection.
#[cfg(feature = "fault-injection")]
const PHANTOM_SIZE: u64 = 4096;

/// The device events this build acts on: injected faults only with the
/// `fault-injection` feature.
fn handled_events() -> DeviceEvents {
    let injected =
        DeviceEvents::ALLOC_FAULT | DeviceEvents::CORRUPT_VRAM | DeviceEvents::CORRUPT_GTT;
    if cfg!(feature = "fault-injection") {
        DeviceEvents::all()
    } else {
        DeviceEvents::all() - injected
    }
}

impl Driver {
    /// Puts `domain`'s manager into ERROR, remembering why.
    pub(super) fn fail_domain(&self, domain: Domain, cause: String) {
        log::error!("pddgpu: {domain} manager failed: {cause}");
        {
            let mut f = self.faults.lock();
            f.causes[domain.index()].get_or_insert(cause);
        }
        match domain {
            Domain::Vram => self.vram.mark_error(),
            Domain::Gtt => self.gtt.mark_error(),
        }
    }

    /// Polls the device and handles its events. When `allocating`, also
    /// consumes an injected allocation failure: true means the current
    /// allocation must fail.
    pub(super) fn poll_device(&self, allocating: bool) -> Result<bool, DriverError> {
        let mut events = self.model.events(&self.mmio)? & handled_events();
        if !allocating {
            events.remove(DeviceEvents::ALLOC_FAULT);
        }
        if events.is_empty() {
            return Ok(false);
        }
        self.handle_events(allocating)
    }

    fn handle_events(&self, allocating: bool) -> Result<bool, DriverError> {
        let mut faults = self.faults.lock();
        let events = self.model.events(&self.mmio)? & handled_events();
        #[cfg(feature = "fault-injection")]
        let fail = self.handle_injected(events, allocating, &mut faults)?;
        #[cfg(not(feature = "fault-injection"))]
        let fail = {
            let _ = allocating;
            false
        };
        if events.contains(DeviceEvents::ERROR) {
            self.model.acknowledge(&self.mmio, DeviceEvents::ERROR)?;
            faults.device_errors += 1;
            drop(faults);
            for d in Domain::ALL {
                self.fail_domain(d, "the device reported an internal error".to_string());
            }
            faults = self.faults.lock();
        }
        if events.contains(DeviceEvents::BAD_RANGE) {
            let range = self.model.bad_range(&self.mmio)?;
            self.model
                .acknowledge(&self.mmio, DeviceEvents::BAD_RANGE)?;
            if let Some(r) = range {
                let r = r.start.min(self.info.vram_size)..r.end.min(self.info.vram_size);
                if !r.is_empty() && !faults.bad_ranges.contains(&r) {
                    log::warn!("pddgpu: bad VRAM range {:#x}..{:#x}", r.start, r.end);
                    faults.bad_ranges.push(r);
                    self.bad_range_count
                        .store(faults.bad_ranges.len(), Ordering::Release);
                }
            }
        }
        Ok(fail)
    }

    /// Injected faults: consumes an allocation failure (when `allocating`;
    /// true means the current allocation must fail), and corrupts a
    /// manager's bookkeeping on request by leaking an allocation inside it,
    /// behind the BO table's back, for the audit to find.
    #[cfg(feature = "fault-injection")]
    fn handle_injected(
        &self,
        events: DeviceEvents,
        allocating: bool,
        faults: &mut Faults,
    ) -> Result<bool, DriverError> {
        let mut fail = false;
        if allocating && events.contains(DeviceEvents::ALLOC_FAULT) {
            fail = self.model.take_alloc_fault(&self.mmio)?;
        }
        if events.contains(DeviceEvents::CORRUPT_VRAM) {
            self.model
                .acknowledge(&self.mmio, DeviceEvents::CORRUPT_VRAM)?;
            match self.vram.alloc(PHANTOM_SIZE, 0, BoFlags::empty()) {
                Ok(a) => faults.phantoms_vram.push(a),
                Err(e) => log::warn!("pddgpu: cannot inject VRAM corruption: {e}"),
            }
        }
        if events.contains(DeviceEvents::CORRUPT_GTT) {
            self.model
                .acknowledge(&self.mmio, DeviceEvents::CORRUPT_GTT)?;
            match self.gtt.alloc(PHANTOM_SIZE, 0, None, InsertMode::Best) {
                Ok(n) => faults.phantoms_gtt.push(n),
                Err(e) => log::warn!("pddgpu: cannot inject GTT corruption: {e}"),
            }
        }
        Ok(fail)
    }

    /// Recovers `domain` from ERROR: stops its allocations, waits for
    /// operations in flight, rebuilds the manager from the BO table (and
    /// retired bad memory), and audits. Live BOs keep their placement and
    /// contents; memory leaked inside the allocator is reclaimed.
    pub fn recover(&self, domain: Domain) -> Result<(), DriverError> {
        let state = self.gate.state.get();
        if state != DeviceState::READY {
            return Err(if state.contains(DeviceState::SHUTDOWN) {
                DriverError::ShuttingDown
            } else {
                DriverError::NotReady
            });
        }
        if self.manager_state(domain) != ManagerState::Error {
            return Err(DriverError::WrongState {
                action: "recover",
                domain,
                reason: "the manager is not in ERROR",
            });
        }
        if !self.gate.begin_recovery(domain) {
            return Err(DriverError::WrongState {
                action: "recover",
                domain,
                reason: "a recovery is already running",
            });
        }
        self.gate.drain(Lane::Domain(domain));
        let result = match domain {
            Domain::Vram => {
                let mut live: Vec<VramAllocation> = self.live_placements(|p| match p {
                    Placement::Vram(a) => Some(a.clone()),
                    Placement::Gtt(_) => None,
                });
                live.extend(self.faults.lock().retired.iter().cloned());
                self.vram.recover(live.iter())
            }
            Domain::Gtt => {
                let live = self.live_placements(|p| match p {
                    Placement::Gtt(n) => Some(*n),
                    Placement::Vram(_) => None,
                });
                self.gtt.recover(live.iter())
            }
        };
        if result.is_ok() {
            let mut f = self.faults.lock();
            f.causes[domain.index()] = None;
            #[cfg(feature = "fault-injection")]
            match domain {
                Domain::Vram => f.phantoms_vram.clear(),
                Domain::Gtt => f.phantoms_gtt.clear(),
            }
        }
        self.gate.end_recovery(domain);
        result.map_err(|error| DriverError::Manager { domain, error })?;
        log::info!("pddgpu: {domain} recovered");
        let audit = self.audit(domain);
        if audit.verdict == AuditVerdict::Mismatch {
            return Err(DriverError::Manager {
                domain,
                error: ManagerError::RecoveryFailed("the audit after recovery does not match"),
            });
        }
        Ok(())
    }

    fn live_placements<T>(&self, mut pick: impl FnMut(&Placement) -> Option<T>) -> Vec<T> {
        let mut v = Vec::new();
        for i in 0..self.table.shard_count() {
            let shard = self.table.shard_at(i);
            v.extend(shard.bos.values().filter_map(|e| pick(&e.placement)));
        }
        v
    }

    /// Shuts down: new operations fail with [`DriverError::ShuttingDown`],
    /// operations in flight finish, then the managers and the device are
    /// shut down and the state becomes SHUTDOWN.
    pub fn shutdown(&self) {
        if !self.gate.begin_shutdown() {
            return;
        }
        self.gate.drain_all();
        self.vram.shutdown();
        self.gtt.shutdown();
        if let Err(e) = self.model.disable(&self.mmio) {
            log::error!("pddgpu: disabling the device failed: {e}");
        }
        self.gate.state.set(DeviceState::SHUTDOWN);
        log::info!("pddgpu: shut down");
    }
}
