//! 100 threads × 1000 create/unref pairs in-process, and the consistency
//! of statistics read while many threads allocate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use common::{sim_driver, KIB, MIB};
use pddgpu::driver::*;

fn driver() -> Arc<Driver> {
    Arc::new(sim_driver(256 * MIB, 256 * MIB).1)
}

fn req(size: u64, domain: Domain, flags: BoFlags) -> BoCreate<'static> {
    BoCreate::new(size, domain, "stress").with_flags(flags)
}

/// 100 threads × 1000 create/unref, VRAM and GTT mixed, some BOs kept
/// for a while: afterwards nothing is used, no BO is live, the audit is
/// clean.
#[test]
fn hundred_threads_by_thousand_create_unref() {
    let d = driver();
    let threads: Vec<_> = (0..100u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..1000u64 {
                    let domain = if (i + t) % 2 == 0 {
                        Domain::Vram
                    } else {
                        Domain::Gtt
                    };
                    let flags = match i % 7 {
                        0 => BoFlags::CONTIGUOUS,
                        1 if domain == Domain::Vram => BoFlags::VISIBLE,
                        _ => BoFlags::empty(),
                    };
                    let size = 4 * KIB + ((i * 2654435761 + t) % 64) * KIB;
                    let id = d.bo_create(t, &req(size, domain, flags), i).unwrap();
                    held.push(id);
                    if held.len() > 8 || i % 3 == 0 {
                        let victim = held.swap_remove((i as usize) % held.len());
                        d.bo_unref(t, victim).unwrap();
                    }
                }
                for id in held {
                    d.bo_unref(t, id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = d.stats();
    assert_eq!(s.vram.bo_count + s.gtt.bo_count, 0);
    assert_eq!(s.vram.allocs + s.gtt.allocs, 100_000);
    assert_eq!(s.vram.frees + s.gtt.frees, 100_000);
    assert_eq!(s.vram.allocated_bytes + s.gtt.allocated_bytes, 0);
    assert_eq!(d.vram_stats().used_size, 0);
    assert_eq!(d.vram_stats().visible_used, 0);
    assert_eq!(d.gtt_stats().used_size, 0);
    assert!(d.bo_list().is_empty());
    assert!(d.clients().is_empty());
    let report = d.leak_check(1);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.live_bos, 0);
    assert!(d.health().is_ok());
}

/// Snapshots taken while writers run always satisfy the invariants that
/// hold after every complete update.
#[test]
fn stats_snapshots_are_consistent_under_writers() {
    let d = driver();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let domain = Domain::ALL[(i % 2) as usize];
                    let id = d
                        .bo_create(t, &req(4 * KIB, domain, BoFlags::empty()), 0)
                        .unwrap();
                    d.bo_unref(t, id).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = d.stats();
                    for c in [s.vram, s.gtt] {
                        assert_eq!(c.allocs - c.frees, c.bo_count, "{c:?}");
                        assert_eq!(c.bo_count * 4 * KIB, c.allocated_bytes, "{c:?}");
                        assert_eq!(c.requested_bytes, c.allocated_bytes, "{c:?}");
                        assert!(c.peak_bo_count >= c.bo_count);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    let s = d.stats();
    assert_eq!(s.vram.allocs + s.gtt.allocs, 60_000);
    assert_eq!(s.updates, 120_000);
}

/// Sharing across threads: one thread exports and lets go once the BO is
/// imported (an export lasts while its exporter holds the BO), others
/// import and drop; every BO is freed exactly once when its last holder
/// goes.
#[test]
fn concurrent_export_import_and_exit() {
    let d = driver();
    let (tx, rx) = std::sync::mpsc::channel::<(BoId, ExportToken)>();
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<BoId>();
    // The consumers exit only once the producer has let go of everything,
    // so what they still hold is freed by their exits.
    let let_go_all = Arc::new(std::sync::Barrier::new(5));
    let producer = {
        let (d, let_go_all) = (d.clone(), let_go_all.clone());
        std::thread::spawn(move || {
            let mut let_go = 0;
            for i in 0..2000u64 {
                let domain = Domain::ALL[(i % 2) as usize];
                let id = d
                    .bo_create(1, &req(8 * KIB, domain, BoFlags::empty()), 0)
                    .unwrap();
                d.bo_write(1, id, 0, &i.to_le_bytes()).unwrap();
                let token = d.bo_export(1, id).unwrap();
                tx.send((id, token)).unwrap();
                while let Ok(imported) = ack_rx.try_recv() {
                    d.bo_unref(1, imported).unwrap();
                    let_go += 1;
                }
            }
            drop(tx);
            while let_go < 2000 {
                d.bo_unref(1, ack_rx.recv().unwrap()).unwrap();
                let_go += 1;
            }
            let_go_all.wait();
        })
    };
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let consumers: Vec<_> = (2..6u64)
        .map(|owner| {
            let (d, rx, ack) = (d.clone(), rx.clone(), ack_tx.clone());
            let let_go_all = let_go_all.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let msg = rx.lock().unwrap().recv();
                    let Ok((id, token)) = msg else { break };
                    let info = d.bo_import(owner, id, token).unwrap();
                    assert!(info.exported);
                    ack.send(id).unwrap();
                    let mut b = [0u8; 8];
                    d.bo_read(owner, id, 0, &mut b).unwrap();
                    d.bo_unexport(owner, id).unwrap();
                    if n % 2 == 0 {
                        d.bo_unref(owner, id).unwrap();
                    }
                    n += 1;
                }
                drop(ack);
                let_go_all.wait();
                d.owner_exit(owner)
            })
        })
        .collect();
    drop(ack_tx);
    producer.join().unwrap();
    let summaries: Vec<ExitSummary> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
    let freed_at_exit: u64 = summaries.iter().map(|s| s.freed).sum();
    assert!(freed_at_exit > 0);
    let s = d.stats();
    assert_eq!(s.vram.allocs + s.gtt.allocs, 2000);
    assert_eq!(s.vram.frees + s.gtt.frees, 2000);
    assert_eq!(d.vram_stats().used_size + d.gtt_stats().used_size, 0);
    assert!(d.leak_check(0).is_clean());
}
