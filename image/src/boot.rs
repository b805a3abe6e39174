//! The pipeline behind `pddgpu-image qemu`: host tools, kernel, guest
//! binaries, initramfs, boot, verdict.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binaries::{self, GuestBinary};
use crate::hosttools::{self, InstallPolicy};
use crate::initramfs::Initramfs;
use crate::kernel::{self, Kernel};
use crate::qemu::{self, Accel, BootRun, QemuConfig};
use crate::serial::Outcome;
use crate::{init, ldd, scenario};

/// Settings of a boot.
#[derive(Clone, Debug)]
pub struct Options {
    /// Give up on the guest after this long.
    pub timeout: Duration,
    /// VRAM of the emulated GPU in MiB.
    pub vram_mib: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// CPU emulation.
    pub accel: Accel,
    /// Whether missing host tools may be installed.
    pub install: InstallPolicy,
    /// Use this kernel instead of Debian's package.
    pub kernel: Option<PathBuf>,
    /// Print the serial console as it arrives.
    pub stream: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(100),
            vram_mib: 64,
            memory_mib: 512,
            cpus: 2,
            accel: Accel::Tcg,
            install: InstallPolicy::WhenRoot,
            kernel: None,
            stream: true,
        }
    }
}

/// A kernel and initramfs ready to boot.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The kernel.
    pub kernel: Kernel,
    /// The gzip initramfs.
    pub initrd: PathBuf,
}

fn log(msg: impl AsRef<str>) {
    crate::reporter().say(msg);
}

/// Puts the guest programs, their shared libraries, busybox and `/init`
/// into an initramfs tree.
pub fn assemble(
    busybox: &Path,
    programs: &[(GuestBinary, PathBuf)],
    init_script: &str,
    scratch: &Path,
) -> Result<Initramfs> {
    let mut fs = Initramfs::new();
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc", "usr/bin"] {
        fs.dir(dir)?;
    }
    fs.copy_from_host("/bin/busybox", busybox)?;
    fs.file("/init", init_script.as_bytes().to_vec(), 0o755)?;
    fs.file("/etc/hostname", b"pddgpu-guest\n".to_vec(), 0o644)?;
    let mut needs_libs: Vec<PathBuf> = vec![busybox.to_path_buf()];
    for (bin, path) in programs {
        let small = binaries::stripped(path, scratch)?;
        fs.copy_from_host(&bin.guest_path(), &small)?;
        needs_libs.push(path.clone());
    }
    for binary in needs_libs {
        for lib in ldd::shared_libraries(&binary)? {
            let guest = lib.to_str().context("library path is not UTF-8")?;
            if !fs.contains(guest) {
                fs.copy_from_host(guest, &lib)?;
            }
        }
    }
    Ok(fs)
}

/// Installs/checks the host tools, gets the kernel, builds the guest
/// programs and writes the initramfs.
pub fn prepare(opts: &Options) -> Result<Prepared> {
    let step = crate::reporter().begin("kernel", "host tools and kernel ...");
    hosttools::ensure(&hosttools::ALL, opts.install)?;
    let qemu = hosttools::find(hosttools::QEMU.command).context("qemu-system-x86_64")?;
    let busybox = hosttools::find(hosttools::BUSYBOX.command).context("busybox")?;
    let cache = binaries::cache_dir();
    let kernel = match &opts.kernel {
        Some(path) => {
            if !path.is_file() {
                bail!("kernel {} does not exist", path.display());
            }
            Kernel {
                package: "custom".into(),
                vmlinuz: path.clone(),
            }
        }
        None => kernel::ensure(&cache.join("kernel"))?,
    };
    step.finish(format!(
        "kernel {} ({}) [{:.1} s]",
        kernel.package,
        kernel.vmlinuz.display(),
        step.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    let programs = binaries::build(&scenario::guest_binaries())?;
    log(format!(
        "guest binaries built [{:.1} s]",
        t.elapsed().as_secs_f64()
    ));

    let step = crate::reporter().begin("initramfs", "initramfs ...");
    let script = init::render(&scenario::steps())?;
    let tree = assemble(&busybox, &programs, &script, &cache.join("stripped"))?;
    let initrd = cache.join("initramfs.cpio.gz");
    let size = tree.write_gz(&initrd)?;
    step.finish(format!(
        "initramfs {} ({} entries, {} KiB) [{:.1} s]",
        initrd.display(),
        tree.len(),
        size / 1024,
        step.elapsed().as_secs_f64()
    ));
    Ok(Prepared {
        qemu,
        kernel,
        initrd,
    })
}

/// Boots the prepared guest, with the GPU or (`gpu = false`) without any
/// display device, and returns the run; the serial log is also saved
/// next to the initramfs.
pub fn boot(prepared: &Prepared, opts: &Options, gpu: bool) -> Result<BootRun> {
    let config = QemuConfig {
        kernel: prepared.kernel.vmlinuz.clone(),
        initrd: prepared.initrd.clone(),
        gpu_vram_mib: gpu.then_some(opts.vram_mib),
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        accel: opts.accel,
        extra_append: Vec::new(),
    };
    let step = crate::reporter().begin(
        "boot",
        format!(
            "booting {} ({}): qemu-system-x86_64 {}",
            if gpu {
                "with bochs-display"
            } else {
                "WITHOUT a GPU"
            },
            opts.accel_name(),
            config.args().join(" ")
        ),
    );
    let run = qemu::run(
        &prepared.qemu,
        &config,
        opts.timeout,
        qemu::console(&step, "guest", opts.stream),
    )?;
    let log_path = prepared
        .initrd
        .with_file_name(crate::serial::log_file_name(gpu));
    run.save_log(&log_path)?;
    step.finish(format!(
        "{} [boot {:.1} s, serial log {}]",
        run.outcome,
        run.elapsed.as_secs_f64(),
        log_path.display()
    ));
    Ok(run)
}

impl Options {
    fn accel_name(&self) -> &'static str {
        match self.accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        }
    }
}

/// Checks the negative run: it must fail at the device step with the
/// clear no-device message in the log.
pub fn check_negative(run: &BootRun) -> Result<()> {
    match &run.outcome {
        Outcome::Fail { step, .. } if step == scenario::DEVICE_STEP => {}
        other => bail!(
            "guest without a GPU: expected a FAIL at step `{}`, got: {other}",
            scenario::DEVICE_STEP
        ),
    }
    if !run
        .log
        .iter()
        .any(|l| l.contains(scenario::NO_DEVICE_MESSAGE))
    {
        bail!(
            "guest without a GPU failed, but the log lacks the message `{}`",
            scenario::NO_DEVICE_MESSAGE
        );
    }
    Ok(())
}

/// The boot test: the scenario on the GPU must pass, and the guest
/// without a GPU must fail with the clear message. Returns (passed, failed).
pub fn boot_test(opts: &Options) -> Result<(u32, u32)> {
    let prepared = prepare(opts)?;
    let mut passed = 0;
    let mut failed = 0;
    let positive = boot(&prepared, opts, true)?;
    if positive.outcome.is_pass() {
        log("boot-test: scenario on bochs-display: ok");
        passed += 1;
    } else {
        log(format!(
            "boot-test: scenario on bochs-display: {}",
            positive.outcome
        ));
        failed += 1;
    }
    let negative = boot(&prepared, opts, false)?;
    match check_negative(&negative) {
        Ok(()) => {
            log("boot-test: guest without a GPU fails with the clear message: ok");
            passed += 1;
        }
        Err(e) => {
            log(format!("boot-test: {e}"));
            failed += 1;
        }
    }
    Ok((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::Node;

    #[test]
    fn negative_check_needs_the_step_and_the_message() {
        let fail = |step: &str| Outcome::Fail {
            step: step.into(),
            reason: "exit status 1".into(),
        };
        let msg = format!(
            "pddgpud: error: {}: none found",
            scenario::NO_DEVICE_MESSAGE
        );
        assert!(check_negative(&BootRun::with(fail(scenario::DEVICE_STEP), &[&msg])).is_ok());
        assert!(check_negative(&BootRun::with(
            fail(scenario::DEVICE_STEP),
            &["other error"]
        ))
        .is_err());
        assert!(check_negative(&BootRun::with(fail("later step"), &[&msg])).is_err());
        assert!(check_negative(&BootRun::with(Outcome::Pass, &[&msg])).is_err());
        let timeout = Outcome::Timeout {
            after: Duration::from_secs(9),
            last_step: None,
        };
        assert!(check_negative(&BootRun::with(timeout, &[&msg])).is_err());
    }

    #[test]
    fn assemble_copies_programs_libraries_and_init() {
        // /bin/sh stands in for a guest program: dynamically linked on Debian.
        let scratch = std::env::temp_dir().join(format!("pddgpu-assemble-{}", std::process::id()));
        let prog = GuestBinary {
            package: "none",
            bin: "sh",
        };
        let fs = assemble(
            Path::new("/bin/sh"),
            &[(prog, PathBuf::from("/bin/sh"))],
            "#!/bin/busybox sh\n",
            &scratch,
        )
        .unwrap();
        assert!(matches!(
            fs.get("/init"),
            Some(Node::File { mode: 0o755, .. })
        ));
        assert!(fs.contains("/usr/bin/sh"));
        assert!(fs.contains("/bin/busybox"));
        for lib in ldd::shared_libraries(Path::new("/bin/sh")).unwrap() {
            assert!(fs.contains(lib.to_str().unwrap()), "{}", lib.display());
        }
        for dir in ["/proc", "/sys", "/dev"] {
            assert_eq!(fs.get(dir), Some(&Node::Dir));
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
}
