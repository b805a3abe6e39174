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

mod calls;

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
