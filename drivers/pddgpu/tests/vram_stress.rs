//! Stress: 100 threads × 1000 alloc/free pairs on one
//! shared VRAM manager, then exact accounting (nothing used, every root
//! whole again).

use std::sync::Arc;
use std::thread;

use pddgpu::bo::BoFlags;
use pddgpu::vram::{VramAllocation, VramConfig, VramManager};

const THREADS: u64 = 100;
const PAIRS: u64 = 1000;

#[test]
fn hundred_threads_thousand_pairs_each() {
    let manager = Arc::new(VramManager::new(VramConfig::new(1 << 30, 256 << 20)).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let m = Arc::clone(&manager);
            thread::spawn(move || {
                let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut held: Vec<VramAllocation> = Vec::new();
                let mut allocated = 0u64;
                for i in 0..PAIRS {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = 4096 + rng % (512 * 1024);
                    let flags = match rng % 5 {
                        0 => BoFlags::VISIBLE,
                        1 => BoFlags::CONTIGUOUS,
                        _ => BoFlags::empty(),
                    };
                    let a = m.alloc(size, 0, flags).expect("1 GiB never runs out here");
                    assert!(a.allocated_size() >= size);
                    if flags.contains(BoFlags::VISIBLE) {
                        assert!(a.blocks().iter().all(|b| b.end() <= 256 << 20));
                    }
                    allocated += 1;
                    held.push(a);
                    // Keep up to 4 live per thread, freeing in mixed order.
                    if held.len() > 4 || i + 1 == PAIRS {
                        let victim = held.swap_remove((rng % held.len() as u64) as usize);
                        m.free(&victim).expect("free own allocation");
                    }
                }
                for a in held.drain(..) {
                    m.free(&a).expect("free remaining");
                }
                allocated
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, THREADS * PAIRS);
    let stats = manager.get_stats();
    assert_eq!(stats.used_size, 0);
    assert_eq!(stats.visible_used, 0);
    assert_eq!(stats.allocations, 0);
    assert_eq!(stats.block_count, 0);
    assert_eq!(stats.free_size, stats.total_size);
    assert_eq!(
        stats.free_block_count, 1,
        "all buddies merged back into the root"
    );
    assert_eq!(stats.largest_free, 1 << 30);
    assert!(manager.is_healthy());
}
