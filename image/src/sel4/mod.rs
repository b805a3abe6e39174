//! # seL4: the pddgpu core as a root task, built from source and booted
//!
//! `pddgpu-image sel4-boot` builds the seL4 kernel (x86_64 pc99) from the
//! snapshot in `../shared/sel4` and our root task (`drivers/pddgpu-sel4`,
//! which runs the driver core as a server) against it, boots both under
//! QEMU and reads the verdict the root task prints (`PDDGPU-SEL4: PASS` or
//! `PDDGPU-SEL4: FAIL <step>: <reason>`).
//!
//! It shares the Redox tool's machinery: cache keys and stamps
//! ([`crate::redox::cache`]), timed progress lines
//! ([`crate::redox::progress`]), step logs ([`crate::redox::command`]),
//! the pinned-toolchain installer ([`crate::redox::toolchain`]), and the
//! QEMU session and serial verdict ([`crate::qemu`], [`crate::serial`]).
//!
//! - [`layout`]: the snapshot and `target/sel4`.
//! - [`host`]: apt packages.
//! - [`sources`]: unpacking the kernel, the rust-sel4 bundle, the target JSON.
//! - [`kernel`]: the Python tools and the kernel.
//! - [`roottask`]: our root task and client, clippy over them, the
//!   protocol's unit tests on the host.
//! - [`boot`]: the QEMU run.

pub mod boot;
pub mod host;
pub mod kernel;
pub mod layout;
pub mod roottask;
pub mod sources;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::hosttools::{self, InstallPolicy};
use crate::redox::progress::{self, Progress};
use crate::redox::toolchain;
use crate::serial::Outcome;
use layout::Layout;

/// Settings of the build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The snapshot directory (default: `$PDDGPU_SEL4_SNAPSHOT`, else
    /// `../shared/sel4` beside the repository).
    pub snapshot: Option<PathBuf>,
    /// Whether missing apt packages and the pinned toolchain may be
    /// installed.
    pub install: InstallPolicy,
    /// Show the build commands' output instead of only logging it.
    pub verbose: bool,
}

/// What the build produced.
#[derive(Clone, Debug)]
pub struct Built {
    /// Paths of the build.
    pub layout: Layout,
    /// The QEMU binary.
    pub qemu: PathBuf,
}

/// The progress printer: stamps in `target/sel4/stamps`, one log per step
/// in `target/sel4/logs`, lines starting `sel4:`.
pub fn progress(verbose: bool) -> Progress {
    let root = layout::build_root();
    Progress::labelled("sel4", root.join("stamps"), root.join("logs"), verbose)
}

/// Builds the kernel and the root task, skipping the steps whose inputs
/// did not change.
pub fn build(opts: &BuildOptions, progress: &Progress) -> Result<Built> {
    let layout = Layout::new(opts.snapshot.clone());
    progress.plain("host packages", || host::ensure(opts.install))?;
    let qemu = hosttools::find(hosttools::QEMU.command).context("qemu-system-x86_64")?;
    let toolchain = toolchain::ensure_named(
        roottask::TOOLCHAIN,
        roottask::TOOLCHAIN_WHY,
        opts.install == InstallPolicy::WhenRoot,
    )?;
    progress.say(toolchain.summary());
    layout.check_snapshot()?;
    progress.say(format!("snapshot {}", layout.snapshot.display()));

    let (sources, _) = progress.cached(
        "sources",
        &sources::key(&layout)?,
        &sources::outputs(&layout),
        |log| sources::unpack(&layout, log),
    )?;
    let (python, _) = progress.cached(
        "python-tools",
        &kernel::python_key(&sources),
        &kernel::python_outputs(&layout),
        |log| kernel::python_env(&layout, log),
    )?;
    let (kernel_key, _) = progress.cached(
        "kernel",
        &kernel::key(&sources, &python),
        &kernel::outputs(&layout),
        |log| kernel::build(&layout, log),
    )?;
    let root_task_key = roottask::key(&layout, &kernel_key, &toolchain)?;
    progress.cached(
        "root-task",
        &root_task_key,
        &roottask::outputs(&layout),
        |log| roottask::build(&layout, &toolchain, log),
    )?;
    // Same inputs as the root task: clippy runs again only when they change.
    let mut lint_key = root_task_key.clone();
    lint_key.text("lint", "clippy -D warnings");
    progress.cached("clippy", &lint_key, &[], |log| {
        roottask::lint(&layout, &toolchain, log)
    })?;
    let mut test_key = root_task_key.clone();
    test_key.text("test", roottask::PROTOCOL_PACKAGE);
    progress.cached("protocol-tests", &test_key, &[], |log| {
        roottask::test_protocol(&layout, &toolchain, log)
    })?;
    Ok(Built { layout, qemu })
}

/// How the boots went.
#[derive(Debug)]
pub struct BootReport {
    /// The run with the bochs-display, if it ran.
    pub positive: Option<Outcome>,
    /// The run without a display device: `Ok` or what was wrong.
    pub negative: std::result::Result<(), String>,
}

impl BootReport {
    /// Whether every run behaved.
    pub fn ok(&self) -> bool {
        self.positive.as_ref().is_none_or(Outcome::is_pass) && self.negative.is_ok()
    }
}

/// Boots what [`build`] produced with the bochs-display (unless
/// `negative_only`; the verdict must be PASS) and without any display
/// device (the root task must fail to find it).
pub fn boot_runs(
    built: &Built,
    opts: &boot::BootOptions,
    negative_only: bool,
    progress: &Progress,
) -> Result<BootReport> {
    let positive = if negative_only {
        None
    } else {
        let outcome = boot_once(built, true, opts, progress)?;
        Some(outcome)
    };
    let outcome = boot_once(built, false, opts, progress)?;
    let negative = boot::check_negative(&outcome);
    match &negative {
        Ok(()) => {
            progress.say("negative run: without a display device the root task found no GPU: OK")
        }
        Err(e) => progress.say(format!("negative run: FAILED: {e}")),
    }
    Ok(BootReport { positive, negative })
}

fn boot_once(
    built: &Built,
    gpu: bool,
    opts: &boot::BootOptions,
    progress: &Progress,
) -> Result<Outcome> {
    let layout = &built.layout;
    let (kernel, task) = (layout.kernel32(), layout.root_task());
    let what = if gpu {
        "with bochs-display"
    } else {
        "without a display device"
    };
    progress.say(format!(
        "boot {what}: {}",
        boot::command_line(&built.qemu, &kernel, &task, gpu, opts)
    ));
    let log = layout.serial_log(gpu);
    let run = boot::boot(&built.qemu, &kernel, &task, gpu, opts, &log)?;
    progress.say(format!(
        "boot {what}: {} (QEMU {}; {} steps; serial log {})",
        run.outcome,
        progress::seconds(run.elapsed),
        run.steps.len(),
        log.display()
    ));
    Ok(run.outcome)
}
