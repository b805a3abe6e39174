//! Callers as owners: the front end's half of the ownership model (the
//! core's half, what an owner holds and may do, is
//! `pddgpu::driver::ownership`).
//!
//! A caller is the identity the transport vouches for in
//! `CallerCtx::pid`: on the host transport one connection (its server never
//! gives two connections the same caller id, see
//! `pddgpu_ipc::host::caller_id`); on Redox the kernel's caller id. Each
//! caller with open handles is one core owner; its open handles keep it
//! alive. An open made relative to a directory handle belongs to that
//! handle's owner, whoever sends it: on Redox a client opens the scheme
//! root once and everything else relative to that descriptor, so the
//! descriptor — not the pid — is what ties its opens together (a process
//! that gets a dead one's pid has its own descriptor, and a child that
//! inherits the descriptor acts for the same owner). When its last handle closes —
//! because it closed them, or because it died and the kernel (or the host
//! transport) closed them — the owner ends and the core frees everything it
//! still held, in one batch.
//!
//! Each owner belongs to its user's account in the core (the uid the
//! transport vouched for when the owner appeared: `SO_PEERCRED` on the
//! host, the kernel's caller uid on Redox), so the clients of one user
//! share one byte quota however many connections or opens they make
//! (`uid_quota_percent`, see `pddgpu::driver::ownership`). Root and the
//! admin user join no account: they may change that limit anyway.
//!
//! Owner ids are never reused while the server runs, so a caller id that
//! comes back later (a recycled pid) never inherits a dead caller's BOs.
//!
//! Caller id 0 is anonymous: on Redox an open by absolute path is made by
//! the namespace manager on the client's behalf and reaches us with the
//! client's uid but pid 0, so any number of unrelated processes share it.
//! Each open by an anonymous caller is therefore an owner of its own: what it
//! creates is reachable through that handle alone, never by another
//! anonymous opener. (Our client library opens relative to a descriptor of
//! the scheme root, which carries the real pid.)

// Hashbrown's default hasher (foldhash), not std's SipHash: the maps are
// looked up several times per request (see `crate::handles::Handles`).
use hashbrown::HashMap;

pub use pddgpu::driver::OwnerId;

/// The pid behind caller id `caller`, for logs and `clients`: on the host
/// transport a caller id is a connection that also carries its process's
/// pid (`pddgpu_ipc::host::caller_id`); on Redox it is the pid.
pub fn display_pid(caller: usize) -> usize {
    #[cfg(not(target_os = "redox"))]
    {
        pddgpu_ipc::host::caller_pid(caller) as usize
    }
    #[cfg(target_os = "redox")]
    {
        caller
    }
}

/// The caller id of an open that names no process (see the module docs).
pub const ANONYMOUS_CALLER: usize = 0;

#[derive(Debug)]
struct Entry {
    pid: usize,
    /// The user the transport vouched for when the owner appeared.
    uid: u32,
    handles: usize,
}

/// The live callers: their owners, pids and handle counts.
#[derive(Debug, Default)]
pub struct Callers {
    by_pid: HashMap<usize, OwnerId>,
    entries: HashMap<OwnerId, Entry>,
    next: OwnerId,
    /// Per user, an upper bound of the BOs its owners hold (see
    /// [`Callers::bo_bound`]).
    bo_bounds: HashMap<u32, usize>,
}

impl Callers {
    /// An empty table; the first owner gets id 1.
    pub fn new() -> Self {
        Callers {
            next: 1,
            ..Default::default()
        }
    }

    /// The owner of caller `pid` (of user `uid`), creating it if needed,
    /// without counting a handle (used before we know whether an open will
    /// succeed). An anonymous caller gets a new owner on every call.
    pub fn owner_of(&mut self, pid: usize, uid: u32) -> OwnerId {
        if pid != ANONYMOUS_CALLER {
            if let Some(&owner) = self.by_pid.get(&pid) {
                return owner;
            }
        }
        let owner = self.next;
        self.next += 1;
        if pid != ANONYMOUS_CALLER {
            self.by_pid.insert(pid, owner);
        }
        self.entries.insert(
            owner,
            Entry {
                pid,
                uid,
                handles: 0,
            },
        );
        owner
    }

    /// Labels an owner made by an anonymous open with the pid of a later
    /// open relative to one of its handles: on Redox a client opens the
    /// scheme root by absolute path (pid 0) and everything else relative
    /// to that descriptor, with its real pid. The pid only labels the owner
    /// (logs, `clients`); it never decides who owns what, and once known it
    /// stays.
    pub fn learn_pid(&mut self, owner: OwnerId, pid: usize) {
        if let Some(e) = self.entries.get_mut(&owner) {
            if e.pid == ANONYMOUS_CALLER {
                e.pid = pid;
            }
        }
    }

    /// Counts a new handle of `owner`.
    pub fn add_handle(&mut self, owner: OwnerId) {
        let e = self.entries.get_mut(&owner);
        debug_assert!(e.is_some(), "a handle for an unknown owner {owner}");
        if let Some(e) = e {
            e.handles += 1;
        }
    }

    /// Forgets an owner that got no handle after [`Callers::owner_of`]
    /// (its open failed). Returns true when it was removed.
    pub fn drop_if_idle(&mut self, owner: OwnerId) -> bool {
        match self.entries.get(&owner) {
            Some(e) if e.handles == 0 => {
                let pid = e.pid;
                self.entries.remove(&owner);
                if self.by_pid.get(&pid) == Some(&owner) {
                    self.by_pid.remove(&pid);
                }
                true
            }
            _ => false,
        }
    }

    /// Uncounts a handle. Returns true when it was the owner's last: the
    /// owner is gone and its resources must be released.
    pub fn release_handle(&mut self, owner: OwnerId) -> bool {
        let Some(e) = self.entries.get_mut(&owner) else {
            return false;
        };
        debug_assert!(
            e.handles > 0,
            "owner {owner} released more handles than it had"
        );
        e.handles = e.handles.saturating_sub(1);
        if e.handles > 0 {
            return false;
        }
        self.drop_if_idle(owner)
    }

    /// The pid of a live owner (for display, see [`display_pid`]).
    pub fn pid(&self, owner: OwnerId) -> Option<usize> {
        self.entries.get(&owner).map(|e| display_pid(e.pid))
    }

    /// The user of a live owner.
    pub fn uid(&self, owner: OwnerId) -> Option<u32> {
        self.entries.get(&owner).map(|e| e.uid)
    }

    /// The live owners of user `uid`.
    pub fn owners_of_uid(&self, uid: u32) -> impl Iterator<Item = OwnerId> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| e.uid == uid)
            .map(|(o, _)| *o)
    }

    /// An upper bound of the BOs the owners of `uid` hold: the exact count
    /// when it was last taken ([`Callers::set_bo_bound`]) plus every hold
    /// since ([`Callers::note_bo_hold`]). Letting go is not counted, so it
    /// only overestimates; a user whose bound is below its limit is surely
    /// below it.
    pub fn bo_bound(&self, uid: u32) -> usize {
        self.bo_bounds.get(&uid).copied().unwrap_or(0)
    }

    /// Records the exact count of BOs `uid`'s owners hold.
    pub fn set_bo_bound(&mut self, uid: u32, held: usize) {
        self.bo_bounds.insert(uid, held);
    }

    /// Counts a new hold of a BO by an owner of `uid`.
    pub fn note_bo_hold(&mut self, uid: u32) {
        *self.bo_bounds.entry(uid).or_default() += 1;
    }

    /// Open handles of a live owner.
    pub fn handles(&self, owner: OwnerId) -> usize {
        self.entries.get(&owner).map_or(0, |e| e.handles)
    }

    /// All live owners with their pids (for display), sorted by owner id.
    pub fn list(&self) -> Vec<(OwnerId, usize)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(o, e)| (*o, display_pid(e.pid)))
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_handle_ends_the_owner_and_ids_are_not_reused() {
        let mut o = Callers::new();
        let a = o.owner_of(100, 0);
        assert_eq!(o.owner_of(100, 0), a);
        o.add_handle(a);
        o.add_handle(a);
        assert!(!o.release_handle(a));
        assert_eq!(o.handles(a), 1);
        assert!(o.release_handle(a), "last handle ends the owner");
        assert_eq!(o.pid(a), None);
        let again = o.owner_of(100, 0);
        assert_ne!(again, a, "a recycled pid gets a new owner");
        assert!(o.drop_if_idle(again));
        assert!(!o.release_handle(again), "unknown owners are ignored");
    }

    #[test]
    fn every_anonymous_open_is_an_owner_of_its_own() {
        let mut o = Callers::new();
        let a = o.owner_of(ANONYMOUS_CALLER, 0);
        let b = o.owner_of(ANONYMOUS_CALLER, 0);
        assert_ne!(a, b, "two anonymous opens never share an owner");
        o.add_handle(a);
        o.add_handle(b);
        assert!(
            o.release_handle(a),
            "the anonymous owner ends with its handle"
        );
        assert_eq!(o.handles(b), 1, "the other anonymous owner is untouched");
        assert_ne!(o.owner_of(7, 0), b);
    }

    #[test]
    fn an_anonymous_owner_is_labelled_by_its_first_named_caller() {
        let mut o = Callers::new();
        let root = o.owner_of(ANONYMOUS_CALLER, 0);
        o.add_handle(root);
        o.learn_pid(root, 13);
        o.learn_pid(root, 14);
        assert_eq!(o.list(), vec![(root, display_pid(13))]);
        assert_ne!(
            o.owner_of(13, 0),
            root,
            "the label does not make the pid an owner key"
        );
    }

    #[test]
    fn the_bo_bound_only_overestimates_until_it_is_set() {
        let mut o = Callers::new();
        assert_eq!(o.bo_bound(5), 0);
        o.note_bo_hold(5);
        o.note_bo_hold(5);
        assert_eq!(o.bo_bound(5), 2);
        assert_eq!(o.bo_bound(6), 0, "per user");
        o.set_bo_bound(5, 1);
        o.note_bo_hold(5);
        assert_eq!(o.bo_bound(5), 2);
    }

    #[test]
    fn owners_are_listed_with_pids() {
        let mut o = Callers::new();
        let a = o.owner_of(7, 0);
        let b = o.owner_of(9, 0);
        o.add_handle(a);
        o.add_handle(b);
        assert_eq!(o.list(), vec![(a, 7), (b, 9)]);
        let c = o.owner_of(11, 1000);
        assert_eq!(o.uid(c), Some(1000));
        let mut zero: Vec<_> = o.owners_of_uid(0).collect();
        zero.sort_unstable();
        assert_eq!(zero, vec![a, b], "owners are grouped by user");
        assert!(!o.drop_if_idle(a), "an owner with handles stays");
    }
}
