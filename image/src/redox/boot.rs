//! Booting the Redox image under QEMU and judging the runs.
//!
//! The disk boots through SeaBIOS and the BIOS bootloader (which, built
//! with our default-mode patch, needs no key press) into the kernel, which
//! runs init from the initfs. The serial console is the only output; the
//! guest scenario prints `PDDGPU-REDOX:` markers ([`crate::serial::REDOX`]).
//! Redox here has no ACPI shutdown, so the host stops QEMU a moment after
//! the verdict (a kernel panic in that moment still fails the run).
//!
//! - The positive run has a `bochs-display` (PCI 1234:1111) and must PASS.
//! - The negative run has no display device at all (`-vga none` also
//!   removes QEMU's default VGA, which has the same PCI id). The guest must
//!   then report `FAIL driver: pddgpud not started (no /scheme/pddgpu)`,
//!   and the console must show that pddgpud was never started.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::qemu::{self, Accel, AfterVerdict, BootRun, Session};
use crate::serial::{Outcome, REDOX};

/// The step the guest fails at when there is no PDDGPU-compatible device.
pub const NEGATIVE_STEP: &str = "driver";
/// The reason the guest gives for it.
pub const NEGATIVE_REASON: &str = "pddgpud not started (no /scheme/pddgpu)";

/// How long the console is still read after the verdict.
pub const AFTER_VERDICT: Duration = Duration::from_secs(3);

/// Settings of one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootOptions {
    /// Give up on the guest after this long.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// VRAM of the bochs-display in MiB.
    pub vram_mib: u32,
    /// CPU emulation.
    pub accel: Accel,
    /// Print the console as it arrives.
    pub stream: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            memory_mib: 1024,
            cpus: 1,
            vram_mib: 64,
            accel: Accel::Tcg,
            stream: true,
        }
    }
}

/// The QEMU arguments: console on stdio, no network, no default VGA, the
/// bochs-display when `gpu`, the disk read-only in effect (`snapshot=on`:
/// the guest's writes go to a temporary file, the image stays as built).
pub fn qemu_args(disk: &Path, gpu: bool, opts: &BootOptions) -> Vec<String> {
    let mut args: Vec<String> = ["-nographic", "-no-reboot", "-nic", "none", "-vga", "none"]
        .map(str::to_string)
        .to_vec();
    args.extend([
        "-accel".into(),
        opts.accel.name().into(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-smp".into(),
        opts.cpus.to_string(),
    ]);
    if gpu {
        args.push("-device".into());
        args.push(format!("bochs-display,vgamem={}M", opts.vram_mib));
    }
    args.push("-drive".into());
    args.push(format!("file={},format=raw,snapshot=on", disk.display()));
    args
}

/// The command line a person can paste to boot the image by hand.
pub fn command_line(qemu: &Path, disk: &Path, gpu: bool, opts: &BootOptions) -> String {
    std::iter::once(qemu.display().to_string())
        .chain(qemu_args(disk, gpu, opts))
        .map(super::command::shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots `disk` once and saves the console (without escape sequences) to
/// `log`.
pub fn boot(
    qemu: &Path,
    disk: &Path,
    gpu: bool,
    opts: &BootOptions,
    log: &Path,
) -> Result<BootRun> {
    let session = Session {
        qemu,
        args: qemu_args(disk, gpu, opts),
        markers: REDOX,
        timeout: opts.timeout,
        after_verdict: AfterVerdict::Stop(AFTER_VERDICT),
    };
    let stream = opts.stream;
    let run = qemu::run_session(&session, |line| {
        if stream {
            println!("redox| {line}");
        }
    })?;
    std::fs::write(log, run.log.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    Ok(run)
}

/// Whether a console line shows pddgpud being started or serving: the
/// spawn line pcid-spawner logs (`pcid-spawner: spawn "…pddgpud" …`) or the
/// line pddgpud logs once its scheme is registered.
pub fn shows_driver_start(line: &str) -> bool {
    (line.contains("pcid-spawner: spawn") && line.contains("pddgpud"))
        || line.contains("serving /scheme/pddgpu")
}

/// Checks the negative run: the guest failed at [`NEGATIVE_STEP`] saying
/// [`NEGATIVE_REASON`], and nothing on the console shows pddgpud starting.
pub fn check_negative(run: &BootRun) -> Result<()> {
    match &run.outcome {
        Outcome::Fail { step, reason }
            if step == NEGATIVE_STEP && reason.contains(NEGATIVE_REASON) => {}
        other => bail!(
            "without a display device the guest must print `FAIL {NEGATIVE_STEP}: \
             {NEGATIVE_REASON}`; got: {other}"
        ),
    }
    if let Some(line) = run.log.iter().find(|l| shows_driver_start(l)) {
        bail!("pddgpud was started although there is no PDDGPU-compatible device: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(outcome: Outcome, log: &[&str]) -> BootRun {
        BootRun {
            outcome,
            log: log.iter().map(|s| s.to_string()).collect(),
            elapsed: Duration::from_secs(1),
            steps: Vec::new(),
        }
    }

    #[test]
    fn gpu_and_negative_runs_differ_only_by_the_display() {
        let opts = BootOptions::default();
        let disk = Path::new("/t/redox/harddrive.img");
        let gpu = qemu_args(disk, true, &opts).join(" ");
        let none = qemu_args(disk, false, &opts).join(" ");
        assert_eq!(
            gpu,
            "-nographic -no-reboot -nic none -vga none -accel tcg -m 1024 -smp 1 \
             -device bochs-display,vgamem=64M \
             -drive file=/t/redox/harddrive.img,format=raw,snapshot=on"
        );
        assert_eq!(
            none,
            gpu.replace("-device bochs-display,vgamem=64M ", ""),
            "the negative run has no display device (and no default VGA)"
        );
        let cmd = command_line(Path::new("/usr/bin/qemu-system-x86_64"), disk, true, &opts);
        assert!(cmd.starts_with("/usr/bin/qemu-system-x86_64 -nographic"));
    }

    #[test]
    fn negative_run_needs_the_fail_line_and_no_driver_start() {
        let fail = |step: &str, reason: &str| Outcome::Fail {
            step: step.into(),
            reason: reason.into(),
        };
        let good = run_with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[
                "pcid: PCI 00:01.0 8086:7000 ISA bridge",
                "PDDGPU-REDOX: FAIL driver: pddgpud not started (no /scheme/pddgpu)",
            ],
        );
        check_negative(&good).unwrap();

        let spawned = run_with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[r#"[INFO] pcid-spawner: spawn "/scheme/initfs/bin/pddgpud" "--backend" "pcid""#],
        );
        let err = check_negative(&spawned).unwrap_err().to_string();
        assert!(err.contains("was started"), "{err}");
        let serving = run_with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &["pddgpud: serving /scheme/pddgpu"],
        );
        assert!(check_negative(&serving).is_err());

        assert!(check_negative(&run_with(Outcome::Pass, &[])).is_err());
        assert!(check_negative(&run_with(fail("clients", NEGATIVE_REASON), &[])).is_err());
        assert!(check_negative(&run_with(fail(NEGATIVE_STEP, "other"), &[])).is_err());
        let timeout = Outcome::Timeout {
            after: Duration::from_secs(300),
            last_step: None,
        };
        assert!(check_negative(&run_with(timeout, &[])).is_err());
    }
}
