//! GTT manager: state machine (every operation in every state), retry
//! policy, errors, placement modes, exhaustion and recovery.

use pddgpu::gtt::{GttConfig, GttManager, GTT_PAGE_SIZE};
use pddgpu::manager::{ManagerError, ManagerState, RetryPolicy};
use pddgpu::range::{InsertMode, RangeNode};

/// The error of an operation refused in `state`.
fn wrong_state(action: &'static str, state: ManagerState) -> ManagerError {
    ManagerError::WrongState { action, state }
}

const MIB: u64 = 1 << 20;

fn manager(size: u64) -> GttManager {
    GttManager::new(GttConfig::new(0, size)).unwrap()
}

fn not_ready(state: ManagerState) -> ManagerError {
    ManagerError::NotReady { state }
}

/// Every request-serving operation fails with NotReady in `state`, and
/// nothing changes.
fn assert_serves_nothing(m: &GttManager, live: &RangeNode, state: ManagerState) {
    let before = m.get_stats();
    assert_eq!(m.state(), state);
    assert_eq!(
        m.alloc(4096, 0, None, InsertMode::Best),
        Err(not_ready(state))
    );
    assert_eq!(m.reserve(8 * MIB, 4096), Err(not_ready(state)));
    assert_eq!(m.free(live), Err(not_ready(state)));
    assert!(!m.is_healthy());
    let after = m.get_stats();
    assert_eq!(before, after);
    assert_eq!(after.state, state);
    assert!(!after.is_healthy);
}

#[test]
fn manager_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GttManager>();
}

#[test]
fn every_operation_in_every_state() {
    // INITIALIZING: created but not started.
    let m = GttManager::create(GttConfig::new(0, 16 * MIB)).unwrap();
    let other = manager(16 * MIB);
    let foreign = other.alloc(4096, 0, None, InsertMode::Best).unwrap();
    assert_serves_nothing(&m, &foreign, ManagerState::Initializing);
    assert_eq!(
        m.recover([]),
        Err(wrong_state("recover", ManagerState::Initializing))
    );
    m.start().unwrap();

    // READY: everything is served; start and recover are wrong.
    assert_eq!(m.state(), ManagerState::Ready);
    assert!(m.is_healthy());
    let a = m.alloc(4096, 0, None, InsertMode::Best).unwrap();
    let r = m.reserve(8 * MIB, 4096).unwrap();
    assert_eq!(m.get_stats().node_count, 2);
    assert_eq!(m.start(), Err(wrong_state("start", ManagerState::Ready)));
    assert!(matches!(
        m.recover([&a, &r]),
        Err(ManagerError::WrongState {
            state: ManagerState::Ready,
            ..
        })
    ));
    m.free(&r).unwrap();

    // ERROR: nothing is served; only recovery leaves it.
    m.mark_error();
    assert_serves_nothing(&m, &a, ManagerState::Error);
    m.mark_error(); // idempotent
    assert_eq!(m.state(), ManagerState::Error);
    assert!(m.start().is_err());
    m.recover([&a]).unwrap();
    assert_eq!(m.state(), ManagerState::Ready);
    assert!(m.is_healthy());
    m.free(&a).unwrap();

    // SHUTDOWN: final; mark_error, start and recover cannot leave it.
    let b = m.alloc(4096, 0, None, InsertMode::Best).unwrap();
    m.shutdown();
    assert_serves_nothing(&m, &b, ManagerState::Shutdown);
    m.mark_error();
    assert_eq!(m.state(), ManagerState::Shutdown);
    assert!(m.start().is_err());
    assert!(matches!(
        m.recover([&b]),
        Err(ManagerError::WrongState {
            state: ManagerState::Shutdown,
            ..
        })
    ));
    assert_eq!(m.state(), ManagerState::Shutdown);

    // INITIALIZING -> ERROR is possible too (fault during bring-up).
    let m2 = GttManager::create(GttConfig::new(0, MIB)).unwrap();
    m2.mark_error();
    assert_eq!(m2.state(), ManagerState::Error);
    m2.recover([]).unwrap();
    assert_eq!(m2.state(), ManagerState::Ready);
}

#[test]
fn retry_policy_defaults_and_no_space() {
    let m = manager(4 * GTT_PAGE_SIZE);
    assert_eq!(
        m.retry_policy(),
        RetryPolicy {
            count: 3,
            delay_ms: 5
        }
    );
    assert_eq!(m.config().retry, RetryPolicy::GTT_DEFAULT);
    let _held = m
        .alloc(3 * GTT_PAGE_SIZE, 0, None, InsertMode::Low)
        .unwrap();
    let err = m
        .alloc(2 * GTT_PAGE_SIZE, 0, None, InsertMode::Best)
        .unwrap_err();
    assert_eq!(
        err,
        ManagerError::NoSpace {
            size: 2 * GTT_PAGE_SIZE,
            retry: RetryPolicy::GTT_DEFAULT
        }
    );
    assert!(err.is_retryable());
    let p = RetryPolicy {
        count: 7,
        delay_ms: 1,
    };
    m.set_retry_policy(p);
    assert_eq!(m.get_stats().retry, p);
    assert_eq!(
        m.alloc(2 * GTT_PAGE_SIZE, 0, None, InsertMode::Best),
        Err(ManagerError::NoSpace {
            size: 2 * GTT_PAGE_SIZE,
            retry: p
        })
    );
    // A request that could not fit even in an empty aperture is not
    // retryable.
    let never = m
        .alloc(8 * GTT_PAGE_SIZE, 0, None, InsertMode::Best)
        .unwrap_err();
    assert!(matches!(never, ManagerError::InvalidArgument(_)));
    assert!(!never.is_retryable());
}

#[test]
fn bad_requests_are_rejected_without_change() {
    let m = manager(16 * MIB);
    let keep = m.alloc(MIB, 0, None, InsertMode::Best).unwrap();
    let before = m.get_stats();
    for bad in [
        m.alloc(0, 0, None, InsertMode::Best),
        m.alloc(4096, 3, None, InsertMode::Best),
        #[allow(clippy::reversed_empty_ranges)]
        m.alloc(4096, 0, Some(8 * MIB..MIB), InsertMode::Low),
        m.alloc(32 * MIB, 0, None, InsertMode::Best),
        m.alloc(MIB, 0, Some(16 * MIB..64 * MIB), InsertMode::Best),
        m.alloc(2 * MIB, 0, Some(MIB..3 * MIB - 1), InsertMode::Low),
        m.alloc(4096, 32 * MIB, Some(MIB..16 * MIB), InsertMode::High),
        m.reserve(0, 0),
        m.reserve(16 * MIB, 4096),
        m.reserve(u64::MAX - 10, 4096),
    ] {
        assert!(
            matches!(bad, Err(ManagerError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        m.reserve(keep.start(), 4096),
        Err(ManagerError::RangeBusy {
            start: keep.start(),
            size: 4096
        })
    );
    // Double free, stale copy, foreign node.
    let other = manager(16 * MIB);
    let foreign = other.alloc(MIB, 0, None, InsertMode::Best).unwrap();
    assert!(matches!(
        m.free(&foreign),
        Err(ManagerError::InvalidFree(_))
    ));
    let gone = m.alloc(4096, 0, None, InsertMode::Best).unwrap();
    m.free(&gone).unwrap();
    let before2 = m.get_stats();
    assert!(matches!(m.free(&gone), Err(ManagerError::InvalidFree(_))));
    assert_eq!(m.get_stats(), before2);
    assert_eq!(before2, before);
    m.free(&keep).unwrap();
}

#[test]
fn modes_ranges_and_default_alignment() {
    let m = manager(64 * MIB);
    let low = m.alloc(5000, 0, None, InsertMode::Low).unwrap();
    assert_eq!(low.start(), 0);
    assert_eq!(
        low.size(),
        5000,
        "byte granularity: the size is not rounded"
    );
    let next = m.alloc(100, 0, None, InsertMode::Low).unwrap();
    assert_eq!(
        next.start(),
        2 * GTT_PAGE_SIZE,
        "align 0 means page alignment"
    );
    let byte = m.alloc(100, 1, None, InsertMode::Low).unwrap();
    assert_eq!(byte.start(), 5000, "align 1 packs at byte granularity");
    let high = m.alloc(MIB, 2 * MIB, None, InsertMode::High).unwrap();
    assert_eq!(high.start(), 62 * MIB);
    let ranged = m
        .alloc(MIB, MIB, Some(10 * MIB + 1..20 * MIB), InsertMode::High)
        .unwrap();
    assert_eq!(ranged.start(), 19 * MIB);
    let ranged_low = m
        .alloc(MIB, MIB, Some(10 * MIB + 1..20 * MIB), InsertMode::Low)
        .unwrap();
    assert_eq!(ranged_low.start(), 11 * MIB);
    // Best takes the smallest fitting hole: free a 1 MiB gap between nodes.
    let a = m.reserve(30 * MIB, MIB).unwrap();
    let gap = m.reserve(31 * MIB, MIB).unwrap();
    let _c = m.reserve(32 * MIB, MIB).unwrap();
    m.free(&gap).unwrap();
    let best = m.alloc(MIB, 0, None, InsertMode::Best).unwrap();
    assert_eq!(best.start(), 31 * MIB);
    assert_eq!(
        m.alloc(2 * MIB, 0, Some(30 * MIB..33 * MIB), InsertMode::Best),
        Err(ManagerError::NoSpace {
            size: 2 * MIB,
            retry: RetryPolicy::GTT_DEFAULT
        })
    );
    m.free(&a).unwrap();
}

#[test]
fn exhaustion_and_refill() {
    let pages = 512;
    let m = manager(pages * GTT_PAGE_SIZE);
    let mut nodes = Vec::new();
    loop {
        match m.alloc(GTT_PAGE_SIZE, 0, None, InsertMode::Best) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                assert_eq!(
                    e,
                    ManagerError::NoSpace {
                        size: GTT_PAGE_SIZE,
                        retry: RetryPolicy::GTT_DEFAULT
                    }
                );
                break;
            }
        }
    }
    assert_eq!(nodes.len() as u64, pages);
    let s = m.get_stats();
    assert_eq!((s.used_size, s.free_size), (s.total_size, 0));
    assert_eq!((s.hole_count, s.largest_hole, s.node_count), (0, 0, pages));
    assert_eq!(s.fragmentation_permille(), 0);
    assert!(m.reserve(0, 1).is_err());
    // Free every other page: maximal fragmentation, no 2-page hole.
    for n in nodes.iter().step_by(2) {
        m.free(n).unwrap();
    }
    let s = m.get_stats();
    assert_eq!(s.hole_count, pages / 2);
    assert_eq!(s.largest_hole, GTT_PAGE_SIZE);
    let free = pages / 2 * GTT_PAGE_SIZE;
    assert_eq!(
        s.fragmentation_permille(),
        (free - GTT_PAGE_SIZE) * 1000 / free
    );
    assert!(m
        .alloc(2 * GTT_PAGE_SIZE, 0, None, InsertMode::Best)
        .is_err());
    for n in nodes.iter().skip(1).step_by(2) {
        m.free(n).unwrap();
    }
    let s = m.get_stats();
    assert_eq!((s.used_size, s.hole_count, s.node_count), (0, 1, 0));
    assert_eq!(s.largest_hole, s.total_size);
    assert_eq!(m.holes(), vec![0..pages * GTT_PAGE_SIZE]);
    assert_eq!(m.audit(), Ok(()));
}

#[test]
fn recovery_keeps_live_nodes_and_reclaims_the_rest() {
    let m = GttManager::new(GttConfig::new(1 << 32, 256 * MIB)).unwrap();
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live = Vec::new();
    for i in 0..400 {
        let size = 1 + next() % (256 * 1024);
        let align = 1u64 << (next() % 16);
        let mode = [InsertMode::Best, InsertMode::Low, InsertMode::High][i % 3];
        live.push(m.alloc(size, align, None, mode).unwrap());
    }
    for _ in 0..150 {
        let i = (next() % live.len() as u64) as usize;
        m.free(&live.swap_remove(i)).unwrap();
    }
    // An injected fault: frees now fail, the driver drops those BOs from its
    // table, and recovery must reclaim their space.
    m.mark_error();
    let mut dropped = Vec::new();
    for _ in 0..50 {
        let i = (next() % live.len() as u64) as usize;
        let n = live.swap_remove(i);
        assert_eq!(m.free(&n), Err(not_ready(ManagerState::Error)));
        dropped.push(n);
    }
    // A bad live list is refused; the manager stays in ERROR with its old
    // allocator.
    let dup: Vec<&RangeNode> = live.iter().chain(live.iter().take(1)).collect();
    assert!(matches!(
        m.recover(dup),
        Err(ManagerError::RecoveryFailed(_))
    ));
    assert_eq!(m.state(), ManagerState::Error);
    let foreign = manager(MIB).alloc(4096, 0, None, InsertMode::Best).unwrap();
    assert!(matches!(
        m.recover(live.iter().chain([&foreign])),
        Err(ManagerError::RecoveryFailed(_))
    ));
    assert_eq!(m.state(), ManagerState::Error);

    m.recover(&live).unwrap();
    let s = m.get_stats();
    assert_eq!(s.state, ManagerState::Ready);
    assert!(s.is_healthy);
    assert_eq!(s.used_size, live.iter().map(RangeNode::size).sum::<u64>());
    assert_eq!(s.node_count, live.len() as u64);
    assert_eq!(m.audit(), Ok(()));
    // Dropped nodes are gone for good: their handles are rejected.
    for n in &dropped {
        assert!(matches!(m.free(n), Err(ManagerError::InvalidFree(_))));
    }
    // New allocations never overlap a live node.
    let mut fresh = Vec::new();
    while let Ok(n) = m.alloc(64 * 1024, 0, None, InsertMode::Best) {
        fresh.push(n);
    }
    let mut all: Vec<(u64, u64)> = live
        .iter()
        .chain(&fresh)
        .map(|n| (n.start(), n.end()))
        .collect();
    all.sort_unstable();
    assert!(
        all.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlap after recovery"
    );
    // Everything live before the fault can still be freed.
    for n in live.iter().chain(&fresh) {
        m.free(n).unwrap();
    }
    let s = m.get_stats();
    assert_eq!((s.used_size, s.node_count, s.hole_count), (0, 0, 1));
    assert_eq!(m.holes(), vec![(1 << 32)..(1 << 32) + 256 * MIB]);
}
