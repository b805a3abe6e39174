//! [`MemoryRegion`]: backing memory of a memory domain (VRAM or GTT pages)
//! through which BO contents are read and written.
//!
//! A region is either a mapping handed to the driver (a BAR, a shared
//! memory object the daemon also passes to clients) or memory the driver
//! allocated itself (the simulated device's default). The same bytes may be
//! accessed concurrently by other threads or, through a shared mapping, by
//! other processes; so every access is made of word-sized relaxed atomic
//! loads and stores, never plain reads and writes — racing accesses then
//! give unspecified bytes, not undefined behaviour.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Why a backing access or allocation was refused. Nothing was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The access reaches past the end of the region.
    #[error("access of {len} bytes at {offset:#x} is outside the {size:#x}-byte region")]
    OutOfBounds {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// The region could not be allocated.
    #[error("cannot allocate a {size:#x}-byte backing region")]
    AllocFailed {
        /// Requested size.
        size: u64,
    },
    /// A mapping was given a null base.
    #[error("backing region base is null")]
    NullBase,
}

/// Memory the driver allocated itself; freed when the last region handle
/// goes away.
struct Owned {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(layout)` in
        // `MemoryRegion::new_zeroed` and is freed only here, once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: `Owned` is only a token of ownership of the allocation; all
// accesses go through `MemoryRegion`'s atomic accessors.
unsafe impl Send for Owned {}
// SAFETY: see `Send`.
unsafe impl Sync for Owned {}

/// Alignment of owned regions (a page, so they can be mapped piecewise).
const OWNED_ALIGN: usize = 4096;
const WORD: usize = core::mem::size_of::<usize>();

/// A backing-memory region with bounds-checked copies in and out.
///
/// Cloning gives another handle on the same memory.
#[derive(Clone)]
pub struct MemoryRegion {
    base: NonNull<u8>,
    len: usize,
    _owned: Option<Arc<Owned>>,
}

// SAFETY: all accesses to the region are atomic (see the module docs), and
// the validity of a mapped region for the lifetime of every handle is the
// contract of `MemoryRegion::new`.
unsafe impl Send for MemoryRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for MemoryRegion {}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("owned", &self._owned.is_some())
            .finish()
    }
}

impl MemoryRegion {
    /// A region over `len` bytes of mapped memory at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped, readable and writable for as long
    /// as this region or any clone of it exists, and must not be accessed by
    /// this process other than through atomic or volatile accesses (other
    /// processes sharing the mapping may write it at any time).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, MemoryError> {
        let base = NonNull::new(ptr).ok_or(MemoryError::NullBase)?;
        Ok(MemoryRegion {
            base,
            len,
            _owned: None,
        })
    }

    /// A zero-filled region of `len` bytes owned by the driver (the
    /// simulated device's default backing). Large regions are allocated
    /// lazily by the system allocator (pages are touched on first use).
    pub fn new_zeroed(len: usize) -> Result<Self, MemoryError> {
        if len == 0 {
            return Ok(MemoryRegion {
                base: NonNull::<usize>::dangling().cast(),
                len: 0,
                _owned: None,
            });
        }
        let layout = Layout::from_size_align(len, OWNED_ALIGN)
            .map_err(|_| MemoryError::AllocFailed { size: len as u64 })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(MemoryError::AllocFailed { size: len as u64 })?;
        Ok(MemoryRegion {
            base: ptr,
            len,
            _owned: Some(Arc::new(Owned { ptr, layout })),
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte, for the daemon to hand the same
    /// memory to others. The driver itself never dereferences it.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Checks `offset..offset + len` and returns the start as `usize`.
    fn check(&self, offset: u64, len: usize) -> Result<usize, MemoryError> {
        let err = MemoryError::OutOfBounds {
            offset,
            len: len as u64,
            size: self.len as u64,
        };
        let start = usize::try_from(offset).map_err(|_| err)?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(err),
        }
    }

    /// The region's bytes `start..start + n` (inside the region, checked
    /// by the caller) as atomics: the bytes before the first word
    /// boundary, the whole words, then the bytes after them.
    fn atomics(&self, start: usize, n: usize) -> (&[AtomicU8], &[AtomicUsize], &[AtomicU8]) {
        debug_assert!(start + n <= self.len, "atomics outside the region");
        let p = self.base.as_ptr();
        let head = p.wrapping_add(start).align_offset(WORD).min(n);
        let words = (n - head) / WORD;
        let tail = head + words * WORD;
        // SAFETY: `start..start + n` is inside the region, valid for the
        // region's life per the constructor, and its bytes are only ever
        // accessed through atomics. `start + head` is word-aligned whenever
        // there are words; `AtomicU8` and `AtomicUsize` have the layout of
        // `u8` and `usize`.
        unsafe {
            let bytes = |from: usize, len: usize| {
                core::slice::from_raw_parts(p.add(start + from).cast::<AtomicU8>(), len)
            };
            let body: &[AtomicUsize] = if words == 0 {
                &[]
            } else {
                core::slice::from_raw_parts(p.add(start + head).cast::<AtomicUsize>(), words)
            };
            (bytes(0, head), body, bytes(tail, n - tail))
        }
    }

    /// Copies `src` into the region at `offset` (all or nothing).
    pub fn copy_in(&self, offset: u64, src: &[u8]) -> Result<(), MemoryError> {
        let start = self.check(offset, src.len())?;
        let (head, words, tail) = self.atomics(start, src.len());
        let (src_head, rest) = src.split_at(head.len());
        let (src_words, src_tail) = rest.split_at(words.len() * WORD);
        for (cell, &b) in head.iter().chain(tail).zip(src_head.iter().chain(src_tail)) {
            cell.store(b, Ordering::Relaxed);
        }
        for (cell, chunk) in words.iter().zip(src_words.chunks_exact(WORD)) {
            let mut bytes = [0u8; WORD];
            bytes.copy_from_slice(chunk);
            cell.store(usize::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies from the region at `offset` into `dst` (all or nothing).
    pub fn copy_out(&self, offset: u64, dst: &mut [u8]) -> Result<(), MemoryError> {
        let start = self.check(offset, dst.len())?;
        let (head, words, tail) = self.atomics(start, dst.len());
        let (dst_head, rest) = dst.split_at_mut(head.len());
        let (dst_words, dst_tail) = rest.split_at_mut(words.len() * WORD);
        for (b, cell) in dst_head
            .iter_mut()
            .chain(dst_tail)
            .zip(head.iter().chain(tail))
        {
            *b = cell.load(Ordering::Relaxed);
        }
        for (chunk, cell) in dst_words.chunks_exact_mut(WORD).zip(words) {
            chunk.copy_from_slice(&cell.load(Ordering::Relaxed).to_ne_bytes());
        }
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte` (all or nothing). The word
    /// loop is branch-free (BOs are page-aligned, so zeroing one is that
    /// loop alone).
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), MemoryError> {
        let n = usize::try_from(len).map_err(|_| MemoryError::OutOfBounds {
            offset,
            len,
            size: self.len as u64,
        })?;
        let start = self.check(offset, n)?;
        let (head, words, tail) = self.atomics(start, n);
        for cell in head.iter().chain(tail) {
            cell.store(byte, Ordering::Relaxed);
        }
        let word = usize::from_ne_bytes([byte; WORD]);
        for cell in words {
            cell.store(word, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn copies_round_trip_at_any_alignment() {
        let region = MemoryRegion::new_zeroed(256).unwrap();
        let data: alloc::vec::Vec<u8> = (0..100u8).collect();
        for off in [0u64, 1, 7, 8, 13, 155] {
            region.fill(0, 256, 0xaa).unwrap();
            region.copy_in(off, &data).unwrap();
            let mut back = vec![0u8; 100];
            region.copy_out(off, &mut back).unwrap();
            assert_eq!(back, data);
            let mut edge = [0u8; 1];
            if off > 0 {
                region.copy_out(off - 1, &mut edge).unwrap();
                assert_eq!(edge[0], 0xaa);
            }
            region.copy_out(off + 100, &mut edge).unwrap();
            assert_eq!(edge[0], 0xaa);
        }
    }

    #[test]
    fn fill_sets_exactly_its_range_at_any_alignment() {
        let region = MemoryRegion::new_zeroed(96).unwrap();
        for off in [0u64, 1, 3, 7, 8, 9, 15] {
            for len in [0u64, 1, 5, 7, 8, 9, 16, 17, 40, 96 - off] {
                region.fill(0, 96, 0x11).unwrap();
                region.fill(off, len, 0xee).unwrap();
                let mut all = [0u8; 96];
                region.copy_out(0, &mut all).unwrap();
                for (i, b) in all.iter().enumerate() {
                    let inside = (off..off + len).contains(&(i as u64));
                    assert_eq!(
                        *b,
                        if inside { 0xee } else { 0x11 },
                        "off {off} len {len} byte {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_is_refused_without_effect() {
        let region = MemoryRegion::new_zeroed(64).unwrap();
        assert_eq!(
            region.copy_in(60, &[1; 8]),
            Err(MemoryError::OutOfBounds {
                offset: 60,
                len: 8,
                size: 64
            })
        );
        assert!(region.copy_out(u64::MAX, &mut [0; 1]).is_err());
        assert!(region.fill(1, u64::MAX, 0).is_err());
        let mut all = [1u8; 64];
        region.copy_out(0, &mut all).unwrap();
        assert_eq!(all, [0u8; 64]);
        assert!(MemoryRegion::new_zeroed(0).unwrap().is_empty());
    }

    #[test]
    fn external_mapping_and_clones_share_bytes() {
        let mut buf = vec![0u8; 32];
        // SAFETY: `buf` outlives the region and is not touched meanwhile.
        let region = unsafe { MemoryRegion::new(buf.as_mut_ptr(), buf.len()) }.unwrap();
        let other = region.clone();
        other.copy_in(3, b"hello").unwrap();
        let mut back = [0u8; 5];
        region.copy_out(3, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        drop((region, other));
        assert_eq!(&buf[3..8], b"hello");
        // SAFETY: refused before any access.
        assert!(unsafe { MemoryRegion::new(core::ptr::null_mut(), 8) }.is_err());
    }
}
