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

mod error;
mod faults;
mod gate;
mod owners;
mod report;

pub use crate::bo::{BoCreate, BoFlags, BoId, BoInfo, OwnerId, Placement, LABEL_MAX};
pub use crate::device::{DeviceResources, DeviceState, Domain};
pub use crate::leak::{Audit, AuditVerdict, LeakReport, Record, Suspect, SuspectReason};
pub use crate::retry::FreeEpochs;
pub use crate::stats::{DomainCounters, StatsSnapshot};
pub use crate::tunables::{Tunable, TunableError, Tunables};
pub use error::DriverError;
pub use report::{ClientUsage, ExitSummary, Health};

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::bo::{BoEntry, BoTable};
use crate::device::{
    DeviceError, DeviceEvents, DeviceInfo, DeviceModel, MemoryError, MemoryRegion, Mmio,
};
use crate::gtt::{GttConfig, GttManager, GttStats};
use crate::leak::{find_suspects, LeakTracker};
use crate::manager::{ManagerError, ManagerState};
use crate::range::InsertMode;
use crate::stats::{Delta, MemoryStats, StatsBatch};
use crate::vram::{VramAllocation, VramConfig, VramFlags, VramManager, VramStats};
use faults::Faults;
use gate::{Gate, Lane, Mode};
use owners::Owners;

/// GTT address of byte 0 of the GTT backing.
const GTT_BASE: u64 = 0;
/// Largest piece of a BO read or written under one table-shard lock.
const IO_CHUNK: usize = 256 << 10;
/// Attempts of an audit to find a moment without allocations in flight.
const AUDIT_ATTEMPTS: u32 = 64;
/// Most allocations one create may retire because they touch bad VRAM.
const MAX_RETIRE_PER_CREATE: usize = 4096;
/// Size of an allocation leaked by corruption injection.
const PHANTOM_SIZE: u64 = 4096;

/// Options of [`Driver::with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverOptions {
    /// Key of the keyed hash that makes export tokens. The daemon should
    /// fill it from a real random source; the default is derived from the
    /// start time and addresses, which is not secret.
    pub token_key: [u64; 2],
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl DriverOptions {
    /// Options with a token key derived from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        DriverOptions {
            token_key: [splitmix(seed), splitmix(seed ^ 0x5555_5555_5555_5555)],
        }
    }
}

impl Default for DriverOptions {
    fn default() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let local = 0u8;
        let seed = (&local as *const u8 as u64)
            ^ (splitmix as fn(u64) -> u64 as usize as u64).rotate_left(17)
            ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(41);
        Self::with_seed(seed)
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
    token_key: [u64; 2],
    token_counter: AtomicU64,
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
    /// memory managers, enables the device and moves to READY.
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
            token_key: options.token_key,
            token_counter: AtomicU64::new(1),
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

    /// Frees per domain so far (see [`crate::retry`]).
    pub fn free_epochs(&self) -> FreeEpochs {
        FreeEpochs {
            vram: self.free_epochs[0].load(Ordering::Acquire),
            gtt: self.free_epochs[1].load(Ordering::Acquire),
        }
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

    /// Puts `domain`'s manager into ERROR, remembering why.
    fn fail_domain(&self, domain: Domain, cause: String) {
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

    // ---- device events -------------------------------------------------

    /// Polls the device and handles its events. When `allocating`, also
    /// consumes an injected allocation failure: true means the current
    /// allocation must fail.
    fn poll_device(&self, allocating: bool) -> Result<bool, DriverError> {
        let mut events = self.model.events(&self.mmio)?;
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
        let events = self.model.events(&self.mmio)?;
        let mut fail = false;
        if allocating && events.contains(DeviceEvents::ALLOC_FAULT) {
            fail = self.model.take_alloc_fault(&self.mmio)?;
        }
        if events.contains(DeviceEvents::ERROR) {
            self.model.acknowledge(&self.mmio, DeviceEvents::ERROR)?;
            faults.device_errors += 1;
            drop(faults);
            for d in Domain::ALL {
                self.fail_domain(d, "the device reported an internal error".to_string());
            }
            faults = self.faults.lock();
        }
        if events.contains(DeviceEvents::CORRUPT_VRAM) {
            self.model
                .acknowledge(&self.mmio, DeviceEvents::CORRUPT_VRAM)?;
            match self.vram.alloc(PHANTOM_SIZE, 0, VramFlags::empty()) {
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

    // ---- buffer objects ------------------------------------------------

    fn validate(&self, req: &BoCreate<'_>) -> Result<(), DriverError> {
        let domain_size = match req.domain {
            Domain::Vram => self.info.vram_size,
            Domain::Gtt => self.info.gtt_size,
        };
        let bad = |why| Err(DriverError::InvalidArgument(why));
        if req.size == 0 {
            return bad("size is zero");
        }
        if req.size > domain_size {
            return bad("size exceeds the domain");
        }
        if req.align != 0 && (!req.align.is_power_of_two() || req.align > domain_size) {
            return bad("alignment must be 0 or a power of two no larger than the domain");
        }
        if req.label.len() > LABEL_MAX {
            return bad("label is longer than 48 bytes");
        }
        if req.flags.bits() & !BoFlags::all().bits() != 0 {
            return bad("unknown flags");
        }
        if req.domain == Domain::Vram
            && req.flags.contains(BoFlags::VISIBLE)
            && req.size > self.info.visible_size
        {
            return bad("size exceeds the CPU-visible window");
        }
        Ok(())
    }

    /// Creates a BO for `owner`; returns its id. Fails without allocating
    /// anything on bad arguments, over quota, or when there is no space
    /// ([`DriverError::NoSpace`] carries the retry policy; the driver never
    /// sleeps).
    pub fn bo_create(
        &self,
        owner: OwnerId,
        req: &BoCreate<'_>,
        now_ms: u64,
    ) -> Result<BoId, DriverError> {
        self.create(owner, req, now_ms, false)
    }

    /// [`bo_create`](Self::bo_create) for a retry of a request that failed
    /// with [`DriverError::NoSpace`] (counted in the retry statistics).
    pub fn bo_create_retry(
        &self,
        owner: OwnerId,
        req: &BoCreate<'_>,
        now_ms: u64,
    ) -> Result<BoId, DriverError> {
        self.create(owner, req, now_ms, true)
    }

    fn create(
        &self,
        owner: OwnerId,
        req: &BoCreate<'_>,
        now_ms: u64,
        retry: bool,
    ) -> Result<BoId, DriverError> {
        self.validate(req)?;
        let d = req.domain;
        let _pass = self.gate.enter(Lane::Domain(d), Mode::FailFast)?;
        self.sync_tunables();
        if retry {
            self.stats.apply(d, &Delta::retry());
        }
        if self.poll_device(true)? {
            self.stats.apply(d, &Delta::failure());
            return Err(DriverError::NoSpace {
                domain: d,
                size: req.size,
                retry: self.tunables.retry_policy(d),
            });
        }
        let reserved = match self.tunables.client_quota() {
            Some(quota) => {
                let mut owners = self.owners.lock(owner);
                let entry = owners.entry(owner).or_default();
                let held = entry.charged_total();
                if held.saturating_add(req.size) > quota {
                    drop(owners);
                    self.stats.apply(d, &Delta::failure());
                    return Err(DriverError::QuotaExceeded {
                        owner,
                        quota,
                        held,
                        requested: req.size,
                    });
                }
                entry.charge(d, req.size);
                true
            }
            None => false,
        };
        let unreserve = || {
            if reserved {
                let mut owners = self.owners.lock(owner);
                if let Some(e) = owners.get_mut(&owner) {
                    e.uncharge(d, req.size);
                    if e.is_empty() {
                        owners.remove(&owner);
                    }
                }
            }
        };
        let placement = match self.allocate(req) {
            Ok(p) => p,
            Err(e) => {
                unreserve();
                if !matches!(e, DriverError::InvalidArgument(_)) {
                    self.stats.apply(d, &Delta::failure());
                }
                return Err(e);
            }
        };
        if req.flags.contains(BoFlags::CLEARED) {
            let region = self.backing(d);
            let cleared = placement
                .segments_iter(req.size, GTT_BASE)
                .try_for_each(|(_, at, len)| region.fill(at, len, 0));
            if let Err(e) = cleared {
                self.release(placement);
                unreserve();
                return Err(DeviceError::Memory(e).into());
            }
        }
        let id = self.table.next_id(d);
        let allocated = placement.allocated_size();
        let visible = match d {
            Domain::Vram => placement.bytes_within(&(0..self.info.visible_size)),
            Domain::Gtt => 0,
        };
        {
            let mut owners = self.owners.lock(owner);
            let mut shard = self.table.shard(id);
            let Some(slot) = self.leaks.take_slot(&mut shard.free_slots) else {
                drop(shard);
                drop(owners);
                self.release(placement);
                unreserve();
                return Err(DriverError::TooManyBos);
            };
            self.leaks
                .publish(slot, id, owner, d, req.size, allocated, now_ms, req.label);
            shard.bos.insert(
                id.0,
                BoEntry {
                    placement,
                    size: req.size,
                    flags: req.flags,
                    creator: owner,
                    created_ms: now_ms,
                    label: req.label.to_string(),
                    holders: smallvec::smallvec![(owner, 1)],
                    token: None,
                    charged: Some(owner),
                    visible_bytes: visible,
                    slot,
                },
            );
            let entry = owners.entry_or_new(owner);
            if reserved {
                entry.uncharge(d, req.size);
            }
            entry.charge(d, req.size);
            entry.held.insert(id.0);
        }
        self.stats
            .apply(d, &Delta::alloc(allocated, req.size, visible));
        Ok(id)
    }

    /// Allocates the memory of a BO (must run in the domain's lane).
    fn allocate(&self, req: &BoCreate<'_>) -> Result<Placement, DriverError> {
        match req.domain {
            Domain::Vram => {
                let mut flags = VramFlags::empty();
                flags.set(
                    VramFlags::CONTIGUOUS,
                    req.flags.contains(BoFlags::CONTIGUOUS),
                );
                flags.set(VramFlags::VISIBLE, req.flags.contains(BoFlags::VISIBLE));
                flags.set(VramFlags::TOPDOWN, req.flags.contains(BoFlags::TOPDOWN));
                for _ in 0..MAX_RETIRE_PER_CREATE {
                    let a = self
                        .vram
                        .alloc(req.size, req.align, flags)
                        .map_err(|e| self.map_manager(Domain::Vram, req.size, e))?;
                    if self.bad_range_count.load(Ordering::Acquire) == 0 {
                        return Ok(Placement::Vram(a));
                    }
                    let mut faults = self.faults.lock();
                    if !faults.touches_bad(&a) {
                        return Ok(Placement::Vram(a));
                    }
                    log::info!(
                        "pddgpu: retiring {} VRAM bytes touching a bad range",
                        a.allocated_size()
                    );
                    faults.retired.push(a);
                }
                Err(self.map_manager(
                    Domain::Vram,
                    req.size,
                    ManagerError::NoSpace {
                        size: req.size,
                        retry: self.tunables.retry_policy(Domain::Vram),
                    },
                ))
            }
            Domain::Gtt => {
                let mode = if req.flags.contains(BoFlags::TOPDOWN) {
                    InsertMode::High
                } else {
                    InsertMode::Best
                };
                self.gtt
                    .alloc(req.size, req.align, None, mode)
                    .map(Placement::Gtt)
                    .map_err(|e| self.map_manager(Domain::Gtt, req.size, e))
            }
        }
    }

    /// Gives a BO's memory back (must run in the domain's lane). Memory on
    /// a bad range is retired instead; a manager in ERROR refuses the free
    /// and its next recovery reclaims the memory.
    fn release(&self, placement: Placement) {
        match placement {
            Placement::Vram(a) => {
                if self.bad_range_count.load(Ordering::Acquire) > 0 {
                    let mut faults = self.faults.lock();
                    if faults.touches_bad(&a) {
                        faults.retired.push(a);
                        return;
                    }
                }
                match self.vram.free(&a) {
                    Ok(()) | Err(ManagerError::NotReady { .. }) => {}
                    Err(e) => self.fail_domain(
                        Domain::Vram,
                        format!("the allocator refused to free a live BO: {e}"),
                    ),
                }
            }
            Placement::Gtt(n) => match self.gtt.free(&n) {
                Ok(()) | Err(ManagerError::NotReady { .. }) => {}
                Err(e) => self.fail_domain(
                    Domain::Gtt,
                    format!("the allocator refused to free a live BO: {e}"),
                ),
            },
        }
    }

    /// Drops one of `owner`'s references to `id`; the BO is freed when its
    /// last reference goes (holders and export). Waits, never fails, while
    /// the BO's domain is being recovered.
    pub fn bo_unref(&self, owner: OwnerId, id: BoId) -> Result<(), DriverError> {
        let d = id.domain().ok_or(DriverError::NoSuchBo)?;
        let _pass = self.gate.enter(Lane::Domain(d), Mode::Wait)?;
        let removed = {
            let mut owners = self.owners.lock(owner);
            let mut shard = self.table.shard(id);
            let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
            if !entry.is_held_by(owner) {
                return Err(DriverError::PermissionDenied);
            }
            if entry.release(owner, false) {
                let charged = entry.charged == Some(owner);
                if charged {
                    entry.charged = None;
                }
                if let Some(oe) = owners.get_mut(&owner) {
                    oe.held.remove(&id.0);
                    if charged {
                        oe.uncharge(d, entry.size);
                    }
                }
                owners.remove_if_empty(owner);
            }
            self.settle(&mut shard, id)
        };
        if let Some(entry) = removed {
            self.free_entry(entry);
        }
        Ok(())
    }

    /// After a change of references: removes the entry if none are left
    /// (returning it), else updates its leak record.
    fn settle(&self, shard: &mut crate::bo::Shard, id: BoId) -> Option<BoEntry> {
        let entry = shard.bos.get(&id.0)?;
        if entry.refcount() > 0 {
            self.leaks.update_holders(
                entry.slot,
                entry.primary_holder(),
                entry.holders.len() as u32,
                entry.token.is_some(),
            );
            return None;
        }
        let entry = shard.bos.remove(&id.0)?;
        self.leaks.retire(entry.slot);
        shard.free_slots.push(entry.slot);
        Some(entry)
    }

    /// Frees a removed entry's memory and accounts for it (in its lane).
    fn free_entry(&self, entry: BoEntry) {
        let d = entry.placement.domain();
        let delta = Delta::free(
            entry.placement.allocated_size(),
            entry.size,
            entry.visible_bytes,
        );
        self.release(entry.placement);
        self.stats.apply(d, &delta);
        self.free_epochs[d.index()].fetch_add(1, Ordering::Release);
    }

    /// Same as [`bo_unref`](Self::bo_unref) (the seed's name).
    pub fn bo_free(&self, owner: OwnerId, id: BoId) -> Result<(), DriverError> {
        self.bo_unref(owner, id)
    }

    /// Describes a BO to one of its holders.
    pub fn bo_info(&self, owner: OwnerId, id: BoId) -> Result<BoInfo, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let shard = self.table.shard(id);
        let entry = shard.bos.get(&id.0).ok_or(DriverError::NoSuchBo)?;
        if !entry.is_held_by(owner) {
            return Err(DriverError::PermissionDenied);
        }
        Ok(entry.info(id, GTT_BASE))
    }

    fn make_token(&self, id: BoId) -> u64 {
        #[allow(deprecated)]
        let mut h = core::hash::SipHasher::new_with_keys(self.token_key[0], self.token_key[1]);
        let n = self.token_counter.fetch_add(1, Ordering::Relaxed);
        core::hash::Hasher::write_u64(&mut h, id.0);
        core::hash::Hasher::write_u64(&mut h, n);
        core::hash::Hasher::finish(&h).max(1)
    }

    /// Exports a BO held by `owner`: returns the token with which others
    /// import it. While exported the BO stays alive even if no owner holds
    /// it (so a client can hand a BO over and exit); exporting again
    /// returns the same token.
    pub fn bo_export(&self, owner: OwnerId, id: BoId) -> Result<u64, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut shard = self.table.shard(id);
        let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
        if !entry.is_held_by(owner) {
            return Err(DriverError::PermissionDenied);
        }
        if let Some(t) = entry.token {
            return Ok(t);
        }
        let token = self.make_token(id);
        entry.token = Some(token);
        self.leaks.update_holders(
            entry.slot,
            entry.primary_holder(),
            entry.holders.len() as u32,
            true,
        );
        Ok(token)
    }

    /// Withdraws a BO's export (its token stops working). Only a holder
    /// may; the BO itself stays (the holder still has it).
    pub fn bo_unexport(&self, owner: OwnerId, id: BoId) -> Result<(), DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut shard = self.table.shard(id);
        let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
        if !entry.is_held_by(owner) {
            return Err(DriverError::PermissionDenied);
        }
        entry.token = None;
        self.leaks.update_holders(
            entry.slot,
            entry.primary_holder(),
            entry.holders.len() as u32,
            false,
        );
        Ok(())
    }

    /// Imports an exported BO: `owner` gets a reference to it.
    pub fn bo_import(&self, owner: OwnerId, id: BoId, token: u64) -> Result<BoInfo, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut owners = self.owners.lock(owner);
        let mut shard = self.table.shard(id);
        let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
        if token == 0 || entry.token != Some(token) {
            return Err(DriverError::BadToken);
        }
        entry.hold(owner);
        owners.entry(owner).or_default().held.insert(id.0);
        self.leaks.update_holders(
            entry.slot,
            entry.primary_holder(),
            entry.holders.len() as u32,
            true,
        );
        Ok(entry.info(id, GTT_BASE))
    }

    /// Reads BO contents at `offset` into `buf`; returns the bytes read
    /// (short at the end of the BO, 0 at its end).
    pub fn bo_read(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, DriverError> {
        self.bo_io(owner, id, offset, buf.len(), |region, at, range| {
            region.copy_out(at, &mut buf[range])
        })
    }

    /// Writes `buf` into BO contents at `offset`; returns the bytes written
    /// (short at the end of the BO).
    pub fn bo_write(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        buf: &[u8],
    ) -> Result<usize, DriverError> {
        self.bo_io(owner, id, offset, buf.len(), |region, at, range| {
            region.copy_in(at, &buf[range])
        })
    }

    /// Copies in pieces of at most `IO_CHUNK` bytes, each under the BO's
    /// shard lock, so the BO cannot be freed (and its memory reused)
    /// during a copy, and no lock is held for long.
    fn bo_io(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        len: usize,
        mut op: impl FnMut(&MemoryRegion, u64, Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<usize, DriverError> {
        let d = id.domain().ok_or(DriverError::NoSuchBo)?;
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let region = self.backing(d);
        let mut done = 0usize;
        loop {
            let shard = self.table.shard(id);
            let entry = match shard.bos.get(&id.0) {
                Some(e) if e.is_held_by(owner) => e,
                // Freed by the same owner meanwhile: report what was done.
                _ if done > 0 => return Ok(done),
                Some(_) => return Err(DriverError::PermissionDenied),
                None => return Err(DriverError::NoSuchBo),
            };
            if offset > entry.size {
                return Err(DriverError::OutOfBounds);
            }
            let total = (len as u64).min(entry.size - offset) as usize;
            if done >= total {
                return Ok(done);
            }
            let end = total.min(done + IO_CHUNK);
            let (lo, hi) = (offset + done as u64, offset + end as u64);
            for (bo_at, back_at, seg_len) in entry.placement.segments_iter(entry.size, GTT_BASE) {
                let s = lo.max(bo_at);
                let e = hi.min(bo_at + seg_len);
                if s >= e {
                    continue;
                }
                let buf_start = (s - offset) as usize;
                let buf_end = (e - offset) as usize;
                op(region, back_at + (s - bo_at), buf_start..buf_end)
                    .map_err(|e| DriverError::Device(e.into()))?;
            }
            done = end;
        }
    }

    /// Frees everything `owner` holds, in one batch: its references are
    /// dropped, BOs nobody else holds are freed, the statistics are updated
    /// once. This is what a front end calls when a client goes away.
    pub fn owner_exit(&self, owner: OwnerId) -> ExitSummary {
        let mut summary = ExitSummary {
            owner,
            ..ExitSummary::default()
        };
        let Ok(_vram) = self.gate.enter(Lane::Domain(Domain::Vram), Mode::Wait) else {
            return summary;
        };
        let Ok(_gtt) = self.gate.enter(Lane::Domain(Domain::Gtt), Mode::Wait) else {
            return summary;
        };
        let Some(entry) = self.owners.take(owner) else {
            return summary;
        };
        let mut ids: Vec<u64> = entry.held.into_iter().collect();
        ids.sort_unstable_by_key(|&id| (BoTable::shard_index(BoId(id)), id));
        let mut freed = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let shard_no = BoTable::shard_index(BoId(ids[i]));
            let mut shard = self.table.shard_at(shard_no);
            while i < ids.len() && BoTable::shard_index(BoId(ids[i])) == shard_no {
                let id = BoId(ids[i]);
                i += 1;
                let Some(e) = shard.bos.get_mut(&id.0) else {
                    continue;
                };
                summary.released += 1;
                e.release(owner, true);
                if e.charged == Some(owner) {
                    e.charged = None;
                }
                match self.settle(&mut shard, id) {
                    Some(entry) => freed.push(entry),
                    None => summary.still_shared += 1,
                }
            }
        }
        self.free_batch(freed, &mut summary);
        summary
    }

    /// Frees removed entries with one statistics update.
    fn free_batch(&self, freed: Vec<BoEntry>, summary: &mut ExitSummary) {
        let mut batch = StatsBatch::new();
        let mut frees = [0u64; 2];
        for entry in freed {
            let d = entry.placement.domain();
            let bytes = entry.placement.allocated_size();
            batch.add(d, &Delta::free(bytes, entry.size, entry.visible_bytes));
            frees[d.index()] += 1;
            summary.freed += 1;
            match d {
                Domain::Vram => summary.vram_bytes_freed += bytes,
                Domain::Gtt => summary.gtt_bytes_freed += bytes,
            }
            self.release(entry.placement);
        }
        self.stats.apply_batch(&batch);
        for d in Domain::ALL {
            if frees[d.index()] > 0 {
                self.free_epochs[d.index()].fetch_add(frees[d.index()], Ordering::Release);
            }
        }
    }

    /// Frees every exported BO that no owner holds any more (report 3 of
    /// the leak check), as an administrator's clean-up.
    pub fn reclaim_unheld_exports(&self) -> ExitSummary {
        let mut summary = ExitSummary::default();
        let Ok(_vram) = self.gate.enter(Lane::Domain(Domain::Vram), Mode::Wait) else {
            return summary;
        };
        let Ok(_gtt) = self.gate.enter(Lane::Domain(Domain::Gtt), Mode::Wait) else {
            return summary;
        };
        let mut freed = Vec::new();
        for i in 0..self.table.shard_count() {
            let mut shard = self.table.shard_at(i);
            let orphans: Vec<u64> = shard
                .bos
                .iter()
                .filter(|(_, e)| e.holders.is_empty())
                .map(|(id, _)| *id)
                .collect();
            for id in orphans {
                if let Some(e) = shard.bos.get_mut(&id) {
                    e.token = None;
                }
                summary.released += 1;
                freed.extend(self.settle(&mut shard, BoId(id)));
            }
        }
        self.free_batch(freed, &mut summary);
        summary
    }

    /// Live BOs as the leak detector sees them (lock-free).
    pub fn bo_list(&self) -> Vec<Record> {
        let mut v = Vec::new();
        self.leaks.scan(true, |r| v.push(r));
        v.sort_by_key(|r| r.id);
        v
    }

    // ---- statistics, leaks, health --------------------------------------

    /// A consistent snapshot of the memory statistics (never blocks
    /// allocation).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The seed's trylock path: a consistent snapshot, or `None` ("busy")
    /// if `attempts` reads all overlapped an update. Never waits.
    pub fn try_stats(&self, attempts: u32) -> Option<StatsSnapshot> {
        self.stats.try_snapshot(attempts)
    }

    /// The VRAM manager's statistics.
    pub fn vram_stats(&self) -> VramStats {
        self.sync_tunables();
        self.vram.get_stats()
    }

    /// The GTT manager's statistics.
    pub fn gtt_stats(&self) -> GttStats {
        self.sync_tunables();
        self.gtt.get_stats()
    }

    /// Audits `domain`: allocator usage vs. live BOs (+ retired memory).
    fn audit(&self, domain: Domain) -> Audit {
        let counters = self.gate.counters(Lane::Domain(domain));
        let mut audit = Audit {
            domain,
            allocator_used: 0,
            live_bytes: 0,
            reserved_bytes: 0,
            live_bos: 0,
            verdict: AuditVerdict::Inconclusive,
        };
        for _ in 0..AUDIT_ATTEMPTS {
            let finished = counters.finished.load(Ordering::SeqCst);
            let state = self.manager_state(domain);
            audit.allocator_used = self.manager_used(domain);
            let (bos, bytes) = self.leaks.totals()[domain.index()];
            audit.live_bos = bos;
            audit.live_bytes = bytes;
            audit.reserved_bytes = match domain {
                Domain::Vram => self.faults.lock().retired_bytes(),
                Domain::Gtt => 0,
            };
            if state != ManagerState::Ready {
                audit.verdict = AuditVerdict::Skipped;
                return audit;
            }
            if counters.started.load(Ordering::SeqCst) != finished {
                core::hint::spin_loop();
                continue;
            }
            if audit.difference() == 0 {
                audit.verdict = AuditVerdict::Clean;
            } else {
                audit.verdict = AuditVerdict::Mismatch;
                self.fail_domain(
                    domain,
                    format!(
                        "audit: the allocator uses {} bytes but live BOs hold {} (+{} retired)",
                        audit.allocator_used, audit.live_bytes, audit.reserved_bytes
                    ),
                );
            }
            return audit;
        }
        audit
    }

    /// Runs the leak check now: the audit of both domains (a mismatch moves
    /// the manager to ERROR), old BOs of owners above the size threshold,
    /// and exported BOs nobody holds. Also remembered as the last report.
    pub fn leak_check(&self, now_ms: u64) -> LeakReport {
        let threshold = self.tunables.value(Tunable::LeakThresholdBytes);
        let age = self.tunables.value(Tunable::LeakAgeMs);
        let audits = Domain::ALL.iter().map(|&d| self.audit(d)).collect();
        let (suspects, live) = find_suspects(&self.leaks, now_ms, threshold, age);
        let report = LeakReport {
            checked_ms: now_ms,
            audits,
            suspects,
            live_bos: live,
            threshold_bytes: threshold,
            age_ms: age,
        };
        if report.has_mismatch() || !report.suspects.is_empty() {
            log::warn!(
                "pddgpu: leak check: {} suspects, audit mismatch: {}",
                report.suspects.len(),
                report.has_mismatch()
            );
        }
        *self.last_report.lock() = report.clone();
        let interval = self.tunables.value(Tunable::LeakCheckIntervalMs);
        self.next_check_ms
            .store(now_ms.saturating_add(interval), Ordering::Relaxed);
        report
    }

    /// The report of the last leak check (empty if none ran yet).
    pub fn last_leak_report(&self) -> LeakReport {
        self.last_report.lock().clone()
    }

    /// Periodic work, driven by the caller's clock: polls the device for
    /// events and, when the leak monitor is on and the interval has passed,
    /// runs the leak check.
    pub fn tick(&self, now_ms: u64) {
        if self.gate.state.get() == DeviceState::READY {
            if let Err(e) = self.poll_device(false) {
                log::error!("pddgpu: device poll failed: {e}");
            }
        }
        if self.tunables.value(Tunable::LeakMonitor) != 0
            && now_ms >= self.next_check_ms.load(Ordering::Relaxed)
        {
            self.leak_check(now_ms);
        }
    }

    /// `ok`, or the list of problems: device not READY, managers not READY
    /// (with the reason), live BOs on bad VRAM.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        let state = self.gate.state.get();
        if state != DeviceState::READY {
            problems.push(format!("device is {}", state.name()));
        }
        let faults = self.faults.lock();
        for d in Domain::ALL {
            let ms = self.manager_state(d);
            if ms != ManagerState::Ready {
                match &faults.causes[d.index()] {
                    Some(cause) => problems.push(format!("{d} manager is {ms}: {cause}")),
                    None => problems.push(format!("{d} manager is {ms}")),
                }
            }
        }
        let bad = faults.bad_ranges.clone();
        drop(faults);
        if !bad.is_empty() {
            let mut on_bad: Vec<BoId> = Vec::new();
            for i in 0..self.table.shard_count() {
                let shard = self.table.shard_at(i);
                on_bad.extend(
                    shard
                        .bos
                        .iter()
                        .filter(|(_, e)| bad.iter().any(|r| e.placement.overlaps(r)))
                        .map(|(id, _)| BoId(*id)),
                );
            }
            on_bad.sort_unstable();
            for id in on_bad {
                problems.push(format!("BO {id} lies on bad VRAM"));
            }
        }
        Health { problems }
    }

    /// Reported bad VRAM ranges and the bytes retired because of them.
    pub fn bad_vram(&self) -> (Vec<Range<u64>>, u64) {
        let f = self.faults.lock();
        (f.bad_ranges.clone(), f.retired_bytes())
    }

    /// Per-client usage, ordered by owner.
    pub fn clients(&self) -> Vec<ClientUsage> {
        let quota = self.tunables.client_quota();
        let mut v = Vec::new();
        self.owners.for_each(|owner, e| {
            v.push(ClientUsage {
                owner,
                bo_count: e.held.len() as u64,
                vram_bytes: e.charged[0],
                gtt_bytes: e.charged[1],
                quota,
            })
        });
        v.sort_by_key(|c| c.owner);
        v
    }

    // ---- recovery and shutdown -------------------------------------------

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
