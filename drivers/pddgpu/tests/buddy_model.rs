//! Property test of the buddy allocator against a reference model: a
//! bitmap of the space's chunks plus the list of live allocations.
//!
//! Random sequences of allocations (all flag combinations, ranges, minimum
//! block sizes, odd sizes), frees (whole and piecewise), claims, and bad
//! frees (double, stale, foreign, misaligned, out of bounds, duplicated)
//! run on spaces of odd sizes. After every step:
//! - the model predicts exactly whether an allocation can succeed (a
//!   contiguous one iff an aligned free run exists in range; a split one
//!   iff enough aligned free granules exist in range), and the allocator
//!   must agree;
//! - returned blocks are aligned to their order, at least the minimum block
//!   size, inside the range, of exactly the rounded size, contiguous when
//!   asked, and never overlap live memory;
//! - rejected frees change nothing;
//! - `used + free == total`, `used` matches the model, and the allocator's
//!   full internal check passes (tiling, no unmerged buddies, lists, masks).
//!
//! When everything is freed the allocator must be back to its roots.
//!
//! About 1,600 cases × 800 operations; the test fails unless at least
//! 1,000,000 operations actually ran.

use std::ops::Range;

use pddgpu::buddy::{AllocFlags, Block, BuddyAllocator, BuddyError};
use proptest::prelude::*;

const CASES: u32 = 1600;
/// Sequences have 1..=1600 operations (about 800 on average), so a failure
/// shrinks to a short sequence.
const MAX_OPS_PER_CASE: usize = 1600;
/// Operations that must have run (allocations, frees, claims, rejected
/// frees — skipped no-ops not counted) for the test to pass.
const MIN_TOTAL_OPS: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        /// Size in chunks before the sub-chunk adjustment.
        chunks: u64,
        /// Bytes shaved off the size (tests rounding up to chunks).
        shave: u64,
        /// log2 of min block in chunks.
        min_order: u8,
        contiguous: bool,
        topdown: bool,
        /// Range as fractions of the space in 1/64ths; `None` = no RANGE.
        range: Option<(u8, u8)>,
    },
    Free {
        pick: usize,
        /// Free in two calls (the blocks split at this point).
        split: Option<usize>,
        /// Free through records rebuilt from (offset, order, tag) only,
        /// without the node hints (the slow, validating path).
        rebuild: bool,
    },
    /// Free an allocation that was already freed.
    StaleFree { pick: usize },
    /// Free a live allocation with one block forged in some way.
    BadFree { pick: usize, kind: u8 },
    /// Free a live allocation, then claim its blocks back.
    Reclaim { pick: usize },
    /// Claim the blocks of a live allocation (must fail: busy).
    ClaimBusy { pick: usize },
}

fn op_strategy(total_chunks: u64) -> impl Strategy<Value = Op> {
    let chunks = prop_oneof![
        6 => 1..=4u64,
        3 => 1..=32u64,
        1 => 1..=total_chunks.max(1) + 2,
    ];
    let range = prop_oneof![
        3 => Just(None),
        2 => (0u8..=64, 0u8..=64).prop_map(Some),
    ];
    let alloc = (
        chunks,
        0u64..8,
        0u8..=3,
        any::<bool>(),
        any::<bool>(),
        range,
    )
        .prop_map(
            |(chunks, shave, min_order, contiguous, topdown, range)| Op::Alloc {
                chunks,
                shave,
                min_order,
                contiguous,
                topdown,
                range,
            },
        );
    prop_oneof![
        10 => alloc,
        7 => (any::<usize>(), prop::option::weighted(0.2, any::<usize>()), prop::bool::weighted(0.2))
            .prop_map(|(pick, split, rebuild)| Op::Free { pick, split, rebuild }),
        1 => any::<usize>().prop_map(|pick| Op::StaleFree { pick }),
        1 => (any::<usize>(), 0u8..6).prop_map(|(pick, kind)| Op::BadFree { pick, kind }),
        1 => any::<usize>().prop_map(|pick| Op::Reclaim { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ClaimBusy { pick }),
    ]
}

fn case_strategy() -> impl Strategy<Value = (u8, u64, Vec<Op>)> {
    (prop_oneof![Just(12u8), Just(9u8)], 1u64..=600).prop_flat_map(|(shift, chunks)| {
        (
            Just(shift),
            Just(chunks),
            prop::collection::vec(op_strategy(chunks), 1..=MAX_OPS_PER_CASE),
        )
    })
}

/// The reference model: which chunks are in use.
struct Model {
    chunk: u64,
    busy: Vec<bool>,
    used: u64,
}

impl Model {
    fn chunks(&self) -> u64 {
        self.busy.len() as u64
    }

    fn mark(&mut self, block: &Block, busy: bool) {
        let first = (block.offset() / self.chunk) as usize;
        let count = (block.size() / self.chunk) as usize;
        for slot in &mut self.busy[first..first + count] {
            assert_ne!(
                *slot, busy,
                "block {block:?} overlaps live memory (or was not live)"
            );
            *slot = busy;
        }
        if busy {
            self.used += block.size();
        } else {
            self.used -= block.size();
        }
    }

    /// Whether `need` chunks fit under the request's rules, inside
    /// `start..end` (chunks), in granules of `granule` chunks.
    fn feasible(&self, need: u64, granule: u64, start: u64, end: u64, contiguous: bool) -> bool {
        let first = start.div_ceil(granule) * granule;
        if contiguous {
            let mut at = first;
            while at + need <= end {
                if (at..at + need).all(|c| !self.busy[c as usize]) {
                    return true;
                }
                at += granule;
            }
            false
        } else {
            let mut free_granules = 0;
            let mut at = first;
            while at + granule <= end {
                if (at..at + granule).all(|c| !self.busy[c as usize]) {
                    free_granules += 1;
                }
                at += granule;
            }
            free_granules * granule >= need
        }
    }
}

struct Live {
    blocks: Vec<Block>,
}

fn assert_consistent(a: &BuddyAllocator, m: &Model) {
    let stats = a.stats();
    assert_eq!(stats.used + stats.free, stats.total);
    assert_eq!(stats.total, m.chunks() * m.chunk);
    assert_eq!(
        stats.used, m.used,
        "allocator and model disagree on used bytes"
    );
    assert_eq!(
        stats.free_per_order.iter().sum::<u64>(),
        stats.free,
        "free bytes per order must add up"
    );
    if let Err(e) = a.check() {
        panic!("internal check failed: {e}");
    }
}

fn run_case(shift: u8, chunks: u64, ops: &[Op]) -> u64 {
    let mut executed = 0u64;
    let chunk = 1u64 << shift;
    let total = chunks * chunk;
    let mut a = BuddyAllocator::new(total, chunk).expect("valid space");
    let fresh = a.stats();
    let mut m = Model {
        chunk,
        busy: vec![false; chunks as usize],
        used: 0,
    };
    let mut live: Vec<Live> = Vec::new();
    let mut dead: Vec<Vec<Block>> = Vec::new();
    let largest_chunks = 1u64 << (63 - chunks.leading_zeros());

    for op in ops {
        match *op {
            Op::Alloc {
                chunks: c,
                shave,
                min_order,
                contiguous,
                topdown,
                range,
            } => {
                let size = (c * chunk).saturating_sub(shave.min(chunk - 1));
                let granule = 1u64 << min_order;
                let mut flags = AllocFlags::empty();
                if contiguous {
                    flags |= AllocFlags::CONTIGUOUS;
                }
                if topdown {
                    flags |= AllocFlags::TOPDOWN;
                }
                let (start, end) = match range {
                    Some((x, y)) => {
                        flags |= AllocFlags::RANGE;
                        (chunks * u64::from(x) / 64, chunks * u64::from(y) / 64)
                    }
                    None => (0, chunks),
                };
                let r: Range<u64> = start * chunk..end * chunk;
                let need = size.div_ceil(chunk).div_ceil(granule) * granule;
                let result = a.alloc(size, granule * chunk, flags, r.clone());
                let before = m.used;
                if granule > largest_chunks {
                    assert!(
                        matches!(result, Err(BuddyError::TooLarge { .. })),
                        "{result:?}"
                    );
                } else if range.is_some() && start >= end {
                    assert!(
                        matches!(result, Err(BuddyError::InvalidRange { .. })),
                        "{result:?}"
                    );
                } else if need > end - start {
                    assert!(
                        matches!(result, Err(BuddyError::TooLarge { .. })),
                        "{result:?}"
                    );
                } else {
                    let expect = m.feasible(need, granule, start, end, contiguous);
                    match result {
                        Ok(blocks) => {
                            assert!(expect, "allocated although the model says impossible");
                            let mut sum = 0;
                            for b in &blocks {
                                assert_eq!(b.chunk_shift(), shift);
                                assert_eq!(
                                    b.offset() % b.size(),
                                    0,
                                    "block not aligned to its order"
                                );
                                assert!(b.size() >= granule * chunk, "block below min block size");
                                assert!(
                                    b.offset() >= r.start && b.end() <= r.end,
                                    "block outside range"
                                );
                                sum += b.size();
                                m.mark(b, true);
                            }
                            assert_eq!(sum, need * chunk, "allocated size is not the rounded size");
                            if contiguous {
                                assert_eq!(blocks[0].offset() % (granule * chunk), 0);
                                for w in blocks.windows(2) {
                                    assert_eq!(
                                        w[0].end(),
                                        w[1].offset(),
                                        "contiguous run has a gap"
                                    );
                                }
                            }
                            live.push(Live {
                                blocks: blocks.to_vec(),
                            });
                        }
                        Err(BuddyError::NoSpace { .. }) => {
                            assert!(!expect, "no space although the model finds room");
                            assert_eq!(m.used, before);
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            }
            Op::Free {
                pick,
                split,
                rebuild,
            } => {
                if live.is_empty() {
                    continue;
                }
                let mut l = live.swap_remove(pick % live.len());
                if rebuild {
                    for b in &mut l.blocks {
                        *b = Block::new(b.offset(), b.order(), b.chunk_shift(), b.tag());
                    }
                }
                match split {
                    Some(at) if l.blocks.len() > 1 => {
                        let at = 1 + at % (l.blocks.len() - 1);
                        a.free(&l.blocks[..at]).expect("free first part");
                        a.free(&l.blocks[at..]).expect("free second part");
                    }
                    _ => a.free(&l.blocks).expect("free live allocation"),
                }
                for b in &l.blocks {
                    m.mark(b, false);
                }
                if dead.len() < 64 {
                    dead.push(l.blocks);
                } else {
                    let slot = pick % dead.len();
                    dead[slot] = l.blocks;
                }
            }
            Op::StaleFree { pick } => {
                if dead.is_empty() {
                    continue;
                }
                let blocks = &dead[pick % dead.len()];
                let used = a.used();
                assert!(a.free(blocks).is_err(), "stale free accepted");
                assert_eq!(a.used(), used);
            }
            Op::BadFree { pick, kind } => {
                if live.is_empty() {
                    continue;
                }
                let l = &live[pick % live.len()];
                let b = l.blocks[0];
                let forged = match kind {
                    0 => Block::new(b.offset(), b.order(), b.chunk_shift() + 1, b.tag()),
                    1 => Block::new(b.offset() + chunk, b.order(), b.chunk_shift(), b.tag()),
                    2 => Block::new(b.offset(), b.order() + 1, b.chunk_shift(), b.tag()),
                    3 => Block::new(total, 0, b.chunk_shift(), b.tag()),
                    4 => Block::new(b.offset(), b.order(), b.chunk_shift(), b.tag() ^ 0x5555),
                    _ => b, // duplicate
                };
                let mut blocks = l.blocks.clone();
                blocks.push(forged);
                let used = a.used();
                let leaves = a.leaf_count();
                assert!(
                    a.free(&blocks).is_err(),
                    "forged free accepted: kind {kind}"
                );
                assert_eq!(a.used(), used, "a rejected free changed the allocator");
                assert_eq!(
                    a.leaf_count(),
                    leaves,
                    "a rejected free changed the allocator"
                );
            }
            Op::Reclaim { pick } => {
                if live.is_empty() {
                    continue;
                }
                let l = &live[pick % live.len()];
                let used = a.used();
                a.free(&l.blocks).expect("free before reclaim");
                a.claim(&l.blocks).expect("reclaim freed blocks");
                assert_eq!(a.used(), used);
                // The reclaimed allocation must be freeable as before.
                let l = live.swap_remove(pick % live.len());
                a.free(&l.blocks).expect("free reclaimed allocation");
                for b in &l.blocks {
                    m.mark(b, false);
                }
            }
            Op::ClaimBusy { pick } => {
                if live.is_empty() {
                    continue;
                }
                let l = &live[pick % live.len()];
                let used = a.used();
                assert!(matches!(a.claim(&l.blocks), Err(BuddyError::Busy { .. })));
                assert_eq!(a.used(), used);
            }
        }
        assert_consistent(&a, &m);
        executed += 1;
    }

    for l in live.drain(..) {
        a.free(&l.blocks).expect("final free");
        for b in &l.blocks {
            m.mark(b, false);
        }
    }
    assert_consistent(&a, &m);
    assert!(
        a.is_pristine(),
        "not back to the initial roots after freeing everything"
    );
    assert_eq!(a.stats(), fresh, "stats differ from a fresh allocator");
    executed
}

#[test]
fn buddy_matches_reference_model() {
    let config = ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 4000,
        ..ProptestConfig::default()
    };
    let total = std::cell::Cell::new(0u64);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&case_strategy(), |(shift, chunks, ops)| {
        total.set(total.get() + run_case(shift, chunks, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let total = total.get();
    eprintln!("buddy model: {total} operations checked");
    assert!(total >= MIN_TOTAL_OPS, "only {total} operations ran");
}
