//! Which BARs of the PCI function pddgpud maps, and how.
//!
//! The PDDGPU (and its stand-in, QEMU's bochs-display) has its VRAM at BAR 0
//! and its registers at BAR 2 — the layout of the core's device models and
//! of the Linux sysfs backend. Registers are mapped uncached, VRAM write-combining, each through
//! the `memory` scheme's physical mapping (`/scheme/memory/physical@uc`,
//! `@wc`), as upstream's `common::physmap` does.
//!
//! This module only decides and validates (plain data, tested on the host);
//! [`super::physmap`] does the mapping on Redox.

use std::fmt;

use pddgpu::device::bochs;

use super::pcid::{PciBar, PciFunction};

/// The BAR that holds VRAM (the core's device layout).
pub const VRAM_BAR: usize = bochs::VRAM_BAR as usize;
/// The BAR that holds the registers (the core's device layout).
pub const MMIO_BAR: usize = bochs::MMIO_BAR as usize;
/// Page size of x86_64 Redox; mappings are made in whole pages.
pub const PAGE_SIZE: u64 = 4096;

/// Caching of a physical mapping: the suffix of `/scheme/memory/physical@…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// Uncached: every access reaches the device, in order (registers).
    Uncacheable,
    /// Write-combining: writes may be merged and reordered (VRAM).
    WriteCombining,
}

impl MemoryType {
    /// The `memory` scheme path that maps physical memory with this type.
    pub fn scheme_path(self) -> &'static str {
        match self {
            MemoryType::Uncacheable => "/scheme/memory/physical@uc",
            MemoryType::WriteCombining => "/scheme/memory/physical@wc",
        }
    }
}

/// A BAR to map: where it is and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR index.
    pub index: usize,
    /// Physical base address (page-aligned, non-zero).
    pub phys: u64,
    /// Size in bytes as the BAR declares it.
    pub size: u64,
    /// Length to map: `size` rounded up to whole pages.
    pub map_len: usize,
    /// Caching to map it with.
    pub memory_type: MemoryType,
}

/// The two regions pddgpud maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarPlan {
    /// VRAM (BAR 0), write-combining.
    pub vram: BarRegion,
    /// Registers (BAR 2), uncached.
    pub mmio: BarRegion,
}

/// Why a BAR cannot be mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BarError {
    /// The BAR is absent or an I/O port BAR.
    NotMemory {
        /// BAR index.
        index: usize,
        /// What it is instead.
        found: PciBar,
    },
    /// Base address 0: not assigned by the firmware (mapping physical page 0
    /// would be wrong; upstream's physmap refuses it too).
    Unassigned {
        /// BAR index.
        index: usize,
    },
    /// Size 0.
    Empty {
        /// BAR index.
        index: usize,
    },
    /// The base is not page-aligned (no valid memory BAR is).
    Unaligned {
        /// BAR index.
        index: usize,
        /// Its base.
        phys: u64,
    },
    /// Base plus size overflows, or the size does not fit this address space.
    TooLarge {
        /// BAR index.
        index: usize,
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarError::NotMemory { index, found } => {
                write!(f, "BAR {index} is not a memory BAR ({found:?})")
            }
            BarError::Unassigned { index } => {
                write!(f, "BAR {index} has base address 0 (not assigned)")
            }
            BarError::Empty { index } => write!(f, "BAR {index} has size 0"),
            BarError::Unaligned { index, phys } => {
                write!(f, "BAR {index} base {phys:#x} is not page-aligned")
            }
            BarError::TooLarge { index, size } => {
                write!(f, "BAR {index} of {size:#x} bytes cannot be mapped")
            }
        }
    }
}

impl std::error::Error for BarError {}

/// Validates BAR `index` of `func` for mapping with `memory_type`.
pub fn region(
    func: &PciFunction,
    index: usize,
    memory_type: MemoryType,
) -> Result<BarRegion, BarError> {
    let bar = func.bars.get(index).copied().unwrap_or(PciBar::None);
    let (phys, size) = bar
        .memory()
        .ok_or(BarError::NotMemory { index, found: bar })?;
    if phys == 0 {
        return Err(BarError::Unassigned { index });
    }
    if size == 0 {
        return Err(BarError::Empty { index });
    }
    if phys % PAGE_SIZE != 0 {
        return Err(BarError::Unaligned { index, phys });
    }
    let map_len = size
        .checked_next_multiple_of(PAGE_SIZE)
        .filter(|len| phys.checked_add(*len).is_some())
        .and_then(|len| usize::try_from(len).ok())
        .ok_or(BarError::TooLarge { index, size })?;
    Ok(BarRegion {
        index,
        phys,
        size,
        map_len,
        memory_type,
    })
}

/// What pddgpud maps of `func`: VRAM at BAR 0 (write-combining) and the
/// registers at BAR 2 (uncached).
pub fn plan(func: &PciFunction) -> Result<BarPlan, BarError> {
    Ok(BarPlan {
        vram: region(func, VRAM_BAR, MemoryType::WriteCombining)?,
        mmio: region(func, MMIO_BAR, MemoryType::Uncacheable)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::pcid::{PciAddress, BOCHS_DISPLAY_ID};
    use super::*;

    fn func(bars: [PciBar; 6]) -> PciFunction {
        PciFunction {
            addr: PciAddress {
                segment: 0,
                bus: 0,
                device: 2,
                function: 0,
            },
            bars,
            rom: None,
            legacy_interrupt_line: None,
            full_device_id: BOCHS_DISPLAY_ID,
        }
    }

    fn mem32(addr: u32, size: u32) -> PciBar {
        PciBar::Memory32 { addr, size }
    }

    #[test]
    fn bochs_display_maps_vram_write_combining_and_registers_uncached() {
        let f = func([
            mem32(0xfd00_0000, 0x100_0000),
            PciBar::None,
            mem32(0xfebf_0000, 0x1000),
            PciBar::None,
            PciBar::None,
            PciBar::None,
        ]);
        let p = plan(&f).unwrap();
        assert_eq!(
            p.vram,
            BarRegion {
                index: 0,
                phys: 0xfd00_0000,
                size: 0x100_0000,
                map_len: 0x100_0000,
                memory_type: MemoryType::WriteCombining,
            }
        );
        assert_eq!(p.mmio.phys, 0xfebf_0000);
        assert_eq!(p.mmio.memory_type, MemoryType::Uncacheable);
        assert_eq!(
            p.vram.memory_type.scheme_path(),
            "/scheme/memory/physical@wc"
        );
        assert_eq!(
            p.mmio.memory_type.scheme_path(),
            "/scheme/memory/physical@uc"
        );
    }

    #[test]
    fn a_64_bit_vram_bar_above_4g_and_a_sub_page_register_bar() {
        let f = func([
            PciBar::Memory64 {
                addr: 0x8_0000_0000,
                size: 0x4000_0000,
            },
            PciBar::None,
            mem32(0xfebf_0000, 0x100),
            PciBar::None,
            PciBar::None,
            PciBar::None,
        ]);
        let p = plan(&f).unwrap();
        assert_eq!(p.vram.map_len, 0x4000_0000);
        assert_eq!(p.mmio.size, 0x100);
        assert_eq!(p.mmio.map_len, 4096, "rounded up to a page");
    }

    #[test]
    fn unusable_bars_are_refused_with_the_reason() {
        let good = mem32(0xfebf_0000, 0x1000);
        let cases = [
            (PciBar::None, "not a memory BAR"),
            (PciBar::Port(0xc000), "not a memory BAR"),
            (mem32(0, 0x1000), "base address 0"),
            (mem32(0xfebf_0000, 0), "size 0"),
            (mem32(0xfebf_0800, 0x800), "not page-aligned"),
            (
                PciBar::Memory64 {
                    addr: u64::MAX - 0xfff,
                    size: 0x2000,
                },
                "cannot be mapped",
            ),
        ];
        for (bad, why) in cases {
            // As the VRAM BAR, then as the register BAR, the other one good.
            for (bad_at, good_at) in [(VRAM_BAR, MMIO_BAR), (MMIO_BAR, VRAM_BAR)] {
                let mut bars = [PciBar::None; 6];
                bars[bad_at] = bad;
                bars[good_at] = good;
                let err = plan(&func(bars)).unwrap_err().to_string();
                assert!(err.contains(&format!("BAR {bad_at}")), "{err}");
                assert!(err.contains(why), "{bad:?}: {err}");
            }
        }
    }
}
