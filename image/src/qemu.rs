//! Booting the guest: the QEMU command line, and a run that streams the
//! serial console, watches it for the guest's verdict and enforces a
//! timeout.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::serial::{sanitize, Outcome, RunEnd, SerialWatch};

/// The PCI identity of QEMU's `bochs-display` (and std VGA): vendor 0x1234.
pub const BOCHS_VENDOR: u16 = 0x1234;
/// The PCI device id of QEMU's `bochs-display`.
pub const BOCHS_DEVICE: u16 = 0x1111;

/// CPU emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Pure emulation (works everywhere; what CI uses).
    Tcg,
    /// Hardware virtualization (needs a usable /dev/kvm).
    Kvm,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Everything that decides the QEMU command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    /// The kernel image (`-kernel`).
    pub kernel: PathBuf,
    /// The gzip newc initramfs (`-initrd`).
    pub initrd: PathBuf,
    /// VRAM of the `bochs-display` GPU in MiB; `None` boots without any
    /// display device (the negative run).
    pub gpu_vram_mib: Option<u32>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// CPU emulation.
    pub accel: Accel,
    /// Extra kernel command line words after the fixed ones.
    pub extra_append: Vec<String>,
}

impl QemuConfig {
    /// The kernel command line: serial console, reboot (= QEMU exit, with
    /// `-no-reboot`) immediately on panic, quiet boot.
    pub fn append(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            "oops=panic".to_string(),
            "quiet".to_string(),
            "loglevel=3".to_string(),
            "rdinit=/init".to_string(),
        ];
        words.extend(self.extra_append.iter().cloned());
        words.join(" ")
    }

    /// The full argument list (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-vga",
            "none",
            "-accel",
            self.accel.name(),
            "-m",
        ]
        .map(str::to_string)
        .to_vec();
        args.push(self.memory_mib.to_string());
        args.push("-smp".into());
        args.push(self.cpus.to_string());
        if let Some(mib) = self.gpu_vram_mib {
            args.push("-device".into());
            args.push(format!("bochs-display,vgamem={mib}M"));
        }
        args.push("-kernel".into());
        args.push(self.kernel.display().to_string());
        args.push("-initrd".into());
        args.push(self.initrd.display().to_string());
        args.push("-append".into());
        args.push(self.append());
        args
    }
}

/// One finished boot.
#[derive(Debug)]
pub struct BootRun {
    /// The verdict.
    pub outcome: Outcome,
    /// The serial console (and QEMU's own messages, prefixed `qemu: `),
    /// sanitized, one entry per line.
    pub log: Vec<String>,
    /// Wall time from QEMU start to exit.
    pub elapsed: Duration,
    /// Steps the guest announced, in order.
    pub steps: Vec<String>,
}

enum Line {
    Serial(String),
    Qemu(String),
}

fn pump<R: Read + Send + 'static>(
    source: R,
    tx: mpsc::Sender<Line>,
    wrap: fn(String) -> Line,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(wrap(sanitize(&buf))).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// How long to wait for QEMU to exit after the guest printed its verdict
/// (the guest powers off right after).
const POWER_OFF_GRACE: Duration = Duration::from_secs(15);

/// Boots QEMU (`qemu` is the binary), calls `on_line` for every console
/// line as it arrives, and returns when QEMU exits or `timeout` passes (then
/// QEMU is killed).
pub fn run(
    qemu: &std::path::Path,
    config: &QemuConfig,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<BootRun> {
    let start = Instant::now();
    let mut child: Child = Command::new(qemu)
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let (tx, rx) = mpsc::channel();
    let out = pump(
        child.stdout.take().context("QEMU stdout")?,
        tx.clone(),
        Line::Serial,
    );
    let err = pump(child.stderr.take().context("QEMU stderr")?, tx, Line::Qemu);

    let mut watch = SerialWatch::new();
    let mut log = Vec::new();
    let mut deadline = start + timeout;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(Line::Serial(line)) => {
                on_line(&line);
                if watch.feed(&line).is_some() {
                    // Decided: give the guest a bounded time to power off.
                    deadline = deadline.min(Instant::now() + POWER_OFF_GRACE);
                }
                log.push(line);
            }
            Ok(Line::Qemu(line)) => {
                let line = format!("qemu: {line}");
                on_line(&line);
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let end = if timed_out {
        // Our own child, killed by its handle.
        let _ = child.kill();
        let _ = child.wait();
        RunEnd::TimedOut {
            after: start.elapsed(),
        }
    } else {
        let status = child.wait().context("waiting for QEMU")?;
        RunEnd::Exited {
            status: status.code(),
        }
    };
    let _ = out.join();
    let _ = err.join();
    Ok(BootRun {
        outcome: watch.outcome(end),
        log,
        elapsed: start.elapsed(),
        steps: watch.steps().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(gpu: Option<u32>) -> QemuConfig {
        QemuConfig {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.gz".into(),
            gpu_vram_mib: gpu,
            memory_mib: 512,
            cpus: 2,
            accel: Accel::Tcg,
            extra_append: vec!["pddgpu.mode=gpu".into()],
        }
    }

    #[test]
    fn gpu_run_has_the_bochs_display_and_no_default_vga() {
        let args = config(Some(64)).args();
        let joined = args.join(" ");
        assert!(
            joined.contains("-device bochs-display,vgamem=64M"),
            "{joined}"
        );
        assert!(joined.contains("-vga none"));
        assert!(joined.contains("-nographic -no-reboot"));
        assert!(joined.contains("-accel tcg"));
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.contains("console=ttyS0") && append.contains("panic=-1"));
        assert!(append.ends_with("pddgpu.mode=gpu"));
    }

    #[test]
    fn negative_run_has_no_display_device_at_all() {
        let joined = config(None).args().join(" ");
        assert!(!joined.contains("bochs-display"));
        // the default std VGA (also 1234:1111) must be off too
        assert!(joined.contains("-vga none"));
    }

    #[test]
    fn run_reports_a_program_that_prints_pass() {
        // A stand-in for QEMU: a shell that ignores the arguments and prints
        // what a passing guest prints.
        let dir = std::env::temp_dir().join(format!("pddgpu-fakeqemu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'PDDGPU-IMAGE: STEP probe'\necho 'PDDGPU-IMAGE: PASS'\necho oops >&2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut seen = Vec::new();
        let first = run(&fake, &config(Some(64)), Duration::from_secs(30), |l| {
            seen.push(l.to_string())
        })
        .unwrap();
        assert_eq!(first.outcome, Outcome::Pass);
        assert_eq!(first.steps, ["probe"]);
        assert!(seen.iter().any(|l| l == "qemu: oops"));

        // And one that hangs: killed at the timeout, reported as such.
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'PDDGPU-IMAGE: STEP wait'\nexec sleep 30\n",
        )
        .unwrap();
        let run = run(&fake, &config(None), Duration::from_millis(500), |_| {}).unwrap();
        match run.outcome {
            Outcome::Timeout { last_step, .. } => assert_eq!(last_step.as_deref(), Some("wait")),
            other => panic!("expected timeout, got {other:?}"),
        }
        assert!(run.elapsed < Duration::from_secs(20));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
