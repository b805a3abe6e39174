//! # The Redox image: built from source, booted under QEMU
//!
//! `pddgpu-image redox-image` builds a bootable Redox disk from the source
//! snapshot in `../shared/redox` (kernel, BIOS bootloader, relibc, the base
//! subset init/logd/ramfs/randd/zerod/nulld/pcid/pcid-spawner, bootstrap)
//! plus our `pddgpud`, `pddgpu` and `pddgpu-redox-guest` linked against that
//! relibc; `redox-boot` also boots it with a `bochs-display` (the scenario
//! must PASS) and without one (pddgpud must not start).
//!
//! - [`layout`]: where the snapshot is and where the build goes (`target/redox`).
//! - [`toolchain`]: the one pinned nightly, installed by rustup when missing.
//! - [`cache`] / [`progress`]: per-step keys and stamps; timed step lines.
//! - [`command`]: running a step's commands into its log.
//! - [`sources`]: unpacking, stand-in crates, patches, lockfiles.
//! - [`components`]: host tools, kernel, bootloader, relibc + sysroot,
//!   base, bootstrap, the initfs archiver.
//! - [`ours`]: our programs for `x86_64-unknown-redox`.
//! - [`image`]: initfs, RedoxFS, disk image.
//! - [`boot`]: the QEMU runs and their verdicts.

pub mod boot;
pub mod cache;
pub mod command;
pub mod components;
pub mod image;
pub mod layout;
pub mod ours;
pub mod progress;
pub mod sources;
pub mod toolchain;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::hosttools::{self, InstallPolicy};
use components::Ctx;
use layout::Layout;
use progress::Progress;

/// Settings of the build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The snapshot directory (default: `$PDDGPU_REDOX_SNAPSHOT`, else
    /// `../shared/redox` beside the repository).
    pub snapshot: Option<PathBuf>,
    /// The initfs overlay (default: `$PDDGPU_REDOX_INITFS`, else
    /// `image/redox/initfs`).
    pub initfs: Option<PathBuf>,
    /// Whether missing apt packages may be installed (root on Debian), and
    /// the pinned toolchain with rustup.
    pub install: InstallPolicy,
    /// Show the build commands' output instead of only logging it.
    pub verbose: bool,
}

/// A built image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Paths of the build.
    pub layout: Layout,
    /// The BIOS disk image.
    pub disk: PathBuf,
    /// The QEMU binary that boots it.
    pub qemu: PathBuf,
}

/// The progress printer of a build: stamps in `target/redox/stamps`, one
/// log per step in `target/redox/logs`.
pub fn progress(verbose: bool) -> Progress {
    let root = layout::build_root();
    Progress::new(root.join("stamps"), root.join("logs"), verbose)
}

/// Builds everything, skipping the steps whose inputs did not change, and
/// writes the disk image.
pub fn build(opts: &BuildOptions, progress: &Progress) -> Result<Image> {
    let layout = Layout::new(opts.snapshot.clone(), opts.initfs.clone());
    progress.plain("host packages", || {
        hosttools::ensure(&hosttools::REDOX, opts.install)
    })?;
    let qemu = hosttools::find(hosttools::QEMU.command).context("qemu-system-x86_64")?;
    let toolchain = toolchain::ensure(opts.install == InstallPolicy::WhenRoot)?;
    progress.say(toolchain.summary());
    layout.check_snapshot()?;
    progress.say(format!("snapshot {}", layout.snapshot.display()));

    let ctx = Ctx {
        layout: &layout,
        toolchain: &toolchain,
        progress,
    };
    progress.cached(
        "sources",
        &sources::key(&layout)?,
        &sources::outputs(&layout),
        |log| sources::unpack(&layout, &toolchain, log),
    )?;
    let tools = components::host_tools(&ctx)?;
    let kernel = components::kernel(&ctx)?;
    components::bootloader(&ctx)?;
    let relibc = components::relibc(&ctx, &tools)?;
    let sysroot = components::sysroot(&ctx, &relibc)?;
    let base = components::base(&ctx, &sysroot)?;
    let bootstrap = components::bootstrap(&ctx)?;
    let initfs_tools = components::initfs_tools(&ctx)?;

    let wanted = ours::available(&layout);
    let (ours_key, built) = ours::build(&ctx, &sysroot, &wanted)?;
    if !wanted.contains(&ours::GUEST) {
        bail!(
            "built {}, but the guest scenario program {} does not exist yet (the Redox \
             guest side writes it); the image needs it",
            wanted
                .iter()
                .map(|b| b.bin)
                .collect::<Vec<_>>()
                .join(" and "),
            layout.workspace.join(ours::GUEST_SOURCE).display()
        );
    }

    let mut programs: Vec<image::Program> = components::BASE_PROGRAMS
        .iter()
        .map(|name| image::Program {
            name: name.to_string(),
            path: components::base_program(&layout, name),
        })
        .collect();
    programs.push(image::Program {
        name: "nulld".into(),
        path: components::base_program(&layout, "zerod"),
    });
    programs.extend(built.into_iter().map(|(bin, path)| image::Program {
        name: bin.bin.to_string(),
        path,
    }));
    let initfs = image::initfs(
        &ctx,
        &programs,
        &[&base, &ours_key, &bootstrap, &initfs_tools],
    )?;
    image::filesystem(&ctx, &[&initfs, &kernel, &tools])?;
    let disk = image::disk(&ctx)?;
    Ok(Image { layout, disk, qemu })
}

/// How the boots went.
#[derive(Debug)]
pub struct BootReport {
    /// The positive run's outcome, if it ran.
    pub positive: Option<crate::serial::Outcome>,
    /// The negative run's check, if it ran: `Ok` or what was wrong.
    pub negative: Option<std::result::Result<(), String>>,
}

impl BootReport {
    /// Whether every run that ran behaved.
    pub fn ok(&self) -> bool {
        self.positive.as_ref().is_none_or(|o| o.is_pass())
            && self.negative.as_ref().is_none_or(|n| n.is_ok())
    }
}

/// Boots `image` with the GPU (unless `negative_only`) and then without.
pub fn boot_runs(
    image: &Image,
    opts: &boot::BootOptions,
    negative_only: bool,
    progress: &Progress,
) -> Result<BootReport> {
    let mut report = BootReport {
        positive: None,
        negative: None,
    };
    if !negative_only {
        let log = image.layout.serial_log(true);
        let step = progress.reporter().begin(
            "positive run",
            format!(
                "boot with bochs-display: {}",
                boot::command_line(&image.qemu, &image.disk, true, opts)
            ),
        );
        let mut run = boot::boot(&image.qemu, &image.disk, true, opts, &log, &step)?;
        run.outcome = boot::require_entropy(run.outcome, &run.log);
        step.finish(format!(
            "positive run: {} (QEMU {}; serial log {})",
            run.outcome,
            progress::seconds(run.elapsed),
            log.display()
        ));
        let display = boot::pci_functions(&run.log)
            .into_iter()
            .find(|f| f.id == boot::BOCHS_ID);
        let spawned = run.log.iter().any(|l| boot::shows_driver_start(l));
        progress.say(format!(
            "positive run: pcid {}; pddgpud {}",
            match display {
                Some(f) => format!("enumerated {} at {} (class {})", f.id, f.address, f.class),
                None => format!("did not list {}", boot::BOCHS_ID),
            },
            if spawned {
                "was started by pcid-spawner"
            } else {
                "was not seen starting"
            }
        ));
        report.positive = Some(run.outcome);
    }
    let log = image.layout.serial_log(false);
    let step = progress.reporter().begin(
        "negative run",
        format!(
            "boot without a display device: {}",
            boot::command_line(&image.qemu, &image.disk, false, opts)
        ),
    );
    let run = boot::boot(&image.qemu, &image.disk, false, opts, &log, &step)?;
    let checked = boot::check_negative(&run).map_err(|e| e.to_string());
    match &checked {
        Ok(()) => step.finish(format!(
            "negative run: pddgpud not started without a PDDGPU-compatible device: OK \
             (QEMU {}; serial log {})",
            progress::seconds(run.elapsed),
            log.display()
        )),
        Err(e) => step.finish(format!(
            "negative run: FAILED: {e} (serial log {})",
            log.display()
        )),
    }
    report.negative = Some(checked);
    Ok(report)
}
