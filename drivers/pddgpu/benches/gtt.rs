//! GTT range-allocator benchmark: our `RangeAllocator` against `range-alloc`
//! (wgpu's range allocator) and `offset-allocator` on the same seeded
//! workloads, in one run.
//!
//! Workloads (aperture 16 GiB, sizes uniform in 4 KiB steps from 4 KiB to
//! 16 MiB): fill to a target, then churn — free a random live allocation
//! while at or above the target, allocate otherwise — for a fixed number of
//! steps. `random-4k-50` / `random-4k-90` ask for 4 KiB alignment at 50 % /
//! 90 % fill; `mixed-align-90` asks for random power-of-two alignments from
//! 4 KiB to 2 MiB at 90 % fill (`offset-allocator` has no alignment, so it
//! gets the padded size `size + align - 4 KiB` and the bench aligns inside
//! the padded block). Every allocator sees the same pre-generated request
//! and victim streams (nothing is drawn or divided inside the timed loop);
//! each workload runs five times per allocator, interleaved, and the fastest
//! run counts. Our lines use `InsertMode::Best` over the whole aperture with
//! the default search limit, as the GTT manager's default allocations do.
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
//! `GTT_BENCH_ONLY=pddgpu GTT_BENCH_RUNS=1 valgrind --tool=callgrind <bench
//! binary>` for reproducible instruction counts.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pddgpu::range::{InsertMode, RangeAllocator, RangeNode};

const PAGE: u64 = 4096;
const APERTURE: u64 = 16 << 30;
const MAX_PAGES: u64 = 4096; // 16 MiB
const CHURN_STEPS: usize = 200_000;
const RUNS: usize = 5;

/// The operations the workload needs from an allocator.
trait Alloc {
    type Handle: Copy;
    /// Allocates; returns the handle and the bytes it really consumes.
    fn alloc(&mut self, size: u64, align: u64) -> Option<(Self::Handle, u64, u64)>;
    fn free(&mut self, h: Self::Handle);
}

struct Ours(RangeAllocator);
impl Alloc for Ours {
    type Handle = RangeNode;
    fn alloc(&mut self, size: u64, align: u64) -> Option<(RangeNode, u64, u64)> {
        let n = self
            .0
            .insert(size, align, 0..u64::MAX, InsertMode::Best)
            .ok()?;
        debug_assert_eq!(n.start() % align, 0);
        Some((n, n.start(), n.size()))
    }
    fn free(&mut self, h: RangeNode) {
        self.0.remove(h).unwrap();
    }
}

struct RangeAlloc(range_alloc::RangeAllocator<u64>);
impl Alloc for RangeAlloc {
    type Handle = (u64, u64);
    fn alloc(&mut self, size: u64, align: u64) -> Option<((u64, u64), u64, u64)> {
        let r = self.0.allocate_range_aligned(size, align).ok()?;
        debug_assert_eq!(r.start % align, 0);
        Some(((r.start, r.end), r.start, size))
    }
    fn free(&mut self, h: (u64, u64)) {
        self.0.free_range(h.0..h.1);
    }
}

struct OffsetAlloc(offset_allocator::Allocator);
impl Alloc for OffsetAlloc {
    type Handle = offset_allocator::Allocation;
    fn alloc(&mut self, size: u64, align: u64) -> Option<(Self::Handle, u64, u64)> {
        // No alignment support: ask for the padded size, in pages.
        let pages = (size + align - PAGE) / PAGE;
        let a = self.0.allocate(pages as u32)?;
        let start = a.offset as u64 * PAGE;
        let aligned = start.div_ceil(align) * align;
        debug_assert!(aligned + size <= start + pages * PAGE);
        Some((a, start, pages * PAGE))
    }
    fn free(&mut self, h: Self::Handle) {
        self.0.free(h);
    }
}

/// splitmix64: a small seeded generator, identical for every allocator.
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
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    fill_percent: u64,
    mixed_align: bool,
    seed: u64,
}

/// The pre-generated random streams of one workload, shared by every
/// allocator: the `i`-th allocation attempt of any allocator asks for
/// `requests[i]`, the `j`-th free takes victim `victims[j]` (scaled to the
/// live count by a multiply-shift). Nothing is drawn or allocated inside
/// the timed loop except the pushes onto the pre-sized live list.
struct Streams {
    /// `(size, align)` of each allocation attempt, in order.
    requests: Vec<(u64, u64)>,
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
                (size, align)
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
    let t = Instant::now();
    let mut alloc_one = |a: &mut A, live: &mut Vec<_>, used: &mut u64| {
        let (size, align) = st.requests[ri];
        ri += 1;
        if ri == st.requests.len() {
            ri = 0;
        }
        match a.alloc(size, align) {
            Some((h, start, consumed)) => {
                *used += size;
                live.push((h, black_box(start), consumed, size));
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

fn main() {
    // `GTT_BENCH_ONLY=<substring>` runs only the matching allocators and
    // `GTT_BENCH_WORKLOAD=<substring>` runs only the matching workloads and
    // `GTT_BENCH_RUNS=<n>` sets the runs per allocator (e.g. for callgrind);
    // ratios are printed only when ours and the peer both ran.
    let only = std::env::var("GTT_BENCH_ONLY").unwrap_or_default();
    let only_workload = std::env::var("GTT_BENCH_WORKLOAD").unwrap_or_default();
    let runs = env_usize("GTT_BENCH_RUNS", RUNS).max(1);
    println!(
        "gtt bench: aperture {} GiB, sizes 4 KiB..16 MiB uniform, {CHURN_STEPS} churn steps after the fill, best of {runs} runs; \
         pddgpu lines use InsertMode::Best over the whole range (the GTT manager's default mode), search limit {}",
        APERTURE >> 30,
        pddgpu::range::DEFAULT_SEARCH_LIMIT
    );
    let workloads = [
        Workload {
            name: "random-4k-50",
            fill_percent: 50,
            mixed_align: false,
            seed: 0x5eed_0050,
        },
        Workload {
            name: "random-4k-90",
            fill_percent: 90,
            mixed_align: false,
            seed: 0x5eed_0090,
        },
        Workload {
            name: "mixed-align-90",
            fill_percent: 90,
            mixed_align: true,
            seed: 0x5eed_a190,
        },
    ];
    let names = ["pddgpu", "range-alloc", "offset-allocator"];
    let enabled = |name: &str| only.is_empty() || name.contains(only.as_str());
    for w in workloads {
        if !w.name.contains(only_workload.as_str()) {
            continue;
        }
        let st = Streams::new(w);
        // Runs are interleaved (ours, range-alloc, offset-allocator, ours,
        // ...) so that load from other processes hits all three alike.
        let mut best: [Option<Outcome>; 3] = [None, None, None];
        for _ in 0..runs {
            if enabled(names[0]) {
                let mut a = Ours(RangeAllocator::new(0, APERTURE).unwrap());
                keep_fastest(&mut best[0], run(&mut a, w, &st));
            }
            if enabled(names[1]) {
                let mut a = RangeAlloc(range_alloc::RangeAllocator::new(0..APERTURE));
                keep_fastest(&mut best[1], run(&mut a, w, &st));
            }
            if enabled(names[2]) {
                let mut a = OffsetAlloc(offset_allocator::Allocator::with_max_allocs(
                    (APERTURE / PAGE) as u32,
                    1 << 18,
                ));
                keep_fastest(&mut best[2], run(&mut a, w, &st));
            }
        }
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
