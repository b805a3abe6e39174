//! The occupancy map (`Driver::occupancy`) checked against the allocators
//! and the BO table: its extents tile each domain exactly, its free extents
//! are the allocator's free memory, every live BO appears exactly where its
//! segments say and nothing else claims to be a BO; faults (leaked and
//! retired memory) show up as their own kinds; and under concurrent churn
//! every map still tiles its domain.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, BoFlags, BoId, Domain, Driver, OccupancyMap, Occupant, OwnerId};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn setup(vram: u64, gtt: u64) -> (SimDevice, Driver) {
    let dev = SimDevice::new(SimConfig::sized(vram, gtt)).unwrap();
    let d = Driver::new(dev.resources(), 0).unwrap();
    (dev, d)
}

/// Checks the structure of a map: extents in order, tiling `0..size`, none
/// empty, neighbours with different occupants.
fn check_tiling(m: &OccupancyMap) {
    let mut at = 0;
    for (i, e) in m.extents.iter().enumerate() {
        assert!(!e.range.is_empty(), "{:?}: extent {i} is empty", m.domain);
        assert_eq!(
            e.range.start, at,
            "{:?}: extent {i} does not follow on",
            m.domain
        );
        if i > 0 {
            assert_ne!(
                m.extents[i - 1].occupant,
                e.occupant,
                "{:?}: extents {} and {i} were not merged",
                m.domain,
                i - 1
            );
        }
        at = e.range.end;
    }
    assert_eq!(
        at, m.size,
        "{:?}: the extents do not reach the end",
        m.domain
    );
}

/// A live BO as the test knows it.
struct Live {
    owner: OwnerId,
    label: String,
    domain: Domain,
}

/// Checks `d`'s maps against its allocators and against the BOs the test
/// holds: the allocator's free bytes (and, for GTT, its holes) are the free
/// extents; every BO covers exactly its segments; nothing else is a BO, and
/// nothing is unowned or retired.
fn check_against_driver(d: &Driver, live: &HashMap<BoId, Live>) {
    for domain in Domain::ALL {
        let m = d.occupancy(domain);
        check_tiling(&m);
        assert!(m.settled, "nothing runs concurrently here");
        let free: Vec<&Range<u64>> = m
            .extents
            .iter()
            .filter(|e| e.occupant == Occupant::Free)
            .map(|e| &e.range)
            .collect();
        let free_bytes: u64 = free.iter().map(|r| r.end - r.start).sum();
        let largest = free.iter().map(|r| r.end - r.start).max().unwrap_or(0);
        match domain {
            Domain::Vram => {
                let s = d.vram_stats();
                assert_eq!(m.size, s.total_size);
                assert_eq!(m.visible_size, s.visible_size);
                assert_eq!(free_bytes, s.free_size, "VRAM free bytes");
                // Free buddy blocks side by side are one hole in the map.
                assert!(largest >= s.largest_free, "VRAM largest free");
                assert!(free.len() as u64 <= s.free_block_count);
            }
            Domain::Gtt => {
                let s = d.gtt_stats();
                assert_eq!(m.size, s.total_size);
                assert_eq!(m.visible_size, 0);
                assert_eq!(free_bytes, s.free_size, "GTT free bytes");
                assert_eq!(free.len() as u64, s.hole_count, "GTT holes");
                assert_eq!(largest, s.largest_hole, "GTT largest hole");
            }
        }
        // Extents per BO, in address order.
        let mut by_bo: BTreeMap<BoId, Vec<Range<u64>>> = BTreeMap::new();
        for e in &m.extents {
            match &e.occupant {
                Occupant::Free => {}
                Occupant::Bo { id, owner, label } => {
                    let bo = live
                        .get(id)
                        .unwrap_or_else(|| panic!("{domain:?}: BO {id} in the map is not live"));
                    assert_eq!(bo.domain, domain);
                    assert_eq!(*owner, bo.owner, "BO {id}'s holder");
                    assert_eq!(*label, bo.label, "BO {id}'s label");
                    by_bo.entry(*id).or_default().push(e.range.clone());
                }
                other => panic!("{domain:?}: unexpected {other:?} at {:?}", e.range),
            }
        }
        for (id, bo) in live.iter().filter(|(_, b)| b.domain == domain) {
            let info = d.bo_info(bo.owner, *id).unwrap();
            let extents = by_bo
                .get(id)
                .unwrap_or_else(|| panic!("{domain:?}: BO {id} is missing from the map"));
            let in_map: u64 = extents.iter().map(|r| r.end - r.start).sum();
            assert_eq!(in_map, info.allocated_size, "BO {id}'s bytes in the map");
            // Every byte of every segment lies in one of the BO's extents.
            for &(_, at, len) in &info.segments {
                assert!(
                    extents.iter().any(|r| r.start <= at && at + len <= r.end),
                    "BO {id}: segment {at:#x}+{len:#x} not in its extents {extents:?}"
                );
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        owner: u8,
        size_kib: u32,
        gtt: bool,
        flags: u8,
    },
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 1u32..2048, any::<bool>(), 0u8..8).prop_map(|(owner, size_kib, gtt, flags)| {
            Op::Create { owner, size_kib, gtt, flags }
        }),
        2 => any::<usize>().prop_map(Op::Free),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_map_tiles_each_domain_and_names_every_bo(ops in proptest::collection::vec(op(), 1..80)) {
        let (_dev, d) = setup(32 * MIB, 32 * MIB);
        let mut live: HashMap<BoId, Live> = HashMap::new();
        let mut order: Vec<BoId> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create { owner, size_kib, gtt, flags } => {
                    let owner = OwnerId::from(owner) + 1;
                    let label = format!("bo-{i}");
                    let mut f = BoFlags::empty();
                    if !gtt {
                        if flags & 1 != 0 { f |= BoFlags::CONTIGUOUS; }
                        if flags & 2 != 0 && u64::from(size_kib) * 1024 <= 8 * MIB {
                            f |= BoFlags::VISIBLE;
                        }
                        if flags & 4 != 0 { f |= BoFlags::TOPDOWN; }
                    }
                    let domain = if gtt { Domain::Gtt } else { Domain::Vram };
                    let req = BoCreate::new(u64::from(size_kib) * 1024, domain, &label).with_flags(f);
                    if let Ok(id) = d.bo_create(owner, &req, i as u64) {
                        live.insert(id, Live { owner, label, domain });
                        order.push(id);
                    }
                }
                Op::Free(k) => {
                    if !order.is_empty() {
                        let id = order.swap_remove(k % order.len());
                        let bo = live.remove(&id).unwrap();
                        d.bo_unref(bo.owner, id).unwrap();
                    }
                }
            }
            check_against_driver(&d, &live);
        }
    }
}

#[test]
fn leaked_and_retired_memory_have_their_own_kinds() {
    let (dev, d) = setup(16 * MIB, 16 * MIB);
    let req = |size, domain| BoCreate::new(size, domain, "faulty");
    let owner: OwnerId = 7;
    // Corrupted bookkeeping: the driver leaks 4 KiB inside each manager.
    dev.corrupt_manager(Domain::Vram);
    dev.corrupt_manager(Domain::Gtt);
    let a = d.bo_create(owner, &req(MIB, Domain::Vram), 1).unwrap();
    let g = d.bo_create(owner, &req(MIB, Domain::Gtt), 1).unwrap();
    for domain in Domain::ALL {
        let m = d.occupancy(domain);
        check_tiling(&m);
        let unowned: u64 = m
            .extents
            .iter()
            .filter(|e| e.occupant == Occupant::Unowned)
            .map(|e| e.range.end - e.range.start)
            .sum();
        assert_eq!(unowned, 4096, "{domain:?}: the leaked allocation shows");
    }
    // The audit finds the same leak; recovery reclaims it, and the map
    // shows nothing unowned any more.
    d.leak_check(2);
    for domain in Domain::ALL {
        d.recover(domain).unwrap();
        let m = d.occupancy(domain);
        check_tiling(&m);
        assert!(
            !m.extents.iter().any(|e| e.occupant == Occupant::Unowned),
            "{domain:?}: recovered"
        );
    }

    // Bad VRAM under a BO: when it is freed, its memory is retired.
    let at = d.bo_info(owner, a).unwrap().segments[0].1;
    dev.report_bad_vram_range(at, 4096).unwrap();
    d.tick(3);
    d.bo_unref(owner, a).unwrap();
    let m = d.occupancy(Domain::Vram);
    check_tiling(&m);
    let retired: Vec<&Range<u64>> = m
        .extents
        .iter()
        .filter(|e| e.occupant == Occupant::Retired)
        .map(|e| &e.range)
        .collect();
    assert!(
        retired.iter().any(|r| r.start <= at && at + 4096 <= r.end),
        "the bad page is retired: {retired:?}"
    );
    let (_, retired_bytes) = d.bad_vram();
    assert_eq!(
        retired.iter().map(|r| r.end - r.start).sum::<u64>(),
        retired_bytes
    );
    d.bo_unref(owner, g).unwrap();
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn maps_taken_during_churn_always_tile() {
    let (_dev, d) = setup(64 * MIB, 64 * MIB);
    let stop = AtomicBool::new(false);
    let settled = std::thread::scope(|s| {
        for t in 0..2u64 {
            let (d, stop) = (&d, &stop);
            s.spawn(move || {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut held = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 200 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let domain = if x % 2 == 0 {
                        Domain::Vram
                    } else {
                        Domain::Gtt
                    };
                    if held.len() < 32 && x % 3 != 0 {
                        let req = BoCreate::new(4096 * (1 + x % 64), domain, "churn");
                        if let Ok(id) = d.bo_create(t + 1, &req, n) {
                            held.push(id);
                        }
                    } else if !held.is_empty() {
                        let id = held.swap_remove((x as usize / 3) % held.len());
                        d.bo_unref(t + 1, id).unwrap();
                    }
                    n += 1;
                }
                for id in held {
                    d.bo_unref(t + 1, id).unwrap();
                }
            });
        }
        // Stops the workers when the checks end, also by a panic: the scope
        // joins them before it passes the panic on.
        let _stop = SetOnDrop(&stop);
        let mut settled = 0;
        for i in 0..100 {
            let m = d.occupancy(if i % 2 == 0 {
                Domain::Vram
            } else {
                Domain::Gtt
            });
            check_tiling(&m);
            if m.settled {
                settled += 1;
                assert!(
                    !m.extents.iter().any(|e| e.occupant == Occupant::Unowned),
                    "a settled map names every allocated run"
                );
            }
        }
        settled
    });
    // Quiet again: everything is free and the maps are one hole each.
    for domain in Domain::ALL {
        let m = d.occupancy(domain);
        assert!(m.settled);
        assert_eq!(m.extents.len(), 1, "{domain:?}: {:?}", m.extents);
        assert_eq!(m.extents[0].occupant, Occupant::Free);
    }
    eprintln!("{settled} of 100 maps taken during churn were settled");
}
