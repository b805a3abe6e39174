//! [`PddgpuScheme`]: the `pddgpu:` namespace over the driver core, as a
//! `redox_scheme::scheme::SchemeSync`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use pddgpu::driver::{
    BoCreate, BoFlags as CoreBoFlags, BoId, BoInfo, Domain as CoreDomain, Driver, DriverError,
};
use pddgpu_ipc::idhash::IdMap;
use pddgpu_ipc::logline;
use pddgpu_ipc::wire::{BoCall, BoFlags, BoInfoWire, Domain, ExportWire, SegmentWire, WIRE_ABI};
use redox_scheme::scheme::SchemeSync;
use redox_scheme::{CallerCtx, OpenResult};
use syscall::data::Stat;
use syscall::dirent::{DirEntry, DirentBuf, DirentKind};
use syscall::error::{
    Error, Result, EACCES, EBADF, EINVAL, EISDIR, ENOENT, ENOTDIR, EOPNOTSUPP, EPERM, ESHUTDOWN,
};
use syscall::flag::{MapFlags, MunmapFlags, O_ACCMODE, O_RDONLY, O_RDWR, O_WRONLY};
use syscall::schemev2::NewFdFlags;
use syscall::{EventFlags, MODE_DIR, MODE_FILE};

use crate::backing::Backing;
use crate::errno::driver_errno;
use crate::format;
use crate::owners::{OwnerId, Owners};
use crate::path::{self, DirKind, FileKind, Node};

/// The handle id of the scheme root (what `/scheme/pddgpu` opens to).
pub const ROOT_ID: usize = 1;

/// Options of a [`PddgpuScheme`].
#[derive(Clone, Debug)]
pub struct SchemeOptions {
    /// Besides root (uid 0), the user allowed to write `control` and
    /// `config/*` (normally the user running the server).
    pub admin_uid: Option<u32>,
}

#[derive(Debug)]
enum Kind {
    Dir(DirKind),
    File {
        kind: FileKind,
        snapshot: Vec<u8>,
    },
    Control,
    Config {
        name: String,
        snapshot: Vec<u8>,
    },
    Bo {
        id: BoId,
        size: u64,
        domain: Domain,
        maps: usize,
    },
}

#[derive(Debug)]
struct Handle {
    owner: OwnerId,
    read: bool,
    write: bool,
    kind: Kind,
}

/// The `pddgpu:` scheme. One instance serves every client; handles map to
/// clients (owners) and their BOs. See the README for the namespace.
pub struct PddgpuScheme {
    driver: Arc<Driver>,
    start: Instant,
    handles: IdMap<usize, Handle>,
    next_id: usize,
    owners: Owners,
    /// Handles each owner has open on each BO; the owner's reference to the
    /// BO is dropped when its last handle on it closes.
    holds: IdMap<(OwnerId, u64), usize>,
    /// Per owner, how many BOs it holds in the driver (distinct BOs in
    /// `holds`, plus those whose handles died with their connection and
    /// await `owner_exit`). An owner that ends holding none needs no
    /// `owner_exit`.
    held_bos: IdMap<OwnerId, usize>,
    /// Which owner exported each exported BO. An export stays valid while
    /// its exporter holds the BO; when the exporter lets go, the token is
    /// revoked (importers keep their references), so no BO outlives all its
    /// holders.
    exports: IdMap<u64, OwnerId>,
    backing: Backing,
    options: SchemeOptions,
    faults: Option<Box<dyn FaultInjector>>,
    shutdown_requested: bool,
    /// The domain of the last create that failed for lack of space (read
    /// by a transport that parks such requests).
    no_space: Option<CoreDomain>,
    /// Non-zero while a transport retries a parked create.
    retry_attempt: u32,
    /// Free epochs at the last sweep of BO memories.
    swept_epoch: u64,
}

/// Fault injection into the device behind the scheme (the simulator
/// supports it), reached through `control` (`fault …`).
pub trait FaultInjector: Send {
    /// Injects the fault named by the words after `fault`; returns what was
    /// done, or a usage message.
    fn inject(&self, args: &[&str]) -> std::result::Result<String, String>;
}

fn err(errno: i32) -> Error {
    Error::new(errno)
}

impl PddgpuScheme {
    /// Serves `driver`, whose VRAM and GTT contents live in `backing`.
    pub fn new(driver: Arc<Driver>, backing: Backing, options: SchemeOptions) -> Self {
        PddgpuScheme {
            driver,
            start: Instant::now(),
            handles: IdMap::default(),
            next_id: ROOT_ID + 1,
            owners: Owners::new(),
            holds: IdMap::default(),
            held_bos: IdMap::default(),
            exports: IdMap::default(),
            backing,
            options,
            faults: None,
            shutdown_requested: false,
            no_space: None,
            retry_attempt: 0,
            swept_epoch: 0,
        }
    }

    /// Enables `fault …` commands on `control`.
    pub fn set_fault_injector(&mut self, faults: Box<dyn FaultInjector>) {
        self.faults = Some(faults);
    }

    /// The driver core being served.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// Milliseconds since the scheme started (the core's clock).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Periodic work: the leak monitor.
    pub fn tick(&mut self) {
        let now = self.now_ms();
        self.driver.tick(now);
        self.sweep_bo_memories();
    }

    /// Gives back the pages of mapped BOs freed since the last sweep (the
    /// next create on them would, too; this bounds how long they stay).
    fn sweep_bo_memories(&mut self) {
        if self.backing.bo_memory_count() == 0 {
            return;
        }
        let epochs = self.driver.free_epochs();
        let epoch = epochs.vram.wrapping_add(epochs.gtt);
        if epoch == self.swept_epoch {
            return;
        }
        self.swept_epoch = epoch;
        let live: std::collections::HashSet<u64> =
            self.driver.bo_list().iter().map(|r| r.id.0).collect();
        self.backing.sweep(|bo| live.contains(&bo));
    }

    /// True once a client wrote `shutdown` to `control`.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested
    }

    /// Refuses new BOs from now on (`ESHUTDOWN`); existing handles keep
    /// working so clients can finish and close.
    pub fn stop_accepting(&mut self) {
        self.shutdown_requested = true;
    }

    /// Puts the device into SHUTDOWN; nothing is served any more.
    pub fn shutdown(&mut self) {
        self.shutdown_requested = true;
        self.driver.shutdown();
    }

    /// Number of open handles (all clients).
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    fn privileged(&self, ctx: &CallerCtx) -> bool {
        ctx.uid == 0 || Some(ctx.uid) == self.options.admin_uid
    }

    fn insert(&mut self, handle: Handle) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.owners.add_handle(handle.owner);
        if let Kind::Bo { id: bo, .. } = handle.kind {
            let n = self.holds.entry((handle.owner, bo.0)).or_default();
            if *n == 0 {
                *self.held_bos.entry(handle.owner).or_default() += 1;
            }
            *n += 1;
        }
        self.handles.insert(id, handle);
        id
    }

    fn handle(&self, id: usize) -> Result<&Handle> {
        self.handles.get(&id).ok_or(err(EBADF))
    }

    fn handle_mut(&mut self, id: usize) -> Result<&mut Handle> {
        self.handles.get_mut(&id).ok_or(err(EBADF))
    }

    /// Logs a refused request: `what` and `reason` may quote client input,
    /// so both are clipped, and the line is written after the scheme lock
    /// is released (see [`pddgpu_ipc::logline`]).
    fn log_refusal(&self, ctx: &CallerCtx, what: &str, errno: i32, reason: &str) {
        let (pid, what, reason) = (ctx.pid, logline::clip(what), logline::clip(reason));
        let errno = pddgpu_ipc::wire::errno_name(errno);
        logline::defer(log::Level::Info, move || {
            format!("pid {pid}: {what}: {errno} ({reason})")
        });
    }

    fn open_node(
        &mut self,
        node: Node,
        flags: usize,
        owner: OwnerId,
        ctx: &CallerCtx,
    ) -> std::result::Result<Handle, (i32, String)> {
        let acc = flags & O_ACCMODE;
        let read = acc == O_RDONLY || acc == O_RDWR || acc == 0;
        let write = acc == O_WRONLY || acc == O_RDWR;
        let refuse = |errno: i32, why: &str| Err((errno, why.to_string()));
        let driver_refusal = |e: DriverError| (driver_errno(&e), e.to_string());
        let kind = match node {
            Node::Dir(dir) => {
                if write {
                    return refuse(EISDIR, "directories cannot be written");
                }
                Kind::Dir(dir)
            }
            Node::File(kind) => {
                if write {
                    return refuse(EACCES, "this file is read-only");
                }
                Kind::File {
                    kind,
                    snapshot: Vec::new(),
                }
            }
            Node::Control => {
                if read && !write {
                    return refuse(EACCES, "control is write-only");
                }
                if !self.privileged(ctx) {
                    return refuse(EACCES, "control needs root or the server's user");
                }
                Kind::Control
            }
            Node::Config(name) => {
                if self.driver.tunables().get(&name).is_none() {
                    return refuse(ENOENT, "no such tunable");
                }
                if write && !self.privileged(ctx) {
                    return refuse(EACCES, "setting tunables needs root or the server's user");
                }
                Kind::Config {
                    name,
                    snapshot: Vec::new(),
                }
            }
            Node::BoNew(desc) => {
                if self.shutdown_requested {
                    return refuse(ESHUTDOWN, "the server is shutting down");
                }
                let req = BoCreate {
                    size: desc.size,
                    domain: core_domain(desc.domain),
                    // Every BO handed to a client starts zeroed, whatever
                    // flags it asked for: memory freed by one client must
                    // never show up in another's BO.
                    flags: core_flags(desc.flags) | CoreBoFlags::CLEARED,
                    // Every BO starts on a page of its own: no two BOs share a
                    // page, since mapping is page-granular.
                    align: desc.align.max(crate::backing::PAGE),
                    label: &desc.label,
                };
                let now = self.now_ms();
                let created = if desc.attempt > 0 || self.retry_attempt > 0 {
                    self.driver.bo_create_retry(owner, &req, now)
                } else {
                    self.driver.bo_create(owner, &req, now)
                };
                if let Err(DriverError::NoSpace { domain, .. }) = &created {
                    self.no_space = Some(*domain);
                }
                let id = created.map_err(driver_refusal)?;
                if self.backing.has_bo_memories(desc.domain) {
                    // Pages of a freed BO that a client had mapped: take
                    // them back before anyone can write this BO.
                    if let Ok(info) = self.driver.bo_info(owner, id) {
                        self.backing.reclaim(desc.domain, &info.segments);
                    }
                }
                Kind::Bo {
                    id,
                    size: desc.size,
                    domain: desc.domain,
                    maps: 0,
                }
            }
            Node::Bo { id, token } => {
                let bo = BoId(id);
                let info = if self.holds.contains_key(&(owner, id)) {
                    // Another handle on a BO this client already holds.
                    self.driver.bo_info(owner, bo)
                } else if let Some(token) = token {
                    self.driver.bo_import(owner, bo, token)
                } else {
                    // Not ours and no token: someone else's BO (or none).
                    return match self.driver.bo_info(owner, bo) {
                        Err(DriverError::NoSuchBo) => refuse(ENOENT, "no such BO"),
                        Err(DriverError::PermissionDenied) | Ok(_) => {
                            refuse(EPERM, "another client's BO (import it with ?token=)")
                        }
                        Err(e) => Err(driver_refusal(e)),
                    };
                }
                .map_err(driver_refusal)?;
                Kind::Bo {
                    id: bo,
                    size: info.size,
                    domain: wire_domain(info.domain),
                    maps: 0,
                }
            }
        };
        Ok(Handle {
            owner,
            read,
            write,
            kind,
        })
    }

    /// Removes one handle; when it was the owner's last handle on a BO, the
    /// owner's reference to that BO is dropped. Returns the handle's owner.
    fn release(&mut self, id: usize) -> Option<OwnerId> {
        let handle = self.handles.remove(&id)?;
        if let Kind::Bo { id: bo, .. } = handle.kind {
            let key = (handle.owner, bo.0);
            let last = match self.holds.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    self.holds.remove(&key);
                    true
                }
            };
            if last {
                self.unref(handle.owner, bo);
            }
        }
        Some(handle.owner)
    }

    /// Drops `owner`'s reference to `bo` (its last handle on it closed).
    fn unref(&mut self, owner: OwnerId, bo: BoId) {
        self.revoke_export(owner, bo);
        if let Err(e) = self.driver.bo_unref(owner, bo) {
            log::warn!("owner {owner}: unref of BO {}: {e:?}", bo.0);
        }
        if let Some(n) = self.held_bos.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.held_bos.remove(&owner);
            }
        }
    }

    /// Revokes `owner`'s export of `bo`, if it made one.
    fn revoke_export(&mut self, owner: OwnerId, bo: BoId) {
        if self.exports.get(&bo.0) == Some(&owner) {
            self.exports.remove(&bo.0);
            if let Err(e) = self.driver.bo_unexport(owner, bo) {
                log::warn!("owner {owner}: unexport of BO {}: {e:?}", bo.0);
            }
        }
    }

    fn end_owner(&mut self, owner: OwnerId) {
        if self.held_bos.remove(&owner).unwrap_or(0) == 0 {
            // It held no BO: nothing to release in the driver.
            return;
        }
        let exported: Vec<u64> = self
            .exports
            .iter()
            .filter(|(_, o)| **o == owner)
            .map(|(bo, _)| *bo)
            .collect();
        for bo in exported {
            self.revoke_export(owner, BoId(bo));
        }
        self.holds.retain(|(o, _), _| *o != owner);
        let summary = self.driver.owner_exit(owner);
        log::debug!("owner {owner} ended: {summary:?}");
    }

    /// Regenerates a generated file's content.
    fn render(&self, kind: FileKind) -> Vec<u8> {
        format::render(kind, &self.driver, &self.owners)
    }

    fn bo_info(&self, h: &Handle) -> Result<BoInfo> {
        match h.kind {
            Kind::Bo { id, .. } => self
                .driver
                .bo_info(h.owner, id)
                .map_err(|e| err(driver_errno(&e))),
            _ => Err(err(EBADF)),
        }
    }

    fn control(&mut self, command: &str, ctx: &CallerCtx) -> Result<()> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let fail = |reason: String| {
            self.log_refusal(ctx, "write control", EINVAL, &reason);
            Err(err(EINVAL))
        };
        match words.as_slice() {
            ["leak-check"] => {
                let now = self.now_ms();
                let report = self.driver.leak_check(now);
                log::info!("pid {}: leak check: {report:?}", ctx.pid);
                Ok(())
            }
            ["recover", which] => {
                let domains: &[CoreDomain] = match *which {
                    "vram" => &[CoreDomain::Vram],
                    "gtt" => &[CoreDomain::Gtt],
                    "all" => &[CoreDomain::Vram, CoreDomain::Gtt],
                    other => return fail(format!("recover what? `{other}` (vram, gtt, all)")),
                };
                for d in domains {
                    self.driver.recover(*d).map_err(|e| {
                        log::warn!("pid {}: recover {which}: {e:?}", ctx.pid);
                        err(driver_errno(&e))
                    })?;
                }
                log::info!("pid {}: recovered {which}", ctx.pid);
                Ok(())
            }
            ["shutdown"] => {
                // The serving loop sees the request, drains and shuts down.
                log::info!("pid {}: shutdown requested", ctx.pid);
                self.stop_accepting();
                Ok(())
            }
            ["fault", args @ ..] => {
                let Some(faults) = self.faults.as_ref() else {
                    self.log_refusal(
                        ctx,
                        "write control",
                        EOPNOTSUPP,
                        "no fault injection on this device",
                    );
                    return Err(err(EOPNOTSUPP));
                };
                match faults.inject(args) {
                    Ok(done) => {
                        log::warn!("pid {}: fault injected: {done}", ctx.pid);
                        Ok(())
                    }
                    Err(usage) => fail(format!("fault: {usage}")),
                }
            }
            _ => fail(format!(
                "unknown command {} (leak-check, recover vram|gtt|all, shutdown, fault …)",
                logline::excerpt(command)
            )),
        }
    }
}

fn core_domain(d: Domain) -> CoreDomain {
    match d {
        Domain::Vram => CoreDomain::Vram,
        Domain::Gtt => CoreDomain::Gtt,
    }
}

fn wire_domain(d: CoreDomain) -> Domain {
    match d {
        CoreDomain::Vram => Domain::Vram,
        CoreDomain::Gtt => Domain::Gtt,
    }
}

fn core_flags(f: BoFlags) -> CoreBoFlags {
    let mut out = CoreBoFlags::empty();
    for (w, c) in [
        (BoFlags::CONTIGUOUS, CoreBoFlags::CONTIGUOUS),
        (BoFlags::VISIBLE, CoreBoFlags::VISIBLE),
        (BoFlags::TOPDOWN, CoreBoFlags::TOPDOWN),
        (BoFlags::CLEARED, CoreBoFlags::CLEARED),
    ] {
        if f.contains(w) {
            out |= c;
        }
    }
    out
}

fn wire_flags(f: CoreBoFlags) -> BoFlags {
    let mut out = BoFlags::empty();
    for (w, c) in [
        (BoFlags::CONTIGUOUS, CoreBoFlags::CONTIGUOUS),
        (BoFlags::VISIBLE, CoreBoFlags::VISIBLE),
        (BoFlags::TOPDOWN, CoreBoFlags::TOPDOWN),
        (BoFlags::CLEARED, CoreBoFlags::CLEARED),
    ] {
        if f.contains(c) {
            out |= w;
        }
    }
    out
}

fn copy_at(src: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(src.len());
    let n = buf.len().min(src.len() - start);
    buf[..n].copy_from_slice(&src[start..start + n]);
    n
}

impl SchemeSync for PddgpuScheme {
    fn scheme_root(&mut self) -> Result<usize> {
        Ok(ROOT_ID)
    }

    fn openat(
        &mut self,
        dir: usize,
        path: &str,
        flags: usize,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<OpenResult> {
        // Paths are relative to the root, or to a directory handle.
        let full;
        let path = if dir == ROOT_ID {
            path
        } else {
            match &self.handle(dir)?.kind {
                Kind::Dir(d) if d.path().is_empty() => path,
                Kind::Dir(d) => {
                    full = format!("{}/{}", d.path(), path.trim_start_matches('/'));
                    &full
                }
                _ => return Err(err(ENOTDIR)),
            }
        };
        let node = path::parse(path).inspect_err(|e| {
            self.log_refusal(
                ctx,
                &format!("open {}", logline::excerpt(path)),
                e.errno,
                &e.reason,
            );
        });
        let node = node.map_err(|e| err(e.errno))?;
        let owner = self.owners.owner_of(ctx.pid);
        match self.open_node(node, flags, owner, ctx) {
            Ok(handle) => {
                let number = self.insert(handle);
                Ok(OpenResult::ThisScheme {
                    number,
                    flags: NewFdFlags::POSITIONED,
                })
            }
            Err((errno, reason)) => {
                self.owners.drop_if_idle(owner);
                self.log_refusal(
                    ctx,
                    &format!("open {}", logline::excerpt(path)),
                    errno,
                    &reason,
                );
                Err(err(errno))
            }
        }
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        if !h.read {
            return Err(err(EBADF));
        }
        let owner = h.owner;
        match &h.kind {
            Kind::Dir(_) => Err(err(EISDIR)),
            Kind::Control => Err(err(EBADF)),
            Kind::File { kind, .. } => {
                let kind = *kind;
                // A read from the start takes a fresh snapshot; later reads
                // continue the same one, so a reader sees consistent text.
                if offset == 0 {
                    let fresh = self.render(kind);
                    if let Kind::File { snapshot, .. } = &mut self.handle_mut(id)?.kind {
                        *snapshot = fresh;
                    }
                }
                match &self.handle(id)?.kind {
                    Kind::File { snapshot, .. } => Ok(copy_at(snapshot, offset, buf)),
                    _ => Err(err(EBADF)),
                }
            }
            Kind::Config { name, .. } => {
                if offset == 0 {
                    let value = self.driver.tunables().show(name).ok_or(err(ENOENT))?;
                    let fresh = format!("{value}\n").into_bytes();
                    if let Kind::Config { snapshot, .. } = &mut self.handle_mut(id)?.kind {
                        *snapshot = fresh;
                    }
                }
                match &self.handle(id)?.kind {
                    Kind::Config { snapshot, .. } => Ok(copy_at(snapshot, offset, buf)),
                    _ => Err(err(EBADF)),
                }
            }
            Kind::Bo { id: bo, size, .. } => {
                if offset >= *size {
                    return Ok(0);
                }
                let n = buf.len().min((*size - offset) as usize);
                self.driver
                    .bo_read(owner, *bo, offset, &mut buf[..n])
                    .map_err(|e| err(driver_errno(&e)))
            }
        }
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        if !h.write {
            return Err(err(EBADF));
        }
        let owner = h.owner;
        match &h.kind {
            Kind::Dir(_) => Err(err(EISDIR)),
            Kind::File { .. } => Err(err(EBADF)),
            Kind::Control => {
                let Ok(text) = std::str::from_utf8(buf) else {
                    self.log_refusal(ctx, "write control", EINVAL, "not UTF-8");
                    return Err(err(EINVAL));
                };
                self.control(text.trim(), ctx)?;
                Ok(buf.len())
            }
            Kind::Config { name, .. } => {
                let name = name.clone();
                let Ok(text) = std::str::from_utf8(buf) else {
                    self.log_refusal(ctx, &format!("write config/{name}"), EINVAL, "not UTF-8");
                    return Err(err(EINVAL));
                };
                match self.driver.tunables().set(&name, text.trim()) {
                    Ok(_) => {
                        let (pid, value) = (ctx.pid, logline::excerpt(text.trim()));
                        logline::defer(log::Level::Info, move || {
                            format!("pid {pid}: config/{name} = {value}")
                        });
                        Ok(buf.len())
                    }
                    Err(e) => {
                        self.log_refusal(
                            ctx,
                            &format!("write config/{name}"),
                            EINVAL,
                            &format!("{e}"),
                        );
                        Err(err(EINVAL))
                    }
                }
            }
            Kind::Bo { id: bo, size, .. } => {
                if buf.is_empty() {
                    return Ok(0);
                }
                if offset >= *size {
                    return Err(err(syscall::error::EFBIG));
                }
                let n = buf.len().min((*size - offset) as usize);
                self.driver
                    .bo_write(owner, *bo, offset, &buf[..n])
                    .map_err(|e| err(driver_errno(&e)))
            }
        }
    }

    fn fsize(&mut self, id: usize, _ctx: &CallerCtx) -> Result<u64> {
        let h = self.handle(id)?;
        match &h.kind {
            Kind::Bo { size, .. } => Ok(*size),
            Kind::File { kind, .. } => Ok(self.render(*kind).len() as u64),
            _ => Ok(0),
        }
    }

    fn fcntl(&mut self, id: usize, _cmd: usize, _arg: usize, _ctx: &CallerCtx) -> Result<usize> {
        self.handle(id)?;
        Ok(0)
    }

    fn fevent(&mut self, id: usize, _flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
        self.handle(id)?;
        Ok(EventFlags::empty())
    }

    fn fpath(&mut self, id: usize, buf: &mut [u8], _ctx: &CallerCtx) -> Result<usize> {
        let h = self.handle(id)?;
        let path = match &h.kind {
            Kind::Dir(d) => format!("pddgpu:/{}", d.path()),
            Kind::File { kind, .. } => format!("pddgpu:/{}", kind.name()),
            Kind::Control => "pddgpu:/control".to_string(),
            Kind::Config { name, .. } => format!("pddgpu:/config/{name}"),
            Kind::Bo { id, .. } => format!("pddgpu:/bo/{}", id.0),
        };
        Ok(copy_at(path.as_bytes(), 0, buf))
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, ctx: &CallerCtx) -> Result<()> {
        let h = self.handle(id)?;
        let (mode, size, ino) = match &h.kind {
            Kind::Dir(_) => (MODE_DIR | 0o555, 0, 1),
            Kind::File { kind, .. } => (MODE_FILE | 0o444, self.render(*kind).len() as u64, 2),
            Kind::Control => (MODE_FILE | 0o200, 0, 3),
            Kind::Config { .. } => (MODE_FILE | 0o644, 0, 4),
            Kind::Bo { id, size, .. } => (MODE_FILE | 0o600, *size, id.0),
        };
        *stat = Stat {
            st_mode: mode,
            st_size: size,
            st_ino: ino,
            st_nlink: 1,
            st_uid: ctx.uid,
            st_gid: ctx.gid,
            st_blksize: 4096,
            st_blocks: size.div_ceil(512),
            ..Stat::default()
        };
        Ok(())
    }

    fn fsync(&mut self, id: usize, _ctx: &CallerCtx) -> Result<()> {
        self.handle(id).map(|_| ())
    }

    fn getdents<'buf>(
        &mut self,
        id: usize,
        mut buf: DirentBuf<&'buf mut [u8]>,
        opaque_offset: u64,
    ) -> Result<DirentBuf<&'buf mut [u8]>> {
        let h = self.handle(id)?;
        let Kind::Dir(dir) = h.kind else {
            return Err(err(ENOTDIR));
        };
        let entries: Vec<(String, DirentKind)> = match dir {
            DirKind::Root => FileKind::ALL
                .iter()
                .map(|(n, _)| (n.to_string(), DirentKind::Regular))
                .chain([
                    ("control".to_string(), DirentKind::Regular),
                    ("config".to_string(), DirentKind::Directory),
                    ("bo".to_string(), DirentKind::Directory),
                ])
                .collect(),
            DirKind::Config => self
                .driver
                .tunables()
                .names()
                .map(|n| (n.to_string(), DirentKind::Regular))
                .collect(),
            DirKind::Bo => self
                .holds
                .keys()
                .filter(|(o, _)| *o == h.owner)
                .map(|(_, bo)| *bo)
                .collect::<BTreeSet<u64>>()
                .into_iter()
                .map(|bo| (bo.to_string(), DirentKind::Regular))
                .collect(),
        };
        let start = usize::try_from(opaque_offset).unwrap_or(usize::MAX);
        for (written, (i, (name, kind))) in entries.iter().enumerate().skip(start).enumerate() {
            let entry = DirEntry {
                inode: i as u64 + 1,
                next_opaque_id: i as u64 + 1,
                name,
                kind: *kind,
            };
            if buf.entry(entry).is_err() {
                if written == 0 {
                    return Err(err(EINVAL));
                }
                break;
            }
        }
        Ok(buf)
    }

    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        metadata: &[u64],
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        if !matches!(h.kind, Kind::Bo { .. }) {
            return Err(err(EOPNOTSUPP));
        }
        let op = metadata.first().copied().and_then(BoCall::from_raw);
        let Some(op) = op else {
            self.log_refusal(ctx, "call", EINVAL, &format!("unknown call {metadata:?}"));
            return Err(err(EINVAL));
        };
        match op {
            BoCall::Info => {
                if payload.len() != BoInfoWire::SIZE {
                    return Err(err(EINVAL));
                }
                let info = self.bo_info(h)?;
                let wire = BoInfoWire {
                    abi: WIRE_ABI,
                    domain: wire_domain(info.domain).to_raw(),
                    id: info.id.0,
                    size: info.size,
                    flags: wire_flags(info.flags).bits(),
                    refcount: info.refcount,
                    owner: info.owner,
                    created_ms: info.created_ms,
                    segment_count: u32::try_from(info.segments.len()).unwrap_or(u32::MAX),
                    exported: info.exported as u32,
                };
                payload.copy_from_slice(&wire.encode());
                Ok(BoInfoWire::SIZE)
            }
            BoCall::Segments => {
                if payload.len() % SegmentWire::SIZE != 0 || payload.is_empty() {
                    return Err(err(EINVAL));
                }
                let info = self.bo_info(h)?;
                let start =
                    usize::try_from(metadata.get(1).copied().unwrap_or(0)).unwrap_or(usize::MAX);
                let mut n = 0;
                for (slot, &(bo_offset, backing_offset, len)) in payload
                    .chunks_exact_mut(SegmentWire::SIZE)
                    .zip(info.segments.iter().skip(start))
                {
                    let seg = SegmentWire {
                        bo_offset,
                        backing_offset,
                        len,
                    };
                    slot.copy_from_slice(&seg.encode());
                    n += 1;
                }
                Ok(n)
            }
            BoCall::Export => {
                if payload.len() != ExportWire::SIZE {
                    return Err(err(EINVAL));
                }
                let Kind::Bo { id: bo, .. } = h.kind else {
                    return Err(err(EBADF));
                };
                let owner = h.owner;
                let token = self
                    .driver
                    .bo_export(owner, bo)
                    .map_err(|e| err(driver_errno(&e)))?;
                self.exports.entry(bo.0).or_insert(owner);
                let wire = ExportWire {
                    abi: WIRE_ABI,
                    reserved: 0,
                    id: bo.0,
                    token,
                };
                payload.copy_from_slice(&wire.encode());
                Ok(ExportWire::SIZE)
            }
        }
    }

    fn dup(&mut self, id: usize, buf: &[u8], ctx: &CallerCtx) -> Result<OpenResult> {
        let h = self.handle(id)?;
        let Kind::Bo { domain, .. } = h.kind else {
            return Err(err(EOPNOTSUPP));
        };
        #[cfg(not(target_os = "redox"))]
        {
            use std::os::fd::IntoRawFd;
            let fd = if buf == pddgpu_ipc::wire::DUP_BACKING {
                let writable = h.write;
                let info = self.bo_info(h)?;
                self.backing
                    .bo_memory_fd(domain, info.id.0, info.size, &info.segments, writable)
            } else if buf == pddgpu_ipc::wire::DUP_DOMAIN_BACKING {
                if !self.privileged(ctx) {
                    self.log_refusal(
                        ctx,
                        "map a whole domain",
                        EACCES,
                        "needs root or the server's user",
                    );
                    return Err(err(EACCES));
                }
                self.backing.whole_domain_fd(domain)
            } else {
                return Err(err(EINVAL));
            };
            match fd {
                Ok(fd) => Ok(OpenResult::OtherScheme {
                    fd: fd.into_raw_fd() as usize,
                }),
                Err(e) => {
                    let errno = e.errno();
                    self.log_refusal(ctx, "map a BO", errno, &e.to_string());
                    Err(err(errno))
                }
            }
        }
        #[cfg(target_os = "redox")]
        {
            let _ = (domain, buf, ctx);
            Err(err(EOPNOTSUPP))
        }
    }

    fn mmap_prep(
        &mut self,
        id: usize,
        offset: u64,
        size: usize,
        flags: MapFlags,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        let Kind::Bo { domain, .. } = h.kind else {
            return Err(err(EOPNOTSUPP));
        };
        // A read-only handle maps read-only.
        if flags.contains(MapFlags::PROT_WRITE) && !h.write {
            return Err(err(EACCES));
        }
        if self.backing.server_addr(domain).is_none() {
            return Err(err(EOPNOTSUPP));
        }
        let info = self.bo_info(h)?;
        // Only the BO's own pages, inside one of its segments.
        let addr = self
            .backing
            .kernel_map_addr(domain, &info.segments, offset, size)
            .ok_or(err(EINVAL))?;
        if let Kind::Bo { maps, .. } = &mut self.handle_mut(id)?.kind {
            *maps += 1;
        }
        Ok(addr)
    }

    fn munmap(
        &mut self,
        id: usize,
        _offset: u64,
        _size: usize,
        _flags: MunmapFlags,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        if let Kind::Bo { maps, .. } = &mut self.handle_mut(id)?.kind {
            *maps = maps.saturating_sub(1);
        }
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        if let Some(owner) = self.release(id) {
            if self.owners.release_handle(owner) {
                self.end_owner(owner);
            }
        }
    }
}

#[cfg(not(target_os = "redox"))]
impl pddgpu_ipc::host::HostScheme for PddgpuScheme {
    /// A create that found no space waits in its connection's thread and is
    /// retried per the domain's tunables (`<domain>_retry_count`,
    /// `<domain>_retry_delay_ms`), early when memory is freed.
    fn park_policy(&mut self) -> Option<pddgpu_ipc::host::ParkPolicy> {
        let domain = self.no_space.take()?;
        let policy = self.driver.tunables().retry_policy(domain);
        Some(pddgpu_ipc::host::ParkPolicy {
            retries: policy.count,
            delay: std::time::Duration::from_millis(policy.delay_ms.into()),
        })
    }

    /// Frees so far, in both domains.
    fn wake_epoch(&self) -> u64 {
        let e = self.driver.free_epochs();
        e.vram.wrapping_add(e.gtt)
    }

    fn set_retry_attempt(&mut self, attempt: u32) {
        self.retry_attempt = attempt;
        if attempt == 0 {
            self.no_space = None;
        }
    }

    /// A client connection ended: its handles are gone. When that ends the
    /// owner, everything it held is freed in one `owner_exit` batch instead
    /// of BO by BO.
    fn on_disconnect(&mut self, pid: u32, handles: &[usize]) {
        let mut ended = Vec::new();
        let mut unrefs = Vec::new();
        for &id in handles {
            let Some(h) = self.handles.remove(&id) else {
                continue;
            };
            if let Kind::Bo { id: bo, .. } = h.kind {
                let key = (h.owner, bo.0);
                match self.holds.get_mut(&key) {
                    Some(n) if *n > 1 => *n -= 1,
                    _ => {
                        self.holds.remove(&key);
                        unrefs.push((h.owner, bo));
                    }
                }
            }
            if self.owners.release_handle(h.owner) {
                ended.push(h.owner);
            }
        }
        for (owner, bo) in unrefs {
            if !ended.contains(&owner) {
                self.unref(owner, bo);
            }
        }
        for owner in ended {
            log::info!("client pid {pid} (owner {owner}) gone; releasing what it held");
            self.end_owner(owner);
        }
    }
}
