//! `pddgpu-guest`: the test program that runs inside the QEMU guest.
//!
//! `probe` finds the emulated GPU in sysfs, maps its MMIO and VRAM BARs
//! and checks them: the Bochs DISPI identity register, the VRAM size it
//! reports against the BAR size, and a pattern written and read back
//! through the VRAM mapping.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use memmap2::{MmapOptions, MmapRaw};
use pddgpu_image::pci;
use pddgpu_image::qemu::{BOCHS_DEVICE, BOCHS_VENDOR};

#[derive(Parser)]
#[command(about = "pddgpu guest test program (runs inside the QEMU guest)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find the GPU, map its BARs, check identity, size and VRAM access.
    Probe {
        /// Where to look for PCI functions.
        #[arg(long, default_value = pci::SYSFS_PCI_DEVICES)]
        sysfs: PathBuf,
    },
}

/// A shared read-write mapping of a whole sysfs `resourceN` file.
fn map_resource(dev: &Path, name: &str) -> Result<MmapRaw> {
    let path = dev.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let len = usize::try_from(len).context("BAR larger than the address space")?;
    if len == 0 {
        bail!("{} is empty (BAR not assigned?)", path.display());
    }
    MmapOptions::new()
        .len(len)
        .map_raw(&file)
        .with_context(|| format!("mapping {}", path.display()))
}

fn read16(map: &MmapRaw, offset: usize) -> Result<u16> {
    if offset % 2 != 0 || offset + 2 > map.len() {
        bail!(
            "register offset {offset:#x} outside the {:#x}-byte BAR",
            map.len()
        );
    }
    // SAFETY: the offset is aligned and inside the live mapping checked above;
    // a volatile read is how device registers must be read.
    Ok(unsafe { map.as_ptr().add(offset).cast::<u16>().read_volatile() })
}

fn probe(sysfs: &Path) -> Result<()> {
    let found = pci::find(sysfs, BOCHS_VENDOR, BOCHS_DEVICE)
        .with_context(|| format!("listing {}", sysfs.display()))?;
    let Some(dev) = found.first() else {
        bail!(
            "no PDDGPU-compatible device: no PCI function {BOCHS_VENDOR:04x}:{BOCHS_DEVICE:04x} under {}",
            sysfs.display()
        );
    };
    println!("pddgpu-guest: GPU at {}", dev.display());
    let mmio = map_resource(dev, "resource2")?;
    let id = read16(&mmio, 0x500)?;
    let vram_64k = read16(&mmio, 0x500 + 0xa * 2)?;
    println!(
        "pddgpu-guest: DISPI id {id:#06x}, VRAM {} KiB (register)",
        u64::from(vram_64k) * 64
    );
    if !(0xb0c0..=0xb0cf).contains(&id) {
        bail!("DISPI id register reads {id:#06x}, not a Bochs DISPI device");
    }
    let vram = map_resource(dev, "resource0")?;
    let reported = u64::from(vram_64k) * 64 * 1024;
    if reported == 0 || reported > vram.len() as u64 {
        bail!(
            "VRAM register says {reported} bytes but BAR0 has {}",
            vram.len()
        );
    }
    let words = vram.len() / 8;
    let base = vram.as_mut_ptr().cast::<u64>();
    let pattern = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a;
    let sample: Vec<usize> = (0..words).step_by(4096 / 8).collect();
    for &i in &sample {
        // SAFETY: i < words, so the 8 bytes at i*8 are inside the mapping.
        unsafe { base.add(i).write_volatile(pattern(i)) };
    }
    for &i in &sample {
        // SAFETY: as above.
        let got = unsafe { base.add(i).read_volatile() };
        if got != pattern(i) {
            bail!("VRAM word {i} reads {got:#x}, wrote {:#x}", pattern(i));
        }
    }
    println!(
        "pddgpu-guest: wrote and read back {} words across {} MiB of VRAM",
        sample.len(),
        vram.len() >> 20
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Probe { sysfs } => probe(&sysfs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pddgpu-guest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
