//! Memory statistics: per-domain counters (allocated bytes, visible bytes,
//! BO counts, allocations, frees, failures, retries, peaks) updated with
//! atomics — never under an allocator lock — and read as a consistent
//! snapshot without blocking writers.
//!
//! Protocol: a sequence counter per domain (a seqlock). A writer takes the
//! domain's writer lock (a word of its own, which readers never touch),
//! makes the sequence odd, stores the new counter values with plain atomic
//! stores, makes the sequence even and releases the lock — a critical
//! section of a dozen instructions, with no call and no allocation inside.
//! Readers take no lock and never make a writer wait: they load both
//! domains' sequences, the counters, and the sequences again, and retry if
//! a sequence was odd or changed. When the read succeeds, both domains were
//! quiescent over a common interval, so every counter reflects exactly the
//! same set of complete updates at one instant (e.g. `allocs - frees ==
//! bo_count`, `allocated_bytes <= peak_allocated_bytes`). Batches
//! ([`StatsBatch`]) apply many deltas as one update, atomically across both
//! domains.
//!
//! Layout: a domain's sequence and all the counters an allocation or free
//! changes share one cache line; peaks live in a second line written only
//! when exceeded; the writer lock sits in a third. Writers use no
//! read-modify-write instruction on the lines readers poll, so readers in a
//! tight loop cost a writer (almost) nothing — see the `driver` benchmark.

use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

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

/// One domain's sequence number and the counters every allocation and free
/// changes, in one cache line.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Line {
    /// Odd while an update is being written.
    seq: AtomicU64,
    allocated: AtomicU64,
    requested: AtomicU64,
    visible: AtomicU64,
    allocs: AtomicU64,
    frees: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
}

/// Peaks: written only when exceeded.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Peaks {
    allocated: AtomicU64,
    bos: AtomicU64,
}

/// The writers' lock of one domain, in a line readers never touch.
#[derive(Debug, Default)]
#[repr(align(64))]
struct WriterLock(AtomicBool);

impl WriterLock {
    fn lock(&self) {
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

fn bump(cell: &AtomicU64, v: i64) -> u64 {
    // Only the lock holder writes: a plain load and store, no read-modify-
    // write on the line readers poll. Two's complement handles v < 0.
    let n = cell.load(Ordering::Relaxed).wrapping_add(v as u64);
    if v != 0 {
        cell.store(n, Ordering::Relaxed);
    }
    n
}

/// The driver's memory statistics (see the module docs for the protocol).
#[derive(Debug, Default)]
pub struct MemoryStats {
    lines: [Line; 2],
    peaks: [Peaks; 2],
    locks: [WriterLock; 2],
}

impl MemoryStats {
    /// All counters zero.
    pub fn new() -> Self {
        MemoryStats::default()
    }

    /// Takes the domain's writer lock and makes its sequence odd.
    fn begin(&self, domain: Domain) {
        self.locks[domain.index()].lock();
        let seq = &self.lines[domain.index()].seq;
        let even = seq.load(Ordering::Relaxed);
        debug_assert_eq!(even & 1, 0, "an update began inside another");
        seq.store(even.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Makes the sequence even again and releases the lock.
    fn end(&self, domain: Domain) {
        let seq = &self.lines[domain.index()].seq;
        seq.store(
            seq.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Release,
        );
        self.locks[domain.index()].unlock();
    }

    /// The counter changes of one update (between `begin` and `end`).
    fn change(&self, domain: Domain, d: &Delta) {
        let line = &self.lines[domain.index()];
        let peaks = &self.peaks[domain.index()];
        let allocated = bump(&line.allocated, d.allocated_bytes);
        bump(&line.requested, d.requested_bytes);
        bump(&line.visible, d.visible_bytes);
        let allocs = bump(&line.allocs, d.allocs as i64);
        let frees = bump(&line.frees, d.frees as i64);
        bump(&line.failures, d.failures as i64);
        bump(&line.retries, d.retries as i64);
        if allocated > peaks.allocated.load(Ordering::Relaxed) {
            peaks.allocated.store(allocated, Ordering::Relaxed);
        }
        let bos = allocs.wrapping_sub(frees);
        if bos > peaks.bos.load(Ordering::Relaxed) {
            peaks.bos.store(bos, Ordering::Relaxed);
        }
    }

    /// Applies one delta to `domain`.
    pub fn apply(&self, domain: Domain, delta: &Delta) {
        self.begin(domain);
        self.change(domain, delta);
        self.end(domain);
    }

    /// Applies a whole batch as one update, atomically across the domains
    /// it touches (locks taken in domain order).
    pub fn apply_batch(&self, batch: &StatsBatch) {
        let touched = Domain::ALL.map(|d| !batch.delta(d).is_zero());
        for d in Domain::ALL {
            if touched[d.index()] {
                self.begin(d);
            }
        }
        for d in Domain::ALL {
            if touched[d.index()] {
                self.change(d, batch.delta(d));
            }
        }
        for d in Domain::ALL.into_iter().rev() {
            if touched[d.index()] {
                self.end(d);
            }
        }
    }

    fn read_domain(&self, domain: Domain) -> DomainCounters {
        let line = &self.lines[domain.index()];
        let peaks = &self.peaks[domain.index()];
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let allocs = l(&line.allocs);
        let frees = l(&line.frees);
        DomainCounters {
            allocated_bytes: l(&line.allocated),
            requested_bytes: l(&line.requested),
            visible_bytes: l(&line.visible),
            bo_count: allocs.wrapping_sub(frees),
            allocs,
            frees,
            failures: l(&line.failures),
            retries: l(&line.retries),
            peak_allocated_bytes: l(&peaks.allocated),
            peak_bo_count: l(&peaks.bos),
        }
    }

    /// One read attempt: `Some` when no update overlapped it. Both
    /// sequence numbers are even before and unchanged after the counters
    /// are read, so both domains were quiescent from the last first load to
    /// the first second load: the values are those of one instant.
    fn read_once(&self) -> Option<StatsSnapshot> {
        let s1 = [
            self.lines[0].seq.load(Ordering::Acquire),
            self.lines[1].seq.load(Ordering::Acquire),
        ];
        if s1[0] & 1 == 1 || s1[1] & 1 == 1 {
            return None;
        }
        let vram = self.read_domain(Domain::Vram);
        let gtt = self.read_domain(Domain::Gtt);
        fence(Ordering::Acquire);
        let s2 = [
            self.lines[0].seq.load(Ordering::Relaxed),
            self.lines[1].seq.load(Ordering::Relaxed),
        ];
        (s1 == s2).then_some(StatsSnapshot {
            vram,
            gtt,
            updates: (s1[0] / 2).wrapping_add(s1[1] / 2),
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
    /// (cheap; each counter is exact but they may straddle an update).
    pub fn domain_relaxed(&self, domain: Domain) -> DomainCounters {
        self.read_domain(domain)
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
        batch.add(Domain::Vram, &Delta::retry());
        s.apply_batch(&batch);
        s.apply_batch(&StatsBatch::new());
        let snap = s.snapshot();
        // 10 GTT updates + the batch, once per domain it touched.
        assert_eq!(snap.updates, 12);
        assert_eq!(snap.vram.retries, 1);
        assert_eq!(snap.gtt.bo_count, 0);
        assert_eq!(snap.gtt.allocated_bytes, 0);
        assert_eq!(snap.gtt.frees, 10);
        assert_eq!(snap.gtt.peak_bo_count, 10);
    }

    #[test]
    fn overlapping_update_forces_a_retry() {
        let s = MemoryStats::new();
        s.begin(Domain::Gtt);
        assert_eq!(s.try_snapshot(3), None);
        s.end(Domain::Gtt);
        assert!(s.try_snapshot(1).is_some());
    }
}
