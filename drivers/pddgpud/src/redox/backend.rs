//! The Redox device backend (Redox only): the PCI function handed over by
//! pcid, its BARs mapped with physmap, the driver core on top.
//!
//! - registers: BAR 2, uncached, wrapped in the core's [`Mmio`] capability;
//!   the device model (the PDDGPU, or QEMU's bochs-display standing in for
//!   it) is found by probing those registers;
//! - VRAM: BAR 0, write-combining, as the core's VRAM [`MemoryRegion`] (the
//!   VRAM size the registers report);
//! - GTT: page-aligned zeroed memory of the size the device reports (system
//!   pages, as on a real GPU; for bochs-display, `--gtt-size`).
//!
//! Clients map BOs through `mmap_prep`, which answers with addresses inside
//! these mappings, so both stay mapped for the life of the process.

use std::sync::Arc;

use pddgpu::device::{
    probe, BochsModel, DeviceModel, DeviceResources, MemoryRegion, Mmio, PddgpuModel,
};
use pddgpu::driver::Driver;
use pddgpu_scheme::{Backing, Region};

use super::device::{open_pci_device, PciDevice};
use crate::backend::OpenedDevice;
use crate::entropy::OsRandom;
use crate::options::Options;

/// The device models pddgpud knows, tried in order on the register BAR
/// (probing only reads identification registers).
fn models(opts: &Options) -> Result<Vec<Box<dyn DeviceModel>>, String> {
    let bochs = BochsModel::new(opts.gtt_size).map_err(|e| format!("--gtt-size: {e}"))?;
    Ok(vec![PddgpuModel::boxed(), bochs.boxed()])
}

/// Opens the PCI function pcid-spawner handed to this process.
pub fn open(opts: &Options) -> Result<OpenedDevice, String> {
    let mut models = models(opts)?;
    // The BAR mappings and the pcid channel must outlive the driver and
    // every client mapping: they live as long as the process.
    let dev: &'static PciDevice = Box::leak(Box::new(open_pci_device()?));
    let description = dev.description();

    // SAFETY: `dev.mmio` is an uncached mapping of the function's register
    // BAR that is never unmapped (leaked above) and that only this `Mmio`
    // (and its clones, inside the driver) accesses, volatilely.
    let mmio = unsafe { Mmio::new(dev.mmio.as_ptr(), dev.mmio.len()) }
        .map_err(|e| format!("{description}: registers: {e}"))?;
    let refs: Vec<&dyn DeviceModel> = models.iter().map(|m| m.as_ref()).collect();
    let (index, info) =
        probe(&mmio, &refs).map_err(|e| format!("{description}: not a usable device: {e}"))?;
    let model = models.swap_remove(index);
    let model_name = model.name();

    let bar_len = dev.vram.len() as u64;
    let vram_len = usize::try_from(info.vram_size)
        .ok()
        .filter(|_| info.vram_size <= bar_len)
        .ok_or_else(|| {
            format!(
                "{description}: the registers report {:#x} bytes of VRAM but the VRAM BAR maps {bar_len:#x}",
                info.vram_size
            )
        })?;
    // SAFETY: the first `vram_len` bytes (checked just above) of a
    // write-combining mapping of the VRAM BAR that is never unmapped (leaked
    // above); this process touches it only through the core's
    // `MemoryRegion` copies, clients through their own mappings.
    let vram = unsafe { MemoryRegion::new(dev.vram.as_ptr(), vram_len) }
        .map_err(|e| format!("{description}: VRAM: {e}"))?;
    let gtt_len = usize::try_from(info.gtt_size)
        .map_err(|_| format!("{description}: GTT of {:#x} bytes too large", info.gtt_size))?;
    let gtt = MemoryRegion::new_zeroed(gtt_len)
        .map_err(|e| format!("{description}: GTT backing: {e}"))?;

    let backing = Backing {
        vram: Region {
            server_addr: Some(vram.as_ptr() as usize),
        },
        gtt: Region {
            server_addr: Some(gtt.as_ptr() as usize),
        },
    };
    let resources = DeviceResources {
        mmio,
        model,
        vram,
        gtt,
    };
    // The random source is opened here, before the null namespace.
    let driver = Driver::with_options(resources, OsRandom::driver_options()?, 0)
        .map_err(|e| format!("{description}: driver: {e}"))?;
    Ok(OpenedDevice {
        driver: Arc::new(driver),
        backing,
        faults: None,
        description: format!("{} ({model_name}): {description}", info.name),
    })
}
