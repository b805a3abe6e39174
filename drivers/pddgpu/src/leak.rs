//! Leak detector: a lock-free view of every live BO, and the reports built
//! from it.
//!
//! # Read scheme: a type-stable slab of seqlocked records
//! Every live BO has a [`Record`] in a slab of fixed-size slots. Slots live
//! in chunks that are allocated once and never freed or moved while the
//! tracker exists (like `SLAB_TYPESAFE_BY_RCU` in Linux), so a reader may
//! look at any slot at any time. Each slot has its own sequence counter:
//! the single writer of a slot (the driver, holding the lock of the BO's
//! table shard) makes it odd, stores the fields, and makes it even again.
//! Readers take no lock: they read a slot's counter, its fields, and the
//! counter again, and retry that slot if it changed. So reports and audits
//! never block allocation, and allocation never waits for a report; a slot
//! reused for another BO mid-read is simply read again.
//!
//! A scan is not one atomic snapshot of all BOs (BOs created or freed while
//! it runs may or may not appear); the audit therefore runs inside a window
//! in which the driver proves no allocation or free was in flight, and
//! otherwise reports itself inconclusive.
//!
//! # Reports ([`LeakReport`])
//! 1. Audit: per domain, bytes the allocator counts as used vs. the sum of
//!    the live BOs (plus memory the driver deliberately holds back); any
//!    difference is a real internal leak or corruption.
//! 2. Old BOs held by owners above the size threshold.
//! 3. BOs that nobody holds. The ownership rules free a BO with its last
//!    holder and never let an export keep one alive, so this report is a
//!    consistency check: it is empty unless the bookkeeping is broken.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::bo::{BoId, IdMap, OwnerId, LABEL_MAX};
use crate::device::Domain;

const CHUNK_SLOTS: usize = 1024;
const MAX_CHUNKS: usize = 1024;
/// Most BOs that can be live at once.
pub const MAX_LIVE_BOS: usize = CHUNK_SLOTS * MAX_CHUNKS;
const LABEL_WORDS: usize = LABEL_MAX / 8;

/// One live BO as seen by the leak detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The BO.
    pub id: BoId,
    /// Its primary holder (the creator while it holds it, else another
    /// holder; 0 for none).
    pub owner: OwnerId,
    /// Domain.
    pub domain: Domain,
    /// Requested size.
    pub size: u64,
    /// Bytes reserved in the allocator.
    pub allocated: u64,
    /// Creation time.
    pub created_ms: u64,
    /// Whether it has been exported.
    pub exported: bool,
    /// Owners holding a reference.
    pub holders: u32,
    /// Its label.
    pub label: String,
}

#[derive(Debug)]
struct Slot {
    seq: AtomicU32,
    id: AtomicU64,
    owner: AtomicU64,
    size: AtomicU64,
    allocated: AtomicU64,
    created_ms: AtomicU64,
    /// live:1 | domain:1 | exported:1 | label_len:8 @8 | holders:32 @32
    meta: AtomicU64,
    label: [AtomicU64; LABEL_WORDS],
}

impl Slot {
    fn new() -> Self {
        Slot {
            seq: AtomicU32::new(0),
            id: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            size: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            created_ms: AtomicU64::new(0),
            meta: AtomicU64::new(0),
            label: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Runs `write` as one seqlocked update. The caller is the slot's only
    /// writer.
    fn update(&self, write: impl FnOnce(&Slot)) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        write(self);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy of the slot, `None` if not live.
    fn read(&self, with_label: bool) -> Option<Record> {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let meta = self.meta.load(Ordering::Relaxed);
            let id = self.id.load(Ordering::Relaxed);
            let owner = self.owner.load(Ordering::Relaxed);
            let size = self.size.load(Ordering::Relaxed);
            let allocated = self.allocated.load(Ordering::Relaxed);
            let created_ms = self.created_ms.load(Ordering::Relaxed);
            let mut label = [0u8; LABEL_MAX];
            if with_label {
                for (i, w) in self.label.iter().enumerate() {
                    label[i * 8..i * 8 + 8]
                        .copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            if meta & 1 == 0 {
                return None;
            }
            let len = ((meta >> 8) & 0xff) as usize;
            return Some(Record {
                id: BoId(id),
                owner,
                domain: if meta & 2 == 0 {
                    Domain::Vram
                } else {
                    Domain::Gtt
                },
                size,
                allocated,
                created_ms,
                exported: meta & 4 != 0,
                holders: (meta >> 32) as u32,
                label: String::from_utf8_lossy(&label[..len.min(LABEL_MAX)]).into_owned(),
            });
        }
    }
}

fn meta(domain: Domain, exported: bool, label_len: usize, holders: u32) -> u64 {
    1 | (domain.index() as u64) << 1
        | u64::from(exported) << 2
        | (label_len as u64 & 0xff) << 8
        | u64::from(holders) << 32
}

/// The live-BO registry (see the module docs).
#[derive(Debug)]
pub struct LeakTracker {
    chunks: Box<[spin::Once<Box<[Slot]>>]>,
    /// Slots ever handed out (readers scan `0..high_water`).
    high_water: AtomicUsize,
}

impl Default for LeakTracker {
    fn default() -> Self {
        Self::new()
    }
}

/// Index of a slot in a [`LeakTracker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(u32);

impl LeakTracker {
    /// An empty tracker (chunks are allocated as BOs appear).
    pub fn new() -> Self {
        LeakTracker {
            chunks: (0..MAX_CHUNKS).map(|_| spin::Once::new()).collect(),
            high_water: AtomicUsize::new(0),
        }
    }

    fn slot(&self, id: SlotId) -> &Slot {
        let i = id.0 as usize;
        let chunk = self.chunks[i / CHUNK_SLOTS]
            .call_once(|| (0..CHUNK_SLOTS).map(|_| Slot::new()).collect());
        &chunk[i % CHUNK_SLOTS]
    }

    /// A slot for a new BO: one from `free` (the caller's recycled slots),
    /// else a fresh one; `None` when [`MAX_LIVE_BOS`] slots are in use.
    pub fn take_slot(&self, free: &mut Vec<SlotId>) -> Option<SlotId> {
        if let Some(s) = free.pop() {
            return Some(s);
        }
        let i = self
            .high_water
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LIVE_BOS).then_some(n + 1)
            })
            .ok()?;
        let id = SlotId(i as u32);
        // Make sure the chunk exists before readers may scan the index.
        let _ = self.slot(id);
        Some(id)
    }

    /// Publishes a new live BO in `slot`. The caller must be the slot's
    /// only writer (it holds the BO's table-shard lock).
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        slot: SlotId,
        id: BoId,
        owner: OwnerId,
        domain: Domain,
        size: u64,
        allocated: u64,
        created_ms: u64,
        label: &str,
    ) {
        let bytes = label.as_bytes();
        let len = bytes.len().min(LABEL_MAX);
        let mut padded = [0u8; LABEL_MAX];
        padded[..len].copy_from_slice(&bytes[..len]);
        self.slot(slot).update(|s| {
            s.id.store(id.0, Ordering::Relaxed);
            s.owner.store(owner, Ordering::Relaxed);
            s.size.store(size, Ordering::Relaxed);
            s.allocated.store(allocated, Ordering::Relaxed);
            s.created_ms.store(created_ms, Ordering::Relaxed);
            for (i, w) in s.label.iter().enumerate() {
                let mut word = [0u8; 8];
                word.copy_from_slice(&padded[i * 8..i * 8 + 8]);
                w.store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
            s.meta.store(meta(domain, false, len, 1), Ordering::Relaxed);
        });
    }

    /// Updates who holds the BO in `slot` and whether it is exported.
    pub fn update_holders(&self, slot: SlotId, owner: OwnerId, holders: u32, exported: bool) {
        let s = self.slot(slot);
        let old = s.meta.load(Ordering::Relaxed);
        let domain = if old & 2 == 0 {
            Domain::Vram
        } else {
            Domain::Gtt
        };
        let len = ((old >> 8) & 0xff) as usize;
        s.update(|s| {
            s.owner.store(owner, Ordering::Relaxed);
            s.meta
                .store(meta(domain, exported, len, holders), Ordering::Relaxed);
        });
    }

    /// Marks the BO in `slot` dead; the caller then recycles the slot.
    pub fn retire(&self, slot: SlotId) {
        self.slot(slot)
            .update(|s| s.meta.store(0, Ordering::Relaxed));
    }

    /// Visits a consistent copy of every live record (labels included only
    /// when `with_labels`). Lock-free; see the module docs.
    pub fn scan(&self, with_labels: bool, mut visit: impl FnMut(Record)) {
        let n = self.high_water.load(Ordering::Acquire);
        for i in 0..n {
            if let Some(r) = self.slot(SlotId(i as u32)).read(with_labels) {
                visit(r);
            }
        }
    }

    /// Per domain: live BOs and the sum of their allocated bytes.
    pub fn totals(&self) -> [(u64, u64); 2] {
        let mut t = [(0u64, 0u64); 2];
        self.scan(false, |r| {
            let e = &mut t[r.domain.index()];
            e.0 += 1;
            e.1 += r.allocated;
        });
        t
    }
}

/// Outcome of one domain's audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditVerdict {
    /// The allocator's usage equals the live BOs' (plus held-back memory).
    Clean,
    /// They differ: an internal leak or corruption. The manager was moved
    /// to ERROR.
    Mismatch,
    /// Allocations or frees kept running during every attempt; nothing
    /// can be concluded.
    Inconclusive,
    /// The manager is not READY (already in ERROR, recovering or shut
    /// down); not audited.
    Skipped,
}

impl AuditVerdict {
    /// Lower-case name (`clean`, `mismatch`, `inconclusive`, `skipped`).
    pub fn name(self) -> &'static str {
        match self {
            AuditVerdict::Clean => "clean",
            AuditVerdict::Mismatch => "mismatch",
            AuditVerdict::Inconclusive => "inconclusive",
            AuditVerdict::Skipped => "skipped",
        }
    }
}

/// One domain's audit (report 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Audit {
    /// The domain.
    pub domain: Domain,
    /// Bytes the allocator counts as used.
    pub allocator_used: u64,
    /// Sum of the live BOs' allocated bytes.
    pub live_bytes: u64,
    /// Memory the driver holds back on purpose (retired bad VRAM).
    pub reserved_bytes: u64,
    /// Live BOs in the domain.
    pub live_bos: u64,
    /// The verdict.
    pub verdict: AuditVerdict,
}

impl Audit {
    /// `allocator_used - (live_bytes + reserved_bytes)`: positive = leaked
    /// inside the allocator, negative = BOs on memory the allocator thinks
    /// is free.
    pub fn difference(&self) -> i128 {
        i128::from(self.allocator_used)
            - i128::from(self.live_bytes)
            - i128::from(self.reserved_bytes)
    }
}

/// Why a BO is a leak suspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuspectReason {
    /// Older than the age threshold, held by an owner holding more than the
    /// size threshold (report 2).
    OldAndLarge {
        /// Bytes its owner holds in all.
        owner_bytes: u64,
    },
    /// No owner holds it (report 3; see the module docs).
    Unheld,
}

impl SuspectReason {
    /// Short name (`old-large`, `unheld`).
    pub fn name(&self) -> &'static str {
        match self {
            SuspectReason::OldAndLarge { .. } => "old-large",
            SuspectReason::Unheld => "unheld",
        }
    }
}

/// One suspect BO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    /// The BO.
    pub id: BoId,
    /// Its primary holder (0 = none).
    pub owner: OwnerId,
    /// Domain.
    pub domain: Domain,
    /// Requested size.
    pub size: u64,
    /// Age at the check.
    pub age_ms: u64,
    /// Label.
    pub label: String,
    /// Why it is suspect.
    pub reason: SuspectReason,
}

/// The result of a leak check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// When the check ran (0 and no audits: never).
    pub checked_ms: u64,
    /// Report 1, one per domain (VRAM, GTT).
    pub audits: Vec<Audit>,
    /// Reports 2 and 3.
    pub suspects: Vec<Suspect>,
    /// Live BOs seen by the scan.
    pub live_bos: u64,
    /// Size threshold used for report 2.
    pub threshold_bytes: u64,
    /// Age threshold used for report 2.
    pub age_ms: u64,
}

impl LeakReport {
    /// Whether any audit found a mismatch.
    pub fn has_mismatch(&self) -> bool {
        self.audits
            .iter()
            .any(|a| a.verdict == AuditVerdict::Mismatch)
    }

    /// True when every audit is clean and there are no suspects.
    pub fn is_clean(&self) -> bool {
        !self.audits.is_empty()
            && self.audits.iter().all(|a| a.verdict == AuditVerdict::Clean)
            && self.suspects.is_empty()
    }

    /// The audit of `domain`, if it ran.
    pub fn audit(&self, domain: Domain) -> Option<&Audit> {
        self.audits.iter().find(|a| a.domain == domain)
    }
}

/// Reports 2 and 3 from a scan of `tracker` at `now_ms`.
pub fn find_suspects(
    tracker: &LeakTracker,
    now_ms: u64,
    threshold_bytes: u64,
    age_ms: u64,
) -> (Vec<Suspect>, u64) {
    let mut records = Vec::new();
    let mut per_owner: IdMap<u64> = IdMap::default();
    tracker.scan(true, |r| {
        if r.holders > 0 {
            *per_owner.entry(r.owner).or_default() += r.allocated;
        }
        records.push(r);
    });
    let live = records.len() as u64;
    let mut suspects = Vec::new();
    for r in records {
        let age = now_ms.saturating_sub(r.created_ms);
        let reason = if r.holders == 0 {
            Some(SuspectReason::Unheld)
        } else {
            let owner_bytes = per_owner.get(&r.owner).copied().unwrap_or(0);
            (r.holders > 0 && age >= age_ms && owner_bytes > threshold_bytes)
                .then_some(SuspectReason::OldAndLarge { owner_bytes })
        };
        if let Some(reason) = reason {
            suspects.push(Suspect {
                id: r.id,
                owner: r.owner,
                domain: r.domain,
                size: r.size,
                age_ms: age,
                label: r.label,
                reason,
            });
        }
    }
    suspects.sort_by_key(|s| s.id);
    (suspects, live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_publish_update_and_retire() {
        let t = LeakTracker::new();
        let mut free = Vec::new();
        let a = t.take_slot(&mut free).unwrap();
        let b = t.take_slot(&mut free).unwrap();
        t.publish(
            a,
            BoId(1),
            7,
            Domain::Vram,
            5000,
            8192,
            10,
            "scanout buffer",
        );
        t.publish(b, BoId(2), 8, Domain::Gtt, 4096, 4096, 20, &"x".repeat(100));
        let mut seen = Vec::new();
        t.scan(true, |r| seen.push(r));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].label, "scanout buffer");
        assert_eq!(seen[0].allocated, 8192);
        assert_eq!(seen[1].domain, Domain::Gtt);
        assert_eq!(seen[1].label.len(), LABEL_MAX);
        assert_eq!(t.totals(), [(1, 8192), (1, 4096)]);
        t.update_holders(a, 0, 0, true);
        t.retire(b);
        free.push(b);
        assert_eq!(t.take_slot(&mut free), Some(b));
        let (s, live) = find_suspects(&t, 1000, 100 << 20, 0);
        assert_eq!(live, 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].reason, SuspectReason::Unheld);
        assert_eq!(s[0].age_ms, 990);
    }

    #[test]
    fn old_bos_of_large_owners_are_suspects() {
        let t = LeakTracker::new();
        let mut free = Vec::new();
        for i in 0..4u64 {
            let s = t.take_slot(&mut free).unwrap();
            // owner 1 holds 3 × 4 MiB, owner 2 holds 4 MiB.
            let owner = if i < 3 { 1 } else { 2 };
            t.publish(
                s,
                BoId(i + 1),
                owner,
                Domain::Vram,
                4 << 20,
                4 << 20,
                i * 100,
                "",
            );
        }
        let (s, _) = find_suspects(&t, 1000, 10 << 20, 850);
        // Ages are 1000, 900, 800, 700: only BOs 1 and 2 are old enough.
        let ids: Vec<_> = s.iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(
            s[0].reason,
            SuspectReason::OldAndLarge {
                owner_bytes: 12 << 20
            }
        );
        let (s, _) = find_suspects(&t, 1000, 12 << 20, 0);
        assert!(s.is_empty(), "threshold is strict");
    }
}
