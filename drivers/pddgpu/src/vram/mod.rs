//! The VRAM manager: a [`BuddyAllocator`] behind a lock, with the shared
//! manager state machine, CPU-visible window accounting, statistics, a
//! retry policy for callers, and recovery from the table of live
//! allocations.
//!
//! Placement: allocations flagged [`VramFlags::VISIBLE`] are placed inside
//! the CPU-visible window `0..visible_size`; all others go top-down and
//! first try outside the window, so that the window stays free for those
//! that need it, falling back to the whole VRAM only when the rest is full.

mod alloc_handle;
mod stats;

pub use alloc_handle::{Segments, VramAllocation};
pub use stats::VramStats;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::buddy::{AllocFlags, Block, BlockList, BuddyAllocator, BuddyError};
use crate::manager::{ManagerError, ManagerState, RetryCell, RetryPolicy, StateCell};

bitflags::bitflags! {
    /// Placement requests for [`VramManager::alloc`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VramFlags: u32 {
        /// One physically contiguous run.
        const CONTIGUOUS = 1 << 0;
        /// Must be CPU-accessible: placed inside the visible window.
        const VISIBLE = 1 << 1;
        /// Prefer high addresses (non-visible allocations always do; for
        /// visible ones it means the top of the window).
        const TOPDOWN = 1 << 2;
    }
}

/// Configuration of a [`VramManager`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VramConfig {
    /// VRAM size in bytes (rounded down to whole `min_block_size` units).
    pub size: u64,
    /// Size of the CPU-visible window at the start of VRAM (a multiple of
    /// `min_block_size`, at most `size`; 0 = none).
    pub visible_size: u64,
    /// Smallest block (buddy chunk) size, a power of two; default 4 KiB.
    pub min_block_size: u64,
    /// Retry policy handed to callers with [`ManagerError::NoSpace`]
    /// (initial value; see [`VramManager::set_retry_policy`]).
    pub retry: RetryPolicy,
}

impl VramConfig {
    /// Default smallest block size: 4 KiB pages.
    pub const DEFAULT_MIN_BLOCK_SIZE: u64 = 4096;

    /// A configuration with the default block size and retry policy.
    pub const fn new(size: u64, visible_size: u64) -> Self {
        VramConfig {
            size,
            visible_size,
            min_block_size: Self::DEFAULT_MIN_BLOCK_SIZE,
            retry: RetryPolicy::VRAM_DEFAULT,
        }
    }
}

/// Source of manager ids, so allocations of one manager are recognised as
/// foreign by another.
static NEXT_MANAGER_ID: AtomicU64 = AtomicU64::new(1);

/// The VRAM manager; `Sync`, to be shared by all threads of the driver.
///
/// The allocator sits behind a spin lock held only for the allocator call
/// itself; the state, retry policy and usage counters are atomics and are
/// read without the lock.
#[derive(Debug)]
pub struct VramManager {
    id: u64,
    config: VramConfig,
    state: StateCell,
    retry: RetryCell,
    buddy: spin::Mutex<BuddyAllocator>,
    used: AtomicU64,
    visible_used: AtomicU64,
    allocations: AtomicU64,
}

/// Bytes of `blocks` inside `0..visible`.
fn visible_bytes(blocks: &[Block], visible: u64) -> u64 {
    blocks
        .iter()
        .filter(|b| b.offset() < visible)
        .map(|b| b.end().min(visible) - b.offset())
        .sum()
}

impl VramManager {
    /// Builds a manager and makes it READY.
    pub fn new(config: VramConfig) -> Result<Self, ManagerError> {
        let manager = Self::create(config)?;
        manager.start()?;
        Ok(manager)
    }

    /// Builds a manager and leaves it INITIALIZING, so that the driver can
    /// finish bringing the device up before memory is handed out; call
    /// [`start`](Self::start) to make it READY.
    pub fn create(config: VramConfig) -> Result<Self, ManagerError> {
        let buddy =
            BuddyAllocator::new(config.size, config.min_block_size).map_err(|e| match e {
                BuddyError::InvalidChunkSize(_) => {
                    ManagerError::InvalidArgument("min_block_size is not a power of two")
                }
                _ => ManagerError::InvalidArgument("VRAM size is smaller than one block"),
            })?;
        if config.visible_size > buddy.size() {
            return Err(ManagerError::InvalidArgument(
                "visible window is larger than VRAM",
            ));
        }
        if config.visible_size % config.min_block_size != 0 {
            return Err(ManagerError::InvalidArgument(
                "visible window is not a multiple of min_block_size",
            ));
        }
        let mut config = config;
        config.size = buddy.size();
        Ok(VramManager {
            id: NEXT_MANAGER_ID.fetch_add(1, Ordering::Relaxed),
            config,
            state: StateCell::new(ManagerState::Initializing),
            retry: RetryCell::new(config.retry),
            buddy: spin::Mutex::new(buddy),
            used: AtomicU64::new(0),
            visible_used: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
        })
    }

    /// INITIALIZING → READY.
    pub fn start(&self) -> Result<(), ManagerError> {
        self.state.start()
    }

    /// The configuration (with `size` rounded down to whole blocks; the
    /// retry policy in force is [`retry_policy`](Self::retry_policy)).
    pub fn config(&self) -> &VramConfig {
        &self.config
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

    /// Bytes allocated (lock-free).
    pub fn used_size(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes allocated inside the CPU-visible window (lock-free).
    pub fn visible_used(&self) -> u64 {
        self.visible_used.load(Ordering::Relaxed)
    }

    /// READY with plausible counters (lock-free).
    pub fn is_healthy(&self) -> bool {
        self.state.get() == ManagerState::Ready
            && self.used_size() <= self.config.size
            && self.visible_used() <= self.config.visible_size
    }

    /// Allocates `size` bytes aligned to `align` (a power of two, or 0 for
    /// the block size). Every block of the result is at least `align`
    /// bytes, so the allocation is `align`-aligned piecewise too.
    ///
    /// Fails with [`ManagerError::NotReady`] unless READY,
    /// [`ManagerError::InvalidArgument`] for impossible requests, and
    /// [`ManagerError::NoSpace`] (carrying the retry policy) when the
    /// memory is not available now. Never blocks beyond the allocator lock.
    pub fn alloc(
        &self,
        size: u64,
        align: u64,
        flags: VramFlags,
    ) -> Result<VramAllocation, ManagerError> {
        self.state.ensure_ready()?;
        if size == 0 {
            return Err(ManagerError::InvalidArgument("zero size"));
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(ManagerError::InvalidArgument(
                "alignment is not a power of two",
            ));
        }
        let min_block = align.max(self.config.min_block_size);
        let visible = self.config.visible_size;
        let mut buddy_flags = AllocFlags::empty();
        if flags.contains(VramFlags::CONTIGUOUS) {
            buddy_flags |= AllocFlags::CONTIGUOUS;
        }
        if flags.contains(VramFlags::VISIBLE) && visible == 0 {
            return Err(ManagerError::InvalidArgument("no CPU-visible window"));
        }
        let mut buddy = self.buddy.lock();
        // Again under the lock: an error marked (or a recovery started)
        // since the first check must not let this allocation through.
        self.state.ensure_ready()?;
        let result = if flags.contains(VramFlags::VISIBLE) {
            if flags.contains(VramFlags::TOPDOWN) {
                buddy_flags |= AllocFlags::TOPDOWN;
            }
            buddy
                .alloc(size, min_block, buddy_flags | AllocFlags::RANGE, 0..visible)
                .map_err(|e| map_alloc_error(e, "size exceeds the CPU-visible window"))
        } else {
            self.alloc_outside_window(
                &mut buddy,
                size,
                min_block,
                buddy_flags | AllocFlags::TOPDOWN,
            )
            .map_err(|e| map_alloc_error(e, "size exceeds VRAM"))
        };
        let blocks = match result {
            Ok(blocks) => blocks,
            Err(None) => {
                return Err(ManagerError::NoSpace {
                    size,
                    retry: self.retry.get(),
                })
            }
            Err(Some(e)) => return Err(e),
        };
        // Counters change under the lock so that they always match the
        // allocator; readers load them without it.
        let allocated: u64 = blocks.iter().map(Block::size).sum();
        self.used.fetch_add(allocated, Ordering::Relaxed);
        self.visible_used
            .fetch_add(visible_bytes(&blocks, visible), Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
        drop(buddy);
        Ok(VramAllocation::new(self.id, blocks, size, allocated, flags))
    }

    /// A non-visible allocation: outside the window when the rest of VRAM
    /// has room, else anywhere.
    fn alloc_outside_window(
        &self,
        buddy: &mut BuddyAllocator,
        size: u64,
        min_block: u64,
        flags: AllocFlags,
    ) -> Result<BlockList, BuddyError> {
        let visible = self.config.visible_size;
        let total = self.config.size;
        if visible > 0 && visible < total {
            let outside_used = buddy.used() - self.visible_used.load(Ordering::Relaxed);
            let outside_free = (total - visible) - outside_used;
            if size <= outside_free {
                match buddy.alloc(size, min_block, flags | AllocFlags::RANGE, visible..total) {
                    Err(BuddyError::NoSpace { .. } | BuddyError::TooLarge { .. }) => {}
                    other => return other,
                }
            }
        }
        buddy.alloc(size, min_block, flags, 0..total)
    }

    /// Frees an allocation made by this manager. Fails with
    /// [`ManagerError::NotReady`] unless READY (the caller then keeps the
    /// allocation out of its table; recovery reclaims it), and with
    /// [`ManagerError::InvalidFree`] for double frees, stale copies or
    /// allocations of another manager — without changing anything.
    pub fn free(&self, allocation: &VramAllocation) -> Result<(), ManagerError> {
        self.state.ensure_ready()?;
        if allocation.manager_id() != self.id {
            return Err(ManagerError::InvalidFree(
                "allocation belongs to another manager",
            ));
        }
        let blocks = allocation.blocks();
        if blocks.is_empty() {
            return Err(ManagerError::InvalidFree("allocation has no blocks"));
        }
        let mut buddy = self.buddy.lock();
        self.state.ensure_ready()?;
        buddy
            .free(blocks)
            .map_err(|e| ManagerError::InvalidFree(e.reason()))?;
        let bytes: u64 = blocks.iter().map(Block::size).sum();
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.visible_used.fetch_sub(
            visible_bytes(blocks, self.config.visible_size),
            Ordering::Relaxed,
        );
        self.allocations.fetch_sub(1, Ordering::Relaxed);
        drop(buddy);
        Ok(())
    }

    /// The allocator's leaf blocks in address order, each as its byte range
    /// and whether it is allocated. They tile `0..size` exactly. Takes the
    /// allocator lock for one walk over the blocks (for the occupancy map).
    pub fn layout(&self) -> alloc::vec::Vec<(core::ops::Range<u64>, bool)> {
        self.buddy
            .lock()
            .leaves()
            .map(|(block, free)| (block.offset()..block.end(), !free))
            .collect()
    }

    /// A snapshot of usage and state. Counters are read lock-free; the
    /// per-order figures take the allocator lock briefly.
    pub fn get_stats(&self) -> VramStats {
        let buddy = self.buddy.lock().stats();
        VramStats {
            state: self.state(),
            is_healthy: self.is_healthy(),
            total_size: self.config.size,
            used_size: buddy.used,
            free_size: buddy.free,
            visible_size: self.config.visible_size,
            visible_used: self.visible_used(),
            largest_free: buddy.largest_free,
            min_block_size: buddy.chunk_size,
            allocations: self.allocations.load(Ordering::Relaxed),
            block_count: buddy.allocated_blocks,
            free_block_count: buddy.free_blocks,
            free_per_order: buddy.free_per_order,
            retry: self.retry.get(),
        }
    }

    /// Records a detected (or injected) inconsistency: READY or
    /// INITIALIZING → ERROR. A shut-down manager stays shut down.
    pub fn mark_error(&self) {
        if self.state.fail() {
            log::warn!("vram: manager marked as failed");
        }
    }

    /// Shuts the manager down for good (from any state).
    pub fn shutdown(&self) {
        self.state.set(ManagerState::Shutdown);
    }

    /// Recovers from ERROR: rebuilds the allocator from `live`, the
    /// allocations still in use (normally the driver's BO table), claiming
    /// exactly their blocks; checks that they belong to this manager, do
    /// not overlap, and that the rebuilt accounting matches; then returns to
    /// READY. Memory of allocations that are not listed is reclaimed;
    /// memory that is listed can never be handed out again.
    ///
    /// Only from ERROR ([`ManagerError::WrongState`] otherwise). While it
    /// runs the manager is INITIALIZING; on failure it goes back to ERROR
    /// with [`ManagerError::RecoveryFailed`] and the old allocator is kept.
    /// Every allocation this manager returned that the caller still holds
    /// must be in `live` (the caller takes its snapshot after the error,
    /// when no allocation can succeed any more).
    pub fn recover<'a>(
        &self,
        live: impl IntoIterator<Item = &'a VramAllocation>,
    ) -> Result<(), ManagerError> {
        self.state.begin_recovery()?;
        // The lock is held from rebuild to swap: an allocation or free that
        // passed its state check before the recovery started either
        // completes before (and must then be in `live` if still held) or
        // sees the new state and fails.
        let mut guard = self.buddy.lock();
        match self.rebuild(live) {
            Ok((buddy, visible_used, allocations)) => {
                let used = buddy.used();
                *guard = buddy;
                self.used.store(used, Ordering::Relaxed);
                self.visible_used.store(visible_used, Ordering::Relaxed);
                self.allocations.store(allocations, Ordering::Relaxed);
                drop(guard);
                self.state
                    .transition(ManagerState::Initializing, ManagerState::Ready)
                    .map_err(|state| ManagerError::WrongState {
                        action: "finish recovery",
                        state,
                    })?;
                log::info!("vram: recovered with {allocations} live allocations, {used} bytes");
                Ok(())
            }
            Err(e) => {
                drop(guard);
                let _ = self
                    .state
                    .transition(ManagerState::Initializing, ManagerState::Error);
                Err(e)
            }
        }
    }

    /// A fresh allocator holding exactly the blocks of `live`, verified.
    fn rebuild<'a>(
        &self,
        live: impl IntoIterator<Item = &'a VramAllocation>,
    ) -> Result<(BuddyAllocator, u64, u64), ManagerError> {
        let mut buddy = BuddyAllocator::new(self.config.size, self.config.min_block_size)
            .map_err(|_| ManagerError::RecoveryFailed("cannot rebuild the allocator"))?;
        let mut expected_used = 0u64;
        let mut visible_used = 0u64;
        let mut allocations = 0u64;
        for allocation in live {
            if allocation.manager_id() != self.id {
                return Err(ManagerError::RecoveryFailed(
                    "live allocation belongs to another manager",
                ));
            }
            let blocks = allocation.blocks();
            let bytes: u64 = blocks.iter().map(Block::size).sum();
            if blocks.is_empty()
                || bytes != allocation.allocated_size()
                || bytes < allocation.size()
            {
                return Err(ManagerError::RecoveryFailed(
                    "live allocation has inconsistent blocks",
                ));
            }
            buddy.claim(blocks).map_err(|e| {
                ManagerError::RecoveryFailed(match e {
                    BuddyError::Busy { .. } | BuddyError::Duplicate { .. } => {
                        "live allocations overlap"
                    }
                    _ => "live allocation has invalid blocks",
                })
            })?;
            expected_used += bytes;
            visible_used += visible_bytes(blocks, self.config.visible_size);
            allocations += 1;
        }
        buddy.check().map_err(ManagerError::RecoveryFailed)?;
        if buddy.used() != expected_used || visible_used > self.config.visible_size {
            return Err(ManagerError::RecoveryFailed(
                "rebuilt accounting does not match the live allocations",
            ));
        }
        Ok((buddy, visible_used, allocations))
    }
}

/// Maps an allocator error of `alloc`: `None` for "no space right now",
/// else the manager error for an impossible request.
fn map_alloc_error(e: BuddyError, too_large: &'static str) -> Option<ManagerError> {
    match e {
        BuddyError::NoSpace { .. } => None,
        BuddyError::TooLarge { .. } => Some(ManagerError::InvalidArgument(too_large)),
        other => Some(ManagerError::InvalidArgument(other.reason())),
    }
}
