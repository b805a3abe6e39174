//! `pddgpu-redox-guest`: the scenario init runs inside the Redox image,
//! against the pddgpud that pcid-spawner started on the bochs-display.
//!
//! Each step prints `PDDGPU-REDOX: STEP <name>` on the console, then
//! exactly one `PDDGPU-REDOX: PASS` or `PDDGPU-REDOX: FAIL <step>: <reason>`
//! ends the run:
//!
//! 1. `driver`: `/scheme/pddgpu` exists (bounded wait);
//! 2. `ls /scheme/pddgpu`, `cat /scheme/pddgpu/stats`: plain file system
//!    calls through the Redox kernel;
//! 3. `pddgpu stats`, `pddgpu health`: the CLI as child processes;
//! 4. `clients`: 4 client processes (this program again, `client` mode)
//!    allocate VRAM and GTT BOs, `mmap` them (the kernel asks pddgpud
//!    through `mmap_prep`), write a pattern, read it back through the
//!    scheme; for VRAM a privileged checker process (`vram-check`) finds the
//!    BAR through pcid's config-space access and confirms the bytes are in
//!    VRAM at the BO's segments; one client is SIGKILLed while it holds its
//!    BOs and pddgpud must free them (`OnClose`);
//! 5. `pddgpu top`: one plain frame of `pddgpu top` (the same client
//!    library and terminal UI as on other hosts) while a client holds its
//!    BOs: it names the device and every domain and lists the holder;
//! 6. `non-root client`: a client running as an ordinary user
//!    (`user-client`) allocates, but `control` and `config` writes are
//!    refused with `EACCES`;
//! 7. `pddgpu leak-check` and `stats after`: clean, nothing used.
//!
//! The client side is shared with the Linux guest ([`pddgpu_image::guest`]).
//! The system pieces only Redox has (the physical-memory and PCI schemes,
//! the user id) are in `sys`; elsewhere they fail, so the program builds
//! and is linted on the host but does its work only inside Redox.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use pddgpu_image::guest::{self, mib, Reaped, VramProbe};
use pddgpu_ipc::wire::SegmentWire;
use pddgpu_ipc::{BoDesc, BoFlags, Device, Domain};

/// The console prefix of every marker line.
const MARKER: &str = "PDDGPU-REDOX:";
/// Where pddgpud's scheme appears.
const SCHEME: &str = "/scheme/pddgpu";
/// How long `/scheme/pddgpu` may take to appear, and how often to look
/// (each miss logs a line of the namespace manager). pcid-spawner waits
/// for pddgpud's readiness before init runs this program, so it is
/// normally there at once.
const DRIVER_WAIT: Duration = Duration::from_secs(3);
const DRIVER_POLL: Duration = Duration::from_millis(500);
/// How long one CLI call may take.
const CLI_LIMIT: Duration = Duration::from_secs(60);
/// The user the non-root client runs as (any uid but 0).
const USER_UID: u32 = 1000;
/// The number of client processes.
const CLIENTS: u32 = 4;
/// The files the scheme's root must list.
const ROOT_FILES: [&str; 6] = ["stats", "health", "leaks", "clients", "control", "config"];

#[derive(Parser)]
#[command(about = "pddgpu scenario inside the Redox guest (run by init)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole scenario (the default).
    Scenario,
    /// One client: allocate, map, write, verify through the scheme and the BAR.
    Client {
        /// Client number (part of the pattern seed and the BO labels).
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Keep the BOs and wait to be killed, after printing `holding`.
        #[arg(long)]
        hold: bool,
    },
    /// Privileged checker: VRAM holds the pattern of BO `bo` at `segment`s.
    VramCheck {
        /// BO id (for messages).
        #[arg(long)]
        bo: u64,
        /// Pattern seed.
        #[arg(long)]
        seed: u64,
        /// `bo_offset:backing_offset:len`, one per segment.
        #[arg(long = "segment", value_parser = parse_segment, required = true)]
        segments: Vec<SegmentWire>,
    },
    /// A client as an ordinary user: may allocate, must not control or configure.
    UserClient,
}

/// `bo_offset:backing_offset:len`, each decimal or `0x` hex.
fn parse_segment(s: &str) -> Result<SegmentWire, String> {
    let num = |v: &str| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        }
        .map_err(|_| format!("`{v}` in `{s}` is not a number"))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let [bo_offset, backing_offset, len] = parts[..] else {
        return Err(format!("`{s}` is not bo_offset:backing_offset:len"));
    };
    Ok(SegmentWire {
        bo_offset: num(bo_offset)?,
        backing_offset: num(backing_offset)?,
        len: num(len)?,
    })
}

fn format_segment(s: &SegmentWire) -> String {
    format!("{:#x}:{:#x}:{:#x}", s.bo_offset, s.backing_offset, s.len)
}

/// This program, to run again in another mode: `current_exe` if it names
/// an existing file, else the name it was started as, which `Command`
/// looks up in `PATH` as init did. (In this image `/scheme/sys/exe` gives
/// the process name, e.g. `[init]`, not a path.)
fn this_program() -> Result<std::path::PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        if exe.is_absolute() && exe.is_file() {
            return Ok(exe);
        }
    }
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .context("no program name in the arguments")
}

/// The Redox [`VramProbe`]: runs the privileged `vram-check` process,
/// which maps the VRAM BAR itself; it shares nothing with pddgpud or the
/// client but the segment list.
struct CheckerProcess;

impl VramProbe for CheckerProcess {
    fn check(&mut self, bo: u64, seed: u64, segments: &[SegmentWire]) -> Result<()> {
        let mut cmd = Command::new(this_program()?);
        cmd.args([
            "vram-check",
            "--bo",
            &bo.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
        for s in segments {
            cmd.arg("--segment").arg(format_segment(s));
        }
        let mut child = cmd.spawn().context("starting the VRAM checker")?;
        guest::wait_within(
            &format!("VRAM checker of BO {bo}"),
            &mut child,
            Duration::from_secs(60),
        )
    }
}

fn vram_check(bo: u64, seed: u64, segments: &[SegmentWire]) -> Result<()> {
    let bar = sys::find_vram_bar()?;
    for seg in segments {
        let end = seg.backing_offset.checked_add(seg.len);
        ensure!(
            end.is_some_and(|e| e <= bar.size),
            "BO {bo}: segment {} beyond the {:#x}-byte VRAM BAR",
            format_segment(seg),
            bar.size
        );
        let view = sys::PhysView::map(bar.phys + seg.backing_offset, seg.len)?;
        guest::verify_vram_segment(bo, seed, seg, view.bytes())?;
    }
    let total: u64 = segments.iter().map(|s| s.len).sum();
    println!(
        "vram-check (uid {}): BO {bo}: {} in {} segments found in VRAM (BAR0 {:#x} of PCI {})",
        sys::euid()?,
        mib(total),
        segments.len(),
        bar.phys,
        bar.function
    );
    Ok(())
}

fn user_client() -> Result<()> {
    let uid = sys::euid()?;
    ensure!(uid != 0, "running as root (uid 0), not as an ordinary user");
    let dev = Device::open()?;
    let mut desc = BoDesc::new(64 << 10, Domain::Vram, BoFlags::empty());
    desc.label = "guest-user-client".into();
    let mut bo = dev
        .create(&desc)
        .context("allocating as an ordinary user")?;
    let segments = guest::exercise(&mut bo, 900 + uid, &mut NoVramProbe)?;
    let refused = |what: &str, r: pddgpu_ipc::Result<()>| -> Result<i32> {
        match r {
            Ok(()) => bail!("{what} was accepted from uid {uid}"),
            Err(e) => match e.errno() {
                Some(errno) if errno == syscall::EACCES || errno == syscall::EPERM => {
                    println!("user-client (uid {uid}): {what}: refused: {e}");
                    Ok(errno)
                }
                _ => bail!("{what} from uid {uid} failed, but not with EACCES/EPERM: {e}"),
            },
        }
    };
    refused("control write `recover vram`", dev.recover("vram"))?;
    let name = dev
        .config_names()?
        .into_iter()
        .next()
        .context("no tunables listed")?;
    let value = dev.config(&name)?;
    refused(
        &format!("config write {name}={value}"),
        dev.set_config(&name, &value),
    )?;
    println!(
        "user-client (uid {uid}): allocated and verified {} of VRAM ({segments} segments) as BO {}",
        mib(bo.size()),
        bo.id()
    );
    bo.close()?;
    Ok(())
}

/// For the ordinary user's BO: only the scheme is checked (mapping the BAR
/// needs root).
struct NoVramProbe;

impl VramProbe for NoVramProbe {
    fn check(&mut self, _bo: u64, _seed: u64, _segments: &[SegmentWire]) -> Result<()> {
        Ok(())
    }
}

/// Prints a marker line in one write.
fn marker(text: &str) {
    println!("{MARKER} {text}");
}

/// One line: a failure reason must not break the marker line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '\r'], "; ")
}

/// Runs a child to completion within `limit`, echoing its output; returns
/// its stdout.
fn run_cli(args: &[&str]) -> Result<String> {
    let child = Command::new("pddgpu")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `pddgpu {}`", args.join(" ")))?;
    let what = format!("`pddgpu {}`", args.join(" "));
    let out = output_within(&what, child, CLI_LIMIT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{what} failed ({})", out.status);
    Ok(stdout)
}

/// `wait_with_output` bounded by `limit` (the child is killed after it).
fn output_within(what: &str, child: Child, limit: Duration) -> Result<std::process::Output> {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // Nothing else can reach the child any more: kill it by pid.
            sys::kill(id);
            bail!("{what} did not finish within {} s", limit.as_secs())
        }
    }
}

fn step_driver() -> Result<()> {
    let start = Instant::now();
    while !Path::new(SCHEME).exists() {
        if start.elapsed() >= DRIVER_WAIT {
            bail!("pddgpud not started (no {SCHEME})");
        }
        std::thread::sleep(DRIVER_POLL);
    }
    println!(
        "{SCHEME} is there ({} ms after the scenario started)",
        start.elapsed().as_millis()
    );
    Ok(())
}

fn step_ls() -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(SCHEME)
        .with_context(|| format!("read_dir {SCHEME}"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading the entries of {SCHEME}"))?;
    names.sort();
    println!("{}", names.join("  "));
    for want in ROOT_FILES {
        ensure!(
            names.iter().any(|n| n == want),
            "{SCHEME} does not list `{want}` (listed: {})",
            names.join(" ")
        );
    }
    Ok(())
}

fn step_cat_stats() -> Result<()> {
    let path = format!("{SCHEME}/stats");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    print!("{text}");
    ensure!(!text.trim().is_empty(), "{path} is empty");
    let stats = Device::open()?.stats()?;
    ensure!(
        stats.device.state == "ready",
        "device state is `{}`",
        stats.device.state
    );
    ensure!(
        stats.device.name.contains("bochs"),
        "pddgpud drives `{}`, not the bochs-display",
        stats.device.name
    );
    ensure!(
        text.contains(&stats.device.name),
        "{path} does not name the device `{}`",
        stats.device.name
    );
    ensure!(stats.vram.total > 0, "no VRAM");
    Ok(())
}

fn step_cli_stats() -> Result<()> {
    let out = run_cli(&["stats"])?;
    ensure!(!out.trim().is_empty(), "`pddgpu stats` printed nothing");
    Ok(())
}

fn step_cli_health() -> Result<()> {
    let out = run_cli(&["health"])?;
    ensure!(out.trim() == "ok", "health is `{}`", out.trim());
    Ok(())
}

fn step_clients() -> Result<()> {
    let exe = this_program()?;
    guest::clients(CLIENTS, |index, hold| {
        let mut cmd = Command::new(&exe);
        cmd.args(["client", "--index", &index.to_string()]);
        if hold {
            cmd.arg("--hold").stdout(Stdio::piped());
        }
        cmd.spawn()
            .with_context(|| format!("starting client {index} ({})", exe.display()))
    })
}

fn step_top() -> Result<()> {
    let mut holder = Reaped(
        Command::new(this_program()?)
            .args(["client", "--index", &CLIENTS.to_string(), "--hold"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the holding client")?,
    );
    guest::wait_until_holding("the holding client", &mut holder.0)?;
    let frame = run_cli(&["top", "--frames", "1", "--plain"])?;
    for want in [
        "pddgpu top",
        "VRAM",
        "CPU-visible VRAM",
        "GTT",
        "Clients",
        "health: ok",
    ] {
        ensure!(
            frame.contains(want),
            "the `pddgpu top` frame lacks `{want}`"
        );
    }
    let pid = holder.0.id().to_string();
    let listed = frame.lines().any(|line| {
        line.trim_start_matches(['│', '|', ' '])
            .split_whitespace()
            .next()
            == Some(pid.as_str())
    });
    ensure!(
        listed,
        "the holding client (pid {pid}) is not a row of the `pddgpu top` client table"
    );
    drop(holder); // SIGKILL; the server frees its BOs
    let after = guest::wait_all_freed(&Device::open()?)?;
    ensure!(
        after.bos.count == 0,
        "{} BOs left after the holding client was killed",
        after.bos.count
    );
    Ok(())
}

fn step_user_client() -> Result<()> {
    let mut child = sys::spawn_as_user(Command::new(this_program()?).arg("user-client"), USER_UID)?;
    guest::wait_within(
        &format!("the client of uid {USER_UID}"),
        &mut child,
        guest::CLIENT_LIMIT,
    )?;
    let s = Device::open()?.stats()?;
    ensure!(
        s.bos.count == 0,
        "{} BOs left after the ordinary user's client",
        s.bos.count
    );
    Ok(())
}

fn step_leak_check() -> Result<()> {
    run_cli(&["leak-check"]).map(|_| ())
}

type Step = (&'static str, fn() -> Result<()>);

const STEPS: [Step; 10] = [
    ("driver", step_driver),
    ("ls /scheme/pddgpu", step_ls),
    ("cat /scheme/pddgpu/stats", step_cat_stats),
    ("pddgpu stats", step_cli_stats),
    ("pddgpu health", step_cli_health),
    ("clients", step_clients),
    ("pddgpu top", step_top),
    ("non-root client", step_user_client),
    ("pddgpu leak-check", step_leak_check),
    ("stats after", guest::check_idle),
];

/// Runs [`STEPS`]; prints the one result line. Returns whether it passed.
fn scenario() -> bool {
    let start = Instant::now();
    for (name, step) in STEPS {
        marker(&format!("STEP {name}"));
        if let Err(e) = step() {
            marker(&format!("FAIL {name}: {}", one_line(&e)));
            return false;
        }
    }
    println!("scenario done in {:.1} s", start.elapsed().as_secs_f64());
    marker("PASS");
    true
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Cmd::Scenario) {
        Cmd::Scenario => {
            return if scenario() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Client { index, hold } => guest::client(index, hold, &mut CheckerProcess),
        Cmd::VramCheck { bo, seed, segments } => vram_check(bo, seed, &segments),
        Cmd::UserClient => user_client(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pddgpu-redox-guest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Plain data about the PCI configuration space and physical ranges, for
/// the checker (used by the Redox `sys`, tested on the host).
#[cfg_attr(not(target_os = "redox"), allow(dead_code))]
mod hw {
    use anyhow::Result;

    /// A PCI function as `/scheme/pci` names it (`SS-BB--DD.F`), and the
    /// config-space address its `access` file takes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PciFunctionAddr {
        pub segment: u16,
        pub bus: u8,
        pub device: u8,
        pub function: u8,
    }

    impl PciFunctionAddr {
        /// Parses a `/scheme/pci` entry name: pcid lists pci_types'
        /// `{segment:02x}-{bus:02x}:{device:02x}.{function}` with `:`
        /// replaced by `--`, and parses it back the same way
        /// (`drivers/pcid/src/scheme.rs` of the snapshot, `parse_pci_addr`).
        pub fn parse_entry(name: &str) -> Option<Self> {
            let (segment, rest) = name.split_once('-')?;
            let (bus, rest) = rest.split_once("--")?;
            let (device, function) = rest.split_once('.')?;
            Some(Self {
                segment: u16::from_str_radix(segment, 16).ok()?,
                bus: u8::from_str_radix(bus, 16).ok()?,
                device: u8::from_str_radix(device, 16).ok().filter(|d| *d < 32)?,
                function: function.parse::<u8>().ok().filter(|f| *f < 8)?,
            })
        }

        /// The `metadata[1]` of a call on `/scheme/pci/access` reading config
        /// space at `offset`: segment at bit 28, bus at 20, device at 15,
        /// function at 12, offset below (pcid's `PciScheme::call`).
        pub fn access_word(self, offset: u16) -> u64 {
            (u64::from(self.segment) << 28)
                | (u64::from(self.bus) << 20)
                | (u64::from(self.device) << 15)
                | (u64::from(self.function) << 12)
                | u64::from(offset & 0xfff)
        }
    }

    impl std::fmt::Display for PciFunctionAddr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{:04x}:{:02x}:{:02x}.{}",
                self.segment, self.bus, self.device, self.function
            )
        }
    }

    /// The base of a memory BAR from its config-space dword(s): `hi` is the
    /// next BAR's value, used when the BAR is 64-bit. `None` for I/O BARs.
    pub fn memory_bar_base(lo: u32, hi: impl FnOnce() -> Result<u32>) -> Result<Option<u64>> {
        if lo & 1 != 0 {
            return Ok(None);
        }
        let base = u64::from(lo & !0xf);
        Ok(Some(if (lo >> 1) & 3 == 2 {
            base | (u64::from(hi()?) << 32)
        } else {
            base
        }))
    }

    /// The VRAM BAR of the display pddgpud drives, as the PCI configuration
    /// space says (not as pddgpud says).
    #[derive(Clone, Copy, Debug)]
    pub struct VramBar {
        pub function: PciFunctionAddr,
        pub phys: u64,
        pub size: u64,
    }

    /// A page-aligned physical range covering `len` bytes at `phys`: (start,
    /// length to map, offset of `phys` inside it).
    pub fn page_span(phys: u64, len: u64) -> Option<(u64, u64, u64)> {
        const PAGE: u64 = 4096;
        let start = phys & !(PAGE - 1);
        let skip = phys - start;
        let map_len = (skip.checked_add(len)?).checked_next_multiple_of(PAGE)?;
        start.checked_add(map_len)?;
        Some((start, map_len, skip))
    }
}

#[cfg(target_os = "redox")]
mod sys {
    //! What only Redox has: the PCI config space through pcid, physical
    //! memory through the kernel's `memory` scheme, user ids.

    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    use anyhow::{bail, Context, Result};
    use libredox::call::MmapArgs;
    use libredox::flag::{MAP_SHARED, O_CLOEXEC, O_RDONLY, PROT_READ};

    use pddgpu_image::qemu::{BOCHS_DEVICE, BOCHS_VENDOR};

    use super::hw::{memory_bar_base, page_span, PciFunctionAddr, VramBar};

    /// Reads one config-space dword through `/scheme/pci/access` (root
    /// only; pcid's `call` with metadata `[1 = read, address]`).
    fn config_read(access: &libredox::Fd, f: PciFunctionAddr, offset: u16) -> Result<u32> {
        let mut buf = [0u8; 4];
        access
            .call_ro(
                &mut buf,
                syscall::CallFlags::empty(),
                &[1, f.access_word(offset)],
            )
            .map_err(|e| anyhow::anyhow!("reading config space of {f} at {offset:#x}: {e}"))?;
        Ok(u32::from_le_bytes(buf))
    }

    /// Finds the bochs-display in `/scheme/pci` and reads its BAR 0.
    pub fn find_vram_bar() -> Result<VramBar> {
        let access = libredox::Fd::open("/scheme/pci/access", O_CLOEXEC, 0)
            .map_err(|e| anyhow::anyhow!("opening /scheme/pci/access: {e}"))?;
        for entry in std::fs::read_dir("/scheme/pci").context("listing /scheme/pci")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(f) = PciFunctionAddr::parse_entry(&name) else {
                continue;
            };
            let id = config_read(&access, f, 0)?;
            if id as u16 != BOCHS_VENDOR || (id >> 16) as u16 != BOCHS_DEVICE {
                continue;
            }
            let class = config_read(&access, f, 0x08)?;
            if class >> 24 != 0x03 || (class >> 16) & 0xff != 0x80 {
                continue;
            }
            let lo = config_read(&access, f, 0x10)?;
            let Some(phys) = memory_bar_base(lo, || config_read(&access, f, 0x14))? else {
                bail!("BAR 0 of {f} is not a memory BAR ({lo:#x})");
            };
            if phys == 0 {
                bail!("BAR 0 of {f} is not assigned");
            }
            // The size is what pddgpud's stats report as VRAM total; the
            // register read-back that sizes a BAR would disturb the device.
            let size = pddgpu_ipc::Device::open()?.stats()?.vram.total;
            return Ok(VramBar {
                function: f,
                phys,
                size,
            });
        }
        bail!("no bochs-display (PCI {BOCHS_VENDOR:04x}:{BOCHS_DEVICE:04x} class 03.80) in /scheme/pci")
    }

    /// A read-only, uncached mapping of physical memory.
    pub struct PhysView {
        base: *mut u8,
        map_len: usize,
        skip: usize,
        len: usize,
    }

    impl PhysView {
        /// Maps `len` bytes at physical address `phys`.
        pub fn map(phys: u64, len: u64) -> Result<Self> {
            let (start, map_len, skip) =
                page_span(phys, len).context("physical range overflows")?;
            let map_len = usize::try_from(map_len)?;
            let fd = libredox::Fd::open("/scheme/memory/physical@uc", O_CLOEXEC | O_RDONLY, 0)
                .map_err(|e| anyhow::anyhow!("opening /scheme/memory/physical@uc: {e}"))?;
            // SAFETY: a fresh shared read-only mapping chosen by the kernel
            // (no MAP_FIXED), overlapping nothing of ours; the bytes are
            // device memory others write, so they are only compared.
            let base = unsafe {
                libredox::call::mmap(MmapArgs {
                    addr: core::ptr::null_mut(),
                    length: map_len,
                    prot: PROT_READ,
                    flags: MAP_SHARED,
                    fd: fd.raw(),
                    offset: start,
                })
            }
            .map_err(|e| anyhow::anyhow!("mapping {map_len:#x} bytes at {start:#x}: {e}"))?;
            Ok(PhysView {
                base: base.cast(),
                map_len,
                skip: usize::try_from(skip)?,
                len: usize::try_from(len)?,
            })
        }

        /// The mapped bytes.
        pub fn bytes(&self) -> &[u8] {
            // SAFETY: `skip + len <= map_len` bytes from `base` are mapped
            // readable for the life of `self` (see `map`).
            unsafe { std::slice::from_raw_parts(self.base.add(self.skip), self.len) }
        }
    }

    impl Drop for PhysView {
        fn drop(&mut self) {
            // SAFETY: exactly the mapping `map` made; `bytes()` borrows end
            // with `self`.
            let _ = unsafe { libredox::call::munmap(self.base.cast(), self.map_len) };
        }
    }

    /// The effective user id of this process.
    pub fn euid() -> Result<u32> {
        let uid = libredox::call::geteuid().map_err(|e| anyhow::anyhow!("geteuid: {e}"))?;
        Ok(u32::try_from(uid)?)
    }

    /// Starts `cmd` as user and group `uid` (set in the child before exec).
    pub fn spawn_as_user(cmd: &mut Command, uid: u32) -> Result<Child> {
        cmd.uid(uid)
            .gid(uid)
            .spawn()
            .with_context(|| format!("starting a process as uid {uid}"))
    }

    /// Sends SIGKILL to process `pid`.
    pub fn kill(pid: u32) {
        let _ = libredox::call::kill(pid as usize, 9);
    }
}

#[cfg(not(target_os = "redox"))]
mod sys {
    //! Outside Redox there is no `memory` or `pci` scheme: every call fails.

    use std::process::{Child, Command};

    use anyhow::{bail, Result};

    use super::hw::VramBar;

    const ONLY_REDOX: &str = "pddgpu-redox-guest runs inside the Redox guest only";

    pub fn find_vram_bar() -> Result<VramBar> {
        bail!(ONLY_REDOX)
    }

    pub struct PhysView;

    impl PhysView {
        pub fn map(_phys: u64, _len: u64) -> Result<Self> {
            bail!(ONLY_REDOX)
        }

        pub fn bytes(&self) -> &[u8] {
            &[]
        }
    }

    pub fn euid() -> Result<u32> {
        bail!(ONLY_REDOX)
    }

    pub fn spawn_as_user(_cmd: &mut Command, _uid: u32) -> Result<Child> {
        bail!(ONLY_REDOX)
    }

    pub fn kill(_pid: u32) {}
}

#[cfg(test)]
mod tests {
    use super::hw::*;
    use super::*;

    #[test]
    fn segments_round_trip_through_the_command_line() {
        let s = SegmentWire {
            bo_offset: 0x10_0000,
            backing_offset: 0x3f0_0000,
            len: 0x1000,
        };
        assert_eq!(parse_segment(&format_segment(&s)), Ok(s));
        assert_eq!(
            parse_segment("4096:8192:12"),
            Ok(SegmentWire {
                bo_offset: 4096,
                backing_offset: 8192,
                len: 12
            })
        );
        for bad in ["", "1:2", "1:2:3:4", "x:1:2", "0x:1:2"] {
            assert!(parse_segment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pci_entries_parse_as_pcid_names_them() {
        let f = PciFunctionAddr::parse_entry("00-00--02.0").unwrap();
        assert_eq!(
            f,
            PciFunctionAddr {
                segment: 0,
                bus: 0,
                device: 2,
                function: 0
            }
        );
        assert_eq!(f.to_string(), "0000:00:02.0");
        let g = PciFunctionAddr::parse_entry("01-0a--1f.7").unwrap();
        assert_eq!((g.segment, g.bus, g.device, g.function), (1, 10, 31, 7));
        for bad in [
            "access",
            "00-00--20.0",
            "00-00--02.8",
            "00-00--02",
            "00-00:02.0",
            "0000--00--02.0",
        ] {
            assert_eq!(PciFunctionAddr::parse_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn access_word_packs_the_address_like_pcid_unpacks_it() {
        let f = PciFunctionAddr {
            segment: 0x1,
            bus: 0xab,
            device: 0x1d,
            function: 5,
        };
        let w = f.access_word(0x10);
        // pcid's unpacking (drivers/pcid/src/scheme.rs, `call`).
        assert_eq!((w >> 28) & 0xffff, 0x1);
        assert_eq!((w >> 20) & 0xff, 0xab);
        assert_eq!((w >> 15) & 0x1f, 0x1d);
        assert_eq!((w >> 12) & 0x7, 5);
        assert_eq!(w & 0xfff, 0x10);
    }

    #[test]
    fn memory_bars_decode_32_and_64_bit() {
        assert_eq!(
            memory_bar_base(0xfd00_0008, || unreachable!()).unwrap(),
            Some(0xfd00_0000)
        );
        assert_eq!(
            memory_bar_base(0x0000_000c, || Ok(0x8)).unwrap(),
            Some(0x8_0000_0000)
        );
        assert_eq!(memory_bar_base(0xc001, || unreachable!()).unwrap(), None);
    }

    #[test]
    fn physical_ranges_cover_whole_pages() {
        assert_eq!(page_span(0x1000, 0x1000), Some((0x1000, 0x1000, 0)));
        assert_eq!(page_span(0x1010, 0x1000), Some((0x1000, 0x2000, 0x10)));
        assert_eq!(page_span(0x2fff, 1), Some((0x2000, 0x1000, 0xfff)));
        assert_eq!(page_span(u64::MAX - 10, 100), None);
    }

    #[test]
    fn steps_cover_the_issue_in_order() {
        let names: Vec<&str> = STEPS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names[0], "driver", "the negative run fails at `driver`");
        for want in [
            "ls /scheme/pddgpu",
            "cat /scheme/pddgpu/stats",
            "pddgpu stats",
            "pddgpu health",
            "clients",
            "pddgpu top",
            "non-root client",
            "pddgpu leak-check",
            "stats after",
        ] {
            assert!(names.contains(&want), "{want}");
        }
    }
}
