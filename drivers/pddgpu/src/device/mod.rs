//! The device layer: device state, the [`Mmio`] register capability, a
//! typed register map, backing memory ([`MemoryRegion`]), device models
//! (how to recognise a device and read its sizes) and the simulated PDDGPU.
//!
//! The driver reaches the hardware only through what it is handed in
//! [`DeviceResources`]: an `Mmio` over the register BAR, the backing memory
//! of VRAM and GTT, and the [`DeviceModel`] that knows the register layout.
//! A second device model plugs in by implementing `DeviceModel` (in its own
//! module next to this one) and being tried by [`probe`].

pub mod bochs;
mod memory;
mod mmio;
mod model;
pub mod regs;
pub mod sim;

pub use bochs::BochsModel;
pub use memory::{MemoryError, MemoryRegion};
pub use mmio::{Mmio, MmioError, RegisterBlock, Width};
pub use model::{probe, DeviceEvents, DeviceModel, PddgpuModel};
pub use sim::{SimConfig, SimDevice};

use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// A memory domain: where a buffer object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// Device memory, managed by the buddy allocator.
    Vram,
    /// The GTT aperture (system pages the device can reach), managed by the
    /// range allocator.
    Gtt,
}

impl Domain {
    /// Both domains, VRAM first.
    pub const ALL: [Domain; 2] = [Domain::Vram, Domain::Gtt];

    /// Lower-case name (`vram`, `gtt`).
    pub const fn name(self) -> &'static str {
        match self {
            Domain::Vram => "vram",
            Domain::Gtt => "gtt",
        }
    }

    /// 0 for VRAM, 1 for GTT (index into per-domain arrays).
    pub const fn index(self) -> usize {
        match self {
            Domain::Vram => 0,
            Domain::Gtt => 1,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

bitflags::bitflags! {
    /// Life-cycle state of the device (INITIALIZING → READY → SHUTDOWN). `READY | SHUTDOWN` means shutting down: new operations
    /// are refused while those in flight finish.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DeviceState: u32 {
        /// Being brought up.
        const INITIALIZING = 0x1;
        /// Serving.
        const READY = 0x2;
        /// Shutting down (with READY) or shut down (alone).
        const SHUTDOWN = 0x4;
    }
}

impl DeviceState {
    /// Lower-case name for state files: `initializing`, `ready`,
    /// `shutting-down`, `shutdown`.
    pub fn name(self) -> &'static str {
        if self.contains(DeviceState::SHUTDOWN) {
            if self.contains(DeviceState::READY) {
                "shutting-down"
            } else {
                "shutdown"
            }
        } else if self.contains(DeviceState::READY) {
            "ready"
        } else {
            "initializing"
        }
    }
}

/// A [`DeviceState`] readable and changeable without locks.
#[derive(Debug)]
pub struct DeviceStateCell(AtomicU32);

impl DeviceStateCell {
    /// A cell holding `state`.
    pub const fn new(state: DeviceState) -> Self {
        DeviceStateCell(AtomicU32::new(state.bits()))
    }

    /// The current state.
    pub fn get(&self) -> DeviceState {
        DeviceState::from_bits_retain(self.0.load(Ordering::SeqCst))
    }

    /// Replaces the state.
    pub fn set(&self, state: DeviceState) {
        self.0.store(state.bits(), Ordering::SeqCst);
    }

    /// Moves from `from` to `to`; on failure returns the state found.
    pub fn transition(&self, from: DeviceState, to: DeviceState) -> Result<(), DeviceState> {
        self.0
            .compare_exchange(from.bits(), to.bits(), Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(DeviceState::from_bits_retain)
    }
}

/// What probing found: the device and its sizes, read from its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    /// Human-readable device name.
    pub name: &'static str,
    /// VRAM bytes.
    pub vram_size: u64,
    /// CPU-visible window at the start of VRAM, in bytes.
    pub visible_size: u64,
    /// GTT aperture bytes.
    pub gtt_size: u64,
}

/// Errors of the device layer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A register access failed.
    #[error("register access: {0}")]
    Mmio(#[from] MmioError),
    /// A backing-memory access or allocation failed.
    #[error("backing memory: {0}")]
    Memory(#[from] MemoryError),
    /// The registers do not belong to this model's device.
    #[error("not a {model} device (identity reads {found:#x})")]
    NotThisDevice {
        /// The model that looked.
        model: &'static str,
        /// What its identity check read.
        found: u64,
    },
    /// The device is recognised but its register layout version is not.
    #[error("{model}: unsupported register layout version {version:#x}")]
    UnsupportedVersion {
        /// The model.
        model: &'static str,
        /// The version register.
        version: u32,
    },
    /// The device reports impossible values.
    #[error("{model}: {reason}")]
    BadRegisters {
        /// The model.
        model: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// No model recognised the device.
    #[error("no known device behind these registers")]
    NoMatch,
    /// A backing region is smaller than the domain it backs.
    #[error("{what} backing is {len:#x} bytes but the device has {need:#x}")]
    BackingTooSmall {
        /// `VRAM` or `GTT`.
        what: &'static str,
        /// Size of the region given.
        len: u64,
        /// Size needed.
        need: u64,
    },
    /// A configuration or fault-injection request is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Everything the driver is handed to run a device: the register
/// capability, the model that understands those registers, and the backing
/// memory of both domains (VRAM offset 0 = byte 0 of `vram`; GTT offset 0 =
/// byte 0 of `gtt`).
#[derive(Debug)]
pub struct DeviceResources {
    /// Register access.
    pub mmio: Mmio,
    /// How to talk to the device behind `mmio`.
    pub model: Box<dyn DeviceModel>,
    /// VRAM contents (at least the VRAM size the device reports).
    pub vram: MemoryRegion,
    /// GTT page contents (at least the GTT size the device reports).
    pub gtt: MemoryRegion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_state_names_and_transitions() {
        let cell = DeviceStateCell::new(DeviceState::INITIALIZING);
        assert_eq!(cell.get().name(), "initializing");
        cell.transition(DeviceState::INITIALIZING, DeviceState::READY)
            .unwrap();
        assert_eq!(cell.get().name(), "ready");
        assert_eq!(
            cell.transition(DeviceState::INITIALIZING, DeviceState::READY),
            Err(DeviceState::READY)
        );
        cell.set(DeviceState::READY | DeviceState::SHUTDOWN);
        assert_eq!(cell.get().name(), "shutting-down");
        cell.set(DeviceState::SHUTDOWN);
        assert_eq!(cell.get().name(), "shutdown");
        assert_eq!(Domain::Gtt.index(), 1);
        assert_eq!(Domain::ALL[0].name(), "vram");
    }
}
