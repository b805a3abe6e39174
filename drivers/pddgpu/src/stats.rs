//! Memory statistics: per-domain counters (allocated bytes, visible bytes,
//! BO counts, allocations, frees, failures, retries, peaks), written by the
//! driver's allocation and free paths and read by [`MemoryStats::snapshot`]
//! (`Driver::stats`, hence the scheme's `stats` files, `pddgpu top` and
//! the benchmarks) without readers ever blocking a writer or making it
//! wait. The leak check does not read these counters: it audits the BO
//! table against the managers.
//!
//! # Layout: writers own their lines (the kernel's `percpu_counter` idea)
//! Each domain has four cache lines (each a
//! [`CachePadded`](crossbeam_utils::CachePadded)), and a writer touches the
//! line busy readers poll only once every [`PUBLISH_EVERY`] updates:
//! - the **writer lock** (a `spin` mutex) with the count of updates since
//!   the last publication — readers never touch it;
//! - the **totals**: the exact counters and peaks, written under the lock
//!   with plain stores inside a seqlock (sequence odd while an update is
//!   being written). Readers read them only when writers look idle or
//!   after waiting in vain for a publication (below);
//! - the **published** copy: the totals as of the last publication, also
//!   seqlocked. The lock holder republishes after every [`PUBLISH_EVERY`]-th
//!   update of the domain (a batch counts as one update);
//! - the readers' **hint** (below) — writers never touch it.
//!
//! The published copy alone is what a per-CPU counter's cheap read gives:
//! a consistent state of the domain at most `PUBLISH_EVERY - 1` updates old.
//! No public read returns it as it stands.
//!
//! # The read: exact, never making a writer wait
//! [`MemoryStats::snapshot`] returns, for each domain, the counters of one
//! state that domain passed through while the read ran: every update that
//! completed before the read began is in it, no update that began after it
//! returned is, and no update is half in it. So `cat pddgpu:stats` after a
//! free shows the free, two reads in sequence never go back, and every
//! snapshot keeps the invariants `allocs - frees == bo_count`,
//! `allocated_bytes <= peak_allocated_bytes` and
//! `bo_count <= peak_bo_count`. The two domains are each exact but not
//! read at one common instant (a batch that touches both, such as an
//! owner's exit, can be visible in one domain and not yet in the other).
//!
//! How: a read of a domain either reads the totals directly through their
//! seqlock (exact: every completed update released the seqlock before) or
//! notes the published sequence number and waits, polling only the
//! published line, for the first publication that begins after that (its
//! publisher took the writer lock after every update that had completed,
//! so it includes them all). Which, a hint in a line only readers write
//! decides: while writers are busy (the last read got a publication, or
//! its direct read saw updates since the one before), a read waits — a
//! writer that keeps updating publishes within `PUBLISH_EVERY` updates —
//! and reads the totals directly only after [`WAIT_POLLS`] polls without a
//! publication (a writer that stopped, or is slow); while writers look
//! idle, it reads the totals at once (free: no writer holds the line), and
//! waits instead if an update overlapped that read. Readers take no lock
//! and write nothing a writer reads.
//!
//! # What readers cost a writer
//! Only cache-line transfers, bounded independently of how often readers
//! read: per domain, the published lines once per publication (one per
//! `PUBLISH_EVERY` updates), plus the totals lines at most about once per
//! `WAIT_POLLS` polls of each reading thread — a direct read that finds
//! writers active switches readers to waiting, and a waiting reader reads
//! the totals only after a full round of polls without a publication. A
//! flood of reads — a tight loop in process, or `stats` reads through the
//! scheme (each costing an IPC round trip besides) — therefore cannot slow
//! allocations beyond that bound; see `ratio driver/stats_readers` in
//! `docs/BENCHMARKS.md`. The price is on the reader's side: while writers
//! are busy a read waits up to one publication interval (or `WAIT_POLLS`
//! polls, about 100 µs, if that is shorter); the first read after
//! writers stop waits out the polls once more.

use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::device::Domain;

/// Updates of a domain between two publications of its counters.
pub const PUBLISH_EVERY: u32 = 16;

/// Polls of the published line a reader makes before it reads a domain's
/// totals directly (see the module docs). Long enough (about 100 µs) to
/// span several publication intervals of a busy writer: at 128 polls
/// (about one interval) readers fell back to the totals often and cost the
/// writer 15 % (`driver/stats_readers` 0.82–0.85 on an idle machine), at
/// 2048 0.96–0.98.
pub const WAIT_POLLS: u32 = 2048;

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

/// All counters, as returned by [`MemoryStats::snapshot`]: each domain's
/// counters are those of one state it passed through during the read
/// (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatsSnapshot {
    /// VRAM counters.
    pub vram: DomainCounters,
    /// GTT counters.
    pub gtt: DomainCounters,
    /// Number of updates reflected in this snapshot: one per
    /// [`MemoryStats::apply`], one per domain a batch touches.
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
/// [`MemoryStats::apply_batch`] (one update per domain, however many BOs).
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

/// One state of a domain: its counters and the number of updates that led
/// to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    allocated: u64,
    requested: u64,
    visible: u64,
    allocs: u64,
    frees: u64,
    failures: u64,
    retries: u64,
    peak_allocated: u64,
    peak_bos: u64,
    updates: u64,
}

impl State {
    /// The state after `d` (one update).
    fn after(mut self, d: &Delta) -> State {
        // Two's complement: adding `v as u64` subtracts when v < 0.
        self.allocated = self.allocated.wrapping_add(d.allocated_bytes as u64);
        self.requested = self.requested.wrapping_add(d.requested_bytes as u64);
        self.visible = self.visible.wrapping_add(d.visible_bytes as u64);
        self.allocs = self.allocs.wrapping_add(d.allocs);
        self.frees = self.frees.wrapping_add(d.frees);
        self.failures = self.failures.wrapping_add(d.failures);
        self.retries = self.retries.wrapping_add(d.retries);
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        self.peak_bos = self.peak_bos.max(self.allocs.wrapping_sub(self.frees));
        self.updates = self.updates.wrapping_add(1);
        self
    }

    fn counters(&self) -> DomainCounters {
        DomainCounters {
            allocated_bytes: self.allocated,
            requested_bytes: self.requested,
            visible_bytes: self.visible,
            bo_count: self.allocs.wrapping_sub(self.frees),
            allocs: self.allocs,
            frees: self.frees,
            failures: self.failures,
            retries: self.retries,
            peak_allocated_bytes: self.peak_allocated,
            peak_bo_count: self.peak_bos,
        }
    }
}

/// A [`State`] in atomics behind a sequence number (a seqlock): only the
/// holder of the domain's writer lock writes, readers retry or give up
/// when a write overlapped their read. The sequence and the counters an
/// allocation or free changes fill the first 64 bytes; peaks and the
/// update count follow.
#[derive(Debug, Default)]
#[repr(C)]
struct SeqState {
    /// Odd while a write is in progress; twice the number of writes.
    seq: AtomicU64,
    allocated: AtomicU64,
    requested: AtomicU64,
    visible: AtomicU64,
    allocs: AtomicU64,
    frees: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    peak_allocated: AtomicU64,
    peak_bos: AtomicU64,
    updates: AtomicU64,
}

impl SeqState {
    /// The current values, read by the writer-lock holder (no other
    /// thread writes them, so no check is needed).
    fn load_owned(&self) -> State {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        State {
            allocated: l(&self.allocated),
            requested: l(&self.requested),
            visible: l(&self.visible),
            allocs: l(&self.allocs),
            frees: l(&self.frees),
            failures: l(&self.failures),
            retries: l(&self.retries),
            peak_allocated: l(&self.peak_allocated),
            peak_bos: l(&self.peak_bos),
            updates: l(&self.updates),
        }
    }

    /// Writes `new` over `old` (the values now stored) inside the seqlock;
    /// the caller holds the writer lock. Unchanged cells are not stored.
    fn store(&self, old: &State, new: &State) {
        let seq = self.seq.load(Ordering::Relaxed);
        debug_assert_eq!(seq & 1, 0, "a write began inside another");
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let put = |c: &AtomicU64, old: u64, new: u64| {
            if old != new {
                c.store(new, Ordering::Relaxed);
            }
        };
        put(&self.allocated, old.allocated, new.allocated);
        put(&self.requested, old.requested, new.requested);
        put(&self.visible, old.visible, new.visible);
        put(&self.allocs, old.allocs, new.allocs);
        put(&self.frees, old.frees, new.frees);
        put(&self.failures, old.failures, new.failures);
        put(&self.retries, old.retries, new.retries);
        put(&self.peak_allocated, old.peak_allocated, new.peak_allocated);
        put(&self.peak_bos, old.peak_bos, new.peak_bos);
        put(&self.updates, old.updates, new.updates);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// One read attempt: the sequence number and the values of the state
    /// after that write, or `None` if a write overlapped the read.
    fn read(&self) -> Option<(u64, State)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            return None;
        }
        let state = self.load_owned();
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1 == s2).then_some((s1, state))
    }
}

/// The writer lock's data: updates since the last publication.
#[derive(Debug, Default)]
struct Unpublished(u32);

/// The readers' guess whether a domain's writers are busy, in a line only
/// readers write. It decides only how a read proceeds, never what it
/// returns.
#[derive(Debug, Default)]
struct ReaderHint {
    /// Writers were updating at the last look: wait for a publication
    /// rather than read the totals at once.
    busy: AtomicBool,
    /// The update count the last direct read of the totals saw.
    last_direct: AtomicU64,
}

impl ReaderHint {
    fn set_busy(&self, busy: bool) {
        if self.busy.load(Ordering::Relaxed) != busy {
            self.busy.store(busy, Ordering::Relaxed);
        }
    }

    /// After a direct read that saw `updates`: busy if writers updated
    /// since the previous direct read.
    fn saw_totals(&self, updates: u64) {
        let changed = self.last_direct.load(Ordering::Relaxed) != updates;
        if changed {
            self.last_direct.store(updates, Ordering::Relaxed);
        }
        self.set_busy(changed);
    }
}

/// One domain's statistics (see the module docs for the protocol).
#[derive(Debug, Default)]
struct DomainStats {
    writer: CachePadded<spin::Mutex<Unpublished>>,
    totals: CachePadded<SeqState>,
    published: CachePadded<SeqState>,
    hint: CachePadded<ReaderHint>,
}

impl DomainStats {
    /// One update; the caller holds `writer` (passed in as `unpublished`).
    fn update(&self, unpublished: &mut Unpublished, delta: &Delta) {
        let old = self.totals.load_owned();
        let new = old.after(delta);
        self.totals.store(&old, &new);
        unpublished.0 += 1;
        if unpublished.0 >= PUBLISH_EVERY {
            self.published.store(&self.published.load_owned(), &new);
            unpublished.0 = 0;
        }
    }

    /// Begins an exact read: reads the totals at once if writers looked
    /// idle at the last read, else (or if an update overlapped) notes
    /// which publication to wait for.
    fn start_read(&self) -> Pending {
        if !self.hint.busy.load(Ordering::Relaxed) {
            if let Some((_, state)) = self.totals.read() {
                self.hint.saw_totals(state.updates);
                return Pending::Done(state);
            }
            self.hint.set_busy(true);
        }
        // The first publication to begin after this load ends at the next
        // even sequence number above it (when a publication is in
        // progress now, its publisher took the lock after every update
        // that has completed, so it counts).
        let seq = self.published.seq.load(Ordering::Acquire);
        Pending::Publication((seq | 1).wrapping_add(1))
    }
}

/// Where a reader stands with one domain.
#[derive(Clone, Copy)]
enum Pending {
    /// Waiting for the publication whose sequence ends at this value (or a
    /// later one).
    Publication(u64),
    /// Read.
    Done(State),
}

/// The driver's memory statistics (see the module docs).
#[derive(Debug, Default)]
pub struct MemoryStats {
    domains: [DomainStats; 2],
}

impl MemoryStats {
    /// All counters zero.
    pub fn new() -> Self {
        MemoryStats::default()
    }

    /// Applies one delta to `domain`.
    pub fn apply(&self, domain: Domain, delta: &Delta) {
        let stats = &self.domains[domain.index()];
        let mut unpublished = stats.writer.lock();
        stats.update(&mut unpublished, delta);
    }

    /// Applies a whole batch as one update of each domain it touches
    /// (the writer locks of those domains taken in domain order and held
    /// together).
    pub fn apply_batch(&self, batch: &StatsBatch) {
        let mut guards = Domain::ALL
            .map(|d| (!batch.delta(d).is_zero()).then(|| self.domains[d.index()].writer.lock()));
        for d in Domain::ALL {
            if let Some(unpublished) = guards[d.index()].as_mut() {
                self.domains[d.index()].update(unpublished, batch.delta(d));
            }
        }
        // Released in reverse order.
        let [vram, gtt] = guards;
        drop(gtt);
        drop(vram);
    }

    /// The exact snapshot (see the module docs): waits, polling only the
    /// published lines, and never makes a writer wait.
    pub fn snapshot(&self) -> StatsSnapshot {
        loop {
            if let Some(s) = self.try_snapshot(u32::MAX) {
                return s;
            }
        }
    }

    /// The exact snapshot, or `None` if `rounds` rounds of [`WAIT_POLLS`]
    /// polls each ended without a publication and with a direct read of
    /// the totals overlapped by an update (a writer in the middle of one).
    pub fn try_snapshot(&self, rounds: u32) -> Option<StatsSnapshot> {
        let mut pending = Domain::ALL.map(|d| self.domains[d.index()].start_read());
        for _ in 0..rounds.max(1) {
            for _ in 0..WAIT_POLLS {
                self.poll_publications(&mut pending);
                if let Some(snapshot) = finished(&pending) {
                    return Some(snapshot);
                }
                core::hint::spin_loop();
            }
            // No publication meanwhile: read the totals of the domains
            // still pending directly.
            for (p, stats) in pending.iter_mut().zip(&self.domains) {
                if let Pending::Publication(_) = p {
                    if let Some((_, state)) = stats.totals.read() {
                        stats.hint.saw_totals(state.updates);
                        *p = Pending::Done(state);
                    }
                }
            }
            if let Some(snapshot) = finished(&pending) {
                return Some(snapshot);
            }
        }
        None
    }

    /// Reads the domains whose awaited publication has happened.
    fn poll_publications(&self, pending: &mut [Pending; 2]) {
        for (p, stats) in pending.iter_mut().zip(&self.domains) {
            let Pending::Publication(fresh) = *p else {
                continue;
            };
            if stats.published.seq.load(Ordering::Relaxed) < fresh {
                continue;
            }
            if let Some((seq, state)) = stats.published.read() {
                if seq >= fresh {
                    stats.hint.set_busy(true);
                    *p = Pending::Done(state);
                }
            }
        }
    }
}

/// The snapshot, once every domain is read.
fn finished(pending: &[Pending; 2]) -> Option<StatsSnapshot> {
    match *pending {
        [Pending::Done(vram), Pending::Done(gtt)] => Some(StatsSnapshot {
            vram: vram.counters(),
            gtt: gtt.counters(),
            updates: vram.updates.wrapping_add(gtt.updates),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
