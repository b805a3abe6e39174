//! A client killed with SIGKILL while holding 100 BOs: the server frees
//! them (the dead connection's handles are closed, the owner ends) and keeps
//! serving everyone else.

use std::time::Duration;

use pddgpu_ipc::{BoFlags, Domain};
use pddgpu_tests::{wait_until, ClientProc, Daemon};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLIENT: &str = env!("CARGO_BIN_EXE_pddgpu-test-client");

#[test]
fn a_killed_client_loses_its_bos_and_others_go_on() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    // A bystander holds a BO through it all.
    let mut keep = dev
        .create_bo(1 << 20, Domain::Vram, BoFlags::empty())
        .unwrap();
    keep.map().unwrap().fill(0x77);
    assert_eq!(keep.path().unwrap(), format!("pddgpu:/bo/{}", keep.id()));
    assert_eq!(keep.stat_size().unwrap(), 1 << 20);
    assert_eq!(dev.list_dir("bo").unwrap(), vec![keep.id().to_string()]);

    let mut victim = ClientProc::spawn(CLIENT, daemon.socket(), &["hold", "100", "65536"]);
    let line = victim.line();
    let ids: Vec<u64> = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("victim said {line}"))
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 100);
    let victim_pid = u64::from(victim.child.id());
    let stats = dev.stats().unwrap();
    assert_eq!(stats.bos.count, 101);
    assert_eq!(stats.bos.vram_bytes, (50 << 16) + (1 << 20));
    assert_eq!(stats.bos.gtt_bytes, 50 << 16);
    let clients = dev.clients().unwrap();
    let v = clients
        .iter()
        .find(|c| c.pid == victim_pid)
        .expect("victim listed");
    assert_eq!(v.bos, 100);

    victim.kill();

    assert!(
        wait_until(Duration::from_secs(10), || dev
            .stats()
            .map(|s| s.bos.count == 1)
            .unwrap_or(false)),
        "the victim's BOs were not freed: {:?}",
        dev.stats()
    );
    let stats = dev.stats().unwrap();
    assert_eq!(stats.gtt.used, 0);
    assert_eq!(stats.bos.vram_bytes, 1 << 20);
    assert!(dev.clients().unwrap().iter().all(|c| c.pid != victim_pid));
    // Its BO ids are dead: not even a guess reaches them.
    assert_eq!(
        dev.read_file(&format!("bo/{}", ids[0]))
            .unwrap_err()
            .errno(),
        Some(syscall::error::ENOENT)
    );
    // Everyone else is still served, and the bystander's BO is intact.
    assert!(keep.map().unwrap().iter().all(|b| b == 0x77));
    let other = dev
        .create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    other.close().unwrap();
    keep.close().unwrap();
    assert!(dev.leak_check().unwrap().clean);
    drop(dev);
    assert_eq!(daemon.stop(), Some(0));
}
