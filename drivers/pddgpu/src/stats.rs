//! Memory statistics: per-domain counters (allocated bytes, visible bytes,
//! BO counts, allocations, frees, failures, retries, peaks) updated with
//! atomics — never under an allocator lock — and read as a consistent
//! snapshot without blocking writers.
//!
//! Consistency uses a pair of sequence counters, `started` and `finished`:
//! a writer bumps `started`, applies its deltas with relaxed atomic adds,
//! then bumps `finished`. Writers never wait for anyone (several may update
//! at once). A reader loads `finished`, the counters, then `started`; when
//! the two sequence numbers are equal no update was in progress or began
//! meanwhile, so every counter reflects exactly the same set of complete
//! updates (e.g. `allocs - frees == bo_count` always holds in a snapshot).
//! Otherwise the reader retries. Batches ([`StatsBatch`]) apply many deltas
//! as one update.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::device::Domain;

/// One domain's counters, as read in a [`StatsSnapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainCounters {
    /// Bytes reserved by live BOs (allocator granularity).
    pub allocated_bytes: u64,
    /// Bytes requested by live BOs.
    pub requested_bytes: u64,
    /// Bytes of live BOs inside the CPU-visible window (VRAM only).
    pub visible_bytes: u64,
    /// Live BOs.
    pub bo_count: u64,
    /// Successful allocations since start.
    pub allocs: u64,
    /// Frees since start.
    pub frees: u64,
    /// Failed allocation attempts since start.
    pub failures: u64,
    /// Retried allocation attempts since start.
    pub retries: u64,
    /// Highest `allocated_bytes` seen.
    pub peak_allocated_bytes: u64,
    /// Highest `bo_count` seen.
    pub peak_bo_count: u64,
}

/// A consistent view of all counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatsSnapshot {
    /// VRAM counters.
    pub vram: DomainCounters,
    /// GTT counters.
    pub gtt: DomainCounters,
    /// Number of updates (single or batch) reflected in this snapshot.
    pub updates: u64,
}

impl StatsSnapshot {
    /// The counters of `domain`.
    pub fn domain(&self, domain: Domain) -> &DomainCounters {
        match domain {
            Domain::Vram => &self.vram,
            Domain::Gtt => &self.gtt,
        }
    }
}

/// A change to one domain's counters. Sizes and counts are signed: a free
/// is a negative delta.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Delta {
    /// Change of `allocated_bytes`.
    pub allocated_bytes: i64,
    /// Change of `requested_bytes`.
    pub requested_bytes: i64,
    /// Change of `visible_bytes`.
    pub visible_bytes: i64,
    /// Change of `bo_count`.
    pub bo_count: i64,
    /// Allocations to add.
    pub allocs: u64,
    /// Frees to add.
    pub frees: u64,
    /// Failures to add.
    pub failures: u64,
    /// Retries to add.
    pub retries: u64,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Delta {
    /// One BO allocated.
    pub fn alloc(allocated: u64, requested: u64, visible: u64) -> Self {
        Delta {
            allocated_bytes: signed(allocated),
            requested_bytes: signed(requested),
            visible_bytes: signed(visible),
            bo_count: 1,
            allocs: 1,
            ..Delta::default()
        }
    }

    /// One BO freed.
    pub fn free(allocated: u64, requested: u64, visible: u64) -> Self {
        Delta {
            allocated_bytes: -signed(allocated),
            requested_bytes: -signed(requested),
            visible_bytes: -signed(visible),
            bo_count: -1,
            frees: 1,
            ..Delta::default()
        }
    }

    /// One failed allocation attempt.
    pub fn failure() -> Self {
        Delta {
            failures: 1,
            ..Delta::default()
        }
    }

    /// One retried allocation attempt.
    pub fn retry() -> Self {
        Delta {
            retries: 1,
            ..Delta::default()
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Delta) {
        self.allocated_bytes = self.allocated_bytes.wrapping_add(other.allocated_bytes);
        self.requested_bytes = self.requested_bytes.wrapping_add(other.requested_bytes);
        self.visible_bytes = self.visible_bytes.wrapping_add(other.visible_bytes);
        self.bo_count = self.bo_count.wrapping_add(other.bo_count);
        self.allocs = self.allocs.wrapping_add(other.allocs);
        self.frees = self.frees.wrapping_add(other.frees);
        self.failures = self.failures.wrapping_add(other.failures);
        self.retries = self.retries.wrapping_add(other.retries);
    }

    /// True when applying it changes nothing.
    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }
}

/// Deltas for both domains, collected locally and applied at once with
/// [`MemoryStats::apply_batch`] (one update, however many BOs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsBatch {
    deltas: [Delta; 2],
}

impl StatsBatch {
    /// An empty batch.
    pub fn new() -> Self {
        StatsBatch::default()
    }

    /// Adds `delta` for `domain`.
    pub fn add(&mut self, domain: Domain, delta: &Delta) {
        self.deltas[domain.index()].merge(delta);
    }

    /// The accumulated delta of `domain`.
    pub fn delta(&self, domain: Domain) -> &Delta {
        &self.deltas[domain.index()]
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.deltas.iter().all(Delta::is_zero)
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Cells {
    allocated: AtomicU64,
    requested: AtomicU64,
    visible: AtomicU64,
    bos: AtomicU64,
    allocs: AtomicU64,
    frees: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    peak_allocated: AtomicU64,
    peak_bos: AtomicU64,
}

impl Cells {
    fn apply(&self, d: &Delta) {
        let add = |cell: &AtomicU64, v: i64| {
            if v != 0 {
                // Two's complement: adding `v as u64` subtracts for v < 0.
                cell.fetch_add(v as u64, Ordering::Relaxed)
                    .wrapping_add(v as u64)
            } else {
                cell.load(Ordering::Relaxed)
            }
        };
        let allocated = add(&self.allocated, d.allocated_bytes);
        add(&self.requested, d.requested_bytes);
        add(&self.visible, d.visible_bytes);
        let bos = add(&self.bos, d.bo_count);
        for (cell, v) in [
            (&self.allocs, d.allocs),
            (&self.frees, d.frees),
            (&self.failures, d.failures),
            (&self.retries, d.retries),
        ] {
            if v != 0 {
                cell.fetch_add(v, Ordering::Relaxed);
            }
        }
        if d.allocated_bytes > 0 {
            self.peak_allocated.fetch_max(allocated, Ordering::Relaxed);
        }
        if d.bo_count > 0 {
            self.peak_bos.fetch_max(bos, Ordering::Relaxed);
        }
    }

    fn read(&self) -> DomainCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DomainCounters {
            allocated_bytes: l(&self.allocated),
            requested_bytes: l(&self.requested),
            visible_bytes: l(&self.visible),
            bo_count: l(&self.bos),
            allocs: l(&self.allocs),
            frees: l(&self.frees),
            failures: l(&self.failures),
            retries: l(&self.retries),
            peak_allocated_bytes: l(&self.peak_allocated),
            peak_bo_count: l(&self.peak_bos),
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Seq {
    started: AtomicU64,
    finished: AtomicU64,
}

/// The driver's memory statistics (see the module docs for the protocol).
#[derive(Debug, Default)]
pub struct MemoryStats {
    seq: Seq,
    domains: [Cells; 2],
}

impl MemoryStats {
    /// All counters zero.
    pub fn new() -> Self {
        MemoryStats::default()
    }

    fn begin(&self) {
        self.seq.started.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end(&self) {
        self.seq.finished.fetch_add(1, Ordering::Release);
    }

    /// Applies one delta to `domain`.
    pub fn apply(&self, domain: Domain, delta: &Delta) {
        self.begin();
        self.domains[domain.index()].apply(delta);
        self.end();
    }

    /// Applies a whole batch as one update.
    pub fn apply_batch(&self, batch: &StatsBatch) {
        if batch.is_empty() {
            return;
        }
        self.begin();
        for domain in Domain::ALL {
            let d = batch.delta(domain);
            if !d.is_zero() {
                self.domains[domain.index()].apply(d);
            }
        }
        self.end();
    }

    /// One read attempt: `Some` when no update overlapped it.
    fn read_once(&self) -> Option<StatsSnapshot> {
        let finished = self.seq.finished.load(Ordering::Acquire);
        let vram = self.domains[0].read();
        let gtt = self.domains[1].read();
        fence(Ordering::Acquire);
        let started = self.seq.started.load(Ordering::Relaxed);
        (started == finished).then_some(StatsSnapshot {
            vram,
            gtt,
            updates: finished,
        })
    }

    /// A consistent snapshot, retrying (never blocking writers) while
    /// updates overlap the read.
    pub fn snapshot(&self) -> StatsSnapshot {
        loop {
            if let Some(s) = self.read_once() {
                return s;
            }
            core::hint::spin_loop();
        }
    }

    /// A consistent snapshot, or `None` if `attempts` reads all overlapped
    /// an update.
    pub fn try_snapshot(&self, attempts: u32) -> Option<StatsSnapshot> {
        (0..attempts.max(1)).find_map(|_| {
            let s = self.read_once();
            if s.is_none() {
                core::hint::spin_loop();
            }
            s
        })
    }

    /// The counters of one domain, read without the consistency check
    /// across domains (cheap; each counter is exact but they may straddle
    /// an update).
    pub fn domain_relaxed(&self, domain: Domain) -> DomainCounters {
        self.domains[domain.index()].read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_apply_and_track_peaks() {
        let s = MemoryStats::new();
        s.apply(Domain::Vram, &Delta::alloc(8192, 5000, 4096));
        s.apply(Domain::Vram, &Delta::alloc(4096, 4096, 0));
        s.apply(Domain::Vram, &Delta::free(8192, 5000, 4096));
        s.apply(Domain::Gtt, &Delta::failure());
        s.apply(Domain::Gtt, &Delta::retry());
        let snap = s.snapshot();
        assert_eq!(snap.updates, 5);
        let v = snap.vram;
        assert_eq!(v.allocated_bytes, 4096);
        assert_eq!(v.requested_bytes, 4096);
        assert_eq!(v.visible_bytes, 0);
        assert_eq!(v.bo_count, 1);
        assert_eq!((v.allocs, v.frees), (2, 1));
        assert_eq!(v.peak_allocated_bytes, 12288);
        assert_eq!(v.peak_bo_count, 2);
        assert_eq!(snap.gtt.failures, 1);
        assert_eq!(snap.gtt.retries, 1);
        assert_eq!(snap.domain(Domain::Gtt).bo_count, 0);
    }

    #[test]
    fn batches_are_one_update() {
        let s = MemoryStats::new();
        let mut batch = StatsBatch::new();
        assert!(batch.is_empty());
        for _ in 0..10 {
            s.apply(Domain::Gtt, &Delta::alloc(4096, 4096, 0));
            batch.add(Domain::Gtt, &Delta::free(4096, 4096, 0));
        }
        s.apply_batch(&batch);
        s.apply_batch(&StatsBatch::new());
        let snap = s.snapshot();
        assert_eq!(snap.updates, 11);
        assert_eq!(snap.gtt.bo_count, 0);
        assert_eq!(snap.gtt.allocated_bytes, 0);
        assert_eq!(snap.gtt.frees, 10);
        assert_eq!(snap.gtt.peak_bo_count, 10);
    }

    #[test]
    fn overlapping_update_forces_a_retry() {
        let s = MemoryStats::new();
        s.seq.started.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.try_snapshot(3), None);
        s.seq.finished.fetch_add(1, Ordering::Relaxed);
        assert!(s.try_snapshot(1).is_some());
    }
}
