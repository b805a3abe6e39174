//! Every tunable round-trips through `config/<name>`; out-of-range and
//! malformed values are refused and change nothing; tunables take effect
//! (quota, retry policy); control files refuse other users.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use pddgpu::tunables::{Unit, SPECS};
use std::time::Duration;

use pddgpu_ipc::{BoDesc, BoFlags, Domain};
use pddgpu_tests::{wait_until, Daemon};
use syscall::error::{EDQUOT, EINVAL, ENOSPC};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLIENT: &str = env!("CARGO_BIN_EXE_pddgpu-test-client");
const CLI: &str = env!("CARGO_BIN_EXE_pddgpu-cli-under-test");

#[test]
fn every_tunable_round_trips_and_rejects_bad_values() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let names = dev.config_names().unwrap();
    let expected: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
    assert_eq!(names, expected, "config/ lists every tunable");

    for spec in SPECS.iter() {
        let name = spec.name;
        let original = dev.config(name).unwrap();
        assert_eq!(
            original,
            spec.show(spec.default),
            "{name} starts at its default"
        );
        // A valid new value, different from the default.
        let new = match spec.unit {
            Unit::Switch => 1 - spec.default,
            _ if spec.default == spec.max => spec.min,
            _ => spec.default + (spec.max - spec.default).div_ceil(2),
        };
        dev.set_config(name, &new.to_string()).unwrap();
        assert_eq!(dev.config(name).unwrap(), spec.show(new), "{name} = {new}");
        // Bounds: the extremes are accepted, beyond them refused.
        dev.set_config(name, &spec.max.to_string()).unwrap();
        dev.set_config(name, &spec.min.to_string()).unwrap();
        assert_eq!(dev.config(name).unwrap(), spec.show(spec.min));
        let mut refused = vec!["banana".to_string(), String::new(), "1e3".into()];
        if spec.max < u64::MAX {
            refused.push((spec.max + 1).to_string());
        }
        if spec.min > 0 {
            refused.push((spec.min - 1).to_string());
        }
        for bad in &refused {
            let e = dev.set_config(name, bad).unwrap_err();
            assert_eq!(e.errno(), Some(EINVAL), "{name} <- {bad:?}");
            assert_eq!(
                dev.config(name).unwrap(),
                spec.show(spec.min),
                "{name} unchanged"
            );
        }
        // Units as a shell user writes them.
        match spec.unit {
            Unit::Millis if spec.max >= 2000 && spec.min <= 2000 => {
                dev.set_config(name, "2s").unwrap();
                assert_eq!(dev.config(name).unwrap(), "2000");
            }
            Unit::Bytes => {
                dev.set_config(name, "64M").unwrap();
                assert_eq!(dev.config(name).unwrap(), (64u64 << 20).to_string());
            }
            Unit::Switch => {
                dev.set_config(name, "on").unwrap();
                assert_eq!(dev.config(name).unwrap(), "on");
            }
            _ => {}
        }
        dev.set_config(name, &original).unwrap();
        assert_eq!(dev.config(name).unwrap(), original, "{name} restored");
    }

    // The CLI round trip, as a shell user does it.
    let out = pddgpu_tests::run_cli(CLI, daemon.socket(), &["config", "gtt_retry_delay_ms", "7"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "gtt_retry_delay_ms 7\n"
    );
    // Refusal lines share one server-wide limit of a few a second (see
    // `pddgpu_ipc::logline`): let the refusals above age out of it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = pddgpu_tests::run_cli(CLI, daemon.socket(), &["config", "gtt_retry_count", "101"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EINVAL"));
    assert!(
        daemon.log().contains("out of range (allowed 0..=100)"),
        "the reason is in the log"
    );
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn tunables_take_effect() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    // Quota: 1 MiB per client.
    dev.set_config("client_quota_bytes", "1M").unwrap();
    let a = dev
        .create_bo(768 << 10, Domain::Vram, BoFlags::empty())
        .unwrap();
    let e = dev
        .create_bo(512 << 10, Domain::Gtt, BoFlags::empty())
        .unwrap_err();
    assert_eq!(e.errno(), Some(EDQUOT), "{e}");
    a.close().unwrap();
    dev.set_config("client_quota_bytes", "0").unwrap();

    // Retry policy: with retries off, no space is ENOSPC at once; with two
    // retries the client library retries twice (counted by the server)
    // before giving up with ENOSPC.
    let hog = dev
        .create_bo(48 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    dev.set_config("gtt_retry_count", "0").unwrap();
    let before = dev.stats().unwrap().counters["gtt_retries"];
    let e = dev
        .create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap_err();
    assert_eq!(e.errno(), Some(ENOSPC));
    assert_eq!(dev.stats().unwrap().counters["gtt_retries"], before);
    dev.set_config("gtt_retry_count", "2").unwrap();
    dev.set_config("gtt_retry_delay_ms", "1").unwrap();
    let e = dev
        .create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap_err();
    assert_eq!(e.errno(), Some(ENOSPC));
    assert_eq!(dev.stats().unwrap().counters["gtt_retries"], before + 2);
    hog.close().unwrap();
    // Now it fits.
    dev.create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap()
        .close()
        .unwrap();

    // The leak monitor runs by itself at its interval: with both
    // thresholds at 0 every held BO is a suspect, reported with its label
    // and its owner's pid.
    dev.set_config("leak_threshold_bytes", "0").unwrap();
    dev.set_config("leak_age_ms", "0").unwrap();
    dev.set_config("leak_check_interval_ms", "100").unwrap();
    // (The core schedules the next periodic check when one runs, so run
    // one now; every later one is the monitor's.)
    let manual = dev.leak_check().unwrap().checked_ms;
    let mut desc = BoDesc::new(64 << 10, Domain::Vram, BoFlags::empty());
    desc.label = "watched".into();
    let watched = dev.create(&desc).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || dev
            .leaks()
            .map(|r| r.checked_ms > manual && r.suspects.iter().any(|s| s.id == watched.id()))
            .unwrap_or(false)),
        "the periodic check never reported the BO: {:?}",
        dev.leaks()
    );
    let report = dev.leaks().unwrap();
    let s = report
        .suspects
        .iter()
        .find(|s| s.id == watched.id())
        .unwrap();
    assert_eq!(s.label, "watched");
    assert_eq!(s.pid, u64::from(std::process::id()));
    assert_eq!(s.domain, "vram");
    assert!(s.reason.starts_with("old-large"), "{}", s.reason);
    let text = dev.read_text("leaks").unwrap();
    assert!(text.contains("label \"watched\""), "{text}");
    dev.set_config("leak_monitor", "off").unwrap();
    watched.close().unwrap();
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn control_and_config_writes_need_privilege() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let daemon = Daemon::start(DAEMON, &["--admin-uid", "0"]);
    // Let user `nobody` reach the socket.
    let dir = daemon.socket().parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new(CLIENT)
            .args(args)
            .env(pddgpu_ipc::SOCKET_ENV, daemon.socket())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(as_nobody(&["write", "control", "leak-check"]), "err EACCES");
    assert_eq!(
        as_nobody(&["write", "config/leak_monitor", "off"]),
        "err EACCES"
    );
    assert_eq!(
        as_nobody(&["open", "stats"]),
        "ok",
        "reading is open to all"
    );
    assert_eq!(as_nobody(&["open", "config/leak_monitor"]), "ok");
    let dev = daemon.connect();
    assert_eq!(dev.config("leak_monitor").unwrap(), "on", "unchanged");
    dev.write_file("control", b"leak-check").unwrap();
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}
