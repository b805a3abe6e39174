use super::*;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

#[test]
fn deltas_apply_and_track_peaks() {
    let s = MemoryStats::new();
    s.apply(Domain::Vram, &Delta::alloc(8192, 5000, 4096));
    s.apply(Domain::Vram, &Delta::alloc(4096, 4096, 0));
    s.apply(Domain::Vram, &Delta::free(8192, 5000, 4096));
    s.apply(Domain::Gtt, &Delta::failure());
    s.apply(Domain::Gtt, &Delta::retry());
    let snap = s.snapshot();
    assert_eq!(snap.updates, 5);
    let v = snap.vram;
    assert_eq!(v.allocated_bytes, 4096);
    assert_eq!(v.requested_bytes, 4096);
    assert_eq!(v.visible_bytes, 0);
    assert_eq!(v.bo_count, 1);
    assert_eq!((v.allocs, v.frees), (2, 1));
    assert_eq!(v.peak_allocated_bytes, 12288);
    assert_eq!(v.peak_bo_count, 2);
    assert_eq!(snap.gtt.failures, 1);
    assert_eq!(snap.gtt.retries, 1);
    assert_eq!(snap.domain(Domain::Gtt).bo_count, 0);
}

#[test]
fn batches_are_one_update() {
    let s = MemoryStats::new();
    let mut batch = StatsBatch::new();
    assert!(batch.is_empty());
    for _ in 0..10 {
        s.apply(Domain::Gtt, &Delta::alloc(4096, 4096, 0));
        batch.add(Domain::Gtt, &Delta::free(4096, 4096, 0));
    }
    batch.add(Domain::Vram, &Delta::retry());
    s.apply_batch(&batch);
    s.apply_batch(&StatsBatch::new());
    let snap = s.snapshot();
    // 10 GTT updates + the batch, once per domain it touched.
    assert_eq!(snap.updates, 12);
    assert_eq!(snap.vram.retries, 1);
    assert_eq!(snap.gtt.bo_count, 0);
    assert_eq!(snap.gtt.allocated_bytes, 0);
    assert_eq!(snap.gtt.frees, 10);
    assert_eq!(snap.gtt.peak_bo_count, 10);
}

#[test]
fn overlapping_update_forces_a_retry() {
    let s = MemoryStats::new();
    let gtt = &s.domains[Domain::Gtt.index()];
    let lock = gtt.writer.lock();
    // An update stopped halfway: the totals' sequence is odd.
    gtt.totals.seq.fetch_add(1, Ordering::SeqCst);
    assert_eq!(s.try_snapshot(3), None);
    gtt.totals.seq.fetch_add(1, Ordering::SeqCst);
    drop(lock);
    assert!(s.try_snapshot(1).is_some());
}

#[test]
fn publishes_every_publish_every_updates() {
    let s = MemoryStats::new();
    let vram = &s.domains[Domain::Vram.index()];
    for i in 1..=3 * PUBLISH_EVERY {
        s.apply(Domain::Vram, &Delta::alloc(4096, 4096, 0));
        let (seq, published) = vram.published.read().unwrap();
        let publications = i / PUBLISH_EVERY;
        assert_eq!(seq, 2 * u64::from(publications));
        assert_eq!(published.allocs, u64::from(publications * PUBLISH_EVERY));
    }
    // The exact read does not wait for a publication that never comes.
    s.apply(Domain::Vram, &Delta::retry());
    assert_eq!(s.snapshot().vram.retries, 1);
    assert_eq!(vram.published.read().unwrap().1.retries, 0);
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Allocate (sizes in pages: allocated ≥ requested, visible ≤
    /// allocated).
    Alloc(bool, u64, u64, bool),
    /// Free the live BO picked by the index (modulo the live count).
    Free(bool, usize),
    Failure(bool),
    Retry(bool),
    /// Several frees and allocations as one batch.
    Batch(Vec<(bool, usize, u64)>),
    Read,
}

fn domain_of(vram: bool) -> Domain {
    if vram {
        Domain::Vram
    } else {
        Domain::Gtt
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1..64u64, 0..8u64, any::<bool>())
            .prop_map(|(v, r, extra, vis)| Op::Alloc(v, r, extra, vis)),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(v, i)| Op::Free(v, i)),
        1 => any::<bool>().prop_map(Op::Failure),
        1 => any::<bool>().prop_map(Op::Retry),
        1 => prop::collection::vec((any::<bool>(), any::<usize>(), 0..64u64), 0..6)
            .prop_map(Op::Batch),
        2 => Just(Op::Read),
    ]
}

/// A live BO of the model: (allocated, requested, visible) bytes.
type Bo = (u64, u64, u64);

/// The reference: live BOs per domain and plain counters, kept by
/// obvious code.
#[derive(Clone, Debug, Default)]
struct Model {
    live: [Vec<Bo>; 2],
    allocs: [u64; 2],
    frees: [u64; 2],
    failures: [u64; 2],
    retries: [u64; 2],
    peak_allocated: [u64; 2],
    peak_bos: [u64; 2],
    updates: [u64; 2],
}

impl Model {
    fn counters(&self, d: usize) -> DomainCounters {
        let sum = |f: fn(&Bo) -> u64| self.live[d].iter().map(f).sum::<u64>();
        DomainCounters {
            allocated_bytes: sum(|b| b.0),
            requested_bytes: sum(|b| b.1),
            visible_bytes: sum(|b| b.2),
            bo_count: self.live[d].len() as u64,
            allocs: self.allocs[d],
            frees: self.frees[d],
            failures: self.failures[d],
            retries: self.retries[d],
            peak_allocated_bytes: self.peak_allocated[d],
            peak_bo_count: self.peak_bos[d],
        }
    }

    /// Ends one update of domain `d`.
    fn updated(&mut self, d: usize) {
        self.updates[d] += 1;
        let now = self.counters(d);
        self.peak_allocated[d] = self.peak_allocated[d].max(now.allocated_bytes);
        self.peak_bos[d] = self.peak_bos[d].max(now.bo_count);
    }
}

fn check_invariants(c: &DomainCounters) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.allocs - c.frees, c.bo_count);
    prop_assert!(c.allocated_bytes <= c.peak_allocated_bytes);
    prop_assert!(c.bo_count <= c.peak_bo_count);
    prop_assert!(c.requested_bytes <= c.allocated_bytes);
    prop_assert!(c.visible_bytes <= c.allocated_bytes);
    Ok(())
}

proptest! {
    /// Random updates, batches and reads against the model: every read
    /// is exact and keeps the invariants; every published copy is a
    /// state of the model fewer than `PUBLISH_EVERY` updates old.
    #[test]
    fn exact_reads_match_the_model(ops in prop::collection::vec(op(), 1..200)) {
        let stats = MemoryStats::new();
        let mut model = Model::default();
        // Every state of the model per domain, by update count.
        let mut history: [Vec<DomainCounters>; 2] =
            [vec![DomainCounters::default()], vec![DomainCounters::default()]];
        const PAGE: u64 = 4096;
        for op in ops {
            let mut touched = [false; 2];
            match op {
                Op::Alloc(v, requested, extra, visible) => {
                    let d = domain_of(v);
                    let bo = (
                        (requested + extra) * PAGE,
                        requested * PAGE,
                        if visible { (requested + extra) * PAGE } else { 0 },
                    );
                    stats.apply(d, &Delta::alloc(bo.0, bo.1, bo.2));
                    model.live[d.index()].push(bo);
                    model.allocs[d.index()] += 1;
                    touched[d.index()] = true;
                }
                Op::Free(v, i) => {
                    let d = domain_of(v);
                    let live = &mut model.live[d.index()];
                    if live.is_empty() {
                        continue;
                    }
                    let bo = live.swap_remove(i % live.len());
                    stats.apply(d, &Delta::free(bo.0, bo.1, bo.2));
                    model.frees[d.index()] += 1;
                    touched[d.index()] = true;
                }
                Op::Failure(v) => {
                    let d = domain_of(v);
                    stats.apply(d, &Delta::failure());
                    model.failures[d.index()] += 1;
                    touched[d.index()] = true;
                }
                Op::Retry(v) => {
                    let d = domain_of(v);
                    stats.apply(d, &Delta::retry());
                    model.retries[d.index()] += 1;
                    touched[d.index()] = true;
                }
                Op::Batch(items) => {
                    let mut batch = StatsBatch::new();
                    for (v, i, pages) in items {
                        let d = domain_of(v).index();
                        if pages == 0 && !model.live[d].is_empty() {
                            let n = model.live[d].len();
                            let bo = model.live[d].swap_remove(i % n);
                            batch.add(domain_of(v), &Delta::free(bo.0, bo.1, bo.2));
                            model.frees[d] += 1;
                        } else {
                            let bo = ((pages + 1) * PAGE, (pages + 1) * PAGE, 0);
                            batch.add(domain_of(v), &Delta::alloc(bo.0, bo.1, bo.2));
                            model.live[d].push(bo);
                            model.allocs[d] += 1;
                        }
                        touched[d] = true;
                    }
                    stats.apply_batch(&batch);
                }
                Op::Read => {
                    let snap = stats.snapshot();
                    for d in Domain::ALL {
                        let c = snap.domain(d);
                        check_invariants(c)?;
                        prop_assert_eq!(*c, model.counters(d.index()));
                    }
                    prop_assert_eq!(snap.updates, model.updates[0] + model.updates[1]);
                }
            }
            for d in 0..2 {
                if touched[d] {
                    model.updated(d);
                    history[d].push(model.counters(d));
                }
                let (_, published) = stats.domains[d].published.read().unwrap();
                let behind = model.updates[d] - published.updates;
                prop_assert!(behind < u64::from(PUBLISH_EVERY));
                let c = published.counters();
                check_invariants(&c)?;
                prop_assert_eq!(c, history[d][published.updates as usize]);
            }
        }
    }
}
