//! Hostile clients against the server's own resources: mapped BOs and the
//! descriptors and kernel mappings behind them, the accept loop, connection
//! threads, read snapshots and the log. Each attack runs against a real
//! `pddgpud` process over the real host transport and ends by checking
//! that the server survived intact (running, `health` ok, a clean leak
//! audit, nothing in use).
//!
//! Attacks that need a second user start the helper client as uid/gid
//! 65534 when the suite runs as root (as CI does); otherwise they check
//! what one user can observe.

// Resource limits are set in the daemon's child process before exec.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::time::Duration;

use pddgpu_ipc::host::HostConnection;
use pddgpu_ipc::wire::{BoCall, SegmentWire, ShareToken, DUP_BACKING};
use pddgpu_ipc::{BoFlags, Domain};
mod hostile_common;

use hostile_common::*;
use pddgpu_tests::{wait_until, Daemon};
use rustix::process::{Resource, Rlimit};
use syscall::error::{EAGAIN, EDQUOT, ENFILE, ENOBUFS};
use syscall::flag::{O_RDONLY, O_RDWR};
use syscall::schemev2::Opcode;

fn read_at(c: &mut HostConnection, handle: u64, offset: u64, len: usize) -> Result<u64, i32> {
    request_out(c, Opcode::Read, [handle, 0, 0, offset, 0, 0], &[], len)
}

/// Asks for a BO's memory descriptor (and closes it at once).
fn map(c: &mut HostConnection, handle: u64) -> Result<(), i32> {
    let r = c
        .request(Opcode::Dup, [handle, 0, 0, 0, 0, 0], DUP_BACKING, 0)
        .map_err(|_| -1)?;
    r.result()?;
    r.fd.map(drop).ok_or(-2)
}

/// Number of segments of a BO.
fn segment_count(c: &mut HostConnection, handle: u64) -> u64 {
    let room = vec![0u8; SegmentWire::SIZE * 4096];
    request(
        c,
        Opcode::Call,
        [handle, 0, 0, BoCall::Segments as u64, 0, 0],
        &room,
    )
    .expect("segments call")
}

fn stat_value(c: &mut HostConnection, key: &str) -> u64 {
    let h = open(c, "stats", O_RDONLY).expect("open stats");
    let r = c
        .request(Opcode::Read, [h, 0, 0, 0, 0, 0], &[], 1 << 16)
        .expect("read stats");
    close(c, h).expect("close stats");
    let text = String::from_utf8(r.payload).expect("stats text");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in stats: {text}"))
}

/// Waits until a new connection is served again (the server released
/// what refused or dropped connections held).
fn serves_again(daemon: &Daemon) -> bool {
    wait_until(Duration::from_secs(10), || {
        HostConnection::connect(daemon.socket())
            .ok()
            .and_then(|mut c| open(&mut c, "health", O_RDONLY).ok())
            .is_some()
    })
}

/// Runs the helper as another user (when root) and returns its first line
/// of output.
fn as_other_user(daemon: &Daemon, args: &[&str]) -> Option<String> {
    if !is_root() {
        eprintln!("not root: the second-user half of this attack is skipped");
        return None;
    }
    let mut child = spawn_helper(daemon, args, Some(OTHER_UID));
    let line = first_line(&mut child);
    drop(child.stdin.take());
    let _ = child.wait();
    Some(line)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft "Max open files" of a process.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files")
}

/// Starts the daemon with `resource` limited to `soft`/`hard`.
fn daemon_with_limit(resource: Resource, soft: u64, hard: u64, extra: &[&str]) -> Daemon {
    Daemon::start_with(&daemon_bin(), extra, |cmd, _| {
        limit_in_child(cmd, resource, soft, hard)
    })
}

/// Makes `cmd`'s child set `resource` to `soft`/`hard` before exec.
fn limit_in_child(cmd: &mut std::process::Command, resource: Resource, soft: u64, hard: u64) {
    // SAFETY: `setrlimit` is async-signal-safe; the closure allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            let limit = Rlimit {
                current: Some(soft),
                maximum: Some(hard),
            };
            rustix::process::setrlimit(resource, limit).map_err(std::io::Error::from)
        });
    }
}

/// Runs `step` up to `tries` times until it is refused: what it returned
/// until then, and the refusal's errno (`None` if it never was).
fn until_refused<T>(
    tries: usize,
    mut step: impl FnMut() -> Result<T, i32>,
) -> (Vec<T>, Option<i32>) {
    let mut done = Vec::new();
    for _ in 0..tries {
        match step() {
            Ok(t) => done.push(t),
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Opens up to `tries` connections that each open `stats`, until the
/// server refuses one: the connections it served, and the refusal.
fn connect_until_refused(daemon: &Daemon, tries: usize) -> (Vec<HostConnection>, Option<i32>) {
    until_refused(tries, || {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        open(&mut c, "stats", O_RDONLY).map(|_| c)
    })
}

/// Creates and maps 4 KiB GTT BOs, up to `tries`, until a map is refused:
/// how many were mapped, and the refusal.
fn map_small_bos_until_refused(c: &mut HostConnection, tries: usize) -> (usize, Option<i32>) {
    let (mapped, refusal) = until_refused(tries, || {
        let h = open(c, "bo/new?size=4096&domain=gtt", O_RDWR).expect("create");
        map(c, h)
    });
    (mapped.len(), refusal)
}

// ---- mappings ------------------------------------------------------------

/// One user mapping BOs of many segments gets its own share of the
/// server's mapping budget (`EDQUOT` beyond), never all of it: another
/// user still maps.
#[test]
fn one_user_cannot_take_every_mapping_slot() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--vram-size", "256M"]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let mut held = Vec::new();
    let mut mapped_segments = 0;
    let mut refusal = None;
    // Each round leaves a BO of 1024 one-page segments: 16 of them reach
    // the whole server's budget (16384 segments).
    for _round in 0..17 {
        let free = stat_value(&mut c, "vram_free");
        let spare = 8u64 << 20;
        let filler = open(
            &mut c,
            &format!("bo/new?size={}&domain=vram", free - spare),
            O_RDWR,
        )
        .expect("filler");
        let smalls: Vec<u64> = (0..spare / 4096)
            .map(|_| open(&mut c, "bo/new?size=4096&domain=vram", O_RDWR).expect("small BO"))
            .collect();
        for &h in smalls.iter().skip(1).step_by(2) {
            close(&mut c, h).unwrap();
        }
        let half = format!("bo/new?size={}&domain=vram", spare / 2);
        let scattered = open(&mut c, &half, O_RDWR).expect("scattered BO");
        for &h in smalls.iter().step_by(2) {
            close(&mut c, h).unwrap();
        }
        let other_half = open(&mut c, &half, O_RDWR).expect("second scattered BO");
        close(&mut c, filler).unwrap();
        held.extend([scattered, other_half]);
        let segments = segment_count(&mut c, scattered);
        match map(&mut c, scattered) {
            Ok(()) => mapped_segments += segments,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    if let Some(line) = as_other_user(&daemon, &["create-map", "4096", "vram"]) {
        assert_eq!(line, "ok", "another user could not map a BO");
    }
    assert_eq!(
        refusal,
        Some(EDQUOT),
        "one user mapped {mapped_segments} segments before being refused"
    );
    assert!(
        (1..=4096).contains(&mapped_segments),
        "one user's share is 4096 segments, it mapped {mapped_segments}"
    );
    // Freeing gives the share back.
    for h in held {
        close(&mut c, h).unwrap();
    }
    let again = open(&mut c, "bo/new?size=64K&domain=vram", O_RDWR).unwrap();
    assert_eq!(
        map(&mut c, again),
        Ok(()),
        "the freed share is usable again"
    );
    drop(c);
    assert_server_intact(&mut daemon);
}

/// A user that maps BOs another user exported is charged for them only
/// while it holds them: once it closes them (one by one, or by
/// disconnecting), its mapping share is whole again, however long the
/// exporter keeps the BOs; and the bytes it wrote through its mappings
/// stay in the exporter's BOs. Another user's choices never hold a user's
/// share (N15: the charge stayed with the first mapper until the exporter
/// freed the BOs, and the importer's own BO got `EDQUOT`).
#[test]
fn mapping_anothers_exports_charges_only_while_held() {
    if !is_root() {
        eprintln!("not root: this attack needs a second user");
        return;
    }
    const SHARE: usize = 16;
    let mut daemon = Daemon::start(
        &daemon_bin(),
        &["--max-mapped-bos-per-uid", &SHARE.to_string()],
    );
    // The exporter: another user, which keeps its BOs until told.
    let mut exporter = spawn_helper(
        &daemon,
        &["export", &SHARE.to_string(), "4096", "gtt"],
        Some(OTHER_UID),
    );
    let line = first_line(&mut exporter);
    let tokens: Vec<ShareToken> = line
        .strip_prefix("tokens ")
        .unwrap_or_else(|| panic!("exporter said {line:?}"))
        .split(' ')
        .map(|t| t.parse().expect("token"))
        .collect();
    assert_eq!(tokens.len(), SHARE);

    // Import, map, write, close the whole share: the share is whole again.
    let dev = daemon.connect();
    let mut held = Vec::new();
    for (i, &token) in tokens.iter().enumerate() {
        let mut bo = dev.import(token).expect("import");
        let bytes = bo.map().expect("map an imported BO");
        assert_eq!(bytes.load(0), b'e', "the exporter's bytes");
        bytes.store(100, b'!');
        assert_eq!(bytes.load(100), b'!', "BO {i}");
        held.push(bo);
    }
    // While it holds them they are its share: no more.
    let mut own = dev
        .create_bo(4096, Domain::Gtt, BoFlags::empty())
        .expect("own BO");
    let refused = own.map().err().and_then(|e| e.errno());
    assert_eq!(refused, Some(EDQUOT), "past its share while it holds them");
    drop(own);
    for bo in held {
        bo.close().expect("close");
    }
    let share_back = |daemon: &Daemon| {
        let dev = daemon.connect();
        wait_until(Duration::from_secs(10), || {
            let mut own = dev
                .create_bo(4096, Domain::Gtt, BoFlags::empty())
                .expect("own BO");
            own.map().is_ok()
        })
    };
    assert!(
        share_back(&daemon),
        "closed: the importer's mapping share is still taken by BOs it no longer holds"
    );
    drop(dev);

    // The same, its handles closed by a disconnect.
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    for &token in &tokens {
        let h = open(&mut c, &token.to_path(), O_RDWR).expect("import");
        assert_eq!(map(&mut c, h), Ok(()), "map an imported BO");
    }
    let own = open(&mut c, "bo/new?size=4096&domain=gtt", O_RDWR).unwrap();
    assert_eq!(map(&mut c, own), Err(EDQUOT), "past its share");
    drop(c);
    assert!(
        share_back(&daemon),
        "disconnected: the importer's mapping share is still taken by BOs it no longer holds"
    );

    // The exporter's BOs kept the bytes written through the mappings.
    let dev = daemon.connect();
    for &token in &tokens {
        let bo = dev.import(token).expect("import again");
        let mut head = [0u8; 101];
        bo.read_at(0, &mut head).expect("read");
        assert!(head.starts_with(b"exported "), "{:?}", &head[..16]);
        assert_eq!(head[100], b'!', "the write through a mapping");
    }
    drop(dev);
    drop(exporter.stdin.take());
    let _ = exporter.wait();
    assert_server_intact(&mut daemon);
}

/// The server raises its soft descriptor limit, and one user cannot map
/// enough BOs (each one descriptor in the server) to use up the server's
/// descriptors: others still connect and map.
#[test]
fn one_user_cannot_use_up_the_servers_descriptors() {
    let hard = rustix::process::getrlimit(Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20)
        .min(1 << 20);
    if hard < 4096 {
        eprintln!("the hard descriptor limit ({hard}) is too low for this attack");
        return;
    }
    let mut daemon = daemon_with_limit(Resource::Nofile, 1024, hard, &[]);
    let pid = daemon.pid();
    assert_eq!(
        soft_nofile(pid),
        hard,
        "the server did not raise its soft descriptor limit"
    );
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let (mapped, refusal) = map_small_bos_until_refused(&mut c, 2000);
    assert_eq!(refusal, Some(EDQUOT), "refused after {mapped} mapped BOs");
    assert!(
        mapped <= 1024,
        "one user kept {mapped} descriptors open in the server"
    );
    assert!(open_descriptors(pid) < 1024 + 64);
    if let Some(line) = as_other_user(&daemon, &["create-map", "4096", "gtt"]) {
        assert_eq!(line, "ok", "another user could not map a BO");
    }
    let log = daemon.log();
    assert!(log.contains("descriptor limit raised from 1024"), "{log}");
    drop(c);
    assert_server_intact(&mut daemon);
}

/// With a hard descriptor limit it cannot raise, the server gives one
/// user only a small part of its descriptors for mapped BOs.
#[test]
fn a_low_descriptor_limit_shrinks_each_users_share() {
    let mut daemon = daemon_with_limit(Resource::Nofile, 1024, 1024, &[]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let (mapped, refusal) = map_small_bos_until_refused(&mut c, 1100);
    assert_eq!(refusal, Some(EDQUOT), "refused after {mapped} mapped BOs");
    assert!(
        mapped <= 256,
        "one user mapped {mapped} of 1024 descriptors"
    );
    if let Some(line) = as_other_user(&daemon, &["create-map", "4096", "gtt"]) {
        assert_eq!(line, "ok", "another user could not map a BO");
    }
    assert_eq!(daemon.connect().health().unwrap().trim(), "ok");
    drop(c);
    assert_server_intact(&mut daemon);
}

// ---- the accept loop -----------------------------------------------------

/// Out of descriptors, the server answers a waiting client with a refusal
/// frame (`ENFILE`) instead of leaving it hanging, keeps serving its
/// connections, does not flood the log, and recovers when descriptors come
/// back.
#[test]
fn out_of_descriptors_the_server_refuses_and_backs_off() {
    // Fewer descriptors than the 16 connections the server serves at
    // least need (two each).
    let mut daemon = daemon_with_limit(Resource::Nofile, 24, 24, &[]);
    let (mut held, refusal) = connect_until_refused(&daemon, 60);
    assert_eq!(
        refusal,
        Some(ENFILE),
        "a client the server had no descriptor for got no refusal ({} connections held)",
        held.len()
    );
    assert!(held.len() >= 5, "only {} connections", held.len());
    // The connections it has keep working meanwhile.
    for c in held.iter_mut().take(3) {
        let h = open(c, "health", O_RDONLY).expect("an existing connection still works");
        close(c, h).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("accept failed") || l.contains("refusing"))
        .count();
    assert!(lines <= 20, "{lines} log lines about refusals");
    drop(held);
    assert!(serves_again(&daemon), "the server did not recover");
    assert_server_intact(&mut daemon);
}

/// Hundreds of refused connections cost a few log lines a second, with a
/// count of the lines held back.
#[test]
fn refused_connections_are_logged_at_a_bounded_rate() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-connections-per-uid", "4"]);
    // A closed connection counts against its user until the server's
    // thread for it has seen the close; on a loaded machine the start-up
    // probe's connections may still count for a moment, so the four
    // connections within the limit are retried until they fit.
    let held: Vec<HostConnection> = (0..4)
        .map(|_| {
            let mut held = None;
            wait_until(Duration::from_secs(10), || {
                let mut c = HostConnection::connect(daemon.socket()).unwrap();
                let fits = open(&mut c, "stats", O_RDONLY).is_ok();
                held = fits.then_some(c);
                fits
            });
            held.expect("within the limit")
        })
        .collect();
    let refuse_one = || {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        assert_eq!(open(&mut c, "stats", O_RDONLY), Err(syscall::error::EMFILE));
    };
    for _ in 0..500 {
        refuse_one();
    }
    std::thread::sleep(Duration::from_millis(1100));
    refuse_one();
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("refusing")).collect();
    assert!(
        lines.len() <= 20,
        "{} log lines for 501 refusals",
        lines.len()
    );
    assert!(
        log.contains("lines suppressed"),
        "the held-back lines are not counted: {lines:?}"
    );
    drop(held);
    assert!(
        serves_again(&daemon),
        "the user's connections were not released"
    );
    assert_server_intact(&mut daemon);
}

/// A connection whose thread cannot start gets a refusal frame (`EAGAIN`)
/// instead of being dropped without a word. The daemon runs as a user of
/// its own with a small process limit, so thread creation fails.
#[test]
fn a_connection_whose_thread_cannot_start_is_refused_with_a_reason() {
    if !is_root() {
        eprintln!("not root: cannot run the daemon as a user of its own");
        return;
    }
    // A user no other process runs as (RLIMIT_NPROC counts them all).
    const DAEMON_UID: u32 = 64_017;
    let mut daemon = Daemon::start_with(&daemon_bin(), &[], |cmd, dir| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        cmd.uid(DAEMON_UID).gid(DAEMON_UID);
        limit_in_child(cmd, Resource::Nproc, 8, 8);
    });
    // The daemon's own threads before any client thread runs.
    let idle_threads = wait_for_threads(&daemon, usize::MAX);
    let (held, refusal) = connect_until_refused(&daemon, 32);
    assert_eq!(
        refusal,
        Some(EAGAIN),
        "no refusal frame when the thread could not start ({} connections held)",
        held.len()
    );
    drop(held);
    assert!(
        serves_again(&daemon),
        "the connections' threads did not end"
    );
    // A closed connection's thread ends a moment after the close; until
    // then it still counts against the process limit, and the next
    // connection would be refused again (rightly). Wait for them all.
    let threads = wait_for_threads(&daemon, idle_threads);
    assert!(
        threads <= idle_threads,
        "{threads} threads left in the daemon, {idle_threads} before the clients came"
    );
    assert_server_intact(&mut daemon);
}

/// The number of threads of `daemon`'s process once it is at most `most`
/// (waiting up to 10 s for that), or what it is after the wait.
fn wait_for_threads(daemon: &Daemon, most: usize) -> usize {
    let threads = || {
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|n| n.trim().parse::<usize>().ok())
            })
            .unwrap_or(usize::MAX)
    };
    wait_until(Duration::from_secs(10), || threads() <= most);
    threads()
}

// ---- bytes per user ------------------------------------------------------

/// A third user (besides root and `OTHER_UID`) for the per-user quota
/// attacks.
const THIRD_UID: u32 = 65533;

const MIB: u64 = 1 << 20;

/// A helper client killed (as a crash would) and reaped when dropped,
/// also when the test fails half-way.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a helper client as `uid`, killed when the result is dropped.
fn helper_as(daemon: &Daemon, args: &[&str], uid: u32) -> Helper {
    Helper(spawn_helper(daemon, args, Some(uid)))
}

fn kill(helper: Helper) {
    drop(helper);
}

/// `held <bytes> refused <ERRNO>` from `fill-connections`.
fn held_and_refusal(line: &str) -> (u64, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["held", bytes, "refused", errno] => (bytes.parse().expect("bytes"), errno.to_string()),
        _ => panic!("unexpected answer from fill-connections: {line:?}"),
    }
}

/// One user opening many connections (each its own owner with its own
/// per-client quota) still gets one byte quota: `uid_quota_percent`
/// (75 %) of the domain for all its connections together, `EDQUOT`
/// beyond. Another user can still allocate the rest, and once the
/// attacker is killed everything it held is freed.
#[test]
fn one_user_with_many_connections_gets_one_byte_quota() {
    if !is_root() {
        eprintln!("not root: this attack needs a second user; skipped");
        return;
    }
    let mut daemon = Daemon::start(&daemon_bin(), &["--vram-size", "64M", "--gtt-size", "64M"]);
    let quota = 48 * MIB;
    let mut attacker = helper_as(
        &daemon,
        &["fill-connections", "16", &MIB.to_string(), "vram"],
        OTHER_UID,
    );
    let (held, refusal) = held_and_refusal(&first_line(&mut attacker.0));
    assert_eq!(refusal, "EDQUOT", "the user's last create");
    assert_eq!(
        held, quota,
        "16 connections of one user together hold its quota, no more"
    );
    let dev = daemon.connect();
    assert_eq!(dev.stats().expect("stats").vram.used, held);
    // Another user gets the rest of the domain.
    let mut other = helper_as(
        &daemon,
        &["create", &(16 * MIB).to_string(), "vram"],
        THIRD_UID,
    );
    let answer = first_line(&mut other.0);
    assert!(answer.starts_with("ok "), "the other user: {answer}");
    kill(other);
    kill(attacker);
    assert_server_intact(&mut daemon);
}

/// The quota is a runtime tunable (`config/uid_quota_percent`), root is
/// exempt from it, and an import by a second connection of the same user
/// is charged again (every holder is charged, so two connections holding
/// one BO count it twice).
#[test]
fn the_user_quota_is_tunable_root_is_exempt_and_imports_count_per_holder() {
    if !is_root() {
        eprintln!("not root: this attack needs a second user; skipped");
        return;
    }
    let mut daemon = Daemon::start(&daemon_bin(), &["--vram-size", "64M", "--gtt-size", "64M"]);
    // 32 MiB fits the user's 48 MiB once, not twice.
    let mut sharer = helper_as(
        &daemon,
        &["share-self", &(32 * MIB).to_string(), "gtt"],
        OTHER_UID,
    );
    assert_eq!(first_line(&mut sharer.0), "import EDQUOT");
    let mut small = helper_as(
        &daemon,
        &["share-self", &(16 * MIB).to_string(), "gtt"],
        THIRD_UID,
    );
    assert_eq!(first_line(&mut small.0), "import ok", "16 MiB twice fits");
    kill(sharer);
    kill(small);
    let dev = daemon.connect();
    dev.set_config("uid_quota_percent", "25")
        .expect("root sets the tunable");
    let mut attacker = helper_as(
        &daemon,
        &["fill-connections", "4", &MIB.to_string(), "gtt"],
        OTHER_UID,
    );
    let (held, refusal) = held_and_refusal(&first_line(&mut attacker.0));
    assert_eq!((held, refusal.as_str()), (16 * MIB, "EDQUOT"));
    let root_bo = dev
        .create_bo(
            40 * MIB,
            pddgpu_ipc::Domain::Gtt,
            pddgpu_ipc::BoFlags::empty(),
        )
        .expect("root is exempt from the per-user quota");
    drop(root_bo);
    kill(attacker);
    assert_server_intact(&mut daemon);
}

// ---- the log -------------------------------------------------------------

/// Log lines about clients (the shared limiter writes them all) per
/// second of the daemon's timestamps (`[2026-12-02T13:07:02.891Z …`).
fn client_lines_per_second(log: &str) -> std::collections::BTreeMap<String, usize> {
    let mut per_second = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("pddgpu_ipc::logline]")) {
        let second = line.get(1..20).unwrap_or_default().to_string();
        *per_second.entry(second).or_default() += 1;
    }
    per_second
}

/// A flood of bad requests from several connections at once (bad paths,
/// bad queries, creates over quota, forged handles) costs at most
/// `CLIENT_LINES_PER_SECOND` log lines a second server-wide (so at most
/// twice that in one second of the clock, which may straddle two of the
/// limiter's windows), and the lines held back are counted.
#[test]
fn a_flood_of_bad_requests_costs_a_bounded_number_of_log_lines() {
    use pddgpu_ipc::logline::CLIENT_LINES_PER_SECOND;
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let dev = daemon.connect();
    dev.set_config("client_quota_bytes", "4096").unwrap();
    let flood_for = Duration::from_millis(1500);
    let start = std::time::Instant::now();
    let refused: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = HostConnection::connect(daemon.socket()).unwrap();
                    let mut refused = 0u64;
                    while start.elapsed() < flood_for {
                        for path in [
                            "no/such/file",
                            "bo/new?size=banana&domain=gtt",
                            "bo/new?size=8192&domain=gtt",
                            "bo/123456?token=00",
                        ] {
                            if open(&mut c, path, O_RDWR).is_err() {
                                refused += 1;
                            }
                        }
                        if close(&mut c, 987_654).is_err() {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(refused > 1000, "only {refused} refusals");
    // Once a second has passed, the next request writes the count of the
    // lines held back.
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let _ = open(&mut c, "no/such/file", O_RDONLY);
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log();
    let per_second = client_lines_per_second(&log);
    let bound = 2 * CLIENT_LINES_PER_SECOND as usize;
    for (second, lines) in &per_second {
        assert!(
            *lines <= bound,
            "{lines} log lines about clients in second {second} ({refused} refusals)"
        );
    }
    let total: usize = per_second.values().sum();
    assert!(
        total <= CLIENT_LINES_PER_SECOND as usize * 6,
        "{total} log lines for {refused} refusals in about 3 s"
    );
    assert!(
        log.contains("lines suppressed"),
        "the lines held back are not counted: {log}"
    );
    dev.set_config("client_quota_bytes", "0").unwrap();
    drop(c);
    drop(dev);
    assert_server_intact(&mut daemon);
}

// ---- read snapshots ------------------------------------------------------

/// Every handle on a generated file keeps the text it is being read from;
/// one user holding thousands of them cannot make the server hold more
/// than its snapshot budget (`ENOBUFS` beyond), and another user still
/// reads the file.
#[test]
fn read_snapshots_are_bounded_per_user() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let pid = daemon.pid();
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let label = "L".repeat(48);
    let bos: Vec<u64> = (0..1024)
        .map(|_| {
            open(
                &mut c,
                &format!("bo/new?size=4096&domain=gtt&label={label}"),
                O_RDWR,
            )
            .expect("BO")
        })
        .collect();
    let probe = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
    let size = read_at(&mut c, probe, 0, 16 << 20).unwrap();
    close(&mut c, probe).unwrap();
    assert!(size > 100 << 10, "gtt.map.json is only {size} bytes");
    let before = rss_kib(pid);
    let mut handles = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let h = open(&mut c, "gtt.map.json", O_RDONLY).expect("open");
        match read_at(&mut c, h, 0, 1) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, ENOBUFS);
                refused += 1;
            }
        }
        handles.push(h);
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 64 << 10,
        "1000 one-byte reads of a {size}-byte file grew the server by {grown} KiB"
    );
    assert!(refused > 0, "no read was refused");
    if let Some(line) = as_other_user(&daemon, &["cat", "gtt.map.json"]) {
        assert!(
            line.starts_with("ok "),
            "another user could not read: {line}"
        );
    }
    // Closing the handles gives the budget back.
    for h in handles {
        close(&mut c, h).unwrap();
    }
    let h = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
    let h2 = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
    assert!(read_at(&mut c, h, 0, 1).is_ok());
    assert!(read_at(&mut c, h2, 0, 1).is_ok());
    for h in bos.into_iter().chain([h, h2]) {
        close(&mut c, h).unwrap();
    }
    drop(c);
    assert_server_intact(&mut daemon);
}

/// Renders of generated file `file` so far, from the daemon's debug log.
fn renders_of(daemon: &Daemon, file: &str) -> usize {
    let needle = format!("rendered {file}: ");
    daemon.log().lines().filter(|l| l.contains(&needle)).count()
}

/// `st_size` of handle `h`, by `fstat`.
fn fstat_size(c: &mut HostConnection, h: u64) -> u64 {
    let r = c
        .request(Opcode::Fstat, [h, 0, 0, 0, 0, 0], &[], 0)
        .expect("fstat");
    r.result().expect("fstat result");
    let mut stat = syscall::data::Stat::default();
    stat.copy_from_slice(&r.payload);
    stat.st_size
}

/// One user asking again and again for the size or the start of a
/// generated file whose text grows with the number of BOs (here 1500
/// labelled BOs) cannot make the server render it once per request under
/// the scheme lock, which starved every other user: `fstat` and `fsize`
/// answer from the handle's snapshot (taken at its first `fstat`, `fsize`
/// or read, again at each read from offset 0), and one rendering per
/// server state serves every handle. Renders are counted from the
/// daemon's debug log; a generous latency bound for another connection is
/// only a sanity check.
#[test]
fn generated_files_render_once_per_state_not_per_request() {
    // A long tick: each tick may change what files show, so it starts a
    // new state (and allows one more render).
    let mut daemon = Daemon::start(
        &daemon_bin(),
        &["--log-level", "debug", "--tick-ms", "2000"],
    );
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let label = "L".repeat(48);
    let create = |c: &mut HostConnection| {
        open(
            c,
            &format!("bo/new?size=4096&domain=gtt&label={label}"),
            O_RDWR,
        )
        .expect("BO")
    };
    let mut bos: Vec<u64> = (0..1500).map(|_| create(&mut c)).collect();

    // A handle's size is that of its snapshot, whatever happens meanwhile.
    let h = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
    let size = fstat_size(&mut c, h);
    assert!(size > 100 << 10, "gtt.map.json is only {size} bytes");
    let fsize = request(&mut c, Opcode::Fsize, [h, 0, 0, 0, 0, 0], &[]).unwrap();
    assert_eq!(fsize, size, "fsize and fstat disagree");
    bos.extend((0..50).map(|_| create(&mut c)));
    assert_eq!(
        fstat_size(&mut c, h),
        size,
        "fstat re-rendered the file instead of answering from the handle's snapshot"
    );
    let read = read_at(&mut c, h, 0, 16 << 20).unwrap();
    assert!(
        read > size,
        "a read from 0 takes a new snapshot: {read} bytes"
    );
    assert_eq!(
        fstat_size(&mut c, h),
        read,
        "fstat follows the new snapshot"
    );

    // Thousands of requests at one state: one rendering at most.
    let before = renders_of(&daemon, "gtt.map.json");
    let mut other = HostConnection::connect(daemon.socket()).unwrap();
    let others: Vec<u64> = (0..20)
        .map(|_| open(&mut other, "gtt.map.json", O_RDONLY).unwrap())
        .collect();
    let mut requests = 0;
    for round in 0..100 {
        for &o in &others {
            if round % 2 == 0 {
                assert_eq!(fstat_size(&mut other, o), read);
            } else {
                assert_eq!(read_at(&mut other, o, 0, 1), Ok(1));
            }
            requests += 1;
        }
        fstat_size(&mut c, h);
        read_at(&mut c, h, 0, 1).unwrap();
        requests += 2;
    }
    let renders = renders_of(&daemon, "gtt.map.json") - before;
    assert!(
        renders <= 5,
        "{requests} fstats and reads from 0 at one server state rendered gtt.map.json {renders} times"
    );

    // Hogs pipelining nothing but fstat and reads from 0 on four
    // connections while another connection changes the state: renders
    // follow the state changes, not the hogs' requests, and the other
    // connection is still served.
    let before = renders_of(&daemon, "gtt.map.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let (socket, stop) = (daemon.socket().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut c = HostConnection::connect(&socket).unwrap();
                let h = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fstat_size(&mut c, h);
                    let _ = read_at(&mut c, h, 0, 1);
                    n += 2;
                }
                n
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut changes = 0;
    let started = std::time::Instant::now();
    while changes < 100 || started.elapsed() < Duration::from_millis(1500) {
        let t = std::time::Instant::now();
        let bo = create(&mut c);
        close(&mut c, bo).unwrap();
        slowest = slowest.max(t.elapsed());
        changes += 2;
        // Fewer changes than the hogs make requests.
        std::thread::sleep(Duration::from_millis(10));
    }
    // Ticks (every 2 s) start new states too.
    let ticks = started.elapsed().as_secs() as usize / 2 + 1;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hog_requests: u64 = hogs.into_iter().map(|t| t.join().unwrap()).sum();
    let renders = renders_of(&daemon, "gtt.map.json") - before;
    eprintln!(
        "{hog_requests} hog requests, {changes} state changes: {renders} renders, slowest create+close {slowest:?}"
    );
    assert!(
        renders <= changes + ticks + 4,
        "{hog_requests} hog requests over {changes} state changes rendered gtt.map.json {renders} times"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "create+close took {slowest:?} while others read gtt.map.json"
    );

    for o in others {
        close(&mut other, o).unwrap();
    }
    for h in bos.into_iter().chain([h]) {
        close(&mut c, h).unwrap();
    }
    drop((c, other));
    assert_server_intact(&mut daemon);
}

/// Another user's create+close loop while four hog connections each
/// change the server state (a create+close of their own) and then read
/// `file` from offset 0, as fast as they can, so that every hog read takes
/// a snapshot of a new state: how many create+close pairs the victim got
/// through in `window`, and how many reads the hogs made.
fn victim_ops_beside_hogs(daemon: &Daemon, file: &str, window: Duration) -> (u64, u64) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let spawn = |reads: Option<String>| {
        let (socket, stop) = (daemon.socket().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut c = HostConnection::connect(&socket).unwrap();
            let file = reads.map(|f| open(&mut c, &f, O_RDONLY).unwrap());
            let mut n = 0;
            while !stop.load(Relaxed) {
                let bo = open(&mut c, "bo/new?size=4096&domain=vram", O_RDWR).expect("BO");
                close(&mut c, bo).unwrap();
                if let Some(h) = file {
                    // A read refused for the user's snapshot budget
                    // counts too.
                    let _ = read_at(&mut c, h, 0, 1);
                }
                n += 1;
            }
            n
        })
    };
    let hogs: Vec<_> = (0..4).map(|_| spawn(Some(file.to_string()))).collect();
    let victim = spawn(None);
    std::thread::sleep(window);
    stop.store(true, Relaxed);
    let hog_reads = hogs.into_iter().map(|t| t.join().unwrap()).sum();
    (victim.join().unwrap(), hog_reads)
}

/// A daemon whose `gtt.map.json` lists 12000 BOs with 48-byte labels
/// (held on the returned connection): a rendering of about 1.8 MB. It
/// logs at debug level, so renders can be counted.
fn daemon_with_a_big_map() -> (Daemon, HostConnection, Vec<u64>) {
    let limits = [
        "--max-bos-per-uid",
        "12100",
        "--max-handles-per-uid",
        "12100",
        "--log-level",
        "debug",
    ];
    let daemon = Daemon::start(&daemon_bin(), &limits);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let label = "L".repeat(48);
    let bos: Vec<u64> = (0..12000)
        .map(|_| {
            let path = format!("bo/new?size=4096&domain=gtt&label={label}");
            open(&mut c, &path, O_RDWR).expect("BO")
        })
        .collect();
    (daemon, c, bos)
}

/// Rendering a generated file runs outside the scheme lock, so a user
/// that makes the server render a big file over and over (each of its
/// four connections changes the state, then reads a map of 12000 labelled
/// BOs from offset 0: a full render of about 1.8 MB per read) slows other
/// users no more than the same requests with a tiny file would: the
/// victim's create+close count beside such hogs is compared with its count
/// beside hogs reading `health`, control and attack alternating in the same
/// run (so on the same machine load), never with a time. With renders
/// under the lock the victim got 8–11 % of the control's count (the red
/// team's N3 variant, R8); now 80–100 %.
#[test]
fn rendering_big_files_does_not_hold_up_other_users() {
    let (mut daemon, mut c, bos) = daemon_with_a_big_map();
    // Control and attack alternate, so a change in the machine's load
    // weighs on both alike.
    let window = Duration::from_millis(500);
    let (mut control, mut cheap_reads, mut attacked, mut map_reads) = (0, 0, 0, 0);
    for _ in 0..4 {
        let (ops, reads) = victim_ops_beside_hogs(&daemon, "health", window);
        (control, cheap_reads) = (control + ops, cheap_reads + reads);
        let (ops, reads) = victim_ops_beside_hogs(&daemon, "gtt.map.json", window);
        (attacked, map_reads) = (attacked + ops, map_reads + reads);
    }
    eprintln!(
        "victim: {control} create+close beside {cheap_reads} reads of health, \
         {attacked} beside {map_reads} reads of gtt.map.json"
    );
    // Each map read (the state moved since the last) is a render of
    // about 600 KB.
    assert!(
        map_reads >= 20,
        "the hogs made only {map_reads} reads: not an attack"
    );
    assert!(
        attacked * 3 >= control,
        "renders held up another user: {attacked} create+close beside map readers, \
         {control} beside health readers"
    );
    for bo in bos {
        close(&mut c, bo).unwrap();
    }
    drop(c);
    assert_server_intact(&mut daemon);
}

/// Readers cannot buy a render per read by changing the server state
/// before each one (the red team's R8: one cheap create+close, then a read
/// of a big map from offset 0, by many users in turn): a rendering that
/// of 1 MiB or more serves later states until `PACE` times its duration
/// has passed, so the hogs' reads of a 1.8 MB map cost a few renders, not
/// one each. Without pacing every read rendered.
#[test]
fn changing_the_state_before_each_read_does_not_buy_a_render_each() {
    let (mut daemon, mut c, bos) = daemon_with_a_big_map();
    let before = renders_of(&daemon, "gtt.map.json");
    let (served, reads) = victim_ops_beside_hogs(&daemon, "gtt.map.json", Duration::from_secs(2));
    let renders = renders_of(&daemon, "gtt.map.json") - before;
    eprintln!("{reads} map reads after state changes: {renders} renders; victim {served} ops");
    assert!(
        reads >= 40,
        "the hogs made only {reads} reads: not an attack"
    );
    assert!(
        renders as u64 * 4 <= reads,
        "{reads} reads of gtt.map.json, each after a state change, rendered it {renders} times"
    );
    for bo in bos {
        close(&mut c, bo).unwrap();
    }
    drop(c);
    assert_server_intact(&mut daemon);
}

// ---- answers -------------------------------------------------------------

/// A new connection that imports the BO at `path` and asks for a read of
/// `size` bytes it never takes (the answer stays in the server until the
/// connection goes or the send deadline passes).
fn unread_read(daemon: &Daemon, path: &str, size: usize, tag: u32) -> HostConnection {
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut c, path, O_RDONLY).expect("import");
    let header = pddgpu_ipc::frame::RequestHeader {
        payload_len: 0,
        out_len: size as u32,
        sqe: syscall::schemev2::Sqe {
            opcode: Opcode::Read as u8,
            sqe_flags: syscall::schemev2::SqeFlags::empty(),
            _rsvd: 0,
            tag,
            args: [h, 0, 0, 0, 0, 0],
            caller: 0,
        },
    };
    c.send_raw(&header.encode()).unwrap();
    c
}

/// Many connections of one user each asking for a 16 MiB read and never
/// reading the answer pin at most the user's answer budget in the server
/// (64 MiB): past it, reads are answered short.
#[test]
fn unread_answers_pin_a_bounded_amount_per_user() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let pid = daemon.pid();
    let dev = daemon.connect();
    const SIZE: usize = 16 << 20;
    let bo = dev
        .create_bo(
            SIZE as u64,
            pddgpu_ipc::Domain::Gtt,
            pddgpu_ipc::BoFlags::empty(),
        )
        .expect("BO");
    bo.write_at(0, &vec![0x5a; SIZE]).expect("fill");
    let path = bo.export().expect("export").to_path();
    let before = rss_kib(pid);
    let mut stalled = Vec::new();
    for tag in 0..24u32 {
        stalled.push(unread_read(&daemon, &path, SIZE, 1000 + tag));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 128 << 10,
        "24 unread 16 MiB answers pin {grown} KiB in the server"
    );
    // A reader of the same user still gets its bytes, if fewer at a time.
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut c, &path, O_RDONLY).expect("import");
    let n = read_at(&mut c, h, 0, SIZE).expect("read");
    assert!(n > 0, "a read made no progress");
    drop(stalled);
    drop(c);
    drop(bo);
    assert_server_intact(&mut daemon);
}

/// Answers of all users together hold at most `--max-answer-bytes`: two
/// unread 16 MiB reads take the server's 32 MiB, and a third read, though
/// its user's own budget (64 MiB) has room, is answered short (64 KiB), so
/// users acting together cannot pin more than the server-wide figure (the
/// red team's R11: 64 MiB more per colluding uid, 2.5 GiB for 64 uids).
#[test]
fn answers_of_all_users_together_are_bounded() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-answer-bytes", "32M"]);
    let dev = daemon.connect();
    const SIZE: usize = 16 << 20;
    let bo = dev
        .create_bo(SIZE as u64, Domain::Gtt, BoFlags::empty())
        .expect("BO");
    let path = bo.export().expect("export").to_path();
    let mut stalled = Vec::new();
    for tag in 0..2u32 {
        stalled.push(unread_read(&daemon, &path, SIZE, 1000 + tag));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut c, &path, O_RDONLY).expect("import");
    let n = read_at(&mut c, h, 0, SIZE).expect("read");
    assert_eq!(
        n,
        pddgpu_ipc::host::server::MIN_ANSWER as u64,
        "a read past the server-wide answer budget was not answered short"
    );
    drop(stalled);
    // Once the stalled answers are gone, reads are whole again.
    let whole = wait_until(Duration::from_secs(30), || {
        read_at(&mut c, h, 0, SIZE) == Ok(SIZE as u64)
    });
    assert!(whole, "the server-wide answer budget was not given back");
    drop(c);
    drop(bo);
    assert_server_intact(&mut daemon);
}

/// A served request's copy of its payload is given back once it is
/// served, so what connections that sent a big frame and then sit hold
/// does not add up: 30 connections that each sent one 1 MiB write and
/// then sit (holding a BO, so they are never idle-closed), then 30 more
/// doing the same, and the second 30 cost the server little more memory
/// (the first ones' freed buffers are reused), where each used to keep
/// 1 MiB for its life, outside every frame budget (the red team's R1: 1.1
/// GiB for 1008 connections). Memory freed is not always given back to
/// the system, so the first 30 are the baseline, not zero.
#[test]
fn served_payloads_are_not_kept_by_idle_connections() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let pid = daemon.pid();
    let sit_after_write = || {
        let before = rss_kib(pid);
        let conns: Vec<HostConnection> = (0..30)
            .map(|_| {
                let mut c = HostConnection::connect(daemon.socket()).unwrap();
                let h = open(&mut c, "bo/new?size=4096&domain=gtt", O_RDWR).expect("BO");
                let payload = vec![7u8; 1 << 20];
                let written = request(&mut c, Opcode::Write, [h, 0, 0, 0, 0, 0], &payload);
                assert_eq!(written, Ok(4096), "a write into a 4 KiB BO");
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        (rss_kib(pid).saturating_sub(before), conns)
    };
    let (first, first_conns) = sit_after_write();
    let (second, second_conns) = sit_after_write();
    eprintln!("30 idle connections after a 1 MiB write: +{first} KiB, 30 more: +{second} KiB");
    assert!(
        second < 16 << 10,
        "30 more connections that wrote 1 MiB each added {second} KiB to the server"
    );
    drop((first_conns, second_conns));
    assert_server_intact(&mut daemon);
}

/// Read snapshots of all users together hold at most
/// `--max-snapshot-bytes`, root and the admin exempt: while root holds a
/// snapshot of a map bigger than the figure, another user cannot take
/// even a tiny one (`ENOBUFS`), and can again once root lets go (the red
/// team's R12: 16 MiB more per colluding uid, held for as long as the
/// handles stay open).
#[test]
fn snapshots_of_all_users_together_are_bounded() {
    if !is_root() {
        eprintln!("not root: no second user");
        return;
    }
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-snapshot-bytes", "64K"]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let label = "L".repeat(48);
    let bos: Vec<u64> = (0..1000)
        .map(|_| {
            let path = format!("bo/new?size=4096&domain=gtt&label={label}");
            open(&mut c, &path, O_RDWR).expect("BO")
        })
        .collect();
    let map = open(&mut c, "gtt.map.json", O_RDONLY).unwrap();
    assert_eq!(read_at(&mut c, map, 0, 1), Ok(1), "root is exempt");
    assert!(fstat_size(&mut c, map) > 64 << 10, "the map is too small");
    assert_eq!(
        as_other_user(&daemon, &["cat", "health"]).as_deref(),
        Some("err ENOBUFS"),
        "another user took a snapshot past the all-users figure"
    );
    close(&mut c, map).unwrap();
    let line = as_other_user(&daemon, &["cat", "health"]).unwrap();
    assert!(line.starts_with("ok "), "after root let go: {line}");
    for bo in bos {
        close(&mut c, bo).unwrap();
    }
    drop(c);
    assert_server_intact(&mut daemon);
}

/// With few descriptors (a hard `RLIMIT_NOFILE` of 1024, common for
/// services), the connection limit is lowered to what the descriptors
/// allow, so one user allowed any number of connections is refused
/// (`ENFILE`) before the server runs out of descriptors, and root still
/// gets one of the connections kept for the admin (the red team's R2:
/// about 500 connections took every descriptor and root's `health` got
/// `ENFILE`).
#[test]
fn few_descriptors_still_leave_the_admin_its_connections() {
    if !is_root() {
        eprintln!("not root: no second user");
        return;
    }
    let mut daemon = Daemon::start_with(
        &daemon_bin(),
        &["--max-connections-per-uid", "4000"],
        |cmd, _| limit_in_child(cmd, Resource::Nofile, 1024, 1024),
    );
    let mut filler = helper_as(&daemon, &["hold-connections", "900"], OTHER_UID);
    let line = first_line(&mut filler.0);
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["held", held, "refused", errno] = words.as_slice() else {
        panic!("hold-connections said {line:?}");
    };
    let held: usize = held.parse().unwrap();
    assert_eq!(*errno, "ENFILE", "{held} connections held");
    assert!(
        open_descriptors(daemon.pid()) < 1000,
        "the server is out of descriptors: {} open",
        open_descriptors(daemon.pid())
    );
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    assert!(
        open(&mut c, "health", O_RDONLY).is_ok(),
        "root was locked out by {held} connections of another user"
    );
    drop(c);
    kill(filler);
    assert!(serves_again(&daemon));
    assert_server_intact(&mut daemon);
}

/// CPU time (user + system) process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("ticks"))
        .collect();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64((fields[0] + fields[1]) as f64 / hz as f64)
}

/// A crowd of parked creates costs the server next to nothing while
/// nothing is freed: 62 connections each asking for 1 MiB of a full GTT
/// (and asking again at once if refused), with 100 retries at the default
/// 5 ms, use under 5 % of one core of server CPU time over 2 s. This is a
/// resource bound, orders of magnitude from the failure it guards against,
/// not a speed target: parked creates retried every 5 ms used about two
/// thirds of a core (the red team's N21/R21, ~60,000 lock acquisitions a
/// second with 992 of them). When memory is freed they all still get it.
#[test]
fn a_crowd_of_parked_creates_costs_the_server_little() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let dev = daemon.connect();
    let free = dev.stats().unwrap().gtt.free;
    let filler = dev
        .create_bo(free, Domain::Gtt, BoFlags::empty())
        .expect("fill GTT");
    dev.set_config("gtt_retry_count", "100").unwrap();
    dev.set_config("gtt_retry_delay_ms", "5").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let herd: Vec<_> = (0..62)
        .map(|_| {
            let (socket, stop) = (daemon.socket().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut c = HostConnection::connect(&socket).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(bo) = open(&mut c, "bo/new?size=1M&domain=gtt", O_RDWR) {
                        close(&mut c, bo).unwrap();
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    // Let the herd park.
    std::thread::sleep(Duration::from_millis(1500));
    let (cpu_before, started) = (cpu_time(daemon.pid()), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, window) = (cpu_time(daemon.pid()) - cpu_before, started.elapsed());
    eprintln!("62 parked creates: server CPU {cpu:?} in {window:?}");
    assert!(
        cpu < window / 20,
        "62 parked creates cost the server {cpu:?} of CPU in {window:?}"
    );
    // A free wakes them, and they all fit.
    filler.close().unwrap();
    let woke = wait_until(Duration::from_secs(30), || {
        herd.iter().all(|t| t.is_finished())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = herd
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&got| got)
        .count();
    assert!(woke, "the free did not wake every parked create");
    assert_eq!(got, 62, "parked creates that got their BO after the free");
    drop(dev);
    assert_server_intact(&mut daemon);
}

// ---- frames in flight and answers being sent -----------------------------

/// A request header of `opcode` on handle `handle` announcing
/// `payload_len` payload bytes.
fn raw_header(
    opcode: Opcode,
    handle: u64,
    payload_len: usize,
    tag: u32,
    meta: [u64; 2],
) -> Vec<u8> {
    pddgpu_ipc::frame::RequestHeader {
        payload_len: payload_len as u32,
        out_len: 0,
        sqe: syscall::schemev2::Sqe {
            opcode: opcode as u8,
            sqe_flags: syscall::schemev2::SqeFlags::empty(),
            _rsvd: 0,
            tag,
            args: [handle, 0, 0, meta[0], meta[1], 0],
            caller: 0,
        },
    }
    .encode()
    .to_vec()
}

/// The response already waiting on `c`, if any (without blocking): its
/// result, or `None` when nothing has arrived.
fn waiting_response(c: &mut HostConnection) -> Option<Result<usize, i32>> {
    c.stream().set_nonblocking(true).unwrap();
    let reply = c.read_response().ok().map(|r| r.result());
    c.stream().set_nonblocking(false).unwrap();
    reply
}

/// The receive buffers of one user's frames in flight are charged to a
/// budget (64 MiB by default): connections that each send all but the
/// last bytes of a 16 MiB frame and then hold it (the red team's N1: 64
/// of them pinned 1 GiB) get their frames refused with `ENOBUFS` once the
/// budget is spent, and the budget comes back when they go.
#[test]
fn frames_in_flight_are_bounded_per_user() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    const CONNS: usize = 6;
    let almost = pddgpu_ipc::frame::MAX_PAYLOAD - 1000;
    let body = vec![0x5au8; almost];
    let mut conns = Vec::new();
    for tag in 0..CONNS as u32 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        let header = raw_header(
            Opcode::Write,
            1,
            pddgpu_ipc::frame::MAX_PAYLOAD,
            100 + tag,
            [0, 0],
        );
        c.send_raw(&header).unwrap();
        // The server reads every byte (it drops a refused frame's), so
        // this completes either way.
        c.send_raw(&body).unwrap();
        conns.push(c);
    }
    // A refusal is sent before the frame's later bytes are read, so by now
    // it is waiting; a held frame has no answer.
    let answers: Vec<_> = conns.iter_mut().map(waiting_response).collect();
    let refused = answers.iter().filter(|a| **a == Some(Err(ENOBUFS))).count();
    let held = answers.iter().filter(|a| a.is_none()).count();
    assert_eq!(
        (held, refused),
        (4, CONNS - 4),
        "frames held / refused with ENOBUFS (answers {answers:?})"
    );
    // A refused connection stays usable once the refused frame's last
    // bytes are in (they are dropped).
    let last = conns.last_mut().unwrap();
    last.send_raw(&[0u8; 1000]).unwrap();
    assert_eq!(
        open(last, "bo/new?size=4096&domain=gtt", O_RDWR).map(|_| ()),
        Ok(()),
        "the connection whose frame was refused is still served"
    );
    drop(conns);
    // The held frames' budget comes back with their connections.
    let dev = daemon.connect();
    let bo = dev
        .create_bo(
            pddgpu_ipc::frame::MAX_PAYLOAD as u64,
            pddgpu_ipc::Domain::Gtt,
            pddgpu_ipc::BoFlags::empty(),
        )
        .expect("BO");
    let freed = wait_until(Duration::from_secs(20), || {
        bo.write_at(0, &body).is_ok_and(|n| n == almost)
    });
    assert!(
        freed,
        "a 16 MiB write is still refused after the holders left"
    );
    drop((bo, dev));
    assert_server_intact(&mut daemon);
}

/// A frame must arrive whole within the request timeout of its first
/// byte: one byte now and then (each within the timeout) does not keep a
/// partial frame, and its buffer, alive for ever.
#[test]
fn a_trickling_frame_is_cut_off_after_the_request_timeout() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--request-timeout-ms", "1000"]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    c.send_raw(&raw_header(Opcode::Write, 1, 1 << 20, 5, [0, 0]))
        .unwrap();
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // One byte every 200 ms for up to 30 s; the server must close the
    // connection long before.
    let mut closed = false;
    for _ in 0..150 {
        if c.send_raw(&[0]).is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match std::io::Read::read(&mut c.stream(), &mut b) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "a frame trickling one byte at a time was kept for 30 s"
    );
    drop(c);
    assert_server_intact(&mut daemon);
}

/// `call` answers (the whole payload comes back) count against the
/// user's answer budget: connections that each send a 16 MiB `call` and
/// do not read the answers pin at most the budget; the calls past it fail
/// with `ENOBUFS` (the red team's N2: 64 of them pinned 2 GiB).
#[test]
fn unread_call_answers_count_against_the_answer_budget() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-answer-bytes-per-uid", "24M"]);
    let len = pddgpu_ipc::frame::MAX_PAYLOAD / SegmentWire::SIZE * SegmentWire::SIZE;
    let payload = vec![0u8; len];
    let mut conns = Vec::new();
    for tag in 0..4u32 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        let h = open(&mut c, "bo/new?size=4096&domain=gtt", O_RDWR).expect("BO");
        let meta = [BoCall::Segments as u64, 0];
        c.send_raw(&raw_header(Opcode::Call, h, len, 200 + tag, meta))
            .unwrap();
        c.send_raw(&payload).unwrap();
        conns.push(c);
    }
    // The first answer (16 MiB) is stuck in sending; the later calls do
    // not fit beside it. Every call is answered (or its answer begun)
    // before the first answer is read.
    for c in &conns {
        let mut fds = [rustix::event::PollFd::new(
            c.stream(),
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 20,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).expect("poll");
    }
    let answered = |c: &mut HostConnection| {
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        c.read_response().map(|r| r.result()).ok()
    };
    let results: Vec<_> = conns.iter_mut().map(answered).collect();
    let refused = results.iter().filter(|r| **r == Some(Err(ENOBUFS))).count();
    assert_eq!(
        refused, 3,
        "calls refused with ENOBUFS beside an unread 16 MiB answer (results {results:?})"
    );
    assert!(
        results[0].is_some_and(|r| r.is_ok()),
        "the first call: {:?}",
        results[0]
    );
    drop(conns);
    assert_server_intact(&mut daemon);
}

/// An answer must be taken whole within the send timeout: a client that
/// reads a 16 MiB answer 64 KiB at a time, slowly, loses its connection
/// instead of holding the answer for minutes (the red team's N2b).
#[test]
fn a_slow_reader_is_cut_off_after_the_send_timeout() {
    let mut daemon = Daemon::start(&daemon_bin(), &["--send-timeout-ms", "1000"]);
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    let h = open(&mut c, "bo/new?size=16777216&domain=gtt", O_RDWR).expect("BO");
    let header = pddgpu_ipc::frame::RequestHeader {
        payload_len: 0,
        out_len: pddgpu_ipc::frame::MAX_PAYLOAD as u32,
        sqe: syscall::schemev2::Sqe {
            opcode: Opcode::Read as u8,
            sqe_flags: syscall::schemev2::SqeFlags::empty(),
            _rsvd: 0,
            tag: 9,
            args: [h, 0, 0, 0, 0, 0],
            caller: 0,
        },
    };
    c.send_raw(&header.encode()).unwrap();
    // 64 KiB every 250 ms: the whole answer would take over a minute.
    let mut got = 0usize;
    let mut cut_off = false;
    let mut chunk = vec![0u8; 64 << 10];
    for _ in 0..160 {
        std::thread::sleep(Duration::from_millis(250));
        match std::io::Read::read(&mut c.stream(), &mut chunk) {
            Ok(0) | Err(_) => {
                cut_off = true;
                break;
            }
            Ok(n) => got += n,
        }
    }
    assert!(
        cut_off,
        "a slow reader kept its answer for 40 s ({got} bytes read)"
    );
    assert!(
        got < pddgpu_ipc::frame::MAX_PAYLOAD,
        "the whole answer went out"
    );
    drop(c);
    assert_server_intact(&mut daemon);
}

// ---- the admin's connections ---------------------------------------------

/// Users acting together that take every connection they may still leave
/// the admin some: with 12 connections and 8 kept for the admin, a fifth
/// connection of another user is refused with `ENFILE` (named so), and
/// root's `health` is answered (the red team's N19).
#[test]
fn the_admin_keeps_connections_when_users_take_all_of_theirs() {
    if !is_root() {
        eprintln!("not root: needs a second user; skipped");
        return;
    }
    let mut daemon = Daemon::start(
        &daemon_bin(),
        &["--max-connections", "12", "--admin-connections", "8"],
    );
    let mut helpers = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..6 {
        let mut h = spawn_helper(&daemon, &["create", "4096", "gtt"], Some(OTHER_UID));
        lines.push(first_line(&mut h));
        helpers.push(h);
    }
    // Four may connect (the daemon's start-up probe may still hold one
    // for a moment); the rest are refused with ENFILE.
    let ok = lines.iter().filter(|l| l.starts_with("ok ")).count();
    let refused = lines.iter().filter(|l| *l == "err ENFILE").count();
    assert!(
        (3..=4).contains(&ok) && ok + refused == 6,
        "helpers' answers: {lines:?}"
    );
    let dev = daemon.connect();
    assert_eq!(dev.health().expect("root's health").trim(), "ok");
    drop(dev);
    for mut h in helpers {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    assert_server_intact(&mut daemon);
}

// ---- the log -------------------------------------------------------------

/// Connections that each send a malformed frame, half a header, or open a
/// BO and go away cost a few log lines a second all together (the red
/// team's N5: 13,000 lines a second from one user), with a count of the
/// lines held back.
#[test]
fn connections_ending_badly_are_logged_at_a_bounded_rate() {
    let mut daemon = Daemon::start(&daemon_bin(), &[]);
    let started = std::time::Instant::now();
    let mut bad = pddgpu_ipc::frame::RequestHeader {
        payload_len: 0,
        out_len: 0,
        sqe: syscall::schemev2::Sqe {
            opcode: Opcode::Fsync as u8,
            sqe_flags: syscall::schemev2::SqeFlags::empty(),
            _rsvd: 0,
            tag: 3,
            args: [0; 6],
            caller: 0,
        },
    }
    .encode();
    bad[..4].copy_from_slice(b"XXXX");
    for _ in 0..300 {
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        c.send_raw(&bad).unwrap();
        // The server answers the malformed frame, then closes.
        let _ = c.read_response();
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        c.send_raw(&bad[..40]).unwrap();
        drop(c);
        let mut c = HostConnection::connect(daemon.socket()).unwrap();
        open(&mut c, "bo/new?size=4096&domain=gtt", O_RDWR).expect("BO");
        drop(c);
    }
    // One more a second later: its line reports the lines held back.
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = HostConnection::connect(daemon.socket()).unwrap();
    c.send_raw(&bad).unwrap();
    let _ = c.read_response();
    drop(c);
    // Every connection has been released once a fresh one is served with
    // nothing in use.
    let dev = daemon.connect();
    assert!(wait_until(Duration::from_secs(20), || dev
        .stats()
        .is_ok_and(|s| s.bos.count == 0)));
    let elapsed = started.elapsed().as_secs() + 2;
    let log = daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "malformed frame",
                "went away",
                "gone; releasing",
                "disconnected",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect();
    assert!(
        lines.len() as u64 <= 5 * elapsed,
        "{} log lines in {elapsed} s for 900 connections",
        lines.len()
    );
    assert!(
        log.contains("lines suppressed"),
        "the held-back lines are not counted: {lines:?}"
    );
    drop(dev);
    assert_server_intact(&mut daemon);
}

/// A user that connects and closes in a loop (never holding more than one
/// connection, so the per-user connection limit never applies) is held to
/// its rate of new connections: the ones beyond are refused with `EAGAIN`
/// right after `accept`, before a thread is started for them (the red
/// team's N7: such a flood made everyone else's connect 600 times
/// slower), while the admin is still served.
#[test]
fn a_users_connect_flood_is_refused_past_its_rate() {
    if !is_root() {
        eprintln!("not root: needs a second user; skipped");
        return;
    }
    let mut daemon = Daemon::start(&daemon_bin(), &["--max-connects-per-second-per-uid", "50"]);
    let mut flood = spawn_helper(&daemon, &["connect-flood", "2000"], Some(OTHER_UID));
    let line = first_line(&mut flood);
    let _ = flood.wait();
    let mut words = line.split(' ');
    let (served, refused, errnos) = match (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) {
        (Some("served"), Some(s), Some("refused"), Some(r), e) => (
            s.parse::<u64>().unwrap(),
            r.parse::<u64>().unwrap(),
            e.unwrap_or("").to_string(),
        ),
        _ => panic!("unexpected helper answer {line:?}"),
    };
    assert_eq!(served + refused, 2000, "{line}");
    assert!(served > 0, "nothing served: {line}");
    assert!(refused > 0, "2000 connects in a row, none refused: {line}");
    assert_eq!(errnos, "EAGAIN", "{line}");
    let dev = daemon.connect();
    assert_eq!(dev.health().expect("the admin's health").trim(), "ok");
    drop(dev);
    assert_server_intact(&mut daemon);
}
