//! [`Driver`]: the PDDGPU driver core — device bring-up, buffer objects
//! with ownership, sharing and quotas, memory statistics, the leak
//! detector, fault handling and recovery, runtime tunables, shutdown.
//!
//! Everything is `Sync` and lock-light: each operation runs in a lane of
//! the [gate](gate) (device-state check, drain at shutdown), touches one
//! owner shard and one BO-table shard briefly (lock order owner → BO), and
//! calls one memory manager; statistics are atomics updated outside every
//! lock; reports read the lock-free [leak tracker](crate::leak). Time is
//! always passed in (`now_ms`), so behaviour is deterministic under test.
//!
//! The work is split by concern:
//! - [`ownership`]: owners, references, exports, charging — the rules;
//! - `lifecycle`: creating and freeing BOs, owner exit;
//! - `share`: extra references, export and import;
//! - `io`: reading and writing BO contents;
//! - `audit`: statistics, the leak check, health, client usage;
//! - `occupancy`: the occupancy map (what lies where in a domain);
//! - `recovery`: device events, fault handling, recovery and shutdown.
//!
//! # Device faults
//! The device model reports events through registers; the driver polls
//! them before every allocation and on [`Driver::tick`]:
//! - device error: both managers go to ERROR (allocations fail until
//!   [`Driver::recover`]);
//! - injected allocation failure: that allocation fails with
//!   [`DriverError::NoSpace`] (exercising callers' retry paths);
//! - corruption of a manager: the driver leaks an allocation inside that
//!   manager, behind the BO table's back — the next audit
//!   ([`Driver::leak_check`]) finds the mismatch, moves the manager to
//!   ERROR, and recovery reclaims the leak;
//! - bad VRAM range: remembered; any VRAM allocation touching it (a new one,
//!   or a BO's when freed) is retired — kept allocated forever — so the bad
//!   memory is never handed out again; BOs on it are listed by
//!   [`Driver::health`].
//!
//! # Recovery
//! [`Driver::recover`] works only on a domain in ERROR. It stops new
//! allocations in that domain, waits for operations in flight, rebuilds the
//! manager from the BO table (plus retired memory) — so every live BO keeps
//! its placement and contents and no later allocation can overlap it — and
//! audits the result.

mod audit;
mod error;
mod faults;
mod gate;
mod io;
mod lifecycle;
mod occupancy;
pub mod ownership;
mod recovery;
mod report;
mod share;
pub mod token;

pub use crate::bo::{BoCreate, BoFlags, BoId, BoInfo, OwnerId, Placement, LABEL_MAX, PAGE_SIZE};
pub use crate::device::{DeviceResources, DeviceState, Domain};
pub use crate::leak::{Audit, AuditVerdict, LeakReport, Record, Suspect, SuspectReason};
pub use crate::stats::{DomainCounters, StatsSnapshot};
pub use crate::tunables::{Tunable, TunableError, Tunables};
pub use error::DriverError;
pub use occupancy::{Extent, OccupancyMap, Occupant};
pub use ownership::AccountId;
pub(crate) use ownership::BoOwnership;
pub use report::{ClientUsage, ExitSummary, Health};
pub use token::{EntropyError, ExportToken, SeededTokens, TokenSource};

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::bo::BoTable;
use crate::device::{DeviceError, DeviceInfo, DeviceModel, MemoryRegion, Mmio};
use crate::gtt::{GttConfig, GttManager};
use crate::leak::LeakTracker;
use crate::manager::{ManagerError, ManagerState};
use crate::stats::MemoryStats;
use crate::vram::{VramConfig, VramManager};
use faults::Faults;
use gate::Gate;
use ownership::Owners;

/// GTT address of byte 0 of the GTT backing.
const GTT_BASE: u64 = 0;

/// Options of [`Driver::with_options`].
pub struct DriverOptions {
    /// Where export tokens come from (see [`token`]). A front end serving
    /// untrusted clients must pass the operating system's random source.
    pub tokens: Box<dyn TokenSource>,
}

impl DriverOptions {
    /// Options whose export tokens come from `tokens`.
    pub fn with_token_source(tokens: Box<dyn TokenSource>) -> Self {
        DriverOptions { tokens }
    }

    /// Options with deterministic tokens that follow from `seed` (tests
    /// and in-process use; see [`SeededTokens`]).
    pub fn with_seed(seed: u64) -> Self {
        Self::with_token_source(Box::new(SeededTokens::new(seed)))
    }
}

impl Default for DriverOptions {
    /// Deterministic tokens from seed 0: not secret (see
    /// [`DriverOptions::tokens`]).
    fn default() -> Self {
        Self::with_seed(0)
    }
}

impl core::fmt::Debug for DriverOptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DriverOptions").finish_non_exhaustive()
    }
}

/// The driver core. `Sync`: share it (e.g. in an `Arc`) between all the
/// threads of a front end.
pub struct Driver {
    info: DeviceInfo,
    mmio: Mmio,
    model: Box<dyn DeviceModel>,
    vram_backing: MemoryRegion,
    gtt_backing: MemoryRegion,
    vram: VramManager,
    gtt: GttManager,
    gate: Gate,
    table: BoTable,
    owners: Owners,
    leaks: LeakTracker,
    stats: MemoryStats,
    tunables: Tunables,
    applied_tunables: AtomicU64,
    faults: spin::Mutex<Faults>,
    bad_range_count: AtomicUsize,
    last_report: spin::Mutex<LeakReport>,
    next_check_ms: AtomicU64,
    free_epochs: [AtomicU64; 2],
    tokens: Box<dyn TokenSource>,
}

impl core::fmt::Debug for Driver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("info", &self.info)
            .field("state", &self.gate.state.get())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Brings the device up: probes it through `resources.model`, reads its
    /// sizes from its registers, checks the backing memory, creates both
    /// memory managers, enables the device and moves to READY. Export
    /// tokens are deterministic ([`DriverOptions::default`]); a server
    /// for untrusted clients uses [`Driver::with_options`].
    pub fn new(resources: DeviceResources, now_ms: u64) -> Result<Driver, DriverError> {
        Self::with_options(resources, DriverOptions::default(), now_ms)
    }

    /// [`new`](Self::new) with explicit options.
    pub fn with_options(
        resources: DeviceResources,
        options: DriverOptions,
        now_ms: u64,
    ) -> Result<Driver, DriverError> {
        let DeviceResources {
            mmio,
            model,
            vram: vram_backing,
            gtt: gtt_backing,
        } = resources;
        let info = model.probe(&mmio)?;
        for (what, region, need) in [
            ("VRAM", &vram_backing, info.vram_size),
            ("GTT", &gtt_backing, info.gtt_size),
        ] {
            if (region.len() as u64) < need {
                return Err(DeviceError::BackingTooSmall {
                    what,
                    len: region.len() as u64,
                    need,
                }
                .into());
            }
        }
        let tunables = Tunables::new();
        let vram = VramManager::new(VramConfig {
            size: info.vram_size,
            visible_size: info.visible_size,
            min_block_size: VramConfig::DEFAULT_MIN_BLOCK_SIZE,
            retry: tunables.retry_policy(Domain::Vram),
        })
        .map_err(|error| DriverError::Manager {
            domain: Domain::Vram,
            error,
        })?;
        let gtt = GttManager::new(GttConfig {
            start: GTT_BASE,
            size: info.gtt_size,
            retry: tunables.retry_policy(Domain::Gtt),
        })
        .map_err(|error| DriverError::Manager {
            domain: Domain::Gtt,
            error,
        })?;
        let interval = tunables.value(Tunable::LeakCheckIntervalMs);
        let driver = Driver {
            info,
            mmio,
            model,
            vram_backing,
            gtt_backing,
            vram,
            gtt,
            gate: Gate::new(),
            table: BoTable::new(),
            owners: Owners::new(),
            leaks: LeakTracker::new(),
            stats: MemoryStats::new(),
            applied_tunables: AtomicU64::new(tunables.generation()),
            tunables,
            faults: spin::Mutex::new(Faults::default()),
            bad_range_count: AtomicUsize::new(0),
            last_report: spin::Mutex::new(LeakReport::default()),
            next_check_ms: AtomicU64::new(now_ms.saturating_add(interval)),
            free_epochs: Default::default(),
            tokens: options.tokens,
        };
        driver.model.enable(&driver.mmio)?;
        let _ = driver
            .gate
            .state
            .transition(DeviceState::INITIALIZING, DeviceState::READY);
        log::info!(
            "pddgpu: {} ready: VRAM {} bytes ({} visible), GTT {} bytes",
            info.name,
            info.vram_size,
            info.visible_size,
            info.gtt_size
        );
        Ok(driver)
    }

    /// What probing found.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The device state.
    pub fn device_state(&self) -> DeviceState {
        self.gate.state.get()
    }

    /// The backing memory of `domain` (BO segments are offsets into it).
    pub fn backing(&self, domain: Domain) -> &MemoryRegion {
        match domain {
            Domain::Vram => &self.vram_backing,
            Domain::Gtt => &self.gtt_backing,
        }
    }

    /// The runtime tunables (see [`crate::tunables`]); changes take effect
    /// at the next operation.
    pub fn tunables(&self) -> &Tunables {
        &self.tunables
    }

    /// BOs freed so far in `domain`. A front end that parks a create that
    /// found no space retries it when this moves.
    pub fn free_epoch(&self, domain: Domain) -> u64 {
        self.free_epochs[domain.index()].load(Ordering::Acquire)
    }

    /// Bytes of `domain` no BO holds right now: a create of `size` bytes
    /// cannot succeed while this is below `size` (it may still fail above
    /// it, for alignment or fragmentation).
    pub fn free_size(&self, domain: Domain) -> u64 {
        let total = match domain {
            Domain::Vram => self.info.vram_size,
            Domain::Gtt => self.info.gtt_size,
        };
        total.saturating_sub(self.manager_used(domain))
    }

    fn sync_tunables(&self) {
        let g = self.tunables.generation();
        if self.applied_tunables.load(Ordering::Relaxed) != g {
            self.vram
                .set_retry_policy(self.tunables.retry_policy(Domain::Vram));
            self.gtt
                .set_retry_policy(self.tunables.retry_policy(Domain::Gtt));
            self.applied_tunables.store(g, Ordering::Relaxed);
        }
    }

    fn manager_state(&self, domain: Domain) -> ManagerState {
        match domain {
            Domain::Vram => self.vram.state(),
            Domain::Gtt => self.gtt.state(),
        }
    }

    fn manager_used(&self, domain: Domain) -> u64 {
        match domain {
            Domain::Vram => self.vram.used_size(),
            Domain::Gtt => self.gtt.get_stats().used_size,
        }
    }

    fn map_manager(&self, domain: Domain, size: u64, error: ManagerError) -> DriverError {
        match error {
            ManagerError::NoSpace { .. } => DriverError::NoSpace {
                domain,
                size,
                retry: self.tunables.retry_policy(domain),
            },
            ManagerError::InvalidArgument(why) => DriverError::InvalidArgument(why),
            error => DriverError::Manager { domain, error },
        }
    }
}
