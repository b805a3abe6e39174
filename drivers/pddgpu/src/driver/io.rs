//! Reading and writing BO contents for its holders.

use core::ops::Range;

use super::gate::{Lane, Mode};
use super::{Driver, DriverError, GTT_BASE};
use crate::bo::{BoId, OwnerId};
use crate::device::{MemoryError, MemoryRegion};

/// Largest piece of a BO read or written under one table-shard lock.
const IO_CHUNK: usize = 256 << 10;

impl Driver {
    /// Reads BO contents at `offset` into `buf`; returns the bytes read
    /// (short at the end of the BO, 0 at its end).
    pub fn bo_read(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, DriverError> {
        self.bo_io(owner, id, offset, buf.len(), |region, at, range| {
            region.copy_out(at, &mut buf[range])
        })
    }

    /// Writes `buf` into BO contents at `offset`; returns the bytes written
    /// (short at the end of the BO).
    pub fn bo_write(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        buf: &[u8],
    ) -> Result<usize, DriverError> {
        self.bo_io(owner, id, offset, buf.len(), |region, at, range| {
            region.copy_in(at, &buf[range])
        })
    }

    /// Copies in pieces of at most `IO_CHUNK` bytes, each under the BO's
    /// shard lock, so the BO cannot be freed (and its memory reused)
    /// during a copy, and no lock is held for long.
    fn bo_io(
        &self,
        owner: OwnerId,
        id: BoId,
        offset: u64,
        len: usize,
        mut op: impl FnMut(&MemoryRegion, u64, Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<usize, DriverError> {
        let d = id.domain().ok_or(DriverError::NoSuchBo)?;
        let _pass = self.gate.enter(Lane::Other, Mode::Wait)?;
        let region = self.backing(d);
        let mut done = 0usize;
        loop {
            let shard = self.table.shard(id);
            let entry = match shard.bos.get(&id.0) {
                Some(e) if e.own.is_held_by(owner) => e,
                // Freed by the same owner meanwhile: report what was done.
                _ if done > 0 => return Ok(done),
                Some(_) => return Err(DriverError::PermissionDenied),
                None => return Err(DriverError::NoSuchBo),
            };
            if offset > entry.size {
                return Err(DriverError::OutOfBounds);
            }
            let total = (len as u64).min(entry.size - offset) as usize;
            if done >= total {
                return Ok(done);
            }
            let end = total.min(done + IO_CHUNK);
            let (lo, hi) = (offset + done as u64, offset + end as u64);
            for (bo_at, back_at, seg_len) in entry.placement.segments_iter(entry.size, GTT_BASE) {
                let s = lo.max(bo_at);
                let e = hi.min(bo_at + seg_len);
                if s >= e {
                    continue;
                }
                let buf_start = (s - offset) as usize;
                let buf_end = (e - offset) as usize;
                debug_assert!(buf_start < buf_end && buf_end <= end);
                op(region, back_at + (s - bo_at), buf_start..buf_end)
                    .map_err(|e| DriverError::Device(e.into()))?;
            }
            done = end;
        }
    }
}
