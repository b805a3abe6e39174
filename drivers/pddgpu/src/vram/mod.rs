//! The VRAM manager: a [`Manager`] over a [`BuddyAllocator`] (state
//! machine, retry policy, recovery procedure), plus CPU-visible window
//! placement and accounting, lock-free usage counters, and the rebuild of
//! the allocator from the table of live allocations.
//!
//! Placement: allocations flagged [`BoFlags::VISIBLE`] are placed inside
//! the CPU-visible window `0..visible_size`; all others go top-down and
//! first try outside the window, so that the window stays free for those
//! that need it, falling back to the whole VRAM only when the rest is full.

mod alloc_handle;
mod stats;

pub use alloc_handle::{Segments, VramAllocation};
pub use stats::VramStats;

use core::ops::Deref;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::bo::BoFlags;
use crate::buddy::{AllocFlags, Block, BlockList, BuddyAllocator, BuddyError};
use crate::manager::{Manager, ManagerError, ManagerState, RetryPolicy};

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
/// The allocator sits behind the [`Manager`]'s lock, held only for the
/// allocator call itself; the state, retry policy and usage counters are
/// atomics read without the lock. Derefs to its [`Manager`] (state, retry
/// policy, `mark_error`, `shutdown`).
#[derive(Debug)]
pub struct VramManager {
    id: u64,
    config: VramConfig,
    manager: Manager<BuddyAllocator>,
    /// Usage counters; changed only under the allocator lock, so they
    /// always match the allocator, and read without it.
    used: AtomicU64,
    visible_used: AtomicU64,
    allocations: AtomicU64,
}

impl Deref for VramManager {
    type Target = Manager<BuddyAllocator>;
    fn deref(&self) -> &Manager<BuddyAllocator> {
        &self.manager
    }
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
    /// Builds a READY manager.
    pub fn new(config: VramConfig) -> Result<Self, ManagerError> {
        let manager = Self::create(config)?;
        manager.start()?;
        Ok(manager)
    }

    /// Builds a manager and leaves it INITIALIZING (serving nothing) until
    /// [`Manager::start`]: for bringing a device up in steps.
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
            manager: Manager::new("vram", buddy, config.retry),
            used: AtomicU64::new(0),
            visible_used: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
        })
    }

    /// The configuration (with `size` rounded down to whole blocks; the
    /// retry policy in force is [`Manager::retry_policy`]).
    pub fn config(&self) -> &VramConfig {
        &self.config
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
        self.state() == ManagerState::Ready
            && self.used_size() <= self.config.size
            && self.visible_used() <= self.config.visible_size
    }

    /// Allocates `size` bytes aligned to `align` (a power of two, or 0 for
    /// the block size). Every block of the result is at least `align`
    /// bytes, so the allocation is `align`-aligned piecewise too.
    ///
    /// Placement follows the BO's `flags`: [`BoFlags::CONTIGUOUS`] gives one
    /// run, [`BoFlags::VISIBLE`] places it inside the visible window and
    /// [`BoFlags::TOPDOWN`] at the window's top (non-visible allocations
    /// are always placed from the top). [`BoFlags::CLEARED`] is the
    /// driver's business, not the manager's.
    ///
    /// Fails with [`ManagerError::NotReady`] unless READY,
    /// [`ManagerError::InvalidArgument`] for impossible requests, and
    /// [`ManagerError::NoSpace`] (carrying the retry policy) when the
    /// memory is not available now. Never blocks beyond the allocator lock.
    pub fn alloc(
        &self,
        size: u64,
        align: u64,
        flags: BoFlags,
    ) -> Result<VramAllocation, ManagerError> {
        self.ensure_ready()?;
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
        if flags.contains(BoFlags::CONTIGUOUS) {
            buddy_flags |= AllocFlags::CONTIGUOUS;
        }
        if flags.contains(BoFlags::VISIBLE) && visible == 0 {
            return Err(ManagerError::InvalidArgument("no CPU-visible window"));
        }
        let (blocks, allocated) = self.manager.with_ready(|buddy| {
            let blocks = if flags.contains(BoFlags::VISIBLE) {
                if flags.contains(BoFlags::TOPDOWN) {
                    buddy_flags |= AllocFlags::TOPDOWN;
                }
                buddy
                    .alloc(size, min_block, buddy_flags | AllocFlags::RANGE, 0..visible)
                    .map_err(|e| map_alloc_error(e, size, "size exceeds the CPU-visible window"))?
            } else {
                self.alloc_outside_window(buddy, size, min_block, buddy_flags | AllocFlags::TOPDOWN)
                    .map_err(|e| map_alloc_error(e, size, "size exceeds VRAM"))?
            };
            let allocated: u64 = blocks.iter().map(Block::size).sum();
            self.used.fetch_add(allocated, Ordering::Relaxed);
            self.visible_used
                .fetch_add(visible_bytes(&blocks, visible), Ordering::Relaxed);
            self.allocations.fetch_add(1, Ordering::Relaxed);
            debug_assert_eq!(self.used.load(Ordering::Relaxed), buddy.used());
            Ok((blocks, allocated))
        })?;
        debug_assert!(allocated >= size);
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
        self.ensure_ready()?;
        if allocation.manager_id() != self.id {
            return Err(ManagerError::InvalidFree(
                "allocation belongs to another manager",
            ));
        }
        let blocks = allocation.blocks();
        if blocks.is_empty() {
            return Err(ManagerError::InvalidFree("allocation has no blocks"));
        }
        self.manager.with_ready(|buddy| {
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
            debug_assert_eq!(self.used.load(Ordering::Relaxed), buddy.used());
            Ok(())
        })
    }

    /// The allocator's leaf blocks in address order, each as its byte range
    /// and whether it is allocated. They tile `0..size` exactly. Takes the
    /// allocator lock for one walk over the blocks (for the occupancy map).
    pub fn layout(&self) -> alloc::vec::Vec<(core::ops::Range<u64>, bool)> {
        self.manager.inspect(|buddy| {
            buddy
                .leaves()
                .map(|(block, free)| (block.offset()..block.end(), !free))
                .collect()
        })
    }

    /// A snapshot of usage and state. Counters are read lock-free; the
    /// per-order figures take the allocator lock briefly.
    pub fn get_stats(&self) -> VramStats {
        let buddy = self.manager.inspect(BuddyAllocator::stats);
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
            retry: self.retry_policy(),
        }
    }

    /// Recovers from ERROR (see [`Manager::recover`]): rebuilds the
    /// allocator from `live`, the allocations still in use (normally the
    /// driver's BO table), claiming exactly their blocks; checks that they
    /// belong to this manager, do not overlap, and that the rebuilt
    /// accounting matches. Memory of allocations that are not listed is
    /// reclaimed; memory that is listed can never be handed out again.
    /// Every allocation this manager returned that the caller still holds
    /// must be in `live` (the caller takes its snapshot after the error,
    /// when no allocation can succeed any more).
    pub fn recover<'a>(
        &self,
        live: impl IntoIterator<Item = &'a VramAllocation>,
    ) -> Result<(), ManagerError> {
        self.manager.recover(|current| {
            let (buddy, visible_used, allocations) = self.rebuild(live)?;
            let used = buddy.used();
            *current = buddy;
            self.used.store(used, Ordering::Relaxed);
            self.visible_used.store(visible_used, Ordering::Relaxed);
            self.allocations.store(allocations, Ordering::Relaxed);
            log::info!("vram: rebuilt with {allocations} live allocations, {used} bytes");
            Ok(())
        })
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

/// Maps an allocator error of `alloc` of `size` bytes: no space right now,
/// or an impossible request (`too_large` says why for an oversize one).
fn map_alloc_error(e: BuddyError, size: u64, too_large: &'static str) -> ManagerError {
    match e {
        BuddyError::NoSpace { .. } => ManagerError::no_space(size),
        BuddyError::TooLarge { .. } => ManagerError::InvalidArgument(too_large),
        other => ManagerError::InvalidArgument(other.reason()),
    }
}
