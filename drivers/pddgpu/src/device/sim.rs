//! The simulated PDDGPU: a software device implementing the
//! [`pddgpu`](super::regs::pddgpu) register map, with backing memory for
//! VRAM and GTT and fault injection. It is the device everywhere a real one
//! is absent (tests, benchmarks, the daemon's default).
//!
//! Fault injection (with the `fault-injection` feature) is done by the
//! harness through [`SimDevice`]'s methods,
//! which set the device's registers exactly as hardware would; the driver
//! notices through its normal register reads:
//! - [`SimDevice::inject_error`]: `STATUS.ERROR` — the device failed.
//! - [`SimDevice::fail_next_allocations`]: the next N allocations fail
//!   (each consumes one by reading `FAULT_ALLOC`).
//! - [`SimDevice::corrupt_manager`]: `STATUS.CORRUPT_*` — the driver is
//!   told to corrupt a manager's bookkeeping (it leaks memory inside the
//!   allocator), which its audit must then detect.
//! - [`SimDevice::report_bad_vram_range`]: `STATUS.BAD_RANGE` with
//!   `BAD_START`/`BAD_LEN` — VRAM pages that must not be used any more.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use super::memory::MemoryRegion;
use super::mmio::{Mmio, RegisterBlock, Width};
use super::model::PddgpuModel;
use super::regs::pddgpu::{self as regs, Control, Status};
#[cfg(feature = "fault-injection")]
use super::Domain;
use super::{DeviceError, DeviceResources};

/// Sizes of a simulated PDDGPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// VRAM bytes (a positive multiple of 4 KiB).
    pub vram_size: u64,
    /// CPU-visible window at the start of VRAM (a multiple of 4 KiB, at
    /// most `vram_size`).
    pub visible_size: u64,
    /// GTT aperture bytes (a positive multiple of 4 KiB).
    pub gtt_size: u64,
}

impl Default for SimConfig {
    /// 256 MiB of VRAM with a 64 MiB visible window, 256 MiB of GTT.
    fn default() -> Self {
        SimConfig::sized(256 << 20, 256 << 20)
    }
}

const PAGE: u64 = 4096;

impl SimConfig {
    /// `vram` bytes of VRAM whose first quarter is CPU-visible, and `gtt`
    /// bytes of GTT.
    pub const fn sized(vram: u64, gtt: u64) -> Self {
        SimConfig {
            vram_size: vram,
            visible_size: vram / 4,
            gtt_size: gtt,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), DeviceError> {
        let bad = |reason| Err(DeviceError::InvalidConfig(reason));
        if self.vram_size == 0 || self.vram_size % PAGE != 0 {
            return bad("VRAM size must be a positive multiple of 4 KiB");
        }
        if self.visible_size > self.vram_size || self.visible_size % PAGE != 0 {
            return bad("visible window must be a multiple of 4 KiB no larger than VRAM");
        }
        if self.gtt_size == 0 || self.gtt_size % PAGE != 0 {
            return bad("GTT size must be a positive multiple of 4 KiB");
        }
        if usize::try_from(self.vram_size).is_err() || usize::try_from(self.gtt_size).is_err() {
            return bad("sizes must fit the address space");
        }
        Ok(())
    }
}

/// The register file of the simulated PDDGPU (its [`RegisterBlock`]).
#[derive(Debug)]
pub struct SimRegisters {
    plain: Box<[AtomicU32]>,
    status: AtomicU32,
    control: AtomicU32,
    pending_faults: AtomicU32,
}

fn is_read_only(offset: usize) -> bool {
    offset < regs::STATUS.offset()
        || (regs::FAULT_ALLOC.offset()..regs::SCRATCH.offset()).contains(&offset)
}

impl SimRegisters {
    fn new(config: &SimConfig) -> Self {
        let plain: Vec<AtomicU32> = (0..regs::REGION_SIZE / 4)
            .map(|_| AtomicU32::new(0))
            .collect();
        let r = SimRegisters {
            plain: plain.into_boxed_slice(),
            status: AtomicU32::new(0),
            control: AtomicU32::new(0),
            pending_faults: AtomicU32::new(0),
        };
        r.set_plain32(regs::ID.offset(), regs::ID_VALUE);
        r.set_plain32(regs::VERSION.offset(), u32::from(regs::VERSION_MAJOR) << 16);
        r.set_plain64(regs::VRAM_SIZE.offset(), config.vram_size);
        r.set_plain64(regs::VISIBLE_SIZE.offset(), config.visible_size);
        r.set_plain64(regs::GTT_SIZE.offset(), config.gtt_size);
        r
    }

    fn set_plain32(&self, offset: usize, value: u32) {
        self.plain[offset / 4].store(value, Ordering::Release);
    }

    fn set_plain64(&self, offset: usize, value: u64) {
        self.set_plain32(offset, value as u32);
        self.set_plain32(offset + 4, (value >> 32) as u32);
    }

    fn status_now(&self) -> Status {
        let mut s = Status::from_bits_retain(self.status.load(Ordering::Acquire));
        if self.pending_faults.load(Ordering::Acquire) > 0 {
            s |= Status::ALLOC_FAULT;
        }
        if Control::from_bits_retain(self.control.load(Ordering::Acquire)).contains(Control::ENABLE)
        {
            s |= Status::ENABLED;
        }
        s
    }

    /// One 32-bit register; `consume` allows read side effects.
    fn read32(&self, offset: usize, consume: bool) -> u32 {
        match offset {
            o if o == regs::STATUS.offset() => self.status_now().bits(),
            o if o == regs::CONTROL.offset() => self.control.load(Ordering::Acquire),
            o if o == regs::FAULT_ALLOC.offset() => {
                if !consume {
                    return 0;
                }
                let taken =
                    self.pending_faults
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                u32::from(taken.is_ok())
            }
            o if o == regs::FAULT_PENDING.offset() => self.pending_faults.load(Ordering::Acquire),
            o => self.plain[o / 4].load(Ordering::Acquire),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        match offset {
            o if o == regs::STATUS.offset() => {
                self.status
                    .fetch_and(!(value & Status::W1C.bits()), Ordering::AcqRel);
            }
            o if o == regs::CONTROL.offset() => {
                self.control
                    .store(value & Control::all().bits(), Ordering::Release);
            }
            o if is_read_only(o) => {}
            o => self.plain[o / 4].store(value, Ordering::Release),
        }
    }

    fn is_special(offset: usize) -> bool {
        offset == regs::STATUS.offset()
            || offset == regs::CONTROL.offset()
            || offset == regs::FAULT_ALLOC.offset()
            || offset == regs::FAULT_PENDING.offset()
    }
}

impl RegisterBlock for SimRegisters {
    fn len(&self) -> usize {
        regs::REGION_SIZE
    }

    /// 32-bit reads have side effects (`FAULT_ALLOC`); 64-bit reads are two
    /// 32-bit reads without side effects; 8/16-bit reads extract from the
    /// containing 32-bit register.
    fn read(&self, offset: usize, width: Width) -> u64 {
        match width {
            Width::W32 => u64::from(self.read32(offset, true)),
            Width::W64 => {
                u64::from(self.read32(offset, false))
                    | u64::from(self.read32(offset + 4, false)) << 32
            }
            Width::W8 | Width::W16 => {
                let word = self.read32(offset & !3, false);
                u64::from(word >> ((offset & 3) * 8))
            }
        }
    }

    /// 64-bit writes are two 32-bit writes; 8/16-bit writes update plain
    /// registers and are ignored by the special ones (`STATUS`, `CONTROL`,
    /// `FAULT_*`) and the read-only ones.
    fn write(&self, offset: usize, width: Width, value: u64) {
        match width {
            Width::W32 => self.write32(offset, value as u32),
            Width::W64 => {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
            Width::W8 | Width::W16 => {
                let word = offset & !3;
                if Self::is_special(word) || is_read_only(word) {
                    return;
                }
                let shift = (offset & 3) * 8;
                let mask = (width.mask() as u32) << shift;
                let bits = (value as u32) << shift;
                let _ =
                    self.plain[word / 4].fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        Some((w & !mask) | (bits & mask))
                    });
            }
        }
    }
}

/// A simulated PDDGPU: its registers and its VRAM and GTT backing memory.
#[derive(Clone, Debug)]
pub struct SimDevice {
    config: SimConfig,
    regs: Arc<SimRegisters>,
    vram: MemoryRegion,
    gtt: MemoryRegion,
}

impl SimDevice {
    /// A device of the given sizes with zero-filled backing memory of its
    /// own.
    pub fn new(config: SimConfig) -> Result<Self, DeviceError> {
        config.validate()?;
        let vram = MemoryRegion::new_zeroed(config.vram_size as usize)?;
        let gtt = MemoryRegion::new_zeroed(config.gtt_size as usize)?;
        Self::with_backing(config, vram, gtt)
    }

    /// A device whose VRAM and GTT contents live in regions provided by
    /// the caller (e.g. shared memory the daemon also hands to clients).
    /// Each must be at least as large as its domain.
    pub fn with_backing(
        config: SimConfig,
        vram: MemoryRegion,
        gtt: MemoryRegion,
    ) -> Result<Self, DeviceError> {
        config.validate()?;
        check_backing("VRAM", &vram, config.vram_size)?;
        check_backing("GTT", &gtt, config.gtt_size)?;
        Ok(SimDevice {
            regs: Arc::new(SimRegisters::new(&config)),
            config,
            vram,
            gtt,
        })
    }

    /// The sizes the device reports.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// A register capability for the driver.
    pub fn mmio(&self) -> Mmio {
        Mmio::emulated(self.regs.clone())
    }

    /// VRAM backing memory.
    pub fn vram(&self) -> &MemoryRegion {
        &self.vram
    }

    /// GTT backing memory.
    pub fn gtt(&self) -> &MemoryRegion {
        &self.gtt
    }

    /// Everything [`Driver::new`](crate::driver::Driver::new) needs to run
    /// on this device.
    pub fn resources(&self) -> DeviceResources {
        DeviceResources {
            mmio: self.mmio(),
            model: Box::new(PddgpuModel),
            vram: self.vram.clone(),
            gtt: self.gtt.clone(),
        }
    }

    /// The `STATUS` register as the driver would read it (no side effects).
    pub fn status(&self) -> Status {
        self.regs.status_now()
    }

    /// Whether the driver has enabled the device (`CONTROL.ENABLE`).
    pub fn is_enabled(&self) -> bool {
        self.status().contains(Status::ENABLED)
    }

    /// Injected allocation failures not yet consumed.
    pub fn pending_alloc_failures(&self) -> u32 {
        self.regs.pending_faults.load(Ordering::Acquire)
    }
}

#[cfg(feature = "fault-injection")]
impl SimDevice {
    /// Fault injection: the device reports an internal error.
    pub fn inject_error(&self) {
        self.raise(Status::ERROR);
    }

    /// Fault injection: the next `count` allocations fail (adds to any
    /// still pending).
    pub fn fail_next_allocations(&self, count: u32) {
        let _ = self
            .regs
            .pending_faults
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(count))
            });
    }

    /// Fault injection: the driver is to corrupt the bookkeeping of the
    /// `domain` manager.
    pub fn corrupt_manager(&self, domain: Domain) {
        self.raise(match domain {
            Domain::Vram => Status::CORRUPT_VRAM,
            Domain::Gtt => Status::CORRUPT_GTT,
        });
    }

    /// Fault injection: VRAM `start..start + len` went bad.
    pub fn report_bad_vram_range(&self, start: u64, len: u64) -> Result<(), DeviceError> {
        if len == 0
            || start
                .checked_add(len)
                .is_none_or(|end| end > self.config.vram_size)
        {
            return Err(DeviceError::InvalidConfig(
                "bad range must be non-empty and inside VRAM",
            ));
        }
        self.regs.set_plain64(regs::BAD_START.offset(), start);
        self.regs.set_plain64(regs::BAD_LEN.offset(), len);
        self.raise(Status::BAD_RANGE);
        Ok(())
    }

    fn raise(&self, bits: Status) {
        self.regs.status.fetch_or(bits.bits(), Ordering::AcqRel);
    }
}

fn check_backing(what: &'static str, region: &MemoryRegion, need: u64) -> Result<(), DeviceError> {
    if (region.len() as u64) < need {
        return Err(DeviceError::BackingTooSmall {
            what,
            len: region.len() as u64,
            need,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SimConfig {
        SimConfig {
            vram_size: 1 << 20,
            visible_size: 256 << 10,
            gtt_size: 2 << 20,
        }
    }

    #[test]
    fn registers_report_sizes_and_are_read_only() {
        let dev = SimDevice::new(small()).unwrap();
        let mmio = dev.mmio();
        assert_eq!(mmio.get(regs::ID).unwrap(), regs::ID_VALUE);
        assert_eq!(mmio.get(regs::VRAM_SIZE).unwrap(), 1 << 20);
        assert_eq!(mmio.read32(regs::VRAM_SIZE.offset()).unwrap(), 1 << 20);
        assert_eq!(mmio.get(regs::VISIBLE_SIZE).unwrap(), 256 << 10);
        assert_eq!(mmio.get(regs::GTT_SIZE).unwrap(), 2 << 20);
        mmio.set(regs::VRAM_SIZE, 5).unwrap();
        mmio.write8(regs::ID.offset(), 0).unwrap();
        assert_eq!(mmio.get(regs::VRAM_SIZE).unwrap(), 1 << 20);
        assert_eq!(mmio.get(regs::ID).unwrap(), regs::ID_VALUE);
        mmio.set(regs::SCRATCH, 0x1234_5678).unwrap();
        mmio.write8(regs::SCRATCH.offset() + 1, 0xab).unwrap();
        assert_eq!(mmio.get(regs::SCRATCH).unwrap(), 0x1234_ab78);
        assert_eq!(mmio.read16(regs::SCRATCH.offset() + 2).unwrap(), 0x1234);
    }

    #[test]
    #[cfg(feature = "fault-injection")]
    fn status_is_write_one_to_clear_and_faults_are_consumed_by_reads() {
        let dev = SimDevice::new(small()).unwrap();
        let mmio = dev.mmio();
        assert_eq!(mmio.get(regs::STATUS).unwrap(), Status::empty());
        dev.inject_error();
        dev.corrupt_manager(Domain::Gtt);
        dev.fail_next_allocations(2);
        let s = mmio.get(regs::STATUS).unwrap();
        assert_eq!(s, Status::ERROR | Status::CORRUPT_GTT | Status::ALLOC_FAULT);
        mmio.set(regs::STATUS, Status::ERROR | Status::ALLOC_FAULT)
            .unwrap();
        assert_eq!(
            mmio.get(regs::STATUS).unwrap(),
            Status::CORRUPT_GTT | Status::ALLOC_FAULT
        );
        // 64-bit and narrow reads have no side effects.
        assert_eq!(mmio.read64(regs::FAULT_ALLOC.offset()).unwrap() >> 32, 2);
        assert_eq!(mmio.read8(regs::FAULT_ALLOC.offset()).unwrap(), 0);
        assert_eq!(mmio.get(regs::FAULT_ALLOC).unwrap(), 1);
        assert_eq!(mmio.get(regs::FAULT_ALLOC).unwrap(), 1);
        assert_eq!(mmio.get(regs::FAULT_ALLOC).unwrap(), 0);
        assert_eq!(dev.pending_alloc_failures(), 0);
        assert_eq!(mmio.get(regs::STATUS).unwrap(), Status::CORRUPT_GTT);
        mmio.set(regs::CONTROL, Control::ENABLE).unwrap();
        assert!(dev.is_enabled());
    }

    #[test]
    #[cfg(feature = "fault-injection")]
    fn bad_ranges_and_backings_are_validated() {
        let dev = SimDevice::new(small()).unwrap();
        assert!(dev.report_bad_vram_range(0, 0).is_err());
        assert!(dev.report_bad_vram_range(1 << 20, 1).is_err());
        assert!(dev.report_bad_vram_range(u64::MAX, 2).is_err());
        dev.report_bad_vram_range(8192, 4096).unwrap();
        let mmio = dev.mmio();
        assert_eq!(mmio.get(regs::BAD_START).unwrap(), 8192);
        assert_eq!(mmio.get(regs::BAD_LEN).unwrap(), 4096);
        assert!(dev.status().contains(Status::BAD_RANGE));

        let tiny = MemoryRegion::new_zeroed(4096).unwrap();
        let gtt = MemoryRegion::new_zeroed(2 << 20).unwrap();
        assert_eq!(
            SimDevice::with_backing(small(), tiny, gtt).unwrap_err(),
            DeviceError::BackingTooSmall {
                what: "VRAM",
                len: 4096,
                need: 1 << 20
            }
        );
        let mut bad = small();
        bad.visible_size = 2 << 20;
        assert!(SimDevice::new(bad).is_err());
        bad = small();
        bad.gtt_size = 100;
        assert!(SimDevice::new(bad).is_err());
    }
}
