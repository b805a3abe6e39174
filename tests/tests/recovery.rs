//! Recovery through the scheme: inject a fault, see `health` report it,
//! recover with the CLI, see `ok` — with live BOs intact and never
//! overlapped by later allocations.

use pddgpu_ipc::{BoFlags, Domain};
use pddgpu_tests::Daemon;
use syscall::error::EIO;

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLI: &str = env!("CARGO_BIN_EXE_pddgpu-cli-under-test");

fn cli(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let out = pddgpu_tests::run_cli(CLI, daemon.socket(), args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn overlaps(a: &[pddgpu_ipc::wire::SegmentWire], b: &[pddgpu_ipc::wire::SegmentWire]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| {
            x.backing_offset < y.backing_offset + y.len
                && y.backing_offset < x.backing_offset + x.len
        })
    })
}

#[test]
fn corrupted_vram_manager_is_detected_and_recovered() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let mut live = Vec::new();
    for i in 0..6u8 {
        let mut bo = dev
            .create_bo((i as u64 + 1) << 20, Domain::Vram, BoFlags::empty())
            .unwrap();
        bo.map().unwrap().fill(0xA0 + i);
        live.push(bo);
    }
    // Free every other one: the survivors are scattered.
    let survivors: Vec<_> = live
        .into_iter()
        .enumerate()
        .filter_map(|(i, bo)| if i % 2 == 0 { Some(bo) } else { None })
        .collect();
    let mut survivors = survivors;
    assert_eq!(cli(&daemon, &["health"]), (0, "ok\n".to_string()));

    // The device tells the driver to corrupt the VRAM bookkeeping; the next
    // audit finds the mismatch and puts the manager in ERROR.
    dev.write_file("control", b"fault corrupt vram").unwrap();
    // The driver reads the device's status before each allocation (and on
    // its periodic tick): this one makes it act on the fault.
    dev.create_bo(4096, Domain::Vram, BoFlags::empty())
        .unwrap()
        .close()
        .unwrap();
    let report = dev.leak_check().unwrap();
    assert!(!report.clean, "{report:?}");
    let vram_audit = report.audits.iter().find(|a| a.domain == "vram").unwrap();
    assert_eq!(vram_audit.verdict, "mismatch", "{report:?}");
    let (code, health) = cli(&daemon, &["health"]);
    assert_eq!(code, 6, "{health}");
    assert!(health.contains("vram manager is error"), "{health}");
    assert_eq!(dev.stats().unwrap().vram.state, "error");
    let e = dev
        .create_bo(1 << 20, Domain::Vram, BoFlags::empty())
        .unwrap_err();
    assert_eq!(e.errno(), Some(EIO), "{e}");
    // GTT is unaffected.
    dev.create_bo(1 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap()
        .close()
        .unwrap();

    let (code, text) = cli(&daemon, &["recover", "vram"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("health: ok"), "{text}");
    assert_eq!(cli(&daemon, &["health"]), (0, "ok\n".to_string()));
    assert_eq!(dev.stats().unwrap().vram.state, "ready");

    // Live BOs kept their bytes, and new BOs land elsewhere.
    for (i, bo) in survivors.iter_mut().enumerate() {
        let want = 0xA0 + (i as u8) * 2;
        assert!(bo.map().unwrap().iter().all(|b| b == want), "BO {i} intact");
    }
    let mut fresh = Vec::new();
    for _ in 0..4 {
        let mut bo = dev
            .create_bo(2 << 20, Domain::Vram, BoFlags::empty())
            .unwrap();
        bo.map().unwrap().fill(0x11);
        fresh.push(bo);
    }
    for old in &survivors {
        let old_segs = old.segments().unwrap();
        for new in &fresh {
            assert!(!overlaps(&old_segs, &new.segments().unwrap()), "no overlap");
        }
    }
    for (i, bo) in survivors.iter_mut().enumerate() {
        let want = 0xA0 + (i as u8) * 2;
        assert!(
            bo.map().unwrap().iter().all(|b| b == want),
            "BO {i} untouched"
        );
    }
    drop(fresh);
    drop(survivors);
    let report = dev.leak_check().unwrap();
    assert!(report.clean, "the leaked memory was reclaimed: {report:?}");
    assert_eq!(dev.stats().unwrap().vram.used, 0);
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn device_error_is_recovered_with_recover_all() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let mut keep = dev
        .create_bo(4 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    keep.map().unwrap().fill(0x3C);
    dev.write_file("control", b"fault error").unwrap();
    // The driver notices on its next register poll (allocation or tick).
    let e = dev
        .create_bo(4096, Domain::Vram, BoFlags::empty())
        .unwrap_err();
    assert_eq!(e.errno(), Some(EIO), "{e}");
    let health = dev.health().unwrap();
    assert!(health.contains("vram manager is error"), "{health}");
    assert!(health.contains("gtt manager is error"), "{health}");
    // Recovering a healthy-or-not domain that is not in ERROR is refused.
    let (code, text) = cli(&daemon, &["recover", "all"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(dev.health().unwrap(), "ok\n");
    assert!(keep.map().unwrap().iter().all(|b| b == 0x3C));
    let (code, text) = cli(&daemon, &["recover", "vram"]);
    assert_eq!(code, 1, "recovering a READY manager is refused: {text}");
    assert!(text.contains("EBUSY"), "{text}");
    keep.close().unwrap();
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}
