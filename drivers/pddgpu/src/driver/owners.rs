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

/// One shard: its owners, plus the emptied set of the last owner removed,
/// kept for the next new owner. A client that creates and frees one BO at a
/// time ends and starts its entry on every pair; recycling the set saves an
/// allocation, a rehash and a free each time. Derefs to the owner map.
#[derive(Debug, Default)]
pub(crate) struct OwnerShard {
    map: IdMap<OwnerEntry>,
    spare: Option<IdSet>,
}

impl OwnerShard {
    /// `owner`'s entry, created (with a recycled set if there is one) if
    /// missing.
    pub fn entry_or_new(&mut self, owner: OwnerId) -> &mut OwnerEntry {
        let spare = &mut self.spare;
        self.map.entry(owner).or_insert_with(|| OwnerEntry {
            held: spare.take().unwrap_or_default(),
            charged: [0, 0],
        })
    }

    /// Removes `owner`'s entry if it is empty, keeping its set for reuse.
    pub fn remove_if_empty(&mut self, owner: OwnerId) {
        if self.map.get(&owner).is_some_and(OwnerEntry::is_empty) {
            if let Some(e) = self.map.remove(&owner) {
                // Only small sets are worth keeping.
                if e.held.capacity() <= 16 {
                    self.spare = Some(e.held);
                }
            }
        }
    }
}

impl core::ops::Deref for OwnerShard {
    type Target = IdMap<OwnerEntry>;
    fn deref(&self) -> &IdMap<OwnerEntry> {
        &self.map
    }
}

impl core::ops::DerefMut for OwnerShard {
    fn deref_mut(&mut self) -> &mut IdMap<OwnerEntry> {
        &mut self.map
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedShard(spin::Mutex<OwnerShard>);

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
    pub fn lock(&self, owner: OwnerId) -> spin::MutexGuard<'_, OwnerShard> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptied_entries_go_and_their_set_is_reused() {
        let mut shard = OwnerShard::default();
        shard.entry_or_new(7).held.insert(1);
        shard.remove_if_empty(7);
        assert!(shard.contains_key(&7), "an owner holding a BO stays");
        shard.get_mut(&7).unwrap().held.remove(&1);
        shard.entry_or_new(7).charge(Domain::Vram, 10);
        shard.remove_if_empty(7);
        assert!(shard.contains_key(&7), "an owner with charged bytes stays");
        shard.get_mut(&7).unwrap().uncharge(Domain::Vram, 10);
        let cap = shard[&7].held.capacity();
        assert!(cap > 0);
        shard.remove_if_empty(7);
        assert!(!shard.contains_key(&7), "an empty owner is removed");
        let fresh = shard.entry_or_new(8);
        assert!(fresh.is_empty(), "a recycled set starts empty");
        assert_eq!(fresh.held.capacity(), cap, "the set was reused");
        assert_eq!(
            shard.entry_or_new(9).held.capacity(),
            0,
            "one spare only: the next owner starts with a fresh set"
        );
    }
}
