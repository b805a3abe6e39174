//! PCI configuration space through x86 I/O ports: the legacy mechanism #1
//! (address to `0xCF8`, data at `0xCFC`), reached with an I/O-port
//! capability the root task issues to itself for exactly those eight
//! ports. Finding a function and reading its memory BARs is all the
//! server needs; the firmware (SeaBIOS) has assigned the BARs and enabled
//! memory decoding.

use crate::objects::Objects;

/// The address port of configuration mechanism #1.
const CONFIG_ADDRESS: u16 = 0xcf8;
/// The data port.
const CONFIG_DATA: u16 = 0xcfc;
/// Offset of BAR0 in the configuration header.
const BAR0: u8 = 0x10;
/// Offset of the command register.
const COMMAND: u8 = 0x04;
/// Command bit: the function decodes its memory BARs.
const MEMORY_SPACE: u32 = 1 << 1;

/// The configuration space, through an I/O-port capability for
/// `0xCF8..=0xCFF` (rust-sel4 has no type for I/O-port capabilities, so
/// it is held as its root-CNode slot and invoked through libsel4's calls).
pub struct ConfigSpace {
    ports: u64,
}

fn check(error: sel4::sys::seL4_Error::Type) -> sel4::Result<()> {
    match sel4::Error::from_sys(error) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Bus, device and function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Bus.
    pub bus: u8,
    /// Device.
    pub device: u8,
    /// Function.
    pub function: u8,
}

impl core::fmt::Display for Address {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A memory BAR: where it is and how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBar {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

impl ConfigSpace {
    /// Issues the I/O-port capability (from the root task's I/O-port
    /// control capability) into a free slot.
    pub fn new(objects: &mut Objects) -> sel4::Result<Self> {
        let slot = objects.slots(1)?.start;
        sel4::init_thread::slot::IO_PORT_CONTROL
            .cap()
            .ioport_control_issue(
                CONFIG_ADDRESS.into(),
                (CONFIG_DATA + 3).into(),
                &crate::objects::root_path(slot),
            )?;
        Ok(Self { ports: slot as u64 })
    }

    fn select(&self, at: Address, offset: u8) -> sel4::Result<()> {
        let address = 1u32 << 31
            | u32::from(at.bus) << 16
            | u32::from(at.device) << 11
            | u32::from(at.function) << 8
            | u32::from(offset & 0xfc);
        let error = sel4::with_ipc_buffer_mut(|b| {
            b.inner_mut()
                .seL4_X86_IOPort_Out32(self.ports, CONFIG_ADDRESS.into(), address.into())
        });
        check(error)
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read(&self, at: Address, offset: u8) -> sel4::Result<u32> {
        self.select(at, offset)?;
        let ret = sel4::with_ipc_buffer_mut(|b| {
            b.inner_mut().seL4_X86_IOPort_In32(self.ports, CONFIG_DATA)
        });
        match sel4::Error::from_sys(ret.error) {
            None => Ok(ret.result),
            Some(e) => Err(e),
        }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&self, at: Address, offset: u8, value: u32) -> sel4::Result<()> {
        self.select(at, offset)?;
        let error = sel4::with_ipc_buffer_mut(|b| {
            b.inner_mut()
                .seL4_X86_IOPort_Out32(self.ports, CONFIG_DATA.into(), value.into())
        });
        check(error)
    }

    /// The first function on bus 0 with this vendor and device id.
    pub fn find(&self, vendor: u16, device: u16) -> sel4::Result<Option<Address>> {
        for dev in 0..32 {
            for function in 0..8 {
                let at = Address {
                    bus: 0,
                    device: dev,
                    function,
                };
                let id = self.read(at, 0)?;
                if id & 0xffff == 0xffff {
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                if id == u32::from(device) << 16 | u32::from(vendor) {
                    return Ok(Some(at));
                }
            }
        }
        Ok(None)
    }

    /// Memory BAR `index` of `at`: its base and, found by the standard
    /// probe (write all ones with decoding off, read back the size mask,
    /// restore), its size. `None` for an I/O or unassigned BAR.
    pub fn memory_bar(&self, at: Address, index: u8) -> sel4::Result<Option<MemoryBar>> {
        let offset = BAR0 + 4 * index;
        let low = self.read(at, offset)?;
        if low & 1 != 0 {
            return Ok(None);
        }
        let wide = (low >> 1) & 0b11 == 0b10;
        let high = if wide { self.read(at, offset + 4)? } else { 0 };
        let base = u64::from(high) << 32 | u64::from(low & !0xf);
        if base == 0 {
            return Ok(None);
        }
        let command = self.read(at, COMMAND)?;
        self.write(at, COMMAND, command & !MEMORY_SPACE)?;
        self.write(at, offset, u32::MAX)?;
        let mask_low = self.read(at, offset)? & !0xf;
        self.write(at, offset, low)?;
        let mask_high = if wide {
            self.write(at, offset + 4, u32::MAX)?;
            let m = self.read(at, offset + 4)?;
            self.write(at, offset + 4, high)?;
            m
        } else {
            u32::MAX
        };
        self.write(at, COMMAND, command | MEMORY_SPACE)?;
        let mask = u64::from(mask_high) << 32 | u64::from(mask_low);
        let size = (!mask).wrapping_add(1);
        if size == 0 || !size.is_power_of_two() {
            return Err(sel4::Error::RangeError);
        }
        Ok(Some(MemoryBar { base, size }))
    }
}
