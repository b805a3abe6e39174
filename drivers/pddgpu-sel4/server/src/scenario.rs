//! The scenario the root task runs: the driver core on the simulated
//! PDDGPU, exercised through the same calls every front end makes.

use alloc::format;
use alloc::vec;

use pddgpu::device::{SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, BoFlags, Domain, Driver, DriverOptions};

use crate::clock::now_ms;
use crate::verdict::{note, step, StepResult};
use crate::{bail, ensure};

/// Sizes of the simulated PDDGPU (its backing memory lives on the heap).
const SIM: SimConfig = SimConfig {
    vram_size: 16 << 20,
    visible_size: 8 << 20,
    gtt_size: 8 << 20,
};

/// The owner the root task acts as in the in-process steps.
const ROOT_OWNER: u64 = 1;
/// An owner that exits while holding BOs.
const EXITING_OWNER: u64 = 7;

/// Runs every step; the first failure ends the scenario.
pub fn run(bootinfo: &sel4::BootInfoPtr) -> StepResult {
    step("boot", || {
        let untyped = bootinfo.untyped_list();
        let device = untyped.iter().filter(|u| u.is_device()).count();
        note(format_args!(
            "seL4 booted the root task: {} untyped capabilities ({device} device), {} empty slots",
            untyped.len(),
            bootinfo.empty().range().len()
        ));
        Ok(())
    })?;

    let sim = step("sim-device", || {
        SimDevice::new(SIM).map_err(|e| format!("simulated PDDGPU: {e}"))
    })?;
    let driver = step("driver", || {
        let driver =
            Driver::with_options(sim.resources(), DriverOptions::with_seed(0x5e14), now_ms())
                .map_err(|e| format!("bring-up: {e}"))?;
        let info = driver.info();
        ensure!(
            info.vram_size == SIM.vram_size && info.gtt_size == SIM.gtt_size,
            "probed sizes {info:?} differ from the device's"
        );
        note(format_args!(
            "{}: {} MiB VRAM ({} MiB visible), {} MiB GTT, state {}",
            info.name,
            info.vram_size >> 20,
            info.visible_size >> 20,
            info.gtt_size >> 20,
            driver.device_state().name()
        ));
        Ok(driver)
    })?;

    let (vram_bo, gtt_bo) = step("create", || {
        let vram = create(
            &driver,
            ROOT_OWNER,
            1 << 20,
            Domain::Vram,
            BoFlags::CONTIGUOUS,
            64 << 10,
        )?;
        let gtt = create(
            &driver,
            ROOT_OWNER,
            256 << 10,
            Domain::Gtt,
            BoFlags::empty(),
            0,
        )?;
        let info = driver
            .bo_info(ROOT_OWNER, vram)
            .map_err(|e| format!("info: {e}"))?;
        ensure!(
            info.domain == Domain::Vram && info.size == 1 << 20 && info.segments.len() == 1,
            "VRAM BO info {info:?}"
        );
        ensure!(
            info.segments[0].1 % (64 << 10) == 0,
            "alignment not kept: {:?}",
            info.segments
        );
        ensure!(
            driver.bo_info(EXITING_OWNER, vram).is_err(),
            "another owner could read the BO's info"
        );
        Ok((vram, gtt))
    })?;

    step("io", || {
        for id in [vram_bo, gtt_bo] {
            let size = driver
                .bo_info(ROOT_OWNER, id)
                .map_err(|e| format!("{e}"))?
                .size;
            let pattern: alloc::vec::Vec<u8> = (0..size).map(|i| (i * 7 + id.0) as u8).collect();
            let n = driver
                .bo_write(ROOT_OWNER, id, 0, &pattern)
                .map_err(|e| format!("write BO {id}: {e}"))?;
            ensure!(n as u64 == size, "short write {n} of {size}");
            let mut back = vec![0u8; pattern.len()];
            driver
                .bo_read(ROOT_OWNER, id, 0, &mut back)
                .map_err(|e| format!("read BO {id}: {e}"))?;
            ensure!(
                back == pattern,
                "BO {id} read back other bytes than written"
            );
        }
        Ok(())
    })?;

    step("stats", || {
        let stats = driver.stats();
        ensure!(
            stats.vram.bo_count == 1 && stats.gtt.bo_count == 1,
            "BO counts {} VRAM, {} GTT (expected 1 and 1)",
            stats.vram.bo_count,
            stats.gtt.bo_count
        );
        ensure!(
            stats.vram.requested_bytes == 1 << 20,
            "VRAM requested {}",
            stats.vram.requested_bytes
        );
        note(format_args!(
            "VRAM {} B in {} BO, GTT {} B in {} BO",
            stats.vram.allocated_bytes,
            stats.vram.bo_count,
            stats.gtt.allocated_bytes,
            stats.gtt.bo_count
        ));
        Ok(())
    })?;

    step("free", || {
        for id in [vram_bo, gtt_bo] {
            driver
                .bo_unref(ROOT_OWNER, id)
                .map_err(|e| format!("free BO {id}: {e}"))?;
        }
        ensure!(
            driver.bo_unref(ROOT_OWNER, vram_bo).is_err(),
            "a freed BO could be freed again"
        );
        let stats = driver.stats();
        ensure!(
            stats.vram.bo_count == 0 && stats.gtt.bo_count == 0 && stats.vram.allocated_bytes == 0,
            "memory still accounted after free: {stats:?}"
        );
        Ok(())
    })?;

    step("owner-exit", || {
        for (size, domain) in [
            (64 << 10, Domain::Vram),
            (128 << 10, Domain::Gtt),
            (4096, Domain::Vram),
        ] {
            create(&driver, EXITING_OWNER, size, domain, BoFlags::empty(), 0)?;
        }
        let summary = driver.owner_exit(EXITING_OWNER);
        ensure!(
            summary.freed == 3,
            "owner exit freed {} of 3 BOs: {summary:?}",
            summary.freed
        );
        let stats = driver.stats();
        ensure!(
            stats.vram.bo_count + stats.gtt.bo_count == 0,
            "BOs left after exit: {stats:?}"
        );
        note(format_args!(
            "owner {EXITING_OWNER} exited: {} BOs freed in one batch ({} B VRAM, {} B GTT)",
            summary.freed, summary.vram_bytes_freed, summary.gtt_bytes_freed
        ));
        Ok(())
    })?;

    step("recover", || {
        sim.inject_error();
        if let Ok(id) = create(&driver, ROOT_OWNER, 4096, Domain::Vram, BoFlags::empty(), 0) {
            bail!("BO {id} created on a device in error");
        }
        for domain in Domain::ALL {
            driver
                .recover(domain)
                .map_err(|e| format!("recover {domain}: {e}"))?;
        }
        let id = create(&driver, ROOT_OWNER, 4096, Domain::Vram, BoFlags::empty(), 0)?;
        driver
            .bo_unref(ROOT_OWNER, id)
            .map_err(|e| format!("free after recovery: {e}"))?;
        Ok(())
    })?;

    step("leak-check", || {
        let report = driver.leak_check(now_ms());
        ensure!(report.is_clean(), "leak check not clean: {report:?}");
        ensure!(
            report.live_bos == 0,
            "{} BOs alive at the end",
            report.live_bos
        );
        Ok(())
    })
}

/// Creates a BO, with the error as text.
fn create(
    driver: &Driver,
    owner: u64,
    size: u64,
    domain: Domain,
    flags: BoFlags,
    align: u64,
) -> Result<pddgpu::driver::BoId, alloc::string::String> {
    let req = BoCreate {
        size,
        domain,
        flags: flags | BoFlags::CLEARED,
        align,
        label: "sel4",
    };
    driver
        .bo_create(owner, &req, now_ms())
        .map_err(|e| format!("create {size} B in {domain}: {e}"))
}
