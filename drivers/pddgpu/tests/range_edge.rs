//! Range allocator edge cases: the documented search bound, the top of the
//! address space, clean failures, and rebuild validation.

use pddgpu::range::{InsertMode, RangeAllocator, RangeError, DEFAULT_SEARCH_LIMIT};

const PAGE: u64 = 4096;

/// 40 holes of 100 bytes that cannot take a page-aligned request, then a
/// 200-byte hole that can (at page 50), then an 8 KiB hole (page 100) that
/// surely can; everything else is reserved.
fn band_layout() -> RangeAllocator {
    let mut a = RangeAllocator::new(0, 128 * PAGE).unwrap();
    let all = a.reserve(0, 128 * PAGE).unwrap();
    a.remove(all).unwrap();
    // Rebuild the layout from reservations so the holes are exact.
    let mut cuts = Vec::new();
    for k in 0..40 {
        cuts.push((k * PAGE + 1000, 100));
    }
    cuts.push((50 * PAGE - 100, 200));
    cuts.push((100 * PAGE + 1, 2 * PAGE));
    let mut at = 0;
    for (s, len) in cuts {
        a.reserve(at, s - at).unwrap();
        at = s + len;
    }
    a.reserve(at, 128 * PAGE - at).unwrap();
    assert_eq!(a.stats().hole_count, 42);
    a
}

#[test]
fn best_and_low_respect_the_search_bound() {
    assert_eq!(DEFAULT_SEARCH_LIMIT, 32);
    // Bounded (default): 32 misses, then the smallest hole that surely fits.
    let mut a = band_layout();
    let n = a.insert(16, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    assert_eq!(n.start(), 101 * PAGE);
    let mut a = band_layout();
    let n = a.insert(16, PAGE, 0..u64::MAX, InsertMode::Low).unwrap();
    assert_eq!(n.start(), 101 * PAGE);
    // Exact: every candidate is examined, the 200-byte hole wins.
    for mode in [InsertMode::Best, InsertMode::Low] {
        let mut a = band_layout();
        a.set_search_limit(u32::MAX);
        let n = a.insert(16, PAGE, 0..u64::MAX, mode).unwrap();
        assert_eq!(n.start(), 50 * PAGE, "{mode:?}");
    }
    // Within the bound the answer is exact too.
    let mut a = band_layout();
    a.set_search_limit(41);
    let n = a.insert(16, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    assert_eq!(n.start(), 50 * PAGE);
    // No hole surely fits: the search goes on and still finds the fit
    // rather than failing.
    let mut a = band_layout();
    a.set_search_limit(1);
    let big = a.insert(16, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    assert_eq!(big.start(), 101 * PAGE);
    a.reserve(100 * PAGE + 1, PAGE - 1).unwrap();
    a.reserve(101 * PAGE + 16, PAGE - 15).unwrap();
    let n = a.insert(16, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    assert_eq!(n.start(), 50 * PAGE);
    assert_eq!(
        a.insert(16, PAGE, 0..u64::MAX, InsertMode::Best),
        Err(RangeError::NoSpace { size: 16 })
    );
    a.set_search_limit(0);
    assert_eq!(a.search_limit(), 1, "a limit of 0 counts as 1");
    assert_eq!(a.check(), Ok(()));
}

#[test]
fn top_of_the_address_space() {
    assert!(matches!(
        RangeAllocator::new(u64::MAX, 1),
        Err(RangeError::InvalidArgument(_))
    ));
    assert!(matches!(
        RangeAllocator::new(0, 0),
        Err(RangeError::InvalidArgument(_))
    ));
    let base = u64::MAX - 4 * PAGE;
    let mut a = RangeAllocator::new(base, 4 * PAGE).unwrap();
    assert_eq!(a.end(), u64::MAX);
    // No address up there is aligned to 2^63 and still below the end.
    assert_eq!(
        a.insert(1, 1 << 63, 0..u64::MAX, InsertMode::Low),
        Err(RangeError::NoSpace { size: 1 })
    );
    let hi = a.insert(100, 1, 0..u64::MAX, InsertMode::High).unwrap();
    assert_eq!(hi.end(), u64::MAX);
    let hi2 = a.insert(100, PAGE, 0..u64::MAX, InsertMode::High).unwrap();
    assert_eq!(hi2.start(), u64::MAX - PAGE + 1);
    assert!(matches!(
        a.reserve(u64::MAX - 10, 20),
        Err(RangeError::InvalidArgument(_))
    ));
    let lo = a.insert(PAGE, 2, 0..u64::MAX, InsertMode::Low).unwrap();
    assert_eq!(lo.start(), base + 1);
    for n in [hi, hi2, lo] {
        a.remove(n).unwrap();
    }
    assert!(a.holes().eq(std::iter::once(base..u64::MAX)));
    assert_eq!(a.check(), Ok(()));
}

#[test]
fn failures_change_nothing() {
    let mut a = RangeAllocator::new(PAGE, 64 * PAGE).unwrap();
    let n = a.reserve(10 * PAGE, 4 * PAGE).unwrap();
    let holes: Vec<_> = a.holes().collect();
    let stats = a.stats();
    // Partly overlapping reservations, on either side and inside.
    for (s, len) in [
        (9 * PAGE, 2 * PAGE),
        (13 * PAGE, 2 * PAGE),
        (11 * PAGE, 1),
        (0, 2 * PAGE),
        (64 * PAGE, 2 * PAGE),
    ] {
        assert!(a.reserve(s, len).is_err(), "{s:#x}+{len:#x}");
    }
    assert_eq!(
        a.reserve(10 * PAGE, PAGE),
        Err(RangeError::Busy {
            start: 10 * PAGE,
            size: PAGE
        })
    );
    // Ranges that leave no room, inverted ranges, bad alignment, zero size.
    assert_eq!(
        a.insert(PAGE, 1, 100 * PAGE..200 * PAGE, InsertMode::Best),
        Err(RangeError::NoSpace { size: PAGE })
    );
    assert_eq!(
        a.insert(2 * PAGE, 1, 10 * PAGE..14 * PAGE, InsertMode::Low),
        Err(RangeError::NoSpace { size: 2 * PAGE })
    );
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = a.insert(PAGE, 1, 5 * PAGE..PAGE, InsertMode::Best);
    assert!(matches!(inverted, Err(RangeError::InvalidArgument(_))));
    assert!(matches!(
        a.insert(PAGE, 48, 0..u64::MAX, InsertMode::Best),
        Err(RangeError::InvalidArgument(_))
    ));
    assert!(matches!(
        a.insert(0, 1, 0..u64::MAX, InsertMode::Best),
        Err(RangeError::InvalidArgument(_))
    ));
    assert_eq!(a.stats(), stats);
    assert!(a.holes().eq(holes.iter().cloned()));
    a.remove(n).unwrap();
    assert!(matches!(a.remove(n), Err(RangeError::InvalidNode(_))));
    assert_eq!(a.check(), Ok(()));
}

#[test]
fn rebuild_validates_the_live_list() {
    let mut a = RangeAllocator::new(0, 64 * PAGE).unwrap();
    // Issue (and retire) a few slots so that genuine handles span them.
    let scratch: Vec<_> = (0..8)
        .map(|i| a.reserve((40 + i) * PAGE, PAGE).unwrap())
        .collect();
    for n in scratch {
        a.remove(n).unwrap();
    }
    let x = a.reserve(0, PAGE).unwrap();
    let y = a.reserve(4 * PAGE, PAGE).unwrap();
    // A clone is a snapshot of the same allocator: its handles carry the
    // same identity, so they can be used to build inconsistent lists.
    let mut twin = a.clone();
    twin.remove(y).unwrap();
    // Take y's recycled slot elsewhere first, so the overlapping node gets
    // a slot of its own.
    twin.reserve(20 * PAGE, 1).unwrap();
    let overlapping = twin.reserve(4 * PAGE + 100, PAGE).unwrap();
    for _ in 0..10 {
        twin.reserve(twin.holes().last().unwrap().start, 1).unwrap();
    }
    let beyond = twin.reserve(63 * PAGE, 1).unwrap();
    assert_eq!(
        a.rebuild([&x, &y, &overlapping]).err(),
        Some(RangeError::Busy {
            start: overlapping.start(),
            size: PAGE
        })
    );
    assert!(matches!(
        a.rebuild([&x, &x]),
        Err(RangeError::InvalidNode(_))
    ));
    assert!(matches!(
        a.rebuild([&x, &beyond]),
        Err(RangeError::InvalidNode(_))
    ));
    let foreign = RangeAllocator::new(0, 64 * PAGE)
        .unwrap()
        .reserve(8 * PAGE, PAGE)
        .unwrap();
    assert!(matches!(
        a.rebuild([&foreign]),
        Err(RangeError::InvalidNode(_))
    ));
    // A good list: same layout, handles stay valid, free slots reused.
    let mut b = a.rebuild([&y, &x]).unwrap();
    assert_eq!(b.stats(), a.stats());
    assert!(b.holes().eq(a.holes()));
    assert_eq!(b.check(), Ok(()));
    b.remove(x).unwrap();
    let z = b.reserve(10 * PAGE, PAGE).unwrap();
    b.remove(y).unwrap();
    b.remove(z).unwrap();
    assert_eq!(b.stats().hole_count, 1);
    assert_eq!(b.check(), Ok(()));
}

/// Best's answer by brute force over the hole list (exact, no search bound).
fn brute_best(a: &RangeAllocator, size: u64, align: u64) -> Option<u64> {
    a.holes()
        .filter_map(|h| {
            let x = h.start.div_ceil(align) * align;
            (x + size <= h.end).then_some(((h.end - h.start, h.start), x))
        })
        .min()
        .map(|(_, x)| x)
}

#[test]
fn crowded_size_bin_grows_and_shrinks() {
    // 200 holes of 100..=103 bytes (four size bins of 50, more than a bin
    // keeps as a list) in mixed size order: the bins pass from short lists
    // to trees and back while Best keeps choosing exactly the smallest
    // fitting hole, lowest address first.
    const HOLES: u64 = 200;
    let mut a = RangeAllocator::new(0, (HOLES + 1) * PAGE).unwrap();
    a.set_search_limit(u32::MAX);
    let mut fillers = Vec::new();
    let mut at = 0;
    for k in 0..HOLES {
        let hole = k * PAGE + 8 * (k % 5);
        let len = 100 + (k * 7) % 4;
        if hole > at {
            fillers.push(a.reserve(at, hole - at).unwrap());
        }
        at = hole + len;
    }
    fillers.push(a.reserve(at, (HOLES + 1) * PAGE - at).unwrap());
    assert_eq!(a.stats().hole_count, HOLES);
    assert_eq!(a.check(), Ok(()));
    // Take holes one by one (sizes inside the crowded bins, alignments that
    // some smallest candidates miss), checking every answer and the
    // invariants;
    // give some back on the way so the bins also refill.
    let mut taken = Vec::new();
    for k in 0..HOLES {
        let (size, align) = [(100, 16), (101, 1), (96, 8), (102, 4)][k as usize % 4];
        let want = brute_best(&a, size, align);
        match a.insert(size, align, 0..u64::MAX, InsertMode::Best) {
            Ok(n) => {
                assert_eq!(Some(n.start()), want, "step {k}");
                taken.push(n);
            }
            Err(e) => assert_eq!((want, e), (None, RangeError::NoSpace { size })),
        }
        if k % 4 == 3 {
            let n = taken.swap_remove((k as usize * 5) % taken.len());
            a.remove(n).unwrap();
        }
        assert_eq!(a.check(), Ok(()), "step {k}");
    }
    // Give everything back (the bins refill, then empty as holes merge).
    for n in taken.into_iter().chain(fillers) {
        a.remove(n).unwrap();
        assert_eq!(a.check(), Ok(()));
    }
    assert_eq!(a.stats().hole_count, 1);
}

#[test]
fn removed_handles_stay_dead_across_a_rebuild() {
    // Regression: a rebuild used to restart the generations of free slots,
    // so a handle removed before it matched a new node placed in the same
    // slot at the same address afterwards.
    let mut a = RangeAllocator::new(0, 16 * PAGE).unwrap();
    let keep = a.insert(PAGE, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    let gone = a.insert(PAGE, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    let later = a.insert(PAGE, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    a.remove(gone).unwrap();
    a.remove(later).unwrap();
    let mut b = a.rebuild([&keep]).unwrap();
    // The same requests land in the same places and slots again.
    let again = b.insert(PAGE, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    let again2 = b.insert(PAGE, PAGE, 0..u64::MAX, InsertMode::Best).unwrap();
    assert_eq!(again.range(), gone.range());
    assert_eq!(again2.range(), later.range());
    for dead in [gone, later] {
        assert!(!b.is_live(&dead));
        assert!(matches!(b.remove(dead), Err(RangeError::InvalidNode(_))));
    }
    assert!(b.is_live(&keep) && b.is_live(&again) && b.is_live(&again2));
    assert_eq!(b.check(), Ok(()));
}
