//! Single-threaded create+free loops on an empty 8 GiB buddy allocator, for
//! counting instructions per pair with callgrind (deterministic where
//! timings on a shared machine are not):
//!
//! ```text
//! cargo build --release -p pddgpu --example buddy_pairs
//! valgrind --tool=callgrind --toggle-collect='*pairs_4k*' target/release/examples/buddy_pairs 4k
//! valgrind --tool=callgrind --toggle-collect='*pairs_stream*' target/release/examples/buddy_pairs stream
//! ```
//!
//! `4k`: 100,000 pairs of one 4 KiB block. `stream`: the 100 × 1000 size
//! streams of the `vram/threads` bench (4 KiB–1 MiB, log-uniform, same
//! seeds) run one after the other: behind the bench's mutex only one
//! allocation is ever live, so this is the same allocator work without the
//! threads. Divide the collected instructions by the pair count (printed).

use std::hint::black_box;

use pddgpu::buddy::{AllocFlags, BlockList, BuddyAllocator};

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// splitmix64, as the benchmarks' `Rng`.
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

    /// Log-uniform page count in `1..=max_pages` (the benches' `pages`).
    fn pages(&mut self, max_pages: u64) -> u64 {
        let max_exp = 63 - max_pages.leading_zeros() as u64;
        let lo = 1u64 << self.below(max_exp + 1);
        let hi = (lo * 2 - 1).min(max_pages);
        lo + self.below(hi - lo + 1)
    }
}

#[inline(never)]
fn pairs_4k(buddy: &mut BuddyAllocator, list: &mut BlockList, n: usize) {
    for _ in 0..n {
        buddy
            .alloc_into(PAGE, PAGE, AllocFlags::empty(), 0..0, list)
            .expect("alloc");
        buddy.free(list).expect("free");
        list.clear();
    }
}

#[inline(never)]
fn pairs_stream(buddy: &mut BuddyAllocator, list: &mut BlockList, sizes: &[u64]) {
    for &pages in sizes {
        buddy
            .alloc_into(pages * PAGE, PAGE, AllocFlags::empty(), 0..0, list)
            .expect("alloc");
        buddy.free(list).expect("free");
        list.clear();
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "4k".into());
    let mut buddy = BuddyAllocator::new(8 * GIB, PAGE).expect("space");
    let mut list = BlockList::new();
    let pairs = match mode.as_str() {
        "4k" => {
            let n = 100_000;
            pairs_4k(&mut buddy, &mut list, n);
            n
        }
        _ => {
            let sizes: Vec<u64> = (0..100)
                .flat_map(|t| {
                    let mut rng = Rng(0x5EED_7000 + t as u64);
                    (0..1000).map(move |_| rng.pages(MIB / PAGE))
                })
                .collect();
            pairs_stream(&mut buddy, &mut list, black_box(&sizes));
            sizes.len()
        }
    };
    assert!(buddy.is_pristine());
    println!("{mode}: {pairs} pairs");
}
