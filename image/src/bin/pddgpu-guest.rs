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
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use memmap2::{Mmap, MmapOptions};
use pddgpu_image::pattern;
use pddgpu_image::pci;
use pddgpu_image::qemu::{BOCHS_DEVICE, BOCHS_VENDOR};
use pddgpu_ipc::model::Stats;
use pddgpu_ipc::{Bo, BoDesc, BoFlags, Device, Domain};

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

/// The BOs one client allocates: (domain, size, flags). Sizes are not all
/// powers of two so VRAM BOs span several buddy blocks (segments).
const BOS: [(Domain, u64, BoFlags); 6] = [
    (Domain::Vram, 256 << 10, BoFlags::empty()),
    (Domain::Vram, (1 << 20) + (64 << 10), BoFlags::CONTIGUOUS),
    (Domain::Vram, (3 << 20) + (20 << 10), BoFlags::VISIBLE),
    (Domain::Gtt, 128 << 10, BoFlags::empty()),
    (Domain::Gtt, 2 << 20, BoFlags::empty()),
    (Domain::Gtt, (1 << 20) + (4 << 10), BoFlags::CLEARED),
];

fn bytes_of(domain: Domain) -> u64 {
    BOS.iter()
        .filter(|(d, _, _)| *d == domain)
        .map(|(_, s, _)| s)
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
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

fn seed(index: u32, bo: u64) -> u64 {
    (u64::from(index) << 40) ^ bo ^ 0x5044_4447
}

/// Writes the pattern through the mapping and verifies it through the
/// scheme (and the raw BAR for VRAM).
fn exercise(bo: &mut Bo, index: u32, bar: &Mmap) -> Result<usize> {
    let id = bo.id();
    let size = bo.size();
    let s = seed(index, id);
    pattern::fill(s, 0, bo.map().with_context(|| format!("mapping BO {id}"))?);
    // Back through the server: `read` on the handle copies from pddgpud's
    // own mapping of the backing (for VRAM: its mapping of the BAR).
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let n = bo.read_at(at, &mut buf[..want])?;
        ensure!(
            n == want,
            "BO {id}: short read of {n} of {want} bytes at {at}"
        );
        if let Some(bad) = pattern::first_mismatch(s, at, &buf[..n]) {
            bail!("BO {id}: byte {bad} read back through the scheme differs from what the client wrote");
        }
        at += n as u64;
    }
    let segments = bo.segments()?;
    if bo.domain() == Domain::Vram {
        for seg in &segments {
            let start = usize::try_from(seg.backing_offset)?;
            let end = start + usize::try_from(seg.len)?;
            ensure!(
                end <= bar.len(),
                "BO {id}: segment {start:#x}..{end:#x} beyond the VRAM BAR"
            );
            if let Some(bad) = pattern::first_mismatch(s, seg.bo_offset, &bar[start..end]) {
                bail!(
                    "BO {id}: byte {bad} is not in VRAM at BAR offset {:#x}",
                    seg.backing_offset + (bad - seg.bo_offset)
                );
            }
        }
    }
    Ok(segments.len())
}

fn client(sysfs: &Path, index: u32, hold: bool) -> Result<()> {
    let dev = Device::open()?;
    let bar = map_vram_bar(sysfs)?;
    let mut bos = Vec::new();
    let mut segs = 0;
    for (domain, size, flags) in BOS {
        let mut desc = BoDesc::new(size, domain, flags);
        desc.label = format!("guest-client-{index}");
        let mut bo = dev
            .create(&desc)
            .with_context(|| format!("client {index}: allocating {} in {domain}", mib(size)))?;
        segs += exercise(&mut bo, index, &bar).with_context(|| format!("client {index}"))?;
        bos.push(bo);
    }
    println!(
        "client {index} (pid {}): {} VRAM + {} GTT in {} BOs ({segs} segments): written through the mapping, \
         read back through the scheme and, for VRAM, found in the BAR: ok",
        std::process::id(),
        mib(bytes_of(Domain::Vram)),
        mib(bytes_of(Domain::Gtt)),
        bos.len()
    );
    if hold {
        println!("client {index}: holding {} BOs", bos.len());
        std::io::stdout().flush()?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    for bo in bos {
        bo.close()?;
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped when dropped, so an early
/// error return leaves no client running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn wait_ok(index: u32, child: &mut Child) -> Result<()> {
    let status = child.wait()?;
    ensure!(status.success(), "client {index} failed ({status})");
    Ok(())
}

fn clients(count: u32) -> Result<()> {
    let exe = std::env::current_exe()?;
    let victim_index = count - 1;
    let spawn = |index: u32, hold: bool| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.args(["client", "--index", &index.to_string()]);
        if hold {
            cmd.arg("--hold").stdout(Stdio::piped());
        }
        Ok(cmd.spawn()?)
    };
    // The victim starts first so it is holding while the others run.
    let mut victim = Reaped(spawn(victim_index, true)?);
    let mut others: Vec<Reaped> = (0..victim_index)
        .map(|i| spawn(i, false).map(Reaped))
        .collect::<Result<_>>()?;
    let victim_out = victim.0.stdout.take().context("victim stdout")?;
    let mut lines = BufReader::new(victim_out).lines();
    let mut holding = false;
    for line in lines.by_ref() {
        let line = line?;
        println!("{line}");
        if line.contains("holding") {
            holding = true;
            break;
        }
    }
    for (i, child) in others.iter_mut().enumerate() {
        wait_ok(i as u32, &mut child.0)?;
    }
    if !holding {
        let status = victim.0.wait()?;
        bail!("client {victim_index} stopped before holding its BOs ({status})");
    }
    let dev = Device::open()?;
    let n = BOS.len() as u64;
    let before = dev.stats()?;
    ensure!(
        before.bos.count == n
            && before.bos.vram_bytes == bytes_of(Domain::Vram)
            && before.bos.gtt_bytes == bytes_of(Domain::Gtt),
        "with only client {victim_index} holding, the server has {} BOs ({} VRAM, {} GTT bytes); expected {n} ({}, {})",
        before.bos.count,
        before.bos.vram_bytes,
        before.bos.gtt_bytes,
        bytes_of(Domain::Vram),
        bytes_of(Domain::Gtt)
    );
    let pid = u64::from(victim.0.id());
    let listed = dev.clients()?;
    ensure!(
        listed.iter().any(|c| c.pid == pid && c.bos == n),
        "client {victim_index} (pid {pid}) not listed with its {n} BOs in `clients`"
    );
    victim.0.kill()?; // SIGKILL: no chance to clean up
    let status = victim.0.wait()?;
    let killed = Instant::now();
    println!(
        "client {victim_index} (pid {pid}) killed ({status}) holding {n} BOs ({} VRAM, {} GTT)",
        mib(before.bos.vram_bytes),
        mib(before.bos.gtt_bytes)
    );
    let deadline = killed + Duration::from_secs(10);
    let after: Stats = loop {
        let s = dev.stats()?;
        if s.bos.count == 0 || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        after.bos.count == 0 && after.vram.used == 0 && after.gtt.used == 0,
        "after killing client {victim_index}: {} BOs, VRAM used {}, GTT used {} (expected all freed)",
        after.bos.count,
        after.vram.used,
        after.gtt.used
    );
    println!(
        "server freed the killed client's BOs in {} ms; {} other clients passed",
        killed.elapsed().as_millis(),
        others.len()
    );
    Ok(())
}

fn check_idle() -> Result<()> {
    let dev = Device::open()?;
    let report = dev.leak_check()?;
    ensure!(
        report.clean && report.problems.is_empty() && report.suspects.is_empty(),
        "leak check not clean: problems {:?}, {} suspect BOs",
        report.problems,
        report.suspects.len()
    );
    let s = dev.stats()?;
    ensure!(
        s.vram.used == 0 && s.vram.visible_used == 0 && s.gtt.used == 0 && s.bos.count == 0,
        "not idle: VRAM used {}, visible used {}, GTT used {}, {} BOs",
        s.vram.used,
        s.vram.visible_used,
        s.gtt.used,
        s.bos.count
    );
    ensure!(
        s.vram.healthy && s.gtt.healthy,
        "managers not healthy (VRAM {}, GTT {})",
        s.vram.state,
        s.gtt.state
    );
    println!(
        "idle: leak check clean, VRAM 0/{} used, GTT 0/{} used, 0 BOs",
        mib(s.vram.total),
        mib(s.gtt.total)
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Device => device(&cli.sysfs),
        Cmd::Client { index, hold } => client(&cli.sysfs, index, hold),
        Cmd::Clients { count } => clients(count),
        Cmd::CheckIdle => check_idle(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pddgpu-guest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
