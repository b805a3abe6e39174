//! [`PddgpuScheme`]: the `pddgpu:` namespace over the driver core, as a
//! `redox_scheme::scheme::SchemeSync`. It only translates: paths and
//! handles become core calls (see [`crate::handles`]), core results become
//! errnos, files and wire structs. Ownership, sharing and their rules are
//! the core's.

use std::sync::Arc;
use std::time::Instant;

use pddgpu::driver::{BoId, BoInfo, Domain as CoreDomain, Driver};
use pddgpu_ipc::logline;
use pddgpu_ipc::wire::{BoCall, BoInfoWire, ExportWire, SegmentWire, WIRE_ABI};
use redox_scheme::scheme::SchemeSync;
use redox_scheme::{CallerCtx, OpenResult};
use syscall::data::Stat;
use syscall::dirent::{DirEntry, DirentBuf, DirentKind};
use syscall::error::{
    Error, Result, EACCES, EBADF, EINVAL, EISDIR, ENOBUFS, ENOENT, ENOTDIR, EOPNOTSUPP,
};
use syscall::flag::{MapFlags, MunmapFlags};
use syscall::schemev2::NewFdFlags;
use syscall::{EventFlags, MODE_DIR, MODE_FILE};

use crate::backing::Backing;
use crate::budget::{PerUser, UserLimits};
use crate::callers::{display_pid, Callers, OwnerId};
use crate::control::FaultInjector;
use crate::convert::{copy_at, info_wire};
use crate::errno::driver_errno;
use crate::format;
use crate::handles::{Handle, Handles, Kind};
use crate::path::{self, DirKind, FileKind};
#[cfg(not(target_os = "redox"))]
use crate::snapshots::PendingRender;
use crate::snapshots::{Renders, Snapshot};

/// The handle id of the scheme root (what `/scheme/pddgpu` opens to).
pub const ROOT_ID: usize = 1;

/// Options of a [`PddgpuScheme`].
#[derive(Clone, Debug)]
pub struct SchemeOptions {
    /// Besides root (uid 0), the user allowed to write `control` and
    /// `config/*` (normally the user running the server).
    pub admin_uid: Option<u32>,
    /// BOs the owners of one user may hold at once, all together (a BO
    /// held by two of its owners counts twice); a create or import beyond
    /// it gets `EDQUOT`. It keeps one user from filling the table of live
    /// BOs (`pddgpu::leak::MAX_LIVE_BOS`) with tiny BOs, on every
    /// transport.
    pub max_bos_per_uid: usize,
}

impl SchemeOptions {
    /// The default of [`SchemeOptions::max_bos_per_uid`].
    pub const DEFAULT_MAX_BOS_PER_UID: usize = 4096;
}

impl Default for SchemeOptions {
    fn default() -> Self {
        SchemeOptions {
            admin_uid: None,
            max_bos_per_uid: Self::DEFAULT_MAX_BOS_PER_UID,
        }
    }
}

/// The `pddgpu:` scheme. One instance serves every client; each caller is
/// one core owner, each handle on a BO one core reference. See the README
/// for the namespace.
pub struct PddgpuScheme {
    driver: Arc<Driver>,
    start: Instant,
    handles: Handles,
    pub(crate) callers: Callers,
    backing: Backing,
    pub(crate) options: SchemeOptions,
    pub(crate) faults: Option<Box<dyn FaultInjector>>,
    shutdown_requested: bool,
    /// Free epochs at the last sweep of BO memories.
    swept_epoch: u64,
    /// What one user may make the server hold.
    user_limits: UserLimits,
    /// Bytes of read snapshots held, per user.
    snapshot_bytes: PerUser,
    /// The latest rendering of each generated file, shared by the handles
    /// that take a snapshot at the state it shows (see
    /// [`crate::snapshots`]).
    renders: Renders,
    /// Per handle: a rendering made for its request being served, without
    /// the lock (see [`PddgpuScheme::gather_for_snapshot`]), taken by that
    /// request's snapshot.
    prepared: std::collections::HashMap<usize, Prepared>,
}

/// A rendering made for one handle's request outside the scheme lock.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub kind: FileKind,
    /// The server state it shows.
    pub state: u64,
    pub text: Arc<[u8]>,
    /// How long rendering it took.
    pub cost: std::time::Duration,
}

/// A syscall error with `errno`.
pub(crate) fn err(errno: i32) -> Error {
    Error::new(errno)
}

impl PddgpuScheme {
    /// Serves `driver`, whose VRAM and GTT contents live in `backing`.
    pub fn new(driver: Arc<Driver>, backing: Backing, options: SchemeOptions) -> Self {
        PddgpuScheme {
            driver,
            start: Instant::now(),
            handles: Handles::new(ROOT_ID + 1),
            callers: Callers::new(),
            backing,
            options,
            faults: None,
            shutdown_requested: false,
            swept_epoch: 0,
            user_limits: UserLimits::default(),
            snapshot_bytes: PerUser::default(),
            renders: Renders::default(),
            prepared: Default::default(),
        }
    }

    /// Sets what one user may make the server hold: its read snapshots
    /// here, its mappings in the backing (see [`crate::budget`]).
    pub fn set_user_limits(&mut self, limits: UserLimits) {
        self.user_limits = limits;
        #[cfg(not(target_os = "redox"))]
        {
            let mut mapping = self.backing.mapping_limits();
            mapping.bos_per_uid = limits.mapped_bos_per_uid;
            mapping.segments_per_uid = limits.mapped_segments_per_uid;
            self.backing.set_mapping_limits(mapping);
        }
    }

    /// Sets what mapping may cost the server, all users and per user
    /// (host transport; see [`crate::backing`]).
    #[cfg(not(target_os = "redox"))]
    pub fn set_mapping_limits(&mut self, limits: crate::backing::MappingLimits) {
        self.backing.set_mapping_limits(limits);
    }

    /// What one user may make the server hold.
    pub fn user_limits(&self) -> UserLimits {
        self.user_limits
    }

    /// Bytes of read snapshots user `uid` holds now.
    pub fn snapshot_bytes_of(&self, uid: u32) -> usize {
        self.snapshot_bytes.used(uid)
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

    /// Periodic work: the leak monitor, and giving back the pages of
    /// mapped BOs that were freed.
    pub fn tick(&mut self) {
        self.state_changed();
        let now = self.now_ms();
        self.driver.tick(now);
        self.sweep_bo_memories();
    }

    /// Gives back the pages of mapped BOs freed since the last sweep (the
    /// next create on them would, too; this bounds how long they stay).
    pub(crate) fn sweep_bo_memories(&mut self) {
        if self.backing.bo_memory_count() == 0 {
            return;
        }
        let epoch = self
            .driver
            .free_epoch(CoreDomain::Vram)
            .wrapping_add(self.driver.free_epoch(CoreDomain::Gtt));
        if epoch == self.swept_epoch {
            return;
        }
        self.swept_epoch = epoch;
        let live: std::collections::HashSet<u64> =
            self.driver.bo_list().iter().map(|r| r.id.0).collect();
        self.backing.sweep(|bo| live.contains(&bo));
    }

    /// The backing memory clients map.
    pub(crate) fn backing_mut(&mut self) -> &mut Backing {
        &mut self.backing
    }

    /// The backing memory clients map.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// True once a client wrote `shutdown` to `control`.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested
    }

    /// Refuses new BOs from now on (`ESHUTDOWN`); existing handles keep
    /// working so clients can finish and close.
    pub fn stop_accepting(&mut self) {
        self.state_changed();
        self.shutdown_requested = true;
    }

    /// Puts the device into SHUTDOWN; nothing is served any more.
    pub fn shutdown(&mut self) {
        self.state_changed();
        self.shutdown_requested = true;
        self.driver.shutdown();
    }

    /// Number of open handles (all clients).
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    pub(crate) fn privileged(&self, ctx: &CallerCtx) -> bool {
        ctx.uid == 0 || Some(ctx.uid) == self.options.admin_uid
    }

    fn handle(&self, id: usize) -> Result<&Handle> {
        self.handles.get(id).ok_or(err(EBADF))
    }

    /// Handle `id`, if it was opened for reading (else `EBADF`).
    fn readable(&self, id: usize) -> Result<&Handle> {
        self.handle(id)
            .and_then(|h| if h.read { Ok(h) } else { Err(err(EBADF)) })
    }

    /// Handle `id`, if it was opened for writing (else `EBADF`).
    fn writable(&self, id: usize) -> Result<&Handle> {
        self.handle(id)
            .and_then(|h| if h.write { Ok(h) } else { Err(err(EBADF)) })
    }

    fn handle_mut(&mut self, id: usize) -> Result<&mut Handle> {
        self.handles.get_mut(id).ok_or(err(EBADF))
    }

    /// Logs a refused request: `what` and `reason` may quote client input,
    /// so both are clipped, and the line is written after the scheme lock
    /// is released (see [`pddgpu_ipc::logline`]).
    pub(crate) fn log_refusal(&self, ctx: &CallerCtx, what: &str, errno: i32, reason: &str) {
        let pid = display_pid(ctx.pid);
        let (what, reason) = (logline::clip(what), logline::clip(reason));
        let errno = pddgpu_ipc::wire::errno_name(errno);
        logline::defer(Some(ctx.uid), log::Level::Info, move || {
            format!("pid {pid}: {what}: {errno} ({reason})")
        });
    }

    /// Removes handle `id` from the table without releasing anything (the
    /// host transport's batch release; on Redox the kernel closes handles
    /// one by one).
    #[cfg(not(target_os = "redox"))]
    pub(crate) fn take_handle(&mut self, id: usize) -> Option<Handle> {
        self.remove_handle(id)
    }

    /// Removes handle `id` from the table and gives back its snapshot's
    /// charge.
    fn remove_handle(&mut self, id: usize) -> Option<Handle> {
        self.prepared.remove(&id);
        let handle = self.handles.remove(id)?;
        let (uid, bytes) = handle.kind.snapshot_charge();
        self.snapshot_bytes.release(uid, bytes);
        Some(handle)
    }

    /// A request may have changed what generated files show (see
    /// [`crate::snapshots`]).
    pub(crate) fn state_changed(&mut self) {
        self.renders.state_changed();
    }

    /// The length of handle `id`'s snapshot, taking one first if it has
    /// none (its `fstat` and `fsize`).
    fn snapshot_len(&mut self, id: usize, ctx: &CallerCtx) -> Result<u64> {
        let has = self.handle_mut(id)?.kind.snapshot_mut().ok_or(err(EBADF))?;
        if has.bytes.is_none() {
            self.take_snapshot(id, ctx)?;
        }
        Ok(self.handle(id)?.kind.snapshot_charge().1 as u64)
    }

    /// Gives handle `id` a new snapshot of its file or tunable at the
    /// current state, charged to the caller's user: refused with
    /// `ENOBUFS` (the handle keeps no snapshot) when the user already
    /// holds other snapshots and this one would take it over its budget
    /// (see [`crate::budget`]). The budget is checked against the file's
    /// last known length before anything is rendered, and against the
    /// exact length after.
    fn take_snapshot(&mut self, id: usize, ctx: &CallerCtx) -> Result<()> {
        let prepared = self.prepared.remove(&id);
        let handle = self.handles.get_mut(id).ok_or(err(EBADF))?;
        let source = match &handle.kind {
            Kind::File { kind, .. } => Ok(*kind),
            Kind::Config { name, .. } => Err(name.clone()),
            _ => return Err(err(EBADF)),
        };
        let old = std::mem::take(handle.kind.snapshot_mut().ok_or(err(EBADF))?);
        self.snapshot_bytes.release(old.uid, old.len());
        drop(old);
        let uid = ctx.uid;
        let budget = self.user_limits.snapshot_bytes_per_uid;
        // A user holding no snapshot may always take one: a file's size
        // follows the server's state, not the reader.
        let limit = if self.snapshot_bytes.used(uid) == 0 {
            usize::MAX
        } else {
            budget
        };
        let expected = match source {
            Ok(kind) => self.renders.expected_len(kind),
            Err(_) => 0,
        };
        // Refused before rendering when the last known length does not fit.
        self.charge_snapshot(uid, expected, limit, ctx)?;
        self.snapshot_bytes.release(uid, expected);
        let fresh: Arc<[u8]> = match source {
            Ok(kind) => match prepared {
                Some(p) if p.kind == kind => {
                    self.renders.offer(kind, p.state, p.text.clone(), p.cost);
                    p.text
                }
                _ => {
                    let (driver, callers) = (&self.driver, &self.callers);
                    self.renders.current(kind, Instant::now(), || {
                        rendered(kind, driver, &format::Owners::of(callers))
                    })
                }
            },
            Err(name) => {
                let value = self.driver.tunables().show(&name).ok_or(err(ENOENT))?;
                format!("{value}\n").into_bytes().into()
            }
        };
        self.charge_snapshot(uid, fresh.len(), limit, ctx)?;
        if let Some(snapshot) = self.handle_mut(id)?.kind.snapshot_mut() {
            *snapshot = Snapshot {
                bytes: Some(fresh),
                uid,
            };
        }
        Ok(())
    }

    #[cfg(not(target_os = "redox"))]
    /// For a request on handle `id` that will take a new snapshot (a read
    /// from offset 0 or `from_start`, or any first read, `fstat` or
    /// `fsize`) of a generated file not rendered at the current state yet,
    /// and whose last known length fits its user's budget: the file, the
    /// state it is to show and what it needs of the scheme's own data (the
    /// callers), and the rendering shared with other requests at that
    /// state, so that it can be rendered without the lock (once) and handed
    /// back with [`PddgpuScheme::set_prepared`]. `None` when the request
    /// needs no rendering, or will be refused without one.
    pub(crate) fn gather_for_snapshot(
        &mut self,
        id: usize,
        from_start: bool,
    ) -> Option<(FileKind, u64, format::Owners, PendingRender)> {
        let handle = self.handles.get(id).filter(|h| h.read)?;
        let Kind::File { kind, snapshot } = &handle.kind else {
            return None;
        };
        if !(from_start || snapshot.bytes.is_none())
            || self.renders.serves_now(*kind, Instant::now())
        {
            return None;
        }
        let uid = self.callers.uid(handle.owner)?;
        // The check `take_snapshot` makes before rendering.
        let own = if snapshot.uid == uid {
            snapshot.len()
        } else {
            0
        };
        let used = self.snapshot_bytes.used(uid).saturating_sub(own);
        let expected = self.renders.expected_len(*kind);
        if used > 0 && used + expected > self.user_limits.snapshot_bytes_per_uid {
            return None;
        }
        let all = self.snapshot_bytes.total().saturating_sub(snapshot.len());
        let privileged = uid == 0 || Some(uid) == self.options.admin_uid;
        if !privileged && all + expected > self.user_limits.snapshot_bytes_total {
            return None;
        }
        let (kind, owners) = (*kind, format::Owners::of(&self.callers));
        let pending = self.renders.pending(kind);
        Some((kind, self.renders.state(), owners, pending))
    }

    #[cfg(not(target_os = "redox"))]
    /// Hands handle `id`'s request the rendering made for it (see
    /// [`PddgpuScheme::gather_for_snapshot`]).
    pub(crate) fn set_prepared(&mut self, id: usize, prepared: Prepared) {
        if self.handles.get(id).is_some() {
            self.prepared.insert(id, prepared);
        }
    }

    /// Charges `bytes` of snapshot to `uid` within `limit` and, unless the
    /// caller is privileged, within the all-users budget; or logs the
    /// refusal and fails with `ENOBUFS`.
    fn charge_snapshot(
        &mut self,
        uid: u32,
        bytes: usize,
        limit: usize,
        ctx: &CallerCtx,
    ) -> Result<()> {
        let all = self.snapshot_bytes.total();
        let all_budget = self.user_limits.snapshot_bytes_total;
        if !self.privileged(ctx) && all.saturating_add(bytes) > all_budget {
            let reason = format!(
                "all users hold {all} bytes of read snapshots; {bytes} more would pass the server's {all_budget}"
            );
            self.log_refusal(ctx, "read a generated file", ENOBUFS, &reason);
            return Err(err(ENOBUFS));
        }
        if let Err(held) = self.snapshot_bytes.try_charge(uid, bytes, limit) {
            let budget = self.user_limits.snapshot_bytes_per_uid;
            let reason = format!(
                "user {uid} holds {held} bytes of read snapshots; {bytes} more would pass its {budget}"
            );
            self.log_refusal(ctx, "read a generated file", ENOBUFS, &reason);
            return Err(err(ENOBUFS));
        }
        Ok(())
    }

    /// Closes handle `id`: drops the core reference it stood for and, when
    /// it was its owner's last handle, ends the owner.
    fn close(&mut self, id: usize) {
        self.state_changed();
        let Some(handle) = self.remove_handle(id) else {
            return;
        };
        let uid = self.callers.uid(handle.owner);
        self.drop_reference(handle.owner, &handle.kind);
        if self.callers.release_handle(handle.owner) {
            self.end_owner(handle.owner);
        }
        if let (Kind::Bo { id: bo, .. }, Some(uid)) = (&handle.kind, uid) {
            self.end_mapping_charge_if_let_go(*bo, uid);
        }
    }

    /// A handle of user `uid` on `bo` closed: when no owner of that user
    /// holds the BO any more, the user's charge for its mapping ends (see
    /// [`crate::backing`]), whoever else still holds it.
    pub(crate) fn end_mapping_charge_if_let_go(&mut self, bo: BoId, uid: u32) {
        if !self.backing.charged_to(bo.0, uid) {
            return;
        }
        let held = self
            .callers
            .owners_of_uid(uid)
            .any(|owner| self.driver.bo_info(owner, bo).is_ok());
        if !held {
            self.backing.let_go(bo.0, uid);
        }
    }

    /// The owner of the caller of an open relative to the root, created if
    /// needed. A new owner joins its user's account in the core, which
    /// limits what all the owners of one user hold together
    /// (`uid_quota_percent`); the privileged (root and the admin user, who
    /// may lift that limit anyway) join none.
    fn caller_owner(&mut self, ctx: &CallerCtx) -> OwnerId {
        let owner = self.callers.owner_of(ctx.pid, ctx.uid);
        if self.callers.handles(owner) == 0 && !self.privileged(ctx) {
            self.driver.owner_join(owner, ctx.uid);
        }
        owner
    }

    /// An owner's last handle closed (or an owner that never got one was
    /// dropped): the core releases whatever it still holds.
    pub(crate) fn end_owner(&mut self, owner: OwnerId) {
        let summary = self.driver.owner_exit(owner);
        logline::defer(None, log::Level::Debug, move || {
            format!("owner {owner} ended: {summary:?}")
        });
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
}

/// What `fstat` reports for a node of `mode`, `size` bytes and inode `ino`.
fn file_stat(mode: u16, size: u64, ino: u64, ctx: &CallerCtx) -> Stat {
    Stat {
        st_mode: mode,
        st_size: size,
        st_ino: ino,
        st_nlink: 1,
        st_uid: ctx.uid,
        st_gid: ctx.gid,
        st_blksize: 4096,
        st_blocks: size.div_ceil(512),
        ..Stat::default()
    }
}

/// Renders generated file `kind` (logged at debug level, so tests and
/// admins can count renders).
pub(crate) fn rendered(kind: FileKind, driver: &Driver, owners: &format::Owners) -> Vec<u8> {
    let bytes = format::render(kind, driver, owners);
    let (name, len) = (kind.name(), bytes.len());
    logline::defer_trace(move || format!("rendered {name}: {len} bytes"));
    bytes
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
        // Even a refused open may count in the statistics.
        self.state_changed();
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
        // An open relative to a handle acts for that handle's owner (see
        // `crate::callers`); one relative to the root, for the caller.
        let owner = if dir == ROOT_ID {
            self.caller_owner(ctx)
        } else {
            let owner = self.handle(dir)?.owner;
            self.callers.learn_pid(owner, ctx.pid);
            owner
        };
        match self.open_node(node, flags, owner, ctx) {
            Ok(handle) => {
                self.callers.add_handle(handle.owner);
                let number = self.handles.insert(handle);
                Ok(OpenResult::ThisScheme {
                    number,
                    flags: NewFdFlags::POSITIONED,
                })
            }
            Err((errno, reason)) => {
                if self.callers.drop_if_idle(owner) {
                    self.end_owner(owner);
                }
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
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.readable(id)?;
        let owner = h.owner;
        match &h.kind {
            Kind::Dir(_) => Err(err(EISDIR)),
            Kind::Control => Err(err(EBADF)),
            Kind::File { .. } | Kind::Config { .. } => {
                // A read from the start takes a fresh snapshot (as does the
                // first read); later reads continue the same one, so a
                // reader sees consistent text.
                let has = self.handle_mut(id)?.kind.snapshot_mut().ok_or(err(EBADF))?;
                if offset == 0 || has.bytes.is_none() {
                    self.take_snapshot(id, ctx)?;
                }
                let snapshot = self.handle_mut(id)?.kind.snapshot_mut().ok_or(err(EBADF))?;
                let bytes = snapshot.bytes.as_deref().unwrap_or_default();
                Ok(copy_at(bytes, offset, buf))
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
        self.state_changed();
        let h = self.writable(id)?;
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
                        let (pid, value) = (display_pid(ctx.pid), logline::excerpt(text.trim()));
                        logline::defer(Some(ctx.uid), log::Level::Info, move || {
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

    fn fsize(&mut self, id: usize, ctx: &CallerCtx) -> Result<u64> {
        let h = self.handle(id)?;
        match &h.kind {
            Kind::Bo { size, .. } => Ok(*size),
            // The size of what this handle reads (see `crate::snapshots`).
            Kind::File { .. } => self.snapshot_len(id, ctx),
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
        if matches!(self.handle(id)?.kind, Kind::File { .. }) {
            // The size of what this handle reads (see `crate::snapshots`).
            let size = self.snapshot_len(id, ctx)?;
            *stat = file_stat(MODE_FILE | 0o444, size, 2, ctx);
            return Ok(());
        }
        let h = self.handle(id)?;
        let (mode, size, ino) = match &h.kind {
            Kind::Dir(_) => (MODE_DIR | 0o555, 0, 1),
            Kind::File { .. } => return Err(err(EBADF)),
            Kind::Control => (MODE_FILE | 0o200, 0, 3),
            Kind::Config { .. } => (MODE_FILE | 0o644, 0, 4),
            Kind::Bo { id, size, .. } => (MODE_FILE | 0o600, *size, id.0),
        };
        *stat = file_stat(mode, size, ino, ctx);
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
                .driver
                .owner_bos(h.owner)
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
                let wire = info_wire(&self.bo_info(h)?);
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
                self.state_changed();
                let h = self.handle(id)?;
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
                let wire = ExportWire {
                    abi: WIRE_ABI,
                    reserved: 0,
                    id: bo.0,
                    token: token.to_bytes(),
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
                let map = |s: &mut Self| {
                    s.backing.bo_memory_fd(
                        domain,
                        info.id.0,
                        info.size,
                        &info.segments,
                        writable,
                        ctx.uid,
                    )
                };
                match map(self) {
                    // Memories of BOs freed since the last sweep still
                    // count: give them back, then try once more.
                    Err(
                        crate::backing::BoMemoryError::TooManyMappings
                        | crate::backing::BoMemoryError::UserShareUsed { .. },
                    ) => {
                        self.sweep_bo_memories();
                        map(self)
                    }
                    done => done,
                }
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
        self.backing
            .kernel_map_addr(domain, &info.segments, offset, size)
            .ok_or(err(EINVAL))
    }

    fn munmap(
        &mut self,
        id: usize,
        _offset: u64,
        _size: usize,
        _flags: MunmapFlags,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        self.handle(id)?;
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        self.close(id);
    }
}
