//! `pddgpu-image`: builds the QEMU guest image and boots it.
//!
//! `cargo run -p pddgpu-image -- qemu` builds pddgpud and the guest
//! programs, fetches Debian's kernel (cached), packs a busybox initramfs,
//! boots it under QEMU with a `bochs-display` GPU and exits non-zero unless
//! the guest's scenario printed PASS. `boot-test` also checks that a guest
//! without a GPU fails with a clear message.
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
        if !self.vram_mib.is_power_of_two() {
            return Err(format!(
                "--vram-mib {} is not a power of two",
                self.vram_mib
            ));
        }
        Ok(Options {
            timeout: Duration::from_secs(self.timeout),
            vram_mib: self.vram_mib,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            accel: match self.accel {
                AccelArg::Tcg => Accel::Tcg,
                AccelArg::Kvm => Accel::Kvm,
            },
            install: if self.no_install {
                InstallPolicy::Never
            } else {
                InstallPolicy::WhenRoot
            },
            kernel: self.kernel.clone(),
            stream: !self.quiet,
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
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
