//! The Redox transport (Redox only): the client library's scheme calls are
//! plain system calls on `/scheme/pddgpu/…` — no connection, no framing; a
//! handle is a file descriptor and the kernel routes each call to pddgpud.
//!
//! - `open`/`close`/`fpath`/`fstat` and the binary `call` go through
//!   libredox, `getdents` is its system call (libredox 0.1.12 has no
//!   wrapper);
//! - `read`/`write` at an offset are `pread`/`pwrite`;
//! - mapping a BO is `mmap` of its descriptor, one `MAP_SHARED | MAP_FIXED`
//!   mapping per segment at the segment's BO offset inside one reserved
//!   range; the kernel asks pddgpud (`mmap_prep`) for the VRAM/GTT pages of
//!   each segment and shares them into this process.
//!
//! Built for `x86_64-unknown-redox` against the snapshot's relibc and run
//! inside Redox by `pddgpu-image redox-boot` (the `pddgpu` CLI and the
//! guest scenario program use it).

use core::ptr::NonNull;

use libredox::call::MmapArgs;
use libredox::error::Error as RedoxError;
use libredox::flag::{MAP_PRIVATE, MAP_SHARED, O_CLOEXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use syscall::data::Stat;
use syscall::CallFlags;

use crate::error::{Error, Result};
use crate::transport::{validate_segments, BoLayout, Mapping, TResult, Transport, TransportError};
use crate::Device;

/// Where pddgpud's scheme appears.
pub const SCHEME_ROOT: &str = "/scheme/pddgpu";

/// Page size of Redox on this architecture.
const PAGE: u64 = syscall::PAGE_SIZE as u64;

fn errno(e: RedoxError) -> TransportError {
    TransportError::Errno(e.errno())
}

/// `-1` from a libc call: the errno it set.
fn last_errno() -> TransportError {
    TransportError::Io(std::io::Error::last_os_error())
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_next_multiple_of(to)
}

/// Clients' view of `/scheme/pddgpu`: a directory descriptor of the
/// scheme's root, opened once, and every other path opened relative to it.
///
/// Opening relative to our own descriptor is what makes pddgpud see the
/// client as the caller. An absolute `/scheme/pddgpu/…` path goes through
/// the namespace manager (bootstrap's `initnsmgr` in the Redox snapshot),
/// which opens the file itself with the client's uid and gid but its own
/// pid, so every client would look like one process to pddgpud (which
/// keys BO ownership by pid). `openat` on a descriptor of the pddgpu scheme
/// goes from the kernel straight to pddgpud with the real caller.
pub struct RedoxTransport {
    root_path: String,
    root: libredox::Fd,
}

impl core::fmt::Debug for RedoxTransport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedoxTransport")
            .field("root_path", &self.root_path)
            .field("root_fd", &self.root.raw())
            .finish()
    }
}

impl RedoxTransport {
    /// Opens the scheme at [`SCHEME_ROOT`].
    pub fn connect() -> core::result::Result<Self, RedoxError> {
        Self::connect_at(SCHEME_ROOT)
    }

    /// Opens the scheme mounted at `root` (e.g. a second instance
    /// registered under another name).
    pub fn connect_at(root: &str) -> core::result::Result<Self, RedoxError> {
        let root_path = root.trim_end_matches('/').to_string();
        let root = libredox::Fd::open(
            &root_path,
            libredox::flag::O_RDONLY | libredox::flag::O_DIRECTORY | O_CLOEXEC,
            0,
        )?;
        Ok(RedoxTransport { root_path, root })
    }

    /// The absolute path of a scheme-relative `path` (`""` is the root).
    pub fn full_path(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            self.root_path.clone()
        } else {
            format!("{}/{path}", self.root_path)
        }
    }
}

impl Device {
    /// Connects to pddgpud through `/scheme/pddgpu`. Fails with
    /// [`Error::Connect`] when the scheme does not exist (pddgpud not
    /// running) or this process may not use it (see `/etc/login_schemes.toml`).
    pub fn open() -> Result<Device> {
        let t = RedoxTransport::connect().map_err(|e| Error::Connect {
            path: SCHEME_ROOT.to_string(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        Ok(Device::from_transport(Box::new(t)))
    }
}

/// Releases a mapping made by [`RedoxTransport::map`].
///
/// # Safety
/// `ptr..ptr+len` must be a mapping owned by the caller.
unsafe fn unmap_redox(ptr: *mut u8, len: usize) {
    // SAFETY: forwarded from the caller.
    if let Err(e) = unsafe { libredox::call::munmap(ptr.cast(), len) } {
        log::error!("munmap of a BO mapping failed: {e}");
    }
}

impl Transport for RedoxTransport {
    fn open(&mut self, path: &str, flags: usize) -> TResult<usize> {
        // The scheme's `O_*` flags, which libredox takes as `i32`.
        let flags = i32::try_from(flags)
            .map_err(|_| TransportError::Protocol(format!("open flags {flags:#x} out of range")))?;
        let path = path.trim_start_matches('/');
        libredox::call::openat(self.root.raw(), path, flags | O_CLOEXEC, 0).map_err(errno)
    }

    fn close(&mut self, handle: usize) -> TResult<()> {
        libredox::call::close(handle).map_err(errno)
    }

    fn read(&mut self, handle: usize, offset: u64, buf: &mut [u8]) -> TResult<usize> {
        let fd = fd_of(handle)?;
        let off = off_of(offset)?;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) };
        usize::try_from(n).map_err(|_| last_errno())
    }

    fn write(&mut self, handle: usize, offset: u64, data: &[u8]) -> TResult<usize> {
        let fd = fd_of(handle)?;
        let off = off_of(offset)?;
        // SAFETY: `data` is valid for reads of `data.len()` bytes.
        let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
        usize::try_from(n).map_err(|_| last_errno())
    }

    fn call(&mut self, handle: usize, payload: &mut [u8], metadata: &[u64; 3]) -> TResult<usize> {
        libredox::call::call_rw(handle, payload, CallFlags::empty(), metadata).map_err(errno)
    }

    fn fstat(&mut self, handle: usize) -> TResult<Stat> {
        let st = libredox::call::fstat(handle).map_err(errno)?;
        // relibc's `struct stat` carries the scheme's `Stat`, field by field
        // (the narrowing casts undo relibc's widening).
        Ok(Stat {
            st_dev: st.st_dev as u64,
            st_ino: st.st_ino as u64,
            st_mode: st.st_mode as u16,
            st_nlink: st.st_nlink as u32,
            st_uid: st.st_uid,
            st_gid: st.st_gid,
            st_size: st.st_size as u64,
            st_blksize: st.st_blksize as u32,
            st_blocks: st.st_blocks as u64,
            st_mtime: st.st_mtime as u64,
            st_mtime_nsec: st.st_mtime_nsec as u32,
            st_atime: st.st_atime as u64,
            st_atime_nsec: st.st_atime_nsec as u32,
            st_ctime: st.st_ctime as u64,
            st_ctime_nsec: st.st_ctime_nsec as u32,
        })
    }

    fn fpath(&mut self, handle: usize, buf: &mut [u8]) -> TResult<usize> {
        libredox::call::fpath(handle, buf).map_err(errno)
    }

    fn getdents(&mut self, handle: usize, buf: &mut [u8], opaque_offset: u64) -> TResult<usize> {
        // libredox 0.1.12 has no getdents wrapper; this is the system call
        // relibc's own `getdents` makes (header size, opaque start offset).
        let header_size = core::mem::size_of::<syscall::dirent::DirentHeader>();
        let opaque = usize::try_from(opaque_offset).map_err(|_| {
            TransportError::Protocol(format!("offset {opaque_offset} out of range"))
        })?;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // duration of the call; the kernel writes at most that many.
        unsafe {
            syscall::syscall5(
                syscall::SYS_GETDENTS,
                handle,
                buf.as_mut_ptr() as usize,
                buf.len(),
                header_size,
                opaque,
            )
        }
        .map_err(|e| TransportError::Errno(e.errno))
    }

    fn map(&mut self, handle: usize, layout: &BoLayout<'_>) -> TResult<Mapping> {
        // Each segment is mapped from the BO's own handle at its BO offset,
        // so the backing (and with it the domain) never has to be named.
        let size = layout.size;
        let segs = validate_segments(size, PAGE, layout.segments)?;
        let reserved = round_up(size, PAGE)
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(|| TransportError::Protocol("BO too large to map".into()))?;
        // SAFETY: a fresh anonymous PROT_NONE reservation chosen by the
        // kernel (no MAP_FIXED); nothing else uses this range.
        let base = unsafe {
            libredox::call::mmap(MmapArgs {
                addr: core::ptr::null_mut(),
                length: reserved,
                prot: PROT_NONE,
                flags: MAP_PRIVATE | libc::MAP_ANONYMOUS as u32,
                fd: !0,
                offset: 0,
            })
        }
        .map_err(errno)?
        .cast::<u8>();
        for s in &segs {
            let map_len = round_up(s.len, PAGE).and_then(|l| usize::try_from(l).ok());
            let at = usize::try_from(s.bo_offset).ok();
            let fits = match (at, map_len) {
                (Some(at), Some(len)) => at.checked_add(len).is_some_and(|end| end <= reserved),
                _ => false,
            };
            let mapped = if fits {
                let (at, len) = (at.unwrap_or(0), map_len.unwrap_or(0));
                // SAFETY: `base + at .. base + at + len` lies inside the
                // reservation made above (checked), which we own; MAP_FIXED
                // replaces only that part of it with the BO's pages.
                unsafe {
                    libredox::call::mmap(MmapArgs {
                        addr: base.add(at).cast(),
                        length: len,
                        prot: PROT_READ | PROT_WRITE,
                        flags: MAP_SHARED | libc::MAP_FIXED as u32,
                        fd: handle,
                        offset: s.bo_offset,
                    })
                }
                .map(|_| ())
                .map_err(|e| e.to_string())
            } else {
                Err("segment outside the BO".to_string())
            };
            if let Err(e) = mapped {
                // SAFETY: the reservation is ours and not yet handed out.
                unsafe { unmap_redox(base, reserved) };
                return Err(TransportError::Protocol(format!(
                    "mapping segment {s:?} failed: {e}"
                )));
            }
        }
        let ptr = NonNull::new(base)
            .ok_or_else(|| TransportError::Protocol("mmap returned null".into()))?;
        // SAFETY: `ptr..ptr+reserved` is the mapping built above, owned by
        // the returned value; its first `size` bytes are the BO, read/write.
        Ok(unsafe { Mapping::from_raw(ptr, size as usize, reserved, unmap_redox) })
    }
}

fn fd_of(handle: usize) -> TResult<libc::c_int> {
    libc::c_int::try_from(handle)
        .map_err(|_| TransportError::Protocol(format!("handle {handle} is not a descriptor")))
}

fn off_of(offset: u64) -> TResult<libc::off_t> {
    libc::off_t::try_from(offset)
        .map_err(|_| TransportError::Protocol(format!("offset {offset} out of range")))
}
