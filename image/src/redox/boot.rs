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

use anyhow::{bail, Result};
use pddgpu_ipc::progress::Step;

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
    // randd seeds Redox's random source from RDRAND and with zeros without
    // it (QEMU's default CPU model has none), which would make pddgpud's
    // export tokens the same on every boot.
    let mut args = qemu::headless_args(Some("qemu64,+rdrand"), opts.accel, opts.memory_mib);
    args.extend(["-smp".into(), opts.cpus.to_string()]);
    if gpu {
        args.extend(qemu::bochs_display(opts.vram_mib));
    }
    args.push("-drive".into());
    args.push(format!("file={},format=raw,snapshot=on", disk.display()));
    args
}

/// The command line a person can paste to boot the image by hand.
pub fn command_line(qemu: &Path, disk: &Path, gpu: bool, opts: &BootOptions) -> String {
    qemu::command_line(qemu, qemu_args(disk, gpu, opts))
}

/// Boots `disk` once, as `step` (whose news is the latest console line),
/// and saves the console (without escape sequences) to `log`.
pub fn boot(
    qemu: &Path,
    disk: &Path,
    gpu: bool,
    opts: &BootOptions,
    log: &Path,
    step: &Step<'_>,
) -> Result<BootRun> {
    let session = Session {
        qemu,
        args: qemu_args(disk, gpu, opts),
        markers: REDOX,
        timeout: opts.timeout,
        after_verdict: AfterVerdict::Stop(AFTER_VERDICT),
    };
    let run = qemu::run_session(&session, qemu::console(step, "redox", opts.stream))?;
    run.save_log(log)?;
    Ok(run)
}

/// Whether a console line shows pddgpud being started or serving: the
/// spawn line pcid-spawner logs (`pcid-spawner: spawn "…pddgpud" …`) or the
/// line pddgpud logs once its scheme is registered.
pub fn shows_driver_start(line: &str) -> bool {
    (line.contains("pcid-spawner: spawn") && line.contains("pddgpud"))
        || line.contains("serving /scheme/pddgpu")
}

/// One PCI function pcid logged while enumerating the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// `SEGM-BB:DD.F` as pcid prints it (`00-00:02.0`).
    pub address: String,
    /// `VVVV:DDDD` (`1234:1111`).
    pub id: String,
    /// `CL.SC.IN.RV`: class, subclass, interface, revision (`03.80.00.02`).
    pub class: String,
}

/// The PCI functions in pcid's enumeration lines
/// (`… [@pcid:366 INFO] PCI 00-00:02.0 1234:1111 03.80.00.02 3`), in order.
pub fn pci_functions(log: &[String]) -> Vec<PciFunction> {
    log.iter()
        .filter(|l| l.contains("@pcid:"))
        .filter_map(|l| {
            let rest = &l[l.find("] PCI ")? + "] PCI ".len()..];
            let mut words = rest.split_whitespace();
            let (address, id, class) = (words.next()?, words.next()?, words.next()?);
            let is_id = id.len() == 9
                && id.as_bytes()[4] == b':'
                && id.chars().filter(|c| c.is_ascii_hexdigit()).count() == 8;
            (address.contains(':') && is_id).then(|| PciFunction {
                address: address.to_string(),
                id: id.to_string(),
                class: class.to_string(),
            })
        })
        .collect()
}

/// What randd prints when it found no entropy source and seeded its
/// generator with zeros.
pub const RANDD_UNSEEDED: &str = "randd: Seeding failed";

/// A passing positive run still fails when randd had no entropy: every
/// export token pddgpud drew from `/scheme/rand` would be predictable.
pub fn require_entropy(outcome: Outcome, log: &[String]) -> Outcome {
    match outcome {
        Outcome::Pass if log.iter().any(|l| l.contains(RANDD_UNSEEDED)) => Outcome::Fail {
            step: "entropy".into(),
            reason: "randd found no entropy source (no RDRAND): export tokens would be \
                     predictable"
                .into(),
        },
        other => other,
    }
}

/// Checks the negative run: pcid enumerated the bus and found no
/// 1234:1111 function, the guest failed at [`NEGATIVE_STEP`] saying
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
    let functions = pci_functions(&run.log);
    if functions.is_empty() {
        bail!("the console shows no PCI enumeration by pcid, so the run proves nothing");
    }
    if let Some(f) = functions.iter().find(|f| f.id == BOCHS_ID) {
        bail!(
            "the negative run has a {BOCHS_ID} function at {}: a display device was present",
            f.address
        );
    }
    Ok(())
}

/// The PCI id of QEMU's bochs-display (and of its std VGA).
pub const BOCHS_ID: &str = "1234:1111";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unseeded_randd_fails_a_passing_run() {
        let log = |line: &str| vec!["boot".to_string(), line.to_string()];
        let unseeded = log("randd: Seeding failed, no entropy source.  Random numbers ...");
        assert!(matches!(
            require_entropy(Outcome::Pass, &unseeded),
            Outcome::Fail { step, .. } if step == "entropy"
        ));
        assert_eq!(
            require_entropy(Outcome::Pass, &log("randd: ok")),
            Outcome::Pass
        );
        let failed = Outcome::Fail {
            step: "clients".into(),
            reason: "x".into(),
        };
        assert_eq!(require_entropy(failed.clone(), &unseeded), failed);
        let args = qemu_args(Path::new("/d.img"), true, &BootOptions::default()).join(" ");
        assert!(args.contains("-cpu qemu64,+rdrand"), "{args}");
    }

    #[test]
    fn gpu_and_negative_runs_differ_only_by_the_display() {
        let opts = BootOptions::default();
        let disk = Path::new("/t/redox/harddrive.img");
        let gpu = qemu_args(disk, true, &opts).join(" ");
        let none = qemu_args(disk, false, &opts).join(" ");
        assert_eq!(
            gpu,
            "-nographic -no-reboot -nic none -vga none -cpu qemu64,+rdrand -accel tcg -m 1024 -smp 1 \
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
    fn pcid_enumeration_lines_are_parsed() {
        let log: Vec<String> = [
            "1970-01-01T00-00-00.826Z [@pcid:250 INFO] PCI SG-BS:DV.F VEND:DEVI CL.SC.IN.RV",
            "1970-01-01T00-00-00.836Z [@pcid:366 INFO] PCI 00-00:00.0 8086:1237 06.00.00.02 6",
            "1970-01-01T00-00-00.871Z [@pcid:366 INFO] PCI 00-00:02.0 1234:1111 03.80.00.02 3",
            "[@pcid_spawner:84 INFO] pcid-spawner: spawn \"/scheme/initfs/bin/pddgpud\"",
        ]
        .map(String::from)
        .to_vec();
        let f = pci_functions(&log);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            f[1],
            PciFunction {
                address: "00-00:02.0".into(),
                id: "1234:1111".into(),
                class: "03.80.00.02".into()
            }
        );
        assert!(shows_driver_start(&log[3]));
    }

    #[test]
    fn negative_run_needs_the_fail_line_and_no_driver_start() {
        let fail = |step: &str, reason: &str| Outcome::Fail {
            step: step.into(),
            reason: reason.into(),
        };
        let enumerated =
            "1970-01-01T00-00-00.858Z [@pcid:366 INFO] PCI 00-00:01.0 8086:7000 06.01.00.00 6";
        let good = BootRun::with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[
                enumerated,
                "PDDGPU-REDOX: FAIL driver: pddgpud not started (no /scheme/pddgpu)",
            ],
        );
        check_negative(&good).unwrap();
        let silent = BootRun::with(fail(NEGATIVE_STEP, NEGATIVE_REASON), &[]);
        let err = check_negative(&silent).unwrap_err().to_string();
        assert!(err.contains("no PCI enumeration"), "{err}");
        let with_display = BootRun::with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[
                enumerated,
                "1970-01-01T00-00-00.871Z [@pcid:366 INFO] PCI 00-00:02.0 1234:1111 03.00.00.02 3",
            ],
        );
        let err = check_negative(&with_display).unwrap_err().to_string();
        assert!(err.contains("00-00:02.0"), "{err}");

        let spawned = BootRun::with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[
                enumerated,
                r#"[@pcid_spawner:84 INFO] pcid-spawner: spawn "/scheme/initfs/bin/pddgpud" "--backend" "pcid""#,
            ],
        );
        let err = check_negative(&spawned).unwrap_err().to_string();
        assert!(err.contains("was started"), "{err}");
        let serving = BootRun::with(
            fail(NEGATIVE_STEP, NEGATIVE_REASON),
            &[enumerated, "pddgpud: serving /scheme/pddgpu"],
        );
        assert!(check_negative(&serving).is_err());

        assert!(check_negative(&BootRun::with(Outcome::Pass, &[])).is_err());
        assert!(check_negative(&BootRun::with(fail("clients", NEGATIVE_REASON), &[])).is_err());
        assert!(check_negative(&BootRun::with(fail(NEGATIVE_STEP, "other"), &[])).is_err());
        let timeout = Outcome::Timeout {
            after: Duration::from_secs(300),
            last_step: None,
        };
        assert!(check_negative(&BootRun::with(timeout, &[])).is_err());
    }
}
