//! `pddgpu-guest`: the test program that runs inside the QEMU guest,
//! against a `pddgpud` driving the emulated GPU.
//!
//! - `device`: the GPU in sysfs matches what pddgpud reports.
//! - `client`: one client process: allocates VRAM and GTT BOs, maps them,
//!   writes a pattern through the mapping, reads every byte back through the
//!   scheme (the server's own mapping of the BAR) and, for VRAM, through an
//!   independent read-only mapping of the VRAM BAR at the BO's segments.
//! - `clients`: runs several `client` processes at once, kills one with
//!   SIGKILL while it holds its BOs and checks the server frees them.
//! - `check-idle`: leak check clean, nothing allocated, no BOs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use memmap2::{Mmap, MmapOptions};
use pddgpu_image::guest::{self, mib, VramProbe};
use pddgpu_image::pci;
use pddgpu_image::qemu::{BOCHS_DEVICE, BOCHS_VENDOR};
use pddgpu_ipc::wire::SegmentWire;
use pddgpu_ipc::Device;

#[derive(Parser)]
#[command(about = "pddgpu guest test program (runs inside the QEMU guest)")]
struct Cli {
    /// Where to look for PCI functions.
    #[arg(long, global = true, default_value = pci::SYSFS_PCI_DEVICES)]
    sysfs: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check that pddgpud drives the GPU found in sysfs, with its VRAM size.
    Device,
    /// One client: allocate, map, write, verify through the scheme and the BAR.
    Client {
        /// Client number (part of the pattern seed and the BO labels).
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Keep the BOs and wait to be killed, after printing `holding`.
        #[arg(long)]
        hold: bool,
    },
    /// Run COUNT clients at once; the last holds its BOs and is SIGKILLed.
    Clients {
        /// Number of client processes (at least 2).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
        count: u32,
    },
    /// Leak check clean, zero bytes used, zero BOs.
    CheckIdle,
}

/// The emulated GPU's sysfs directory.
fn find_gpu(sysfs: &Path) -> Result<PathBuf> {
    let found = pci::find(sysfs, BOCHS_VENDOR, BOCHS_DEVICE)
        .with_context(|| format!("listing {}", sysfs.display()))?;
    match found.into_iter().next() {
        Some(dev) => Ok(dev),
        None => bail!(
            "no PDDGPU-compatible device: no PCI function {BOCHS_VENDOR:04x}:{BOCHS_DEVICE:04x} under {}",
            sysfs.display()
        ),
    }
}

fn device(sysfs: &Path) -> Result<()> {
    let gpu = find_gpu(sysfs)?;
    let bar0 = std::fs::metadata(gpu.join("resource0"))
        .with_context(|| format!("{}/resource0", gpu.display()))?
        .len();
    let stats = Device::open()?.stats()?;
    println!(
        "GPU {} (PCI {BOCHS_VENDOR:04x}:{BOCHS_DEVICE:04x}): VRAM BAR {}; pddgpud: device `{}` {}, VRAM total {}, GTT total {}",
        gpu.display(),
        mib(bar0),
        stats.device.name,
        stats.device.state,
        mib(stats.vram.total),
        mib(stats.gtt.total)
    );
    ensure!(
        stats.device.name.contains("bochs"),
        "pddgpud drives `{}`, not the bochs-display GPU",
        stats.device.name
    );
    ensure!(
        stats.device.state == "ready",
        "device state is {}",
        stats.device.state
    );
    ensure!(
        stats.vram.total == bar0,
        "pddgpud's VRAM size ({} bytes, from the DISPI registers) differs from the VRAM BAR ({bar0} bytes)",
        stats.vram.total
    );
    Ok(())
}

/// A read-only view of the whole VRAM BAR, independent of pddgpud: what
/// the device memory really holds.
fn map_vram_bar(sysfs: &Path) -> Result<Mmap> {
    let path = find_gpu(sysfs)?.join("resource0");
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let len = usize::try_from(file.metadata()?.len())?;
    // SAFETY: a shared read-only mapping of device memory; other processes
    // write it concurrently, so the bytes are only compared, never trusted
    // for memory safety.
    unsafe { MmapOptions::new().len(len).map(&file) }
        .with_context(|| format!("mapping {}", path.display()))
}

/// The Linux [`VramProbe`]: a read-only mapping of the whole VRAM BAR
/// through sysfs.
struct BarMap(Mmap);

impl VramProbe for BarMap {
    fn check(&mut self, bo: u64, seed: u64, segments: &[SegmentWire]) -> Result<()> {
        for seg in segments {
            let start = usize::try_from(seg.backing_offset)?;
            let end = start + usize::try_from(seg.len)?;
            ensure!(
                end <= self.0.len(),
                "BO {bo}: segment {start:#x}..{end:#x} beyond the VRAM BAR"
            );
            guest::verify_vram_segment(bo, seed, seg, &self.0[start..end])?;
        }
        Ok(())
    }
}

fn clients(count: u32) -> Result<()> {
    let exe = std::env::current_exe()?;
    guest::clients(count, |index, hold| {
        let mut cmd = Command::new(&exe);
        cmd.args(["client", "--index", &index.to_string()]);
        if hold {
            cmd.arg("--hold").stdout(Stdio::piped());
        }
        Ok(cmd.spawn()?)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Device => device(&cli.sysfs),
        Cmd::Client { index, hold } => {
            map_vram_bar(&cli.sysfs).and_then(|bar| guest::client(index, hold, &mut BarMap(bar)))
        }
        Cmd::Clients { count } => clients(count),
        Cmd::CheckIdle => guest::check_idle(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pddgpu-guest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
