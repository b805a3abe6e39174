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
//! the padded block). Every allocator sees the same random stream; each
//! workload runs five times per allocator, interleaved, and the fastest run
//! counts.
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
//! Run with `cargo bench -p pddgpu --bench gtt`.

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

struct Outcome {
    time: Duration,
    ops: u64,
    failures: u64,
    /// Largest hole / free bytes of the final layout.
    frag: f64,
}

fn run<A: Alloc>(a: &mut A, w: Workload) -> Outcome {
    let mut rng = Rng(w.seed);
    let target = APERTURE / 100 * w.fill_percent;
    // (handle, start, consumed bytes, requested bytes)
    let mut live: Vec<(A::Handle, u64, u64, u64)> = Vec::with_capacity(1 << 16);
    let mut used = 0u64;
    let mut ops = 0u64;
    let mut failures = 0u64;
    let t = Instant::now();
    let alloc_one = |a: &mut A, rng: &mut Rng, live: &mut Vec<_>, used: &mut u64| {
        let size = (1 + rng.below(MAX_PAGES)) * PAGE;
        let align = if w.mixed_align {
            PAGE << rng.below(10) // 4 KiB ..= 2 MiB
        } else {
            PAGE
        };
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
        if !alloc_one(a, &mut rng, &mut live, &mut used) {
            failures += 1;
            break;
        }
    }
    // Churn: below the target allocate, else (or after a failure) free a
    // random victim.
    for _ in 0..CHURN_STEPS {
        if used < target {
            ops += 1;
            if alloc_one(a, &mut rng, &mut live, &mut used) {
                continue;
            }
            failures += 1;
        }
        if !live.is_empty() {
            let i = rng.below(live.len() as u64) as usize;
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

fn main() {
    println!(
        "gtt bench: aperture {} GiB, sizes 4 KiB..16 MiB uniform, {CHURN_STEPS} churn steps after the fill, best of {RUNS} runs",
        APERTURE >> 30
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
    for w in workloads {
        // Runs are interleaved (ours, range-alloc, offset-allocator, ours,
        // ...) so that load from other processes hits all three alike.
        let (mut ours, mut ra, mut oa) = (None, None, None);
        for _ in 0..RUNS {
            keep_fastest(
                &mut ours,
                run(&mut Ours(RangeAllocator::new(0, APERTURE).unwrap()), w),
            );
            keep_fastest(
                &mut ra,
                run(
                    &mut RangeAlloc(range_alloc::RangeAllocator::new(0..APERTURE)),
                    w,
                ),
            );
            let mut off = OffsetAlloc(offset_allocator::Allocator::with_max_allocs(
                (APERTURE / PAGE) as u32,
                1 << 18,
            ));
            keep_fastest(&mut oa, run(&mut off, w));
        }
        let results = [
            (ours.expect("RUNS > 0"), "pddgpu"),
            (ra.expect("RUNS > 0"), "range-alloc"),
            (oa.expect("RUNS > 0"), "offset-allocator"),
        ];
        for (o, name) in &results {
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
        let ours = &results[0].0;
        let per_op = |o: &Outcome| o.time.as_secs_f64() / o.ops as f64;
        for (o, name) in &results[1..] {
            println!(
                "ratio gtt/{}/{} {:.2}",
                w.name,
                name,
                per_op(o) / per_op(ours)
            );
        }
        for (o, name) in &results {
            println!("frag gtt/{}/{} {:.3}", w.name, name, o.frag);
        }
    }
}
