//! The client-side transport abstraction: the handful of scheme calls the
//! client library needs, implemented by the host transport (Unix socket)
//! and, on Redox, by plain system calls on `/scheme/pddgpu/…`.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};
use std::io;

use syscall::data::Stat;

use crate::wire::{Domain, SegmentWire};

/// Why a transport call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The scheme answered with this errno.
    #[error("errno {0}")]
    Errno(i32),
    /// The connection to the server failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server's answer made no sense (bad frame, missing descriptor,
    /// unusable segment list).
    #[error("{0}")]
    Protocol(String),
}

/// Result of a transport call.
pub type TResult<T> = Result<T, TransportError>;

/// The scheme calls of the client library. Handles are the scheme's handle
/// numbers (file descriptors on Redox).
pub trait Transport: Send {
    /// `openat(root, path, flags)`; `flags` are Redox `O_*` flags.
    fn open(&mut self, path: &str, flags: usize) -> TResult<usize>;
    /// Closes a handle (the scheme's `on_close`).
    fn close(&mut self, handle: usize) -> TResult<()>;
    /// Reads at `offset`.
    fn read(&mut self, handle: usize, offset: u64, buf: &mut [u8]) -> TResult<usize>;
    /// Writes at `offset`.
    fn write(&mut self, handle: usize, offset: u64, data: &[u8]) -> TResult<usize>;
    /// The binary `call` interface; `payload` is in/out.
    fn call(&mut self, handle: usize, payload: &mut [u8], metadata: &[u64; 3]) -> TResult<usize>;
    /// `fstat`.
    fn fstat(&mut self, handle: usize) -> TResult<Stat>;
    /// `fpath` into `buf`; returns the length.
    fn fpath(&mut self, handle: usize, buf: &mut [u8]) -> TResult<usize>;
    /// `getdents` into `buf` starting at `opaque_offset`; returns bytes
    /// written (0 at the end).
    fn getdents(&mut self, handle: usize, buf: &mut [u8], opaque_offset: u64) -> TResult<usize>;
    /// Maps a BO: every segment at its BO offset inside one reserved range,
    /// so the BO appears as one contiguous slice of `layout.size` bytes.
    fn map(&mut self, handle: usize, layout: &BoLayout<'_>) -> TResult<Mapping>;
}

/// Where a BO's bytes lie: what a transport needs to map it.
#[derive(Clone, Copy, Debug)]
pub struct BoLayout<'a> {
    /// The memory domain the segments' backing offsets are in.
    pub domain: Domain,
    /// The BO's size in bytes; the mapping is this long.
    pub size: u64,
    /// The BO's pieces, each at its offset in the BO and in the backing.
    pub segments: &'a [SegmentWire],
}

/// A BO mapped into this process. Unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    reserved: usize,
    unmap: unsafe fn(*mut u8, usize),
}

// SAFETY: the mapping is plain shared memory owned by this value; moving it
// to another thread moves that ownership.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Wraps a mapping made by a transport.
    ///
    /// # Safety
    /// `ptr..ptr+reserved` must be a mapping owned by the caller, readable
    /// and writable for its first `len <= reserved` bytes, that nothing else
    /// unmaps; `unmap(ptr, reserved)` must release it.
    pub unsafe fn from_raw(
        ptr: NonNull<u8>,
        len: usize,
        reserved: usize,
        unmap: unsafe fn(*mut u8, usize),
    ) -> Self {
        Mapping {
            ptr,
            len,
            reserved,
            unmap,
        }
    }

    /// Length of the BO in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a BO).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The BO's memory (see [`SharedBytes`]).
    pub fn bytes(&self) -> SharedBytes<'_> {
        // SAFETY: `from_raw`'s contract: `len` readable and writable bytes at
        // `ptr`, alive as long as `self`. `AtomicU8` has the size and
        // alignment of `u8`, and every access through the slice is atomic,
        // so writes by other processes to the same memory are no data race.
        let atomics =
            unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len) };
        SharedBytes(atomics)
    }
}

/// The memory of a mapped BO. The server and every other holder of the BO
/// may write it at any time, so it is never handed out as `&[u8]` or
/// `&mut [u8]` (which would promise that nobody else writes it): every
/// access is an atomic load or store with relaxed ordering, which is sound
/// whatever others do and compiles to plain loads and stores. Accesses of
/// different processes are not ordered with each other; a request to the
/// server (a read, a write, a call) orders what came before it.
///
/// Offsets out of range panic, as slice indexing does.
#[derive(Clone, Copy, Debug)]
pub struct SharedBytes<'a>(&'a [AtomicU8]);

impl<'a> SharedBytes<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for a BO).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The byte at `index`.
    pub fn load(&self, index: usize) -> u8 {
        self.0[index].load(Ordering::Relaxed)
    }

    /// Sets the byte at `index`.
    pub fn store(&self, index: usize, byte: u8) {
        self.0[index].store(byte, Ordering::Relaxed);
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = &self.0[offset..offset + buf.len()];
        for (b, a) in buf.iter_mut().zip(src) {
            *b = a.load(Ordering::Relaxed);
        }
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) {
        for (a, &b) in self.0[offset..offset + data.len()].iter().zip(data) {
            a.store(b, Ordering::Relaxed);
        }
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) {
        for a in self.0 {
            a.store(byte, Ordering::Relaxed);
        }
    }

    /// A copy of all the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.iter().collect()
    }

    /// The bytes in order, each loaded when the iterator reaches it.
    pub fn iter(&self) -> impl Iterator<Item = u8> + 'a {
        self.0.iter().map(|a| a.load(Ordering::Relaxed))
    }

    /// The memory as atomics, for other access patterns.
    pub fn as_atomic(&self) -> &'a [AtomicU8] {
        self.0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `from_raw`'s contract: `unmap` releases exactly this range,
        // and no slice borrowed from `self` outlives it.
        unsafe { (self.unmap)(self.ptr.as_ptr(), self.reserved) }
    }
}

/// Checks that `segments` tile `0..size` exactly, in order, with page
/// aligned starts (and page-multiple lengths except for the last), and
/// returns them sorted by BO offset.
pub fn validate_segments(
    size: u64,
    page: u64,
    segments: &[SegmentWire],
) -> TResult<Vec<SegmentWire>> {
    let mut segs = segments.to_vec();
    segs.sort_by_key(|s| s.bo_offset);
    let mut expect = 0u64;
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let bad = s.bo_offset != expect
            || s.len == 0
            || s.bo_offset % page != 0
            || s.backing_offset % page != 0
            || (!last && s.len % page != 0);
        if bad {
            return Err(TransportError::Protocol(format!(
                "unusable segment list for a {size}-byte BO: {segments:?}"
            )));
        }
        expect = s
            .bo_offset
            .checked_add(s.len)
            .ok_or_else(|| TransportError::Protocol("segment overflows".into()))?;
    }
    if expect != size {
        return Err(TransportError::Protocol(format!(
            "segments cover {expect} of {size} bytes"
        )));
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(bo_offset: u64, backing_offset: u64, len: u64) -> SegmentWire {
        SegmentWire {
            bo_offset,
            backing_offset,
            len,
        }
    }

    #[test]
    fn segments_must_tile_the_bo() {
        let ok = [seg(4096, 0, 4000), seg(0, 65536, 4096)];
        let sorted = validate_segments(8096, 4096, &ok).unwrap();
        assert_eq!(sorted[0].bo_offset, 0);
        for bad in [
            vec![seg(0, 0, 4096)],                      // short
            vec![seg(0, 0, 4096), seg(0, 4096, 4096)],  // overlap
            vec![seg(0, 0, 4096), seg(8192, 0, 4096)],  // gap
            vec![seg(0, 100, 8192)],                    // unaligned backing
            vec![seg(0, 0, 100), seg(100, 4096, 8092)], // short middle
            vec![seg(0, 0, 0), seg(0, 0, 8192)],        // empty segment
        ] {
            assert!(validate_segments(8192, 4096, &bad).is_err(), "{bad:?}");
        }
        assert!(validate_segments(u64::MAX, 4096, &[seg(4096, 0, u64::MAX)]).is_err());
    }

    /// Frees a boxed slice leaked by the test below.
    unsafe fn free_boxed(ptr: *mut u8, len: usize) {
        // SAFETY: `ptr..ptr + len` is the boxed slice the test leaked, freed
        // once, by the mapping's drop.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }

    #[test]
    fn shared_bytes_load_store_and_copy() {
        let memory: Box<[u8]> = vec![7u8; 64].into_boxed_slice();
        let ptr = NonNull::new(Box::into_raw(memory).cast::<u8>()).unwrap();
        // SAFETY: a live, readable and writable allocation of 64 bytes that
        // only this mapping frees.
        let mapping = unsafe { Mapping::from_raw(ptr, 60, 64, free_boxed) };
        let m = mapping.bytes();
        assert_eq!(m.len(), 60, "only the BO's length is visible");
        assert!(m.iter().all(|b| b == 7));
        m.fill(1);
        m.store(3, 9);
        m.write(10, b"abc");
        assert_eq!(m.load(3), 9);
        let mut buf = [0u8; 4];
        m.read(9, &mut buf);
        assert_eq!(&buf, b"\x01abc");
        let all = m.to_vec();
        assert_eq!(all.len(), 60);
        assert_eq!(all.iter().filter(|&&b| b == 1).count(), 56);
        assert!(
            std::panic::catch_unwind(|| m.load(60)).is_err(),
            "past the end"
        );
    }
}
