//! The public vocabulary of the buddy allocator: blocks and their lists,
//! allocation flags, errors and the accounting snapshot.

use alloc::vec::Vec;
use core::hash::{Hash, Hasher};

use super::store::NIL;

/// The blocks of one allocation. One block is stored inline (no heap
/// allocation, 24 bytes in all: as small as a (start, count) pair), which
/// covers every power-of-two request (contiguous or not);
/// longer lists live on the heap. A small handle matters: callers keep one
/// per allocation in their tables, and with 100,000 live allocations a
/// 40-byte handle (two inline) cost 15% more cache misses per free.
pub type BlockList = smallvec::SmallVec<[Block; 1]>;

bitflags::bitflags! {
    /// How [`BuddyAllocator::alloc`] places an allocation.
    #[derive(Clone, Copy, Debug)]
    pub struct AllocFlags: u32 {
        /// One physically contiguous run (rounded up to a power of two,
        /// placed, then trimmed back to the requested size).
        const CONTIGUOUS = 1 << 0;
        /// Place every block inside the `range` argument.
        const RANGE = 1 << 1;
        /// Prefer high addresses.
        const TOPDOWN = 1 << 2;
    }
}

/// One power-of-two block of the managed space, as handed out by
/// [`BuddyAllocator::alloc`].
///
/// Besides its place (offset and order) a block carries the chunk size of
/// the allocator that made it and the tag of the allocation it belongs to,
/// so that a stale copy (after a free and a reuse of the same memory) or a
/// block from another allocator is rejected instead of freeing someone
/// else's memory (the 16-bit tag counts allocations, so a stale copy could
/// only pass if the very same block were handed out again exactly 65,536
/// allocations later). It also carries a hint to its node in the allocator,
/// which makes frees O(1); the hint is not part of its identity (equality
/// and hashing ignore it) and a wrong hint is harmless.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub(super) offset: u64,
    pub(super) node: u32,
    pub(super) tag: u16,
    pub(super) order: u8,
    pub(super) chunk_shift: u8,
}

impl PartialEq for Block {
    fn eq(&self, other: &Self) -> bool {
        (self.offset, self.tag, self.order, self.chunk_shift)
            == (other.offset, other.tag, other.order, other.chunk_shift)
    }
}

impl Eq for Block {}

impl Hash for Block {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.offset, self.tag, self.order, self.chunk_shift).hash(state);
    }
}

impl Block {
    /// A block record with the given fields, e.g. rebuilt from a saved
    /// table. Nothing is checked here: the allocator validates every block
    /// it is given.
    pub const fn new(offset: u64, order: u8, chunk_shift: u8, tag: u16) -> Self {
        Block {
            offset,
            tag,
            node: NIL,
            order,
            chunk_shift,
        }
    }

    /// Byte offset of the block in the managed space.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Order of the block: its size is `chunk_size << order`.
    pub const fn order(&self) -> u8 {
        self.order
    }

    /// `log2` of the chunk size of the allocator that made the block.
    pub const fn chunk_shift(&self) -> u8 {
        self.chunk_shift
    }

    /// Tag of the allocation the block belongs to.
    pub const fn tag(&self) -> u16 {
        self.tag
    }

    /// Size of the block in bytes (saturating for nonsense records).
    pub const fn size(&self) -> u64 {
        let shift = self.chunk_shift as u32 + self.order as u32;
        if shift >= 64 {
            u64::MAX
        } else {
            1 << shift
        }
    }

    /// One past the last byte of the block (saturating).
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.size())
    }
}

/// Errors of the [`BuddyAllocator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuddyError {
    /// The chunk size is not a power of two.
    #[error("chunk size {0:#x} is not a power of two")]
    InvalidChunkSize(u64),
    /// The space to manage is smaller than one chunk.
    #[error("space of {size:#x} bytes is smaller than one chunk of {chunk_size:#x}")]
    SpaceTooSmall {
        /// Requested space size.
        size: u64,
        /// Chunk size.
        chunk_size: u64,
    },
    /// A zero-sized allocation was requested.
    #[error("zero-sized allocation")]
    ZeroSize,
    /// `min_block_size` is not a power of two.
    #[error("minimum block size {0:#x} is not a power of two")]
    InvalidMinBlockSize(u64),
    /// The allocation can never fit: larger than the space, the range or
    /// the largest possible block.
    #[error("{size:#x} bytes can never fit in {limit:#x}")]
    TooLarge {
        /// Requested size after rounding.
        size: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The range is empty, misaligned to the chunk size, or past the end.
    #[error("invalid range {start:#x}..{end:#x}")]
    InvalidRange {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// Not enough free space (of the right shape) right now.
    #[error("no space for {size:#x} bytes")]
    NoSpace {
        /// Requested size after rounding.
        size: u64,
    },
    /// The block was made by an allocator with another chunk size.
    #[error("block at {offset:#x} is foreign (made with another chunk size)")]
    Foreign {
        /// Block offset.
        offset: u64,
    },
    /// The block offset is not aligned to its size, or it reaches past the
    /// end of the space.
    #[error("block at {offset:#x} of order {order} is misaligned or out of bounds")]
    Misaligned {
        /// Block offset.
        offset: u64,
        /// Block order.
        order: u8,
    },
    /// The block is not an allocated block of this allocator (double free,
    /// never allocated, or a different order).
    #[error("block at {offset:#x} is not allocated")]
    NotAllocated {
        /// Block offset.
        offset: u64,
    },
    /// The block is allocated, but by another allocation (stale handle).
    #[error("block at {offset:#x} belongs to another allocation (stale handle)")]
    StaleTag {
        /// Block offset.
        offset: u64,
    },
    /// The same block appears twice, or two claimed blocks overlap.
    #[error("block at {offset:#x} appears twice or overlaps another")]
    Duplicate {
        /// Block offset.
        offset: u64,
    },
    /// A claimed block is not entirely free.
    #[error("block at {offset:#x} is (partly) in use")]
    Busy {
        /// Block offset.
        offset: u64,
    },
}

impl BuddyError {
    /// A short static description, for error types that carry `&'static str`.
    pub const fn reason(&self) -> &'static str {
        match self {
            BuddyError::InvalidChunkSize(_) => "chunk size is not a power of two",
            BuddyError::SpaceTooSmall { .. } => "space is smaller than one chunk",
            BuddyError::ZeroSize => "zero-sized allocation",
            BuddyError::InvalidMinBlockSize(_) => "alignment is not a power of two",
            BuddyError::TooLarge { .. } => "size can never fit",
            BuddyError::InvalidRange { .. } => "invalid range",
            BuddyError::NoSpace { .. } => "no space",
            BuddyError::Foreign { .. } => "block from another allocator",
            BuddyError::Misaligned { .. } => "block misaligned or out of bounds",
            BuddyError::NotAllocated { .. } => "block not allocated (double free?)",
            BuddyError::StaleTag { .. } => "stale handle: block belongs to another allocation",
            BuddyError::Duplicate { .. } => "block listed twice or overlapping",
            BuddyError::Busy { .. } => "block already in use",
        }
    }
}

/// A snapshot of a [`BuddyAllocator`]'s accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuddyStats {
    /// Managed bytes (the space rounded down to whole chunks).
    pub total: u64,
    /// Bytes in allocated blocks.
    pub used: u64,
    /// Bytes in free blocks (`total - used`).
    pub free: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Free bytes per order (index = order, size `chunk_size << order`).
    pub free_per_order: Vec<u64>,
    /// Size of the largest free block, 0 when full.
    pub largest_free: u64,
    /// Number of allocated blocks.
    pub allocated_blocks: u64,
    /// Number of free blocks.
    pub free_blocks: u64,
    /// Number of roots the space is cut into.
    pub roots: usize,
}
