//! The client-side transport abstraction: the handful of scheme calls the
//! client library needs, implemented by the host transport (Unix socket)
//! and, on Redox, by plain system calls on `/scheme/pddgpu/…`.

use core::ptr::NonNull;
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
    /// so the BO appears as one contiguous slice of `size` bytes.
    fn map(
        &mut self,
        handle: usize,
        domain: Domain,
        size: u64,
        segments: &[SegmentWire],
    ) -> TResult<Mapping>;
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

    /// The BO's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `from_raw`'s contract: `len` readable bytes at `ptr`, alive
        // as long as `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The BO's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique
        // within this process.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
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
}
