//! [`Mmio`]: the capability through which the driver touches device
//! registers.
//!
//! The driver never dereferences register addresses itself: it is handed an
//! `Mmio` (by the daemon, which mapped a BAR, or by the simulated device) and
//! every access goes through its bounds- and alignment-checked methods.
//! A mapped region is accessed with volatile reads and writes; an emulated
//! one (the simulated PDDGPU) dispatches to a [`RegisterBlock`], which may
//! give accesses side effects just like real hardware does.

use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;

use super::regs::{RegValue, Register};

/// Width of one register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 8 bits.
    W8,
    /// 16 bits.
    W16,
    /// 32 bits.
    W32,
    /// 64 bits.
    W64,
}

impl Width {
    /// The access size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }

    /// A mask of the value bits of this width.
    pub const fn mask(self) -> u64 {
        match self {
            Width::W8 => 0xff,
            Width::W16 => 0xffff,
            Width::W32 => 0xffff_ffff,
            Width::W64 => u64::MAX,
        }
    }
}

/// Why a register access was refused. Nothing was read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// The access would reach past the end of the region.
    #[error("register access at {offset:#x} ({width} bytes) is outside the {len:#x}-byte region")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Width of the access in bytes.
        width: usize,
        /// Size of the region.
        len: usize,
    },
    /// The access is not naturally aligned (registers require it).
    #[error("register access at {offset:#x} is not aligned to its width ({width} bytes)")]
    Misaligned {
        /// Offset of the access.
        offset: usize,
        /// Width of the access in bytes.
        width: usize,
    },
    /// A mapping was given a null or insufficiently aligned base.
    #[error("register region base {addr:#x} is null or not 8-byte aligned")]
    BadBase {
        /// The address given.
        addr: usize,
    },
}

/// A software register file standing in for device registers (the
/// simulated device implements it). Offsets and widths reaching it have
/// already been checked by [`Mmio`]: `offset + width <= len()` and `offset`
/// is a multiple of the width.
pub trait RegisterBlock: Send + Sync + fmt::Debug {
    /// Size of the register region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty (never true for a useful device).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Performs a read; the result is masked to `width` by the caller.
    fn read(&self, offset: usize, width: Width) -> u64;
    /// Performs a write of the low `width` bytes of `value`.
    fn write(&self, offset: usize, width: Width, value: u64);
}

#[derive(Clone)]
enum Backend {
    Mapped { base: NonNull<u8>, len: usize },
    Emulated(Arc<dyn RegisterBlock>),
}

/// Register access capability over a mapped MMIO region or an emulated
/// register block.
///
/// Cloning yields another handle on the same registers (the simulated device
/// keeps one to observe what the driver does).
#[derive(Clone)]
pub struct Mmio {
    backend: Backend,
}

// SAFETY: a mapped `Mmio` only performs volatile accesses to device memory
// whose validity for the lifetime of every copy is the contract of
// `Mmio::new`; device registers may be accessed from any thread. The emulated
// backend is `Send + Sync` by the `RegisterBlock` bound.
unsafe impl Send for Mmio {}
// SAFETY: see `Send` above; no method hands out references into the region.
unsafe impl Sync for Mmio {}

impl fmt::Debug for Mmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Mapped { base, len } => f
                .debug_struct("Mmio")
                .field("base", base)
                .field("len", len)
                .finish(),
            Backend::Emulated(block) => f.debug_tuple("Mmio").field(block).finish(),
        }
    }
}

impl Mmio {
    /// A capability over `len` bytes of mapped registers at `ptr`.
    ///
    /// Fails with [`MmioError::BadBase`] when `ptr` is null or not 8-byte
    /// aligned.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be a mapping of device registers (or memory
    /// used only through volatile accesses) that stays valid for reads and
    /// writes of 8 to 64 bits for as long as this `Mmio` or any clone of it
    /// exists, and that no other code accesses non-volatilely.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, MmioError> {
        let addr = ptr as usize;
        match NonNull::new(ptr) {
            Some(base) if addr % 8 == 0 => Ok(Mmio {
                backend: Backend::Mapped { base, len },
            }),
            _ => Err(MmioError::BadBase { addr }),
        }
    }

    /// A capability over an emulated register block (no `unsafe` needed).
    pub fn emulated(block: Arc<dyn RegisterBlock>) -> Self {
        Mmio {
            backend: Backend::Emulated(block),
        }
    }

    /// Size of the register region in bytes.
    pub fn len(&self) -> usize {
        match &self.backend {
            Backend::Mapped { len, .. } => *len,
            Backend::Emulated(block) => block.len(),
        }
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, offset: usize, width: Width) -> Result<(), MmioError> {
        let len = self.len();
        let bytes = width.bytes();
        if offset.checked_add(bytes).is_none_or(|end| end > len) {
            return Err(MmioError::OutOfBounds {
                offset,
                width: bytes,
                len,
            });
        }
        if offset % bytes != 0 {
            return Err(MmioError::Misaligned {
                offset,
                width: bytes,
            });
        }
        Ok(())
    }

    /// Reads `width` bytes at `offset`, zero-extended.
    pub fn read(&self, offset: usize, width: Width) -> Result<u64, MmioError> {
        self.check(offset, width)?;
        Ok(match &self.backend {
            Backend::Mapped { base, .. } => {
                // SAFETY: `check` proved `offset + width <= len` and natural
                // alignment (the base is 8-aligned); `new`'s contract makes
                // the whole region valid for volatile access.
                unsafe {
                    let p = base.as_ptr().add(offset);
                    match width {
                        Width::W8 => u64::from(p.read_volatile()),
                        Width::W16 => u64::from(p.cast::<u16>().read_volatile()),
                        Width::W32 => u64::from(p.cast::<u32>().read_volatile()),
                        Width::W64 => p.cast::<u64>().read_volatile(),
                    }
                }
            }
            Backend::Emulated(block) => block.read(offset, width) & width.mask(),
        })
    }

    /// Writes the low `width` bytes of `value` at `offset`.
    pub fn write(&self, offset: usize, width: Width, value: u64) -> Result<(), MmioError> {
        self.check(offset, width)?;
        let value = value & width.mask();
        match &self.backend {
            Backend::Mapped { base, .. } => {
                // SAFETY: as in `read`: bounds and alignment were checked and
                // `new`'s contract makes the region valid for volatile access.
                unsafe {
                    let p = base.as_ptr().add(offset);
                    match width {
                        Width::W8 => p.write_volatile(value as u8),
                        Width::W16 => p.cast::<u16>().write_volatile(value as u16),
                        Width::W32 => p.cast::<u32>().write_volatile(value as u32),
                        Width::W64 => p.cast::<u64>().write_volatile(value),
                    }
                }
            }
            Backend::Emulated(block) => block.write(offset, width, value),
        }
        Ok(())
    }

    /// 8-bit read.
    pub fn read8(&self, offset: usize) -> Result<u8, MmioError> {
        self.read(offset, Width::W8).map(|v| v as u8)
    }

    /// 16-bit read.
    pub fn read16(&self, offset: usize) -> Result<u16, MmioError> {
        self.read(offset, Width::W16).map(|v| v as u16)
    }

    /// 32-bit read.
    pub fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        self.read(offset, Width::W32).map(|v| v as u32)
    }

    /// 64-bit read.
    pub fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        self.read(offset, Width::W64)
    }

    /// 8-bit write.
    pub fn write8(&self, offset: usize, value: u8) -> Result<(), MmioError> {
        self.write(offset, Width::W8, value.into())
    }

    /// 16-bit write.
    pub fn write16(&self, offset: usize, value: u16) -> Result<(), MmioError> {
        self.write(offset, Width::W16, value.into())
    }

    /// 32-bit write.
    pub fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        self.write(offset, Width::W32, value.into())
    }

    /// 64-bit write.
    pub fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        self.write(offset, Width::W64, value)
    }

    /// Reads a typed register.
    pub fn get<T: RegValue>(&self, reg: Register<T>) -> Result<T, MmioError> {
        self.read(reg.offset(), T::WIDTH).map(T::from_raw)
    }

    /// Writes a typed register.
    pub fn set<T: RegValue>(&self, reg: Register<T>, value: T) -> Result<(), MmioError> {
        self.write(reg.offset(), T::WIDTH, value.into_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn mapped_accesses_are_checked_and_volatile() {
        let mut words = vec![0u64; 4];
        // SAFETY: the vector outlives `mmio` and is only touched through it.
        let mmio = unsafe { Mmio::new(words.as_mut_ptr().cast(), 32) }.unwrap();
        mmio.write32(4, 0xdead_beef).unwrap();
        mmio.write8(0, 0x12).unwrap();
        mmio.write16(2, 0x3456).unwrap();
        mmio.write64(8, u64::MAX - 1).unwrap();
        assert_eq!(mmio.read64(0).unwrap(), 0xdead_beef_3456_0012);
        assert_eq!(mmio.read8(1).unwrap(), 0);
        assert_eq!(mmio.read16(2).unwrap(), 0x3456);
        assert_eq!(mmio.read64(8).unwrap(), u64::MAX - 1);
        assert_eq!(
            mmio.read32(30),
            Err(MmioError::OutOfBounds {
                offset: 30,
                width: 4,
                len: 32
            })
        );
        assert_eq!(
            mmio.write64(usize::MAX - 3, 0),
            Err(MmioError::OutOfBounds {
                offset: usize::MAX - 3,
                width: 8,
                len: 32
            })
        );
        assert_eq!(
            mmio.read32(6),
            Err(MmioError::Misaligned {
                offset: 6,
                width: 4
            })
        );
        drop(mmio);
        assert_eq!(words[0], 0xdead_beef_3456_0012);
    }

    #[test]
    fn null_and_misaligned_bases_are_refused() {
        // SAFETY: refused before any access.
        let null = unsafe { Mmio::new(core::ptr::null_mut(), 16) };
        assert_eq!(null.unwrap_err(), MmioError::BadBase { addr: 0 });
        let mut words = [0u64; 2];
        let odd = words.as_mut_ptr().cast::<u8>().wrapping_add(1);
        // SAFETY: refused before any access.
        let odd = unsafe { Mmio::new(odd, 8) };
        assert!(matches!(odd, Err(MmioError::BadBase { .. })));
    }
}
