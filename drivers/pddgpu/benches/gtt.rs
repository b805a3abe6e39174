//! GTT range-allocator benchmark: our `RangeAllocator` against Linux's
//! drm_mm (compiled from the kernel source, see `cpeers/`), `range-alloc`
//! (wgpu's range allocator) and `offset-allocator`, on the same
//! pre-generated request streams, in one run.
//!
//! Workloads (aperture 16 GiB, sizes uniform in 4 KiB steps from 4 KiB to
//! 16 MiB): fill to a target, then churn — free a random live allocation
//! while at or above the target, allocate otherwise — for a fixed number of
//! steps.
//! - `random-4k-50` / `random-4k-90`: `Best`, 4 KiB alignment, 50 % / 90 %
//!   fill;
//! - `mixed-align-90`: `Best`, random power-of-two alignments from 4 KiB to
//!   2 MiB, 90 % fill (`offset-allocator` has no alignment, so it gets the
//!   padded size `size + align - 4 KiB` and the bench aligns inside the
//!   padded block);
//! - `low-4k-90` / `high-4k-90`: `Low` / `High`, 4 KiB alignment;
//! - `low-mixed-90` / `high-mixed-90`: `Low` / `High`, mixed alignments;
//! - `range-70`: `Best`, mixed alignments, each request restricted to a
//!   pre-generated `start..end`: a quarter to the low 1 GiB (a mappable
//!   window), a quarter to a random 2 GiB window, the rest unrestricted;
//!   70 % fill;
//! - `mixed-align-90-exact`: `mixed-align-90` with our search limit off
//!   (`u32::MAX`), i.e. exactly drm_mm's choice rule.
//!
//! Our lines use the default search limit (see `RangeAllocator`) except in
//! the `-exact` workload. `range-alloc` and `offset-allocator` run only
//! the unrestricted `Best` workloads they can express.
//!
//! Every allocator sees the same pre-generated request and victim streams
//! (nothing is drawn or divided inside the timed loop); each workload runs
//! five times per allocator, interleaved, and the fastest run counts.
//!
//! Prints, per workload: `time gtt/<workload>/<allocator> <ns per op>` with
//! the operation and failed-request counts, `ratio gtt/<workload>/<peer>
//! <peer time / our time>` (time per operation, so that a peer that fails
//! requests — and so runs more, cheaper, operations — is compared fairly;
//! above 1 means we are faster), and `frag gtt/<workload>/<allocator>
//! <largest hole / free bytes>` of the layout each allocator is left with
//! (1 = all free space in one hole; for `offset-allocator` the padding of
//! its padded blocks counts as used).
//!
//! Run with `cargo bench -p pddgpu --bench gtt`. For profiling,
//! `GTT_BENCH_ONLY=<allocator substring>`, `GTT_BENCH_WORKLOAD=<workload
//! substring>` and `GTT_BENCH_RUNS=<n>` narrow the run, e.g.
//! `GTT_BENCH_ONLY=pddgpu GTT_BENCH_RUNS=1 perf record <bench binary>`.

// `unsafe` is confined to the C peers' module (FFI, `cpeers`).
#[path = "cpeers/mod.rs"]
mod cpeers;
mod support;

use pddgpu_ipc::progress::{seconds, Reporter};

use support::Rng;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpeers::{DrmMm, MmMode, MmNode};
use pddgpu::range::{InsertMode, RangeAllocator, RangeNode};

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
const APERTURE: u64 = 16 * GIB;
const MAX_PAGES: u64 = 4096; // 16 MiB
const CHURN_STEPS: usize = 200_000;
const RUNS: usize = 5;

/// One allocation request of a stream.
#[derive(Clone, Copy)]
struct Request {
    size: u64,
    align: u64,
    /// Allowed placement (`0..APERTURE` when unrestricted).
    range: (u64, u64),
}

/// The operations the workload needs from an allocator.
trait Alloc {
    type Handle: Copy;
    /// Allocates; returns the handle, the start and the bytes it really
    /// consumes.
    fn alloc(&mut self, r: &Request, mode: InsertMode) -> Option<(Self::Handle, u64, u64)>;
    fn free(&mut self, h: Self::Handle);
}

struct Ours(RangeAllocator);
impl Alloc for Ours {
    type Handle = RangeNode;
    #[inline]
    fn alloc(&mut self, r: &Request, mode: InsertMode) -> Option<(RangeNode, u64, u64)> {
        let n = self
            .0
            .insert(r.size, r.align, r.range.0..r.range.1, mode)
            .ok()?;
        debug_assert_eq!(n.start() % r.align, 0);
        Some((n, n.start(), n.size()))
    }
    #[inline]
    fn free(&mut self, h: RangeNode) {
        self.0.remove(h).unwrap();
    }
}

struct Drm(DrmMm);
impl Alloc for Drm {
    type Handle = MmNode;
    #[inline]
    fn alloc(&mut self, r: &Request, mode: InsertMode) -> Option<(MmNode, u64, u64)> {
        let mode = match mode {
            InsertMode::Best => MmMode::Best,
            InsertMode::Low => MmMode::Low,
            InsertMode::High => MmMode::High,
        };
        let (node, start) = self.0.insert(r.size, r.align, r.range, mode)?;
        debug_assert_eq!(start % r.align, 0);
        Some((node, start, r.size))
    }
    #[inline]
    fn free(&mut self, h: MmNode) {
        self.0.remove(h);
    }
}

struct RangeAlloc(range_alloc::RangeAllocator<u64>);
impl Alloc for RangeAlloc {
    type Handle = (u64, u64);
    #[inline]
    fn alloc(&mut self, r: &Request, _: InsertMode) -> Option<((u64, u64), u64, u64)> {
        let a = self.0.allocate_range_aligned(r.size, r.align).ok()?;
        debug_assert_eq!(a.start % r.align, 0);
        Some(((a.start, a.end), a.start, r.size))
    }
    #[inline]
    fn free(&mut self, h: (u64, u64)) {
        self.0.free_range(h.0..h.1);
    }
}

struct OffsetAlloc(offset_allocator::Allocator);
impl Alloc for OffsetAlloc {
    type Handle = offset_allocator::Allocation;
    #[inline]
    fn alloc(&mut self, r: &Request, _: InsertMode) -> Option<(Self::Handle, u64, u64)> {
        // No alignment support: ask for the padded size, in pages.
        let pages = (r.size + r.align - PAGE) / PAGE;
        let a = self.0.allocate(pages as u32)?;
        let start = a.offset as u64 * PAGE;
        let aligned = start.div_ceil(r.align) * r.align;
        debug_assert!(aligned + r.size <= start + pages * PAGE);
        Some((a, start, pages * PAGE))
    }
    #[inline]
    fn free(&mut self, h: Self::Handle) {
        self.0.free(h);
    }
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    mode: InsertMode,
    fill_percent: u64,
    mixed_align: bool,
    /// Requests carry pre-generated `start..end` restrictions.
    ranges: bool,
    /// Our search limit is `u32::MAX` (exact drm_mm choice rule).
    exact: bool,
    seed: u64,
}

impl Workload {
    /// Whether `range-alloc` and `offset-allocator` can run it
    /// (unrestricted `Best` only).
    fn simple(&self) -> bool {
        self.mode == InsertMode::Best && !self.ranges && !self.exact
    }
}

/// The pre-generated random streams of one workload, shared by every
/// allocator: the `i`-th allocation attempt of any allocator asks for
/// `requests[i]`, the `j`-th free takes victim `victims[j]` (scaled to the
/// live count by a multiply-shift). Nothing is drawn or allocated inside
/// the timed loop except the pushes onto the pre-sized live list.
struct Streams {
    requests: Vec<Request>,
    /// Random 32-bit victim picks, in order.
    victims: Vec<u32>,
}

impl Streams {
    fn new(w: Workload) -> Self {
        let mut rng = Rng(w.seed);
        // Enough for the fill plus every churn step; the run wraps around if
        // an allocator ever needs more.
        let n = CHURN_STEPS + (APERTURE / PAGE / MAX_PAGES * 2) as usize + 16;
        let requests = (0..n)
            .map(|_| {
                let size = (1 + rng.below(MAX_PAGES)) * PAGE;
                let align = if w.mixed_align {
                    PAGE << rng.below(10) // 4 KiB ..= 2 MiB
                } else {
                    PAGE
                };
                let range = if !w.ranges {
                    (0, APERTURE)
                } else {
                    match rng.below(4) {
                        0 => (0, GIB),
                        1 => {
                            let start = rng.below((APERTURE - 2 * GIB) / PAGE + 1) * PAGE;
                            (start, start + 2 * GIB)
                        }
                        _ => (0, APERTURE),
                    }
                };
                Request { size, align, range }
            })
            .collect();
        let victims = (0..n).map(|_| rng.next() as u32).collect();
        Streams { requests, victims }
    }
}

struct Outcome {
    time: Duration,
    ops: u64,
    failures: u64,
    /// Largest hole / free bytes of the final layout.
    frag: f64,
}

fn run<A: Alloc>(a: &mut A, w: Workload, st: &Streams) -> Outcome {
    let target = APERTURE / 100 * w.fill_percent;
    // (handle, start, consumed bytes, requested bytes)
    let mut live: Vec<(A::Handle, u64, u64, u64)> = Vec::with_capacity(1 << 16);
    let mut used = 0u64;
    let mut ops = 0u64;
    let mut failures = 0u64;
    let (mut ri, mut vi) = (0usize, 0usize);
    let mode = w.mode;
    let t = Instant::now();
    let mut alloc_one = |a: &mut A, live: &mut Vec<_>, used: &mut u64| {
        let r = &st.requests[ri];
        ri += 1;
        if ri == st.requests.len() {
            ri = 0;
        }
        match a.alloc(r, mode) {
            Some((h, start, consumed)) => {
                *used += r.size;
                live.push((h, black_box(start), consumed, r.size));
                true
            }
            None => false,
        }
    };
    // Fill up to the target (or the first failure).
    while used < target {
        ops += 1;
        if !alloc_one(a, &mut live, &mut used) {
            failures += 1;
            break;
        }
    }
    // Churn: below the target allocate, else (or after a failure) free a
    // random victim.
    for _ in 0..CHURN_STEPS {
        if used < target {
            ops += 1;
            if alloc_one(a, &mut live, &mut used) {
                continue;
            }
            failures += 1;
        }
        if !live.is_empty() {
            let r = st.victims[vi];
            vi += 1;
            if vi == st.victims.len() {
                vi = 0;
            }
            let i = ((u64::from(r) * live.len() as u64) >> 32) as usize;
            let (h, _, _, size) = live.swap_remove(i);
            used -= size;
            a.free(h);
            ops += 1;
        }
    }
    let time = t.elapsed();
    // Fragmentation of the final layout, from the consumed ranges.
    let mut spans: Vec<(u64, u64)> = live.iter().map(|&(_, s, c, _)| (s, s + c)).collect();
    spans.sort_unstable();
    let (mut at, mut largest, mut free) = (0u64, 0u64, 0u64);
    for &(s, e) in &spans {
        largest = largest.max(s - at);
        free += s - at;
        at = e;
    }
    largest = largest.max(APERTURE - at);
    free += APERTURE - at;
    for (h, ..) in live {
        a.free(h);
    }
    Outcome {
        time,
        ops,
        failures,
        frag: largest as f64 / free as f64,
    }
}

/// Keeps the fastest of several runs.
fn keep_fastest(best: &mut Option<Outcome>, o: Outcome) {
    if best.as_ref().is_none_or(|b| o.time < b.time) {
        *best = Some(o);
    }
}

/// Reads a bench tunable from the environment (for profiling runs).
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workloads, in print order.
fn workloads() -> Vec<Workload> {
    let w = |name, mode, fill_percent, mixed_align, ranges, exact, seed| Workload {
        name,
        mode,
        fill_percent,
        mixed_align,
        ranges,
        exact,
        seed,
    };
    use InsertMode::{Best, High, Low};
    vec![
        w("random-4k-50", Best, 50, false, false, false, 0x5eed_0050),
        w("random-4k-90", Best, 90, false, false, false, 0x5eed_0090),
        w("mixed-align-90", Best, 90, true, false, false, 0x5eed_a190),
        w("low-4k-90", Low, 90, false, false, false, 0x5eed_1090),
        w("high-4k-90", High, 90, false, false, false, 0x5eed_4090),
        w("low-mixed-90", Low, 90, true, false, false, 0x5eed_10a9),
        w("high-mixed-90", High, 90, true, false, false, 0x5eed_40a9),
        w("range-70", Best, 70, true, true, false, 0x5eed_7070),
        w(
            "mixed-align-90-exact",
            Best,
            90,
            true,
            false,
            true,
            0x5eed_a190,
        ),
    ]
}

fn main() {
    // `GTT_BENCH_ONLY=<substring>` runs only the matching allocators and
    // `GTT_BENCH_WORKLOAD=<substring>` runs only the matching workloads and
    // `GTT_BENCH_RUNS=<n>` sets the runs per allocator (e.g. for a
    // profiler); ratios are printed only when ours and the peer both ran.
    let only = std::env::var("GTT_BENCH_ONLY").unwrap_or_default();
    let only_workload = std::env::var("GTT_BENCH_WORKLOAD").unwrap_or_default();
    let runs = env_usize("GTT_BENCH_RUNS", RUNS).max(1);
    println!(
        "gtt bench: aperture {} GiB, sizes 4 KiB..16 MiB uniform, {CHURN_STEPS} churn steps after the fill, best of {runs} runs; \
         pddgpu lines use the workload's mode with search limit {} (u32::MAX in -exact workloads)",
        APERTURE >> 30,
        pddgpu::range::DEFAULT_SEARCH_LIMIT
    );
    let names = ["pddgpu", "drm_mm", "range-alloc", "offset-allocator"];
    let enabled = |name: &str| only.is_empty() || name.contains(only.as_str());
    let peers = match cpeers::load() {
        Ok(p) => {
            println!(
                "drm_mm: Linux drivers/gpu/drm/drm_mm.c from linux-source-6.12 ({} B per node, embedded in the caller's object)",
                p.mm_node_size()
            );
            Some(p)
        }
        Err(why) => {
            println!("gtt bench: peer drm_mm skipped: {why}");
            None
        }
    };
    let progress = Reporter::stderr("gtt bench");
    for w in workloads() {
        if !w.name.contains(only_workload.as_str()) {
            continue;
        }
        let step = progress.begin_counted(w.name, format!("{}: {runs} runs", w.name), runs as u64);
        let st = Streams::new(w);
        // Runs are interleaved (ours, drm_mm, range-alloc, offset-allocator,
        // ours, ...) so that load from other processes hits all alike.
        let mut best: [Option<Outcome>; 4] = [None, None, None, None];
        for _ in 0..runs {
            if enabled(names[0]) {
                let mut inner = RangeAllocator::new(0, APERTURE).unwrap();
                if w.exact {
                    inner.set_search_limit(u32::MAX);
                }
                keep_fastest(&mut best[0], run(&mut Ours(inner), w, &st));
            }
            if let Some(peers) = peers.filter(|_| enabled(names[1])) {
                let mut a = Drm(DrmMm::new(peers, 0, APERTURE));
                keep_fastest(&mut best[1], run(&mut a, w, &st));
            }
            if w.simple() && enabled(names[2]) {
                let mut a = RangeAlloc(range_alloc::RangeAllocator::new(0..APERTURE));
                keep_fastest(&mut best[2], run(&mut a, w, &st));
            }
            if w.simple() && enabled(names[3]) {
                let mut a = OffsetAlloc(offset_allocator::Allocator::with_max_allocs(
                    (APERTURE / PAGE) as u32,
                    1 << 18,
                ));
                keep_fastest(&mut best[3], run(&mut a, w, &st));
            }
            step.advance(1);
        }
        step.finish(format!("{}: done in {}", w.name, seconds(step.elapsed())));
        for (o, name) in best.iter().zip(names) {
            if let Some(o) = o {
                println!(
                    "time gtt/{}/{} {:.1} ns/op ({} ops, {} failed requests, {:.1} ms)",
                    w.name,
                    name,
                    o.time.as_nanos() as f64 / o.ops as f64,
                    o.ops,
                    o.failures,
                    o.time.as_secs_f64() * 1e3
                );
            }
        }
        let per_op = |o: &Outcome| o.time.as_secs_f64() / o.ops as f64;
        if let Some(ours) = &best[0] {
            for (o, name) in best.iter().zip(names).skip(1) {
                if let Some(o) = o {
                    println!(
                        "ratio gtt/{}/{} {:.2}",
                        w.name,
                        name,
                        per_op(o) / per_op(ours)
                    );
                }
            }
        }
        for (o, name) in best.iter().zip(names) {
            if let Some(o) = o {
                println!("frag gtt/{}/{} {:.3}", w.name, name, o.frag);
            }
        }
    }
}
