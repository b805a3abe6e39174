//! Device faults the driver has seen and what it did about them: bad VRAM
//! ranges and the memory retired because of them, allocations leaked on
//! purpose to simulate corrupted bookkeeping, and why each domain is in
//! ERROR. Rarely touched; behind one lock.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

#[cfg(feature = "fault-injection")]
use crate::range::RangeNode;
use crate::vram::VramAllocation;

#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Reported bad VRAM ranges.
    pub bad_ranges: Vec<Range<u64>>,
    /// VRAM allocations that touch a bad range, held forever so the bad
    /// memory is never handed out again. Part of every recovery.
    pub retired: Vec<VramAllocation>,
    /// VRAM allocations leaked by fault injection (not in the BO table;
    /// the audit must find them, recovery reclaims them).
    #[cfg(feature = "fault-injection")]
    pub phantoms_vram: Vec<VramAllocation>,
    /// GTT nodes leaked by fault injection.
    #[cfg(feature = "fault-injection")]
    pub phantoms_gtt: Vec<RangeNode>,
    /// Why each domain was put into ERROR (cleared by recovery).
    pub causes: [Option<String>; 2],
    /// Internal errors the device reported.
    pub device_errors: u64,
}

impl Faults {
    /// Bytes held by retired allocations.
    pub fn retired_bytes(&self) -> u64 {
        self.retired
            .iter()
            .map(VramAllocation::allocated_size)
            .sum()
    }

    /// Whether `blocks` of an allocation touch a bad range.
    pub fn touches_bad(&self, alloc: &VramAllocation) -> bool {
        alloc.blocks().iter().any(|b| {
            self.bad_ranges
                .iter()
                .any(|r| b.offset() < r.end && r.start < b.end())
        })
    }
}
