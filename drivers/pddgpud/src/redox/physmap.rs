//! Mapping a BAR into pddgpud (Redox only): open the `memory` scheme's
//! physical-memory file for the wanted caching and `mmap` it shared at the
//! BAR's physical address — what upstream's `common::physmap`
//! (`common/src/lib.rs` of `redox-os/drivers`) does. The mapping is the
//! driver's capability over the device; it stays for the life of the
//! process and is unmapped on drop.

use std::ptr::NonNull;

use libredox::call::MmapArgs;
use libredox::flag::{MAP_SHARED, O_CLOEXEC, O_RDWR, PROT_READ, PROT_WRITE};
use libredox::Fd;

use super::bars::BarRegion;

/// A BAR mapped read/write into this process.
#[derive(Debug)]
pub struct PhysMapping {
    ptr: NonNull<u8>,
    len: usize,
    region: BarRegion,
}

// SAFETY: the mapping is device memory owned by this value; which thread
// touches it does not matter to the device (accesses go through the core's
// bounds-checked `Mmio`/`MemoryRegion`).
unsafe impl Send for PhysMapping {}

impl PhysMapping {
    /// Maps `region` (already validated by [`super::bars::region`]).
    pub fn map(region: BarRegion) -> Result<Self, String> {
        let path = region.memory_type.scheme_path();
        let fd = Fd::open(path, O_CLOEXEC | O_RDWR, 0)
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (addr null, no
        // MAP_FIXED), so it overlaps nothing of ours; the memory scheme maps
        // exactly the BAR's physical pages, which pcid assigned to this
        // function and which nothing else in this process maps.
        let addr = unsafe {
            libredox::call::mmap(MmapArgs {
                addr: core::ptr::null_mut(),
                length: region.map_len,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_SHARED,
                fd: fd.raw(),
                offset: region.phys,
            })
        }
        .map_err(|e| {
            format!(
                "cannot map BAR {} ({:#x}, {:#x} bytes) through {path}: {e}",
                region.index, region.phys, region.map_len
            )
        })?;
        // The descriptor may close now: the mapping holds the memory.
        drop(fd);
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| format!("mapping BAR {} returned a null address", region.index))?;
        Ok(PhysMapping {
            ptr,
            len: region.map_len,
            region,
        })
    }

    /// Start of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: empty BARs are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The BAR this maps.
    pub fn region(&self) -> &BarRegion {
        &self.region
    }
}

impl Drop for PhysMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map` obtained from the kernel; whoever
        // built the core's `Mmio`/`MemoryRegion` on it must drop them first
        // (the owner keeps this value alive alongside the driver).
        if let Err(e) = unsafe { libredox::call::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of BAR {} failed: {e}", self.region.index);
        }
    }
}
