//! Booting seL4 under QEMU and judging the run.
//!
//! No bootloader is needed on x86: QEMU's multiboot loader starts the
//! kernel (`-kernel`, as ELF32) and hands it our root task as the boot
//! module (`-initrd`). The kernel's debug console is the serial port, the
//! only output; the root task prints `PDDGPU-SEL4:` markers
//! ([`crate::serial::SEL4`]). The root task ends by suspending itself, so
//! the host stops QEMU a moment after the verdict (a kernel fault in that
//! moment still fails the run).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::qemu::{self, Accel, AfterVerdict, BootRun, Session};
use crate::serial::SEL4;

/// The CPU QEMU emulates: what rust-sel4's x86 test world uses (the kernel
/// is built for Nehalem; no XSAVE, FSGSBASE or INVPCID, which the kernel
/// configuration leaves out).
pub const CPU: &str =
    "Nehalem,-vme,+pdpe1gb,-xsave,-xsaveopt,-xsavec,-fsgsbase,-invpcid,+syscall,+lm,enforce";

/// How long the console is still read after the verdict.
pub const AFTER_VERDICT: Duration = Duration::from_secs(1);

/// Settings of one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootOptions {
    /// Give up on the guest after this long.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// CPU emulation.
    pub accel: Accel,
    /// Print the console as it arrives.
    pub stream: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            memory_mib: 512,
            accel: Accel::Tcg,
            stream: true,
        }
    }
}

/// The QEMU arguments: console on stdio, no network, no default VGA, the
/// kernel and the root task by multiboot.
pub fn qemu_args(kernel: &Path, root_task: &Path, opts: &BootOptions) -> Vec<String> {
    let mut args: Vec<String> = ["-nographic", "-no-reboot", "-nic", "none", "-vga", "none"]
        .map(str::to_string)
        .to_vec();
    args.extend([
        "-cpu".into(),
        CPU.into(),
        "-accel".into(),
        opts.accel.name().into(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        root_task.display().to_string(),
    ]);
    args
}

/// The command line a person can paste to boot it by hand.
pub fn command_line(qemu: &Path, kernel: &Path, root_task: &Path, opts: &BootOptions) -> String {
    std::iter::once(qemu.display().to_string())
        .chain(qemu_args(kernel, root_task, opts))
        .map(crate::redox::command::shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots once and saves the console (without escape sequences) to `log`.
pub fn boot(
    qemu: &Path,
    kernel: &Path,
    root_task: &Path,
    opts: &BootOptions,
    log: &Path,
) -> Result<BootRun> {
    let session = Session {
        qemu,
        args: qemu_args(kernel, root_task, opts),
        markers: SEL4,
        timeout: opts.timeout,
        after_verdict: AfterVerdict::Stop(AFTER_VERDICT),
    };
    let stream = opts.stream;
    let run = qemu::run_session(&session, |line| {
        if stream {
            println!("sel4| {line}");
        }
    })?;
    std::fs::write(log, run.log.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::{Outcome, SerialWatch};

    #[test]
    fn the_kernel_boots_by_multiboot_with_the_root_task_as_module() {
        let args = qemu_args(
            Path::new("/t/kernel32.elf"),
            Path::new("/t/pddgpu-sel4.elf"),
            &BootOptions::default(),
        )
        .join(" ");
        assert!(
            args.contains("-kernel /t/kernel32.elf -initrd /t/pddgpu-sel4.elf"),
            "{args}"
        );
        assert!(args.contains(&format!("-cpu {CPU}")), "{args}");
        assert!(
            args.contains("-vga none") && args.contains("-m 512"),
            "{args}"
        );
    }

    #[test]
    fn kernel_faults_and_panics_fail_the_run() {
        for line in [
            "seL4 called fail at boot_sys.c:723 in function boot_sys",
            "vm fault on data at address 0x0 with status 0x4",
            "Caught cap fault in send phase at address 0x0",
            "panicked at src/scenario.rs:10:5:",
        ] {
            let mut watch = SerialWatch::with_markers(SEL4);
            watch.feed("PDDGPU-SEL4: STEP driver");
            watch.feed(line);
            let outcome = watch.outcome(crate::serial::RunEnd::StoppedAfterVerdict);
            assert!(
                matches!(&outcome, Outcome::Panic { last_step: Some(s), .. } if s == "driver"),
                "{line}: {outcome:?}"
            );
        }
        let mut watch = SerialWatch::with_markers(SEL4);
        watch.feed("PDDGPU-SEL4: STEP io");
        watch.feed("PDDGPU-SEL4: FAIL io: BO 2 read back other bytes than written");
        assert_eq!(
            watch.outcome(crate::serial::RunEnd::StoppedAfterVerdict),
            Outcome::Fail {
                step: "io".into(),
                reason: "BO 2 read back other bytes than written".into()
            }
        );
    }
}
