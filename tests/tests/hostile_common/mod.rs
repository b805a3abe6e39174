//! What both hostile suites (`hostile.rs`, `hostile_limits.rs`) attack
//! with: the daemon and helper client under test, raw requests over the
//! host transport, and the check every attack ends with.

#![allow(dead_code)] // each suite uses its own part

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pddgpu_ipc::host::{HostConnection, ROOT_FD};
use pddgpu_tests::{wait_until, Daemon};
use syscall::schemev2::Opcode;

/// The daemon under attack: this build's, or `PDDGPU_HOSTILE_DAEMON` (to
/// run the suites against another build, e.g. installed release binaries).
pub fn daemon_bin() -> String {
    std::env::var("PDDGPU_HOSTILE_DAEMON")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pddgpud-under-test").to_string())
}

/// The helper client that runs attacks as another process or user.
pub const HOSTILE: &str = env!("CARGO_BIN_EXE_pddgpu-hostile-client");

/// The user the second-user attacks run as (`nobody` on Debian).
pub const OTHER_UID: u32 = 65534;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The result of one request with room for `out_len` answer bytes, or
/// `Err(-1)` when the connection failed.
pub fn request_out(
    c: &mut HostConnection,
    op: Opcode,
    args: [u64; 6],
    payload: &[u8],
    out_len: usize,
) -> Result<u64, i32> {
    match c.request(op, args, payload, out_len) {
        Ok(r) => r.result().map(|v| v as u64),
        Err(_) => Err(-1),
    }
}

/// [`request_out`] for a request that reads nothing back.
pub fn request(
    c: &mut HostConnection,
    op: Opcode,
    args: [u64; 6],
    payload: &[u8],
) -> Result<u64, i32> {
    request_out(c, op, args, payload, 0)
}

pub fn open(c: &mut HostConnection, path: &str, flags: usize) -> Result<u64, i32> {
    request(
        c,
        Opcode::OpenAt,
        [ROOT_FD, 0, 0, flags as u64, 0, 0],
        path.as_bytes(),
    )
}

pub fn close(c: &mut HostConnection, handle: u64) -> Result<u64, i32> {
    request(c, Opcode::CloseMsg, [handle, 0, 0, 0, 0, 0], &[])
}

/// The checks every test ends with: the server survived the attack.
pub fn assert_server_intact(daemon: &mut Daemon) {
    assert!(daemon.is_running(), "pddgpud died: {}", daemon.log());
    let dev = daemon.connect();
    let settled = wait_until(Duration::from_secs(20), || {
        let s = dev.stats().expect("stats");
        s.vram.used == 0 && s.gtt.used == 0 && s.bos.count == 0
    });
    let stats = dev.stats().expect("stats");
    assert!(
        settled,
        "memory still in use after every client left: vram {} gtt {} bos {}",
        stats.vram.used, stats.gtt.used, stats.bos.count
    );
    assert_eq!(dev.health().expect("health").trim(), "ok");
    let leaks = dev.leak_check().expect("leak-check");
    assert!(leaks.clean, "leak audit not clean: {:?}", leaks.problems);
    assert!(daemon.is_running(), "pddgpud died: {}", daemon.log());
}

/// Starts the helper client against `daemon` (as `uid` when given), its
/// stdin and stdout piped.
pub fn spawn_helper(daemon: &Daemon, args: &[&str], uid: Option<u32>) -> Child {
    let mut cmd = Command::new(HOSTILE);
    cmd.args(args)
        .env(pddgpu_ipc::SOCKET_ENV, daemon.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    cmd.spawn().expect("spawn the hostile client")
}

/// The next line a helper printed (its answer), without the newline.
pub fn first_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("stdout");
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    line.trim_end().to_string()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
