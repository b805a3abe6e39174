//! [`Transport`] over a [`HostConnection`]: scheme calls become frames;
//! mapping uses the descriptor of the BO's own memory the scheme passes
//! with `dup(bo, "backing")` (or, for privileged clients of a VRAM BAR,
//! the whole domain with `dup(bo, "domain-backing")`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use syscall::data::Stat;
use syscall::schemev2::Opcode;

use super::client::{HostConnection, Reply};
use super::server::ROOT_FD;
use crate::frame::MAX_PAYLOAD;
use crate::transport::{validate_segments, BoLayout, Mapping, TResult, Transport, TransportError};
use crate::wire::{Domain, SegmentWire, DUP_BACKING, DUP_DOMAIN_BACKING};

/// The host transport seen from a client.
pub struct HostTransport {
    conn: HostConnection,
    path: PathBuf,
    /// Handles this connection holds open (opened and not yet closed).
    handles: usize,
    /// Whole-domain descriptors (privileged clients of a backend without
    /// per-BO memory), fetched once per domain.
    domain_backing: HashMap<Domain, OwnedFd>,
}

impl HostTransport {
    /// Connects to the server at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(HostTransport {
            conn: HostConnection::connect(path)?,
            path: path.to_path_buf(),
            handles: 0,
            domain_backing: HashMap::new(),
        })
    }

    fn req(
        &mut self,
        op: Opcode,
        args: [u64; 6],
        payload: &[u8],
        out_len: usize,
    ) -> TResult<(usize, Reply)> {
        let reply = match self.conn.request(op, args, payload, out_len) {
            Ok(reply) => reply,
            // The server closes a connection that held no handle and was
            // quiet past its idle timeout; such a connection lost nothing,
            // so a fresh one carries on.
            Err(e) if self.handles == 0 && is_closed(&e) => {
                self.conn = HostConnection::connect(&self.path)?;
                self.conn.request(op, args, payload, out_len)?
            }
            Err(e) => return Err(e.into()),
        };
        match reply.result() {
            Ok(v) => Ok((v, reply)),
            Err(errno) => Err(TransportError::Errno(errno)),
        }
    }
}

/// Whether `e` says the server closed the connection.
fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), BrokenPipe | ConnectionReset | UnexpectedEof)
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

/// Maps `segments` of `fd` (each at its BO offset) into one fresh
/// reservation of `reserved` bytes; the first `size` are the BO.
fn map_segments(
    fd: &OwnedFd,
    size: u64,
    reserved: usize,
    segs: &[SegmentWire],
) -> TResult<Mapping> {
    let page = page_size();
    // SAFETY: a fresh anonymous PROT_NONE reservation; nothing else uses
    // this range.
    let base = unsafe {
        mmap_anonymous(
            core::ptr::null_mut(),
            reserved,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .map_err(std::io::Error::from)?;
    for s in segs {
        let map_len = round_up(s.len, page).unwrap_or(u64::MAX) as usize;
        let at = s.bo_offset as usize;
        let mapped = if at.checked_add(map_len).is_none_or(|end| end > reserved) {
            Err(rustix::io::Errno::INVAL)
        } else {
            // SAFETY: `base + at .. base + at + map_len` lies inside the
            // reservation made above (checked), which we own; MAP_FIXED
            // replaces only that part of it.
            unsafe {
                mmap(
                    base.cast::<u8>().add(at).cast(),
                    map_len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::FIXED,
                    fd,
                    s.backing_offset,
                )
            }
        };
        if let Err(e) = mapped {
            // SAFETY: the reservation is ours and not yet handed out.
            unsafe { unmap_host(base.cast(), reserved) };
            return Err(TransportError::Protocol(format!(
                "mapping segment {s:?} failed: {e}"
            )));
        }
    }
    let ptr = NonNull::new(base.cast::<u8>())
        .ok_or_else(|| TransportError::Protocol("mmap returned null".into()))?;
    // SAFETY: `ptr..ptr+reserved` is the mapping built above, owned by the
    // returned value; its first `size` bytes are the BO, read/write.
    Ok(unsafe { Mapping::from_raw(ptr, size as usize, reserved, unmap_host) })
}

/// Releases a mapping made by [`HostTransport::map`].
///
/// # Safety
/// `ptr..ptr+len` must be a mapping owned by the caller.
unsafe fn unmap_host(ptr: *mut u8, len: usize) {
    // SAFETY: forwarded from the caller.
    if let Err(e) = unsafe { munmap(ptr.cast(), len) } {
        log::error!("munmap of a BO mapping failed: {e}");
    }
}

impl Transport for HostTransport {
    fn open(&mut self, path: &str, flags: usize) -> TResult<usize> {
        let args = [ROOT_FD, 0, 0, flags as u64, 0, 0];
        let handle = self.req(Opcode::OpenAt, args, path.as_bytes(), 0)?.0;
        self.handles += 1;
        Ok(handle)
    }

    fn close(&mut self, handle: usize) -> TResult<()> {
        self.req(Opcode::CloseMsg, [handle as u64, 0, 0, 0, 0, 0], &[], 0)?;
        self.handles = self.handles.saturating_sub(1);
        Ok(())
    }

    fn read(&mut self, handle: usize, offset: u64, buf: &mut [u8]) -> TResult<usize> {
        let len = buf.len().min(MAX_PAYLOAD);
        let (n, reply) = self.req(Opcode::Read, [handle as u64, 0, 0, offset, 0, 0], &[], len)?;
        let n = n.min(reply.payload.len());
        buf[..n].copy_from_slice(&reply.payload[..n]);
        Ok(n)
    }

    fn write(&mut self, handle: usize, offset: u64, data: &[u8]) -> TResult<usize> {
        let data = &data[..data.len().min(MAX_PAYLOAD)];
        Ok(self
            .req(Opcode::Write, [handle as u64, 0, 0, offset, 0, 0], data, 0)?
            .0)
    }

    fn call(&mut self, handle: usize, payload: &mut [u8], metadata: &[u64; 3]) -> TResult<usize> {
        let args = [handle as u64, 0, 0, metadata[0], metadata[1], metadata[2]];
        let (n, reply) = self.req(Opcode::Call, args, payload, 0)?;
        if reply.payload.len() != payload.len() {
            return Err(TransportError::Protocol(format!(
                "call returned {} payload bytes for {}",
                reply.payload.len(),
                payload.len()
            )));
        }
        payload.copy_from_slice(&reply.payload);
        Ok(n)
    }

    fn fstat(&mut self, handle: usize) -> TResult<Stat> {
        let (_, reply) = self.req(Opcode::Fstat, [handle as u64, 0, 0, 0, 0, 0], &[], 0)?;
        let mut stat = Stat::default();
        if reply.payload.len() != stat.len() {
            return Err(TransportError::Protocol(
                "fstat reply has the wrong size".into(),
            ));
        }
        stat.copy_from_slice(&reply.payload);
        Ok(stat)
    }

    fn fpath(&mut self, handle: usize, buf: &mut [u8]) -> TResult<usize> {
        let (_, reply) = self.req(
            Opcode::Fpath,
            [handle as u64, 0, 0, 0, 0, 0],
            &[],
            buf.len(),
        )?;
        let n = reply.payload.len().min(buf.len());
        buf[..n].copy_from_slice(&reply.payload[..n]);
        Ok(n)
    }

    fn getdents(&mut self, handle: usize, buf: &mut [u8], opaque_offset: u64) -> TResult<usize> {
        let header = core::mem::size_of::<syscall::dirent::DirentHeader>() as u64;
        let args = [handle as u64, 0, 0, header, opaque_offset, 0];
        let (_, reply) = self.req(Opcode::Getdents, args, &[], buf.len())?;
        let n = reply.payload.len().min(buf.len());
        buf[..n].copy_from_slice(&reply.payload[..n]);
        Ok(n)
    }

    fn map(&mut self, handle: usize, layout: &BoLayout<'_>) -> TResult<Mapping> {
        let BoLayout {
            domain,
            size,
            segments,
        } = *layout;
        let page = page_size();
        let reserved = round_up(size, page)
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(|| TransportError::Protocol("BO too large to map".into()))?;
        // The BO's own memory: one descriptor, byte 0 = the BO's byte 0.
        match self.req(Opcode::Dup, [handle as u64, 0, 0, 0, 0, 0], DUP_BACKING, 0) {
            Ok((_, reply)) => {
                let fd = reply.fd.ok_or_else(|| {
                    TransportError::Protocol("the server passed no BO memory descriptor".into())
                })?;
                let whole = [SegmentWire {
                    bo_offset: 0,
                    backing_offset: 0,
                    len: size,
                }];
                return map_segments(&fd, size, reserved, &whole);
            }
            Err(TransportError::Errno(syscall::error::EOPNOTSUPP)) => {}
            Err(e) => return Err(e),
        }
        // No per-BO memory in this domain (a VRAM BAR): privileged clients
        // map the BO's segments from a descriptor of the whole domain.
        let segs = validate_segments(size, page, segments)?;
        if !self.domain_backing.contains_key(&domain) {
            let (_, reply) = self.req(
                Opcode::Dup,
                [handle as u64, 0, 0, 0, 0, 0],
                DUP_DOMAIN_BACKING,
                0,
            )?;
            let fd = reply.fd.ok_or_else(|| {
                TransportError::Protocol("the server passed no backing descriptor".into())
            })?;
            self.domain_backing.insert(domain, fd);
        }
        map_segments(&self.domain_backing[&domain], size, reserved, &segs)
    }
}
