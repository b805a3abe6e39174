//! Booting a guest: the Linux guest's QEMU command line, and a run (for
//! either guest) that streams the serial console, watches it for the
//! guest's verdict and enforces a timeout.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pddgpu_ipc::progress::Step;

use crate::serial::{sanitize, Markers, Outcome, RunEnd, SerialWatch, LINUX};

/// The PCI identity of QEMU's `bochs-display` (and std VGA), as the core's
/// device model knows it.
pub use pddgpu::device::bochs::{PCI_DEVICE as BOCHS_DEVICE, PCI_VENDOR as BOCHS_VENDOR};

/// CPU emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Pure emulation (works everywhere; what CI uses).
    Tcg,
    /// Hardware virtualization (needs a usable /dev/kvm).
    Kvm,
}

impl Accel {
    /// QEMU's name for it (`-accel <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The arguments every guest boots with: the serial console on stdio and
/// no window, QEMU exits instead of rebooting, no network and no default
/// VGA (so a `bochs-display` is the only display device, or there is
/// none); then the CPU model when `cpu` names one, `accel`, and
/// `memory_mib` MiB of RAM.
pub fn headless_args(cpu: Option<&str>, accel: Accel, memory_mib: u32) -> Vec<String> {
    let mut args: Vec<String> = ["-nographic", "-no-reboot", "-nic", "none", "-vga", "none"]
        .map(str::to_string)
        .to_vec();
    if let Some(cpu) = cpu {
        args.extend(["-cpu".into(), cpu.into()]);
    }
    args.extend([
        "-accel".into(),
        accel.name().into(),
        "-m".into(),
        memory_mib.to_string(),
    ]);
    args
}

/// The arguments of a `bochs-display` with `vram_mib` MiB of VRAM.
pub fn bochs_display(vram_mib: u32) -> [String; 2] {
    [
        "-device".into(),
        format!("bochs-display,vgamem={vram_mib}M"),
    ]
}

/// The command line a person can paste to run `qemu` with `args`.
pub fn command_line(qemu: &Path, args: Vec<String>) -> String {
    std::iter::once(qemu.display().to_string())
        .chain(args)
        .map(crate::redox::command::shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
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
        let mut args = headless_args(None, self.accel, self.memory_mib);
        args.push("-smp".into());
        args.push(self.cpus.to_string());
        if let Some(mib) = self.gpu_vram_mib {
            args.extend(bochs_display(mib));
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

impl BootRun {
    /// Saves the console to `path`, one line per entry.
    pub fn save_log(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.log.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
impl BootRun {
    /// A one-second run that ended in `outcome` with `log` on the console.
    pub(crate) fn with(outcome: Outcome, log: &[&str]) -> Self {
        BootRun {
            outcome,
            log: log.iter().map(|s| s.to_string()).collect(),
            elapsed: Duration::from_secs(1),
            steps: Vec::new(),
        }
    }
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

/// How long to wait for QEMU to exit after the Linux guest printed its
/// verdict (the guest powers off right after).
const POWER_OFF_GRACE: Duration = Duration::from_secs(15);

/// What the host does once the guest printed its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterVerdict {
    /// Wait up to this long for the guest to power off (QEMU exits by
    /// itself); a guest that does not is reported as a timeout.
    AwaitPowerOff(Duration),
    /// Keep reading the console this long (a late kernel panic still
    /// counts), then stop QEMU: for a guest that cannot power off.
    Stop(Duration),
}

/// One QEMU run: the program, its arguments and how to judge the console.
#[derive(Clone, Debug)]
pub struct Session<'a> {
    /// The QEMU binary.
    pub qemu: &'a Path,
    /// Its arguments (without the program name).
    pub args: Vec<String>,
    /// What the guest prints.
    pub markers: Markers,
    /// Give up (and kill QEMU) after this long.
    pub timeout: Duration,
    /// What happens once the verdict is in.
    pub after_verdict: AfterVerdict,
}

/// The console callback of a boot that `step` reports: each line is
/// printed (on stdout, as `<tag>| <line>`) when `stream`, without tearing
/// a live indicator, and becomes the step's latest news.
pub fn console<'a>(step: &'a Step<'_>, tag: &'a str, stream: bool) -> impl FnMut(&str) + 'a {
    move |line| {
        if stream {
            step.suspend(|| println!("{tag}| {line}"));
        }
        step.message(line);
    }
}

/// Boots the Linux guest: QEMU (`qemu` is the binary) with `config`, calls
/// `on_line` for every console line as it arrives, and returns when QEMU
/// exits or `timeout` passes (then QEMU is killed).
pub fn run(
    qemu: &Path,
    config: &QemuConfig,
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Result<BootRun> {
    run_session(
        &Session {
            qemu,
            args: config.args(),
            markers: LINUX,
            timeout,
            after_verdict: AfterVerdict::AwaitPowerOff(POWER_OFF_GRACE),
        },
        on_line,
    )
}

/// Runs one QEMU session: streams its console (and QEMU's own messages,
/// prefixed `qemu: `) to `on_line`, watches for the verdict, and ends as
/// [`Session::after_verdict`] and [`Session::timeout`] say. QEMU's stdin is
/// closed: nothing is typed into the guest.
pub fn run_session(session: &Session<'_>, mut on_line: impl FnMut(&str)) -> Result<BootRun> {
    let start = Instant::now();
    let mut child: Child = Command::new(session.qemu)
        .args(&session.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", session.qemu.display()))?;
    let (tx, rx) = mpsc::channel();
    let out = pump(
        child.stdout.take().context("QEMU stdout")?,
        tx.clone(),
        Line::Serial,
    );
    let err = pump(child.stderr.take().context("QEMU stderr")?, tx, Line::Qemu);

    let mut watch = SerialWatch::with_markers(session.markers);
    let mut log = Vec::new();
    let mut deadline = start + session.timeout;
    let mut stop_at: Option<Instant> = None;
    let end = loop {
        let now = Instant::now();
        if stop_at.is_some_and(|at| now >= at) {
            break Some(RunEnd::StoppedAfterVerdict);
        }
        if now >= deadline {
            break Some(RunEnd::TimedOut {
                after: start.elapsed(),
            });
        }
        let wake = stop_at.map_or(deadline, |at| at.min(deadline));
        match rx.recv_timeout(wake - now) {
            Ok(Line::Serial(line)) => {
                on_line(&line);
                if watch.feed(&line).is_some() {
                    let now = Instant::now();
                    match session.after_verdict {
                        AfterVerdict::AwaitPowerOff(grace) => {
                            deadline = deadline.min(now + grace);
                        }
                        AfterVerdict::Stop(grace) => {
                            stop_at.get_or_insert(now + grace);
                        }
                    }
                }
                log.push(line);
            }
            Ok(Line::Qemu(line)) => {
                let line = format!("qemu: {line}");
                on_line(&line);
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    let end = match end {
        Some(end) => {
            // Our own child, killed by its handle.
            let _ = child.kill();
            let _ = child.wait();
            end
        }
        None => {
            let status = child.wait().context("waiting for QEMU")?;
            RunEnd::Exited {
                status: status.code(),
            }
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

        // A guest that cannot power off: stopped by the host after its
        // verdict, and a kernel panic inside the grace time still counts.
        let session = |args: &[&str]| Session {
            qemu: Path::new("/bin/sh"),
            args: args.iter().map(|a| a.to_string()).collect(),
            markers: crate::serial::REDOX,
            timeout: Duration::from_secs(30),
            after_verdict: AfterVerdict::Stop(Duration::from_millis(300)),
        };
        let stopped = run_session(
            &session(&["-c", "echo 'PDDGPU-REDOX: PASS'; exec sleep 30"]),
            |_| {},
        )
        .unwrap();
        assert_eq!(stopped.outcome, Outcome::Pass);
        assert!(stopped.elapsed < Duration::from_secs(10));
        let late_panic = run_session(
            &session(&[
                "-c",
                "echo 'PDDGPU-REDOX: PASS'; sleep 0.1; echo 'KERNEL PANIC: x'; exec sleep 30",
            ]),
            |_| {},
        )
        .unwrap();
        assert!(
            matches!(late_panic.outcome, Outcome::Panic { .. }),
            "{:?}",
            late_panic.outcome
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
