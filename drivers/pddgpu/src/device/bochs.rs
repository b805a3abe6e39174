//! QEMU's `bochs-display` (PCI 1234:1111) as a [`DeviceModel`]: a real,
//! emulated PCI GPU to run the driver on when no PDDGPU is present.
//!
//! The layout is QEMU's (`include/hw/display/bochs-vbe.h`,
//! `hw/display/bochs-display.c`; the same holds for QEMU's PCI std VGA):
//!
//! - BAR0: VRAM (`vgamem`, a power of two from 4 to 256 MiB), fully
//!   CPU-visible.
//! - BAR2: a 4 KiB MMIO region. At 0x500 the Bochs VBE "DISPI" registers are
//!   mapped flat, one 16-bit register per index (offset `0x500 + index * 2`),
//!   with no index/data port pair. Index 0 (`ID`) reads `0xB0C5`; index 0xa
//!   (`VIDEO_MEMORY_64K`, read-only) reads the VRAM size in 64 KiB units. At
//!   0x600 QEMU's extension registers (32-bit): the extension region size and
//!   the framebuffer byte order.
//!
//! The device has no GTT: the GTT aperture is system memory the daemon
//! provides, so its size is configuration given to [`BochsModel::new`]. The
//! model only reads registers; it never programs a display mode.

use alloc::boxed::Box;

use super::mmio::Mmio;
use super::model::{identify, DeviceModel};
use super::{DeviceError, DeviceInfo};

/// PCI vendor id of QEMU's emulated display devices.
pub const PCI_VENDOR: u16 = 0x1234;
/// PCI device id of `bochs-display` (and std VGA).
pub const PCI_DEVICE: u16 = 0x1111;
/// The PCI BAR holding VRAM.
pub const VRAM_BAR: u8 = 0;
/// The PCI BAR holding the MMIO registers.
pub const MMIO_BAR: u8 = 2;

/// The register map of the MMIO BAR.
pub mod regs {
    use crate::device::regs::Register;

    /// Size of the MMIO BAR.
    pub const REGION_SIZE: usize = 0x1000;
    /// Where the DISPI registers start in the MMIO BAR.
    pub const DISPI_BASE: usize = 0x500;
    /// Where QEMU's extension registers start in the MMIO BAR.
    pub const QEXT_BASE: usize = 0x600;

    const fn dispi(name: &'static str, index: usize) -> Register<u16> {
        Register::new(name, DISPI_BASE + index * 2)
    }

    /// DISPI interface version (`0xB0C0..=0xB0C5`).
    pub const ID: Register<u16> = dispi("DISPI_ID", 0x0);
    /// Horizontal resolution.
    pub const XRES: Register<u16> = dispi("DISPI_XRES", 0x1);
    /// Vertical resolution.
    pub const YRES: Register<u16> = dispi("DISPI_YRES", 0x2);
    /// Bits per pixel.
    pub const BPP: Register<u16> = dispi("DISPI_BPP", 0x3);
    /// Enable bits (display on, linear framebuffer, ...).
    pub const ENABLE: Register<u16> = dispi("DISPI_ENABLE", 0x4);
    /// Bank (banked mode only).
    pub const BANK: Register<u16> = dispi("DISPI_BANK", 0x5);
    /// Virtual width (stride in pixels).
    pub const VIRT_WIDTH: Register<u16> = dispi("DISPI_VIRT_WIDTH", 0x6);
    /// Virtual height.
    pub const VIRT_HEIGHT: Register<u16> = dispi("DISPI_VIRT_HEIGHT", 0x7);
    /// Scan-out X offset.
    pub const X_OFFSET: Register<u16> = dispi("DISPI_X_OFFSET", 0x8);
    /// Scan-out Y offset.
    pub const Y_OFFSET: Register<u16> = dispi("DISPI_Y_OFFSET", 0x9);
    /// VRAM size in 64 KiB units (read-only; since interface ID5).
    pub const VIDEO_MEMORY_64K: Register<u16> = dispi("DISPI_VIDEO_MEMORY_64K", 0xa);
    /// Size of QEMU's extension register region in bytes.
    pub const QEXT_SIZE: Register<u32> = Register::new("QEXT_SIZE", QEXT_BASE);
    /// Framebuffer byte order: [`LITTLE_ENDIAN`] or [`BIG_ENDIAN`].
    pub const QEXT_BYTEORDER: Register<u32> = Register::new("QEXT_BYTEORDER", QEXT_BASE + 4);

    /// Lowest DISPI interface id.
    pub const ID0: u16 = 0xB0C0;
    /// The interface id that has `VIDEO_MEMORY_64K` (what QEMU reports).
    pub const ID5: u16 = 0xB0C5;
    /// `QEXT_BYTEORDER` value: little-endian framebuffer.
    pub const LITTLE_ENDIAN: u32 = 0x1e1e_1e1e;
    /// `QEXT_BYTEORDER` value: big-endian framebuffer.
    pub const BIG_ENDIAN: u32 = 0xbebe_bebe;
    /// Unit of `VIDEO_MEMORY_64K`.
    pub const VIDEO_MEMORY_UNIT: u64 = 64 * 1024;
}

/// QEMU's `bochs-display` as a device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BochsModel {
    gtt_size: u64,
}

const PAGE: u64 = 4096;

impl BochsModel {
    /// A model whose (software) GTT aperture is `gtt_size` bytes; fails
    /// unless that is a positive multiple of 4 KiB.
    pub fn new(gtt_size: u64) -> Result<Self, DeviceError> {
        if gtt_size == 0 || gtt_size % PAGE != 0 {
            return Err(DeviceError::InvalidConfig(
                "bochs-display GTT size must be a positive multiple of 4 KiB",
            ));
        }
        Ok(BochsModel { gtt_size })
    }

    /// The model as a boxed [`DeviceModel`].
    pub fn boxed(self) -> Box<dyn DeviceModel> {
        Box::new(self)
    }

    /// The GTT aperture size this model reports.
    pub fn gtt_size(&self) -> u64 {
        self.gtt_size
    }
}

impl DeviceModel for BochsModel {
    fn name(&self) -> &'static str {
        "bochs-display"
    }

    fn probe(&self, mmio: &Mmio) -> Result<DeviceInfo, DeviceError> {
        let id = identify(mmio, self.name(), regs::REGION_SIZE, regs::ID, |id| {
            id & 0xfff0 == regs::ID0
        })?;
        if id < regs::ID5 {
            // Older interfaces have no VIDEO_MEMORY_64K register.
            return Err(DeviceError::UnsupportedVersion {
                model: self.name(),
                version: id.into(),
            });
        }
        let units = mmio.get(regs::VIDEO_MEMORY_64K)?;
        if units == 0 || units == u16::MAX {
            return Err(DeviceError::BadRegisters {
                model: self.name(),
                reason: "DISPI VIDEO_MEMORY_64K reports no usable VRAM",
            });
        }
        let vram_size = u64::from(units) * regs::VIDEO_MEMORY_UNIT;
        Ok(DeviceInfo {
            name: "bochs-display",
            vram_size,
            visible_size: vram_size,
            gtt_size: self.gtt_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::mmio::{RegisterBlock, Width};
    use crate::device::model::{probe, PddgpuModel};
    use crate::device::sim::{SimConfig, SimDevice};
    use alloc::sync::Arc;
    use alloc::vec;

    /// The MMIO BAR of QEMU's bochs-display, as QEMU answers reads: the
    /// DISPI block computes ID and VIDEO_MEMORY_64K, unknown indexes read
    /// all ones, and outside the DISPI/QEXT blocks reads are 0.
    #[derive(Debug)]
    struct QemuBochs {
        id: u16,
        vgamem: u64,
    }

    impl RegisterBlock for QemuBochs {
        fn len(&self) -> usize {
            regs::REGION_SIZE
        }
        fn read(&self, offset: usize, _width: Width) -> u64 {
            match offset {
                o if (regs::DISPI_BASE..regs::DISPI_BASE + 0x0b * 2).contains(&o) => {
                    match (o - regs::DISPI_BASE) >> 1 {
                        0x0 => self.id.into(),
                        0xa => self.vgamem / (64 * 1024),
                        _ => 0,
                    }
                }
                o if o == regs::QEXT_SIZE.offset() => 8,
                o if o == regs::QEXT_BYTEORDER.offset() => regs::LITTLE_ENDIAN.into(),
                _ => 0,
            }
        }
        fn write(&self, _offset: usize, _width: Width, _value: u64) {}
    }

    fn bochs(id: u16, vgamem: u64) -> Mmio {
        Mmio::emulated(Arc::new(QemuBochs { id, vgamem }))
    }

    #[test]
    fn register_offsets_match_qemu() {
        assert_eq!(regs::ID.offset(), 0x500);
        assert_eq!(regs::ENABLE.offset(), 0x508);
        assert_eq!(regs::Y_OFFSET.offset(), 0x512);
        assert_eq!(regs::VIDEO_MEMORY_64K.offset(), 0x514);
        assert_eq!(regs::QEXT_BYTEORDER.offset(), 0x604);
        assert_eq!(regs::ID.width(), Width::W16);
    }

    #[test]
    fn vram_size_comes_from_the_register() {
        let model = BochsModel::new(32 << 20).unwrap();
        for mib in [4u64, 16, 64, 256] {
            let info = model.probe(&bochs(regs::ID5, mib << 20)).unwrap();
            assert_eq!(
                info,
                DeviceInfo {
                    name: "bochs-display",
                    vram_size: mib << 20,
                    visible_size: mib << 20,
                    gtt_size: 32 << 20,
                }
            );
        }
    }

    #[test]
    fn foreign_old_and_broken_devices_are_refused() {
        let model = BochsModel::new(1 << 20).unwrap();
        assert!(matches!(
            model.probe(&bochs(0x0000, 64 << 20)),
            Err(DeviceError::NotThisDevice { found: 0, .. })
        ));
        assert!(matches!(
            model.probe(&bochs(0xB0C2, 64 << 20)),
            Err(DeviceError::UnsupportedVersion {
                version: 0xB0C2,
                ..
            })
        ));
        assert!(matches!(
            model.probe(&bochs(regs::ID5, 0)),
            Err(DeviceError::BadRegisters { .. })
        ));
        // A region too small to hold the DISPI block.
        let mut words = vec![0u64; 64];
        // SAFETY: `words` outlives `small` and is only accessed through it.
        let small = unsafe { Mmio::new(words.as_mut_ptr().cast(), 512) }.unwrap();
        assert!(matches!(
            model.probe(&small),
            Err(DeviceError::NotThisDevice { found: 512, .. })
        ));
    }

    #[test]
    fn mapped_registers_read_little_endian_16_bit() {
        // The same bytes a mapping of the BAR shows.
        let mut words = vec![0u64; regs::REGION_SIZE / 8];
        // SAFETY: `words` outlives `mmio` and is only accessed through it.
        let mmio = unsafe { Mmio::new(words.as_mut_ptr().cast(), regs::REGION_SIZE) }.unwrap();
        mmio.write16(0x500, 0xB0C5).unwrap();
        mmio.write16(0x514, 1024).unwrap();
        let info = BochsModel::new(4096).unwrap().probe(&mmio).unwrap();
        assert_eq!(info.vram_size, 64 << 20);
    }

    #[test]
    fn probe_picks_the_right_model() {
        let model = BochsModel::new(16 << 20).unwrap();
        let models: [&dyn DeviceModel; 2] = [&PddgpuModel, &model];
        let (i, info) = probe(&bochs(regs::ID5, 16 << 20), &models).unwrap();
        assert_eq!((i, info.name), (1, "bochs-display"));
        let sim = SimDevice::new(SimConfig::default()).unwrap();
        assert_eq!(probe(&sim.mmio(), &models).unwrap().0, 0);
        // bochs alone does not claim the simulated PDDGPU
        assert_eq!(probe(&sim.mmio(), &[&model]), Err(DeviceError::NoMatch));
    }

    #[test]
    fn gtt_size_is_validated() {
        assert!(BochsModel::new(0).is_err());
        assert!(BochsModel::new(4095).is_err());
        assert_eq!(BochsModel::new(8192).unwrap().gtt_size(), 8192);
    }
}
