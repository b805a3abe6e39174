//! `pddgpu top` and `pddgpu stats` against a real `pddgpud` while client
//! processes hold memory: once as plain text frames (`--plain`), and once
//! live in a real terminal (tmux), driven with keys and read back with
//! `capture-pane`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pddgpu_ipc::Device;
use pddgpu_tests::{run_cli, wait_until, ClientProc, Daemon, TempDir};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLI: &str = env!("CARGO_BIN_EXE_pddgpu-cli-under-test");

fn cli(socket: &Path, args: &[&str]) -> Output {
    run_cli(CLI, socket, args)
}

/// A CLI process holding `count` BOs of `size` in `domain`, labelled.
fn holder(socket: &Path, size: &str, count: u32, domain: &str, label: &str) -> ClientProc {
    let count = count.to_string();
    let args = [
        "--size", size, "--count", &count, "--domain", domain, "--label", label,
    ];
    ClientProc::holding(CLI, socket, &args)
}

/// The row of the client table for `pid`.
fn client_row(frame: &str, pid: u32) -> Option<String> {
    let pid = pid.to_string();
    frame
        .lines()
        .find(|l| {
            l.trim_start_matches(['│', ' '])
                .split_whitespace()
                .next()
                .is_some_and(|first| first == pid)
        })
        .map(str::to_string)
}

#[test]
fn plain_frames_and_stats_show_what_clients_hold() {
    let daemon = Daemon::start(DAEMON, &["--visible-size", "32M"]);
    let textures = holder(daemon.socket(), "8M", 2, "vram", "textures");
    let staging = holder(daemon.socket(), "4M", 3, "gtt", "staging");

    let out = cli(daemon.socket(), &["top", "--plain", "--frames", "1"]);
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{frame}");
    for needle in [
        "pddgpu top - PDDGPU (ready) - 5 BOs",
        "16.0 MiB / 64.0 MiB (25%)",
        "12.0 MiB / 64.0 MiB (18%)",
        " CPU-visible VRAM ready ",
        "health: ok",
    ] {
        assert!(frame.contains(needle), "missing {needle:?} in\n{frame}");
    }
    let row = client_row(&frame, textures.child.id()).expect("textures holder row");
    assert!(
        row.contains("textures (8.0 MiB)") && row.contains("16.0 MiB"),
        "{row}"
    );
    let row = client_row(&frame, staging.child.id()).expect("staging holder row");
    assert!(
        row.contains("staging (4.0 MiB)") && row.contains("12.0 MiB"),
        "{row}"
    );
    assert!(
        client_row(&frame, std::process::id()).is_none(),
        "top's own reads are not a client"
    );
    // One frame, nothing but text: no terminal control sequences.
    assert!(!frame.contains('\x1b'), "{frame:?}");
    assert_eq!(frame.matches("pddgpu top - ").count(), 1);

    // Two frames: the second has rates, and a leak audit it can show.
    daemon
        .connect()
        .write_file("control", b"leak-check")
        .expect("run a leak check");
    let out = cli(
        daemon.socket(),
        &["top", "--plain", "--frames", "2", "--interval", "100ms"],
    );
    let frames = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(frames.matches("pddgpu top - ").count(), 2, "{frames}");
    let second = frames.split("pddgpu top - ").nth(2).unwrap();
    assert!(
        second.contains("allocs/s 0.0  frees/s 0.0  failures +0"),
        "{second}"
    );
    assert!(second.contains("last leak audit at "), "{second}");
    assert!(
        second.contains(": clean (vram clean, gtt clean; 5 live BOs"),
        "{second}"
    );

    // `pddgpu stats`: the counters table has a row per domain with units.
    let out = cli(daemon.socket(), &["stats"]);
    let stats = String::from_utf8_lossy(&out.stdout).into_owned();
    let table: Vec<Vec<&str>> = stats
        .lines()
        .skip_while(|l| !l.starts_with("counters"))
        .take(4)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(table[0][..3], ["counters", "allocs", "frees"], "{stats}");
    assert_eq!(table[1][0], "count", "{stats}");
    assert_eq!(table[2][..2], ["vram", "2"], "{stats}");
    assert_eq!(table[3][..2], ["gtt", "3"], "{stats}");
    assert!(table[2].contains(&"16.0 MiB"), "allocated bytes: {stats}");

    textures.kill();
    staging.kill();
    assert_eq!(daemon.stop(), Some(0));
}

/// A private tmux server (its own socket name), killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    /// tmux, installed with apt when missing and running as root; `None`
    /// (with the reason printed) when it cannot be had.
    fn find() -> Option<Tmux> {
        let have = || {
            Command::new("tmux")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have() && rustix::process::geteuid().is_root() {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "tmux"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !have() {
            eprintln!("SKIPPED: tmux is not installed and could not be installed (not root, or apt failed)");
            return None;
        }
        Some(Tmux {
            name: format!("pddgpu-top-test-{}", std::process::id()),
        })
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Starts `command` in a detached session of `width` x `height`.
    fn start(&self, command: &str, width: u16, height: u16) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", "top", keys]);
        assert!(out.status.success(), "tmux send-keys: {out:?}");
    }

    fn running(&self) -> bool {
        self.cmd(&["has-session", "-t", "top"]).status.success()
    }

    /// Waits until the screen satisfies `f`; panics with the screen if it
    /// never does.
    fn wait_for(&self, what: &str, mut f: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.screen();
            f(&last)
        });
        assert!(ok, "the screen never showed {what}:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// A `pddgpud` on a socket chosen by the test (so a second one can take
/// over the same socket after the first is gone).
fn daemon_at(socket: &Path, log: &Path) -> Child {
    let child = Command::new(DAEMON)
        .args([
            "--vram-size",
            "64M",
            "--visible-size",
            "32M",
            "--gtt-size",
            "64M",
        ])
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("daemon log"))
        .spawn()
        .expect("spawn pddgpud");
    assert!(
        wait_until(Duration::from_secs(20), || Device::connect(socket).is_ok()),
        "pddgpud did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child
}

fn stop(mut child: Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
}

#[test]
fn top_in_a_real_terminal_follows_the_server() {
    let Some(tmux) = Tmux::find() else {
        return;
    };
    let dir = TempDir::new("top-tmux");
    let socket: PathBuf = dir.path().join("pddgpu.sock");
    let log = dir.path().join("pddgpud.log");
    let daemon = daemon_at(&socket, &log);

    let command = format!("{CLI} --socket {} top --interval 200ms", socket.display());
    tmux.start(&command, 110, 60);
    tmux.wait_for("the first frame", |s| {
        s.contains("pddgpu top - PDDGPU (ready)") && s.contains("0 B / 64.0 MiB (0%)")
    });

    // Clients allocate: the gauges and the client table follow.
    let textures = holder(&socket, "8M", 2, "vram", "textures");
    let staging = holder(&socket, "4M", 3, "gtt", "staging");
    let (t, s) = (textures.child.id(), staging.child.id());
    let screen = tmux.wait_for("both holders", |s_| {
        s_.contains("16.0 MiB / 64.0 MiB (25%)")
            && s_.contains("12.0 MiB / 64.0 MiB (18%)")
            && client_row(s_, t).is_some()
            && client_row(s_, s).is_some()
    });
    // The coarse occupancy map names both clients in its legend.
    let legend = screen
        .lines()
        .find(|l| l.contains("│clients "))
        .unwrap_or_else(|| panic!("no occupancy map:\n{screen}"));
    assert!(
        legend.contains(&format!(" pid {t} ")) && legend.contains(&format!(" pid {s} ")),
        "{legend}"
    );
    let row_t = client_row(&screen, t).unwrap();
    let row_s = client_row(&screen, s).unwrap();
    assert!(row_t.contains("textures (8.0 MiB)"), "{row_t}");
    assert!(row_s.contains("staging (4.0 MiB)"), "{row_s}");
    // The gauge is drawn: a quarter of the VRAM bar is filled.
    let gauge = screen
        .lines()
        .find(|l| l.contains("16.0 MiB / 64.0 MiB (25%)"))
        .unwrap();
    let (full, empty) = (gauge.matches('█').count(), gauge.matches('░').count());
    assert!(
        full > 0 && (full * 4).abs_diff(full + empty) <= 4,
        "{gauge}"
    );
    let order = |screen: &str| {
        let pos = |pid| {
            let row = client_row(screen, pid).unwrap();
            screen.find(&row).unwrap()
        };
        pos(t) < pos(s)
    };
    assert!(screen.contains("sorted by VRAM"), "{screen}");
    assert!(order(&screen), "VRAM holder first:\n{screen}");

    // `s` sorts by GTT: the GTT holder comes first.
    tmux.keys("s");
    let screen = tmux.wait_for("the GTT sort", |s| s.contains("sorted by GTT"));
    assert!(!order(&screen), "GTT holder first:\n{screen}");

    // `p` pauses: what the screen shows stays while memory is freed.
    tmux.keys("p");
    tmux.wait_for("PAUSED", |s| s.contains("PAUSED"));
    textures.kill();
    let dev = Device::connect(&socket).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        dev.stats().unwrap().vram.used == 0
    }));
    drop(dev);
    std::thread::sleep(Duration::from_millis(600));
    let screen = tmux.screen();
    assert!(
        screen.contains("16.0 MiB / 64.0 MiB (25%)") && client_row(&screen, t).is_some(),
        "paused, the old frame stays:\n{screen}"
    );
    // `p` again resumes: the freed memory is gone from the view.
    tmux.keys("p");
    tmux.wait_for("the freed VRAM", |s| {
        !s.contains("PAUSED") && s.contains("0 B / 64.0 MiB (0%)") && client_row(s, t).is_none()
    });

    // The server goes away: top says so and keeps running.
    staging.kill();
    stop(daemon);
    tmux.wait_for("the lost server", |s| s.contains("SERVER UNREACHABLE"));
    assert!(tmux.running(), "top must not exit when the server goes");
    // A new server on the same socket: top reconnects by itself.
    let daemon = daemon_at(&socket, &log);
    let holder2 = holder(&socket, "2M", 1, "vram", "after");
    let h = holder2.child.id();
    tmux.wait_for("the new server's client", |s| {
        !s.contains("SERVER UNREACHABLE") && client_row(s, h).is_some()
    });

    // `q` quits.
    tmux.keys("q");
    assert!(
        wait_until(Duration::from_secs(20), || !tmux.running()),
        "top did not quit on q:\n{}",
        tmux.screen()
    );
    holder2.kill();
    stop(daemon);
}
