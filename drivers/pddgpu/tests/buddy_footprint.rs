//! Metadata of the buddy allocator grows with its blocks, not with the
//! size of the space. Measured with a counting global allocator (this test
//! binary holds one test so nothing else allocates meanwhile).

// The counting allocator is test instrumentation: a `GlobalAlloc` impl is
// `unsafe` by definition.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use pddgpu::buddy::{AllocFlags, BuddyAllocator};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged, counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> isize {
    LIVE.load(Ordering::Relaxed)
}

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
