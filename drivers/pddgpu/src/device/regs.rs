//! Typed registers: a [`Register`] names a register, its offset and the
//! type of its value (an integer or a bitfield), so driver logic reads
//! `mmio.get(pddgpu::STATUS)` instead of poking raw offsets.
//!
//! [`pddgpu`] is the register map of the PDDGPU (the device the simulation
//! implements). Other device models define their own maps the same way.

use core::fmt;
use core::marker::PhantomData;

use super::mmio::Width;

/// A value that can live in a register of a fixed width.
pub trait RegValue: Copy {
    /// The access width of registers holding this type.
    const WIDTH: Width;
    /// Converts the raw (zero-extended) register contents.
    fn from_raw(raw: u64) -> Self;
    /// Converts to the raw value to write.
    fn into_raw(self) -> u64;
}

macro_rules! int_reg_value {
    ($($t:ty => $w:expr),*) => {$(
        impl RegValue for $t {
            const WIDTH: Width = $w;
            fn from_raw(raw: u64) -> Self {
                raw as $t
            }
            fn into_raw(self) -> u64 {
                self.into()
            }
        }
    )*};
}
int_reg_value!(u8 => Width::W8, u16 => Width::W16, u32 => Width::W32, u64 => Width::W64);

/// Implements [`RegValue`] for a `bitflags` type over `u8`..`u64`
/// (unknown bits read from the device are kept, not dropped).
#[macro_export]
macro_rules! bitflags_reg_value {
    ($t:ty, $raw:ty) => {
        impl $crate::device::regs::RegValue for $t {
            const WIDTH: $crate::device::Width = <$raw as $crate::device::regs::RegValue>::WIDTH;
            fn from_raw(raw: u64) -> Self {
                <$t>::from_bits_retain(raw as $raw)
            }
            fn into_raw(self) -> u64 {
                self.bits().into()
            }
        }
    };
}

/// A named register at a fixed offset holding a `T`.
pub struct Register<T> {
    name: &'static str,
    offset: usize,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Register<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Register<T> {}

impl<T> fmt::Debug for Register<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:#x}", self.name, self.offset)
    }
}

impl<T: RegValue> Register<T> {
    /// A register called `name` at byte `offset` of the region.
    pub const fn new(name: &'static str, offset: usize) -> Self {
        Register {
            name,
            offset,
            _value: PhantomData,
        }
    }

    /// The register's name (for logs and errors).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Byte offset in the register region.
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// Access width.
    pub const fn width(&self) -> Width {
        T::WIDTH
    }
}

/// Declares registers, each named once (`NAME: type = offset;`): a
/// `pub const NAME: Register<type>` whose name in logs is `"NAME"`.
macro_rules! registers {
    ($($(#[$attr:meta])* $name:ident: $ty:ty = $offset:expr;)*) => {
        $(
            $(#[$attr])*
            pub const $name: Register<$ty> = Register::new(stringify!($name), $offset);
        )*
    };
}

/// The PDDGPU register map (version 1.0).
///
/// | offset | name | width | access | meaning |
/// |---|---|---|---|---|
/// | 0x000 | `ID` | 32 | RO | [`ID_VALUE`](pddgpu::ID_VALUE) (`"PDDG"`) |
/// | 0x004 | `VERSION` | 32 | RO | `major << 16 \| minor` |
/// | 0x008 | `VRAM_SIZE` | 64 | RO | VRAM bytes |
/// | 0x010 | `VISIBLE_SIZE` | 64 | RO | CPU-visible window at the start of VRAM |
/// | 0x018 | `GTT_SIZE` | 64 | RO | GTT aperture bytes |
/// | 0x020 | `STATUS` | 32 | RW1C | [`Status`](pddgpu::Status) event bits (write 1 to clear) |
/// | 0x024 | `CONTROL` | 32 | RW | [`Control`](pddgpu::Control) |
/// | 0x028 | `FAULT_ALLOC` | 32 | read-to-consume | 1 when an injected allocation failure was consumed by this read |
/// | 0x02c | `FAULT_PENDING` | 32 | RO | injected allocation failures not yet consumed |
/// | 0x030 | `BAD_START` | 64 | RO | start of the last reported bad VRAM range |
/// | 0x038 | `BAD_LEN` | 64 | RO | its length (0 = none) |
/// | 0x040 | `SCRATCH` | 32 | RW | free for the driver (self-test) |
pub mod pddgpu {
    use super::Register;
    use crate::device::DeviceEvents;

    /// Size of the PDDGPU register region (one 4 KiB page).
    pub const REGION_SIZE: usize = 0x1000;
    /// Value of the identity register: `"PDDG"` in ASCII.
    pub const ID_VALUE: u32 = 0x5044_4447;
    /// Register layout version implemented by this driver (major 1).
    pub const VERSION_MAJOR: u16 = 1;

    // Identity: checked before anything else is touched.
    registers! {
        /// Identity register; reads [`ID_VALUE`].
        ID: u32 = 0x000;
        /// Layout version, `major << 16 | minor` (major [`VERSION_MAJOR`]).
        VERSION: u32 = 0x004;
    }

    // Geometry, events, control and fault reports.
    registers! {
        /// VRAM size in bytes.
        VRAM_SIZE: u64 = 0x008;
        /// Size of the CPU-visible VRAM window.
        VISIBLE_SIZE: u64 = 0x010;
        /// GTT aperture size in bytes.
        GTT_SIZE: u64 = 0x018;
        /// Event bits; writing 1 to a bit clears it.
        STATUS: Status = 0x020;
        /// Device control.
        CONTROL: Control = 0x024;
        /// Reading consumes one pending injected allocation failure (reads 1),
        /// or reads 0 when none is pending.
        FAULT_ALLOC: u32 = 0x028;
        /// Injected allocation failures not yet consumed.
        FAULT_PENDING: u32 = 0x02c;
        /// Start of the reported bad VRAM range.
        BAD_START: u64 = 0x030;
        /// Length of the reported bad VRAM range (0 = none).
        BAD_LEN: u64 = 0x038;
        /// A read/write register with no effect, for self-tests.
        SCRATCH: u32 = 0x040;
    }

    bitflags::bitflags! {
        /// The `STATUS` register. Its event bits are those of
        /// [`DeviceEvents`], so the PDDGPU model hands them to the driver
        /// (and takes acknowledgements back) unchanged.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct Status: u32 {
            /// [`DeviceEvents::ERROR`].
            const ERROR = DeviceEvents::ERROR.bits();
            /// [`DeviceEvents::ALLOC_FAULT`]: injected allocation failures
            /// are pending (see `FAULT_ALLOC`); not write-1-to-clear: it
            /// drops when the count reaches 0.
            const ALLOC_FAULT = DeviceEvents::ALLOC_FAULT.bits();
            /// [`DeviceEvents::CORRUPT_VRAM`].
            const CORRUPT_VRAM = DeviceEvents::CORRUPT_VRAM.bits();
            /// [`DeviceEvents::CORRUPT_GTT`].
            const CORRUPT_GTT = DeviceEvents::CORRUPT_GTT.bits();
            /// [`DeviceEvents::BAD_RANGE`]: reported in `BAD_START`/`BAD_LEN`.
            const BAD_RANGE = DeviceEvents::BAD_RANGE.bits();
            /// Mirrors `CONTROL.ENABLE` (read-only).
            const ENABLED = 1 << 31;
        }
    }

    impl Status {
        /// The bits cleared by writing 1 to them.
        pub const W1C: Status = Status::ERROR
            .union(Status::CORRUPT_VRAM)
            .union(Status::CORRUPT_GTT)
            .union(Status::BAD_RANGE);
        /// Bits that call for the driver's attention.
        pub const EVENTS: Status = Status::W1C.union(Status::ALLOC_FAULT);
    }

    bitflags::bitflags! {
        /// The `CONTROL` register.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct Control: u32 {
            /// The driver has taken the device (set at init, cleared at
            /// shutdown).
            const ENABLE = 1 << 0;
        }
    }

    crate::bitflags_reg_value!(Status, u32);
    crate::bitflags_reg_value!(Control, u32);
}

#[cfg(test)]
mod tests {
    use super::pddgpu::*;
    use super::*;

    fn span<T: RegValue>(r: Register<T>) -> (usize, usize) {
        (r.offset(), r.width().bytes())
    }

    #[test]
    fn map_is_naturally_aligned_and_disjoint() {
        // Each register's offset and its width in bytes, as declared.
        let regs = [
            span(ID),
            span(VERSION),
            span(VRAM_SIZE),
            span(VISIBLE_SIZE),
            span(GTT_SIZE),
            span(STATUS),
            span(CONTROL),
            span(FAULT_ALLOC),
            span(FAULT_PENDING),
            span(BAD_START),
            span(BAD_LEN),
            span(SCRATCH),
        ];
        for (i, (off, w)) in regs.iter().enumerate() {
            assert_eq!(off % w, 0);
            assert!(off + w <= REGION_SIZE);
            for (off2, w2) in &regs[i + 1..] {
                assert!(
                    off + w <= *off2 || off2 + w2 <= *off,
                    "{off:#x} overlaps {off2:#x}"
                );
            }
        }
        assert_eq!(STATUS.width(), Width::W32);
        assert_eq!(VRAM_SIZE.width(), Width::W64);
        assert_eq!(
            Status::from_raw(0x8000_0011),
            Status::ENABLED | Status::ERROR | Status::BAD_RANGE
        );
        assert!(!Status::W1C.contains(Status::ALLOC_FAULT));
    }
}
