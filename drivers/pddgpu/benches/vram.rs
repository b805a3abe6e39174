//! VRAM allocator benchmark: our buddy allocator (and the VRAM manager on
//! top of it) against `buddy_system_allocator::FrameAllocator`, on the same
//! seeded workloads in the same run (rounds alternate between the two and
//! the best round of each counts, as the box is shared).
//!
//! `cargo bench -p pddgpu --bench vram` prints, per workload:
//! - `ratio vram/<workload>/buddy_system_allocator <peer_time / our_time>`
//! - our and the peer's ns per alloc+free pair,
//! - bytes of allocator metadata per live allocation, measured with a
//!   counting global allocator (heap held by the allocator itself), and the
//!   size of the handle the caller keeps per allocation,
//! - VRAM reserved for the live set (the peer rounds every request up to a
//!   power of two).
//!
//! Requests are in 4 KiB pages (frames for the peer). Workloads:
//! - `mix`: 8 GiB space, sizes log-uniform from 4 KiB to 64 MiB at page
//!   granularity, random allocs and frees keeping about half of the space
//!   live. Like the peer, ours is asked for one power-of-two block per
//!   request (`min_block_size` = the size rounded up to a power of two) —
//!   the like-for-like comparison.
//! - `mix_split`: the same requests with drm_buddy semantics: rounded to
//!   pages only, served by several blocks (largest first). More work per
//!   request, far less memory reserved.
//! - `steady100k` / `steady100k_split`: 16 GiB space, 100,000 live
//!   allocations of 4 KiB–256 KiB, then random free+alloc pairs at that
//!   level; one block / split as above.
//!
//! Both sides run the same pre-generated steps through the same caller: a
//! slot table as large as the peak live set (freed slots are reused), with
//! no heap allocation per step in the harness (our block lists keep their
//! capacity when a slot is emptied, as a driver reusing its table would).
//!
//! Extra knobs: `VRAM_BENCH_ROUNDS` (default 5), `VRAM_BENCH_ONLY=<name>`
//! (one workload, without the VramManager line), `VRAM_BENCH_SIDE=ours|peer`
//! (profiling, e.g. under `valgrind --tool=callgrind`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use buddy_system_allocator::FrameAllocator;
use pddgpu::buddy::{AllocFlags, BlockList, BuddyAllocator};
use pddgpu::vram::{VramAllocation, VramConfig, VramFlags, VramManager};

/// Counts live heap bytes of the whole process.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const PAGE: u64 = 4096;

/// splitmix64: small, seeded, good enough for workloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Log-uniform page count in `1..=max_pages`, at page granularity.
    fn pages(&mut self, max_pages: u64) -> u64 {
        let max_exp = 63 - max_pages.leading_zeros() as u64;
        let lo = 1u64 << self.below(max_exp + 1);
        let hi = (lo * 2 - 1).min(max_pages);
        lo + self.below(hi - lo + 1)
    }
}

/// One step of a workload: allocate `pages` into slot `slot`, or free the
/// allocation in slot `slot`.
#[derive(Clone, Copy)]
enum Step {
    Alloc { pages: u64, slot: usize },
    Free { slot: usize },
}

/// A pre-generated, allocator-independent sequence of steps. Slots are
/// indices into the caller's table (reused once freed); frees name slots
/// that are live in the generator's own bookkeeping (of requested sizes).
struct Workload {
    name: &'static str,
    /// Ours serves requests with drm_buddy semantics (several blocks)
    /// instead of one power-of-two block.
    split: bool,
    space_pages: u64,
    /// Steps run before timing starts (building the live set).
    warmup: Vec<Step>,
    /// Timed steps.
    timed: Vec<Step>,
    slots: usize,
}

/// Slot numbers handed out by a workload generator: freed slots are reused
/// (last freed first), so the caller's table is as large as the peak live
/// set, like a driver's BO table, and not one entry per allocation ever made.
#[derive(Default)]
struct SlotPool {
    free: Vec<usize>,
    count: usize,
}

impl SlotPool {
    fn take(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.count += 1;
            self.count - 1
        })
    }

    fn give(&mut self, slot: usize) {
        self.free.push(slot);
    }
}

fn mix(name: &'static str, split: bool, seed: u64) -> Workload {
    let space_pages = (8u64 << 30) / PAGE;
    let max_pages = (64u64 << 20) / PAGE;
    let mut rng = Rng(seed);
    let mut live: Vec<(usize, u64)> = Vec::new();
    let mut live_pages = 0u64;
    let mut timed = Vec::new();
    let mut pool = SlotPool::default();
    let target = space_pages / 2;
    for _ in 0..400_000 {
        let alloc_percent = if live_pages < target { 60 } else { 40 };
        let alloc = live.is_empty() || rng.below(100) < alloc_percent;
        if alloc {
            let pages = rng.pages(max_pages);
            let slot = pool.take();
            timed.push(Step::Alloc { pages, slot });
            live.push((slot, pages));
            live_pages += pages;
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (slot, pages) = live.swap_remove(i);
            live_pages -= pages;
            timed.push(Step::Free { slot });
            pool.give(slot);
        }
    }
    for (slot, _) in live {
        timed.push(Step::Free { slot });
    }
    Workload {
        name,
        split,
        space_pages,
        warmup: Vec::new(),
        timed,
        slots: pool.count,
    }
}

fn steady(name: &'static str, split: bool, seed: u64) -> Workload {
    let space_pages = (16u64 << 30) / PAGE;
    let max_pages = (256u64 << 10) / PAGE;
    let mut rng = Rng(seed);
    let mut live: Vec<usize> = Vec::new();
    let mut warmup = Vec::new();
    let mut pool = SlotPool::default();
    for _ in 0..100_000 {
        let slot = pool.take();
        warmup.push(Step::Alloc {
            pages: rng.pages(max_pages),
            slot,
        });
        live.push(slot);
    }
    let mut timed = Vec::new();
    for _ in 0..300_000 {
        let i = rng.below(live.len() as u64) as usize;
        timed.push(Step::Free { slot: live[i] });
        pool.give(live[i]);
        let slot = pool.take();
        timed.push(Step::Alloc {
            pages: rng.pages(max_pages),
            slot,
        });
        live[i] = slot;
    }
    Workload {
        name,
        split,
        space_pages,
        warmup,
        timed,
        slots: pool.count,
    }
}

/// The operations a benchmarked allocator offers. Both sides get the same
/// caller: a table of slots (one per live allocation, reused after a free)
/// that holds what the allocator hands back.
trait Subject {
    /// What the caller keeps in a slot (empty = no allocation).
    type Slot: Default;
    fn new(space_pages: u64, split: bool) -> Self;
    /// Allocates `pages` into the empty `slot`; false (slot left empty) on
    /// failure.
    fn alloc(&mut self, pages: u64, slot: &mut Self::Slot) -> bool;
    /// Frees the allocation in `slot`, if any, and empties it; false if it
    /// was empty.
    fn free(&mut self, slot: &mut Self::Slot) -> bool;
    /// Heap bytes held by a slot beyond its inline size (kept by the
    /// caller, not the allocator).
    fn slot_heap(slot: &Self::Slot) -> usize;
    /// Bytes of the space reserved by live allocations.
    fn reserved(&self) -> u64;
    /// Blocks held in a slot (0 when empty).
    fn blocks(slot: &Self::Slot) -> usize;
}

struct Ours {
    buddy: BuddyAllocator,
    split: bool,
}

impl Subject for Ours {
    /// The blocks; an emptied list keeps its capacity for the next
    /// allocation in that slot.
    type Slot = BlockList;

    fn new(space_pages: u64, split: bool) -> Self {
        Ours {
            buddy: BuddyAllocator::new(space_pages * PAGE, PAGE).expect("space"),
            split,
        }
    }

    #[inline]
    fn alloc(&mut self, pages: u64, slot: &mut BlockList) -> bool {
        let size = pages * PAGE;
        let min_block = if self.split {
            PAGE
        } else {
            size.next_power_of_two()
        };
        // The fast path of the API: blocks are written straight into the
        // caller's storage.
        self.buddy
            .alloc_into(size, min_block, AllocFlags::empty(), 0..0, slot)
            .is_ok()
    }

    #[inline]
    fn free(&mut self, slot: &mut BlockList) -> bool {
        if slot.is_empty() {
            return false;
        }
        self.buddy.free(slot).expect("free");
        slot.clear();
        true
    }

    fn slot_heap(slot: &BlockList) -> usize {
        if slot.spilled() {
            slot.capacity() * std::mem::size_of::<pddgpu::buddy::Block>()
        } else {
            0
        }
    }

    fn reserved(&self) -> u64 {
        self.buddy.used()
    }

    fn blocks(slot: &BlockList) -> usize {
        slot.len()
    }
}

/// The peer: frames `base..2*base` (a power-of-two aligned start, so that
/// `add_frame` makes one root block instead of 32-frame pieces).
struct Peer {
    inner: FrameAllocator<33>,
    reserved_frames: usize,
}

impl Subject for Peer {
    /// (first frame, frame count).
    type Slot = Option<(usize, usize)>;

    fn new(space_pages: u64, _split: bool) -> Self {
        let mut inner = FrameAllocator::<33>::new();
        let base = space_pages as usize;
        inner.add_frame(base, base * 2);
        Peer {
            inner,
            reserved_frames: 0,
        }
    }

    #[inline]
    fn alloc(&mut self, pages: u64, slot: &mut Option<(usize, usize)>) -> bool {
        let count = pages as usize;
        *slot = self.inner.alloc(count).map(|frame| (frame, count));
        if slot.is_some() {
            self.reserved_frames += count.next_power_of_two();
        }
        slot.is_some()
    }

    #[inline]
    fn free(&mut self, slot: &mut Option<(usize, usize)>) -> bool {
        let Some((frame, count)) = slot.take() else {
            return false;
        };
        self.inner.dealloc(frame, count);
        self.reserved_frames -= count.next_power_of_two();
        true
    }

    fn slot_heap(_: &Option<(usize, usize)>) -> usize {
        0
    }

    fn reserved(&self) -> u64 {
        self.reserved_frames as u64 * PAGE
    }

    fn blocks(slot: &Option<(usize, usize)>) -> usize {
        usize::from(slot.is_some())
    }
}

struct Outcome {
    time: Duration,
    pairs: u64,
    failed: u64,
    /// Allocator heap bytes per live allocation at the end of warm-up (or
    /// at the peak of live allocations for workloads without warm-up).
    meta_per_live: f64,
    handle_per_live: f64,
    /// VRAM reserved by the live set where the metadata was sampled.
    reserved: u64,
    /// Blocks per live allocation there.
    blocks_per_live: f64,
}

/// Runs one step on `subject` (inlined into the loops: the same for both
/// sides, and no call overhead in the timed loop).
#[inline(always)]
fn step<S: Subject>(
    subject: &mut S,
    slots: &mut [S::Slot],
    s: Step,
    live: &mut usize,
    failed: &mut u64,
) {
    match s {
        Step::Alloc { pages, slot } => {
            if subject.alloc(pages, &mut slots[slot]) {
                *live += 1;
            } else {
                *failed += 1;
            }
        }
        Step::Free { slot } => {
            if subject.free(&mut slots[slot]) {
                *live -= 1;
            }
        }
    }
}

fn run<S: Subject>(w: &Workload) -> Outcome {
    let mut slots: Vec<S::Slot> = Vec::with_capacity(w.slots);
    slots.resize_with(w.slots, S::Slot::default);
    let mut failed = 0u64;
    let mut live = 0usize;
    let base = live_bytes();
    let mut subject = S::new(w.space_pages, w.split);
    // (metadata per live allocation, slot heap per live allocation, live
    // count, reserved bytes, blocks per live allocation) at the sampling
    // point. Slot heap is counted over all slots (emptied ones keep their
    // capacity).
    let sample = |subject: &S, slots: &[S::Slot], live: usize| {
        let total = (live_bytes() - base) as f64;
        let handles = slots.iter().map(S::slot_heap).sum::<usize>() as f64;
        let live_f = live.max(1) as f64;
        let blocks = slots.iter().map(S::blocks).sum::<usize>() as f64;
        (
            (total - handles) / live_f,
            handles / live_f,
            live,
            subject.reserved(),
            blocks / live_f,
        )
    };
    for &s in &w.warmup {
        step(&mut subject, &mut slots, s, &mut live, &mut failed);
    }
    let mut sampled = sample(&subject, &slots, live);
    let mut peak = live;
    let start = Instant::now();
    if w.warmup.is_empty() {
        // Without a warm-up, sample at the peak of live allocations: time
        // the steps in chunks and sample between them, off the clock.
        let mut time = Duration::ZERO;
        for chunk in w.timed.chunks(4096) {
            let t = Instant::now();
            for &s in chunk {
                step(&mut subject, &mut slots, s, &mut live, &mut failed);
            }
            time += t.elapsed();
            if live > peak {
                peak = live;
                sampled = sample(&subject, &slots, live);
            }
        }
        return finish(w, time, failed, sampled, &subject);
    }
    for &s in &w.timed {
        step(&mut subject, &mut slots, s, &mut live, &mut failed);
    }
    let time = start.elapsed();
    finish(w, time, failed, sampled, &subject)
}

/// Packs up one run's figures.
fn finish<S: Subject>(
    w: &Workload,
    time: Duration,
    failed: u64,
    sampled: (f64, f64, usize, u64, f64),
    subject: &S,
) -> Outcome {
    black_box(subject);
    let allocs = w
        .timed
        .iter()
        .filter(|s| matches!(s, Step::Alloc { .. }))
        .count() as u64;
    Outcome {
        time,
        pairs: allocs,
        failed,
        meta_per_live: sampled.0,
        handle_per_live: sampled.1,
        reserved: sampled.3,
        blocks_per_live: sampled.4,
    }
}

/// Best of `rounds` runs of each, ours and the peer's alternating, so that
/// both see the same background load (the box is shared).
fn best_pair(w: &Workload, rounds: usize) -> (Outcome, Outcome) {
    let mut ours: Option<Outcome> = None;
    let mut peer: Option<Outcome> = None;
    // VRAM_BENCH_SIDE=ours|peer runs one side only (for profiling).
    let side = std::env::var("VRAM_BENCH_SIDE").ok();
    let (run_ours, run_peer) = match side.as_deref() {
        Some("ours") => (true, false),
        Some("peer") => (false, true),
        _ => (true, true),
    };
    for _ in 0..rounds {
        if run_ours {
            let o = run::<Ours>(w);
            if ours.as_ref().is_none_or(|b| o.time < b.time) {
                ours = Some(o);
            }
        }
        if run_peer {
            let p = run::<Peer>(w);
            if peer.as_ref().is_none_or(|b| p.time < b.time) {
                peer = Some(p);
            }
        }
    }
    let ours = ours.unwrap_or_else(|| run::<Ours>(w));
    let peer = peer.unwrap_or_else(|| run::<Peer>(w));
    (ours, peer)
}

fn ns_per_pair(o: &Outcome) -> f64 {
    o.time.as_nanos() as f64 / o.pairs as f64
}

/// The VRAM manager (lock, window placement, counters) on the `mix`
/// workload, for the per-operation cost of the full path.
fn manager_mix(w: &Workload) -> (Duration, u64) {
    let manager = VramManager::new(VramConfig::new(w.space_pages * PAGE, 256 << 20)).expect("vram");
    let mut slots: Vec<Option<VramAllocation>> = Vec::with_capacity(w.slots);
    slots.resize_with(w.slots, || None);
    let mut allocs = 0u64;
    let start = Instant::now();
    for &s in &w.timed {
        match s {
            Step::Alloc { pages, slot } => {
                allocs += 1;
                slots[slot] = manager.alloc(pages * PAGE, 0, VramFlags::empty()).ok();
            }
            Step::Free { slot } => {
                if let Some(a) = slots[slot].take() {
                    manager.free(&a).expect("free");
                }
            }
        }
    }
    (start.elapsed(), allocs)
}

fn main() {
    let rounds = std::env::var("VRAM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let workloads = [
        mix("mix", false, 0x5EED_0001),
        mix("mix_split", true, 0x5EED_0001),
        steady("steady100k", false, 0x5EED_0003),
        steady("steady100k_split", true, 0x5EED_0003),
    ];
    let only = std::env::var("VRAM_BENCH_ONLY").ok();
    for w in &workloads {
        if only.as_deref().is_some_and(|o| o != w.name) {
            continue;
        }
        let (ours, peer) = best_pair(w, rounds);
        let ratio = peer.time.as_secs_f64() / ours.time.as_secs_f64();
        println!("ratio vram/{}/buddy_system_allocator {:.2}", w.name, ratio);
        println!(
            "  {}: ours {:.1} ns per alloc+free ({} pairs, {} failed), peer {:.1} ns ({} failed)",
            w.name,
            ns_per_pair(&ours),
            ours.pairs,
            ours.failed,
            ns_per_pair(&peer),
            peer.failed
        );
        println!(
            "  {}: metadata per live allocation: ours {:.1} B, peer {:.1} B; handle kept by the caller: ours {} B + {:.1} B heap, peer {} B",
            w.name,
            ours.meta_per_live,
            peer.meta_per_live,
            std::mem::size_of::<<Ours as Subject>::Slot>(),
            ours.handle_per_live,
            std::mem::size_of::<<Peer as Subject>::Slot>()
        );
        println!(
            "  {}: VRAM reserved for the same live set: ours {} MiB, peer {} MiB; blocks per live allocation: ours {:.2}, peer {:.2}",
            w.name,
            ours.reserved >> 20,
            peer.reserved >> 20,
            ours.blocks_per_live,
            peer.blocks_per_live
        );
    }
    if only.is_some() {
        return;
    }
    let (time, allocs) = manager_mix(&workloads[0]);
    println!(
        "  mix via VramManager (lock, window, counters): {:.1} ns per alloc+free",
        time.as_nanos() as f64 / allocs as f64
    );
}
