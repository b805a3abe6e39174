//! The scenario the root task runs:
//! 1. the driver core on the simulated PDDGPU (memory: frames the server
//!    owns) for what only a simulated device can do — an owner's exit and
//!    recovery from an injected device error;
//! 2. the driver core on the real emulated GPU, QEMU's bochs-display,
//!    found in PCI configuration space with its BARs mapped from device
//!    untyped capabilities;
//! 3. three clients in their own address spaces served over IPC by that
//!    driver — one frees what it made, one ends holding its BOs, one
//!    faults on a freed BO's old mapping — the destruction of the two that
//!    still hold BOs, and the final audit of both drivers.

use alloc::format;
use alloc::vec::Vec;

use pddgpu::device::{BochsModel, DeviceResources, SimConfig, SimDevice};
use pddgpu::driver::{BoCreate, BoFlags, BoId, Domain, Driver, DriverOptions, Tunable};

use pddgpu_sel4_proto::{BO_WINDOW, BO_WINDOW_PAGES};

use crate::clock::now_ms;
use crate::device;
use crate::frames::{Frames, FRAME};
use crate::objects::Objects;
use crate::paging::Tables;
use crate::server::{self, Backing, Client};
use crate::spawn;
use crate::verdict::{note, step, StepResult};
use crate::{bail, ensure};

/// The client program, built before the root task (the image tool sets
/// `PDDGPU_SEL4_CLIENT_ELF`).
const CLIENT_ELF: &[u8] = include_bytes!(env!("PDDGPU_SEL4_CLIENT_ELF"));

/// Sizes of the simulated PDDGPU.
const SIM: SimConfig = SimConfig {
    vram_size: 8 << 20,
    visible_size: 4 << 20,
    gtt_size: 4 << 20,
};
/// The bochs-display's GTT aperture: system memory (frames) the server
/// provides, as on every host.
const BOCHS_GTT: u64 = 8 << 20;

/// Where the server maps the simulated device's VRAM and GTT frames, and
/// the bochs-display's GTT frames.
const SIM_VRAM_VADDR: usize = 0x10_0000_0000;
const SIM_GTT_VADDR: usize = 0x11_0000_0000;
const BOCHS_GTT_VADDR: usize = 0x15_0000_0000;

/// The owner the root task acts as in its own checks.
const ROOT_OWNER: u64 = 1;
/// An owner that exits while holding BOs, in the root task's own checks.
const EXITING_OWNER: u64 = 7;
/// The clients' badges (their owner ids), in start order.
const CLIENT_BADGES: [u64; 3] = [0x101, 0x102, 0x103];
/// What one client may hold (the core's `client_quota_bytes`): a quarter
/// of the VRAM each, so no client can exhaust the device for the others.
const CLIENT_QUOTA: u64 = 4 << 20;

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
    let mut objects = Objects::new(bootinfo);
    let mut tables = Tables::new(sel4::init_thread::slot::VSPACE.cap());

    let (sim_vram, sim_gtt) = step("memory", || {
        let vram = ram_frames(&mut objects, &mut tables, SIM_VRAM_VADDR, SIM.vram_size)?;
        let gtt = ram_frames(&mut objects, &mut tables, SIM_GTT_VADDR, SIM.gtt_size)?;
        note(format_args!(
            "simulated device memory: {} VRAM and {} GTT frames, mapped only in the server",
            vram.pages(),
            gtt.pages()
        ));
        Ok((vram, gtt))
    })?;

    let sim = step("sim-device", || {
        SimDevice::with_backing(SIM, sim_vram.region(), sim_gtt.region())
            .map_err(|e| format!("simulated PDDGPU: {e}"))
    })?;
    let sim_driver = step("sim-driver", || {
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

    step("owner-exit", || {
        for (size, domain) in [
            (64 << 10, Domain::Vram),
            (128 << 10, Domain::Gtt),
            (4096, Domain::Vram),
        ] {
            create(&sim_driver, EXITING_OWNER, size, domain)?;
        }
        let summary = sim_driver.owner_exit(EXITING_OWNER);
        ensure!(
            summary.freed == 3,
            "owner exit freed {} of 3 BOs: {summary:?}",
            summary.freed
        );
        note(format_args!(
            "owner {EXITING_OWNER} exited: {} BOs freed in one batch ({} B VRAM, {} B GTT)",
            summary.freed, summary.vram_bytes_freed, summary.gtt_bytes_freed
        ));
        Ok(())
    })?;

    step("recover", || {
        let kept = create(&sim_driver, ROOT_OWNER, 8192, Domain::Vram)?;
        sim_driver
            .bo_write(ROOT_OWNER, kept, 0, b"kept across recovery")
            .map_err(|e| format!("write: {e}"))?;
        sim.inject_error();
        if let Ok(id) = create(&sim_driver, ROOT_OWNER, 4096, Domain::Vram) {
            bail!("BO {id} created on a device in error");
        }
        for domain in Domain::ALL {
            sim_driver
                .recover(domain)
                .map_err(|e| format!("recover {domain}: {e}"))?;
        }
        let mut back = [0u8; 20];
        sim_driver
            .bo_read(ROOT_OWNER, kept, 0, &mut back)
            .map_err(|e| format!("read after recovery: {e}"))?;
        ensure!(
            &back == b"kept across recovery",
            "a live BO lost its contents in recovery"
        );
        sim_driver
            .bo_unref(ROOT_OWNER, kept)
            .map_err(|e| format!("free: {e}"))?;
        Ok(())
    })?;

    let bochs = step("pci", || {
        let bochs = device::map(bootinfo, &mut objects, &mut tables).map_err(|e| format!("{e}"))?;
        note(format_args!(
            "bochs-display at {}: BAR0 {:#x} ({} MiB VRAM), BAR2 {:#x} ({} KiB registers)",
            bochs.address,
            bochs.vram_bar.base,
            bochs.vram_bar.size >> 20,
            bochs.mmio_bar.base,
            bochs.mmio_bar.size >> 10
        ));
        for (bar, (paddr, bits)) in ["BAR0", "BAR2"].into_iter().zip(bochs.untyped) {
            note(format_args!(
                "{bar} carved from the device untyped at {paddr:#x} (2^{bits} bytes) into {} frames held by the server",
                if bar == "BAR0" { bochs.vram.pages() } else { bochs.mmio.pages() }
            ));
        }
        Ok(bochs)
    })?;
    let gtt = step("gtt", || {
        ram_frames(&mut objects, &mut tables, BOCHS_GTT_VADDR, BOCHS_GTT)
    })?;
    let driver = step("driver", || {
        let model = BochsModel::new(BOCHS_GTT).map_err(|e| format!("{e}"))?;
        let resources = DeviceResources {
            mmio: bochs.mmio(),
            model: model.boxed(),
            vram: bochs.vram.region(),
            gtt: gtt.region(),
        };
        let driver = Driver::with_options(resources, DriverOptions::with_seed(0xb0c5), now_ms())
            .map_err(|e| format!("bring-up on the bochs-display: {e}"))?;
        let info = driver.info();
        ensure!(
            info.vram_size == bochs.vram_bar.size,
            "the registers report {} bytes of VRAM, BAR0 is {}",
            info.vram_size,
            bochs.vram_bar.size
        );
        driver
            .tunables()
            .set_value(Tunable::ClientQuotaBytes, CLIENT_QUOTA)
            .map_err(|e| format!("setting the client quota: {e}"))?;
        note(format_args!(
            "{}: {} MiB VRAM (read from its DISPI registers through BAR2), {} MiB GTT, state {}",
            info.name,
            info.vram_size >> 20,
            info.gtt_size >> 20,
            driver.device_state().name()
        ));
        Ok(driver)
    })?;
    let backing = Backing {
        vram: &bochs.vram,
        gtt: &gtt,
    };

    let endpoint = step("spawn", || {
        let endpoint = objects
            .make_fixed::<sel4::cap_type::Endpoint>()
            .map_err(|e| format!("endpoint: {e:?}"))?;
        Ok(endpoint)
    })?;
    let mut clients: Vec<Client> = Vec::new();
    for (i, badge) in CLIENT_BADGES.into_iter().enumerate() {
        let number = i as u64 + 1;
        let process = spawn::spawn(&mut objects, &mut tables, CLIENT_ELF, endpoint, badge)
            .map_err(|e| crate::verdict::Failure {
                step: "spawn",
                reason: format!("client {number}: {e:?}"),
            })?;
        clients.push(Client::new(number, badge, process));
    }
    note(format_args!(
        "{} clients started, each with its own VSpace and CNode holding a badged endpoint",
        clients.len()
    ));

    step("clients", || {
        server::serve(&driver, &backing, endpoint, &mut clients)
            .map_err(|f| format!("client {} failed: {}", f.number, f.reason))
    })?;

    step("isolation", || {
        for client in &clients {
            let held = driver.owner_bos(client.badge).len();
            let who = server::describe(client);
            note(format_args!(
                "{who}: {} requests on BOs it does not hold refused; holds {held} BOs, {} mapped",
                client.refused,
                client.mapped_bos()
            ));
            match (client.number, client.done, &client.fault) {
                (1, Some(false), None) => {
                    ensure!(
                        held == 0,
                        "{who} says it freed everything but holds {held} BOs"
                    )
                }
                (2, Some(true), None) => {
                    ensure!(held == 2, "{who} should hold its 2 BOs, holds {held}")
                }
                (3, None, Some((fault, address))) => {
                    let window = BO_WINDOW as u64..(BO_WINDOW + BO_WINDOW_PAGES * FRAME) as u64;
                    ensure!(
                        window.contains(address),
                        "{who} faulted outside its BO window: {fault}"
                    );
                    let Some((held_then, summary)) = client.exit else {
                        bail!("{who} faulted but was not destroyed");
                    };
                    ensure!(
                        held_then == 1 && summary.freed == 1 && held == 0,
                        "{who} held {held_then} BOs when it faulted (expected 1); its exit \
                         freed {}, {held} left",
                        summary.freed
                    );
                    note(format_args!(
                        "{who} read its freed BO's old mapping at {address:#x}: the kernel \
                         stopped it with a VM fault (the frames went with the free), and the \
                         server destroyed it and freed the BO it still held"
                    ));
                }
                (_, done, fault) => {
                    bail!("{who} ended unexpectedly: done {done:?}, fault {fault:?}")
                }
            }
            if client.number != 3 {
                ensure!(client.refused > 0, "{who} never had a request refused");
            }
        }
        Ok(())
    })?;

    step("client-death", || {
        // The client that ended holding its BOs first, then the rest
        // (client 3 was destroyed when it faulted).
        let mut order: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].process.is_some())
            .collect();
        order.sort_by_key(|&i| driver.owner_bos(clients[i].badge).is_empty());
        ensure!(
            order
                .first()
                .is_some_and(|&i| !driver.owner_bos(clients[i].badge).is_empty()),
            "no live client holds BOs"
        );
        for i in order {
            let client = &mut clients[i];
            let who = server::describe(client);
            let (held, summary) =
                server::reap(&driver, client).map_err(|e| format!("destroying {who}: {e:?}"))?;
            ensure!(
                summary.freed == held && summary.released == held,
                "{who} held {held} BOs; its exit freed {}: {summary:?}",
                summary.freed
            );
            if held > 0 {
                note(format_args!(
                    "{who} destroyed (TCB, CNode, VSpace); its {} BOs freed in one batch ({} B VRAM, {} B GTT)",
                    summary.freed, summary.vram_bytes_freed, summary.gtt_bytes_freed
                ));
            }
        }
        Ok(())
    })?;

    step("leak-check", || {
        let sim_report = sim_driver.leak_check(now_ms());
        ensure!(
            sim_report.is_clean() && sim_report.live_bos == 0,
            "simulated device: {sim_report:?}"
        );
        let report = driver.leak_check(now_ms());
        ensure!(report.is_clean(), "leak check not clean: {report:?}");
        ensure!(
            report.live_bos == 0,
            "{} BOs alive at the end",
            report.live_bos
        );
        let stats = driver.stats();
        ensure!(
            stats.vram.bo_count + stats.gtt.bo_count == 0
                && stats.vram.allocated_bytes + stats.gtt.allocated_bytes == 0,
            "memory still accounted at the end: {stats:?}"
        );
        Ok(())
    })
}

/// `bytes` of zeroed RAM frames mapped at `vaddr` in the server.
fn ram_frames(
    objects: &mut Objects,
    tables: &mut Tables,
    vaddr: usize,
    bytes: u64,
) -> Result<Frames, alloc::string::String> {
    let pages = bytes as usize / FRAME;
    Frames::from_ram(objects, tables, vaddr, pages)
        .map_err(|e| format!("{pages} frames at {vaddr:#x}: {e:?}"))
}

/// Creates a zeroed BO, with the error as text.
fn create(
    driver: &Driver,
    owner: u64,
    size: u64,
    domain: Domain,
) -> Result<BoId, alloc::string::String> {
    let req = BoCreate {
        size,
        domain,
        flags: BoFlags::CLEARED,
        align: 0,
        label: "sel4",
    };
    driver
        .bo_create(owner, &req, now_ms())
        .map_err(|e| format!("create {size} B in {domain}: {e}"))
}
