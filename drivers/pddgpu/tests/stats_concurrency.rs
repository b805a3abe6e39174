//! Many writers and readers on one [`MemoryStats`]: every read keeps the
//! snapshot invariants, includes every update that completed before it
//! began and none that had not begun when it returned, never goes back
//! from the same reader's previous read, and the final read equals the
//! sum of what the writers did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pddgpu::device::Domain;
use pddgpu::stats::{Delta, DomainCounters, MemoryStats, StatsBatch};

const PAGE: u64 = 4096;
const WRITERS: usize = 4;
const READERS: usize = 3;
const STEPS: usize = 100_000;

/// Allocations begun and completed per domain (bumped by the writers
/// around each update that allocates).
#[derive(Default)]
struct Progress {
    begun: [AtomicU64; 2],
    completed: [AtomicU64; 2],
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Writer `w`: allocations, frees, failures, retries and batched frees
/// (an owner's exit, across both domains) in a random mix.
///
/// Returns what it did to each domain, in the counters' own terms: the
/// bytes of the BOs it still holds, and its allocations, frees, failures
/// and retries (`bo_count` and the peaks are left at 0: the final check
/// does not compare them).
fn writer(stats: &MemoryStats, progress: &Progress, w: usize) -> [DomainCounters; 2] {
    let mut seed = w as u64 + 1;
    let mut live: [Vec<(u64, u64, u64)>; 2] = [Vec::new(), Vec::new()];
    let mut tally = [DomainCounters::default(); 2];
    for _ in 0..STEPS {
        let d = if next(&mut seed) % 3 == 0 {
            Domain::Gtt
        } else {
            Domain::Vram
        };
        let i = d.index();
        match next(&mut seed) % 16 {
            0 => {
                stats.apply(d, &Delta::failure());
                tally[i].failures += 1;
            }
            1 => {
                stats.apply(d, &Delta::retry());
                tally[i].retries += 1;
            }
            2 => {
                // Everything this writer holds, freed as one batch.
                let mut batch = StatsBatch::new();
                for (k, bos) in live.iter_mut().enumerate() {
                    for (a, r, v) in bos.drain(..) {
                        batch.add(Domain::ALL[k], &Delta::free(a, r, v));
                        tally[k].frees += 1;
                    }
                }
                stats.apply_batch(&batch);
            }
            3..=8 if !live[i].is_empty() => {
                let n = live[i].len();
                let (a, r, v) = live[i].swap_remove(next(&mut seed) as usize % n);
                stats.apply(d, &Delta::free(a, r, v));
                tally[i].frees += 1;
            }
            _ => {
                let pages = 1 + next(&mut seed) % 16;
                let requested = pages * PAGE - next(&mut seed) % PAGE;
                let visible = if d == Domain::Vram && pages % 2 == 0 {
                    pages * PAGE
                } else {
                    0
                };
                progress.begun[i].fetch_add(1, Ordering::SeqCst);
                stats.apply(d, &Delta::alloc(pages * PAGE, requested, visible));
                progress.completed[i].fetch_add(1, Ordering::SeqCst);
                live[i].push((pages * PAGE, requested, visible));
                tally[i].allocs += 1;
            }
        }
    }
    for (k, bos) in live.iter().enumerate() {
        for (a, r, v) in bos {
            tally[k].allocated_bytes += a;
            tally[k].requested_bytes += r;
            tally[k].visible_bytes += v;
        }
    }
    tally
}

fn check_invariants(c: &DomainCounters) {
    assert_eq!(c.allocs - c.frees, c.bo_count, "{c:?}");
    assert!(c.allocated_bytes <= c.peak_allocated_bytes, "{c:?}");
    assert!(c.bo_count <= c.peak_bo_count, "{c:?}");
    assert!(c.requested_bytes <= c.allocated_bytes, "{c:?}");
    assert!(c.visible_bytes <= c.allocated_bytes, "{c:?}");
    assert!(c.allocated_bytes <= c.bo_count * 16 * PAGE, "{c:?}");
}

/// Counters that only grow.
fn monotone(c: &DomainCounters) -> [u64; 6] {
    [
        c.allocs,
        c.frees,
        c.failures,
        c.retries,
        c.peak_allocated_bytes,
        c.peak_bo_count,
    ]
}

#[test]
fn writers_and_readers_keep_every_read_exact_and_consistent() {
    let stats = Arc::new(MemoryStats::new());
    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (stats, progress, done) = (stats.clone(), progress.clone(), done.clone());
            std::thread::spawn(move || {
                let mut previous = stats.snapshot();
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let completed = progress
                        .completed
                        .each_ref()
                        .map(|c| c.load(Ordering::SeqCst));
                    let snap = stats.snapshot();
                    let begun = progress.begun.each_ref().map(|c| c.load(Ordering::SeqCst));
                    for d in Domain::ALL {
                        let c = snap.domain(d);
                        check_invariants(c);
                        let i = d.index();
                        assert!(
                            c.allocs >= completed[i],
                            "a completed allocation is missing"
                        );
                        assert!(
                            c.allocs <= begun[i],
                            "an allocation not yet begun is counted"
                        );
                        let (now, before) = (monotone(c), monotone(previous.domain(d)));
                        assert!(
                            now.iter().zip(before).all(|(n, b)| *n >= b),
                            "went back: {before:?} -> {now:?}"
                        );
                    }
                    assert!(snap.updates >= previous.updates);
                    previous = snap;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stats, progress) = (stats.clone(), progress.clone());
            std::thread::spawn(move || writer(&stats, &progress, w))
        })
        .collect();
    let tallies: Vec<[DomainCounters; 2]> =
        writers.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(reads > 0);

    let end = stats.snapshot();
    for d in Domain::ALL {
        let c = end.domain(d);
        check_invariants(c);
        let sum =
            |f: fn(&DomainCounters) -> u64| tallies.iter().map(|t| f(&t[d.index()])).sum::<u64>();
        assert_eq!(c.allocated_bytes, sum(|t| t.allocated_bytes));
        assert_eq!(c.requested_bytes, sum(|t| t.requested_bytes));
        assert_eq!(c.visible_bytes, sum(|t| t.visible_bytes));
        assert_eq!(c.allocs, sum(|t| t.allocs));
        assert_eq!(c.frees, sum(|t| t.frees));
        assert_eq!(c.failures, sum(|t| t.failures));
        assert_eq!(c.retries, sum(|t| t.retries));
        assert_eq!(
            c.allocs,
            progress.completed[d.index()].load(Ordering::SeqCst)
        );
    }
}
