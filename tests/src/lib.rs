//! Shared helpers of the pddgpu multi-process tests: start a real `pddgpud`
//! process on a private socket, spawn client processes, wait for
//! conditions without timing assertions.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pddgpu_ipc::Device;

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/pddgpu-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pddgpu-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pddgpud` on the simulated device. Stopped with SIGTERM on
/// drop (or [`Daemon::stop`], which also checks the exit status).
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    _dir: TempDir,
}

/// Small device sizes keep the tests fast.
pub const TEST_VRAM: &str = "64M";
/// GTT size of the test daemon.
pub const TEST_GTT: &str = "64M";

impl Daemon {
    /// Starts the daemon with small sizes plus `extra` arguments and waits
    /// until it accepts connections.
    pub fn start(daemon_bin: &str, extra: &[&str]) -> Daemon {
        Self::start_with(daemon_bin, extra, |_, _| {})
    }

    /// [`Daemon::start`], with `configure` applied to the command first
    /// (resource limits, another user); it also gets the directory the
    /// socket goes in.
    pub fn start_with(
        daemon_bin: &str,
        extra: &[&str],
        configure: impl FnOnce(&mut Command, &Path),
    ) -> Daemon {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("pddgpu.sock");
        let log = std::fs::File::create(dir.path().join("pddgpud.log")).expect("log file");
        let mut command = Command::new(daemon_bin);
        // The small defaults, unless `extra` names its own.
        for (option, value) in [
            ("--vram-size", TEST_VRAM),
            ("--gtt-size", TEST_GTT),
            ("--tick-ms", "20"),
        ] {
            if !extra.contains(&option) {
                command.args([option, value]);
            }
        }
        command
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        configure(&mut command, dir.path());
        let child = command.spawn().expect("spawn pddgpud");
        let mut d = Daemon {
            child: Some(child),
            socket,
            _dir: dir,
        };
        let ok = wait_until(Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("pddgpud exited early with {status}: {}", d.log());
            }
            Device::connect(&d.socket).is_ok()
        });
        assert!(ok, "pddgpud did not start listening: {}", d.log());
        d
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new connection from this (test) process.
    pub fn connect(&self) -> Device {
        Device::connect(&self.socket).expect("connect to pddgpud")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pddgpud.log")).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Polls `f` every 5 ms until it is true or `timeout` passes; returns
/// whether it became true. (A bound on waiting, not a speed assertion.)
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client process with line-based stdin/stdout.
pub struct ClientProc {
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ClientProc {
    /// Spawns `bin args…` against `socket`.
    pub fn spawn(bin: &str, socket: &Path, args: &[&str]) -> ClientProc {
        let mut child = Command::new(bin)
            .args(args)
            .env(pddgpu_ipc::SOCKET_ENV, socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn client");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        ClientProc {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs the `pddgpu` CLI `cli` as `alloc <args…> --hold` against
    /// `socket` and returns once it holds its BOs.
    pub fn holding(cli: &str, socket: &Path, args: &[&str]) -> ClientProc {
        let mut all = vec!["alloc"];
        all.extend_from_slice(args);
        all.push("--hold");
        let mut p = ClientProc::spawn(cli, socket, &all);
        loop {
            let line = p.line();
            assert!(!line.is_empty(), "the holder ended before holding its BOs");
            if line.starts_with("holding BO") {
                return p;
            }
        }
    }

    /// The next line the client prints (without newline); empty at EOF.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_line(&mut s);
        s.trim_end().to_string()
    }

    /// Sends a line to the client's stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Closes stdin and waits; returns whether the client succeeded.
    pub fn finish(mut self) -> bool {
        self.stdin = None;
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Kills the client with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `pddgpu` CLI `cli` with `args` against `socket` and collects
/// its output.
pub fn run_cli(cli: &str, socket: &Path, args: &[&str]) -> Output {
    Command::new(cli)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run the pddgpu CLI")
}

/// The memory part of the stats (device, VRAM, GTT, BO totals), without
/// event counters: what must not change when a request is refused.
pub fn memory_state(dev: &Device) -> serde_json::Value {
    let text = dev.read_text("stats.json").expect("read stats.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("stats.json is JSON");
    if let Some(obj) = v.as_object_mut() {
        obj.remove("counters");
    }
    v
}
