//! The life of a BO: validation, creation (quota, allocation, clearing,
//! publication), dropping references, freeing, and an owner's exit.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::gate::{Lane, Mode};
use super::ownership::{held_entry, AccountId, BoOwnership, ChargeLimits, Refusal};
use super::{Driver, DriverError, ExitSummary, GTT_BASE};
use crate::bo::{
    BoCreate, BoEntry, BoFlags, BoId, BoInfo, BoTable, OwnerId, Placement, Shard, LABEL_MAX,
    PAGE_SIZE,
};
use crate::device::{DeviceError, Domain};
use crate::manager::ManagerError;
use crate::range::InsertMode;
use crate::stats::{Delta, StatsBatch};

/// Most allocations one create may retire because they touch bad VRAM.
const MAX_RETIRE_PER_CREATE: usize = 4096;

impl Driver {
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
        self.validate(req)?;
        let d = req.domain;
        let _pass = self.gate.enter(Lane::Domain(d), Mode::FailFast)?;
        self.sync_tunables();
        if self.poll_device(true)? {
            self.stats.apply(d, &Delta::failure());
            return Err(DriverError::NoSpace {
                domain: d,
                size: req.size,
                retry: self.tunables.retry_policy(d),
            });
        }
        // The quotas are charged what the allocator takes (see
        // `ownership`): reserve the whole pages now, so an owner (or
        // account) over its quota allocates nothing, and settle the
        // difference (the buddy's rounding) once the allocation is known.
        let limits = self.charge_limits(d);
        let reserved = if limits.any() {
            req.size.next_multiple_of(PAGE_SIZE)
        } else {
            0
        };
        if reserved > 0 {
            let mut owners = self.owners.lock(owner);
            let entry = owners.entry_or_new(owner);
            if let Err(refusal) = entry.try_charge(d, reserved, limits) {
                owners.remove_if_empty(owner);
                drop(owners);
                self.stats.apply(d, &Delta::failure());
                return Err(self.quota_error(owner, d, limits, refusal, reserved));
            }
        }
        let unreserve = || {
            if reserved > 0 {
                let mut owners = self.owners.lock(owner);
                if let Some(e) = owners.get_mut(&owner) {
                    e.uncharge(d, reserved);
                }
                owners.remove_if_empty(owner);
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
            // Every byte the allocator took, not only the requested ones:
            // the rest of the last page is mappable too.
            let region = self.backing(d);
            let base = match d {
                Domain::Vram => 0,
                Domain::Gtt => GTT_BASE,
            };
            let cleared = placement.try_for_each_reserved(base, |at, len| region.fill(at, len, 0));
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
            let entry = owners.entry_or_new(owner);
            // Settle the reservation to the allocated size.
            if let Err(refusal) = entry.settle(d, reserved, allocated, limits) {
                entry.uncharge(d, reserved);
                owners.remove_if_empty(owner);
                drop(owners);
                self.release(placement);
                self.stats.apply(d, &Delta::failure());
                return Err(self.quota_error(owner, d, limits, refusal, allocated));
            }
            let mut shard = self.table.shard(id);
            let Some(slot) = self.leaks.take_slot(&mut shard.free_slots) else {
                drop(shard);
                let entry = owners.entry_or_new(owner);
                entry.uncharge(d, allocated);
                owners.remove_if_empty(owner);
                drop(owners);
                self.release(placement);
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
                    created_ms: now_ms,
                    label: req.label.to_string(),
                    own: BoOwnership::new(owner),
                    visible_bytes: visible,
                    slot,
                },
            );
            let fresh = owners.entry_or_new(owner).held.insert(id.0);
            debug_assert!(fresh, "BO ids are never reused");
        }
        self.stats
            .apply(d, &Delta::alloc(allocated, req.size, visible));
        Ok(id)
    }

    /// The quota limits of a charge in `domain` (see [`super::ownership`]).
    pub(super) fn charge_limits(&self, domain: Domain) -> ChargeLimits {
        let domain_size = match domain {
            Domain::Vram => self.info.vram_size,
            Domain::Gtt => self.info.gtt_size,
        };
        ChargeLimits {
            owner: self.tunables.client_quota(),
            account: self.tunables.account_quota(domain_size),
        }
    }

    /// The error of a charge of `requested` bytes that `refusal` refused.
    pub(super) fn quota_error(
        &self,
        owner: OwnerId,
        domain: Domain,
        limits: ChargeLimits,
        refusal: Refusal,
        requested: u64,
    ) -> DriverError {
        match refusal {
            Refusal::Owner { held } => DriverError::QuotaExceeded {
                owner,
                quota: limits.owner.unwrap_or(0),
                held,
                requested,
            },
            Refusal::Account { account, held } => DriverError::AccountQuotaExceeded {
                account,
                domain,
                quota: limits.account.unwrap_or(0),
                held,
                requested,
            },
        }
    }

    /// Makes `owner` a member of `account`, the user it acts for: from now
    /// on it is charged to that account too, and its creates and imports
    /// are refused when they would take the account over its share
    /// (`uid_quota_percent`; see [`super::ownership`]). A front end calls
    /// this once, when the owner appears and before it creates anything;
    /// joining again changes nothing (returns false). The owner stays
    /// until [`Driver::owner_exit`].
    pub fn owner_join(&self, owner: OwnerId, account: AccountId) -> bool {
        self.owners.join(owner, account)
    }

    /// Bytes charged to `account` per domain (`[vram, gtt]`): the sum of
    /// its owners' charges.
    pub fn account_charged(&self, account: AccountId) -> [u64; 2] {
        self.owners.account_charged(account)
    }

    /// Counts a retry of a create that failed with
    /// [`DriverError::NoSpace`]: a front end that parks such a create calls
    /// this before each new attempt (the `<domain>_retries` statistic).
    pub fn note_retry(&self, domain: Domain) {
        self.stats.apply(domain, &Delta::retry());
    }

    /// Allocates the memory of a BO (must run in the domain's lane).
    fn allocate(&self, req: &BoCreate<'_>) -> Result<Placement, DriverError> {
        match req.domain {
            Domain::Vram => {
                let flags = req.flags;
                // Buddy blocks are whole pages (the minimum block size is
                // at least a page), so only the alignment needs raising.
                let align = req.align.max(PAGE_SIZE);
                for _ in 0..MAX_RETIRE_PER_CREATE {
                    let a = self
                        .vram
                        .alloc(req.size, align, flags)
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
                // Whole pages of their own (see `PAGE_SIZE`).
                let size = req.size.next_multiple_of(PAGE_SIZE);
                self.gtt
                    .alloc(size, req.align.max(PAGE_SIZE), None, mode)
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

    /// Drops one of `owner`'s references to `id`; the BO is freed with its
    /// last reference (see [`super::ownership`]). Waits, never fails, while
    /// the BO's domain is being recovered.
    pub fn bo_unref(&self, owner: OwnerId, id: BoId) -> Result<(), DriverError> {
        let d = id.domain().ok_or(DriverError::NoSuchBo)?;
        let _pass = self.gate.enter(Lane::Domain(d), Mode::Wait)?;
        let removed = {
            let mut owners = self.owners.lock(owner);
            let mut shard = self.table.shard(id);
            let entry = held_entry(&mut shard, owner, id)?;
            if entry.own.drop_reference(owner, false).is_some() {
                owners.let_go(owner, id, d, entry.placement.allocated_size());
            }
            self.settle(&mut shard, id)
        };
        if let Some(entry) = removed {
            self.free_entry(entry);
        }
        Ok(())
    }

    /// After a change of references: removes the entry if nobody holds it
    /// any more (returning it), else updates its leak record.
    pub(super) fn settle(&self, shard: &mut Shard, id: BoId) -> Option<BoEntry> {
        let entry = shard.bos.get(&id.0)?;
        if !entry.own.is_unheld() {
            self.publish_holders(entry);
            return None;
        }
        debug_assert_eq!(entry.own.token(), None, "an unheld BO is never exported");
        let entry = shard.bos.remove(&id.0)?;
        self.leaks.retire(entry.slot);
        shard.free_slots.push(entry.slot);
        Some(entry)
    }

    /// Shows the leak detector who holds `entry` now.
    pub(super) fn publish_holders(&self, entry: &BoEntry) {
        self.leaks.update_holders(
            entry.slot,
            entry.own.primary_holder(),
            entry.own.holder_count(),
            entry.own.token().is_some(),
        );
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

    /// Describes a BO to one of its holders.
    pub fn bo_info(&self, owner: OwnerId, id: BoId) -> Result<BoInfo, DriverError> {
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let mut shard = self.table.shard(id);
        Ok(held_entry(&mut shard, owner, id)?.info(id, GTT_BASE))
    }

    /// Ends `owner`: drops every reference it holds in one batch (revoking
    /// its exports, ending its charges), frees the BOs nobody else holds,
    /// and updates the statistics once per domain. A front end calls this
    /// when a client goes away.
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
        let Some(held) = self.owners.end(owner) else {
            return summary;
        };
        let mut ids: Vec<u64> = held.into_iter().collect();
        ids.sort_unstable_by_key(|&id| (BoTable::shard_index(BoId(id)), id));
        let mut freed = Vec::new();
        for group in
            ids.chunk_by(|a, b| BoTable::shard_index(BoId(*a)) == BoTable::shard_index(BoId(*b)))
        {
            let mut shard = self.table.shard(BoId(group[0]));
            for &raw in group {
                let id = BoId(raw);
                let Some(e) = shard.bos.get_mut(&raw) else {
                    continue;
                };
                summary.released += 1;
                let gone = e.own.drop_reference(owner, true);
                debug_assert!(
                    gone.is_some(),
                    "owner {owner} listed BO {id} it did not hold"
                );
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
}
