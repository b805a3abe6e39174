//! Per-owner bookkeeping: which BOs each owner holds (so `owner_exit` finds
//! them without scanning the table) and how many bytes are charged to it
//! (for quotas and the client list). Sharded by owner; an owner's shard is
//! locked before any BO-table shard (lock order: owner → BO).

use alloc::boxed::Box;

use crate::bo::{IdMap, IdSet, OwnerId};
use crate::device::Domain;

/// What one owner holds.
#[derive(Debug, Default)]
pub(crate) struct OwnerEntry {
    /// Ids of the BOs it holds a reference to.
    pub held: IdSet,
    /// Bytes charged per domain (sizes of BOs it created and still holds,
    /// plus quota reservations of creates in progress).
    pub charged: [u64; 2],
}

impl OwnerEntry {
    pub fn charged_total(&self) -> u64 {
        self.charged[0].saturating_add(self.charged[1])
    }

    pub fn charge(&mut self, domain: Domain, bytes: u64) {
        let c = &mut self.charged[domain.index()];
        *c = c.saturating_add(bytes);
    }

    pub fn uncharge(&mut self, domain: Domain, bytes: u64) {
        let c = &mut self.charged[domain.index()];
        *c = c.saturating_sub(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.charged == [0, 0]
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedShard(spin::Mutex<IdMap<OwnerEntry>>);

const SHARDS: usize = 32;

/// All owners.
#[derive(Debug)]
pub(crate) struct Owners {
    shards: Box<[PaddedShard]>,
}

impl Owners {
    pub fn new() -> Self {
        Owners {
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
        }
    }

    /// The locked shard of `owner`.
    pub fn lock(&self, owner: OwnerId) -> spin::MutexGuard<'_, IdMap<OwnerEntry>> {
        // Owners are often small consecutive numbers (pids, connection
        // ids); mix so neighbours land in different shards.
        let h = owner.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58;
        self.shards[h as usize % SHARDS].0.lock()
    }

    /// Calls `f` for every owner (one shard locked at a time).
    pub fn for_each(&self, mut f: impl FnMut(OwnerId, &OwnerEntry)) {
        for shard in self.shards.iter() {
            for (owner, entry) in shard.0.lock().iter() {
                f(*owner, entry);
            }
        }
    }

    /// Removes `owner` and returns what it held.
    pub fn take(&self, owner: OwnerId) -> Option<OwnerEntry> {
        self.lock(owner).remove(&owner)
    }
}
