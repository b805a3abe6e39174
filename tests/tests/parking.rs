//! A create that finds no space is parked in the server (only that client
//! waits) and retried when memory is freed, not only when its delay ends;
//! a parked request ends promptly when the server shuts down.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use pddgpu_ipc::{BoFlags, Device, Domain};
use pddgpu_tests::{wait_until, Daemon};

const DAEMON: &str = env!("CARGO_BIN_EXE_pddgpud-under-test");

/// Asks for 32 MiB of GTT on a connection of its own, from a thread; the
/// answer (the BO's size, or the error) arrives on the returned channel.
fn create_in_background(daemon: &Daemon) -> (mpsc::Receiver<Result<u64, String>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let socket = daemon.socket().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let d = Device::connect(&socket).unwrap();
        let r = d
            .create_bo(32 << 20, Domain::Gtt, BoFlags::empty())
            .map(|bo| bo.size());
        tx.send(r.map_err(|e| e.to_string())).unwrap();
    });
    (rx, waiter)
}

#[test]
fn parked_create_wakes_on_free_and_ends_on_shutdown() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    let hog = dev
        .create_bo(48 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    // One retry, after a full minute unless woken by a free.
    dev.set_config("gtt_retry_count", "1").unwrap();
    dev.set_config("gtt_retry_delay_ms", "60000").unwrap();
    let failures = |d: &Device| d.stats().unwrap().counters["gtt_failures"];
    let before = failures(&dev);

    let (rx, waiter) = create_in_background(&daemon);
    // The request failed once and is parked; everyone else is served
    // meanwhile (these very stats reads).
    assert!(wait_until(Duration::from_secs(10), || failures(&dev) > before));
    assert!(rx.try_recv().is_err(), "still parked");
    let retries = dev.stats().unwrap().counters["gtt_retries"];
    hog.close().unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the free woke the parked request");
    assert_eq!(got, Ok(32 << 20));
    assert_eq!(dev.stats().unwrap().counters["gtt_retries"], retries + 1);
    waiter.join().unwrap();

    // Park another one, then stop the server: the client gets an answer
    // (or loses its connection) and pddgpud still exits 0 promptly.
    let blocker = dev
        .create_bo(48 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    let before = failures(&dev);
    let (rx, waiter) = create_in_background(&daemon);
    assert!(wait_until(Duration::from_secs(10), || failures(&dev) > before));
    let code = daemon.stop();
    assert_eq!(code, Some(0), "pddgpud exits 0 with a request parked");
    let refused = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the parked client got an answer")
        .is_err();
    assert!(
        refused,
        "the parked create failed (ESHUTDOWN or connection closed)"
    );
    waiter.join().unwrap();
    drop(blocker);
    drop(dev);
}

/// Frees before the park must not count as wake-ups for it: a create
/// parked after other BOs came and went waits for the next free (or its
/// delay), instead of spending its retries at once.
#[test]
fn a_create_parked_after_earlier_frees_still_waits_for_the_next_one() {
    let daemon = Daemon::start(DAEMON, &[]);
    let dev = daemon.connect();
    for _ in 0..3 {
        let bo = dev
            .create_bo(1 << 20, Domain::Gtt, BoFlags::empty())
            .unwrap();
        bo.close().unwrap();
    }
    let hog = dev
        .create_bo(48 << 20, Domain::Gtt, BoFlags::empty())
        .unwrap();
    dev.set_config("gtt_retry_count", "3").unwrap();
    dev.set_config("gtt_retry_delay_ms", "60000").unwrap();
    let failures = |d: &Device| d.stats().unwrap().counters["gtt_failures"];
    let before = failures(&dev);

    let (rx, waiter) = create_in_background(&daemon);
    assert!(wait_until(Duration::from_secs(10), || failures(&dev) > before));
    // Nothing has been freed since it parked: it must still be waiting
    // (its delay is a minute), not have failed with its retries spent.
    let early = rx.recv_timeout(Duration::from_millis(750));
    assert!(early.is_err(), "the parked create ended early: {early:?}");
    assert_eq!(dev.stats().unwrap().counters["gtt_retries"], 0);
    hog.close().unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the free woke the parked request");
    assert_eq!(got, Ok(32 << 20));
    waiter.join().unwrap();
}
