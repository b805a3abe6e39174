//! `pddgpu-image`: builds the QEMU guest image and boots it.
//!
//! `cargo run -p pddgpu-image -- qemu` builds pddgpud and the guest
//! programs, fetches Debian's kernel (cached), packs a busybox initramfs,
//! boots it under QEMU with a `bochs-display` GPU and exits non-zero unless
//! the guest's scenario printed PASS. `boot-test` also checks that a guest
//! without a GPU fails with a clear message.
//!
//! `redox-image` builds a Redox disk image from the source snapshot in
//! `../shared/redox`; `redox-boot` builds it and boots it with the GPU (the
//! scenario must pass) and without (pddgpud must not start).
//!
//! `sel4-boot` builds the seL4 kernel and our root task (the driver core
//! as a server, `drivers/pddgpu-sel4`) from `../shared/sel4` and boots
//! them; the root task must print PDDGPU-SEL4: PASS.
//!
//! Exit status: 0 pass, 1 the guest failed (FAIL line, timeout, kernel
//! panic, no result), 2 the image could not be built or booted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pddgpu_image::boot::{self, Options};
use pddgpu_image::hosttools::InstallPolicy;
use pddgpu_image::qemu::Accel;
use pddgpu_image::redox::{self, boot::BootOptions, progress::Progress, BuildOptions};
use pddgpu_image::sel4;

#[derive(Parser)]
#[command(version, about = "Build and boot the pddgpu QEMU guest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the image and boot it once; exit 0 only if the guest passes.
    Qemu {
        /// Boot without any display device (the negative run: must fail).
        #[arg(long)]
        no_gpu: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Boot twice: the scenario on the GPU must pass, and a guest without a
    /// GPU must fail with a clear message.
    BootTest {
        #[command(flatten)]
        common: Common,
    },
    /// Only get the kernel and write the initramfs; print their paths.
    Prepare {
        #[command(flatten)]
        common: Common,
    },
    /// Build the Redox image from the source snapshot and boot it twice:
    /// with a bochs-display the guest scenario must print PDDGPU-REDOX: PASS;
    /// without any display device pddgpud must not start. Exit 0 only when
    /// both behave.
    ///
    /// Every step is cached under target/redox/ by a hash of its inputs
    /// (stamps in target/redox/stamps, step logs in target/redox/logs);
    /// serial logs go to target/redox/serial-gpu.log and serial-no-gpu.log.
    /// Everything Rust is built with the nightly pinned in
    /// image/src/redox/toolchain.txt (installed with rustup when missing).
    /// The bootloader carries one patch of ours
    /// (image/src/redox/patches/bootloader-default-mode.patch): it boots with
    /// the video mode Enter would pick instead of waiting in its menu, so
    /// nothing is typed into the guest. Redox cannot power off here: QEMU is
    /// stopped 3 s after the verdict line.
    RedoxBoot {
        #[command(flatten)]
        build: RedoxBuildArgs,
        #[command(flatten)]
        boot: RedoxBootArgs,
        /// Only the negative run: boot without a display device.
        #[arg(long)]
        no_gpu: bool,
        /// Keep the disk image (target/redox/harddrive.img) and print the
        /// QEMU command to boot it by hand; without it the image is removed
        /// after the boots (the cached steps stay).
        #[arg(long)]
        keep: bool,
    },
    /// Build the seL4 kernel (x86_64 pc99) and our root task from the
    /// snapshot in ../shared/sel4 and boot them under QEMU twice: with a
    /// bochs-display the root task (the pddgpu core as a server, two
    /// clients) must print PDDGPU-SEL4: PASS; without any display device it
    /// must fail at step `pci`. Exit 0 only when both behave (a FAIL line,
    /// a kernel fault, a panic or the timeout is exit 1).
    ///
    /// Every step is cached under target/sel4/ by a hash of its inputs
    /// (stamps in target/sel4/stamps, step logs in target/sel4/logs); the
    /// serial logs go to target/sel4/serial-gpu.log and serial-no-gpu.log.
    /// The root task is built
    /// with nightly-2025-10-20 (rust-sel4 3.0.0's pin, installed with
    /// rustup when missing); apt packages are installed when root on
    /// Debian; the kernel's Python tools go into a venv from PyPI.
    Sel4Boot {
        /// The seL4 snapshot (src/seL4.tar.gz, src/rust-sel4.bundle).
        /// Default: $PDDGPU_SEL4_SNAPSHOT, else ../shared/sel4 beside the
        /// repository.
        #[arg(long, value_name = "DIR")]
        snapshot: Option<PathBuf>,
        /// Never install anything: missing apt packages or the pinned
        /// nightly are reported with the command that installs them.
        #[arg(long)]
        no_install: bool,
        /// Show the build commands' output (otherwise only in target/sel4/logs).
        #[arg(long)]
        verbose: bool,
        /// Only build; print the QEMU command instead of booting.
        #[arg(long)]
        build_only: bool,
        /// Only the negative run: boot without a display device.
        #[arg(long)]
        no_gpu: bool,
        /// VRAM of the bochs-display in MiB (4..=256, a power of two).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(4..=256))]
        vram_mib: u32,
        /// Seconds to wait for the verdict before killing QEMU.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(128..=8192))]
        memory_mib: u32,
        /// CPU emulation.
        #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
        accel: AccelArg,
        /// Do not print the console (lines prefixed `sel4| `) as it arrives.
        #[arg(long)]
        quiet: bool,
    },
    /// Build the Redox disk image (target/redox/harddrive.img) without
    /// booting it, and print the QEMU command that boots it.
    RedoxImage {
        #[command(flatten)]
        build: RedoxBuildArgs,
        #[command(flatten)]
        boot: RedoxBootArgs,
    },
}

#[derive(Args)]
struct RedoxBuildArgs {
    /// The Redox source snapshot (src/, patches/, locks/). Default:
    /// $PDDGPU_REDOX_SNAPSHOT, else ../shared/redox beside the repository.
    #[arg(long, value_name = "DIR")]
    snapshot: Option<PathBuf>,
    /// The tree copied verbatim into the initfs root (must hold
    /// etc/init.rc). Default: $PDDGPU_REDOX_INITFS, else image/redox/initfs.
    #[arg(long, value_name = "DIR")]
    initfs: Option<PathBuf>,
    /// Never install anything: missing apt packages or the pinned nightly
    /// are reported with the command that installs them.
    #[arg(long)]
    no_install: bool,
    /// Show the build commands' output (otherwise only in target/redox/logs).
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct RedoxBootArgs {
    /// Seconds to wait for each boot's verdict before killing QEMU.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(256..=8192))]
    memory_mib: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// VRAM of the bochs-display in MiB (4..=256, a power of two).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=256))]
    vram_mib: u32,
    /// CPU emulation.
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// Do not print the guest console (lines prefixed `redox| `) as it arrives.
    #[arg(long)]
    quiet: bool,
}

impl RedoxBuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            snapshot: self.snapshot.clone(),
            initfs: self.initfs.clone(),
            install: install_policy(self.no_install),
            verbose: self.verbose,
        }
    }
}

/// What `--no-install` asks for.
fn install_policy(no_install: bool) -> InstallPolicy {
    if no_install {
        InstallPolicy::Never
    } else {
        InstallPolicy::WhenRoot
    }
}

/// `--vram-mib`, which must be a power of two (QEMU's `vgamem` for the
/// bochs-display).
fn checked_vram_mib(mib: u32) -> Result<u32, String> {
    if mib.is_power_of_two() {
        Ok(mib)
    } else {
        Err(format!("--vram-mib {mib} is not a power of two"))
    }
}

impl RedoxBootArgs {
    fn options(&self) -> Result<BootOptions, String> {
        Ok(BootOptions {
            timeout: Duration::from_secs(self.timeout),
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            vram_mib: checked_vram_mib(self.vram_mib)?,
            accel: self.accel.into(),
            stream: !self.quiet,
        })
    }
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        }
    }
}

/// Prints `<command>: PASS` (or `FAIL`) with the time taken; returns `ok`.
fn print_verdict(command: &str, ok: bool, progress: &Progress) -> bool {
    println!(
        "{command}: {} [{}]",
        if ok { "PASS" } else { "FAIL" },
        redox::progress::seconds(progress.elapsed())
    );
    ok
}

fn redox_progress_for(build: &RedoxBuildArgs) -> Progress {
    redox::progress(build.verbose)
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    /// Pure emulation (default; works without /dev/kvm).
    Tcg,
    /// Hardware virtualization (needs a working /dev/kvm; under nested
    /// virtualization the guest may hang until --timeout).
    Kvm,
}

#[derive(Args)]
struct Common {
    /// Seconds to wait for the guest before killing QEMU.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// VRAM of the emulated bochs-display GPU, in MiB (4..=256, a power of two).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=256))]
    vram_mib: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(128..=8192))]
    memory_mib: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// CPU emulation.
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// Never install missing host tools (just print the apt-get line).
    #[arg(long)]
    no_install: bool,
    /// Boot this kernel instead of Debian's linux-image package.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Do not print the guest console as it arrives.
    #[arg(long)]
    quiet: bool,
}

impl Common {
    fn options(&self) -> Result<Options, String> {
        Ok(Options {
            timeout: Duration::from_secs(self.timeout),
            vram_mib: checked_vram_mib(self.vram_mib)?,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            accel: self.accel.into(),
            install: install_policy(self.no_install),
            kernel: self.kernel.clone(),
            stream: !self.quiet,
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Sel4Boot {
            snapshot,
            no_install,
            verbose,
            build_only,
            no_gpu,
            vram_mib,
            timeout,
            memory_mib,
            accel,
            quiet,
        } => {
            let vram_mib = checked_vram_mib(vram_mib).map_err(anyhow::Error::msg)?;
            let build = sel4::BuildOptions {
                snapshot,
                install: install_policy(no_install),
                verbose,
            };
            let boot = sel4::boot::BootOptions {
                timeout: Duration::from_secs(timeout),
                memory_mib,
                vram_mib,
                accel: accel.into(),
                stream: !quiet,
            };
            let progress = sel4::progress(verbose);
            let built = sel4::build(&build, &progress)?;
            if build_only {
                println!(
                    "sel4-boot: built; boot it with:\n{}",
                    sel4::boot::command_line(
                        &built.qemu,
                        &built.layout.kernel32(),
                        &built.layout.root_task(),
                        !no_gpu,
                        &boot
                    )
                );
                return Ok(true);
            }
            let report = sel4::boot_runs(&built, &boot, no_gpu, &progress)?;
            Ok(print_verdict("sel4-boot", report.ok(), &progress))
        }
        Command::Qemu { no_gpu, common } => {
            let opts = common.options().map_err(anyhow::Error::msg)?;
            let prepared = boot::prepare(&opts)?;
            let run = boot::boot(&prepared, &opts, !no_gpu)?;
            println!("pddgpu-image: {}", run.outcome);
            Ok(run.outcome.is_pass())
        }
        Command::BootTest { common } => {
            let opts = common.options().map_err(anyhow::Error::msg)?;
            let (passed, failed) = boot::boot_test(&opts)?;
            println!("boot-test: {passed} passed, {failed} failed");
            Ok(failed == 0)
        }
        Command::Prepare { common } => {
            let opts = common.options().map_err(anyhow::Error::msg)?;
            let prepared = boot::prepare(&opts)?;
            println!("kernel {}", prepared.kernel.vmlinuz.display());
            println!("initrd {}", prepared.initrd.display());
            Ok(true)
        }
        Command::RedoxImage { build, boot } => {
            let boot_opts = boot.options().map_err(anyhow::Error::msg)?;
            let progress = redox_progress_for(&build);
            let image = redox::build(&build.options(), &progress)?;
            println!(
                "redox-image: disk image {} [{}]",
                image.disk.display(),
                redox::progress::seconds(progress.elapsed())
            );
            println!(
                "redox-image: boot it with:\n{}",
                redox::boot::command_line(&image.qemu, &image.disk, true, &boot_opts)
            );
            Ok(true)
        }
        Command::RedoxBoot {
            build,
            boot,
            no_gpu,
            keep,
        } => {
            let boot_opts = boot.options().map_err(anyhow::Error::msg)?;
            let progress = redox_progress_for(&build);
            let image = redox::build(&build.options(), &progress)?;
            let report = redox::boot_runs(&image, &boot_opts, no_gpu, &progress);
            if keep {
                println!("redox-boot: disk image kept: {}", image.disk.display());
                println!(
                    "redox-boot: boot it with:\n{}",
                    redox::boot::command_line(&image.qemu, &image.disk, !no_gpu, &boot_opts)
                );
            } else {
                let _ = std::fs::remove_file(&image.disk);
            }
            let report = report?;
            Ok(print_verdict("redox-boot", report.ok(), &progress))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pddgpu-image: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sel4_boot_flags_parse() {
        let cli = Cli::try_parse_from([
            "pddgpu-image",
            "sel4-boot",
            "--timeout",
            "30",
            "--snapshot",
            "/s",
            "--no-install",
            "--build-only",
        ])
        .unwrap();
        let Command::Sel4Boot {
            snapshot,
            no_install,
            build_only,
            timeout,
            memory_mib,
            ..
        } = cli.command
        else {
            panic!("not sel4-boot");
        };
        assert_eq!(snapshot, Some(PathBuf::from("/s")));
        assert!(no_install && build_only);
        assert_eq!((timeout, memory_mib), (30, 512));
        assert!(Cli::try_parse_from(["pddgpu-image", "sel4-boot", "--timeout", "0"]).is_err());
    }

    #[test]
    fn redox_boot_flags_reach_the_options() {
        let cli = Cli::try_parse_from([
            "pddgpu-image",
            "redox-boot",
            "--no-gpu",
            "--keep",
            "--timeout",
            "90",
            "--memory-mib",
            "512",
            "--snapshot",
            "/s",
            "--no-install",
        ])
        .unwrap();
        let Command::RedoxBoot {
            build,
            boot,
            no_gpu,
            keep,
        } = cli.command
        else {
            panic!("not redox-boot");
        };
        assert!(no_gpu && keep);
        let opts = boot.options().unwrap();
        assert_eq!(opts.timeout, Duration::from_secs(90));
        assert_eq!(opts.memory_mib, 512);
        assert_eq!(opts.cpus, 1);
        let b = build.options();
        assert_eq!(b.snapshot, Some(PathBuf::from("/s")));
        assert_eq!(b.install, InstallPolicy::Never);

        let cli = Cli::try_parse_from(["pddgpu-image", "redox-image", "--vram-mib", "48"]).unwrap();
        let Command::RedoxImage { boot, .. } = cli.command else {
            panic!("not redox-image");
        };
        assert!(boot.options().is_err(), "48 MiB is not a power of two");
    }
}
