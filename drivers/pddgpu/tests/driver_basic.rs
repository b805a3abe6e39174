//! The driver's basic contract: bring-up from registers, BO life cycle,
//! contents, ownership, sharing, quotas, tunables, leak reports, shutdown.

mod common;

use common::{KIB, MIB};
use pddgpu::device::{
    DeviceError, DeviceResources, MemoryRegion, Mmio, PddgpuModel, RegisterBlock, SimConfig,
    SimDevice, Width,
};
use pddgpu::driver::*;
use pddgpu::manager::{ManagerState, RetryPolicy};

fn sim() -> SimDevice {
    SimDevice::new(SimConfig::sized(8 * MIB, 16 * MIB)).unwrap()
}

fn req(size: u64, domain: Domain) -> BoCreate<'static> {
    BoCreate::new(size, domain, "test")
}

#[test]
fn the_driver_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Driver>();
    shareable::<pddgpu::device::Mmio>();
    shareable::<MemoryRegion>();
    let d = Driver::new(sim().resources(), 0).unwrap();
    assert_eq!(d.try_stats(1), Some(d.stats()));
}

#[test]
fn init_reads_sizes_from_registers_and_enables_the_device() {
    let dev = sim();
    assert!(!dev.is_enabled());
    let d = Driver::new(dev.resources(), 0).unwrap();
    assert_eq!(d.device_state(), DeviceState::READY);
    assert!(dev.is_enabled());
    let info = d.info();
    assert_eq!(
        (info.vram_size, info.visible_size, info.gtt_size),
        (8 * MIB, 2 * MIB, 16 * MIB)
    );
    assert_eq!(d.vram_stats().total_size, 8 * MIB);
    assert_eq!(d.vram_stats().visible_size, 2 * MIB);
    assert_eq!(d.gtt_stats().total_size, 16 * MIB);
    assert_eq!(d.vram_stats().state, ManagerState::Ready);
    assert!(d.health().is_ok(), "{}", d.health());
}

#[test]
fn init_refuses_foreign_devices_and_short_backing() {
    /// 4 KiB of registers that read as zero: not a PDDGPU.
    #[derive(Debug)]
    struct Blank;
    impl RegisterBlock for Blank {
        fn len(&self) -> usize {
            4096
        }
        fn read(&self, _offset: usize, _width: Width) -> u64 {
            0
        }
        fn write(&self, _offset: usize, _width: Width, _value: u64) {}
    }
    let mmio = Mmio::emulated(std::sync::Arc::new(Blank));
    let res = DeviceResources {
        mmio,
        model: PddgpuModel::boxed(),
        vram: MemoryRegion::new_zeroed(4096).unwrap(),
        gtt: MemoryRegion::new_zeroed(4096).unwrap(),
    };
    assert!(matches!(
        Driver::new(res, 0),
        Err(DriverError::Device(DeviceError::NotThisDevice { .. }))
    ));
    let dev = sim();
    let mut res = dev.resources();
    res.gtt = MemoryRegion::new_zeroed(MIB as usize).unwrap();
    assert_eq!(
        Driver::new(res, 0).unwrap_err(),
        DriverError::Device(DeviceError::BackingTooSmall {
            what: "GTT",
            len: MIB,
            need: 16 * MIB
        })
    );
    assert!(!dev.is_enabled());
}

#[test]
fn bo_contents_round_trip_through_the_backing_segments() {
    let dev = sim();
    let d = Driver::new(dev.resources(), 0).unwrap();
    for domain in Domain::ALL {
        let size = 300 * KIB + 123;
        let mut r = req(size, domain);
        r.flags = BoFlags::CLEARED;
        r.label = "frame";
        let id = d.bo_create(7, &r, 42).unwrap();
        assert_eq!(id.domain(), Some(domain));
        let info = d.bo_info(7, id).unwrap();
        assert_eq!(info.size, size);
        assert_eq!(info.domain, domain);
        assert_eq!(info.owner, 7);
        assert_eq!(info.refcount, 1);
        assert_eq!(info.created_ms, 42);
        assert_eq!(info.label, "frame");
        assert!(!info.exported);
        assert!(info.allocated_size >= size);
        assert_eq!(info.segments.iter().map(|s| s.2).sum::<u64>(), size);
        let mut at = 0;
        for &(bo_off, _, len) in &info.segments {
            assert_eq!(bo_off, at);
            at += len;
        }
        // Cleared.
        let mut buf = vec![0xffu8; size as usize];
        assert_eq!(d.bo_read(7, id, 0, &mut buf).unwrap(), size as usize);
        assert!(buf.iter().all(|&b| b == 0));
        // Write a pattern across segment boundaries, read it back.
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(d.bo_write(7, id, 0, &data).unwrap(), size as usize);
        let mut back = vec![0u8; size as usize];
        d.bo_read(7, id, 0, &mut back).unwrap();
        assert_eq!(back, data);
        // The bytes are where the segments say, in the backing memory.
        let region = d.backing(domain);
        for &(bo_off, back_off, len) in &info.segments {
            let mut seg = vec![0u8; len as usize];
            region.copy_out(back_off, &mut seg).unwrap();
            assert_eq!(seg, data[bo_off as usize..(bo_off + len) as usize]);
        }
        // Partial and edge accesses.
        let mut small = [0u8; 10];
        assert_eq!(d.bo_read(7, id, size - 4, &mut small).unwrap(), 4);
        assert_eq!(&small[..4], &data[size as usize - 4..]);
        assert_eq!(d.bo_read(7, id, size, &mut small).unwrap(), 0);
        assert_eq!(d.bo_write(7, id, size - 2, &[1, 2, 3]).unwrap(), 2);
        assert_eq!(
            d.bo_read(7, id, size + 1, &mut small),
            Err(DriverError::OutOfBounds)
        );
        d.bo_unref(7, id).unwrap();
        assert_eq!(d.bo_info(7, id), Err(DriverError::NoSuchBo));
    }
    assert_eq!(d.vram_stats().used_size, 0);
    assert_eq!(d.gtt_stats().used_size, 0);
}

#[test]
fn non_holders_are_refused_and_ids_are_never_reused() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    let id = d.bo_create(1, &req(4096, Domain::Vram), 0).unwrap();
    assert_eq!(d.bo_info(2, id), Err(DriverError::PermissionDenied));
    assert_eq!(
        d.bo_read(2, id, 0, &mut [0; 4]),
        Err(DriverError::PermissionDenied)
    );
    assert_eq!(
        d.bo_write(2, id, 0, &[0; 4]),
        Err(DriverError::PermissionDenied)
    );
    assert_eq!(d.bo_export(2, id), Err(DriverError::PermissionDenied));
    assert_eq!(d.bo_unref(2, id), Err(DriverError::PermissionDenied));
    assert_eq!(d.bo_info(1, BoId(0)), Err(DriverError::NoSuchBo));
    assert_eq!(d.bo_unref(1, BoId(0)), Err(DriverError::NoSuchBo));
    assert_eq!(d.bo_info(1, BoId(id.0 + 2)), Err(DriverError::NoSuchBo));
    d.bo_unref(1, id).unwrap();
    assert_eq!(d.bo_unref(1, id), Err(DriverError::NoSuchBo));
    let again = d.bo_create(1, &req(4096, Domain::Vram), 0).unwrap();
    assert_ne!(again, id);
    assert_eq!(d.bo_info(1, id), Err(DriverError::NoSuchBo));
    assert!(d.bo_info(1, again).is_ok());
}

#[test]
fn exports_last_while_their_exporter_holds_the_bo() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    let id = d.bo_create(1, &req(64 * KIB, Domain::Gtt), 0).unwrap();
    d.bo_write(1, id, 0, b"shared").unwrap();
    let token = d.bo_export(1, id).unwrap();
    assert_eq!(
        d.bo_export(1, id),
        Ok(token),
        "exporting again gives the same token"
    );
    for byte in 0..ExportToken::LEN {
        let mut wrong = token.to_bytes();
        wrong[byte] ^= 1;
        assert_eq!(
            d.bo_import(2, id, ExportToken::from_bytes(wrong)),
            Err(DriverError::BadToken),
            "a token wrong in byte {byte}"
        );
    }
    assert_eq!(
        d.bo_import(2, id, ExportToken::from_bytes([0; ExportToken::LEN])),
        Err(DriverError::BadToken)
    );
    assert_eq!(
        d.bo_import(2, BoId(id.0 + 2), token),
        Err(DriverError::NoSuchBo)
    );
    let info = d.bo_import(2, id, token).unwrap();
    assert_eq!(info.refcount, 2, "two holders; the export is no reference");
    assert!(info.exported);
    assert_eq!(d.bo_export(2, id), Ok(token), "one export per BO");
    // The exporter lets go: the importer keeps the BO, the token dies.
    d.bo_unref(1, id).unwrap();
    let mut buf = [0u8; 6];
    d.bo_read(2, id, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"shared");
    assert_eq!(d.bo_info(1, id), Err(DriverError::PermissionDenied));
    assert!(!d.bo_info(2, id).unwrap().exported);
    assert_eq!(d.bo_import(3, id, token), Err(DriverError::BadToken));
    // The importer may export it anew, with a fresh token.
    let again = d.bo_export(2, id).unwrap();
    assert_ne!(again, token);
    d.bo_import(3, id, again).unwrap();
    d.bo_unexport(3, id).unwrap();
    assert_eq!(d.bo_import(4, id, again), Err(DriverError::BadToken));
    let report = d.leak_check(10);
    assert!(report.suspects.is_empty(), "{report:?}");
    assert!(report
        .audits
        .iter()
        .all(|a| a.verdict == AuditVerdict::Clean));
    // The last holder goes: the BO goes with it.
    d.bo_unref(2, id).unwrap();
    d.bo_unref(3, id).unwrap();
    assert_eq!(d.bo_info(3, id), Err(DriverError::NoSuchBo));
    assert_eq!(d.gtt_stats().used_size, 0);
    // An exporter that exits takes its export with it: nothing is left
    // that no one holds.
    let id = d.bo_create(5, &req(4096, Domain::Vram), 0).unwrap();
    let token = d.bo_export(5, id).unwrap();
    let kept = d.bo_create(5, &req(4096, Domain::Vram), 0).unwrap();
    let s = d.owner_exit(5);
    assert_eq!((s.freed, s.vram_bytes_freed), (2, 8192));
    assert_eq!(d.bo_import(6, id, token), Err(DriverError::NoSuchBo));
    assert_eq!(d.bo_info(5, kept), Err(DriverError::NoSuchBo));
    assert_eq!(d.stats().vram.bo_count, 0);
    assert!(d.leak_check(20).is_clean());
}

#[test]
fn quotas_refuse_creates_without_allocating() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    assert_eq!(d.tunables().set("client_quota_bytes", "1M"), Ok(MIB));
    let a = d.bo_create(1, &req(512 * KIB, Domain::Vram), 0).unwrap();
    let used = d.vram_stats().used_size;
    let err = d.bo_create(1, &req(600 * KIB, Domain::Gtt), 0).unwrap_err();
    assert_eq!(
        err,
        DriverError::QuotaExceeded {
            owner: 1,
            quota: MIB,
            held: 512 * KIB,
            requested: 600 * KIB
        }
    );
    assert!(err.to_string().contains("quota"));
    assert_eq!(d.vram_stats().used_size, used);
    assert_eq!(d.gtt_stats().used_size, 0);
    assert!(d.bo_create(2, &req(600 * KIB, Domain::Gtt), 0).is_ok());
    let clients = d.clients();
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0].owner, 1);
    assert_eq!(clients[0].vram_bytes, 512 * KIB);
    assert_eq!(clients[0].quota, Some(MIB));
    assert_eq!(clients[1].gtt_bytes, 600 * KIB);
    d.bo_unref(1, a).unwrap();
    assert!(d.bo_create(1, &req(600 * KIB, Domain::Gtt), 0).is_ok());
    assert_eq!(d.stats().gtt.failures, 1);
    d.tunables().set("client_quota_bytes", "0").unwrap();
    assert!(d.bo_create(1, &req(2 * MIB, Domain::Vram), 0).is_ok());
}

/// The quota charges what the allocator takes (whole pages), so a flood of
/// 1-byte BOs exhausts its owner's quota after as many pages, and nobody
/// else's.
#[test]
fn quotas_charge_allocated_pages_not_requested_bytes() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    d.tunables().set("client_quota_bytes", "16K").unwrap();
    for domain in [Domain::Gtt, Domain::Vram] {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                d.bo_create(1, &req(1, domain), 0)
                    .expect("within the quota"),
            );
        }
        assert_eq!(
            d.bo_create(1, &req(1, domain), 0),
            Err(DriverError::QuotaExceeded {
                owner: 1,
                quota: 16 * KIB,
                held: 16 * KIB,
                requested: PAGE_SIZE,
            }),
            "{domain}: four 1-byte BOs took four pages of quota"
        );
        let usage = d.clients()[0];
        let charged = match domain {
            Domain::Vram => usage.vram_bytes,
            Domain::Gtt => usage.gtt_bytes,
        };
        assert_eq!(charged, 4 * PAGE_SIZE);
        let used = match domain {
            Domain::Vram => d.vram_stats().used_size,
            Domain::Gtt => d.gtt_stats().used_size,
        };
        assert_eq!(used, 4 * PAGE_SIZE, "{domain}: every BO takes a page");
        let other = d.bo_create(2, &req(4 * PAGE_SIZE, domain), 0);
        assert!(other.is_ok(), "another owner is unaffected: {other:?}");
        d.bo_unref(2, other.unwrap()).unwrap();
        for id in held {
            d.bo_unref(1, id).unwrap();
        }
        assert!(d.clients().is_empty(), "letting go ends every charge");
    }
}

/// An importer is charged for what it imports, and an import beyond its
/// quota is refused; the charge stays with the importer after the
/// creator lets go.
#[test]
fn imports_count_against_the_importer() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    d.tunables().set("client_quota_bytes", "64K").unwrap();
    let big = d.bo_create(1, &req(48 * KIB, Domain::Gtt), 0).unwrap();
    let token = d.bo_export(1, big).unwrap();
    let own = d.bo_create(2, &req(32 * KIB, Domain::Vram), 0).unwrap();
    assert_eq!(
        d.bo_import(2, big, token),
        Err(DriverError::QuotaExceeded {
            owner: 2,
            quota: 64 * KIB,
            held: 32 * KIB,
            requested: 48 * KIB,
        })
    );
    assert_eq!(
        d.bo_info(1, big).unwrap().refcount,
        1,
        "the refused import took nothing"
    );
    d.bo_unref(2, own).unwrap();
    d.bo_import(2, big, token).expect("within the quota now");
    d.bo_ref(2, big)
        .expect("a second handle costs nothing more");
    let charged = |o: OwnerId| {
        d.clients()
            .iter()
            .find(|c| c.owner == o)
            .map_or(0, |c| c.vram_bytes + c.gtt_bytes)
    };
    assert_eq!(
        (charged(1), charged(2)),
        (48 * KIB, 48 * KIB),
        "both holders pay"
    );
    d.bo_unref(1, big).unwrap();
    assert_eq!((charged(1), charged(2)), (0, 48 * KIB));
    assert!(matches!(
        d.bo_create(2, &req(32 * KIB, Domain::Gtt), 0),
        Err(DriverError::QuotaExceeded { .. })
    ));
    d.bo_unref(2, big).unwrap();
    d.bo_unref(2, big).unwrap();
    assert_eq!(charged(2), 0);
    assert_eq!(d.stats().gtt.bo_count, 0);
}

/// A cleared BO is cleared over every byte the allocator took: the rest of
/// its last page holds nothing of an earlier BO.
#[test]
fn clearing_covers_the_whole_last_page() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    for domain in [Domain::Gtt, Domain::Vram] {
        let dirty = d.bo_create(1, &req(PAGE_SIZE, domain), 0).unwrap();
        d.bo_write(1, dirty, 0, &[0xEE; PAGE_SIZE as usize])
            .unwrap();
        let at = d.bo_info(1, dirty).unwrap().segments[0].1;
        d.bo_unref(1, dirty).unwrap();
        let small = BoCreate {
            flags: BoFlags::CLEARED,
            ..req(100, domain)
        };
        let id = d.bo_create(2, &small, 0).unwrap();
        let info = d.bo_info(2, id).unwrap();
        assert_eq!(info.segments[0].1, at, "{domain}: the same page again");
        assert_eq!(info.allocated_size, PAGE_SIZE);
        let mut page = [0xAAu8; PAGE_SIZE as usize];
        d.backing(domain).copy_out(at, &mut page).unwrap();
        assert!(
            page.iter().all(|&b| b == 0),
            "{domain}: stale byte at {:?}",
            page.iter().position(|&b| b != 0)
        );
        d.bo_unref(2, id).unwrap();
    }
}

/// A failing random source fails the export and exports nothing; tokens
/// come from the source the front end gives.
#[test]
fn exports_draw_their_tokens_from_the_given_source() {
    struct Broken;
    impl TokenSource for Broken {
        fn fill(&self, _: &mut [u8; ExportToken::LEN]) -> Result<(), EntropyError> {
            Err(EntropyError(5))
        }
    }
    let d = Driver::with_options(
        sim().resources(),
        DriverOptions::with_token_source(Box::new(Broken)),
        0,
    )
    .unwrap();
    let id = d.bo_create(1, &req(4096, Domain::Gtt), 0).unwrap();
    assert_eq!(
        d.bo_export(1, id),
        Err(DriverError::Entropy(EntropyError(5)))
    );
    assert!(!d.bo_info(1, id).unwrap().exported);
    let seeded = |seed| {
        let d = Driver::with_options(sim().resources(), DriverOptions::with_seed(seed), 0).unwrap();
        let id = d.bo_create(1, &req(4096, Domain::Gtt), 0).unwrap();
        d.bo_export(1, id).unwrap().to_bytes()
    };
    assert_eq!(seeded(7), seeded(7), "a seeded source repeats");
    assert_ne!(seeded(7), seeded(8));
}

#[test]
fn invalid_requests_allocate_nothing() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    let long = "x".repeat(LABEL_MAX + 1);
    let bad = [
        BoCreate {
            size: 0,
            ..req(1, Domain::Vram)
        },
        BoCreate {
            align: 3,
            ..req(4096, Domain::Gtt)
        },
        BoCreate {
            label: &long,
            ..req(4096, Domain::Gtt)
        },
        BoCreate {
            size: 9 * MIB,
            ..req(1, Domain::Vram)
        },
        BoCreate {
            flags: BoFlags::VISIBLE,
            ..req(3 * MIB, Domain::Vram)
        },
        BoCreate {
            flags: BoFlags::from_bits_retain(1 << 20),
            ..req(4096, Domain::Vram)
        },
    ];
    for r in &bad {
        assert!(
            matches!(d.bo_create(1, r, 0), Err(DriverError::InvalidArgument(_))),
            "{r:?}"
        );
    }
    let s = d.stats();
    assert_eq!((s.vram.allocs, s.gtt.allocs, s.vram.failures), (0, 0, 0));
    assert_eq!(d.vram_stats().used_size + d.gtt_stats().used_size, 0);
    assert!(d.clients().is_empty());
    // Flags are honoured.
    let v = d
        .bo_create(
            1,
            &BoCreate {
                flags: BoFlags::VISIBLE | BoFlags::CONTIGUOUS,
                ..req(MIB, Domain::Vram)
            },
            0,
        )
        .unwrap();
    let info = d.bo_info(1, v).unwrap();
    assert_eq!(info.segments.len(), 1);
    assert!(
        info.segments[0].1 + MIB <= 2 * MIB,
        "inside the visible window"
    );
    assert_eq!(d.stats().vram.visible_bytes, MIB);
    let a = d
        .bo_create(
            1,
            &BoCreate {
                align: 64 * KIB,
                ..req(4096, Domain::Gtt)
            },
            0,
        )
        .unwrap();
    assert_eq!(d.bo_info(1, a).unwrap().segments[0].1 % (64 * KIB), 0);
}

#[test]
fn no_space_carries_the_tunable_retry_policy() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    let big = d.bo_create(1, &req(16 * MIB, Domain::Gtt), 0).unwrap();
    assert_eq!(
        d.bo_create(1, &req(4096, Domain::Gtt), 0),
        Err(DriverError::NoSpace {
            domain: Domain::Gtt,
            size: 4096,
            retry: RetryPolicy::GTT_DEFAULT
        })
    );
    d.tunables().set("gtt_retry_count", "5").unwrap();
    d.tunables().set("gtt_retry_delay_ms", "7").unwrap();
    let e = d.bo_create(1, &req(4096, Domain::Gtt), 0).unwrap_err();
    let five = RetryPolicy {
        count: 5,
        delay_ms: 7,
    };
    assert_eq!(
        e,
        DriverError::NoSpace {
            domain: Domain::Gtt,
            size: 4096,
            retry: five
        }
    );
    assert!(e.is_retryable());
    assert_eq!(d.gtt_stats().retry, five);
    assert_eq!(d.stats().gtt.failures, 2);
    d.bo_unref(1, big).unwrap();
    assert_eq!(d.free_epoch(Domain::Gtt), 1);
    d.note_retry(Domain::Gtt);
    assert!(d.bo_create(1, &req(4096, Domain::Gtt), 0).is_ok());
    assert_eq!(d.stats().gtt.retries, 1);
}

#[test]
fn statistics_track_counts_and_peaks() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    let ids: Vec<_> = (0..4)
        .map(|i| {
            d.bo_create(1, &req(100 * KIB * (i + 1), Domain::Vram), 0)
                .unwrap()
        })
        .collect();
    let s = d.stats();
    assert_eq!(s.vram.bo_count, 4);
    assert_eq!(s.vram.requested_bytes, 1000 * KIB);
    assert_eq!(s.vram.allocated_bytes, d.vram_stats().used_size);
    for id in &ids[..3] {
        d.bo_unref(1, *id).unwrap();
    }
    let s2 = d.stats();
    assert_eq!((s2.vram.allocs, s2.vram.frees, s2.vram.bo_count), (4, 3, 1));
    assert_eq!(s2.vram.peak_bo_count, 4);
    assert_eq!(s2.vram.peak_allocated_bytes, s.vram.allocated_bytes);
    assert_eq!(s2.vram.allocated_bytes, d.vram_stats().used_size);
    assert_eq!(s2.gtt, DomainCounters::default());
    assert_eq!(d.bo_list().len(), 1);
}

#[test]
fn leak_checks_run_on_the_callers_clock() {
    let d = Driver::new(sim().resources(), 0).unwrap();
    d.tunables().set("leak_check_interval_ms", "1000").unwrap();
    d.tunables().set("leak_threshold_bytes", "1M").unwrap();
    d.tunables().set("leak_age_ms", "100").unwrap();
    // The first periodic check is due one default interval after start.
    d.leak_check(0);
    for _ in 0..3 {
        d.bo_create(9, &req(MIB, Domain::Gtt), 0).unwrap();
    }
    let small = d.bo_create(8, &req(MIB / 2, Domain::Gtt), 0).unwrap();
    d.tick(999);
    assert_eq!(d.last_leak_report().checked_ms, 0);
    d.tick(1000);
    let r = d.last_leak_report();
    assert_eq!(r.checked_ms, 1000);
    assert_eq!(r.live_bos, 4);
    assert_eq!(r.suspects.len(), 3, "owner 9 holds 3 MiB > 1 MiB");
    assert!(r.suspects.iter().all(|s| s.owner == 9 && s.age_ms == 1000));
    assert!(matches!(
        r.suspects[0].reason,
        SuspectReason::OldAndLarge { owner_bytes } if owner_bytes == 3 * MIB
    ));
    assert!(!r.suspects.iter().any(|s| s.id == small));
    let young = d.leak_check(50);
    assert!(young.suspects.is_empty(), "younger than leak_age_ms");
    d.tunables().set("leak_monitor", "off").unwrap();
    d.tick(10_000);
    assert_eq!(d.last_leak_report().checked_ms, 50);
    d.tunables().set("leak_monitor", "on").unwrap();
    d.tick(10_000);
    assert_eq!(d.last_leak_report().checked_ms, 10_000);
    assert_eq!(
        d.tunables()
            .set("leak_monitor", "2")
            .unwrap_err()
            .to_string(),
        "leak_monitor: cannot parse `2` (on or off; allowed on|off)"
    );
}

#[test]
fn shutdown_refuses_new_work_and_disables_the_device() {
    let dev = sim();
    let d = Driver::new(dev.resources(), 0).unwrap();
    let id = d.bo_create(1, &req(4096, Domain::Vram), 0).unwrap();
    d.shutdown();
    assert_eq!(d.device_state(), DeviceState::SHUTDOWN);
    assert!(!dev.is_enabled());
    assert_eq!(
        d.bo_create(1, &req(4096, Domain::Vram), 0),
        Err(DriverError::ShuttingDown)
    );
    assert_eq!(d.bo_info(1, id), Err(DriverError::ShuttingDown));
    assert_eq!(d.bo_unref(1, id), Err(DriverError::ShuttingDown));
    assert_eq!(d.recover(Domain::Vram), Err(DriverError::ShuttingDown));
    assert_eq!(d.owner_exit(1).freed, 0);
    assert_eq!(d.vram_stats().state, ManagerState::Shutdown);
    assert!(!d.health().is_ok());
    d.shutdown();
}

#[test]
fn shutdown_drains_operations_in_flight() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let d = Arc::new(Driver::new(sim().resources(), 0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let done_after = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (d, stop, done_after) = (d.clone(), stop.clone(), done_after.clone());
            std::thread::spawn(move || {
                let mut ok = 0u64;
                loop {
                    // Set only after shutdown() returned: an operation
                    // starting later must be refused.
                    let after = stop.load(Ordering::SeqCst);
                    match d.bo_create(t, &req(8 * KIB, Domain::Gtt), 0) {
                        Ok(id) => {
                            ok += 1;
                            if after {
                                done_after.fetch_add(1, Ordering::SeqCst);
                            }
                            // The unref may be refused once shutdown began.
                            let r = d.bo_unref(t, id);
                            assert!(matches!(r, Ok(()) | Err(DriverError::ShuttingDown)));
                        }
                        Err(DriverError::ShuttingDown) => return ok,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    d.shutdown();
    stop.store(true, Ordering::SeqCst);
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(total > 0);
    assert_eq!(
        done_after.load(Ordering::SeqCst),
        0,
        "no operation started after shutdown returned succeeded"
    );
    assert_eq!(d.device_state(), DeviceState::SHUTDOWN);
}
