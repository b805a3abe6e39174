//! A drm_buddy-class buddy allocator over a `u64` address space.
//!
//! The space (any size; it is cut into power-of-two *roots*, largest first,
//! as Linux's `drm_buddy` does) is handed out in power-of-two *blocks* of
//! at least one *chunk* (a power of two, 4 KiB by default in the VRAM
//! manager). An allocation returns the blocks that back it:
//!
//! - without [`AllocFlags::CONTIGUOUS`] a request may be served by several
//!   blocks, largest first (like `drm_buddy_alloc_blocks`), each at least
//!   `min_block_size` large and aligned to its size;
//! - with [`AllocFlags::CONTIGUOUS`] the request is one physically
//!   contiguous run: it is rounded up to a power of two, placed, and the
//!   unused tail is trimmed back into the free pool (like
//!   `drm_buddy_block_trim`); if no such power-of-two block is free, a run
//!   of adjacent free blocks is searched for instead ("try harder");
//! - [`AllocFlags::RANGE`] keeps every block inside `range`;
//! - [`AllocFlags::TOPDOWN`] prefers high addresses.
//!
//! Freeing merges buddies back completely, so once everything is freed the
//! allocator is back to its roots. Every free is validated in full before
//! anything changes: double frees, stale handles (each allocation carries a
//! tag), foreign, misaligned or out-of-bounds blocks are rejected with a
//! [`BuddyError`].
//!
//! Metadata is proportional to the number of blocks: the allocator keeps
//! the tree of blocks that exist (16 bytes per node: siblings are stored
//! as one 32-byte pair in one cache line), so a 256 GiB space with 4 KiB
//! chunks starts as a handful of roots. Every operation is a few pointer steps per tree level, with no
//! searching: a block handed out remembers its node, so a free validates
//! it in O(1) (falling back to a walk down the tree for records that have
//! no valid node hint, e.g. after [`BuddyAllocator::claim`]). Placement is
//! address-ordered at the granularity of *regions* (at most 64 equal
//! slices of the space); see `store` for the data structure.

mod allocate;
mod block;
mod check;
mod contig;
mod free;
mod search;
mod store;

pub use block::{AllocFlags, Block, BlockList, BuddyError, BuddyStats};

use alloc::vec::Vec;

use store::{NodeState, NodeStore};

/// Where to look for a block (internal form of flags + range).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    topdown: bool,
    /// Restricted to `start..end` (else the whole space).
    ranged: bool,
    start: u64,
    end: u64,
}

/// A validated allocation, in the form every allocation path takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// Bytes to allocate: a whole number of minimum-size blocks.
    need: u64,
    /// No block below this order (the minimum block size).
    min_order: u32,
    /// Where the blocks may go.
    place: Placement,
    /// The tag every block of this allocation carries.
    tag: u16,
}

/// A drm_buddy-class buddy allocator; see the [module docs](self).
///
/// Single-threaded (`&mut self`): the VRAM manager wraps it in a lock.
pub struct BuddyAllocator {
    size: u64,
    store: NodeStore,
    /// Root nodes in address order.
    roots: Vec<u32>,
    next_tag: u16,
    chunk_shift: u8,
    max_order: u8,
}

impl core::fmt::Debug for BuddyAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size())
            .field("used", &self.used())
            .field("leaves", &self.store.leaf_count())
            .finish()
    }
}

/// `floor(log2(x))` for `x > 0`.
#[inline]
pub(crate) fn floor_log2(x: u64) -> u32 {
    63 - x.leading_zeros()
}

/// Takes the next region out of the set `regions`: the highest for
/// top-down, else the lowest; `None` once the set is empty.
#[inline]
pub(crate) fn pop_region(regions: &mut u64, topdown: bool) -> Option<u32> {
    if *regions == 0 {
        return None;
    }
    let region = if topdown {
        floor_log2(*regions)
    } else {
        regions.trailing_zeros()
    };
    *regions &= !(1u64 << region);
    Some(region)
}

/// `ceil(log2(x))` for `x > 0`.
#[inline]
pub(crate) fn ceil_log2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        64 - (x - 1).leading_zeros()
    }
}

/// Mask of the bits `>= n` (empty for `n >= 64`).
#[inline]
pub(crate) fn bits_from(n: u32) -> u64 {
    if n >= 64 {
        0
    } else {
        u64::MAX << n
    }
}

impl BuddyAllocator {
    /// A buddy allocator managing `0..size` in blocks of at least
    /// `chunk_size` bytes (a power of two). `size` is rounded down to whole
    /// chunks; it need not be a power of two. Runs in time and memory
    /// proportional to the number of roots (at most 64), whatever the size.
    pub fn new(size: u64, chunk_size: u64) -> Result<Self, BuddyError> {
        if !chunk_size.is_power_of_two() {
            return Err(BuddyError::InvalidChunkSize(chunk_size));
        }
        if size < chunk_size {
            return Err(BuddyError::SpaceTooSmall { size, chunk_size });
        }
        let chunk_shift = chunk_size.trailing_zeros() as u8;
        let size = size & !(chunk_size - 1);
        let max_order = (floor_log2(size) - u32::from(chunk_shift)) as u8;
        let region_shift = ceil_log2(size)
            .saturating_sub(6)
            .max(u32::from(chunk_shift));
        let regions = (((size - 1) >> region_shift) + 1) as usize;
        let mut store = NodeStore::new(
            usize::from(max_order) + 1,
            regions,
            region_shift,
            u32::from(chunk_shift),
        );
        let mut roots = Vec::new();
        let mut offset = 0u64;
        let mut pages = size >> chunk_shift;
        while pages != 0 {
            let order = floor_log2(pages);
            roots.push(store.add_root(offset, order as u8));
            offset = offset.wrapping_add(1u64 << (order + u32::from(chunk_shift)));
            pages &= !(1u64 << order);
        }
        Ok(BuddyAllocator {
            store,
            roots,
            size,
            chunk_shift,
            max_order,
            next_tag: 1,
        })
    }

    /// Managed bytes (the size given to [`new`](Self::new), rounded down to
    /// whole chunks).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunk size (smallest block) in bytes.
    pub fn chunk_size(&self) -> u64 {
        1 << self.chunk_shift
    }

    /// `log2` of the chunk size.
    pub fn chunk_shift(&self) -> u8 {
        self.chunk_shift
    }

    /// The largest order a block can have.
    pub fn max_order(&self) -> u8 {
        self.max_order
    }

    /// Bytes in allocated blocks: the space minus the free blocks (the
    /// free lists count their bytes, so no allocation path keeps a tally).
    pub fn used(&self) -> u64 {
        self.size - self.store.free_bytes()
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> u64 {
        self.store.free_bytes()
    }

    /// Number of allocated blocks: the leaves that are not free.
    pub fn allocated_blocks(&self) -> u64 {
        self.store.leaf_count() as u64 - self.store.free_blocks()
    }

    /// Number of leaf blocks (free + allocated); the tree holds about twice
    /// as many nodes, and that is what the metadata is proportional to.
    pub fn leaf_count(&self) -> usize {
        self.store.leaf_count()
    }

    /// Size of the largest free block, 0 when nothing is free.
    pub fn largest_free(&self) -> u64 {
        let mask = self.store.order_mask();
        if mask == 0 {
            0
        } else {
            self.block_bytes(floor_log2(mask))
        }
    }

    /// The roots the space is cut into: the blocks that a completely free
    /// allocator consists of, in address order.
    pub fn roots(&self) -> impl Iterator<Item = Block> + '_ {
        let shift = u32::from(self.chunk_shift);
        let mut pages = self.size >> shift;
        let mut offset = 0u64;
        core::iter::from_fn(move || {
            if pages == 0 {
                return None;
            }
            let order = floor_log2(pages);
            let block = Block::new(offset, order as u8, self.chunk_shift, 0);
            offset = offset.wrapping_add(1u64 << (order + shift));
            pages &= !(1u64 << order);
            Some(block)
        })
    }

    /// Every leaf block in address order, with `true` for free ones (free
    /// blocks carry tag 0). O(number of nodes); for tests, dumps and
    /// debugging.
    pub fn leaves(&self) -> impl Iterator<Item = (Block, bool)> + '_ {
        let mut stack: Vec<u32> = self.roots.iter().rev().copied().collect();
        core::iter::from_fn(move || loop {
            let idx = stack.pop()?;
            let n = self.store.node(idx);
            match n.state {
                NodeState::Split => {
                    stack.push(n.aux + 1);
                    stack.push(n.aux);
                }
                state => {
                    let free = state == NodeState::Free;
                    let tag = if free { 0 } else { n.aux as u16 };
                    let mut block = Block::new(n.offset, n.order, self.chunk_shift, tag);
                    block.node = idx;
                    return Some((block, free));
                }
            }
        })
    }

    /// True when nothing is allocated and every root is whole again (all
    /// buddies merged back).
    pub fn is_pristine(&self) -> bool {
        self.used() == 0 && self.store.leaf_count() == self.roots.len()
    }

    /// A snapshot of the accounting.
    pub fn stats(&self) -> BuddyStats {
        let free_per_order = (0..self.store.orders())
            .map(|order| self.store.free_count(order) * self.block_bytes(order as u32))
            .collect::<Vec<_>>();
        BuddyStats {
            total: self.size,
            used: self.used(),
            free: self.free_bytes(),
            chunk_size: self.chunk_size(),
            free_per_order,
            largest_free: self.largest_free(),
            allocated_blocks: self.allocated_blocks(),
            free_blocks: self.store.free_blocks(),
            roots: self.roots.len(),
        }
    }

    /// Nodes the allocator has storage for (in use or recycled): its
    /// metadata is this many 16-byte nodes plus a fixed list-head table.
    pub fn node_capacity(&self) -> usize {
        self.store.node_capacity()
    }

    /// Bytes of a block of `order`.
    #[inline]
    pub(crate) fn block_bytes(&self, order: u32) -> u64 {
        1u64 << (order + u32::from(self.chunk_shift))
    }

    /// Checks every internal invariant (O(number of nodes)): the tree
    /// tiles the space exactly with aligned blocks and consistent links, no
    /// two free buddies are left unmerged, the free lists and their masks
    /// match the free leaves, and the counters match. Meant for tests and
    /// for recovery.
    pub fn check(&self) -> Result<(), &'static str> {
        check::check(self)
    }
}
