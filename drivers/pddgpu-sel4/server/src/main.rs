//! # pddgpu-sel4 — the pddgpu core as a seL4 root task
//!
//! The seL4 kernel starts this program as its root task with every
//! capability of the machine. It brings up the PDDGPU driver core
//! (`drivers/pddgpu`, unchanged: VRAM buddy manager, GTT range manager, BO
//! table, statistics, leak audit, recovery) on the simulated PDDGPU and on
//! QEMU's bochs-display, serves clients in their own address spaces, and
//! runs the scenario, printing one `PDDGPU-SEL4: STEP <name>` line per step on
//! the kernel's debug console (the serial port) and exactly one verdict:
//! `PDDGPU-SEL4: PASS` or `PDDGPU-SEL4: FAIL <step>: <reason>`. The host
//! side (`pddgpu-image sel4-boot`) reads those lines.
//!
//! - [`verdict`]: the marker lines and the failure type every step returns.
//! - [`clock`]: the time the core is given.
//! - [`objects`] / [`paging`] / [`frames`]: kernel objects, translation
//!   tables, memory as frame capabilities.
//! - [`pci`] / [`device`]: PCI configuration space and the bochs-display's
//!   BARs from device untypeds.
//! - [`spawn`]: clients in their own VSpace and CSpace.
//! - [`server`]: the IPC request loop on the core.
//! - [`scenario`]: the steps.
#![no_std]
#![no_main]

extern crate alloc;

mod clock;
mod device;
mod frames;
mod objects;
mod paging;
mod pci;
mod scenario;
mod server;
mod spawn;
mod verdict;

use sel4_root_task::{root_task, Never};

/// Heap of the root task: the core's tables, the server's bookkeeping and
/// the scenario's buffers. Device memory is frames, not heap.
const HEAP_SIZE: usize = 4 << 20;

#[root_task(heap_size = HEAP_SIZE)]
fn main(bootinfo: &sel4::BootInfoPtr) -> sel4::Result<Never> {
    match scenario::run(bootinfo) {
        Ok(()) => verdict::pass(),
        Err(failure) => verdict::fail(&failure),
    }
    sel4::init_thread::suspend_self()
}
