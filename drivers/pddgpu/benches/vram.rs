//! VRAM allocator benchmark: our buddy allocator against Linux's drm_buddy
//! (compiled from the kernel source, see `cpeers/`) and against
//! `buddy_system_allocator::FrameAllocator`, on the same pre-generated
//! workloads in the same run. Rounds alternate between the sides and the
//! best round of each counts, as the machine is shared.
//!
//! `cargo bench -p pddgpu --bench vram` prints, per workload and peer:
//! - `ratio vram/<workload>/<peer> <peer time / our time>` (above 1: we are
//!   faster);
//! - ns per alloc+free pair of each side and failed requests;
//! - allocator metadata bytes per live block and per live allocation
//!   (ours: heap held by the allocator, counted by a counting global
//!   allocator; drm_buddy: its slab objects and kmalloc bytes in use), and
//!   the handle the caller keeps per allocation;
//! - blocks per live allocation and VRAM reserved by the live set.
//!
//! Requests are in 4 KiB pages. Workloads against drm_buddy (drm_buddy's
//! semantics on both sides: several power-of-two blocks per request, at
//! least 4 KiB each):
//! - `blocks`: 8 GiB, sizes log-uniform 4 KiB–64 MiB, random allocations
//!   and frees keeping about half of the space live;
//! - `contiguous`: the same stream with `CONTIGUOUS` (rounded up to a power
//!   of two, trimmed back);
//! - `topdown`: the same stream with `TOPDOWN`;
//! - `range_visible`: 8 GiB with a 256 MiB CPU-visible window at 0; every
//!   request is `RANGE`-restricted to the window, sizes 4 KiB–1 MiB,
//!   keeping about half of the window live;
//! - `steady100k`: 16 GiB, 100,000 live allocations of 4 KiB–256 KiB
//!   (about 3.8 blocks each), then random free+alloc pairs at that level;
//! - `threads`: the stress shape of the design notes, 100 threads × 1000
//!   create+free pairs (sizes 4 KiB–1 MiB) on an empty 8 GiB space, each
//!   side behind one `std::sync::Mutex` (as drivers lock drm_buddy).
//!
//! Workloads against `buddy_system_allocator` (which rounds every request
//! up to one power-of-two block and keeps no record of what it handed out):
//! `mix` (the `blocks` stream, ours asked for one power-of-two block per
//! request like the peer), `mix_split` (ours with drm_buddy semantics),
//! `steady100k` and `steady100k_split` likewise.
//!
//! Both sides run the same steps through the same caller: a slot table as
//! large as the peak live set (freed slots are reused), with no heap
//! allocation per step in the harness.
//!
//! Knobs: `VRAM_BENCH_ROUNDS` (default 5), `VRAM_BENCH_ONLY=<workload>`,
//! `VRAM_BENCH_SIDE=ours|peer` (profiling: one side only, no ratios).

// `unsafe` is confined to two modules: the C peers (FFI, `cpeers`) and
// the counting allocator (`support/counting.rs`).
#[path = "support/counting.rs"]
mod counting;
#[path = "cpeers/mod.rs"]
mod cpeers;
mod support;

use counting::{live_bytes, Counting};
use pddgpu_ipc::progress::{joined_span, Reporter};
use support::Rng;

use std::hint::black_box;
use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use buddy_system_allocator::FrameAllocator;
use cpeers::{DrmBuddy, Peers};
use pddgpu::bo::BoFlags;
use pddgpu::buddy::{AllocFlags, BlockList, BuddyAllocator};
use pddgpu::vram::{VramAllocation, VramConfig, VramManager};

#[global_allocator]
static GLOBAL: Counting = Counting;

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

impl Rng {
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

/// How a request is served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One power-of-two block (ours: `min_block_size` = the size rounded up
    /// to a power of two), as `buddy_system_allocator` does.
    OneBlock,
    /// drm_buddy semantics: several blocks of at least one page.
    Blocks,
    /// `CONTIGUOUS`.
    Contiguous,
    /// `TOPDOWN`.
    Topdown,
    /// `RANGE` restricted to `0..window`.
    Range { window: u64 },
}

/// A pre-generated, allocator-independent sequence of steps. Slots are
/// indices into the caller's table (reused once freed).
struct Workload {
    name: &'static str,
    mode: Mode,
    space: u64,
    /// Steps run before timing starts (building the live set).
    warmup: Vec<Step>,
    /// Timed steps.
    timed: Vec<Step>,
    slots: usize,
}

/// Slot numbers handed out by a workload generator: freed slots are reused
/// (last freed first), so the caller's table is as large as the peak live
/// set, like a driver's BO table.
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

/// Random allocations and frees over `space` bytes, sizes log-uniform up
/// to `max_bytes`, keeping about `live_share` of `live_of` bytes live.
fn mix(
    name: &'static str,
    mode: Mode,
    space: u64,
    max_bytes: u64,
    live_of: u64,
    seed: u64,
) -> Workload {
    let max_pages = max_bytes / PAGE;
    let mut rng = Rng(seed);
    let mut live: Vec<(usize, u64)> = Vec::new();
    let mut live_pages = 0u64;
    let mut timed = Vec::new();
    let mut pool = SlotPool::default();
    let target = live_of / PAGE / 2;
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
        mode,
        space,
        warmup: Vec::new(),
        timed,
        slots: pool.count,
    }
}

/// 100,000 live allocations of 4 KiB–256 KiB in 16 GiB, then random
/// free+alloc pairs.
fn steady(name: &'static str, mode: Mode, seed: u64) -> Workload {
    let max_pages = (256 << 10) / PAGE;
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
        mode,
        space: 16 * GIB,
        warmup,
        timed,
        slots: pool.count,
    }
}

/// The operations a benchmarked allocator offers. Both sides get the same
/// caller: a table of slots (one per live allocation, reused after a free).
trait Subject {
    /// What the caller keeps in a slot (empty = no allocation).
    type Slot: Default + Send;
    /// Bytes of a slot as the caller stores it.
    const HANDLE_BYTES: usize;
    fn new(w: &Workload) -> Self;
    /// Allocates `pages` into the empty slot `i`; false on failure.
    fn alloc(&mut self, pages: u64, slots: &mut [Self::Slot], i: usize) -> bool;
    /// Frees the allocation in slot `i`, if any; false if it was empty.
    fn free(&mut self, slots: &mut [Self::Slot], i: usize) -> bool;
    /// Heap bytes of the allocator's own metadata now.
    fn meta_bytes(&self, slots: &[Self::Slot]) -> f64;
    /// Heap bytes the caller's slots hold beyond their inline size.
    fn slot_heap(slots: &[Self::Slot]) -> f64;
    /// Blocks held by live allocations.
    fn live_blocks(&self, slots: &[Self::Slot]) -> u64;
    /// Bytes of the space reserved by live allocations.
    fn reserved(&self) -> u64;
}

struct Ours {
    buddy: BuddyAllocator,
    mode: Mode,
    base: isize,
}

impl Ours {
    fn flags_and_range(&self) -> (AllocFlags, Range<u64>) {
        match self.mode {
            Mode::OneBlock | Mode::Blocks => (AllocFlags::empty(), 0..0),
            Mode::Contiguous => (AllocFlags::CONTIGUOUS, 0..0),
            Mode::Topdown => (AllocFlags::TOPDOWN, 0..0),
            Mode::Range { window } => (AllocFlags::RANGE, 0..window),
        }
    }
}

impl Subject for Ours {
    /// The blocks; an emptied list keeps its capacity for the next
    /// allocation in that slot.
    type Slot = BlockList;
    const HANDLE_BYTES: usize = std::mem::size_of::<BlockList>();

    fn new(w: &Workload) -> Self {
        let base = live_bytes();
        Ours {
            buddy: BuddyAllocator::new(w.space, PAGE).expect("space"),
            mode: w.mode,
            base,
        }
    }

    #[inline]
    fn alloc(&mut self, pages: u64, slots: &mut [BlockList], i: usize) -> bool {
        let size = pages * PAGE;
        let min_block = if self.mode == Mode::OneBlock {
            size.next_power_of_two()
        } else {
            PAGE
        };
        let (flags, range) = self.flags_and_range();
        self.buddy
            .alloc_into(size, min_block, flags, range, &mut slots[i])
            .is_ok()
    }

    #[inline]
    fn free(&mut self, slots: &mut [BlockList], i: usize) -> bool {
        let slot = &mut slots[i];
        if slot.is_empty() {
            return false;
        }
        self.buddy.free(slot).expect("free");
        slot.clear();
        true
    }

    fn meta_bytes(&self, slots: &[BlockList]) -> f64 {
        (live_bytes() - self.base) as f64 - Self::slot_heap(slots)
    }

    fn slot_heap(slots: &[BlockList]) -> f64 {
        slots
            .iter()
            .filter(|s| s.spilled())
            .map(|s| s.capacity() * std::mem::size_of::<pddgpu::buddy::Block>())
            .sum::<usize>() as f64
    }

    fn live_blocks(&self, _: &[BlockList]) -> u64 {
        self.buddy.allocated_blocks()
    }

    fn reserved(&self) -> u64 {
        self.buddy.used()
    }
}

/// Linux's drm_buddy: each slot is a `struct list_head` of blocks in the
/// C side's table (16 bytes per slot, as in a driver's resource object).
struct Drm {
    mm: DrmBuddy,
    peers: &'static Peers,
    mode: Mode,
    base: u64,
}

impl Subject for Drm {
    type Slot = ();
    const HANDLE_BYTES: usize = 16;

    fn new(w: &Workload) -> Self {
        let peers = cpeers::load().expect("peer loaded before use");
        let base = peers.heap_bytes();
        Drm {
            mm: DrmBuddy::new(peers, w.space, PAGE, w.slots),
            peers,
            mode: w.mode,
            base,
        }
    }

    #[inline]
    fn alloc(&mut self, pages: u64, _: &mut [()], i: usize) -> bool {
        let (flags, range) = match self.mode {
            Mode::OneBlock | Mode::Blocks => (0, (0, 0)),
            Mode::Contiguous => (cpeers::BUDDY_CONTIGUOUS, (0, 0)),
            Mode::Topdown => (cpeers::BUDDY_TOPDOWN, (0, 0)),
            Mode::Range { window } => (cpeers::BUDDY_RANGE, (0, window)),
        };
        self.mm.alloc(i, pages * PAGE, PAGE, flags, range)
    }

    #[inline]
    fn free(&mut self, _: &mut [()], i: usize) -> bool {
        self.mm.free(i)
    }

    fn meta_bytes(&self, _: &[()]) -> f64 {
        (self.peers.heap_bytes() - self.base) as f64
    }

    fn slot_heap(_: &[()]) -> f64 {
        0.0
    }

    fn live_blocks(&self, _: &[()]) -> u64 {
        self.mm.live_blocks()
    }

    fn reserved(&self) -> u64 {
        self.mm.used()
    }
}

/// `buddy_system_allocator`: frames `base..2*base` (a power-of-two aligned
/// start, so that `add_frame` makes one root block).
struct Bsa {
    inner: FrameAllocator<33>,
    reserved_frames: usize,
    base: isize,
}

impl Subject for Bsa {
    /// (first frame, frame count).
    type Slot = Option<(usize, usize)>;
    const HANDLE_BYTES: usize = std::mem::size_of::<Option<(usize, usize)>>();

    fn new(w: &Workload) -> Self {
        let base = live_bytes();
        let mut inner = FrameAllocator::<33>::new();
        let frames = (w.space / PAGE) as usize;
        inner.add_frame(frames, frames * 2);
        Bsa {
            inner,
            reserved_frames: 0,
            base,
        }
    }

    #[inline]
    fn alloc(&mut self, pages: u64, slots: &mut [Self::Slot], i: usize) -> bool {
        let count = pages as usize;
        slots[i] = self.inner.alloc(count).map(|frame| (frame, count));
        if slots[i].is_some() {
            self.reserved_frames += count.next_power_of_two();
        }
        slots[i].is_some()
    }

    #[inline]
    fn free(&mut self, slots: &mut [Self::Slot], i: usize) -> bool {
        let Some((frame, count)) = slots[i].take() else {
            return false;
        };
        self.inner.dealloc(frame, count);
        self.reserved_frames -= count.next_power_of_two();
        true
    }

    fn meta_bytes(&self, _: &[Self::Slot]) -> f64 {
        (live_bytes() - self.base) as f64
    }

    fn slot_heap(_: &[Self::Slot]) -> f64 {
        0.0
    }

    fn live_blocks(&self, slots: &[Self::Slot]) -> u64 {
        slots.iter().filter(|s| s.is_some()).count() as u64
    }

    fn reserved(&self) -> u64 {
        self.reserved_frames as u64 * PAGE
    }
}

/// Figures of one run.
struct Outcome {
    time: Duration,
    pairs: u64,
    failed: u64,
    /// Sampled at the end of warm-up, or at the peak of live allocations
    /// for workloads without warm-up.
    sample: Sample,
}

#[derive(Default, Clone, Copy)]
struct Sample {
    live: u64,
    live_blocks: u64,
    meta: f64,
    slot_heap: f64,
    reserved: u64,
}

impl Sample {
    fn take<S: Subject>(subject: &S, slots: &[S::Slot], live: u64) -> Sample {
        Sample {
            live,
            live_blocks: subject.live_blocks(slots),
            meta: subject.meta_bytes(slots),
            slot_heap: S::slot_heap(slots),
            reserved: subject.reserved(),
        }
    }

    fn meta_per_block(&self) -> f64 {
        self.meta / self.live_blocks.max(1) as f64
    }

    fn meta_per_alloc(&self) -> f64 {
        self.meta / self.live.max(1) as f64
    }

    fn blocks_per_alloc(&self) -> f64 {
        self.live_blocks as f64 / self.live.max(1) as f64
    }
}

/// Runs one step (inlined into the loops: the same for every side).
#[inline(always)]
fn step<S: Subject>(
    subject: &mut S,
    slots: &mut [S::Slot],
    s: Step,
    live: &mut u64,
    failed: &mut u64,
) {
    match s {
        Step::Alloc { pages, slot } => {
            if subject.alloc(pages, slots, slot) {
                *live += 1;
            } else {
                *failed += 1;
            }
        }
        Step::Free { slot } => {
            if subject.free(slots, slot) {
                *live -= 1;
            }
        }
    }
}

fn run<S: Subject>(w: &Workload) -> Outcome {
    let mut slots: Vec<S::Slot> = Vec::with_capacity(w.slots);
    slots.resize_with(w.slots, S::Slot::default);
    let mut failed = 0u64;
    let mut live = 0u64;
    let mut subject = S::new(w);
    for &s in &w.warmup {
        step(&mut subject, &mut slots, s, &mut live, &mut failed);
    }
    let mut sample = Sample::take(&subject, &slots, live);
    let time = if w.warmup.is_empty() {
        // Sample at the peak of live allocations: time the steps in chunks
        // and sample between them, off the clock.
        let mut time = Duration::ZERO;
        let mut peak = live;
        for chunk in w.timed.chunks(4096) {
            let t = Instant::now();
            for &s in chunk {
                step(&mut subject, &mut slots, s, &mut live, &mut failed);
            }
            time += t.elapsed();
            if live > peak {
                peak = live;
                sample = Sample::take(&subject, &slots, live);
            }
        }
        time
    } else {
        let start = Instant::now();
        for &s in &w.timed {
            step(&mut subject, &mut slots, s, &mut live, &mut failed);
        }
        start.elapsed()
    };
    black_box(&subject);
    let pairs = w
        .timed
        .iter()
        .filter(|s| matches!(s, Step::Alloc { .. }))
        .count() as u64;
    Outcome {
        time,
        pairs,
        failed,
        sample,
    }
}

/// Which sides run (`VRAM_BENCH_SIDE`).
fn sides() -> (bool, bool) {
    match std::env::var("VRAM_BENCH_SIDE").ok().as_deref() {
        Some("ours") => (true, false),
        Some("peer") => (false, true),
        _ => (true, true),
    }
}

/// Best of `rounds` runs of each side, alternating, so that both see the
/// same background load.
fn best_pair<P: Subject>(w: &Workload, rounds: usize) -> (Option<Outcome>, Option<Outcome>) {
    let (run_ours, run_peer) = sides();
    let mut ours: Option<Outcome> = None;
    let mut peer: Option<Outcome> = None;
    let keep = |best: &mut Option<Outcome>, o: Outcome| {
        if best.as_ref().is_none_or(|b| o.time < b.time) {
            *best = Some(o);
        }
    };
    for _ in 0..rounds {
        if run_ours {
            keep(&mut ours, run::<Ours>(w));
        }
        if run_peer {
            keep(&mut peer, run::<P>(w));
        }
    }
    (ours, peer)
}

fn ns_per_pair(o: &Outcome) -> f64 {
    o.time.as_nanos() as f64 / o.pairs.max(1) as f64
}

fn report<P: Subject>(w: &Workload, peer_name: &str, ours: Option<Outcome>, peer: Option<Outcome>) {
    if let (Some(o), Some(p)) = (&ours, &peer) {
        let ratio = p.time.as_secs_f64() / o.time.as_secs_f64();
        println!("ratio vram/{}/{peer_name} {ratio:.2}", w.name);
    }
    let side = |o: &Option<Outcome>| {
        o.as_ref().map_or("-".to_string(), |o| {
            format!("{:.1} ns ({} failed)", ns_per_pair(o), o.failed)
        })
    };
    println!(
        "  {}: ns per alloc+free: ours {}, {peer_name} {} ({} pairs)",
        w.name,
        side(&ours),
        side(&peer),
        ours.as_ref().or(peer.as_ref()).map_or(0, |o| o.pairs)
    );
    let (os, ps) = (
        ours.as_ref().map(|o| o.sample).unwrap_or_default(),
        peer.as_ref().map(|o| o.sample).unwrap_or_default(),
    );
    println!(
        "  {}: metadata per live block: ours {:.1} B, {peer_name} {:.1} B; per live allocation: ours {:.1} B, {peer_name} {:.1} B",
        w.name,
        os.meta_per_block(),
        ps.meta_per_block(),
        os.meta_per_alloc(),
        ps.meta_per_alloc(),
    );
    println!(
        "  {}: handle kept by the caller: ours {} B + {:.1} B heap per allocation, {peer_name} {} B; blocks per live allocation: ours {:.2}, {peer_name} {:.2}; reserved: ours {} MiB, {peer_name} {} MiB ({} live allocations)",
        w.name,
        <Ours as Subject>::HANDLE_BYTES,
        os.slot_heap / os.live.max(1) as f64,
        P::HANDLE_BYTES,
        os.blocks_per_alloc(),
        ps.blocks_per_alloc(),
        os.reserved >> 20,
        ps.reserved >> 20,
        os.live.max(ps.live),
    );
}

/// The stress shape: `THREADS` threads × `PAIRS` create+free pairs, each
/// side behind one mutex; returns the wall time of the whole run.
const THREADS: usize = 100;
const PAIRS: usize = 1000;

trait Locked: Send + 'static {
    /// One create+free pair of `pages` pages in the thread's slot `slot`.
    fn pair(&mut self, pages: u64, slot: usize);
}

struct OursLocked {
    buddy: BuddyAllocator,
    slots: Vec<BlockList>,
}

impl Locked for OursLocked {
    #[inline]
    fn pair(&mut self, pages: u64, slot: usize) {
        let list = &mut self.slots[slot];
        self.buddy
            .alloc_into(pages * PAGE, PAGE, AllocFlags::empty(), 0..0, list)
            .expect("alloc");
        self.buddy.free(list).expect("free");
        list.clear();
    }
}

struct DrmLocked(DrmBuddy);

impl Locked for DrmLocked {
    #[inline]
    fn pair(&mut self, pages: u64, slot: usize) {
        assert!(self.0.alloc(slot, pages * PAGE, PAGE, 0, (0, 0)), "alloc");
        self.0.free(slot);
    }
}

/// The per-thread size streams (4 KiB–1 MiB, log-uniform).
fn thread_streams() -> Vec<Vec<u64>> {
    (0..THREADS)
        .map(|t| {
            let mut rng = Rng(0x5EED_7000 + t as u64);
            (0..PAIRS).map(|_| rng.pages(MIB / PAGE)).collect()
        })
        .collect()
}

/// Runs the stress shape on `subject`; wall time from the first thread's
/// start to the last thread's end ([`joined_span`]).
fn run_threads<L: Locked>(subject: L, streams: &Arc<Vec<Vec<u64>>>) -> Duration {
    let shared = Arc::new(Mutex::new(subject));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (shared, barrier, streams) = (shared.clone(), barrier.clone(), streams.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for &pages in &streams[t] {
                    shared.lock().expect("lock").pair(pages, t);
                }
                (start, Instant::now())
            })
        })
        .collect();
    joined_span(handles)
}

fn threads_workload(peers: &'static Peers, rounds: usize) {
    let streams = Arc::new(thread_streams());
    let (run_ours, run_peer) = sides();
    let (mut ours, mut peer) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        if run_ours {
            let subject = OursLocked {
                buddy: BuddyAllocator::new(8 * GIB, PAGE).expect("space"),
                slots: (0..THREADS).map(|_| BlockList::new()).collect(),
            };
            ours = ours.min(run_threads(subject, &streams));
        }
        if run_peer {
            let subject = DrmLocked(DrmBuddy::new(peers, 8 * GIB, PAGE, THREADS));
            peer = peer.min(run_threads(subject, &streams));
        }
    }
    let pairs = (THREADS * PAIRS) as f64;
    if run_ours && run_peer {
        println!(
            "ratio vram/threads/drm_buddy {:.2}",
            peer.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let ns = |d: Duration| {
        if d == Duration::MAX {
            "-".to_string()
        } else {
            format!("{:.1} ns", d.as_nanos() as f64 / pairs)
        }
    };
    println!(
        "  threads: {THREADS} threads x {PAIRS} create+free, wall time per pair: ours {}, drm_buddy {}",
        ns(ours),
        ns(peer)
    );
}

/// The VRAM manager (lock, window placement, counters) on the `mix`
/// workload, for the per-operation cost of the full path.
fn manager_mix(w: &Workload) -> (Duration, u64) {
    let manager = VramManager::new(VramConfig::new(w.space, 256 << 20)).expect("vram");
    let mut slots: Vec<Option<VramAllocation>> = Vec::with_capacity(w.slots);
    slots.resize_with(w.slots, || None);
    let mut allocs = 0u64;
    let start = Instant::now();
    for &s in &w.timed {
        match s {
            Step::Alloc { pages, slot } => {
                allocs += 1;
                slots[slot] = manager.alloc(pages * PAGE, 0, BoFlags::empty()).ok();
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
    let only = std::env::var("VRAM_BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let progress = Reporter::stderr("vram bench");

    let drm = [
        mix(
            "blocks",
            Mode::Blocks,
            8 * GIB,
            64 * MIB,
            8 * GIB,
            0x5EED_0001,
        ),
        mix(
            "contiguous",
            Mode::Contiguous,
            8 * GIB,
            64 * MIB,
            8 * GIB,
            0x5EED_0001,
        ),
        mix(
            "topdown",
            Mode::Topdown,
            8 * GIB,
            64 * MIB,
            8 * GIB,
            0x5EED_0001,
        ),
        mix(
            "range_visible",
            Mode::Range { window: 256 * MIB },
            8 * GIB,
            MIB,
            256 * MIB,
            0x5EED_0002,
        ),
        steady("steady100k", Mode::Blocks, 0x5EED_0003),
    ];
    match cpeers::load() {
        Ok(peers) => {
            println!(
                "vram bench vs drm_buddy (Linux drivers/gpu/buddy.c from linux-source-6.12, {} B per block node), best of {rounds} rounds",
                peers.buddy_block_size()
            );
            for w in drm.iter().filter(|w| wanted(w.name)) {
                let text = format!("{} vs drm_buddy, {rounds} rounds", w.name);
                let (o, p) = progress.run(w.name, text, |_| best_pair::<Drm>(w, rounds));
                report::<Drm>(w, "drm_buddy", o, p);
            }
            if wanted("threads") {
                progress.run("threads", "threads vs drm_buddy", |_| {
                    threads_workload(peers, rounds)
                });
            }
        }
        Err(why) => println!("vram bench: peer drm_buddy skipped: {why}"),
    }

    let bsa = [
        mix(
            "mix",
            Mode::OneBlock,
            8 * GIB,
            64 * MIB,
            8 * GIB,
            0x5EED_0001,
        ),
        mix(
            "mix_split",
            Mode::Blocks,
            8 * GIB,
            64 * MIB,
            8 * GIB,
            0x5EED_0001,
        ),
        steady("steady100k", Mode::OneBlock, 0x5EED_0003),
        steady("steady100k_split", Mode::Blocks, 0x5EED_0003),
    ];
    println!("vram bench vs buddy_system_allocator::FrameAllocator, best of {rounds} rounds");
    for w in bsa.iter().filter(|w| wanted(w.name)) {
        let text = format!("{} vs buddy_system_allocator, {rounds} rounds", w.name);
        let (o, p) = progress.run(w.name, text, |_| best_pair::<Bsa>(w, rounds));
        report::<Bsa>(w, "buddy_system_allocator", o, p);
    }
    if only.is_some() {
        return;
    }
    let (time, allocs) = progress.run("manager", "mix via VramManager", |_| manager_mix(&bsa[0]));
    println!(
        "  mix via VramManager (lock, window, counters): {:.1} ns per alloc+free",
        time.as_nanos() as f64 / allocs as f64
    );
}
