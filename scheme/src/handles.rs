//! Handles: what each open handle names, and the translation of opening
//! and closing one into core calls. Every handle on a BO is exactly one
//! core reference of the handle's owner (see
//! `pddgpu::driver::ownership`): opening takes one (create, a second
//! handle, or an import), closing drops it.

use pddgpu::driver::{BoCreate, BoFlags, BoId, DriverError, ExportToken};
use pddgpu_ipc::wire::Domain;
use redox_scheme::CallerCtx;
use syscall::error::{EACCES, EDQUOT, EISDIR, ENOENT, EPERM, ESHUTDOWN};
use syscall::flag::{O_ACCMODE, O_RDONLY, O_RDWR, O_WRONLY};

use crate::callers::OwnerId;
use crate::convert::{core_domain, wire_domain};
use crate::errno::driver_errno;
use crate::path::{DirKind, FileKind, Node};
use crate::scheme::PddgpuScheme;
use crate::snapshots::Snapshot;

/// What a handle names.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A directory.
    Dir(DirKind),
    /// A generated file, with the snapshot being read.
    File { kind: FileKind, snapshot: Snapshot },
    /// The `control` file.
    Control,
    /// A tunable, with the snapshot being read.
    Config { name: String, snapshot: Snapshot },
    /// A BO (one core reference of the handle's owner).
    Bo { id: BoId, size: u64, domain: Domain },
}

impl Kind {
    /// The text a file or tunable handle is being read from.
    pub fn snapshot_mut(&mut self) -> Option<&mut Snapshot> {
        match self {
            Kind::File { snapshot, .. } | Kind::Config { snapshot, .. } => Some(snapshot),
            _ => None,
        }
    }

    /// The snapshot's charge: its user and length (length 0 when none).
    pub fn snapshot_charge(&self) -> (u32, usize) {
        match self {
            Kind::File { snapshot, .. } | Kind::Config { snapshot, .. } => {
                (snapshot.uid, snapshot.len())
            }
            _ => (0, 0),
        }
    }
}

/// One open handle.
#[derive(Debug)]
pub(crate) struct Handle {
    pub owner: OwnerId,
    pub read: bool,
    pub write: bool,
    pub kind: Kind,
}

/// The open handles of all callers, by handle id (ids are never reused).
#[derive(Debug)]
pub(crate) struct Handles {
    /// Hashbrown's default hasher (foldhash), not std's SipHash: two to
    /// three lookups per request (callgrind, the roundtrip bench's
    /// alloc+free over the host transport: 13.9k -> 11.5k instructions per
    /// pair, with the callers' maps and the host server's handle set).
    map: hashbrown::HashMap<usize, Handle>,
    next: usize,
}

impl Handles {
    /// An empty table whose first id is `first`.
    pub fn new(first: usize) -> Self {
        Handles {
            map: hashbrown::HashMap::default(),
            next: first,
        }
    }

    /// Stores `handle` under a fresh id.
    pub fn insert(&mut self, handle: Handle) -> usize {
        let id = self.next;
        self.next += 1;
        self.map.insert(id, handle);
        id
    }

    pub fn get(&self, id: usize) -> Option<&Handle> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut Handle> {
        self.map.get_mut(&id)
    }

    pub fn remove(&mut self, id: usize) -> Option<Handle> {
        self.map.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// A refused open: the errno and the reason for the log.
pub(crate) type Refusal = (i32, String);

fn refuse<T>(errno: i32, why: &str) -> Result<T, Refusal> {
    Err((errno, why.to_string()))
}

fn driver_refusal(e: DriverError) -> Refusal {
    (driver_errno(&e), e.to_string())
}

impl PddgpuScheme {
    /// Refuses a new hold of a BO by `owner` (a create or an import) when
    /// the owners of its user already hold
    /// [`max_bos_per_uid`](crate::SchemeOptions::max_bos_per_uid) BOs.
    ///
    /// The exact count (the core's holdings of every owner of the user) is
    /// taken only when the user's upper bound (see
    /// [`Callers::bo_bound`](crate::callers::Callers::bo_bound)) reaches
    /// the limit, so a user far from it pays nothing per create.
    fn check_bo_limit(&mut self, owner: OwnerId) -> Result<(), Refusal> {
        let Some(uid) = self.callers.uid(owner) else {
            return Ok(());
        };
        let limit = self.options.max_bos_per_uid;
        if self.callers.bo_bound(uid) < limit {
            return Ok(());
        }
        let held: usize = self
            .callers
            .owners_of_uid(uid)
            .map(|o| self.driver().owner_bo_count(o))
            .sum();
        self.callers.set_bo_bound(uid, held);
        if held >= limit {
            return Err((
                EDQUOT,
                format!("user {uid} already holds {held} BOs, the most one user may"),
            ));
        }
        Ok(())
    }

    /// Counts a new hold of a BO by `owner` towards its user's bound.
    fn note_bo_hold(&mut self, owner: OwnerId) {
        if let Some(uid) = self.callers.uid(owner) {
            self.callers.note_bo_hold(uid);
        }
    }

    /// Opens `node` for `owner` with the access mode in `flags`.
    pub(crate) fn open_node(
        &mut self,
        node: Node,
        flags: usize,
        owner: OwnerId,
        ctx: &CallerCtx,
    ) -> Result<Handle, Refusal> {
        let acc = flags & O_ACCMODE;
        let read = acc == O_RDONLY || acc == O_RDWR || acc == 0;
        let write = acc == O_WRONLY || acc == O_RDWR;
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
                    snapshot: Snapshot::default(),
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
                if self.driver().tunables().get(&name).is_none() {
                    return refuse(ENOENT, "no such tunable");
                }
                if write && !self.privileged(ctx) {
                    return refuse(EACCES, "setting tunables needs root or the server's user");
                }
                Kind::Config {
                    name,
                    snapshot: Snapshot::default(),
                }
            }
            Node::BoNew(desc) => {
                if self.shutdown_requested() {
                    return refuse(ESHUTDOWN, "the server is shutting down");
                }
                let req = BoCreate {
                    size: desc.size,
                    domain: core_domain(desc.domain),
                    // Every BO handed to a client starts zeroed, whatever
                    // flags it asked for: memory freed by one client must
                    // never show up in another's BO.
                    flags: desc.flags | BoFlags::CLEARED,
                    // The core gives every BO whole pages of its own
                    // (`pddgpu::driver::PAGE_SIZE`), as page-granular
                    // mapping needs.
                    align: desc.align,
                    label: &desc.label,
                };
                self.check_bo_limit(owner)?;
                if desc.attempt > 0 {
                    self.driver().note_retry(req.domain);
                }
                let now = self.now_ms();
                let id = self
                    .driver()
                    .bo_create(owner, &req, now)
                    .map_err(driver_refusal)?;
                self.note_bo_hold(owner);
                if self.backing_mut().has_bo_memories(desc.domain) {
                    // Pages of a freed BO that a client had mapped: take
                    // them back before anyone can write this BO.
                    if let Ok(info) = self.driver().bo_info(owner, id) {
                        self.backing_mut().reclaim(desc.domain, &info.segments);
                    }
                }
                Kind::Bo {
                    id,
                    size: desc.size,
                    domain: desc.domain,
                }
            }
            Node::Bo { id, token } => {
                let bo = BoId(id);
                // A holder opens another handle; anyone else needs the
                // export token.
                let info = match (self.driver().bo_ref(owner, bo), token) {
                    (Err(DriverError::PermissionDenied), Some(token)) => {
                        self.check_bo_limit(owner)?;
                        let imported =
                            self.driver()
                                .bo_import(owner, bo, ExportToken::from_bytes(token));
                        if imported.is_ok() {
                            self.note_bo_hold(owner);
                        }
                        imported
                    }
                    (Err(DriverError::PermissionDenied), None) => {
                        return refuse(EPERM, "another client's BO (import it with ?token=)")
                    }
                    (Err(DriverError::NoSuchBo), None) => return refuse(ENOENT, "no such BO"),
                    (result, _) => result,
                }
                .map_err(driver_refusal)?;
                Kind::Bo {
                    id: bo,
                    size: info.size,
                    domain: wire_domain(info.domain),
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

    /// Drops the core reference a closed BO handle stood for.
    pub(crate) fn drop_reference(&self, owner: OwnerId, kind: &Kind) {
        if let Kind::Bo { id, .. } = kind {
            if let Err(e) = self.driver().bo_unref(owner, *id) {
                log::warn!("owner {owner}: unref of BO {id}: {e}");
            }
        }
    }
}
