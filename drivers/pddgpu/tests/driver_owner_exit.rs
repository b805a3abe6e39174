//! `owner_exit`: everything a client holds goes in one batch.

mod common;

use common::{sim_driver, KIB, MIB};
use pddgpu::driver::*;

fn req(size: u64, domain: Domain) -> BoCreate<'static> {
    BoCreate::new(size, domain, "exit")
}

#[test]
fn owner_exit_frees_ten_thousand_bos_in_one_batch() {
    let (_dev, d) = sim_driver(128 * MIB, 128 * MIB);
    let mut vram_bytes = 0;
    let mut gtt_bytes = 0;
    for i in 0..10_000u64 {
        let domain = Domain::ALL[(i % 2) as usize];
        let size = 4 * KIB * (1 + i % 3);
        let id = d.bo_create(1, &req(size, domain), i).unwrap();
        let alloc = d.bo_info(1, id).unwrap().allocated_size;
        match domain {
            Domain::Vram => vram_bytes += alloc,
            Domain::Gtt => gtt_bytes += alloc,
        }
    }
    // Another client's BOs, one BO shared with it, one exported.
    let other = d.bo_create(2, &req(64 * KIB, Domain::Vram), 0).unwrap();
    let shared = d.bo_create(1, &req(8 * KIB, Domain::Gtt), 0).unwrap();
    let token = d.bo_export(1, shared).unwrap();
    d.bo_import(2, shared, token).unwrap();
    d.bo_unexport(2, shared).unwrap();
    let pinned = d.bo_create(1, &req(4 * KIB, Domain::Vram), 0).unwrap();
    let pinned_token = d.bo_export(1, pinned).unwrap();
    vram_bytes += d.bo_info(1, pinned).unwrap().allocated_size;

    let clients = d.clients();
    assert_eq!(clients[0].bo_count, 10_002);
    let before = d.stats();
    let summary = d.owner_exit(1);
    let after = d.stats();
    assert_eq!(summary.owner, 1);
    assert_eq!(summary.released, 10_002);
    assert_eq!(
        summary.freed, 10_001,
        "the exported BO goes too: an export ends with its exporter"
    );
    assert_eq!(summary.still_shared, 1);
    assert_eq!(summary.vram_bytes_freed, vram_bytes);
    assert_eq!(summary.gtt_bytes_freed, gtt_bytes);
    assert_eq!(
        after.updates,
        before.updates + 2,
        "one batched update per domain, not one per BO"
    );
    assert_eq!(after.vram.bo_count + after.gtt.bo_count, 2);
    assert_eq!(after.vram.frees + after.gtt.frees, 10_001);
    assert_eq!(
        d.bo_import(3, pinned, pinned_token),
        Err(DriverError::NoSuchBo)
    );
    // The other client is untouched; the shared BO is now only its.
    assert_eq!(d.bo_info(2, other).unwrap().refcount, 1);
    assert_eq!(d.bo_info(2, shared).unwrap().refcount, 1);
    assert_eq!(d.bo_info(1, shared), Err(DriverError::PermissionDenied));
    assert_eq!(d.clients().len(), 1);
    let report = d.leak_check(1);
    assert!(report
        .audits
        .iter()
        .all(|a| a.verdict == AuditVerdict::Clean));
    assert!(report.suspects.is_empty(), "no BO outlives its holders");
    assert_eq!(
        d.owner_exit(1),
        ExitSummary {
            owner: 1,
            ..ExitSummary::default()
        }
    );
    let s2 = d.owner_exit(2);
    assert_eq!((s2.freed, s2.released), (2, 2));
    assert_eq!(d.vram_stats().used_size + d.gtt_stats().used_size, 0);
    assert!(d.leak_check(2).is_clean());
}
