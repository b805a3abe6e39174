//! Metadata of the buddy allocator grows with its blocks, not with the
//! size of the space. Measured with a counting global allocator (this test
//! binary holds one test so nothing else allocates meanwhile).

#[path = "../benches/support/counting.rs"]
mod counting;

use counting::{live_bytes as heap, Counting};
use pddgpu::buddy::{AllocFlags, BuddyAllocator};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn metadata_is_proportional_to_blocks_not_to_space() {
    const K4: u64 = 4096;
    let before = heap();
    let small = BuddyAllocator::new(64 << 20, K4).unwrap();
    let small_bytes = heap() - before;
    let before = heap();
    let mut huge = BuddyAllocator::new(256 << 30, K4).unwrap();
    let huge_bytes = heap() - before;
    // A 4096× larger space costs (almost) the same: a fixed table of at
    // most 64 × 64 list heads plus a node per root.
    assert!(
        huge_bytes < 16 * 1024,
        "256 GiB allocator holds {huge_bytes} B"
    );
    assert!(
        huge_bytes < small_bytes * 4,
        "{huge_bytes} vs {small_bytes}"
    );
    drop(small);

    // 10,000 live 4 KiB..64 KiB allocations: bounded bytes per block.
    let mut held = Vec::with_capacity(10_000);
    let start = heap();
    let mut handle_bytes = 0isize;
    for i in 0..10_000u64 {
        let blocks = huge
            .alloc(K4 * (1 + i % 16), K4, AllocFlags::empty(), 0..0)
            .unwrap();
        handle_bytes += (blocks.capacity() * std::mem::size_of_val(&blocks[0])) as isize;
        held.push(blocks);
    }
    let leaves = huge.leaf_count() as isize;
    let meta = heap() - start - handle_bytes;
    assert!(meta > 0);
    assert!(
        meta / leaves < 64,
        "{} B of metadata per leaf ({meta} B for {leaves} leaves)",
        meta / leaves
    );
    for blocks in &held {
        huge.free(blocks).unwrap();
    }
    assert!(huge.is_pristine());
}
