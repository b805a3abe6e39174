//! # pddgpu-image — the QEMU guest for pddgpu
//!
//! Builds a minimal Linux guest whose only job is to host the user-space
//! driver server `pddgpud` on real (emulated) PCI hardware — QEMU's
//! `bochs-display` — and boots it: Debian's kernel, a busybox initramfs
//! with our binaries (and the shared libraries they need), a scenario run
//! by `/init`, and a verdict read from the serial console.
//!
//! - [`hosttools`]: the host tools needed, installed when root on Debian.
//! - [`kernel`]: the Debian kernel, downloaded once and cached.
//! - [`binaries`] / [`ldd`]: building the guest programs and their libraries.
//! - [`initramfs`]: the newc + gzip archive.
//! - [`init`] / [`scenario`]: the guest's `/init` and what it runs.
//! - [`qemu`] / [`serial`]: booting, streaming the console, the verdict.
//! - [`boot`]: the whole pipeline behind `pddgpu-image qemu`.
//! - [`reporter`]: where its progress goes (live on a terminal, plain
//!   lines elsewhere: `pddgpu_ipc::progress`).
//! - [`pci`] / [`pattern`]: sysfs PCI lookup and BO test patterns for the
//!   guest test program (`pddgpu-guest`).
//! - [`guest`]: the client side of the scenario, shared by the Linux guest
//!   program and the Redox one (`pddgpu-redox-guest`).
//! - [`redox`]: the Redox image, built from the source snapshot in
//!   `../shared/redox` and booted under QEMU (`redox-image`, `redox-boot`);
//!   it shares [`qemu`], [`serial`] and [`hosttools`] with the Linux guest.
//! - [`sel4`]: the seL4 kernel and our root task (`drivers/pddgpu-sel4`),
//!   built from `../shared/sel4` and booted under QEMU (`sel4-boot`); it
//!   reuses the Redox tool's cache, progress, step logs and toolchain
//!   installer.
#![deny(missing_docs)]

pub mod binaries;
pub mod boot;
pub mod guest;
pub mod hosttools;
pub mod init;
pub mod initramfs;
pub mod kernel;
pub mod ldd;
pub mod pattern;
pub mod pci;
pub mod qemu;
pub mod redox;
pub mod scenario;
pub mod sel4;
pub mod serial;

use pddgpu_ipc::progress::Reporter;

/// The progress reporter of the Linux guest's pipeline (`pddgpu-image:`
/// lines on stderr), one per process.
pub fn reporter() -> &'static Reporter {
    static REPORTER: std::sync::OnceLock<Reporter> = std::sync::OnceLock::new();
    REPORTER.get_or_init(|| Reporter::stderr("pddgpu-image"))
}
