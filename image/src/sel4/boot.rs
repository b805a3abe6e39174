//! Booting seL4 under QEMU and judging the run.
//!
//! No bootloader is needed on x86: QEMU's multiboot loader starts the
//! kernel (`-kernel`, as ELF32) and hands it our root task as the boot
//! module (`-initrd`). The kernel's debug console is the serial port, the
//! only output; the root task prints `PDDGPU-SEL4:` markers
//! ([`crate::serial::SEL4`]). The root task ends by suspending itself, so
//! the host stops QEMU a moment after the verdict (a kernel fault in that
//! moment still fails the run).
//!
//! - The positive run has a `bochs-display` and must PASS.
//! - The negative run has no display device at all (`-vga none` also
//!   removes QEMU's default VGA, which has the same PCI id): the root task
//!   must fail at [`NEGATIVE_STEP`] saying [`NEGATIVE_REASON`] — the
//!   device is really looked for in PCI configuration space.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::qemu::{self, Accel, AfterVerdict, BootRun, Session};
use crate::serial::{Outcome, SEL4};

/// The step the root task fails at without a bochs-display.
pub const NEGATIVE_STEP: &str = "pci";
/// What it says then.
pub const NEGATIVE_REASON: &str = "no bochs-display (1234:1111) on PCI bus 0";

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
    /// VRAM of the bochs-display in MiB (its BAR0).
    pub vram_mib: u32,
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
            vram_mib: 16,
            accel: Accel::Tcg,
            stream: true,
        }
    }
}

/// The QEMU arguments: console on stdio, no network, no default VGA, the
/// bochs-display when `gpu`, the kernel and the root task by multiboot.
pub fn qemu_args(kernel: &Path, root_task: &Path, gpu: bool, opts: &BootOptions) -> Vec<String> {
    let mut args = qemu::headless_args(Some(CPU), opts.accel, opts.memory_mib);
    if gpu {
        args.extend(qemu::bochs_display(opts.vram_mib));
    }
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        root_task.display().to_string(),
    ]);
    args
}

/// The command line a person can paste to boot it by hand.
pub fn command_line(
    qemu: &Path,
    kernel: &Path,
    root_task: &Path,
    gpu: bool,
    opts: &BootOptions,
) -> String {
    qemu::command_line(qemu, qemu_args(kernel, root_task, gpu, opts))
}

/// Boots once and saves the console (without escape sequences) to `log`.
pub fn boot(
    qemu: &Path,
    kernel: &Path,
    root_task: &Path,
    gpu: bool,
    opts: &BootOptions,
    log: &Path,
) -> Result<BootRun> {
    let session = Session {
        qemu,
        args: qemu_args(kernel, root_task, gpu, opts),
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
    run.save_log(log)?;
    Ok(run)
}

/// Checks the negative run: the root task failed at [`NEGATIVE_STEP`]
/// saying [`NEGATIVE_REASON`].
pub fn check_negative(outcome: &Outcome) -> Result<(), String> {
    match outcome {
        Outcome::Fail { step, reason }
            if step == NEGATIVE_STEP && reason.contains(NEGATIVE_REASON) =>
        {
            Ok(())
        }
        other => Err(format!(
            "without a display device the root task must print `FAIL {NEGATIVE_STEP}: \
             {NEGATIVE_REASON}`; got: {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::SerialWatch;

    #[test]
    fn the_kernel_boots_by_multiboot_with_the_root_task_as_module() {
        let (kernel, task) = (
            Path::new("/t/kernel32.elf"),
            Path::new("/t/pddgpu-sel4.elf"),
        );
        let opts = BootOptions::default();
        let args = qemu_args(kernel, task, true, &opts).join(" ");
        assert!(
            args.contains("-kernel /t/kernel32.elf -initrd /t/pddgpu-sel4.elf"),
            "{args}"
        );
        assert!(args.contains(&format!("-cpu {CPU}")), "{args}");
        assert!(
            args.contains("-vga none") && args.contains("-m 512"),
            "{args}"
        );
        assert!(args.contains("-device bochs-display,vgamem=16M"), "{args}");
        let none = qemu_args(kernel, task, false, &opts).join(" ");
        assert_eq!(none, args.replace("-device bochs-display,vgamem=16M ", ""));
    }

    #[test]
    fn the_negative_run_needs_the_pci_failure() {
        let fail = |step: &str, reason: &str| Outcome::Fail {
            step: step.into(),
            reason: reason.into(),
        };
        check_negative(&fail(NEGATIVE_STEP, NEGATIVE_REASON)).unwrap();
        assert!(check_negative(&Outcome::Pass).is_err());
        assert!(check_negative(&fail("driver", NEGATIVE_REASON)).is_err());
        assert!(
            check_negative(&fail(NEGATIVE_STEP, "BAR0 is not an assigned memory BAR")).is_err()
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
