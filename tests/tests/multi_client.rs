//! Eight client processes, each creating, mapping, writing, verifying and
//! freeing 1000 BOs against one pddgpud; afterwards nothing is used and the
//! leak audit is clean.

use std::time::Duration;

use pddgpu_tests::{wait_until, ClientProc, Daemon};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");
const CLIENT: &str = env!("CARGO_BIN_EXE_pddgpu-test-client");

#[test]
fn eight_clients_churn_a_thousand_bos_each() {
    let daemon = Daemon::start(DAEMON, &[]);
    let clients: Vec<ClientProc> = (0..8)
        .map(|i| {
            let seed = (i + 1).to_string();
            ClientProc::spawn(CLIENT, daemon.socket(), &["churn", "1000", &seed])
        })
        .collect();
    for (i, mut c) in clients.into_iter().enumerate() {
        let line = c.line();
        assert_eq!(line, "ok 1000", "client {i} reported: {line}");
        assert!(c.finish(), "client {i} failed");
    }

    let dev = daemon.connect();
    // The clients are gone; their connections' ends are processed by the
    // server asynchronously, so wait for the owners to disappear.
    assert!(
        wait_until(Duration::from_secs(10), || dev
            .clients()
            .map(|c| c.len() == 1)
            .unwrap_or(false)),
        "client owners were not released: {:?}",
        dev.clients()
    );
    let stats = dev.stats().unwrap();
    assert_eq!(stats.vram.used, 0, "{stats:?}");
    assert_eq!(stats.gtt.used, 0, "{stats:?}");
    assert_eq!(stats.bos.count, 0);
    let allocs = stats.counters["vram_allocs"] + stats.counters["gtt_allocs"];
    let frees = stats.counters["vram_frees"] + stats.counters["gtt_frees"];
    assert_eq!(allocs, 8000, "every create reached the driver");
    assert_eq!(frees, 8000, "every BO was freed");
    assert_eq!(
        stats.vram.fragments, 1,
        "VRAM coalesced back into one block"
    );
    let report = dev.leak_check().unwrap();
    assert!(report.clean, "leak audit: {report:?}");
    assert!(report.audits.iter().all(|a| a.verdict == "clean"));
    drop(dev);
    assert_eq!(daemon.stop(), Some(0), "pddgpud exits 0 on SIGTERM");
}
