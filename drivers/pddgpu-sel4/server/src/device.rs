//! The real emulated GPU: QEMU's bochs-display, found in PCI configuration
//! space and mapped from the **device untyped capabilities** that cover
//! its BARs.
//!
//! seL4 hands the root task every non-RAM physical range as device
//! untyped memory. To map a BAR the server carves exactly the BAR out of
//! the device untyped that covers it — splitting it in halves until one
//! half is the BAR — and retypes that into 4 KiB frames, which it maps
//! into itself (BAR2, the registers, uncached). The frame capabilities
//! stay in the root task's CNode; a client only ever receives copies of
//! the frames under its own VRAM BOs.

use core::ops::Range;

use pddgpu::device::bochs::{MMIO_BAR, PCI_DEVICE, PCI_VENDOR, VRAM_BAR};
use pddgpu::device::Mmio;
use sel4::{CapTypeForObjectOfFixedSize, VmAttributes};

use crate::frames::{Frames, FRAME};
use crate::objects::Objects;
use crate::paging::Tables;
use crate::pci::{Address, ConfigSpace, MemoryBar};

/// Where the server maps the VRAM BAR.
const VRAM_VADDR: usize = 0x13_0000_0000;
/// Where the server maps the register BAR.
const MMIO_VADDR: usize = 0x14_0000_0000;

/// The mapped bochs-display.
pub struct Bochs {
    /// Its PCI address.
    pub address: Address,
    /// BAR0.
    pub vram_bar: MemoryBar,
    /// BAR2.
    pub mmio_bar: MemoryBar,
    /// BAR0's frames, mapped in the server.
    pub vram: Frames,
    /// BAR2's frames, mapped uncached in the server.
    pub mmio: Frames,
    /// Which device untyped covered each BAR: `(paddr, size bits)`.
    pub untyped: [(u64, usize); 2],
}

impl Bochs {
    /// The register capability for the core.
    pub fn mmio(&self) -> Mmio {
        // SAFETY: `MMIO_VADDR..+len` maps BAR2's frames uncached in this
        // address space for the server's whole life (`Frames` are never
        // unmapped); the core touches them only through `Mmio`'s volatile
        // accesses, and no client is ever given these frames.
        #[allow(unsafe_code)]
        let mmio = unsafe { Mmio::new(self.mmio_vaddr() as *mut u8, self.mmio.len()) };
        mmio.expect("the register mapping is page-aligned")
    }

    fn mmio_vaddr(&self) -> usize {
        MMIO_VADDR
    }
}

/// Why the device could not be used.
#[derive(Debug)]
pub enum DeviceError {
    /// No 1234:1111 function on bus 0.
    Absent,
    /// A BAR is missing or not memory.
    NoBar(u8),
    /// No device untyped covers the BAR.
    NotCovered(MemoryBar),
    /// A kernel call failed.
    Kernel(&'static str, sel4::Error),
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceError::Absent => write!(
                f,
                "no bochs-display ({PCI_VENDOR:04x}:{PCI_DEVICE:04x}) on PCI bus 0"
            ),
            DeviceError::NoBar(i) => write!(f, "BAR{i} is not an assigned memory BAR"),
            DeviceError::NotCovered(bar) => write!(
                f,
                "no device untyped covers the BAR at {:#x} ({:#x} bytes)",
                bar.base, bar.size
            ),
            DeviceError::Kernel(what, e) => write!(f, "{what}: {e:?}"),
        }
    }
}

/// Finds the bochs-display and maps both BARs into the server.
pub fn map(
    bootinfo: &sel4::BootInfo,
    objects: &mut Objects,
    tables: &mut Tables,
) -> Result<Bochs, DeviceError> {
    let kernel = |what| move |e| DeviceError::Kernel(what, e);
    let config = ConfigSpace::new(objects).map_err(kernel("issuing the PCI I/O ports"))?;
    let address = config
        .find(PCI_VENDOR, PCI_DEVICE)
        .map_err(kernel("reading PCI configuration space"))?
        .ok_or(DeviceError::Absent)?;
    let bar = |index| {
        config
            .memory_bar(address, index)
            .map_err(kernel("probing a BAR"))?
            .ok_or(DeviceError::NoBar(index))
    };
    let (vram_bar, mmio_bar) = (bar(VRAM_BAR)?, bar(MMIO_BAR)?);
    let (vram_slots, vram_untyped) = carve(bootinfo, objects, vram_bar)?;
    let (mmio_slots, mmio_untyped) = carve(bootinfo, objects, mmio_bar)?;
    let vram = Frames::map_existing(
        objects,
        tables,
        vram_slots,
        VRAM_VADDR,
        VmAttributes::default(),
    )
    .map_err(kernel("mapping BAR0"))?;
    let mmio = Frames::map_existing(
        objects,
        tables,
        mmio_slots,
        MMIO_VADDR,
        VmAttributes::CACHE_DISABLED,
    )
    .map_err(kernel("mapping BAR2"))?;
    Ok(Bochs {
        address,
        vram_bar,
        mmio_bar,
        vram,
        mmio,
        untyped: [vram_untyped, mmio_untyped],
    })
}

/// Retypes exactly `bar` out of the device untyped covering it into
/// frames; returns their slots and the covering untyped.
fn carve(
    bootinfo: &sel4::BootInfo,
    objects: &mut Objects,
    bar: MemoryBar,
) -> Result<(Range<usize>, (u64, usize)), DeviceError> {
    let kernel = |what| move |e| DeviceError::Kernel(what, e);
    let (index, desc) = bootinfo
        .untyped_list()
        .iter()
        .enumerate()
        .find(|(_, d)| {
            let (start, size) = (d.paddr() as u64, 1u64 << d.size_bits());
            d.is_device() && start <= bar.base && bar.base + bar.size <= start + size
        })
        .ok_or(DeviceError::NotCovered(bar))?;
    let covering = (desc.paddr() as u64, desc.size_bits());
    let mut untyped = bootinfo.untyped().index(index).cap();
    let (mut paddr, mut bits) = covering;
    let bar_bits = bar.size.trailing_zeros() as usize;
    // Halve until the half holding the BAR is the BAR.
    while bits > bar_bits {
        let halves = objects
            .carve(
                untyped,
                sel4::ObjectBlueprint::Untyped {
                    size_bits: bits - 1,
                },
                2,
            )
            .map_err(kernel("splitting a device untyped"))?;
        bits -= 1;
        let upper = bar.base >= paddr + (1 << bits);
        if upper {
            paddr += 1 << bits;
        }
        let slot = if upper {
            halves.start + 1
        } else {
            halves.start
        };
        untyped = sel4::init_thread::Slot::<sel4::cap_type::Untyped>::from_index(slot).cap();
    }
    let frames = objects
        .carve(
            untyped,
            sel4::cap_type::Granule::object_blueprint(),
            (bar.size as usize) / FRAME,
        )
        .map_err(kernel("retyping the BAR into frames"))?;
    Ok((frames, covering))
}
