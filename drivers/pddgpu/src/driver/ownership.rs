//! The ownership model: who holds which BO, who pays for it, and who may
//! import it. This is the one place these rules live; front ends (the
//! `pddgpu:` scheme, tests, other microkernel servers) only translate their
//! clients and handles onto it.
//!
//! # Owners
//! An owner ([`OwnerId`]) is an opaque caller identity chosen by the front
//! end: a connection on the host transport, the kernel's caller identity on
//! Redox. The core never interprets it (a pid, if the front end has one, is
//! display metadata kept by the front end). An owner exists while it holds
//! a reference or is charged bytes; [`Driver::owner_exit`] ends it.
//!
//! # References
//! Every hold of a BO is one reference of one owner: creating a BO gives
//! its creator one, [`Driver::bo_ref`] adds one for an owner that already
//! holds it (a second handle), [`Driver::bo_import`] adds one for any owner
//! that presents the export token, [`Driver::bo_unref`] drops one. A front
//! end maps each open handle on a BO to exactly one reference. A BO lives
//! while any owner holds a reference and is freed with the last one.
//!
//! # Exports
//! [`Driver::bo_export`] gives a holder a token; anyone who presents it
//! imports the BO. The export belongs to the owner that made it (exporting
//! again, by anyone, returns the same token) and lasts while that owner
//! holds the BO: when the exporter's last reference goes — it closed its
//! handles, or it exited — the token is revoked. Importers keep their
//! references. An export never keeps a BO alive, so no BO outlives all its
//! holders and nothing is left that no one is accountable for. Any holder
//! may withdraw the export early ([`Driver::bo_unexport`]).
//!
//! # Charging
//! Every holder of a BO is charged the bytes the allocator really took for
//! it (its allocated size: whole pages, see [`crate::bo::PAGE_SIZE`], and
//! for VRAM the buddy's rounding), not the size it asked for: a thousand
//! 1-byte BOs cost a thousand pages of quota, as they cost a thousand pages
//! of memory. An importer is charged like the creator, from the import on
//! and for as long as it holds the BO, and an import that would take it
//! over its quota is refused; a BO held by two owners counts against both.
//! So no owner holds memory its quota does not pay for, whatever it
//! creates, imports or lets go of (with one holder charged, a creator could
//! pass BOs to an importer and create more, without bound). Quotas are per
//! owner (the tunable `client_quota_bytes`, 0 = off); a charge ends when
//! its owner lets go of the BO.
//!
//! # Accounts
//! An owner may belong to an account ([`AccountId`], the user a front end
//! vouches for: the uid of a connection's peer on the host, the caller's
//! uid on Redox), set once by [`Driver::owner_join`]. An account is charged
//! exactly what its owners are charged, at the same moments (it is the sum
//! of their charges, per domain), so one user cannot multiply its quota by
//! opening more connections: a create or import that would take the
//! account over its share of the domain (the tunable `uid_quota_percent`,
//! 75 % by default, 100 = no limit) is refused like one over the owner's
//! quota, and nothing is allocated or imported. A BO held by two owners of
//! one account counts twice, as it counts for both owners. The account's
//! charges end with its owners' ([`Driver::owner_exit`]); an account with
//! no owner left is forgotten. An owner that joined no account (a front
//! end's exempt users, in-process use) has its own quota only.
//!
//! # Locking
//! Owners are sharded by id, BOs by id (see [`crate::bo`]); an operation
//! that changes both locks the owner's shard first, then the BO's shard.
//! An account's charges are atomics changed under the owner's shard lock
//! (owners of one account live in different shards, so a charge is a
//! compare-and-swap against the limit); the table of accounts is locked
//! alone, never under another lock.
//! The invariant kept under those locks: owner `o` is among a BO's holders
//! exactly when the BO's id is in `o`'s held set.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::hash::BuildHasher;
use core::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use super::token::ExportToken;
use super::DriverError;
use crate::bo::{BoEntry, BoId, IdMap, IdSet, OwnerId, Shard};
use crate::device::Domain;

#[cfg(doc)]
use super::Driver;

/// The entry of BO `id` for acting on it as `owner`: only a holder may
/// (`NoSuchBo` if there is no such BO, `PermissionDenied` if `owner` does
/// not hold it).
pub(crate) fn held_entry(
    shard: &mut Shard,
    owner: OwnerId,
    id: BoId,
) -> Result<&mut BoEntry, DriverError> {
    let entry = shard.bos.get_mut(&id.0).ok_or(DriverError::NoSuchBo)?;
    if !entry.own.is_held_by(owner) {
        return Err(DriverError::PermissionDenied);
    }
    Ok(entry)
}

/// A live export: its token and the owner whose holding keeps it valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Export {
    pub token: ExportToken,
    pub exporter: OwnerId,
}

/// What happened when an owner's last reference to a BO went (its charge
/// for the BO always ends with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LetGo {
    /// The owner was the exporter; the export has been revoked.
    pub revoked_export: bool,
}

/// The ownership state of one BO: holders with their reference counts and
/// the export. Every holder is charged for the BO (see the module docs).
#[derive(Debug)]
pub(crate) struct BoOwnership {
    /// The creator (shown as the owner in reports while it holds the BO).
    creator: OwnerId,
    /// References per holding owner; the creator alone most of the time,
    /// kept inline so a BO costs no allocation for it.
    holders: SmallVec<[(OwnerId, u32); 1]>,
    export: Option<Export>,
}

impl BoOwnership {
    /// A new BO: one reference of `creator`, not exported.
    pub fn new(creator: OwnerId) -> Self {
        BoOwnership {
            creator,
            holders: smallvec::smallvec![(creator, 1)],
            export: None,
        }
    }

    /// The creator.
    pub fn creator(&self) -> OwnerId {
        self.creator
    }

    /// Total references (all holders).
    pub fn refcount(&self) -> u32 {
        self.holders.iter().fold(0u32, |n, h| n.saturating_add(h.1))
    }

    /// Number of distinct holders.
    pub fn holder_count(&self) -> u32 {
        self.holders.len() as u32
    }

    /// Whether no owner holds the BO (it must then be freed).
    pub fn is_unheld(&self) -> bool {
        self.holders.is_empty()
    }

    /// Whether `owner` holds a reference.
    pub fn is_held_by(&self, owner: OwnerId) -> bool {
        self.holders.iter().any(|h| h.0 == owner)
    }

    /// The owner shown as holding it: the creator while it holds it, else
    /// the first other holder, else 0.
    pub fn primary_holder(&self) -> OwnerId {
        if self.is_held_by(self.creator) {
            self.creator
        } else {
            self.holders.first().map_or(0, |h| h.0)
        }
    }

    /// The export token, while exported.
    pub fn token(&self) -> Option<ExportToken> {
        self.export.map(|e| e.token)
    }

    /// Adds one reference for `owner`.
    pub fn add_reference(&mut self, owner: OwnerId) {
        match self.holders.iter_mut().find(|h| h.0 == owner) {
            Some(h) => h.1 = h.1.saturating_add(1),
            None => self.holders.push((owner, 1)),
        }
        debug_assert!(self.holders.iter().all(|h| h.1 > 0));
    }

    /// Drops one (or, with `all`, every) reference of `owner`. `None` while
    /// `owner` still holds some; otherwise what letting go entailed (see
    /// the module docs: the exporter's export is revoked). An owner holding
    /// nothing lets go of nothing.
    pub fn drop_reference(&mut self, owner: OwnerId, all: bool) -> Option<LetGo> {
        let i = self.holders.iter().position(|h| h.0 == owner)?;
        if !all && self.holders[i].1 > 1 {
            self.holders[i].1 -= 1;
            return None;
        }
        self.holders.swap_remove(i);
        let revoked_export = self.export.is_some_and(|e| e.exporter == owner);
        if revoked_export {
            self.export = None;
        }
        debug_assert!(!self.is_held_by(owner));
        debug_assert!(self.export.is_none_or(|e| self.is_held_by(e.exporter)));
        Some(LetGo { revoked_export })
    }

    /// Exports on behalf of `owner` (a holder): the existing token, or
    /// `fresh` recorded as `owner`'s export.
    pub fn export(&mut self, owner: OwnerId, fresh: ExportToken) -> ExportToken {
        debug_assert!(self.is_held_by(owner));
        if let Some(e) = self.export {
            return e.token;
        }
        let token = fresh;
        self.export = Some(Export {
            token,
            exporter: owner,
        });
        token
    }

    /// Withdraws the export, if any.
    pub fn unexport(&mut self) {
        self.export = None;
    }

    /// Whether `token` opens this BO: it is exported and the token matches
    /// (compared in constant time, see [`ExportToken`]).
    pub fn accepts(&self, token: &ExportToken) -> bool {
        self.export.is_some_and(|e| e.token == *token)
    }
}

/// The account an owner belongs to: the user a front end vouches for
/// (see the module docs).
pub type AccountId = u32;

/// What the owners of one account hold together, per domain (the sum of
/// their charges).
#[derive(Debug)]
pub(crate) struct Account {
    id: AccountId,
    charged: [AtomicU64; 2],
}

impl Account {
    fn new(id: AccountId) -> Self {
        Account {
            id,
            charged: Default::default(),
        }
    }

    /// Bytes charged per domain.
    pub fn charged(&self) -> [u64; 2] {
        [
            self.charged[0].load(Ordering::Acquire),
            self.charged[1].load(Ordering::Acquire),
        ]
    }

    /// Charges `bytes` in `domain` if that keeps the account within
    /// `limit` (`None`: no limit); otherwise charges nothing and returns
    /// what it holds in `domain`.
    fn try_charge(&self, domain: Domain, bytes: u64, limit: Option<u64>) -> Result<(), u64> {
        let c = &self.charged[domain.index()];
        let mut held = c.load(Ordering::Acquire);
        loop {
            let total = held.saturating_add(bytes);
            if limit.is_some_and(|l| total > l) {
                return Err(held);
            }
            match c.compare_exchange_weak(held, total, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => held = now,
            }
        }
    }

    /// Drops a charge of `bytes` in `domain`.
    fn uncharge(&self, domain: Domain, bytes: u64) {
        let before = self.charged[domain.index()].fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(
            before >= bytes,
            "uncharging an account more than was charged"
        );
    }
}

/// The limits a charge must respect in one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChargeLimits {
    /// The owner's quota, both domains together (`client_quota_bytes`).
    pub owner: Option<u64>,
    /// The account's share of the domain (`uid_quota_percent`).
    pub account: Option<u64>,
}

impl ChargeLimits {
    /// Whether any limit applies (a create must then reserve before it
    /// allocates).
    pub fn any(&self) -> bool {
        self.owner.is_some() || self.account.is_some()
    }
}

/// Why a charge was refused; nothing was charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The owner would pass its quota; it holds `held` bytes (both
    /// domains).
    Owner { held: u64 },
    /// The owner's account would pass its share; it holds `held` bytes of
    /// the domain.
    Account { account: AccountId, held: u64 },
}

/// What one owner holds.
#[derive(Debug, Default)]
pub(crate) struct OwnerEntry {
    /// Ids of the BOs it holds a reference to.
    pub held: IdSet,
    /// Bytes charged per domain: the allocated sizes of the BOs it holds
    /// (created or imported), plus quota reservations of creates in
    /// progress.
    pub charged: [u64; 2],
    /// The account it belongs to, charged with it (see the module docs).
    account: Option<Arc<Account>>,
}

impl OwnerEntry {
    /// Bytes charged in both domains.
    pub fn charged_total(&self) -> u64 {
        self.charged[0].saturating_add(self.charged[1])
    }

    /// The account it belongs to.
    pub fn account(&self) -> Option<AccountId> {
        self.account.as_ref().map(|a| a.id)
    }

    /// Charges `bytes` in `domain` if that keeps the owner within
    /// `limits.owner` and its account within `limits.account`; otherwise
    /// charges nothing and says which limit refused.
    pub fn try_charge(
        &mut self,
        domain: Domain,
        bytes: u64,
        limits: ChargeLimits,
    ) -> Result<(), Refusal> {
        let held = self.charged_total();
        if limits.owner.is_some_and(|q| held.saturating_add(bytes) > q) {
            return Err(Refusal::Owner { held });
        }
        if let Some(a) = &self.account {
            a.try_charge(domain, bytes, limits.account)
                .map_err(|held| Refusal::Account {
                    account: a.id,
                    held,
                })?;
        }
        let c = &mut self.charged[domain.index()];
        *c = c.saturating_add(bytes);
        Ok(())
    }

    /// Turns a charge of `reserved` bytes in `domain` into one of
    /// `allocated` bytes; only growth is checked against `limits`. On
    /// refusal the reservation stays charged.
    pub fn settle(
        &mut self,
        domain: Domain,
        reserved: u64,
        allocated: u64,
        limits: ChargeLimits,
    ) -> Result<(), Refusal> {
        if allocated >= reserved {
            self.try_charge(domain, allocated - reserved, limits)
        } else {
            self.uncharge(domain, reserved - allocated);
            Ok(())
        }
    }

    /// Drops a charge of `bytes` in `domain` (and its account's).
    pub fn uncharge(&mut self, domain: Domain, bytes: u64) {
        let c = &mut self.charged[domain.index()];
        debug_assert!(*c >= bytes, "uncharging more than was charged");
        let bytes = bytes.min(*c);
        *c -= bytes;
        if let Some(a) = &self.account {
            a.uncharge(domain, bytes);
        }
    }

    /// Whether the owner holds nothing, is charged nothing and belongs to
    /// no account (an owner that joined one lasts until it exits).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.charged == [0, 0] && self.account.is_none()
    }
}

/// One shard of owners, plus the emptied set of the last owner removed,
/// kept for the next new owner (an owner that creates and frees one BO at
/// a time starts and ends its entry on every pair). Derefs to the map.
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
            account: None,
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

    /// Records that `owner` let go of BO `id` (ending its charge of
    /// `charged` bytes of `domain`), and drops the owner if nothing is
    /// left.
    pub fn let_go(&mut self, owner: OwnerId, id: BoId, domain: Domain, charged: u64) {
        if let Some(e) = self.map.get_mut(&owner) {
            e.held.remove(&id.0);
            if charged > 0 {
                e.uncharge(domain, charged);
            }
        }
        self.remove_if_empty(owner);
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

const SHARDS: usize = 32;

/// All owners.
#[derive(Debug)]
pub(crate) struct Owners {
    /// Each shard on its own cache line, so locking one never contends
    /// with a neighbour's line.
    shards: Box<[CachePadded<spin::Mutex<OwnerShard>>]>,
    /// Picks an owner's shard: owners are often small consecutive numbers,
    /// which a hash spreads over the shards.
    hasher: hashbrown::DefaultHashBuilder,
    /// The accounts with at least one owner.
    accounts: spin::Mutex<hashbrown::HashMap<AccountId, Arc<Account>>>,
}

impl Owners {
    pub fn new() -> Self {
        Owners {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            accounts: spin::Mutex::new(hashbrown::HashMap::new()),
        }
    }

    /// Makes `owner` a member of `account` (see the module docs). An owner
    /// joins once: joining again, or after it was charged, changes nothing
    /// and returns false.
    pub fn join(&self, owner: OwnerId, account: AccountId) -> bool {
        let shared = self
            .accounts
            .lock()
            .entry(account)
            .or_insert_with(|| Arc::new(Account::new(account)))
            .clone();
        let joined = {
            let mut shard = self.lock(owner);
            let entry = shard.entry_or_new(owner);
            if entry.account.is_none() && entry.charged == [0, 0] {
                entry.account = Some(shared);
                true
            } else {
                false
            }
        };
        self.forget_if_unused(account);
        joined
    }

    /// Forgets `account` if no owner belongs to it any more.
    fn forget_if_unused(&self, account: AccountId) {
        let mut accounts = self.accounts.lock();
        if accounts
            .get(&account)
            .is_some_and(|a| Arc::strong_count(a) == 1)
        {
            if let Some(a) = accounts.remove(&account) {
                debug_assert_eq!(a.charged(), [0, 0], "an account outlived its charges");
            }
        }
    }

    /// Bytes charged to `account` per domain (zero for an account with no
    /// owner).
    pub fn account_charged(&self, account: AccountId) -> [u64; 2] {
        self.accounts
            .lock()
            .get(&account)
            .map_or([0, 0], |a| a.charged())
    }

    /// The locked shard of `owner`.
    pub fn lock(&self, owner: OwnerId) -> spin::MutexGuard<'_, OwnerShard> {
        let h = self.hasher.hash_one(owner);
        self.shards[h as usize % SHARDS].lock()
    }

    /// Calls `f` for every owner (one shard locked at a time).
    pub fn for_each(&self, mut f: impl FnMut(OwnerId, &OwnerEntry)) {
        for shard in self.shards.iter() {
            for (owner, entry) in shard.lock().iter() {
                f(*owner, entry);
            }
        }
    }

    /// Ends `owner`: removes it, ends every charge it had (its account's
    /// with them; an account left without owners is forgotten) and
    /// returns the BOs it held, for the caller to let go of.
    pub fn end(&self, owner: OwnerId) -> Option<IdSet> {
        let mut entry = self.lock(owner).remove(&owner)?;
        for d in Domain::ALL {
            let bytes = entry.charged[d.index()];
            entry.uncharge(d, bytes);
        }
        if let Some(account) = entry.account.take() {
            let id = account.id;
            drop(account);
            self.forget_if_unused(id);
        }
        Some(entry.held)
    }

    /// The BOs `owner` holds, in id order.
    pub fn held(&self, owner: OwnerId) -> Vec<BoId> {
        let mut v: Vec<BoId> = self
            .lock(owner)
            .get(&owner)
            .map(|e| e.held.iter().map(|&id| BoId(id)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests;
