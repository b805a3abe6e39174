//! [`VramStats`]: a snapshot of the VRAM manager.

use alloc::vec::Vec;

use crate::manager::{ManagerState, RetryPolicy};

/// A snapshot of a [`VramManager`](super::VramManager)'s usage and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VramStats {
    /// Life-cycle state.
    pub state: ManagerState,
    /// READY with plausible counters.
    pub is_healthy: bool,
    /// Managed VRAM in bytes.
    pub total_size: u64,
    /// Bytes allocated (blocks, so at least the sum of requested sizes).
    pub used_size: u64,
    /// Bytes free (`total_size - used_size`).
    pub free_size: u64,
    /// Size of the CPU-visible window.
    pub visible_size: u64,
    /// Bytes allocated inside the CPU-visible window.
    pub visible_used: u64,
    /// Largest free block: the largest contiguous allocation that is sure
    /// to succeed.
    pub largest_free: u64,
    /// Smallest block size.
    pub min_block_size: u64,
    /// Live allocations.
    pub allocations: u64,
    /// Allocated blocks (an allocation has one or more).
    pub block_count: u64,
    /// Free blocks.
    pub free_block_count: u64,
    /// Free bytes per order (index = order; block size
    /// `min_block_size << order`).
    pub free_per_order: Vec<u64>,
    /// Retry policy in force.
    pub retry: RetryPolicy,
}

impl VramStats {
    /// External fragmentation in per mille: how much of the free memory is
    /// *not* in the largest free block (0 = one free block, or nothing
    /// free).
    pub fn fragmentation_permille(&self) -> u64 {
        crate::manager::fragmentation_permille(self.free_size, self.largest_free)
    }
}
