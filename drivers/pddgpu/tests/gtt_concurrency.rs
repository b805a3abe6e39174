//! The GTT manager under many threads: 100 threads × 1000 allocate/free
//! operations on one manager with exact accounting afterwards, and
//! lock-free statistics that are always a consistent snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use pddgpu::gtt::{GttConfig, GttManager, GTT_PAGE_SIZE};
use pddgpu::manager::ManagerError;
use pddgpu::range::{InsertMode, RangeNode};

const THREADS: usize = 100;
const OPS_PER_THREAD: usize = 1000;

#[test]
fn hundred_threads_thousand_ops_exact_accounting() {
    // Small enough that threads compete for space and sometimes get NoSpace.
    let m = Arc::new(GttManager::new(GttConfig::new(0, 1024 * GTT_PAGE_SIZE)).unwrap());
    let start = Arc::new(Barrier::new(THREADS));
    let survivors = Arc::new(Mutex::new(Vec::<RangeNode>::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let no_space = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (start, m, survivors, ops, no_space) = (
                Arc::clone(&start),
                Arc::clone(&m),
                Arc::clone(&survivors),
                Arc::clone(&ops),
                Arc::clone(&no_space),
            );
            thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0x2545_F491);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<RangeNode> = Vec::new();
                start.wait();
                for i in 0..OPS_PER_THREAD {
                    if mine.len() < 4 && (mine.is_empty() || next() % 2 == 0) {
                        let size = 1 + next() % (16 * GTT_PAGE_SIZE);
                        let align = 1u64 << (next() % 14);
                        let mode = [InsertMode::Best, InsertMode::Low, InsertMode::High][i % 3];
                        match m.alloc(size, align, None, mode) {
                            Ok(n) => {
                                assert_eq!(n.size(), size);
                                assert_eq!(n.start() % align, 0);
                                mine.push(n);
                            }
                            Err(ManagerError::NoSpace { .. }) => {
                                no_space.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    } else {
                        let k = (next() % mine.len() as u64) as usize;
                        m.free(&mine.swap_remove(k)).unwrap();
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                survivors.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        ops.load(Ordering::Relaxed),
        (THREADS * OPS_PER_THREAD) as u64
    );

    // What the threads kept is exactly what the manager accounts for, and
    // no two of those nodes overlap.
    let mut kept = survivors.lock().unwrap().clone();
    let s = m.get_stats();
    assert_eq!(s.node_count, kept.len() as u64);
    assert_eq!(s.used_size, kept.iter().map(RangeNode::size).sum::<u64>());
    assert_eq!(s.free_size, s.total_size - s.used_size);
    kept.sort_by_key(RangeNode::start);
    assert!(
        kept.windows(2).all(|w| w[0].end() <= w[1].start()),
        "overlap"
    );
    assert_eq!(m.audit(), Ok(()));
    println!(
        "{} ops, {} NoSpace answers, {} nodes kept",
        ops.load(Ordering::Relaxed),
        no_space.load(Ordering::Relaxed),
        kept.len()
    );

    for n in &kept {
        m.free(n).unwrap();
    }
    let s = m.get_stats();
    assert_eq!((s.used_size, s.node_count, s.hole_count), (0, 0, 1));
    assert_eq!(s.largest_hole, s.total_size);
    assert!(s.is_healthy);
}

#[test]
fn lock_free_stats_are_consistent_snapshots() {
    // Every node is one page, so a consistent snapshot has
    // used == nodes * page; a torn read would break that.
    let m = Arc::new(GttManager::new(GttConfig::new(0, 1024 * GTT_PAGE_SIZE)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (m, stop) = (Arc::clone(&m), Arc::clone(&stop));
            thread::spawn(move || {
                let mut mine = Vec::new();
                for round in 0..20_000u32 {
                    if mine.len() < 64 && round % 3 != 2 {
                        if let Ok(n) = m.alloc(GTT_PAGE_SIZE, 0, None, InsertMode::Best) {
                            mine.push(n);
                        }
                    } else if let Some(n) = mine.pop() {
                        m.free(&n).unwrap();
                    }
                }
                for n in mine {
                    m.free(&n).unwrap();
                }
                stop.store(true, Ordering::Release);
            })
        })
        .collect();
    let mut reads = 0u64;
    while !stop.load(Ordering::Acquire) || reads < 1000 {
        let s = m.get_stats();
        assert_eq!(
            s.used_size,
            s.node_count * GTT_PAGE_SIZE,
            "torn snapshot {s:?}"
        );
        assert_eq!(s.used_size + s.free_size, s.total_size);
        assert!(s.largest_hole <= s.free_size);
        reads += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    let s = m.get_stats();
    assert_eq!((s.used_size, s.node_count), (0, 0));
}
