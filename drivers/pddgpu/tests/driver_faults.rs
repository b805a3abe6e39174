//! Every fault-injection path of the simulated device, and recovery: after
//! recovery every live BO keeps its placement and contents, memory lost
//! while in ERROR is reclaimed, and no new allocation overlaps a live BO.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use common::{sim_driver, KIB, MIB};
use pddgpu::driver::*;
use pddgpu::manager::{ManagerError, ManagerState};

fn req(size: u64, domain: Domain, flags: BoFlags) -> BoCreate<'static> {
    BoCreate::new(size, domain, "fault-test").with_flags(flags)
}

fn pattern(id: BoId, size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8) ^ (id.0 as u8).wrapping_mul(31))
        .collect()
}

fn ranges(info: &BoInfo) -> Vec<Range<u64>> {
    info.segments.iter().map(|s| s.1..s.1 + s.2).collect()
}

fn overlaps(a: &[Range<u64>], b: &[Range<u64>]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.start < y.end && y.start < x.end))
}

fn assert_clean(d: &Driver, now: u64) {
    let r = d.leak_check(now);
    for a in &r.audits {
        assert_eq!(a.verdict, AuditVerdict::Clean, "{a:?}");
    }
}

/// Creates BOs in both domains with distinct contents; returns their infos.
fn populate(d: &Driver, n: u64) -> HashMap<BoId, (OwnerId, BoInfo)> {
    let mut live = HashMap::new();
    for i in 0..n {
        let domain = if i % 3 == 0 {
            Domain::Gtt
        } else {
            Domain::Vram
        };
        let flags = if i % 4 == 1 {
            BoFlags::CONTIGUOUS
        } else {
            BoFlags::empty()
        };
        let size = 4 * KIB + (i * 7919 % 97) * KIB + i;
        let owner = 1 + i % 3;
        let id = d.bo_create(owner, &req(size, domain, flags), i).unwrap();
        d.bo_write(owner, id, 0, &pattern(id, size)).unwrap();
        live.insert(id, (owner, d.bo_info(owner, id).unwrap()));
    }
    live
}

/// Every live BO still has its placement and contents.
fn assert_preserved(d: &Driver, live: &HashMap<BoId, (OwnerId, BoInfo)>) {
    for (id, (owner, before)) in live {
        let now = d.bo_info(*owner, *id).unwrap();
        assert_eq!(now.segments, before.segments, "BO {id} moved");
        let mut buf = vec![0u8; before.size as usize];
        d.bo_read(*owner, *id, 0, &mut buf).unwrap();
        assert!(buf == pattern(*id, before.size), "BO {id} contents changed");
    }
}

/// Allocates 4 KiB BOs until both domains are full; none may overlap a
/// live BO. Frees them again.
fn fill_and_check_no_overlap(d: &Driver, live: &HashMap<BoId, (OwnerId, BoInfo)>) {
    for domain in Domain::ALL {
        let old: Vec<Range<u64>> = live
            .values()
            .filter(|(_, i)| i.domain == domain)
            .flat_map(|(_, i)| ranges(i))
            .collect();
        let mut fresh = Vec::new();
        loop {
            match d.bo_create(99, &req(4 * KIB, domain, BoFlags::empty()), 0) {
                Ok(id) => {
                    let info = d.bo_info(99, id).unwrap();
                    assert!(
                        !overlaps(&ranges(&info), &old),
                        "new BO {id} overlaps a live BO"
                    );
                    fresh.push(id);
                }
                Err(DriverError::NoSpace { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!fresh.is_empty());
        for id in fresh {
            d.bo_unref(99, id).unwrap();
        }
    }
}

#[test]
fn device_error_then_recovery_keeps_every_live_bo() {
    let (dev, d) = sim_driver(8 * MIB, 8 * MIB);
    let mut live = populate(&d, 60);
    dev.inject_error();
    let e = d
        .bo_create(1, &req(4096, Domain::Gtt, BoFlags::empty()), 0)
        .unwrap_err();
    assert_eq!(
        e,
        DriverError::Manager {
            domain: Domain::Gtt,
            error: ManagerError::NotReady {
                state: ManagerState::Error
            }
        }
    );
    assert!(
        !dev.status()
            .contains(pddgpu::device::regs::pddgpu::Status::ERROR),
        "acknowledged"
    );
    let health = d.health();
    assert_eq!(health.problems.len(), 2, "{health}");
    assert!(
        health.problems[0].contains("vram manager is error: the device reported an internal error")
    );
    // Frees while in ERROR succeed for the caller; recovery reclaims them.
    let freed: Vec<BoId> = live.keys().copied().filter(|id| id.0 % 5 == 0).collect();
    assert!(!freed.is_empty());
    for id in &freed {
        let (owner, _) = live.remove(id).unwrap();
        d.bo_unref(owner, *id).unwrap();
    }
    let r = d.leak_check(1);
    assert!(r.audits.iter().all(|a| a.verdict == AuditVerdict::Skipped));
    assert!(matches!(d.recover(Domain::Vram), Ok(())));
    assert_eq!(d.health().problems.len(), 1, "GTT still in ERROR");
    d.recover(Domain::Gtt).unwrap();
    assert!(d.health().is_ok(), "{}", d.health());
    assert_clean(&d, 2);
    assert_preserved(&d, &live);
    fill_and_check_no_overlap(&d, &live);
    assert_eq!(
        d.recover(Domain::Gtt),
        Err(DriverError::WrongState {
            action: "recover",
            domain: Domain::Gtt,
            reason: "the manager is not in ERROR"
        })
    );
    for (id, (owner, _)) in &live {
        d.bo_unref(*owner, *id).unwrap();
    }
    assert_eq!(d.vram_stats().used_size + d.gtt_stats().used_size, 0);
}

#[test]
fn injected_allocation_failures_fail_exactly_n_creates() {
    let (dev, d) = sim_driver(4 * MIB, 4 * MIB);
    dev.fail_next_allocations(2);
    // Periodic polling does not consume injected allocation failures.
    d.tick(0);
    d.tick(1);
    for domain in [Domain::Vram, Domain::Gtt] {
        assert!(matches!(
            d.bo_create(1, &req(4096, domain, BoFlags::empty()), 0),
            Err(DriverError::NoSpace { .. })
        ));
    }
    assert_eq!(dev.pending_alloc_failures(), 0);
    let id = d
        .bo_create(1, &req(4096, Domain::Vram, BoFlags::empty()), 0)
        .unwrap();
    let s = d.stats();
    assert_eq!((s.vram.failures, s.gtt.failures, s.vram.allocs), (1, 1, 1));
    assert_eq!(d.vram_stats().used_size, 4096);
    assert_eq!(d.gtt_stats().used_size, 0);
    assert!(d.health().is_ok());
    d.bo_unref(1, id).unwrap();
    assert_clean(&d, 0);
}

#[test]
fn corrupted_managers_are_caught_by_the_audit_and_recovered() {
    for domain in Domain::ALL {
        let (dev, d) = sim_driver(4 * MIB, 4 * MIB);
        let live = populate(&d, 20);
        assert_clean(&d, 0);
        dev.corrupt_manager(domain);
        // The next allocation (any domain) makes the driver notice.
        let other = if domain == Domain::Vram {
            Domain::Gtt
        } else {
            Domain::Vram
        };
        let extra = d
            .bo_create(5, &req(4096, other, BoFlags::empty()), 0)
            .unwrap();
        let r = d.leak_check(1);
        let audit = r.audit(domain).unwrap();
        assert_eq!(audit.verdict, AuditVerdict::Mismatch);
        assert_eq!(audit.difference(), 4096, "one leaked page");
        assert_eq!(r.audit(other).unwrap().verdict, AuditVerdict::Clean);
        assert!(r.has_mismatch());
        assert!(!d.health().is_ok());
        assert!(d.health().problems[0].contains("audit"), "{}", d.health());
        assert!(matches!(
            d.bo_create(5, &req(4096, domain, BoFlags::empty()), 0),
            Err(DriverError::Manager { .. })
        ));
        d.recover(domain).unwrap();
        assert_clean(&d, 2);
        assert!(d.health().is_ok());
        assert_preserved(&d, &live);
        fill_and_check_no_overlap(&d, &live);
        d.bo_unref(5, extra).unwrap();
        for (id, (owner, _)) in &live {
            d.bo_unref(*owner, *id).unwrap();
        }
        assert_eq!(d.vram_stats().used_size + d.gtt_stats().used_size, 0);
    }
}

#[test]
fn bad_vram_is_never_handed_out_again() {
    let (dev, d) = sim_driver(MIB, MIB);
    let a = d
        .bo_create(1, &req(64 * KIB, Domain::Vram, BoFlags::CONTIGUOUS), 0)
        .unwrap();
    d.bo_write(1, a, 0, &pattern(a, 64 * KIB)).unwrap();
    let a_start = d.bo_info(1, a).unwrap().segments[0].1;
    let bad_in_bo = a_start + 8 * KIB..a_start + 12 * KIB;
    dev.report_bad_vram_range(bad_in_bo.start, 4 * KIB).unwrap();
    d.tick(0);
    let h = d.health();
    assert_eq!(h.problems, [format!("BO {a} lies on bad VRAM")]);
    // A second bad range in free memory.
    let free_start = if a_start >= 512 * KIB { 0 } else { 768 * KIB };
    let bad_free = free_start + 4 * KIB..free_start + 6 * KIB;
    dev.report_bad_vram_range(bad_free.start, 2 * KIB).unwrap();
    d.tick(0);
    let bad = vec![bad_in_bo.clone(), bad_free.clone()];
    assert_eq!(d.bad_vram().0, bad);
    let check_fill = |d: &Driver| {
        let mut ids = Vec::new();
        while let Ok(id) = d.bo_create(2, &req(4 * KIB, Domain::Vram, BoFlags::empty()), 0) {
            let info = d.bo_info(2, id).unwrap();
            assert!(!overlaps(&ranges(&info), &bad), "BO on bad VRAM");
            ids.push(id);
        }
        for id in ids {
            d.bo_unref(2, id).unwrap();
        }
    };
    check_fill(&d);
    let retired_before = d.bad_vram().1;
    assert!(retired_before >= 4 * KIB, "the free bad page was retired");
    assert_clean(&d, 0);
    // Freeing the BO on bad memory retires it instead.
    d.bo_unref(1, a).unwrap();
    assert_eq!(d.bad_vram().1, retired_before + 64 * KIB);
    assert!(d.health().is_ok());
    assert_clean(&d, 1);
    // Retired memory survives recovery.
    dev.inject_error();
    d.tick(2);
    d.recover(Domain::Vram).unwrap();
    d.recover(Domain::Gtt).unwrap();
    assert_clean(&d, 3);
    check_fill(&d);
    assert_eq!(d.vram_stats().used_size, d.bad_vram().1);
}

#[test]
fn recovery_under_concurrent_load_loses_nothing() {
    let (dev, d) = sim_driver(16 * MIB, 16 * MIB);
    let d = Arc::new(d);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held: Vec<(BoId, u64)> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let domain = if (i + t) % 2 == 0 {
                        Domain::Vram
                    } else {
                        Domain::Gtt
                    };
                    let size = 4 * KIB * (1 + (i * 13 + t) % 16);
                    match d.bo_create(t, &req(size, domain, BoFlags::empty()), i) {
                        Ok(id) => {
                            d.bo_write(t, id, 0, &pattern(id, size)).unwrap();
                            held.push((id, size));
                        }
                        Err(DriverError::Manager { .. })
                        | Err(DriverError::WrongState { .. })
                        | Err(DriverError::NoSpace { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if held.len() > 24 {
                        let (id, size) = held.remove((i as usize * 7) % held.len());
                        let mut buf = vec![0u8; size as usize];
                        d.bo_read(t, id, 0, &mut buf).unwrap();
                        assert!(buf == pattern(id, size), "contents lost");
                        d.bo_unref(t, id).unwrap();
                    }
                }
                for (id, size) in held {
                    let mut buf = vec![0u8; size as usize];
                    d.bo_read(t, id, 0, &mut buf).unwrap();
                    assert!(buf == pattern(id, size), "contents lost");
                    d.bo_unref(t, id).unwrap();
                }
            })
        })
        .collect();
    let mut recovered = 0;
    for round in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        if round % 2 == 0 {
            dev.inject_error();
        } else {
            dev.corrupt_manager(Domain::ALL[round / 2 % 2]);
        }
        d.tick(round as u64);
        d.leak_check(round as u64);
        for domain in Domain::ALL {
            if d.vram_stats().state == ManagerState::Error && domain == Domain::Vram
                || d.gtt_stats().state == ManagerState::Error && domain == Domain::Gtt
            {
                d.recover(domain).unwrap();
                recovered += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(recovered >= 15, "recovered {recovered} times");
    // A corruption whose audit was inconclusive under load is found now.
    d.tick(100);
    d.leak_check(100);
    for domain in Domain::ALL {
        let _ = d.recover(domain);
    }
    assert_clean(&d, 101);
    assert_eq!(d.stats().vram.bo_count + d.stats().gtt.bo_count, 0);
    assert_eq!(d.vram_stats().used_size, 0);
    assert_eq!(d.gtt_stats().used_size, 0);
}
