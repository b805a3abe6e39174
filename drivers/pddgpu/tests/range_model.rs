//! Property test of the range allocator against a reference model.
//!
//! The model is a sorted interval list (`BTreeMap` start -> end of every live
//! allocation); holes are the gaps. Random sequences of insert (all modes,
//! alignments 1..2^16, full/partial/odd ranges), reserve, remove, double
//! remove, foreign handles and rebuilds run on both; after every step the
//! test checks the allocator's answer against what the model says it must be
//! (including *which* hole Best/Low/High pick, under the documented search
//! bound), no overlap, alignment, range, exact accounting, the hole list, and
//! the allocator's own invariant check. More than a million operations run
//! per invocation.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use pddgpu::range::{InsertMode, RangeAllocator, RangeError, RangeNode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Operations counted across all cases of the big run.
static OPS: AtomicU64 = AtomicU64::new(0);
/// Successful inserts per mode (Best, Low, High).
static PLACED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Inserts where the search bound made the answer differ from the exact one.
static BOUNDED: AtomicU64 = AtomicU64::new(0);
/// Inserts correctly refused for lack of space.
static NO_SPACE: AtomicU64 = AtomicU64::new(0);
/// Reservations granted and refused as busy.
static RESERVED: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicU64 = AtomicU64::new(0);
/// Bad removes (double or foreign) correctly rejected.
static REJECTED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
enum RangeKind {
    /// `0..u64::MAX`: unrestricted.
    Full,
    /// Fractions (of 1024) of the managed range, possibly reaching outside.
    Part(u16, u16),
    /// Start after end: invalid.
    Inverted,
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        size: u64,
        align_log: u8,
        range: RangeKind,
        mode: InsertMode,
    },
    Reserve {
        at: u16,
        size: u64,
    },
    Remove(usize),
    DoubleRemove(usize),
    Foreign(u16, u64),
    Rebuild,
}

fn mode() -> impl Strategy<Value = InsertMode> {
    prop_oneof![
        Just(InsertMode::Best),
        Just(InsertMode::Low),
        Just(InsertMode::High)
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1u64..16,
        4 => 1u64..600,
        3 => 1u64..5000,
        1 => 4096u64..70000,
        1 => Just(0u64),
    ]
}

fn range_kind() -> impl Strategy<Value = RangeKind> {
    prop_oneof![
        6 => Just(RangeKind::Full),
        4 => (0u16..1100, 0u16..1100).prop_map(|(a, b)| if a <= b {
            RangeKind::Part(a, b)
        } else {
            RangeKind::Part(b, a)
        }),
        1 => Just(RangeKind::Inverted),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (size(), prop_oneof![3 => 0u8..3, 4 => 0u8..13, 1 => 13u8..17], range_kind(), mode())
            .prop_map(|(size, align_log, range, mode)| Op::Insert { size, align_log, range, mode }),
        2 => (0u16..1030, size()).prop_map(|(at, size)| Op::Reserve { at, size }),
        8 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::DoubleRemove),
        1 => (0u16..1024, size()).prop_map(|(a, s)| Op::Foreign(a, s)),
        1 => Just(Op::Rebuild),
    ]
}

/// The reference model: live allocations as a sorted interval list.
struct Model {
    start: u64,
    end: u64,
    allocs: BTreeMap<u64, u64>,
}

impl Model {
    fn holes(&self) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = self.start;
        for (&s, &e) in &self.allocs {
            if s > at {
                out.push(at..s);
            }
            at = e;
        }
        if at < self.end {
            out.push(at..self.end);
        }
        out
    }

    fn used(&self) -> u64 {
        self.allocs.iter().map(|(s, e)| e - s).sum()
    }

    fn is_free(&self, s: u64, e: u64) -> bool {
        s >= self.start
            && e <= self.end
            && self
                .allocs
                .range(..e)
                .next_back()
                .is_none_or(|(_, &ae)| ae <= s)
    }
}

fn clip(h: &Range<u64>, rs: u64, re: u64) -> u64 {
    h.end.min(re).saturating_sub(h.start.max(rs))
}

/// Independent placement rule: lowest (or highest) aligned start of `size`
/// bytes inside `h` clipped to `rs..re`, computed in u128 to avoid overflow.
fn fit(h: &Range<u64>, size: u64, align: u64, rs: u64, re: u64, high: bool) -> Option<u64> {
    let lo = h.start.max(rs) as u128;
    let hi = h.end.min(re) as u128;
    let (size, align) = (size as u128, align as u128);
    if hi < lo + size {
        return None;
    }
    let x = if high {
        (hi - size) / align * align
    } else {
        lo.div_ceil(align) * align
    };
    (x >= lo && x + size <= hi).then_some(x as u64)
}

/// What the allocator must answer for an insert, per the documented rules.
/// Returns `None` for "no space".
fn expected_insert(
    m: &Model,
    limit: u32,
    size: u64,
    align: u64,
    rs: u64,
    re: u64,
    mode: InsertMode,
) -> Option<u64> {
    let holes = m.holes();
    let limit = limit as usize;
    let sure = size.checked_add(align - 1);
    match mode {
        InsertMode::Best => {
            let mut cands: Vec<&Range<u64>> =
                holes.iter().filter(|h| h.end - h.start >= size).collect();
            cands.sort_by_key(|h| (h.end - h.start, h.start));
            let exact = cands
                .iter()
                .position(|h| fit(h, size, align, rs, re, false).is_some());
            let exact = exact?;
            let exact_at = fit(cands[exact], size, align, rs, re, false);
            // The exact answer: no fitting hole is smaller than this one.
            let best_len = cands[exact].end - cands[exact].start;
            assert!(holes.iter().all(
                |h| h.end - h.start >= best_len || fit(h, size, align, rs, re, false).is_none()
            ));
            if exact < limit {
                return fit(cands[exact], size, align, rs, re, false);
            }
            let unrestricted = rs == m.start && re == m.end;
            let g = sure.and_then(|sure| {
                if unrestricted {
                    cands.iter().find(|h| h.end - h.start >= sure).copied()
                } else {
                    holes.iter().find(|h| clip(h, rs, re) >= sure)
                }
            });
            let got = match g {
                Some(g) => fit(g, size, align, rs, re, false),
                None => exact_at,
            };
            if got != exact_at {
                BOUNDED.fetch_add(1, Ordering::Relaxed);
            }
            got
        }
        InsertMode::Low | InsertMode::High => {
            let high = mode == InsertMode::High;
            let mut cands: Vec<&Range<u64>> =
                holes.iter().filter(|h| clip(h, rs, re) >= size).collect();
            if high {
                cands.reverse();
            }
            let g = match sure {
                Some(s) if align > 1 => cands.iter().position(|h| clip(h, rs, re) >= s),
                _ => None,
            };
            let exact = cands.iter().find_map(|h| fit(h, size, align, rs, re, high));
            let got = match g {
                Some(gi) => cands[..gi]
                    .iter()
                    .take(limit)
                    .find_map(|h| fit(h, size, align, rs, re, high))
                    .or_else(|| fit(cands[gi], size, align, rs, re, high)),
                None => exact,
            };
            if got != exact {
                BOUNDED.fetch_add(1, Ordering::Relaxed);
            }
            got
        }
    }
}

struct Harness {
    a: RangeAllocator,
    m: Model,
    live: Vec<RangeNode>,
    dead: Vec<RangeNode>,
    foreign: RangeAllocator,
}

impl Harness {
    fn new(start: u64, size: u64, limit: u32) -> Self {
        let mut a = RangeAllocator::new(start, size).unwrap();
        a.set_search_limit(limit);
        Harness {
            a,
            m: Model {
                start,
                end: start + size,
                allocs: BTreeMap::new(),
            },
            live: Vec::new(),
            dead: Vec::new(),
            foreign: RangeAllocator::new(start, size).unwrap(),
        }
    }

    fn frac(&self, f: u16) -> u64 {
        let span = (self.m.end - self.m.start) as u128;
        // Fractions beyond 1024 reach past the end (clipped by the allocator).
        (self.m.start as u128 + span * f as u128 / 1024).min(u64::MAX as u128) as u64
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Insert {
                size,
                align_log,
                range,
                mode,
            } => {
                let align = 1u64 << align_log;
                let (r, valid) = match range {
                    RangeKind::Full => (0..u64::MAX, true),
                    RangeKind::Part(a, b) => (self.frac(*a)..self.frac(*b), true),
                    RangeKind::Inverted => (self.frac(600)..self.frac(100), false),
                };
                let got = self.a.insert(*size, align, r.clone(), *mode);
                if *size == 0 || !valid {
                    prop_assert!(
                        matches!(got, Err(RangeError::InvalidArgument(_))),
                        "{got:?}"
                    );
                    return Ok(());
                }
                let rs = r.start.max(self.m.start);
                let re = r.end.min(self.m.end);
                let want = if re <= rs || re - rs < *size {
                    None
                } else {
                    expected_insert(&self.m, self.a.search_limit(), *size, align, rs, re, *mode)
                };
                match (got, want) {
                    (Ok(n), Some(x)) => {
                        prop_assert_eq!(n.start(), x, "placement for {:?}", op);
                        prop_assert_eq!(n.size(), *size);
                        prop_assert_eq!(n.start() % align, 0);
                        prop_assert!(n.start() >= rs && n.end() <= re, "outside range");
                        prop_assert!(self.m.is_free(n.start(), n.end()), "overlap");
                        self.m.allocs.insert(n.start(), n.end());
                        self.live.push(n);
                        PLACED[*mode as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    (Err(RangeError::NoSpace { size: s }), None) => {
                        prop_assert_eq!(s, *size);
                        NO_SPACE.fetch_add(1, Ordering::Relaxed);
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "{op:?}: got {got:?}, model wants {want:?}"
                        )))
                    }
                }
            }
            Op::Reserve { at, size } => {
                let s = self.frac(*at);
                let got = self.a.reserve(s, *size);
                let end = s.checked_add(*size);
                match end {
                    _ if *size == 0 => {
                        prop_assert!(matches!(got, Err(RangeError::InvalidArgument(_))))
                    }
                    Some(e) if e <= self.m.end => {
                        if self.m.is_free(s, e) {
                            let n = got.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                            prop_assert_eq!((n.start(), n.size()), (s, *size));
                            self.m.allocs.insert(s, e);
                            self.live.push(n);
                            RESERVED.fetch_add(1, Ordering::Relaxed);
                        } else {
                            prop_assert_eq!(
                                got,
                                Err(RangeError::Busy {
                                    start: s,
                                    size: *size
                                })
                            );
                            BUSY.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => prop_assert!(matches!(got, Err(RangeError::InvalidArgument(_)))),
                }
            }
            Op::Remove(i) => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let n = self.live.swap_remove(i % self.live.len());
                prop_assert_eq!(self.a.remove(n), Ok(()));
                prop_assert!(self.m.allocs.remove(&n.start()).is_some());
                self.dead.push(n);
                if self.dead.len() > 64 {
                    self.dead.remove(0);
                }
            }
            Op::DoubleRemove(i) => {
                if self.dead.is_empty() {
                    return Ok(());
                }
                let n = self.dead[i % self.dead.len()];
                let before = self.a.stats();
                prop_assert!(matches!(self.a.remove(n), Err(RangeError::InvalidNode(_))));
                prop_assert_eq!(before, self.a.stats());
                REJECTED.fetch_add(1, Ordering::Relaxed);
            }
            Op::Foreign(at, size) => {
                // A handle issued by another allocator over the same range.
                let s = self.frac(*at).min(self.m.end - 1);
                let size = (*size).clamp(1, self.m.end - s);
                if let Ok(n) = self.foreign.reserve(s, size) {
                    if !self.a.is_live(&n) {
                        let before = self.a.stats();
                        prop_assert!(matches!(self.a.remove(n), Err(RangeError::InvalidNode(_))));
                        prop_assert_eq!(before, self.a.stats());
                        REJECTED.fetch_add(1, Ordering::Relaxed);
                    }
                    self.foreign.remove(n).unwrap();
                }
            }
            Op::Rebuild => {
                let rebuilt = self.a.rebuild(self.live.iter()).unwrap();
                prop_assert_eq!(rebuilt.stats(), self.a.stats());
                prop_assert!(rebuilt.holes().eq(self.a.holes()));
                self.a = rebuilt;
                for n in &self.live {
                    prop_assert!(self.a.is_live(n));
                }
            }
        }
        Ok(())
    }

    fn verify(&self) -> Result<(), TestCaseError> {
        let holes = self.m.holes();
        let st = self.a.stats();
        prop_assert_eq!(st.total, self.m.end - self.m.start);
        prop_assert_eq!(st.used, self.m.used());
        prop_assert_eq!(st.free, st.total - st.used);
        prop_assert_eq!(st.node_count, self.m.allocs.len() as u64);
        prop_assert_eq!(st.hole_count, holes.len() as u64);
        prop_assert_eq!(
            st.largest_hole,
            holes.iter().map(|h| h.end - h.start).max().unwrap_or(0)
        );
        prop_assert!(
            self.a.holes().eq(holes.iter().cloned()),
            "hole list differs"
        );
        if let Err(e) = self.a.check() {
            return Err(TestCaseError::fail(format!("invariant: {e}")));
        }
        Ok(())
    }
}

fn run_case(start: u64, size: u64, limit: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(start, size, limit);
    for op in ops {
        h.step(op)?;
        h.verify()?;
    }
    // Drain: the empty allocator is one hole again.
    for n in std::mem::take(&mut h.live) {
        prop_assert_eq!(h.a.remove(n), Ok(()));
    }
    h.m.allocs.clear();
    h.verify()?;
    prop_assert!(h.a.holes().eq(std::iter::once(start..start + size)));
    OPS.fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn area() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        Just((0u64, 1u64 << 20)),
        Just((0x1000u64, (1u64 << 20) + 12345)),
        Just(((1u64 << 40) + 777, 1u64 << 18)),
        // Reaching the very top of the address space.
        Just((u64::MAX - (1u64 << 20), 1u64 << 20)),
    ]
}

fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(2), Just(4), Just(32), Just(u32::MAX)]
}

#[test]
fn random_operations_match_the_model() {
    const CASES: u32 = 2100;
    const OPS_PER_CASE: usize = 500;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        area(),
        limit(),
        proptest::collection::vec(op(), OPS_PER_CASE),
    );
    runner
        .run(&strategy, |((start, size), limit, ops)| {
            run_case(start, size, limit, &ops)
        })
        .unwrap();
    let ops = OPS.load(Ordering::Relaxed);
    let placed: Vec<u64> = PLACED.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "range model: {ops} random operations checked; placed best/low/high {placed:?}, \
         bounded answers {}, no-space {}, reserved {}, busy {}, bad removes rejected {}",
        get(&BOUNDED),
        get(&NO_SPACE),
        get(&RESERVED),
        get(&BUSY),
        get(&REJECTED)
    );
    assert!(ops >= 1_000_000, "only {ops} operations ran");
    // Every path the model distinguishes must actually have been exercised.
    assert!(
        placed.iter().all(|&p| p > 10_000),
        "too few placements: {placed:?}"
    );
    for (name, c) in [
        ("bounded", &BOUNDED),
        ("no-space", &NO_SPACE),
        ("reserved", &RESERVED),
        ("busy", &BUSY),
        ("rejected", &REJECTED),
    ] {
        assert!(get(c) > 100, "path {name} exercised only {} times", get(c));
    }
}
