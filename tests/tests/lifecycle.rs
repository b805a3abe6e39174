//! pddgpud's life: clean exit on SIGTERM while clients hold BOs (drain,
//! SHUTDOWN, exit 0, socket removed), and `shutdown` through `control`.

use std::time::Duration;

use pddgpu_ipc::{BoFlags, Domain};
use pddgpu_tests::{wait_until, ClientProc, Daemon};
use syscall::error::ESHUTDOWN;

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLIENT: &str = env!("CARGO_BIN_EXE_pddgpu-test-client");

#[test]
fn sigterm_drains_and_exits_zero() {
    let daemon = Daemon::start(DAEMON, &[]);
    let socket = daemon.socket().to_path_buf();
    let mut holder = ClientProc::spawn(CLIENT, &socket, &["hold", "10", "65536"]);
    assert!(holder.line().starts_with("ready "));
    let dev = daemon.connect();
    let bo = dev
        .create_bo(1 << 20, Domain::Vram, BoFlags::empty())
        .unwrap();
    let log_before = daemon.log();
    assert!(log_before.contains("serving pddgpu: on"), "{log_before}");
    let code = daemon.stop();
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    assert!(!socket.exists(), "socket removed");
    // The connection is gone; the client library reports it.
    assert!(bo.read_at(0, &mut [0u8; 4]).is_err());
    holder.kill();
}

#[test]
fn shutdown_through_control() {
    let mut daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    dev.write_file("control", b"shutdown").unwrap();
    // New BOs are refused from now on, or the connection is already gone.
    match dev.create_bo(4096, Domain::Vram, BoFlags::empty()) {
        Err(e) => assert!(e.errno().is_none() || e.errno() == Some(ESHUTDOWN), "{e}"),
        Ok(_) => panic!("a BO was created after shutdown"),
    }
    assert!(
        wait_until(Duration::from_secs(10), || !daemon.is_running()),
        "pddgpud did not exit"
    );
    let log = daemon.log();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}
