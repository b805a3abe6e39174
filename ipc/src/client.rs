//! The typed client library: [`Device`] (a connection to `pddgpu:`) and
//! [`Bo`] (one buffer object, freed when dropped).
//!
//! ```no_run
//! use pddgpu_ipc::{BoFlags, Device, Domain};
//! let dev = Device::open()?;
//! let mut bo = dev.create_bo(1 << 20, Domain::Vram, BoFlags::empty())?;
//! bo.map()?.fill(0xAB);
//! println!("{}", dev.stats()?.vram.used);
//! # Ok::<(), pddgpu_ipc::Error>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use syscall::flag::{O_DIRECTORY, O_RDONLY, O_RDWR, O_WRONLY};

use crate::error::{Error, Result};
use crate::model::{ClientInfo, LeakReport, OccupancyMap, Stats};
use crate::transport::{BoLayout, Mapping, SharedBytes, Transport};
use crate::wire::{
    BoCall, BoDesc, BoFlags, BoInfoWire, Domain, ExportWire, SegmentWire, ShareToken,
};

/// Chunk size for reading scheme files.
const READ_CHUNK: usize = 64 << 10;

struct Inner {
    transport: Mutex<Box<dyn Transport>>,
}

/// A connection to the pddgpu server. Cheap to clone (shared connection).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// Retry policy the client applies when the server answers `EAGAIN`
/// (no space now, retry allowed by the server's tunables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Retry {
    count: u32,
    delay_ms: u64,
}

impl Device {
    /// Connects to the server at its default location: on the host the
    /// socket from `PDDGPU_SOCKET`, else `$XDG_RUNTIME_DIR/pddgpu.sock`,
    /// else `/run/pddgpu/pddgpu.sock`.
    #[cfg(not(target_os = "redox"))]
    pub fn open() -> Result<Device> {
        Self::connect(&crate::default_socket_path())
    }

    /// Connects to the host-transport server listening at `path`.
    #[cfg(not(target_os = "redox"))]
    pub fn connect(path: &std::path::Path) -> Result<Device> {
        let t = crate::host::HostTransport::connect(path).map_err(|source| Error::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::from_transport(Box::new(t)))
    }

    /// Wraps any transport (the Redox transport, or a test double).
    pub fn from_transport(transport: Box<dyn Transport>) -> Device {
        Device {
            inner: Arc::new(Inner {
                transport: Mutex::new(transport),
            }),
        }
    }

    fn t(&self) -> MutexGuard<'_, Box<dyn Transport>> {
        // A panic while holding the lock cannot leave the transport in a
        // state worse than a failed request; keep going.
        self.inner
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn open_handle(&self, path: &str, flags: usize) -> Result<usize> {
        self.t()
            .open(path, flags)
            .map_err(|e| Error::from_transport("open", path, e))
    }

    fn close_handle(&self, handle: usize, path: &str) -> Result<()> {
        self.t()
            .close(handle)
            .map_err(|e| Error::from_transport("close", path, e))
    }

    /// Allocates a BO of `size` bytes in `domain`.
    pub fn create_bo(&self, size: u64, domain: Domain, flags: BoFlags) -> Result<Bo> {
        self.create(&BoDesc::new(size, domain, flags))
    }

    /// Allocates a BO as described.
    ///
    /// No space right now is retried in one layer: the server's transport
    /// parks the create and retries it as the `<domain>_retry_count` /
    /// `<domain>_retry_delay_ms` tunables say (early when memory is freed),
    /// answering `ENOSPC` when the retries run out. Where the transport
    /// cannot park (the Redox kernel answers `EAGAIN` straight back), this
    /// is the retry layer instead: it waits the same delays
    /// ([`crate::retry`]) and opens again
    /// with `attempt=<n>` in the path, which the server counts in its retry
    /// statistics, and fails with `ENOSPC` after the same count.
    pub fn create(&self, desc: &BoDesc) -> Result<Bo> {
        if desc.size == 0 {
            return Err(Error::Invalid("a BO needs a size greater than 0".into()));
        }
        crate::wire::check_label(&desc.label).map_err(Error::Invalid)?;
        let mut desc = desc.clone();
        let mut retry: Option<Retry> = None;
        let mut attempt = 0;
        loop {
            desc.attempt = attempt;
            let path = desc.to_path();
            match self.open_handle(&path, O_RDWR) {
                Ok(handle) => return Bo::from_handle(self.clone(), handle, path),
                Err(e) if e.errno() == Some(syscall::error::EAGAIN) => {
                    let policy = *retry.get_or_insert_with(|| self.retry_policy(desc.domain));
                    if attempt >= policy.count {
                        return Err(Error::Scheme {
                            op: "open",
                            path,
                            errno: syscall::error::ENOSPC,
                        });
                    }
                    attempt += 1;
                    let delay = Duration::from_millis(policy.delay_ms);
                    std::thread::sleep(crate::retry::wait(delay, attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn retry_policy(&self, domain: Domain) -> Retry {
        let get = |what: &str, default: u64| {
            self.config(&format!("{domain}_retry_{what}"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Retry {
            count: get("count", 3).min(1000) as u32,
            delay_ms: get("delay_ms", 10).min(10_000),
        }
    }

    /// Imports a BO another client exported.
    pub fn import(&self, token: ShareToken) -> Result<Bo> {
        let path = token.to_path();
        let handle = self.open_handle(&path, O_RDWR)?;
        Bo::from_handle(self.clone(), handle, path)
    }

    /// Reads a whole scheme file (`stats`, `config/leak_threshold_bytes`…).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.with_handle(path, O_RDONLY, |handle| self.read_all(handle, path))
    }

    /// Opens `path` with `flags`, runs `f` on the handle and closes it
    /// again; `f`'s error comes first, then the close's.
    fn with_handle<T>(
        &self,
        path: &str,
        flags: usize,
        f: impl FnOnce(usize) -> Result<T>,
    ) -> Result<T> {
        let handle = self.open_handle(path, flags)?;
        let result = f(handle);
        let closed = self.close_handle(handle, path);
        let value = result?;
        closed?;
        Ok(value)
    }

    fn read_all(&self, handle: usize, path: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = self
                .t()
                .read(handle, data.len() as u64, &mut buf)
                .map_err(|e| Error::from_transport("read", path, e))?;
            if n == 0 {
                return Ok(data);
            }
            data.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads a scheme file as text.
    pub fn read_text(&self, path: &str) -> Result<String> {
        let data = self.read_file(path)?;
        String::from_utf8(data).map_err(|_| Error::Protocol {
            op: "read",
            path: path.into(),
            msg: "not UTF-8 text".into(),
        })
    }

    /// Writes `data` to a scheme file (`control`, `config/<name>`).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let n = self.with_handle(path, O_WRONLY, |handle| {
            self.t()
                .write(handle, 0, data)
                .map_err(|e| Error::from_transport("write", path, e))
        })?;
        if n != data.len() {
            return Err(Error::Protocol {
                op: "write",
                path: path.into(),
                msg: format!("short write: {n} of {} bytes", data.len()),
            });
        }
        Ok(())
    }

    /// Lists a scheme directory (`""` for the root, `config`, `bo`).
    pub fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        self.with_handle(path, O_RDONLY | O_DIRECTORY, |handle| {
            self.read_dir(handle, path)
        })
    }

    fn read_dir(&self, handle: usize, path: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut offset = 0u64;
        for _ in 0..10_000 {
            let n = self
                .t()
                .getdents(handle, &mut buf, offset)
                .map_err(|e| Error::from_transport("getdents", path, e))?;
            if n == 0 {
                return Ok(names);
            }
            let mut progressed = false;
            for entry in syscall::dirent::DirentIter::new(&buf[..n]) {
                let (header, name) = entry.map_err(|_| Error::Protocol {
                    op: "getdents",
                    path: path.into(),
                    msg: "malformed directory entry".into(),
                })?;
                // Records are padded for alignment: the name ends at its NUL.
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                names.push(String::from_utf8_lossy(name).into_owned());
                let next = header.next_opaque_id;
                offset = next;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        Err(Error::Protocol {
            op: "getdents",
            path: path.into(),
            msg: "directory listing does not end".into(),
        })
    }

    /// All memory statistics (`stats.json`).
    pub fn stats(&self) -> Result<Stats> {
        self.read_json("stats.json")
    }

    /// The last leak audit (`leaks.json`).
    pub fn leaks(&self) -> Result<LeakReport> {
        self.read_json("leaks.json")
    }

    /// Runs a leak audit now and returns its report.
    pub fn leak_check(&self) -> Result<LeakReport> {
        self.write_file("control", b"leak-check")?;
        self.leaks()
    }

    /// Recovers a memory manager from the error state: `vram`, `gtt` or
    /// `all`.
    pub fn recover(&self, which: &str) -> Result<()> {
        self.write_file("control", format!("recover {which}").as_bytes())
    }

    /// Per-client usage (`clients.json`).
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        self.read_json("clients.json")
    }

    /// The occupancy map of `domain` (`vram` or `gtt`): every BO extent
    /// and free hole in address order (`<domain>.map.json`).
    pub fn occupancy_map(&self, domain: &str) -> Result<OccupancyMap> {
        self.read_json(&format!("{domain}.map.json"))
    }

    /// `ok`, or one line per problem (`health`).
    pub fn health(&self) -> Result<String> {
        self.read_text("health")
    }

    /// The value of a tunable.
    pub fn config(&self, name: &str) -> Result<String> {
        Ok(self
            .read_text(&format!("config/{name}"))?
            .trim_end()
            .to_string())
    }

    /// Sets a tunable; the server rejects bad or out-of-range values with
    /// `EINVAL`.
    pub fn set_config(&self, name: &str, value: &str) -> Result<()> {
        self.write_file(&format!("config/{name}"), value.as_bytes())
    }

    /// Names of all tunables.
    pub fn config_names(&self) -> Result<Vec<String>> {
        self.list_dir("config")
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let data = self.read_file(path)?;
        serde_json::from_slice(&data).map_err(|e| Error::Protocol {
            op: "read",
            path: path.into(),
            msg: format!("bad JSON: {e}"),
        })
    }
}

/// One buffer object. The handle *is* the BO: dropping it (or
/// [`Bo::close`]) releases this client's reference; the server frees the
/// memory when the last reference goes.
pub struct Bo {
    dev: Device,
    handle: usize,
    path: String,
    info: BoInfoWire,
    mapping: Option<Mapping>,
    open: bool,
}

impl Bo {
    fn from_handle(dev: Device, handle: usize, path: String) -> Result<Bo> {
        let mut bo = Bo {
            dev,
            handle,
            path,
            info: BoInfoWire::default(),
            mapping: None,
            open: true,
        };
        bo.info = bo.info()?;
        bo.path = format!("bo/{}", bo.info.id);
        Ok(bo)
    }

    /// The BO id (stable for the server's lifetime).
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Memory domain.
    pub fn domain(&self) -> Domain {
        Domain::from_raw(self.info.domain).unwrap_or(Domain::Vram)
    }

    /// Placement flags.
    pub fn flags(&self) -> BoFlags {
        BoFlags::from_bits_truncate(self.info.flags)
    }

    /// The handle number (a file descriptor on Redox).
    pub fn handle(&self) -> usize {
        self.handle
    }

    fn call(&self, op: BoCall, payload: &mut [u8], arg: u64) -> Result<usize> {
        self.dev
            .t()
            .call(self.handle, payload, &[op as u64, arg, 0])
            .map_err(|e| Error::from_transport("call", &self.path, e))
    }

    fn bad_reply(&self, what: &str) -> Error {
        Error::Protocol {
            op: "call",
            path: self.path.clone(),
            msg: format!("malformed {what} reply"),
        }
    }

    /// Fresh information from the server (reference count, export state).
    pub fn info(&self) -> Result<BoInfoWire> {
        let mut buf = [0u8; BoInfoWire::SIZE];
        self.call(BoCall::Info, &mut buf, 0)?;
        BoInfoWire::decode(&buf).ok_or_else(|| self.bad_reply("info"))
    }

    /// Where the BO lives in its domain's backing memory.
    pub fn segments(&self) -> Result<Vec<SegmentWire>> {
        let total = self.info()?.segment_count as usize;
        let mut segs = Vec::with_capacity(total);
        while segs.len() < total {
            let want = (total - segs.len()).min(1024);
            let mut buf = vec![0u8; want * SegmentWire::SIZE];
            let n = self.call(BoCall::Segments, &mut buf, segs.len() as u64)?;
            if n == 0 || n > want {
                return Err(self.bad_reply("segments"));
            }
            for chunk in buf.chunks_exact(SegmentWire::SIZE).take(n) {
                segs.push(SegmentWire::decode(chunk).ok_or_else(|| self.bad_reply("segments"))?);
            }
        }
        Ok(segs)
    }

    /// Maps the BO into this process and returns its memory. The memory is
    /// shared with the device and with every other client holding the BO,
    /// so it is accessed through [`SharedBytes`]' atomic loads and stores,
    /// never as a plain slice. Mapping again returns the existing mapping.
    pub fn map(&mut self) -> Result<SharedBytes<'_>> {
        let mapping = match self.mapping.take() {
            Some(m) => m,
            None => {
                let segments = self.segments()?;
                let layout = BoLayout {
                    domain: self.domain(),
                    size: self.info.size,
                    segments: &segments,
                };
                self.dev
                    .t()
                    .map(self.handle, &layout)
                    .map_err(|e| Error::from_transport("map", &self.path, e))?
            }
        };
        Ok(self.mapping.insert(mapping).bytes())
    }

    /// Removes the mapping (also done on drop).
    pub fn unmap(&mut self) {
        self.mapping = None;
    }

    /// Reads BO bytes at `offset` through the server (no mapping needed).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.dev
            .t()
            .read(self.handle, offset, buf)
            .map_err(|e| Error::from_transport("read", &self.path, e))
    }

    /// Writes BO bytes at `offset` through the server.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize> {
        self.dev
            .t()
            .write(self.handle, offset, data)
            .map_err(|e| Error::from_transport("write", &self.path, e))
    }

    /// Exports the BO: the returned token lets another client import it.
    pub fn export(&self) -> Result<ShareToken> {
        let mut buf = [0u8; ExportWire::SIZE];
        self.call(BoCall::Export, &mut buf, 0)?;
        let w = ExportWire::decode(&buf).ok_or_else(|| self.bad_reply("export"))?;
        Ok(ShareToken {
            id: w.id,
            token: w.token,
        })
    }

    /// The canonical path the server reports (`pddgpu:/bo/<id>`).
    pub fn path(&self) -> Result<String> {
        let mut buf = [0u8; 256];
        let n = self
            .dev
            .t()
            .fpath(self.handle, &mut buf)
            .map_err(|e| Error::from_transport("fpath", &self.path, e))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The size the server reports through `fstat`.
    pub fn stat_size(&self) -> Result<u64> {
        let st = self
            .dev
            .t()
            .fstat(self.handle)
            .map_err(|e| Error::from_transport("fstat", &self.path, e))?;
        Ok(st.st_size)
    }

    /// Unmaps and releases the BO, reporting any error (drop ignores them).
    pub fn close(mut self) -> Result<()> {
        self.mapping = None;
        self.open = false;
        self.dev.close_handle(self.handle, &self.path)
    }
}

impl Drop for Bo {
    fn drop(&mut self) {
        self.mapping = None;
        if self.open {
            if let Err(e) = self.dev.close_handle(self.handle, &self.path) {
                log::warn!("closing {}: {e}", self.path);
            }
        }
    }
}

impl std::fmt::Debug for Bo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bo")
            .field("id", &self.info.id)
            .field("size", &self.info.size)
            .field("domain", &self.domain())
            .field("mapped", &self.mapping.is_some())
            .finish()
    }
}
