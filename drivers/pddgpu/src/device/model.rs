//! Device models: what the driver knows about one kind of device — how to
//! recognise it and read its sizes from its registers, and (optionally) how
//! it reports events. [`PddgpuModel`] is the PDDGPU (real or simulated);
//! other models (e.g. QEMU's bochs-display) implement [`DeviceModel`] the
//! same way and are tried in turn by [`probe`].

use alloc::boxed::Box;
use core::fmt;
use core::ops::Range;

use super::mmio::Mmio;
use super::regs::pddgpu::{self as regs, Control, Status};
use super::regs::{RegValue, Register};
use super::{DeviceError, DeviceInfo};

bitflags::bitflags! {
    /// Events a device reports to the driver (see [`DeviceModel::events`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DeviceEvents: u32 {
        /// The device failed internally.
        const ERROR = 1 << 0;
        /// Allocation failures are to be injected (see
        /// [`DeviceModel::take_alloc_fault`]).
        const ALLOC_FAULT = 1 << 1;
        /// The VRAM manager's bookkeeping is to be corrupted (fault
        /// injection).
        const CORRUPT_VRAM = 1 << 2;
        /// The GTT manager's bookkeeping is to be corrupted (fault
        /// injection).
        const CORRUPT_GTT = 1 << 3;
        /// A bad VRAM range was reported (see [`DeviceModel::bad_range`]).
        const BAD_RANGE = 1 << 4;
    }
}

/// One kind of device. Implementations are stateless descriptions; all
/// device state is behind the [`Mmio`] they are given.
///
/// Only [`probe`](Self::probe) is required; a device without event
/// reporting keeps the default methods (no events, nothing to enable).
pub trait DeviceModel: Send + Sync + fmt::Debug {
    /// Short name for logs (`"pddgpu"`, `"bochs-display"`).
    fn name(&self) -> &'static str;

    /// Identifies the device behind `mmio` and reads its sizes from its
    /// registers. Fails with [`DeviceError::NotThisDevice`] when the
    /// registers belong to another kind of device.
    fn probe(&self, mmio: &Mmio) -> Result<DeviceInfo, DeviceError>;

    /// Takes the device (called once the driver is ready to serve).
    fn enable(&self, _mmio: &Mmio) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Releases the device (called at shutdown).
    fn disable(&self, _mmio: &Mmio) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Pending events; cheap, called before every allocation. Reading has
    /// no side effects.
    fn events(&self, _mmio: &Mmio) -> Result<DeviceEvents, DeviceError> {
        Ok(DeviceEvents::empty())
    }

    /// Consumes one injected allocation failure; true when the current
    /// allocation must fail.
    fn take_alloc_fault(&self, _mmio: &Mmio) -> Result<bool, DeviceError> {
        Ok(false)
    }

    /// The reported bad VRAM range, if any.
    fn bad_range(&self, _mmio: &Mmio) -> Result<Option<Range<u64>>, DeviceError> {
        Ok(None)
    }

    /// Clears handled events (`ALLOC_FAULT` is cleared by consuming).
    fn acknowledge(&self, _mmio: &Mmio, _events: DeviceEvents) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Tries each model in turn; returns the index of the first that
/// recognises the device, with what it read. Errors other than
/// [`DeviceError::NotThisDevice`] stop the search (the device was
/// recognised but is unusable).
pub fn probe(mmio: &Mmio, models: &[&dyn DeviceModel]) -> Result<(usize, DeviceInfo), DeviceError> {
    for (i, model) in models.iter().enumerate() {
        match model.probe(mmio) {
            Ok(info) => return Ok((i, info)),
            Err(DeviceError::NotThisDevice { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DeviceError::NoMatch)
}

/// The PDDGPU, as described by [`regs::pddgpu`](super::regs::pddgpu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PddgpuModel;

impl PddgpuModel {
    /// The model as a boxed [`DeviceModel`].
    pub fn boxed() -> Box<dyn DeviceModel> {
        Box::new(PddgpuModel)
    }
}

const PAGE: u64 = 4096;

/// The first step of every probe: the register window holds at least
/// `region` bytes and the identity register `id` passes `is_ours`. Returns
/// the identity; anything else is [`DeviceError::NotThisDevice`] for
/// `model`.
pub(super) fn identify<T: RegValue + Into<u64>>(
    mmio: &Mmio,
    model: &'static str,
    region: usize,
    id: Register<T>,
    is_ours: impl FnOnce(T) -> bool,
) -> Result<T, DeviceError> {
    if mmio.len() < region {
        return Err(DeviceError::NotThisDevice {
            model,
            found: mmio.len() as u64,
        });
    }
    let value = mmio.get(id)?;
    if !is_ours(value) {
        return Err(DeviceError::NotThisDevice {
            model,
            found: value.into(),
        });
    }
    Ok(value)
}

impl DeviceModel for PddgpuModel {
    fn name(&self) -> &'static str {
        "pddgpu"
    }

    fn probe(&self, mmio: &Mmio) -> Result<DeviceInfo, DeviceError> {
        identify(mmio, self.name(), regs::REGION_SIZE, regs::ID, |id| {
            id == regs::ID_VALUE
        })?;
        let version = mmio.get(regs::VERSION)?;
        if (version >> 16) as u16 != regs::VERSION_MAJOR {
            return Err(DeviceError::UnsupportedVersion {
                model: self.name(),
                version,
            });
        }
        let vram_size = mmio.get(regs::VRAM_SIZE)?;
        let visible_size = mmio.get(regs::VISIBLE_SIZE)?;
        let gtt_size = mmio.get(regs::GTT_SIZE)?;
        let bad = |reason| DeviceError::BadRegisters {
            model: "pddgpu",
            reason,
        };
        if vram_size == 0 || vram_size % PAGE != 0 {
            return Err(bad("VRAM_SIZE is not a positive multiple of 4 KiB"));
        }
        if visible_size > vram_size || visible_size % PAGE != 0 {
            return Err(bad("VISIBLE_SIZE is not a multiple of 4 KiB within VRAM"));
        }
        if gtt_size == 0 || gtt_size % PAGE != 0 {
            return Err(bad("GTT_SIZE is not a positive multiple of 4 KiB"));
        }
        Ok(DeviceInfo {
            name: "PDDGPU",
            vram_size,
            visible_size,
            gtt_size,
        })
    }

    fn enable(&self, mmio: &Mmio) -> Result<(), DeviceError> {
        mmio.set(regs::CONTROL, Control::ENABLE)?;
        Ok(())
    }

    fn disable(&self, mmio: &Mmio) -> Result<(), DeviceError> {
        mmio.set(regs::CONTROL, Control::empty())?;
        Ok(())
    }

    fn events(&self, mmio: &Mmio) -> Result<DeviceEvents, DeviceError> {
        let status = mmio.get(regs::STATUS)? & Status::EVENTS;
        // `Status` defines its event bits as `DeviceEvents`' own.
        Ok(DeviceEvents::from_bits_truncate(status.bits()))
    }

    fn take_alloc_fault(&self, mmio: &Mmio) -> Result<bool, DeviceError> {
        Ok(mmio.get(regs::FAULT_ALLOC)? != 0)
    }

    fn bad_range(&self, mmio: &Mmio) -> Result<Option<Range<u64>>, DeviceError> {
        let start = mmio.get(regs::BAD_START)?;
        let len = mmio.get(regs::BAD_LEN)?;
        Ok(match start.checked_add(len) {
            Some(end) if len > 0 => Some(start..end),
            _ => None,
        })
    }

    fn acknowledge(&self, mmio: &Mmio, events: DeviceEvents) -> Result<(), DeviceError> {
        let bits = Status::from_bits_truncate(events.bits()) & Status::W1C;
        mmio.set(regs::STATUS, bits)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::{SimConfig, SimDevice};
    use crate::device::Domain;
    use alloc::vec;

    #[test]
    fn probe_reads_sizes_from_registers() {
        let config = SimConfig {
            vram_size: 8 << 20,
            visible_size: 1 << 20,
            gtt_size: 4 << 20,
        };
        let dev = SimDevice::new(config).unwrap();
        let (i, info) = probe(&dev.mmio(), &[&PddgpuModel]).unwrap();
        assert_eq!(i, 0);
        assert_eq!(
            info,
            DeviceInfo {
                name: "PDDGPU",
                vram_size: 8 << 20,
                visible_size: 1 << 20,
                gtt_size: 4 << 20
            }
        );
    }

    #[test]
    fn probe_rejects_foreign_registers() {
        let mut words = vec![0u64; regs::REGION_SIZE / 8];
        // SAFETY: `words` outlives `mmio` and is only accessed through it.
        let mmio = unsafe { Mmio::new(words.as_mut_ptr().cast(), regs::REGION_SIZE) }.unwrap();
        assert_eq!(probe(&mmio, &[&PddgpuModel]), Err(DeviceError::NoMatch));
        mmio.set(regs::ID, regs::ID_VALUE).unwrap();
        mmio.set(regs::VERSION, 2 << 16).unwrap();
        assert_eq!(
            probe(&mmio, &[&PddgpuModel]),
            Err(DeviceError::UnsupportedVersion {
                model: "pddgpu",
                version: 2 << 16
            })
        );
        mmio.set(regs::VERSION, 1 << 16).unwrap();
        mmio.set(regs::VRAM_SIZE, 4097).unwrap();
        assert!(matches!(
            PddgpuModel.probe(&mmio),
            Err(DeviceError::BadRegisters { .. })
        ));
        mmio.set(regs::VRAM_SIZE, 8192).unwrap();
        mmio.set(regs::VISIBLE_SIZE, 4096).unwrap();
        mmio.set(regs::GTT_SIZE, 4096).unwrap();
        assert_eq!(PddgpuModel.probe(&mmio).unwrap().vram_size, 8192);
        drop(mmio);
        let mut small = [0u64; 4];
        // SAFETY: as above.
        let tiny = unsafe { Mmio::new(small.as_mut_ptr().cast(), 32) }.unwrap();
        assert!(matches!(
            PddgpuModel.probe(&tiny),
            Err(DeviceError::NotThisDevice { .. })
        ));
    }

    #[test]
    #[cfg(feature = "fault-injection")]
    fn events_round_trip_through_registers() {
        let dev = SimDevice::new(SimConfig::default()).unwrap();
        let mmio = dev.mmio();
        let m = PddgpuModel;
        assert_eq!(m.events(&mmio).unwrap(), DeviceEvents::empty());
        m.enable(&mmio).unwrap();
        assert!(dev.is_enabled());
        assert_eq!(m.events(&mmio).unwrap(), DeviceEvents::empty());
        dev.corrupt_manager(Domain::Vram);
        dev.fail_next_allocations(1);
        dev.report_bad_vram_range(4096, 100).unwrap();
        assert_eq!(
            m.events(&mmio).unwrap(),
            DeviceEvents::CORRUPT_VRAM | DeviceEvents::ALLOC_FAULT | DeviceEvents::BAD_RANGE
        );
        assert_eq!(m.bad_range(&mmio).unwrap(), Some(4096..4196));
        assert!(m.take_alloc_fault(&mmio).unwrap());
        assert!(!m.take_alloc_fault(&mmio).unwrap());
        m.acknowledge(&mmio, DeviceEvents::CORRUPT_VRAM | DeviceEvents::BAD_RANGE)
            .unwrap();
        assert_eq!(m.events(&mmio).unwrap(), DeviceEvents::empty());
        m.disable(&mmio).unwrap();
        assert!(!dev.is_enabled());
    }
}
