//! The PCI function pcid handed to pddgpud, with its BARs mapped (Redox
//! only).

use std::fs::File;

use super::bars::{self, BarPlan};
use super::pcid::{self, PciFunction, PcidChannel};
use super::physmap::PhysMapping;

/// The PDDGPU as pddgpud holds it on Redox: its PCI function and the two
/// BAR mappings (the driver's only access to the device).
#[derive(Debug)]
pub struct PciDevice {
    /// The function as pcid described it.
    pub func: PciFunction,
    /// VRAM (BAR 0), write-combining.
    pub vram: PhysMapping,
    /// Registers (BAR 2), uncached.
    pub mmio: PhysMapping,
    /// The pcid channel, held open for the life of the driver as upstream
    /// drivers do (the function stays ours while it is open).
    pub channel: PcidChannel<File>,
}

impl PciDevice {
    /// One line for the log: address, id and BARs.
    pub fn description(&self) -> String {
        let id = &self.func.full_device_id;
        format!(
            "PCI {} {:04x}:{:04x} (class {:02x}.{:02x}): VRAM {:#x} bytes at {:#x}, registers {:#x} bytes at {:#x}",
            self.func.addr,
            id.vendor_id,
            id.device_id,
            id.class,
            id.subclass,
            self.vram.region().size,
            self.vram.region().phys,
            self.mmio.region().size,
            self.mmio.region().phys,
        )
    }
}

/// Takes the pcid channel from `PCID_CLIENT_CHANNEL`, asks for the
/// function's configuration and maps its VRAM and register BARs.
pub fn open_pci_device() -> Result<PciDevice, String> {
    let mut channel = pcid::connect_from_env().map_err(|e| e.to_string())?;
    let args = channel.request_config().map_err(|e| e.to_string())?;
    let func = args.func;
    let BarPlan { vram, mmio } =
        bars::plan(&func).map_err(|e| format!("PCI {}: {e}", func.addr))?;
    let mmio = PhysMapping::map(mmio)?;
    let vram = PhysMapping::map(vram)?;
    Ok(PciDevice {
        func,
        vram,
        mmio,
        channel,
    })
}
