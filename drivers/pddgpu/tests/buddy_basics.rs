//! Buddy allocator behaviour that the model test does not pin down:
//! geometry of odd-sized spaces, drm_buddy-style splitting and trimming,
//! placement (top-down, range), huge spaces, and each rejected input.

use pddgpu::buddy::{AllocFlags, Block, BuddyAllocator, BuddyError};

const K4: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const NONE: AllocFlags = AllocFlags::empty();

/// Frees each list in order, then checks the allocator is as it started.
fn free_to_pristine(a: &mut BuddyAllocator, lists: &[&[Block]]) {
    for blocks in lists {
        a.free(blocks).unwrap();
    }
    assert!(a.is_pristine());
}

#[test]
fn odd_sizes_split_into_power_of_two_roots() {
    let a = BuddyAllocator::new(12 * K4 + 100, K4).unwrap();
    assert_eq!(a.size(), 12 * K4, "rounded down to whole chunks");
    let roots: Vec<(u64, u64)> = a.roots().map(|b| (b.offset(), b.size())).collect();
    assert_eq!(roots, vec![(0, 8 * K4), (8 * K4, 4 * K4)]);
    let s = a.stats();
    assert_eq!(
        (s.total, s.used, s.free, s.roots, s.free_blocks),
        (12 * K4, 0, 12 * K4, 2, 2)
    );
    assert_eq!(s.largest_free, 8 * K4);
    assert_eq!(s.free_per_order[3], 8 * K4);
    assert_eq!(s.free_per_order[2], 4 * K4);
    assert!(a.is_pristine());
    assert_eq!(
        BuddyAllocator::new(100, 4096).unwrap_err(),
        BuddyError::SpaceTooSmall {
            size: 100,
            chunk_size: 4096
        }
    );
    assert_eq!(
        BuddyAllocator::new(1 << 20, 3000).unwrap_err(),
        BuddyError::InvalidChunkSize(3000)
    );
}

#[test]
fn split_allocations_take_largest_blocks_first() {
    let mut a = BuddyAllocator::new(64 * K4, K4).unwrap();
    let blocks = a.alloc(7 * K4, K4, NONE, 0..0).unwrap();
    let sizes: Vec<u64> = blocks.iter().map(Block::size).collect();
    assert_eq!(sizes, vec![4 * K4, 2 * K4, K4]);
    assert_eq!(a.used(), 7 * K4);
    assert_eq!(a.allocated_blocks(), 3);
    // min block size rounds the request up and bounds every block.
    let b = a.alloc(5 * K4, 4 * K4, NONE, 0..0).unwrap();
    assert!(b.iter().all(|x| x.size() >= 4 * K4));
    assert_eq!(b.iter().map(Block::size).sum::<u64>(), 8 * K4);
    free_to_pristine(&mut a, &[&blocks, &b]);
}

#[test]
fn contiguous_rounds_up_then_trims_the_tail() {
    let mut a = BuddyAllocator::new(64 * MIB, K4).unwrap();
    let run = a.alloc(5 * MIB, K4, AllocFlags::CONTIGUOUS, 0..0).unwrap();
    assert_eq!(run.iter().map(Block::size).sum::<u64>(), 5 * MIB);
    for w in run.windows(2) {
        assert_eq!(w[0].end(), w[1].offset());
    }
    assert_eq!(
        run[0].offset() % (8 * MIB),
        0,
        "placed at a power-of-two boundary"
    );
    // The trimmed 3 MiB tail is free again, right after the run.
    assert_eq!(a.used(), 5 * MIB);
    let tail = a
        .alloc(
            3 * MIB,
            K4,
            AllocFlags::CONTIGUOUS | AllocFlags::RANGE,
            run[0].offset() + 5 * MIB..run[0].offset() + 8 * MIB,
        )
        .unwrap();
    assert_eq!(tail[0].offset(), run[0].offset() + 5 * MIB);
    free_to_pristine(&mut a, &[&run, &tail]);
    // Top-down keeps the high end of the block.
    let top = a
        .alloc(
            3 * MIB,
            K4,
            AllocFlags::CONTIGUOUS | AllocFlags::TOPDOWN,
            0..0,
        )
        .unwrap();
    assert_eq!(top.last().unwrap().end(), 64 * MIB);
    free_to_pristine(&mut a, &[&top]);
}

#[test]
fn contiguous_tries_harder_across_adjacent_free_blocks() {
    // 12 chunks = roots of 8 and 4: 12 contiguous chunks exist only across
    // the two roots.
    let mut a = BuddyAllocator::new(12 * K4, K4).unwrap();
    let run = a.alloc(12 * K4, K4, AllocFlags::CONTIGUOUS, 0..0).unwrap();
    assert_eq!(run.len(), 2);
    assert_eq!((run[0].offset(), run[1].offset()), (0, 8 * K4));
    a.free(&run).unwrap();
    // A run straddling a buddy boundary: free 4..12 only.
    let low = a.alloc(4 * K4, K4, AllocFlags::RANGE, 0..4 * K4).unwrap();
    let run = a
        .alloc(6 * K4, 2 * K4, AllocFlags::CONTIGUOUS, 0..0)
        .unwrap();
    assert_eq!(run[0].offset(), 4 * K4);
    assert_eq!(run.iter().map(Block::size).sum::<u64>(), 6 * K4);
    assert_eq!(
        a.alloc(4 * K4, K4, AllocFlags::CONTIGUOUS, 0..0),
        Err(BuddyError::NoSpace { size: 4 * K4 })
    );
    free_to_pristine(&mut a, &[&low, &run]);
}

#[test]
fn placement_topdown_and_range() {
    let mut a = BuddyAllocator::new(GIB, K4).unwrap();
    let low = a.alloc(MIB, K4, NONE, 0..0).unwrap();
    assert_eq!(low[0].offset(), 0, "bottom-up starts at the bottom");
    let high = a.alloc(MIB, K4, AllocFlags::TOPDOWN, 0..0).unwrap();
    assert_eq!(high[0].end(), GIB, "top-down starts at the top");
    let r = 300 * MIB..301 * MIB + 8 * K4;
    let ranged = a.alloc(MIB, K4, AllocFlags::RANGE, r.clone()).unwrap();
    assert!(ranged
        .iter()
        .all(|b| b.offset() >= r.start && b.end() <= r.end));
    let ranged_top = a
        .alloc(
            8 * K4,
            K4,
            AllocFlags::RANGE | AllocFlags::TOPDOWN,
            r.clone(),
        )
        .unwrap();
    assert_eq!(ranged_top.last().unwrap().end(), r.end);
    assert_eq!(
        a.alloc(K4, K4, AllocFlags::RANGE, r.clone()),
        Err(BuddyError::NoSpace { size: K4 }),
        "range is full"
    );
    for bad in [5..5, 0..GIB + K4, 100..K4 * 2] {
        assert!(matches!(
            a.alloc(K4, K4, AllocFlags::RANGE, bad),
            Err(BuddyError::InvalidRange { .. })
        ));
    }
    assert!(matches!(
        a.alloc(2 * MIB, K4, AllocFlags::RANGE, r),
        Err(BuddyError::TooLarge { .. })
    ));
    for blocks in [low, high, ranged, ranged_top] {
        a.free(&blocks).unwrap();
    }
    assert!(a.is_pristine());
    a.check().unwrap();
}

#[test]
fn huge_space_starts_as_a_few_roots() {
    // 256 GiB + 12 KiB with 4 KiB chunks: three roots, nothing else.
    let mut a = BuddyAllocator::new(256 * GIB + 3 * K4, K4).unwrap();
    assert_eq!(a.leaf_count(), 3);
    assert_eq!(a.stats().roots, 3);
    let small = a.alloc(K4, K4, AllocFlags::TOPDOWN, 0..0).unwrap();
    assert_eq!(small[0].end(), 256 * GIB + 3 * K4);
    let big = a.alloc(100 * GIB, K4, NONE, 0..0).unwrap();
    assert_eq!(big.iter().map(Block::size).sum::<u64>(), 100 * GIB);
    assert!(
        big.len() <= 8,
        "large allocation in few blocks: {}",
        big.len()
    );
    // Metadata scales with blocks: one 4 KiB split of a 256 GiB root adds
    // one free buddy per level (26 levels), not millions of entries.
    assert!(a.leaf_count() < 100, "{} leaves", a.leaf_count());
    a.check().unwrap();
    free_to_pristine(&mut a, &[&small, &big]);
    // Full u64-range space with 1-byte chunks works too.
    let mut b = BuddyAllocator::new(u64::MAX, 1).unwrap();
    assert_eq!(b.stats().roots, 64);
    let x = b.alloc(u64::MAX / 2, 1, AllocFlags::TOPDOWN, 0..0).unwrap();
    b.free(&x).unwrap();
    assert!(b.is_pristine());
}

#[test]
fn rejected_frees_and_claims_change_nothing() {
    let mut a = BuddyAllocator::new(64 * K4, K4).unwrap();
    let mut other = BuddyAllocator::new(64 * K4 * 2, K4 * 2).unwrap();
    let x = a.alloc(3 * K4, K4, NONE, 0..0).unwrap();
    let y = a.alloc(K4, K4, NONE, 0..0).unwrap();
    let theirs = other.alloc(K4 * 2, K4 * 2, NONE, 0..0).unwrap();
    let before = a.stats();
    let b0 = x[0];
    type Expect = fn(&BuddyError) -> bool;
    let cases: Vec<(Vec<Block>, Expect)> = vec![
        (theirs.to_vec(), |e| matches!(e, BuddyError::Foreign { .. })),
        (
            vec![Block::new(b0.offset() + K4, b0.order(), 12, b0.tag())],
            |e| matches!(e, BuddyError::Misaligned { .. }),
        ),
        (vec![Block::new(64 * K4, 0, 12, b0.tag())], |e| {
            matches!(e, BuddyError::Misaligned { .. })
        }),
        (
            vec![Block::new(
                b0.offset(),
                b0.order(),
                12,
                b0.tag().wrapping_add(100),
            )],
            |e| matches!(e, BuddyError::StaleTag { .. }),
        ),
        (vec![Block::new(32 * K4, 0, 12, 1)], |e| {
            matches!(e, BuddyError::NotAllocated { .. })
        }),
        ([x.to_vec(), vec![x[1]]].concat(), |e| {
            matches!(e, BuddyError::Duplicate { .. })
        }),
        // A valid list with one bad block at the end: nothing is freed.
        (
            [x.to_vec(), y.to_vec(), vec![Block::new(40 * K4, 0, 12, 1)]].concat(),
            |e| matches!(e, BuddyError::NotAllocated { .. }),
        ),
    ];
    for (blocks, expected) in cases {
        let err = a.free(&blocks).unwrap_err();
        assert!(expected(&err), "unexpected {err:?} for {blocks:?}");
        assert_eq!(a.stats(), before);
    }
    // Claims: busy, overlapping, foreign.
    assert!(matches!(a.claim(&x), Err(BuddyError::Busy { .. })));
    let free_a = Block::new(32 * K4, 1, 12, 9);
    let free_b = Block::new(33 * K4, 0, 12, 9);
    assert!(matches!(
        a.claim(&[free_a, free_b]),
        Err(BuddyError::Duplicate { .. })
    ));
    assert!(matches!(a.claim(&theirs), Err(BuddyError::Foreign { .. })));
    assert_eq!(a.stats(), before);
    a.claim(&[free_a]).unwrap();
    a.free(&[free_a]).unwrap();
    // Free of a whole allocation in two parts, then a double free.
    a.free(&x[..1]).unwrap();
    a.free(&x[1..]).unwrap();
    assert!(matches!(a.free(&x), Err(BuddyError::NotAllocated { .. })));
    free_to_pristine(&mut a, &[&y]);
    other.free(&theirs).unwrap();
    // Bad allocation requests.
    assert_eq!(a.alloc(0, K4, NONE, 0..0), Err(BuddyError::ZeroSize));
    assert_eq!(
        a.alloc(K4, 3 * K4, NONE, 0..0),
        Err(BuddyError::InvalidMinBlockSize(3 * K4))
    );
    assert!(matches!(
        a.alloc(65 * K4, K4, NONE, 0..0),
        Err(BuddyError::TooLarge { .. })
    ));
    assert!(matches!(
        a.alloc(K4, 128 * K4, NONE, 0..0),
        Err(BuddyError::TooLarge { .. })
    ));
    assert_eq!(
        a.alloc(u64::MAX, K4, NONE, 0..0).unwrap_err(),
        BuddyError::TooLarge {
            size: u64::MAX,
            limit: 64 * K4
        }
    );
    assert!(a.is_pristine());
}

#[test]
fn long_free_lists_are_validated_before_anything_is_freed() {
    let mut a = BuddyAllocator::new(64 * MIB, K4).unwrap();
    // 40 one-page allocations freed in one call: longer than the lists
    // whose nodes are remembered on the stack and than the quadratic
    // repeat check.
    let mut blocks: Vec<Block> = (0..40)
        .map(|_| a.alloc(K4, K4, NONE, 0..0).unwrap()[0])
        .collect();
    let before = a.stats();
    for dup in [0usize, 17, 39] {
        let mut with_repeat = blocks.clone();
        with_repeat.push(blocks[dup]);
        let err = a.free(&with_repeat).unwrap_err();
        assert_eq!(
            err,
            BuddyError::Duplicate {
                offset: blocks[dup].offset()
            }
        );
        assert_eq!(a.stats(), before, "nothing freed on error");
    }
    // A stale block at the end of a long list: nothing freed either.
    let stale = Block::new(blocks[5].offset(), 0, 12, blocks[5].tag().wrapping_add(1));
    blocks.push(stale);
    assert!(matches!(a.free(&blocks), Err(BuddyError::StaleTag { .. })));
    assert_eq!(a.stats(), before);
    blocks.pop();
    free_to_pristine(&mut a, &[&blocks]);
    a.check().unwrap();
}
