//! [`VramAllocation`]: what a caller holds for an allocation of VRAM.

use crate::bo::BoFlags;
use crate::buddy::{Block, BlockList};

/// One VRAM allocation: the blocks backing it, in the order of the buffer's
/// bytes, and what was asked for.
///
/// It is plain data (cloneable, comparable) so the driver can keep it in
/// its BO table and hand it back for [`free`](super::VramManager::free) or
/// [`recover`](super::VramManager::recover). It remembers which manager
/// made it, and each block carries its allocation's tag, so frees of stale
/// copies or of another manager's allocations are rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VramAllocation {
    manager_id: u64,
    blocks: BlockList,
    size: u64,
    allocated: u64,
    flags: BoFlags,
}

impl VramAllocation {
    pub(super) fn new(
        manager_id: u64,
        blocks: BlockList,
        size: u64,
        allocated: u64,
        flags: BoFlags,
    ) -> Self {
        VramAllocation {
            manager_id,
            blocks,
            size,
            allocated,
            flags,
        }
    }

    /// Id of the manager that made the allocation.
    pub(super) fn manager_id(&self) -> u64 {
        self.manager_id
    }

    /// The blocks backing the allocation, in the order of its bytes.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The requested size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes actually reserved (the blocks' total, ≥ [`size`](Self::size)).
    pub fn allocated_size(&self) -> u64 {
        self.allocated
    }

    /// Whether the allocation was asked to be CPU-visible.
    pub fn is_visible(&self) -> bool {
        self.flags.contains(BoFlags::VISIBLE)
    }

    /// Whether the allocation was asked to be one contiguous run.
    pub fn is_contiguous(&self) -> bool {
        self.flags.contains(BoFlags::CONTIGUOUS)
    }

    /// The flags the allocation was made with.
    pub fn flags(&self) -> BoFlags {
        self.flags
    }

    /// Offset of the first byte in VRAM.
    pub fn start(&self) -> u64 {
        self.blocks.first().map_or(0, Block::offset)
    }

    /// The VRAM ranges holding the buffer's bytes, as `(offset in VRAM,
    /// length)`, in buffer order, covering exactly [`size`](Self::size)
    /// bytes (the last one is cut short when the blocks are larger).
    pub fn segments(&self) -> Segments<'_> {
        Segments {
            blocks: self.blocks.iter(),
            left: self.size,
        }
    }
}

/// Iterator returned by [`VramAllocation::segments`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    blocks: core::slice::Iter<'a, Block>,
    left: u64,
}

impl Iterator for Segments<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.left == 0 {
            return None;
        }
        let block = self.blocks.next()?;
        let len = block.size().min(self.left);
        self.left -= len;
        Some((block.offset(), len))
    }
}
